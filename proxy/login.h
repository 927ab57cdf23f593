/*
 * login: imapgate as the IMAP server before login (backend.route: login).
 *
 * Pure: no I/O, no logging, no libevent or OpenSSL.  The session frames
 * the client's bytes with the IMAP parser (imap.c: it finds where each
 * command ends, sends "+" for synchronizing literals and refuses what the
 * lexer marks bad or strict) and hands each COMPLETE command here, its
 * bytes as received with literal data inline, ending with CRLF or LF.
 * This module answers CAPABILITY, NOOP, LOGOUT, ID and STARTTLS itself
 * and turns LOGIN and AUTHENTICATE into credentials; it also builds the
 * commands that log in to the backend chosen for the user.
 *
 * Secrets: credentials live in heap copies that login_creds_wipe zeroes
 * before freeing; every buffer a backend builder writes holds them too
 * and must be wiped (explicit_bzero) by the caller once sent.
 */
#ifndef IMAPGATE_LOGIN_H
#define IMAPGATE_LOGIN_H

#include <stddef.h>

#define LOGIN_MAX_TAG		64	/* longest tag (as imap.h IMAP_MAX_TAG) */
#define LOGIN_MAX_USER		512	/* longest user or authorization name, bytes */
#define LOGIN_MAX_SECRET	8192	/* longest password or OAuth token, bytes */
#define LOGIN_MAX_SASL		16384	/* longest SASL response, base64 bytes */
#define LOGIN_MAX_REPLY		512	/* r->reply: the longest is CAPABILITY's two lines */
#define LOGIN_MAX_CAPS		256	/* the capability list, NUL included */
#define LOGIN_MAX_GREETING_TEXT	128	/* greeting text kept after sanitising */
#define LOGIN_ID_MAX_PAIRS	30	/* RFC 2971 section 3.3 */
#define LOGIN_ID_MAX_FIELD	30
#define LOGIN_ID_MAX_VALUE	1024
#define LOGIN_LITERALMINUS_MAX	4096	/* RFC 7888: LITERAL- non-synchronizing limit */

/* Flags for login_ctx_init: what this listener and connection offer. */
#define LOGIN_CTX_TLS		0x01	/* the connection is TLS already */
#define LOGIN_CTX_STARTTLS	0x02	/* the listener offers STARTTLS */
#define LOGIN_CTX_LOGINDISABLED	0x04	/* plaintext with require_tls: no login yet */
#define LOGIN_CTX_OAUTH		0x08	/* offer XOAUTH2 and OAUTHBEARER */

/* Backend capabilities that choose the login command (login_backend_caps). */
#define LOGIN_BCAP_SASL_IR	0x01
#define LOGIN_BCAP_AUTH_PLAIN	0x02
#define LOGIN_BCAP_LITERALPLUS	0x04
#define LOGIN_BCAP_XOAUTH2	0x08
#define LOGIN_BCAP_OAUTHBEARER	0x10
#define LOGIN_BCAP_LOGINDISABLED 0x20
#define LOGIN_BCAP_LITERALMINUS	0x40

/* How the client gave its credentials. */
enum login_mech {
	LOGIN_MECH_NONE,
	LOGIN_MECH_LOGIN_CMD,	/* the LOGIN command */
	LOGIN_MECH_PLAIN,	/* AUTHENTICATE PLAIN */
	LOGIN_MECH_LOGIN,	/* AUTHENTICATE LOGIN (user, then password) */
	LOGIN_MECH_XOAUTH2,
	LOGIN_MECH_OAUTHBEARER,
};

enum login_action {
	LOGIN_ACT_REPLY,	/* send r->reply; nothing else changes */
	LOGIN_ACT_CONTINUE,	/* send r->reply ("+ ..."); feed the next line to login_sasl_line */
	LOGIN_ACT_AUTH,		/* r->creds are set: find the backend and log in (reply empty) */
	LOGIN_ACT_STARTTLS,	/* send r->reply, drop any pipelined input, start TLS */
	LOGIN_ACT_LOGOUT,	/* send r->reply (BYE and OK), then close */
};

/* Heap copies, NUL-terminated; free them with login_creds_wipe. */
struct login_creds {
	enum login_mech	 mech;
	char		*user;		/* authentication identity (routes the session) */
	char		*authz;		/* PLAIN authorization identity, NULL if none or = user */
	char		*secret;	/* password or bearer token */
	size_t		 secretlen;
	char		*raw;		/* OAuth: the client's base64 response, for the backend */
	size_t		 rawlen;
};

