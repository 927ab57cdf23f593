/* backend: the backend half's dialog before relaying (see backend.c). */
#ifndef IMAPGATE_BACKEND_H
#define IMAPGATE_BACKEND_H

struct session;

/* Choose a server not tried yet and connect; none left: BYE to the client. */
void	backend_connect(struct session *s);
/* The chosen server failed before the client saw it: count it, try the next. */
void	backend_failover(struct session *s, const char *why);
/* The backend connected (TCP, or a TLS handshake finished): next step. */
void	backend_up(struct session *s);
/* A backend line during setup: never for the client. */
void	backend_setup_line(struct session *s);

#endif
