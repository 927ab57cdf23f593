/*
 * session_priv: the session's insides, shared by the modules that run its
 * phases (session.c: accept, relay and close; backend.c: the backend
 * half's own dialog before relaying).  Nothing else includes this.
 */
#ifndef IMAPGATE_SESSION_PRIV_H
#define IMAPGATE_SESSION_PRIV_H

#include <stdint.h>
#include <sys/queue.h>
#include <sys/time.h>
#include <netinet/in.h>

#include "imap.h"
#include "login.h"
#include "netaddr.h"
#include "state.h"
#include "stats.h"

struct config_listen;
struct endpoint;
struct event;
struct generation;
struct imap_line;
struct server;
struct authhttp;

/* How long a closing session may take to hand its last bytes to the client. */
#define SESSION_FLUSH_TIMEOUT_MS	5000

/*
 * The session's lifecycle.  LOGIN (backend.route: login only): imapgate
 * greets and answers the client itself until a login names the user;
 * SETUP: imapgate talks to the backend alone (connect, TLS, STARTTLS, ID,
 * and the user's login in route: login) and holds the greeting (or the
 * client's login answer; a failed login goes back to LOGIN); RELAY: both sides
 * talk; FINISHING: nothing more is read, the client gets what is queued;
 * CLOSED: summary logged, waiting for the reap event.
 */
enum session_life {
	SESSION_LOGIN,		/* backend.route: login: imapgate is the server (prelogin.c) */
	SESSION_SETUP,
	SESSION_RELAY,
	SESSION_FINISHING,
	SESSION_CLOSED,
	SESSION_NLIFE
};

/*
 * What the client half may send next.  The WAIT_ states are the ones
 * where the meaning of the client's next bytes depends on an answer the
 * backend has not given yet: nothing more is read from the client's
 * buffer until it comes ("the server decides the mode").
 */
enum session_client {
	CLIENT_COMMAND,		/* command lines and their literals */
	CLIENT_WAIT_LITERAL,	/* sent "{n}": "+" or the tagged refusal decides */
	CLIENT_WAIT_SASL,	/* sent AUTHENTICATE or a SASL line: "+" or the tagged reply */
	CLIENT_SASL,		/* the backend sent "+": one SASL line */
	CLIENT_WAIT_IDLE,	/* sent IDLE: "+" or the tagged reply */
	CLIENT_IDLE,		/* the backend accepted IDLE: DONE */
	CLIENT_STALE,		/* the backend left SASL/IDLE mid-line: drop that line */
	CLIENT_TLS,		/* STARTTLS answered: the TLS handshake runs */
	SESSION_NCLIENT
};

/* The backend half: imapgate's own dialog before RELAY, then READY. */
enum session_backend {
	BACKEND_NONE,		/* no server chosen (before, or between failover tries) */
	BACKEND_CONNECTING,	/* TCP connect */
	BACKEND_TLS,		/* implicit TLS handshake */
	BACKEND_GREETING,	/* waiting for the greeting */
	BACKEND_STARTTLS,	/* sent STARTTLS, waiting for its OK */
	BACKEND_UPGRADE,	/* TLS handshake after STARTTLS */
	BACKEND_ID,		/* sent ID with the client's address, waiting for its OK */
	BACKEND_CAPA,		/* route: login: sent CAPABILITY, waiting for its OK */
	BACKEND_AUTH,		/* route: login: sent the user's login, waiting for its answer */
	BACKEND_READY,		/* relaying */
	SESSION_NBACKEND
};

struct session_half {
	struct session		*s;
	struct endpoint		*ep;
	struct session_half	*peer;
	int			 reading;	/* endpoint reading is enabled */
	int			 eof;		/* the peer closed its side (or failed): no more input */
	struct imap_parser	 parser;	/* frames what this side sends */
	size_t			 pending;	/* input bytes parsed but not yet moved */
	int			 streaming;	/* over-long line: move or drop bytes as they are parsed */
	/* client only: the command being read */
	int			 drop;		/* answered by imapgate: its bytes are dropped */
	int			 replied;	/* imapgate's answer to it is queued */
	int			 forwarded;	/* part of it went to the backend already */
	int			 starttls;	/* imapgate accepted STARTTLS: TLS after this line */
	int			 compress;	/* imapgate accepted COMPRESS: deflate after this line */
	uint64_t		 fwd_bytes;	/* bytes of it forwarded (for the trace) */
};

