/* pool: backend selection, passive and active health. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>

#include <event2/event.h>

#include "config.h"
#include "endpoint.h"
#include "log.h"
#include "netaddr.h"
#include "pool.h"

/* Bytes of a health-check greeting we look at. */
#define POOL_GREETING_MAX	512

struct pool_server {
	struct pool			*pool;
	int				 index;
	const struct config_server	*cf;
	atomic_int			 up;
	atomic_uint			 active;
	atomic_uint			 fails;		/* consecutive failures */
	atomic_uint			 oks;		/* consecutive successes while down */
	atomic_uint_fast64_t		 connects;
	atomic_uint_fast64_t		 failures;
	int				 current_weight;	/* smooth weighted round robin */
	/* active health check, main thread only */
	struct endpoint			*hc_ep;
	struct event			*hc_timer;
	struct event			*hc_now;	/* a session saw failures: check at once */
	int				 hc_running;
};

struct pool {
	const struct config	*cf;
	struct pool_server	*servers;
	int			 n;
	pthread_mutex_t		 lock;		/* round-robin weights */
	struct event_base	*base;
	struct tls_ctx		*btls;
	int			 checking;	/* active checks run (under lock: hc_now may be activated) */
};

/* Build the pool. */
struct pool *
pool_new(const struct config *cf, char *err, size_t errlen)
{
	struct pool *p;

	if (cf->nservers == 0 || cf->nservers > POOL_MAX_SERVERS) {
		snprintf(err, errlen, "backend.servers: between 1 and %d servers", POOL_MAX_SERVERS);
		return NULL;
	}
	if ((p = calloc(1, sizeof(*p))) == NULL ||
	    (p->servers = calloc(cf->nservers, sizeof(*p->servers))) == NULL) {
		free(p);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	p->cf = cf;
	p->n = (int)cf->nservers;
	pthread_mutex_init(&p->lock, NULL);
	for (int i = 0; i < p->n; i++) {
		p->servers[i].pool = p;
		p->servers[i].index = i;
		p->servers[i].cf = &cf->servers[i];
		atomic_init(&p->servers[i].up, 1);	/* up until shown otherwise */
	}
	return p;
}

/* Stop the checks: their events belong to the main thread's loop. */
void
pool_health_stop(struct pool *p)
{
	if (p == NULL)
		return;
	pthread_mutex_lock(&p->lock);
	p->checking = 0;
	pthread_mutex_unlock(&p->lock);
	for (int i = 0; i < p->n; i++) {
		endpoint_free(p->servers[i].hc_ep);
		p->servers[i].hc_ep = NULL;
		p->servers[i].hc_running = 0;
		if (p->servers[i].hc_timer != NULL)
			event_free(p->servers[i].hc_timer);
		p->servers[i].hc_timer = NULL;
		if (p->servers[i].hc_now != NULL)
			event_free(p->servers[i].hc_now);
		p->servers[i].hc_now = NULL;
	}
}

/* Free the pool (its checks must be stopped already). */
void
pool_free(struct pool *p)
{
	if (p == NULL)
		return;
	pthread_mutex_destroy(&p->lock);
	free(p->servers);
	free(p);
}

/* Weight of a server (at least 1). */
static int
pool_weight(const struct pool_server *s)
{
	return s->cf->weight > 0 ? (int)s->cf->weight : 1;
}

/* Can server s take one more session now? */
static int
pool_usable(const struct pool_server *s, uint64_t tried)
{
	if (tried & ((uint64_t)1 << s->index))
		return 0;
	/*
	 * A server marked down gets no sessions, unless it is the only one:
	 * then there is nowhere better to go, and refusing everyone while it
	 * is merely slow would turn an overload into an outage.  Sessions try
	 * it and get BYE only when their own connect fails.
	 */
	if (!atomic_load(&s->up) && s->pool->n > 1)
		return 0;
	if (s->cf->max_connections > 0 && atomic_load(&s->active) >= s->cf->max_connections)
		return 0;
	return 1;
}

/* FNV-1a over the client's IP address bytes. */
static uint32_t
pool_hash_addr(const struct sockaddr *sa)
{
	const unsigned char *b = NULL;
	uint32_t h = 2166136261u;
	size_t n = 0;

	if (sa->sa_family == AF_INET) {
		b = (const unsigned char *)&((const struct sockaddr_in *)sa)->sin_addr;
		n = 4;
	} else if (sa->sa_family == AF_INET6) {
		b = (const unsigned char *)&((const struct sockaddr_in6 *)sa)->sin6_addr;
		n = 16;
	}
	for (size_t i = 0; i < n; i++) {
		h ^= b[i];
		h *= 16777619u;
	}
	return h;
}

/* Pick a server by the configured balance. */
int
pool_pick(struct pool *p, const struct sockaddr *addr, uint64_t tried)
{
	struct pool_server *best = NULL;
	int total = 0;

	switch (p->cf->balance) {
	case CONFIG_BALANCE_SOURCE_IP: {
		/*
		 * The same address goes to the same server while the set of
		 * usable servers stays the same; weights widen a server's share.
		 */
		uint32_t h;
		int w = 0;

		for (int i = 0; i < p->n; i++)
			if (pool_usable(&p->servers[i], tried))
				total += pool_weight(&p->servers[i]);
		if (total == 0)
			return -1;
		h = pool_hash_addr(addr) % (uint32_t)total;
		for (int i = 0; i < p->n && best == NULL; i++) {
			if (!pool_usable(&p->servers[i], tried))
				continue;
			w += pool_weight(&p->servers[i]);
			if (h < (uint32_t)w)
				best = &p->servers[i];
		}
		break;
	}
	case CONFIG_BALANCE_LEAST_CONNECTIONS:
		for (int i = 0; i < p->n; i++) {
			struct pool_server *s = &p->servers[i];

			if (!pool_usable(s, tried))
				continue;
			/* active/weight compared without division */
			if (best == NULL || (uint64_t)atomic_load(&s->active) * (uint64_t)pool_weight(best) <
			    (uint64_t)atomic_load(&best->active) * (uint64_t)pool_weight(s))
				best = s;
		}
		break;
	default:
		/* Smooth weighted round robin: even spread, weights respected. */
		pthread_mutex_lock(&p->lock);
		for (int i = 0; i < p->n; i++) {
			struct pool_server *s = &p->servers[i];

			if (!pool_usable(s, tried))
				continue;
			s->current_weight += pool_weight(s);
			total += pool_weight(s);
			if (best == NULL || s->current_weight > best->current_weight)
				best = s;
		}
		if (best != NULL)
			best->current_weight -= total;
		pthread_mutex_unlock(&p->lock);
		break;
	}
	if (best == NULL)
		return -1;
	atomic_fetch_add(&best->active, 1);
	atomic_fetch_add(&best->connects, 1);
	return best->index;
}

/* One fewer session on server i. */
void
pool_release(struct pool *p, int i)
{
	if (i >= 0 && i < p->n)
		atomic_fetch_sub(&p->servers[i].active, 1);
}

/* Mark s up or down, logging the change once. */
static void
pool_set_up(struct pool_server *s, int up, const char *why)
{
	int old = !up;

	if (atomic_compare_exchange_strong(&s->up, &old, up)) {
		if (up)
			log_info("msg=backend-up server=%s", s->cf->address);
		else
			log_warn("msg=backend-down server=%s error=\"%s\"", s->cf->address,
			    why ? why : "-");
	}
}

/*
 * Count a result for s; rise/fall decide its state.  A failure seen by a
 * session (passive) does not take a server down by itself while active
 * checks run: a burst of sessions timing out together on a busy server
 * would otherwise mark it down although it answers.  It asks for a check
 * now instead, and the check's failure decides.
 */
static void
pool_result(struct pool_server *s, int ok, int active, const char *why)
{
	struct pool *p = s->pool;

	if (ok) {
		atomic_store(&s->fails, 0);
		if (!atomic_load(&s->up) &&
		    atomic_fetch_add(&s->oks, 1) + 1 >= p->cf->health_rise) {
			atomic_store(&s->oks, 0);
			pool_set_up(s, 1, NULL);
		}
		return;
	}
	atomic_fetch_add(&s->failures, 1);
	atomic_store(&s->oks, 0);
	if (atomic_fetch_add(&s->fails, 1) + 1 < p->cf->health_fall)
		return;
	if (!active) {
		pthread_mutex_lock(&p->lock);
		if (p->checking && s->hc_now != NULL) {
			event_active(s->hc_now, EV_TIMEOUT, 0);
			pthread_mutex_unlock(&p->lock);
			return;
		}
		pthread_mutex_unlock(&p->lock);
	}
	pool_set_up(s, 0, why);
}

/* A session's connect or greeting on server i went well or not. */
void
pool_report(struct pool *p, int i, int ok, const char *why)
{
	if (i >= 0 && i < p->n)
		pool_result(&p->servers[i], ok, 0, why);
}

static void pool_hc_arm(struct pool_server *s);

/* End one health check with its result. */
static void
pool_hc_done(struct pool_server *s, int ok, const char *why)
{
	/* Count first: why may point into the endpoint freed next. */
	pool_result(s, ok, 1, why);
	endpoint_free(s->hc_ep);
	s->hc_ep = NULL;
	s->hc_running = 0;
	pool_hc_arm(s);
}

/* Greeting bytes from a checked server: "* OK" or "* PREAUTH" is healthy. */
static void
pool_hc_readable(struct endpoint *ep, void *arg)
{
	struct pool_server *s = arg;
	size_t len, n = endpoint_input_len(ep);
	const unsigned char *b;

	if (n > POOL_GREETING_MAX)
		n = POOL_GREETING_MAX;
	b = endpoint_pullup(ep, n);
	if (b == NULL || memchr(b, '\n', n) == NULL) {
		if (n >= POOL_GREETING_MAX)
			pool_hc_done(s, 0, "greeting too long");
		return;
	}
	len = n;
	if ((len >= 4 && memcmp(b, "* OK", 4) == 0) ||
	    (len >= 9 && memcmp(b, "* PREAUTH", 9) == 0))
		pool_hc_done(s, 1, NULL);
	else
		pool_hc_done(s, 0, "bad greeting");
}

/* Nothing to do when a check's output drains. */
static void
pool_hc_drained(struct endpoint *ep, void *arg)
{
	(void)ep;
	(void)arg;
}

/* Connection events of a health check. */
static void
pool_hc_event(struct endpoint *ep, enum endpoint_event what, void *arg)
{
	struct pool_server *s = arg;
	struct pool *p = s->pool;

	if (what == ENDPOINT_CONNECTED) {
		if (p->cf->backend_tls == CONFIG_TLS_IMPLICIT && p->btls != NULL &&
		    !endpoint_is_tls(ep)) {
			if (endpoint_start_tls(ep, p->btls) != 0)
				pool_hc_done(s, 0, "tls setup failed");
		}
		return;
	}
	if (what == ENDPOINT_FLUSHED)
		return;
	pool_hc_done(s, 0, what == ENDPOINT_EOF ? "closed before greeting" : endpoint_error(ep));
}

static const struct endpoint_cbs pool_hc_cbs = {
	pool_hc_readable, pool_hc_drained, pool_hc_event,
};

/* Timer: start a check, or give up on one that ran out of time. */
static void
pool_hc_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pool_server *s = arg;
	struct pool *p = s->pool;
	struct timeval tv;

	(void)fd;
	(void)what;
	if (s->hc_running) {
		pool_hc_done(s, 0, "health check timeout");
		return;
	}
	s->hc_ep = endpoint_connect(p->base, &s->cf->addr, &pool_hc_cbs, s);
	if (s->hc_ep == NULL) {
		pool_result(s, 0, 1, "connect failed");
		pool_hc_arm(s);
		return;
	}
	s->hc_running = 1;
	tv.tv_sec = (time_t)(p->cf->health_timeout_ms / 1000);
	tv.tv_usec = (suseconds_t)((p->cf->health_timeout_ms % 1000) * 1000);
	evtimer_add(s->hc_timer, &tv);
}

