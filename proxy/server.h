/* server: the event loop, listeners, signals and the list of live sessions. */
#ifndef IMAPGATE_SERVER_H
#define IMAPGATE_SERVER_H

#include <stdint.h>
#include <sys/queue.h>

struct config;
struct config_listen;
struct event_base;
struct session;
struct tls_ctx;

struct server {
	struct event_base	*base;
	struct config		*cf;
	struct tls_ctx		*tls;		/* client side: our certificates */
	struct tls_ctx		*btls;		/* backend side, when backend.tls is on */
	struct server_listener	*listeners;
	size_t			 nlisteners;
	struct event		*ev_sigint, *ev_sigterm;
	TAILQ_HEAD(, session)	 sessions;
	uint64_t		 nsessions;	/* open now */
	uint64_t		 next_id;
	uint32_t		 id_prefix;	/* random per process, keeps ids unique over restarts */
};

/* Bind every listener in srv->cf; returns 0 or -1 after logging why. */
int	server_open(struct server *srv);
/* Run the event loop until a signal stops it. */
int	server_run(struct server *srv);
/* Close listeners and sessions and free everything but srv itself. */
void	server_close(struct server *srv);

#endif
