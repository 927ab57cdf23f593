/*
 * prelogin: imapgate's own dialog with the client before login
 * (backend.route: login); see prelogin.c.
 */
#ifndef IMAPGATE_PRELOGIN_H
#define IMAPGATE_PRELOGIN_H

#include <stddef.h>

struct imap_event;
struct session;

/* Greet the client as the server; -1 if the session was closed. */
int	prelogin_start(struct session *s);
/* Free the dialog's state, every credential wiped. */
void	prelogin_free(struct session *s);
/* Must the client wait (a login under way, or a failure's delay)? */
int	prelogin_busy(const struct session *s);
/* The client's parsed bytes of the current command: into the dialog's buffer. */
void	prelogin_take(struct session *s);
/* A literal header in a command before login. */
void	prelogin_literal(struct session *s, const struct imap_event *ev);
/* A complete client line before login. */
void	prelogin_line(struct session *s);
/* The client's TLS came up after STARTTLS. */
void	prelogin_tls_started(struct session *s);
/* The failure delay is over: the client gets its NO. */
void	prelogin_timeout(struct session *s);
/* The login failed; auth: the credentials were refused (delayed, counted). */
void	prelogin_failed(struct session *s, int auth, const char *code, const char *why);
/* The backend logged the user in: reply is the client's tagged OK; relaying starts. */
void	prelogin_succeeded(struct session *s, const char *reply, size_t len);

#endif