/* Longest error text in the summary line. */
#define SESSION_DETAIL_MAX	192

/* An IPv4 or IPv6 address: listeners and PROXY headers carry nothing else. */
union session_addr {
	struct sockaddr		 sa;
	struct sockaddr_in	 sin;
	struct sockaddr_in6	 sin6;
};


/* The session's deadlines (see struct session's due[]). */
enum session_due {
	SESSION_DUE_PHASE,	/* backend connect/greeting, then the final flush */
	SESSION_DUE_RESPONSE,	/* timeouts.backend_response */
	SESSION_DUE_GUARD,	/* tls_handshake, preauth and idle checks, IDLE keepalive */
	SESSION_DUE_DRAIN,	/* a kick or a spread drain begins (then BYE at a quiet point) */
	SESSION_NDUE
};

struct session {
	TAILQ_ENTRY(session)	 entry;
	struct server		*srv;
	const struct config_listen *lc;
	char			 id[20];
	char			 client_addr[NETADDR_STRLEN];
	struct generation	*gen;		/* the configuration this session started with */
	int			 server;	/* pool index of the backend, -1 before one is chosen */
	uint64_t		 tried;		/* servers tried for this session (bit per pool index) */
	int			 limited;	/* holds a slot in the connection limits */
	int			 refusal;	/* only says BYE (a limit said no): counted in session_refusing */
	struct timeval		 last_activity;	/* last byte either way (timeouts.idle) */
	struct timeval		 tls_started;	/* accept (implicit TLS) or STARTTLS answered */
	struct session_half	 client, backend;
	enum session_life	 life;
	enum session_client	 cl;
	enum session_backend	 bk;
	uint64_t		 wait_len;	/* CLIENT_WAIT_LITERAL: the literal's length */
	char			 wait_tag[IMAP_MAX_TAG + 1];	/* tag whose answer ends a client WAIT_ state */
	int			 running;	/* session_run on the stack */
	int			 rerun;		/* something changed while it ran: go round again */
	struct timeval		 start;
	/*
	 * One timer serves every deadline of the session: it is set for the
	 * earliest of due[] (a later one may fire it early; it then re-arms).
	 * Pushing a deadline back, as every backend read does for
	 * backend_response, costs no timer operation at all.
	 */
	struct event		*ev_timer;
	uint64_t		 due[SESSION_NDUE];	/* session_now_us() deadlines, 0 = off */
	uint64_t		 armed;		/* when ev_timer fires, 0 = not set */
	unsigned		 nrewrites;	/* responses rewritten */
	unsigned		 nguard;	/* guard events */
	const char		*last_guard;	/* kind of the last guard event */
	unsigned char		 guards[STATS_GUARD_MAX];	/* guard events by kind (saturating) */
	const char		*bye;		/* why imapgate sent BYE, if it did */
	char			 rewritten[64];	/* original codes rewritten, comma-separated */
	struct state		 st;
	char			*inject;	/* our own replies, waiting for a response boundary */
	size_t			 ninject;
	int			 client_tls;	/* the client speaks TLS (implicit, or after STARTTLS) */
	int			 nonsync;	/* the backend offers LITERAL+ (2), LITERAL- (1), neither (0) */
	char			*greeting;	/* held while imapgate sets the backend up */
	size_t			 greeting_len;
	struct imap_line	*greeting_line;	/* what the parser said of it (held with it) */
	union session_addr	 client_ss;	/* the real client (after any PROXY header) */
	union session_addr	 local_ss;	/* the address the client connected to */
	int			 draining;	/* shutting down or kicked: BYE at the next quiet point */
	char			*kick_text;	/* a kick's BYE text (NULL: the shutdown one) */
	uint64_t		 ka_bytes;	/* client bytes out at the last IDLE keepalive look */
	uint64_t		 ka_since;	/* since when they have not moved (session_now_us) */
	struct prelogin		*pl;		/* route: login, until relaying: the dialog and login */
	const char		*route;		/* how the backend was chosen (summary line) */
	struct netaddr		 baddr;		/* the backend connected to (family 0: none yet) */
	const char		*reason;
	char			*detail;	/* what went wrong, for the summary (NULL: nothing) */
};