/* Sessions saw failures: check now unless a check is running. */
static void
pool_hc_now_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pool_server *s = arg;

	if (s->hc_running)
		return;
	evtimer_del(s->hc_timer);
	pool_hc_timer_cb(fd, what, arg);
}

/* Schedule the next check of s. */
static void
pool_hc_arm(struct pool_server *s)
{
	uint64_t ms = s->pool->cf->health_interval_ms;
	struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000) };

	evtimer_add(s->hc_timer, &tv);
}

/* Start checking every server every backend.health.interval. */
void
pool_health_start(struct pool *p, struct event_base *base, struct tls_ctx *btls)
{
	p->base = base;
	p->btls = btls;
	if (p->cf->health_interval_ms == 0)
		return;
	for (int i = 0; i < p->n; i++) {
		p->servers[i].hc_timer = evtimer_new(base, pool_hc_timer_cb, &p->servers[i]);
		p->servers[i].hc_now = event_new(base, -1, 0, pool_hc_now_cb, &p->servers[i]);
		pool_hc_arm(&p->servers[i]);
	}
	pthread_mutex_lock(&p->lock);
	p->checking = 1;
	pthread_mutex_unlock(&p->lock);
}

/* Accessors for logs and metrics. */
int
pool_size(const struct pool *p)
{
	return p->n;
}

/* Server i's address as configured. */
const char *
pool_name(const struct pool *p, int i)
{
	return p->servers[i].cf->address;
}

/* Server i's configuration. */
const struct config_server *
pool_server(const struct pool *p, int i)
{
	return p->servers[i].cf;
}

/* Is server i up? */
int
pool_is_up(const struct pool *p, int i)
{
	return atomic_load(&p->servers[i].up);
}

/* Sessions on server i now. */
unsigned
pool_active(const struct pool *p, int i)
{
	return atomic_load(&p->servers[i].active);
}

/* Sessions ever sent to server i. */
uint64_t
pool_connects(const struct pool *p, int i)
{
	return atomic_load(&p->servers[i].connects);
}

/* Failures ever counted for server i. */
uint64_t
pool_failures(const struct pool *p, int i)
{
	return atomic_load(&p->servers[i].failures);
}