struct login_result {
	enum login_action	act;
	char			tag[LOGIN_MAX_TAG + 1];	/* "" if the line had no valid tag */
	char			reply[LOGIN_MAX_REPLY];	/* CRLF-terminated lines, NUL after them */
	size_t			replylen;
	struct login_creds	creds;		/* only with LOGIN_ACT_AUTH; the caller owns them */
};

/* One ID field and value (value NULL: NIL); no NUL inside either. */
struct login_id_pair {
	char	*field;
	char	*value;
};

struct login_ctx {
	unsigned		 flags;		/* LOGIN_CTX_* */
	unsigned		 attempts;	/* logins that gave credentials or failed */
	unsigned		 bads;		/* BAD answers (the caller may close past a limit) */
	/* The AUTHENTICATE exchange in progress (sasl_mech NONE: none). */
	enum login_mech		 sasl_mech;
	int			 sasl_step;
	char			 sasl_tag[LOGIN_MAX_TAG + 1];
	char			*sasl_user;	/* LOGIN mechanism: the user from step 1 (wiped) */
	/* The client's last ID parameters (kept for the backend). */
	struct login_id_pair	 id[LOGIN_ID_MAX_PAIRS];
	size_t			 nid;
};

/* Start a connection's pre-login state with LOGIN_CTX_* flags. */
void	login_ctx_init(struct login_ctx *ctx, unsigned flags);
/* Wipe and free everything ctx holds (ctx may be initialised again). */
void	login_ctx_free(struct login_ctx *ctx);
/*
 * TLS is up after STARTTLS: STARTTLS and LOGINDISABLED are no longer
 * offered, and the ID parameters from the plaintext phase are dropped.
 */
void	login_tls_started(struct login_ctx *ctx);

/* The capability list ("IMAP4rev1 SASL-IR ..."), NUL-terminated; length or -1. */
int	login_capabilities(const struct login_ctx *ctx, char *buf, size_t len);
/* "* OK [CAPABILITY ...] text\r\n" (text sanitised, "" gives "Ready"); length or -1. */
int	login_greeting(const struct login_ctx *ctx, const char *text, char *buf, size_t len);

/*
 * Act on one complete command (cmd[0..len), CRLF or LF at its end).  Fills
 * r (overwritten; creds are not freed first).  Returns 0, or -1 when out
 * of memory (r then holds a NO [UNAVAILABLE] reply).
 */
int	login_command(struct login_ctx *ctx, const char *cmd, size_t len, struct login_result *r);
/* Act on one client line during AUTHENTICATE (after LOGIN_ACT_CONTINUE); as login_command. */
int	login_sasl_line(struct login_ctx *ctx, const char *line, size_t len,
	    struct login_result *r);
/* Zero then free every credential in c, and clear c. */
void	login_creds_wipe(struct login_creds *c);

/*
 * "TAG ID (...)\r\n" for the backend: the client's ID pairs that can be
 * quoted (no CR, LF or 8-bit byte) and whose field does not start with
 * "x-", then extra_pairs (2 * nextra strings, field then value, value
 * NULL for NIL) replacing client pairs of the same field; at most
 * LOGIN_ID_MAX_PAIRS pairs.  "TAG ID NIL\r\n" if none.  Length or -1.
 */
int	login_id_build(const struct login_ctx *ctx, const char *tag,
	    const char *const *extra_pairs, size_t nextra, char *buf, size_t len);

/* LOGIN_BCAP_* bits of a capability list ("IMAP4rev1 SASL-IR AUTH=PLAIN ..."). */
unsigned login_backend_caps(const char *caplist, size_t len);
/*
 * The command that logs c in at a backend with capabilities caps, with
 * master credentials when master_user and master_pass are set (not for
 * OAuth: the backend must check the token).  PLAIN when the backend offers
 * it (with SASL-IR in the command, else *needs_continuation = 1 and
 * login_backend_continuation gives the response line), else LOGIN with
 * quoted strings or LITERAL+ literals (master: user<master_sep>master_user);
 * OAuth: the client's own mechanism and response.  Length, or -1 if the
 * backend offers no way (answer the client NO [UNAVAILABLE]) or buf is
 * too small.  buf holds the secret: wipe it after sending.
 */
int	login_backend_auth(const struct login_creds *c, const char *tag, unsigned backend_caps,
	    const char *master_user, const char *master_pass, const char *master_sep,
	    char *buf, size_t len, int *needs_continuation);
/* The base64 response line (CRLF included) after the backend's "+"; length or -1.  Wipe buf. */
int	login_backend_continuation(const struct login_creds *c, unsigned backend_caps,
	    const char *master_user, const char *master_pass, char *buf, size_t len);

#endif