/*
 * backend.route: login, until the session relays: imapgate's own dialog
 * with the client (prelogin.c) and the login under way at the backend
 * (backend.c).  Freed, credentials wiped, once the user is logged in.
 */
struct prelogin {
	struct login_ctx	 ctx;		/* login.c's side of the dialog */
	char			*buf;		/* the command (or SASL line) taken whole */
	size_t			 len;
	int			 overflow;	/* it outgrew the buffer: answered, not parsed */
	struct login_creds	 creds;		/* the login under way (wiped after its answer) */
	int			 busy;		/* a login or its failure delay is under way */
	char			 tag[IMAP_MAX_TAG + 1];	/* the client's LOGIN/AUTHENTICATE */
	char			 key[LOGIN_MAX_USER + 1];	/* hash lookup key, lower case */
	size_t			 keylen;
	struct authhttp		*req;		/* http lookup in flight */
	uint64_t		 lookup_started;	/* session_now_us() */
	int			 fixed;		/* the lookup named one address ... */
	struct netaddr		 addr;		/* ... this one (static, http) */
	unsigned		 fixed_tries;
	unsigned		 wait_s;	/* http Auth-Wait for a refusal */
	int			 held;		/* "delay user": the login waits (SESSION_DUE_PHASE) */
	uint64_t		 held_ms;
	char			 delayed[IMAP_MAX_TAG + 128];	/* a failure's NO, after the delay */
	size_t			 ndelayed;
	/* The backend's side of the login (backend.c). */
	int			 bcaps_known;	/* bcaps read from the greeting or CAPABILITY */
	unsigned		 bcaps;		/* LOGIN_BCAP_* before login */
	int			 id_sent;
	int			 cont;		/* the login command waits for "+" */
	int			 authed;	/* the backend said OK to the login */
	char			*postcaps;	/* capability list after login (CAPABILITY data) */
	char			*ok_text;	/* the login OK's text, while asking CAPABILITY */
};

/* Now in microseconds, from the loop's cached clock. */
uint64_t session_now_us(const struct session *);
/* Run the session until neither side can make progress. */
void	session_run(struct session *);

/* Our own replies, queued for the client (counted against its output). */
int	session_inject(struct session *, const char *, ...)
	    __attribute__((format(printf, 2, 3)));
int	session_inject_raw(struct session *, const char *, size_t);
/* Finish: nothing more is read, the client gets what is queued, then close. */
void	session_finish(struct session *, const char *reason);
/* Count a guard event / a BYE of ours. */
void	session_guard_event(struct session *, enum stats_guard);
void	session_bye_count(struct session *, enum stats_bye);
/* Forget the client command just handled. */
void	session_client_reset(struct session_half *);
/* A refused synchronizing literal: discard what the client sent for it. */
void	session_client_cancel_literal(struct session *, uint64_t len);
/* Start the client's TLS handshake after our STARTTLS answer. */
void	session_client_starttls(struct session *);
/* Is the session still reading and relaying (not finishing or closed)? */
int	session_live(const struct session *);

/* The endpoint callbacks of both halves. */
extern const struct endpoint_cbs session_cbs;

/* Lifecycle setters: the only places the three enums change. */
void	session_set_life(struct session *, enum session_life);
void	session_set_client(struct session *, enum session_client);
void	session_set_backend(struct session *, enum session_backend);
/* Note what went wrong, for the summary line. */
void	session_detail(struct session *, const char *, ...)
	    __attribute__((format(printf, 2, 3)));
/* Tell the client the backend is gone (BYE [UNAVAILABLE]), then finish. */
void	session_bye_unavailable(struct session *, const char *reason);
/* Set or clear one of the session's deadlines. */
void	session_due(struct session *, enum session_due, uint64_t ms);
void	session_due_off(struct session *, enum session_due);
/* Drop the parsed-but-held bytes of a half. */
void	session_drop(struct session_half *);
/* A complete backend response while relaying. */
void	session_backend_line(struct session *);
/* A capability list from the backend: note LITERAL+/-. */
void	session_note_caps(struct session *, const struct imap_line *, const char *, size_t);
/* Capabilities the session adds for the client (GUARD_CAP_*). */
unsigned session_caps(const struct session *);

#endif
