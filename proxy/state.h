/*
 * state: the IMAP protocol state of one session, fed by both tokenizers.
 *
 * The lexers (imap.c) say what each command and response is; this module
 * decides what they mean for the session: Not Authenticated,
 * Authenticated, Selected or Logout, the tags in flight, IDLE and
 * AUTHENTICATE.  The protocol state changes only in state_set(), which
 * logs "old->new".
 */
#ifndef IMAPGATE_STATE_H
#define IMAPGATE_STATE_H

#include <stddef.h>
#include <stdint.h>

#include "imap.h"
#include "imapcmd.h"

/* Commands in flight per session; past this the session stops reading the client. */
#define STATE_MAX_INFLIGHT	1024
/* Entries the in-flight table starts with (and keeps while idle). */
#define STATE_INFLIGHT_MIN	1

enum state_proto {
	STATE_NOT_AUTH,
	STATE_AUTH,
	STATE_SELECTED,
	STATE_LOGOUT,
};

struct state_cmd {
	char			 tag[IMAP_MAX_TAG + 1];
	char			 name[IMAP_MAX_ATOM + 1];
	enum imapcmd_class	 kind;
	int			 examine;
	char			*mailbox;	/* SELECT/EXAMINE only */
	char			*user;		/* LOGIN/AUTHENTICATE only */
	uint64_t		 started_us;	/* when it was sent (for round-trip times) */
};

struct state {
	const char		*sid;		/* session id, for log lines */
	enum state_proto	 proto;
	char			*mailbox;	/* selected mailbox (NULL: none); see state_mailbox */
	int			 readonly;
	char			*user;		/* logged-in user (NULL: none); see state_user */
	int			 greeted;
	int			 idling;	/* the server accepted IDLE ("+") */
	int			 authenticating;/* an AUTHENTICATE is in flight */
	int			 bye;		/* the server sent BYE */
	struct state_cmd	*inflight;	/* oldest first */
	size_t			 ninflight;
	size_t			 cap;		/* entries allocated */
	uint64_t		*gauge;		/* open sessions by state, shared; NULL = none */
};

/* What a server response meant, for the session to act on. */
struct state_result {
	int			 completed;	/* a tagged response ended a command we knew */
	enum imapcmd_class	 kind;		/* ... of this kind */
	enum imap_status	 status;
	int			 greeting;	/* this was the greeting */
	uint64_t		 started_us;	/* when the completed command was sent */
};

/* Set up st for session sid (sid must outlive st). */
void		 state_init(struct state *st, const char *sid);
/* Count this session in gauge[state] (an array of 4; NULL: none) from now on. */
void		 state_set_gauge(struct state *st, uint64_t *gauge);
/* Stamp the newest command in flight with its send time. */
void		 state_stamp_last(struct state *st, uint64_t us);
/* Free what st holds. */
void		 state_free(struct state *st);
/* The logged-in user, "" before login. */
const char	*state_user(const struct state *st);
/* The selected mailbox, "" if none. */
const char	*state_mailbox(const struct state *st);
/* Change the protocol state, logging old->new at debug level. */
void		 state_set(struct state *st, enum state_proto proto, const char *why);
/* The state the session will be in once every command in flight succeeds. */
enum state_proto state_expected(const struct state *st);
/* imapgate itself logged user in at the backend (route: login); -1 out of memory. */
int		 state_login(struct state *st, const char *user);
/* Record a complete client command; -1 if too many are in flight. */
int		 state_client_command(struct state *st, const struct imap_line *l);
/* Apply a complete server response. */
void		 state_server_response(struct state *st, const struct imap_line *l,
		    struct state_result *res);
/* The kind of the in-flight command with this tag; 0 if none. */
int		 state_lookup(const struct state *st, const char *tag,
		    enum imapcmd_class *kind);
/* Is the in-flight table full (the session should stop reading the client)? */
int		 state_inflight_full(const struct state *st);
/* Printable name of a protocol state. */
const char	*state_name(enum state_proto proto);

#endif
