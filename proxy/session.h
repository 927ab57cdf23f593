/*
 * session: one client connection and its backend connection.
 *
 * The session owns both halves; each half points at its peer.  A session
 * ends in exactly one place, session_close(), and is freed from its worker's
 * deferred reap event, never inside the callback that decided to close it.
 */
#ifndef IMAPGATE_SESSION_H
#define IMAPGATE_SESSION_H

#include <stdint.h>
#include <sys/socket.h>

struct config_listen;
struct server;
struct session;

/*
 * Start a session for an accepted socket on listener lc: sa is the real
 * client (after any PROXY header), local the address it connected to.
 */
void	session_start(struct server *srv, const struct config_listen *lc, int fd,
	    const struct sockaddr *sa, socklen_t salen, const struct sockaddr *local,
	    socklen_t locallen);
/* End s now: log the summary line once and schedule the free. */
void	session_close(struct session *s, const char *reason);

/* Free the sessions srv has closed (its reap event, and at worker exit). */
void	session_reap(struct server *srv);

/* The next session in its worker's list (iteration that survives closes). */
struct session *session_next(struct session *s);
/*
 * Shutting down: BYE at the next quiet point (no command in flight or in
 * IDLE, never inside a literal), then close.
 */
void	session_drain(struct session *s);
/* Longest BYE text of a kick. */
#define SESSION_KICK_TEXT_MAX	200
/*
 * After delay_ms, BYE at the next quiet point: text NULL is the shutdown
 * BYE (a spread drain), else "* BYE [UNAVAILABLE] text" (a kick).
 */
void	session_kick(struct session *s, uint64_t delay_ms, const char *text);
/*
 * Call off a kick of s that has not begun (its delay still running);
 * returns 1 if there was one.  A shutdown's drain is never called off.
 */
int	session_kick_cancel(struct session *s);

struct control_filter;
struct evbuffer;
/* Does s match the control socket's filter? */
int	session_match(const struct session *s, const struct control_filter *f);
/* One line describing s (table row, or a JSON object without a line end). */
void	session_describe(const struct session *s, int json, struct evbuffer *out);

#endif
