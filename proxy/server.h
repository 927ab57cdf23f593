/*
 * server: the gate (main thread: signals, health checks, reloads) and its
 * workers (one thread and event loop each, with their own SO_REUSEPORT
 * listeners and sessions).
 *
 * Everything a configuration implies (TLS contexts, the backend pool) lives
 * in a generation.  Sessions hold a reference to the generation they
 * started with, so a reload never changes a running session.
 */
#ifndef IMAPGATE_SERVER_H
#define IMAPGATE_SERVER_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <sys/queue.h>

struct config;
struct config_listen;
struct control_job;
struct event;
struct event_base;
struct connlimit;
struct pool;
struct session;
struct tls_ctx;

/* Workers at most (workers: N). */
#define SERVER_MAX_WORKERS	64

struct generation {
	atomic_int		 refs;
	unsigned		 id;
	struct config		*cf;
	struct tls_ctx		*tls;		/* client side: our certificates */
	struct tls_ctx		*btls;		/* backend side, when backend.tls is on */
	struct pool		*pool;
};

struct authhttp_pool;
struct server_listener;
struct server_pending;

/* One worker thread. */
struct server {
	struct gate		*gate;
	unsigned		 index;
	pthread_t		 thread;
	int			 started;
	struct event_base	*base;
	struct generation	*gen;		/* the current one; sessions keep their own */
	struct server_listener	**listeners;	/* each allocated alone: pending PROXY waits point at them */
	size_t			 nlisteners;
	struct event		*ev_stop;	/* drain (first SIGTERM) or stop now (second) */
	struct event		*ev_reload;	/* take next_gen */
	struct event		*ev_drain;	/* timeouts.drain */
	struct event		*ev_ctl;	/* a control socket job is waiting (ctl_job) */
	struct control_job	*ctl_job;	/* under lock */
	pthread_mutex_t		 lock;		/* next_gen, stop_now */
	struct generation	*next_gen;
	int			 stop_now;
	int			 draining;
	TAILQ_HEAD(, session)	 sessions;
	TAILQ_HEAD(, session)	 closed;	/* closed, freed by ev_reap (session_reap) */
	struct event		*ev_reap;
	TAILQ_HEAD(, server_pending) pending;	/* connections waiting for a PROXY header */
	unsigned		 npending;
	uint64_t		 nsessions;	/* open now */
	uint64_t		 next_id;
	uint32_t		 id_prefix;
	struct authhttp_pool	*auth_pool;	/* kept-alive lookup connections */
};

struct gate {
	const char		*path;		/* configuration file */
	struct generation	*gen;
	struct connlimit		*limits;
	struct event_base	*base;		/* main thread */
	struct event		*ev_sigint, *ev_sigterm, *ev_sighup;
	struct event		*ev_trim;	/* gives memory back after bursts (server_trim_cb) */
	uint64_t		 trim_seen;	/* sessions started + ended at the last look */
	uint64_t		 trim_changed_ms;	/* when that count last moved */
	uint64_t		 trim_dirty_ms;	/* first move since the last trim, 0 = none */
	struct metrics		*metrics;
	int			 stopping;	/* SIGTERM seen once: draining */
	atomic_int		 running;	/* worker threads still in their loops */
	pthread_mutex_t		 reload_lock;	/* reload_acks */
	pthread_cond_t		 reload_cond;
	unsigned		 reload_acks;	/* workers that took the new generation */
	struct server		*workers;
	unsigned		 nworkers;
	unsigned		 next_gen;
};

/*
 * Build a generation from cf (TLS contexts, pool); the pool takes over the
 * per-server state of prev's (NULL: fresh).  NULL with err on failure.
 */
struct generation *generation_new(struct config *cf, unsigned id,
	    const struct generation *prev, char *err, size_t errlen);
/* Take a reference. */
struct generation *generation_ref(struct generation *g);
/* Drop a reference; the last one frees everything. */
void	generation_unref(struct generation *g);

/* Build the first generation, the workers and their listeners; 0 or -1 after logging. */
int	server_gate_open(struct gate *g, struct config *cf);
/* Start the workers and run the main loop until a signal stops it. */
int	server_gate_run(struct gate *g);
/* Reload the configuration now (SIGHUP, or the control socket); 0 if it took. */
int	server_reload(struct gate *g);
/* A worker's session list became empty: leave the loop if the worker is draining. */
void	server_session_gone(struct server *srv);
/* Stop and free everything (the configuration too). */
void	server_gate_close(struct gate *g);

#endif
