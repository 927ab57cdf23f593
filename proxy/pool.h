/*
 * pool: the backend servers, their health, and the choice of one per session.
 *
 * Shared by every worker thread: the up/down state and connection counts are
 * atomics, the weighted round-robin state sits behind a mutex.  Active
 * health checks run on the main thread's event loop and connect as a client
 * would (PROXY header, TLS or STARTTLS, greeting, LOGOUT); workers report
 * connect failures and good greetings (passive checks).
 *
 * Each generation has its own pool, but a server's runtime state (session
 * count, up/down, consecutive results, totals) lives in a reference-counted
 * record keyed by its configured address: a pool built for a reload takes
 * the records of the previous one, so a reload carries the state over, and
 * sessions of the old generation releasing their server count down the
 * same record.  A server the reload removed stays listed (for metrics)
 * while sessions still use it.
 */
#ifndef IMAPGATE_POOL_H
#define IMAPGATE_POOL_H

#include <stdint.h>
#include <sys/socket.h>

/* Most servers a pool holds (a session's tried set is a 64-bit mask). */
#define POOL_MAX_SERVERS	64

struct config;
struct event_base;
struct pool;
struct tls_ctx;

/*
 * Build the pool for cf's backend.servers, taking over prev's per-server
 * state (prev NULL: all fresh); NULL with err on failure.
 */
struct pool	*pool_new(const struct config *cf, const struct pool *prev, char *err,
		    size_t errlen);
/* Stop health checks and free the pool. */
void		 pool_free(struct pool *p);
/* Start active health checks on base (TLS through btls when backend.tls is implicit). */
void		 pool_health_start(struct pool *p, struct event_base *base,
		    struct tls_ctx *btls);
/* Stop the health checks (on the thread that started them). */
void		 pool_health_stop(struct pool *p);
/*
 * Choose a server for a client at addr, skipping those in the tried mask,
 * down, or at max_connections.  Counts the connection; -1 if none.
 */
int		 pool_pick(struct pool *p, const struct sockaddr *addr, uint64_t tried);
/* The session using server i has ended. */
void		 pool_release(struct pool *p, int i);
/* Pick by rendezvous hashing of key (route: login, lookup hash); -1 if none usable. */
int		 pool_pick_hash(struct pool *p, const char *key, size_t keylen, uint64_t tried);
/* Take server i for a session, as pool_pick would; -1 if it cannot take one now. */
int		 pool_take(struct pool *p, int i, uint64_t tried);
/* The index of the server at sa, -1 if the pool has none there. */
int		 pool_find(const struct pool *p, const struct sockaddr *sa, socklen_t len);
/* The operator's state of a server (control socket): kept across reloads. */
#define POOL_ADMIN_ENABLED	0	/* takes sessions as health allows */
#define POOL_ADMIN_DISABLED	1	/* no new sessions; existing ones untouched */
#define POOL_ADMIN_DRAINING	2	/* no new sessions; existing ones being kicked */
int		 pool_admin(const struct pool *p, int i);
void		 pool_admin_set(struct pool *p, int i, int admin);
/* The weight in force for server i; set it at run time (0: the file's again). */
unsigned	 pool_weight_of(const struct pool *p, int i);
void		 pool_weight_set(struct pool *p, int i, unsigned w);
/* The last failure's reason for server i ("" if none). */
void		 pool_last_error(const struct pool *p, int i, char *buf, size_t len);
/* The hash lookup's server order for user (or its domain); count, -1 if no key. */
int		 pool_rank(const struct pool *p, const char *user, int domain, int *order);
/* The index of the server written as name in the file, -1 if none. */
int		 pool_find_name(const struct pool *p, const char *name);
/* Count a login through imapgate on server i; read the counts. */
void		 pool_login(struct pool *p, int i, int ok);
uint64_t	 pool_logins(const struct pool *p, int i, int ok);
/* A session's connect or greeting on server i went well (ok) or not (why). */
void		 pool_report(struct pool *p, int i, int ok, const char *why);
/*
 * Servers in the configuration (0 .. pool_size - 1), then servers a reload
 * removed while sessions may still use them (up to pool_size_all - 1).
 * The accessors below take any index below pool_size_all, except
 * pool_server (configured servers only).
 */
int		 pool_size(const struct pool *p);
int		 pool_size_all(const struct pool *p);
/* Server i's address as configured, configuration entry, up state, open sessions and totals. */
const char	*pool_name(const struct pool *p, int i);
const struct config_server *pool_server(const struct pool *p, int i);
int		 pool_is_up(const struct pool *p, int i);
unsigned	 pool_active(const struct pool *p, int i);
uint64_t	 pool_connects(const struct pool *p, int i);
uint64_t	 pool_failures(const struct pool *p, int i);

#endif
