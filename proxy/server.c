/* server: the gate, its worker threads, listeners and accept. */
#include <errno.h>
#include <grp.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/listener.h>
#include <event2/thread.h>
#include <systemd/sd-daemon.h>

#include "authhttp.h"
#include "config.h"
#include "endpoint.h"
#include "connlimit.h"
#include "control.h"
#include "log.h"
#include "logesc.h"
#include "metrics.h"
#include "netaddr.h"
#include "pool.h"
#include "proxyproto.h"
#include "server.h"
#include "session.h"
#include "stats.h"
#include "ratelog.h"
#include "tls.h"

/* How long accepting pauses when the process is out of file descriptors. */
#define SERVER_ACCEPT_PAUSE_MS	100
/*
 * Memory trimming: the gate looks every TICK; once no session has started
 * or ended for QUIET after some did (a burst of logins or disconnects is
 * over), or at the latest MAX into steady churn, it gives the allocator's
 * free pages back to the kernel.
 */
#define SERVER_TRIM_TICK_MS	250
#define SERVER_TRIM_QUIET_MS	500
#define SERVER_TRIM_MAX_MS	60000
/* How long a PROXY header may take to arrive, and how often an incomplete one is re-read. */
#define SERVER_PROXY_TIMEOUT_MS	10000
#define SERVER_PROXY_RETRY_MS	5
/* Pending connections per listening socket. */
#define SERVER_BACKLOG		1024
/* Seconds a reload waits for the workers to take the new generation. */
#define SERVER_RELOAD_WAIT_S	2
/* Connections per worker that may wait for their PROXY header at once. */
#define SERVER_MAX_PENDING	1024

struct server_listener {
	struct server		*srv;
	const struct config_listen *lc;
	struct evconnlistener	*evl;
	struct event		*ev_resume;
	time_t			 last_warn;	/* accept-failed is logged once a second */
};

/* A connection whose PROXY protocol header has not arrived yet. */
struct server_pending {
	TAILQ_ENTRY(server_pending) entry;
	struct server_listener	*l;
	int			 fd;
	struct sockaddr_storage	 peer;
	socklen_t		 peerlen;
	struct event		*ev;
	struct timeval		 deadline;
};

/* Is sa inside one of the listener's trusted_proxies networks? */
static int
server_trusted(const struct config_listen *lc, const struct sockaddr *sa)
{
	const unsigned char *a;
	size_t alen;

	if (sa->sa_family == AF_INET) {
		a = (const unsigned char *)&((const struct sockaddr_in *)sa)->sin_addr;
		alen = 4;
	} else if (sa->sa_family == AF_INET6) {
		static const unsigned char mapped[12] = { 0,0,0,0,0,0,0,0,0,0,0xff,0xff };
		a = (const unsigned char *)&((const struct sockaddr_in6 *)sa)->sin6_addr;
		alen = 16;
		/* An IPv4 peer on a dual-stack socket: match it as IPv4. */
		if (memcmp(a, mapped, 12) == 0) {
			a += 12;
			alen = 4;
		}
	} else
		return 0;
	for (size_t i = 0; i < lc->ntrusted_proxies; i++) {
		const struct config_cidr *c = &lc->trusted[i];
		unsigned bits = c->prefix, k;

		if ((c->family == AF_INET ? 4u : 16u) != alen)
			continue;
		for (k = 0; bits >= 8; k++, bits -= 8)
			if (a[k] != c->addr[k])
				break;
		if (bits >= 8)
			continue;
		if (bits == 0 || ((a[k] ^ c->addr[k]) & (0xff << (8 - bits)) & 0xff) == 0)
			return 1;
	}
	return 0;
}

/* Hand an accepted socket (real client address sa) to a new session. */
static void
server_start_session(struct server_listener *l, int fd, const struct sockaddr *sa,
    socklen_t salen, const struct sockaddr *local, socklen_t locallen)
{
	struct sockaddr_storage ls;
	socklen_t lslen = sizeof(ls);

	if (local == NULL) {
		memset(&ls, 0, sizeof(ls));
		getsockname(fd, (struct sockaddr *)&ls, &lslen);
		local = (const struct sockaddr *)&ls;
		locallen = lslen;
	}
	session_start(l->srv, l->lc, fd, sa, salen, local, locallen);
}

/* Forget a pending connection, closing its socket. */
static void
server_pending_free(struct server_pending *pp)
{
	struct server *srv = pp->l->srv;

	TAILQ_REMOVE(&srv->pending, pp, entry);
	srv->npending--;
	close(pp->fd);
	event_free(pp->ev);
	free(pp);
}

/* Give up on a connection whose PROXY header is missing or bad. */
static void
server_pending_fail(struct server_pending *pp, const char *why)
{
	char addr[NETADDR_STRLEN];

	if (ratelog_allow(RATELOG_REFUSAL))
		log_warn("msg=proxy-header-rejected listen=%s peer=%s error=\"%s\"",
		    pp->l->lc->address,
		    netaddr_str((const struct sockaddr *)&pp->peer, addr, sizeof(addr)), why);
	server_pending_free(pp);
}

/*
 * Read the PROXY header without reading past it: peek, parse, then take
 * exactly its bytes, so what follows (a TLS ClientHello) stays in the
 * socket for the session.  An incomplete header is peeked again shortly.
 */
static void
server_pending_cb(evutil_socket_t fd, short what, void *arg)
{
	struct server_pending *pp = arg;
	unsigned char buf[PROXYPROTO_V2_MAX];
	struct proxyproto_result r;
	struct timeval now, retry = { 0, SERVER_PROXY_RETRY_MS * 1000 };
	const char *err;
	ssize_t n;
	int len;

	gettimeofday(&now, NULL);
	n = recv(fd, buf, sizeof(buf), MSG_PEEK);
	if (n == 0) {
		server_pending_fail(pp, "closed before the PROXY header");
		return;
	}
	if (n < 0) {
		if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
			server_pending_fail(pp, strerror(errno));
			return;
		}
		n = 0;
	}
	len = proxyproto_parse(buf, (size_t)n, &r, &err);
	if (len < 0) {
		server_pending_fail(pp, err);
		return;
	}
	if (len == 0) {
		if (timercmp(&now, &pp->deadline, >)) {
			server_pending_fail(pp, "timeout waiting for the PROXY header");
			return;
		}
		/*
		 * Part of the header is in the socket, which therefore stays
		 * readable: wait edge-triggered for more bytes (or the peer's
		 * close) instead of spinning.  The deadline bounds the wait.
		 */
		event_del(pp->ev);
		event_assign(pp->ev, pp->l->srv->base, fd, EV_READ | EV_ET | EV_CLOSED,
		    server_pending_cb, pp);
		timersub(&pp->deadline, &now, &retry);
		event_add(pp->ev, &retry);
		if (what & EV_CLOSED)
			server_pending_fail(pp, "closed before the PROXY header");
		return;
	}
	if (recv(fd, buf, (size_t)len, 0) != len) {
		server_pending_fail(pp, "short read of the PROXY header");
		return;
	}
	event_free(pp->ev);
	pp->ev = NULL;
	TAILQ_REMOVE(&pp->l->srv->pending, pp, entry);
	pp->l->srv->npending--;
	if (r.local)
		server_start_session(pp->l, fd, (const struct sockaddr *)&pp->peer,
		    pp->peerlen, NULL, 0);
	else
		server_start_session(pp->l, fd, (const struct sockaddr *)&r.src, r.srclen,
		    (const struct sockaddr *)&r.dst, r.dstlen);
	free(pp);
}

/* A client connected: start a session, or first wait for its PROXY header. */
static void
server_accept_cb(struct evconnlistener *evl, evutil_socket_t fd,
    struct sockaddr *sa, int salen, void *arg)
{
	struct server_listener *l = arg;
	struct server_pending *pp;
	struct timeval tv;

	(void)evl;
	if (!l->lc->proxy_protocol) {
		server_start_session(l, fd, sa, (socklen_t)salen, NULL, 0);
		return;
	}
	if (!server_trusted(l->lc, sa)) {
		char addr[NETADDR_STRLEN];

		if (ratelog_allow(RATELOG_REFUSAL))
			log_warn("msg=proxy-peer-untrusted listen=%s peer=%s", l->lc->address,
			    netaddr_str(sa, addr, sizeof(addr)));
		close(fd);
		return;
	}
	if (l->srv->npending >= SERVER_MAX_PENDING || (pp = calloc(1, sizeof(*pp))) == NULL) {
		if (ratelog_allow(RATELOG_REFUSAL))
			log_warn("msg=proxy-header-backlog-full listen=%s", l->lc->address);
		close(fd);
		return;
	}
	TAILQ_INSERT_TAIL(&l->srv->pending, pp, entry);
	l->srv->npending++;
	pp->l = l;
	pp->fd = fd;
	memcpy(&pp->peer, sa, (size_t)salen);
	pp->peerlen = (socklen_t)salen;
	gettimeofday(&pp->deadline, NULL);
	tv.tv_sec = SERVER_PROXY_TIMEOUT_MS / 1000;
	tv.tv_usec = 0;
	timeradd(&pp->deadline, &tv, &pp->deadline);
	pp->ev = event_new(l->srv->base, fd, EV_READ, server_pending_cb, pp);
	event_add(pp->ev, &tv);
}

/* Resume accepting after a pause. */
static void
server_resume_cb(evutil_socket_t fd, short what, void *arg)
{
	struct server_listener *l = arg;

	(void)fd;
	(void)what;
	evconnlistener_enable(l->evl);
}

/*
 * accept() failed.  Out of descriptors the pending connection stays in the
 * backlog and the socket stays readable, so retrying at once would spin:
 * pause this listener briefly instead.
 */
static void
server_accept_error_cb(struct evconnlistener *evl, void *arg)
{
	struct server_listener *l = arg;
	int err = EVUTIL_SOCKET_ERROR();
	struct timeval tv = { 0, SERVER_ACCEPT_PAUSE_MS * 1000 };

	time_t now = time(NULL);

	/* Once a second is enough to tell the operator; the pauses go on. */
	if (now != l->last_warn) {
		l->last_warn = now;
		log_warn("msg=accept-failed listen=%s worker=%u error=\"%s\"", l->lc->address,
		    l->srv->index, strerror(err));
	}
	evconnlistener_disable(evl);
	evtimer_add(l->ev_resume, &tv);
}

/* Build everything a configuration implies, on the side (pool state taken over from prev). */
struct generation *
generation_new(struct config *cf, unsigned id, const struct generation *prev, char *err,
    size_t errlen)
{
	struct generation *g;
	size_t i;

	if ((g = calloc(1, sizeof(*g))) == NULL) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	atomic_init(&g->refs, 1);
	g->id = id;
	g->cf = cf;
	for (i = 0; i < cf->nlisten; i++)
		if (cf->listen[i].tls != CONFIG_TLS_NONE)
			break;
	if (i < cf->nlisten && (g->tls = tls_ctx_new(cf, err, errlen)) == NULL)
		goto fail;
	if (cf->backend_tls != CONFIG_TLS_NONE &&
	    (g->btls = tls_ctx_new_backend(cf, err, errlen)) == NULL)
		goto fail;
	if ((g->pool = pool_new(cf, prev != NULL ? prev->pool : NULL, err, errlen)) == NULL)
		goto fail;
	return g;
fail:
	g->cf = NULL;	/* the caller still owns cf */
	generation_unref(g);
	return NULL;
}

/* One more holder of g. */
struct generation *
generation_ref(struct generation *g)
{
	atomic_fetch_add(&g->refs, 1);
	return g;
}

/* One holder fewer; free at zero. */
void
generation_unref(struct generation *g)
{
	if (g == NULL || atomic_fetch_sub(&g->refs, 1) != 1)
		return;
	pool_free(g->pool);
	tls_ctx_free(g->tls);
	tls_ctx_free(g->btls);
	config_free(g->cf);
	free(g);
}

/* Bind listener i of srv's generation on srv's loop. */
static int
server_listen(struct server *srv, struct server_listener *l, const struct config_listen *lc)
{
	unsigned flags = LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC;

	/* Several workers share a port through the kernel's SO_REUSEPORT balancing. */
	if (srv->gate->nworkers > 1)
		flags |= LEV_OPT_REUSEABLE_PORT;
	l->srv = srv;
	l->lc = lc;
	l->evl = evconnlistener_new_bind(srv->base, server_accept_cb, l, flags,
	    SERVER_BACKLOG, (const struct sockaddr *)&lc->addr.ss, (int)lc->addr.len);
	if (l->evl == NULL) {
		log_error("msg=\"cannot listen\" listen=%s error=\"%s\"", lc->address,
		    strerror(errno));
		return -1;
	}
	evconnlistener_set_error_cb(l->evl, server_accept_error_cb);
	l->ev_resume = evtimer_new(srv->base, server_resume_cb, l);
	return 0;
}

/* Close every session of srv now and leave its loop. */
static void
server_stop_now(struct server *srv, const char *reason)
{
	struct session *s;

	while ((s = TAILQ_FIRST(&srv->sessions)) != NULL)
		session_close(s, reason);
	event_base_loopexit(srv->base, NULL);
}

static void server_listener_free(struct server *, struct server_listener *);

/* timeouts.drain ran out: end what is left. */
static void
server_drain_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	server_stop_now(arg, "drain-timeout");
}

/*
 * Stop accepting and drain: every session gets BYE at its next quiet point
 * (session_drain).  The loop ends when the last session is gone, or at
 * timeouts.drain.  A second signal stops at once.
 */
static void
server_stop_cb(evutil_socket_t fd, short what, void *arg)
{
	struct server *srv = arg;
	struct session *s, *next;
	struct timeval tv;
	uint64_t spread, n, k;
	int now;

	(void)fd;
	(void)what;
	pthread_mutex_lock(&srv->lock);
	now = srv->stop_now;
	pthread_mutex_unlock(&srv->lock);
	/*
	 * Close the listening sockets, not just stop accepting: a socket left
	 * open keeps completing handshakes in the kernel that nobody serves,
	 * and a load balancer in front would keep sending clients to us.
	 */
	for (size_t i = 0; i < srv->nlisteners; i++)
		if (srv->listeners[i] != NULL) {
			server_listener_free(srv, srv->listeners[i]);
			srv->listeners[i] = NULL;
		}
	while (!TAILQ_EMPTY(&srv->pending))
		server_pending_free(TAILQ_FIRST(&srv->pending));
	if (now || srv->gen->cf->drain_ms == 0) {
		server_stop_now(srv, "shutdown");
		return;
	}
	if (srv->draining)
		return;
	srv->draining = 1;
	tv.tv_sec = (time_t)(srv->gen->cf->drain_ms / 1000);
	tv.tv_usec = (suseconds_t)((srv->gen->cf->drain_ms % 1000) * 1000);
	evtimer_add(srv->ev_drain, &tv);
	/*
	 * Spread the BYEs over timeouts.drain_spread (at most half the drain,
	 * so the last ones still have time for their quiet point): a restart
	 * with 50,000 sessions must not make 50,000 clients reconnect in the
	 * same millisecond somewhere else.
	 */
	spread = srv->gen->cf->drain_spread_ms;
	if (spread > srv->gen->cf->drain_ms / 2)
		spread = srv->gen->cf->drain_ms / 2;
	n = srv->nsessions;
	k = 0;
	for (s = TAILQ_FIRST(&srv->sessions); s != NULL; s = next) {
		next = session_next(s);
		session_kick(s, n > 0 ? spread * k++ / n : 0, NULL);
	}
	server_session_gone(srv);
}

/* The control socket has a job for this worker's sessions. */
static void
server_ctl_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	control_worker_run(arg);
}

/* Free the sessions closed since the last run (deferred from session_close). */
static void
server_reap_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	session_reap(arg);
}

/* Called when a session leaves the list. */
void
server_session_gone(struct server *srv)
{
	if (srv->draining && TAILQ_EMPTY(&srv->sessions))
		event_base_loopexit(srv->base, NULL);
}

/* Do two listen entries name the same socket address? */
static int
server_same_addr(const struct config_listen *a, const struct config_listen *b)
{
	return a->addr.len == b->addr.len && memcmp(&a->addr.ss, &b->addr.ss, a->addr.len) == 0;
}

/* Free one listener and the PROXY waits that came through it. */
static void
server_listener_free(struct server *srv, struct server_listener *l)
{
	struct server_pending *pp, *next;

	for (pp = TAILQ_FIRST(&srv->pending); pp != NULL; pp = next) {
		next = TAILQ_NEXT(pp, entry);
		if (pp->l == l)
			server_pending_free(pp);
	}
	if (l->evl != NULL)
		evconnlistener_free(l->evl);
	if (l->ev_resume != NULL)
		event_free(l->ev_resume);
	free(l);
}

/*
 * Take the generation the main thread committed: keep the sockets of
 * listeners that stay (their settings come from the new generation), open
 * the new ones, close the ones the file no longer names.  Sessions keep
 * the generation they started with.
 */
static void
server_reload_cb(evutil_socket_t fd, short what, void *arg)
{
	struct server *srv = arg;
	struct server_listener **nl;
	struct generation *gen;
	const struct config *cf;
	size_t n = 0;

	(void)fd;
	(void)what;
	pthread_mutex_lock(&srv->lock);
	gen = srv->next_gen;
	srv->next_gen = NULL;
	pthread_mutex_unlock(&srv->lock);
	if (gen == NULL)
		return;
	cf = gen->cf;
	if ((nl = calloc(cf->nlisten, sizeof(*nl))) == NULL) {
		log_error("msg=\"reload: out of memory\" worker=%u", srv->index);
		generation_unref(gen);
		return;
	}
	for (size_t i = 0; i < cf->nlisten; i++) {
		for (size_t j = 0; j < srv->nlisteners; j++)
			if (srv->listeners[j] != NULL &&
			    server_same_addr(srv->listeners[j]->lc, &cf->listen[i])) {
				nl[n] = srv->listeners[j];
				srv->listeners[j] = NULL;
				nl[n]->lc = &cf->listen[i];
				break;
			}
		if (nl[n] == NULL) {
			if ((nl[n] = calloc(1, sizeof(**nl))) == NULL ||
			    server_listen(srv, nl[n], &cf->listen[i]) != 0) {
				free(nl[n]);
				nl[n] = NULL;
				continue;
			}
			if (srv->draining)
				evconnlistener_disable(nl[n]->evl);
		}
		n++;
	}
	for (size_t j = 0; j < srv->nlisteners; j++)
		if (srv->listeners[j] != NULL)
			server_listener_free(srv, srv->listeners[j]);
	free(srv->listeners);
	srv->listeners = nl;
	srv->nlisteners = n;
	generation_unref(srv->gen);
	srv->gen = gen;
	pthread_mutex_lock(&srv->gate->reload_lock);
	srv->gate->reload_acks++;
	pthread_cond_signal(&srv->gate->reload_cond);
	pthread_mutex_unlock(&srv->gate->reload_lock);
}

/* A worker thread: its own loop until told to stop. */
static void *
server_worker_main(void *arg)
{
	struct server *srv = arg;

	event_base_dispatch(srv->base);
	/* Run the frees the last closes scheduled. */
	event_base_loop(srv->base, EVLOOP_NONBLOCK);
	endpoint_thread_done();
	/* The last worker out ends the main loop (metrics serve until then). */
	if (atomic_fetch_sub(&srv->gate->running, 1) == 1)
		event_base_loopbreak(srv->gate->base);
	return NULL;
}

/*
 * SIGINT/SIGTERM: the workers drain (a second signal: stop now), and the
 * main loop ends so that the main thread can wait for them.
 */
static void
server_signal_cb(evutil_socket_t sig, short what, void *arg)
{
	struct gate *g = arg;
	int now = g->stopping;

	(void)what;
	g->stopping = 1;
	sd_notify(0, "STOPPING=1");
	log_info("msg=%s signal=%d", now ? "stopping-now" : "draining", (int)sig);
	for (unsigned i = 0; i < g->nworkers; i++) {
		pthread_mutex_lock(&g->workers[i].lock);
		g->workers[i].stop_now = now;
		pthread_mutex_unlock(&g->workers[i].lock);
		event_active(g->workers[i].ev_stop, EV_TIMEOUT, 0);
	}
}

static uint64_t server_monotonic_us(void);
static void server_reload_wait(struct gate *);

/* Can every listen address in cf that is not bound now be bound? */
static int
server_check_new_listeners(struct gate *g, const struct config *cf, char *err, size_t errlen)
{
	const struct config *old = g->gen->cf;

	for (size_t i = 0; i < cf->nlisten; i++) {
		const struct config_listen *lc = &cf->listen[i];
		int fd, one = 1, bound = 0;

		for (size_t j = 0; j < old->nlisten && !bound; j++)
			bound = server_same_addr(&old->listen[j], lc);
		if (bound)
			continue;
		if ((fd = socket(lc->addr.ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0 ||
		    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
		    bind(fd, (const struct sockaddr *)&lc->addr.ss, lc->addr.len) != 0) {
			snprintf(err, errlen, "listen %s: %s", lc->address, strerror(errno));
			if (fd >= 0)
				close(fd);
			return -1;
		}
		close(fd);
	}
	return 0;
}

/*
 * SIGHUP: read the file and build everything on the side; commit only if
 * all of it worked, else keep the running configuration and log why.
 */
int
server_reload(struct gate *g)
{
	int rc = -1;

	struct config_errors errs = { NULL, 0 };
	struct generation *gen, *old = g->gen;
	struct config *cf;
	char err[256], esc[LOGESC_SIZE(256)];

	sd_notifyf(0, "RELOADING=1\nMONOTONIC_USEC=%llu", (unsigned long long)server_monotonic_us());
	log_info("msg=reloading config=%s", g->path);
	if ((cf = config_load(g->path, &errs)) == NULL) {
		for (size_t i = 0; i < errs.n; i++) {
			/* Messages quote what they found ("..."): escaped to stay one field. */
			snprintf(err, sizeof(err), "%s:%d:%d: %s",
			    errs.v[i].file ? errs.v[i].file : g->path, errs.v[i].line,
			    errs.v[i].col, errs.v[i].msg);
			log_error("msg=reload-failed error=\"%s\"", logesc_quote(err, esc, sizeof(esc)));
		}
		config_errors_free(&errs);
		goto done;
	}
	if (server_check_new_listeners(g, cf, err, sizeof(err)) != 0 ||
	    (gen = generation_new(cf, g->next_gen + 1, old, err, sizeof(err))) == NULL) {
		log_error("msg=reload-failed error=\"%s\"", logesc_quote(err, esc, sizeof(esc)));
		config_free(cf);
		goto done;
	}
	/* Commit. */
	g->next_gen++;
	pool_health_stop(old->pool);
	g->gen = gen;
	pool_health_start(gen->pool, g->base, gen->btls);
	connlimit_set_max(g->limits, cf->max_connections, cf->max_connections_per_ip);
	/* Workers log meanwhile: one atomic store (log.c). */
	log_configure(cf->log_level, cf->log_format, cf->log_output);
	pthread_mutex_lock(&g->reload_lock);
	g->reload_acks = 0;
	pthread_mutex_unlock(&g->reload_lock);
	for (unsigned i = 0; i < g->nworkers; i++) {
		struct server *srv = &g->workers[i];

		pthread_mutex_lock(&srv->lock);
		if (srv->next_gen != NULL)
			generation_unref(srv->next_gen);
		srv->next_gen = generation_ref(gen);
		pthread_mutex_unlock(&srv->lock);
		event_active(srv->ev_reload, EV_TIMEOUT, 0);
	}
	server_reload_wait(g);
	if ((cf->metrics_address == NULL) != (old->cf->metrics_address == NULL) ||
	    (cf->metrics_address != NULL &&
	    strcmp(cf->metrics_address, old->cf->metrics_address) != 0)) {
		metrics_stop(g->metrics);
		g->metrics = metrics_start(g);
	}
	control_reload(g);
	generation_unref(old);
	log_info("msg=reloaded generation=%u", gen->id);
	rc = 0;
done:
	sd_notify(0, "READY=1");
	return rc;
}

/*
 * Wait (bounded) until every worker has taken the new generation, so that
 * "reloaded" and READY=1 mean new listeners accept.
 */
static void
server_reload_wait(struct gate *g)
{
	struct timespec until;

	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += SERVER_RELOAD_WAIT_S;
	pthread_mutex_lock(&g->reload_lock);
	while (g->reload_acks < g->nworkers &&
	    pthread_cond_timedwait(&g->reload_cond, &g->reload_lock, &until) == 0)
		;
	if (g->reload_acks < g->nworkers)
		log_warn("msg=reload-slow workers_done=%u workers=%u", g->reload_acks,
		    g->nworkers);
	pthread_mutex_unlock(&g->reload_lock);
}

/* SIGHUP handler on the main loop. */
static void
server_sighup_cb(evutil_socket_t sig, short what, void *arg)
{
	(void)sig;
	(void)what;
	if (((struct gate *)arg)->stopping)
		return;
	server_reload(arg);
}

/* CLOCK_MONOTONIC in microseconds (for systemd's reload protocol). */
static uint64_t
server_monotonic_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

/*
 * Drop root once the sockets are bound and the keys read (user, group).
 * Reloads then read certificates and keys as that user.  Already running
 * as that user and group (not root): keep it.
 */
static int
server_drop_privileges(const struct config *cf)
{
	struct passwd *pw = NULL;
	struct group *gr;
	gid_t gid;

	if (cf->user == NULL && cf->group == NULL)
		return 0;
	if (cf->user != NULL && (pw = getpwnam(cf->user)) == NULL) {
		log_error("msg=\"unknown user\" user=%s", cf->user);
		return -1;
	}
	gid = cf->user != NULL ? pw->pw_gid : getgid();
	if (cf->group != NULL) {
		if ((gr = getgrnam(cf->group)) == NULL) {
			log_error("msg=\"unknown group\" group=%s", cf->group);
			return -1;
		}
		gid = gr->gr_gid;
	}
	/*
	 * Started as that user and group already (User=imapgate in the unit,
	 * which allows no identity change): nothing to drop.
	 */
	if (geteuid() != 0 && (cf->user == NULL || pw->pw_uid == geteuid()) &&
	    gid == getegid()) {
		log_info("msg=privileges-kept user=%s group=%u", cf->user ? cf->user : "-",
		    (unsigned)gid);
		return 0;
	}
	if (setgroups(1, &gid) != 0 || setgid(gid) != 0 ||
	    (cf->user != NULL && setuid(pw->pw_uid) != 0)) {
		log_error("msg=\"cannot drop privileges\" error=\"%s\"", strerror(errno));
		return -1;
	}
	if (cf->user != NULL && setuid(0) == 0) {
		log_error("msg=\"privileges not dropped\"");
		return -1;
	}
	log_info("msg=privileges-dropped user=%s group=%u", cf->user ? cf->user : "-",
	    (unsigned)gid);
	return 0;
}

/*
 * A worker's event loop.  With epoll, libevent's change list batches the
 * registrations made during one loop iteration: a session's setup and
 * teardown enable and disable the same descriptors several times, and
 * only the final state reaches the kernel (12 -> 7.5 epoll_ctl calls per
 * connection in the connect benchmark).  The change list is unsafe only
 * with descriptors cloned by dup(), which imapgate never hands to libevent.
 *
 * ThreadSanitizer builds go without it.  The change list defers the
 * EPOLL_CTL_DEL of a closed socket to the next loop iteration; by then
 * another worker may have been given the same descriptor number by
 * accept() or socket(), and TSan, which tracks descriptors, reports the
 * late epoll_ctl as a race with that thread.  It is harmless (the kernel
 * dropped the old socket from the epoll set at close, so the DEL fails
 * with ENOENT, which libevent expects), but a suppression would have to
 * match every epoll_ctl (libevent has no symbols here) and so hide real
 * misuse of descriptors across threads.  Without the change list every
 * epoll_ctl happens before the close, and nothing is hidden.
 */
#if defined(__SANITIZE_THREAD__)
#define SERVER_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define SERVER_TSAN 1
#endif
#endif
static struct event_base *
server_worker_base(void)
{
	struct event_config *cfg = event_config_new();
	struct event_base *base;

	if (cfg == NULL)
		return NULL;
#ifndef SERVER_TSAN
	event_config_set_flag(cfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
#endif
	base = event_base_new_with_config(cfg);
	event_config_free(cfg);
	return base;
}

/* Set up one worker: loop, listeners, stop event. */
static int
server_worker_open(struct gate *g, struct server *srv, unsigned index)
{
	const struct config *cf = g->gen->cf;

	srv->gate = g;
	srv->index = index;
	TAILQ_INIT(&srv->sessions);
	TAILQ_INIT(&srv->closed);
	TAILQ_INIT(&srv->pending);
	srv->gen = generation_ref(g->gen);
	srv->id_prefix = (((uint32_t)getpid() ^ (uint32_t)time(NULL)) + index * 0x10000u) & 0xffffff;
	if ((srv->base = server_worker_base()) == NULL)
		return -1;
	srv->ev_stop = event_new(srv->base, -1, 0, server_stop_cb, srv);
	srv->ev_reload = event_new(srv->base, -1, 0, server_reload_cb, srv);
	srv->ev_drain = evtimer_new(srv->base, server_drain_timeout_cb, srv);
	srv->ev_ctl = event_new(srv->base, -1, 0, server_ctl_cb, srv);
	srv->ev_reap = event_new(srv->base, -1, 0, server_reap_cb, srv);
	srv->auth_pool = authhttp_pool_new();
	if (srv->ev_stop == NULL || srv->ev_reload == NULL || srv->ev_drain == NULL ||
	    srv->ev_ctl == NULL || srv->ev_reap == NULL || srv->auth_pool == NULL)
		return -1;
	pthread_mutex_init(&srv->lock, NULL);
	if ((srv->listeners = calloc(cf->nlisten, sizeof(*srv->listeners))) == NULL)
		return -1;
	for (size_t i = 0; i < cf->nlisten; i++) {
		if ((srv->listeners[i] = calloc(1, sizeof(**srv->listeners))) == NULL)
			return -1;
		srv->nlisteners++;
		if (server_listen(srv, srv->listeners[i], &cf->listen[i]) != 0)
			return -1;
	}
	return 0;
}

/*
 * Give free heap pages back after a burst of sessions.  A TLS handshake
 * uses far more memory for a moment than the session keeps; after many at
 * once, glibc keeps the freed pages (in the middle of its heaps, where it
 * never trims by itself), and the resident size stays at the peak.
 * malloc_trim releases every whole free page of every arena.
 */
static void
server_trim_cb(evutil_socket_t fd, short what, void *arg)
{
	struct gate *g = arg;
	struct timeval tv;
	uint64_t now, seen = stats_get(&stats.sessions_total) + stats_get(&stats.sessions_ended);

	(void)fd;
	(void)what;
	ratelog_flush();	/* the same tick ends rate-limited seconds */
	event_base_gettimeofday_cached(g->base, &tv);
	now = (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000;
	if (seen != g->trim_seen) {
		g->trim_seen = seen;
		g->trim_changed_ms = now;
		if (g->trim_dirty_ms == 0)
			g->trim_dirty_ms = now;
		if (now - g->trim_dirty_ms < SERVER_TRIM_MAX_MS)
			return;
	} else if (g->trim_dirty_ms == 0 || now - g->trim_changed_ms < SERVER_TRIM_QUIET_MS)
		return;
	g->trim_dirty_ms = 0;
#ifdef __GLIBC__
	malloc_trim(0);
#endif
}

/* Build the first generation, the limits and the workers. */
int
server_gate_open(struct gate *g, struct config *cf)
{
	char err[256];
	long ncpu;

	evthread_use_pthreads();
	signal(SIGPIPE, SIG_IGN);
	pthread_mutex_init(&g->reload_lock, NULL);
	pthread_cond_init(&g->reload_cond, NULL);
	if ((g->gen = generation_new(cf, ++g->next_gen, NULL, err, sizeof(err))) == NULL) {
		char esc[LOGESC_SIZE(256)];

		log_error("msg=\"setup failed\" error=\"%s\"", logesc_quote(err, esc, sizeof(esc)));
		config_free(cf);
		return -1;
	}
	g->limits = connlimit_new(cf->max_connections, cf->max_connections_per_ip);
	if ((g->base = event_base_new()) == NULL || g->limits == NULL) {
		log_error("msg=\"out of memory\"");
		return -1;
	}
	ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	g->nworkers = cf->workers > 0 ? cf->workers : ncpu > 0 ? (unsigned)ncpu : 1;
	if (g->nworkers > SERVER_MAX_WORKERS)
		g->nworkers = SERVER_MAX_WORKERS;
	if ((g->workers = calloc(g->nworkers, sizeof(*g->workers))) == NULL)
		return -1;
	for (unsigned i = 0; i < g->nworkers; i++)
		if (server_worker_open(g, &g->workers[i], i) != 0)
			return -1;
	for (size_t i = 0; i < cf->nlisten; i++) {
		const struct config_listen *lc = &cf->listen[i];
		log_info("msg=listening listen=%s tls=%s proxy_protocol=%d workers=%u",
		    lc->address, lc->tls == CONFIG_TLS_IMPLICIT ? "implicit" :
		    lc->tls == CONFIG_TLS_STARTTLS ? "starttls" : "none",
		    lc->proxy_protocol, g->nworkers);
	}
	g->ev_sigint = evsignal_new(g->base, SIGINT, server_signal_cb, g);
	g->ev_sigterm = evsignal_new(g->base, SIGTERM, server_signal_cb, g);
	g->ev_sighup = evsignal_new(g->base, SIGHUP, server_sighup_cb, g);
	evsignal_add(g->ev_sigint, NULL);
	evsignal_add(g->ev_sigterm, NULL);
	evsignal_add(g->ev_sighup, NULL);
	g->ev_trim = event_new(g->base, -1, EV_PERSIST, server_trim_cb, g);
	if (g->ev_trim != NULL) {
		struct timeval tv = { 0, SERVER_TRIM_TICK_MS * 1000 };

		evtimer_add(g->ev_trim, &tv);
	}
	if (cf->metrics_address != NULL && (g->metrics = metrics_start(g)) == NULL)
		return -1;
	if (control_open(g) != 0)
		return -1;
	pool_health_start(g->gen->pool, g->base, g->gen->btls);
	if (server_drop_privileges(cf) != 0)
		return -1;
	return 0;
}

/* Run the workers and the main loop; join the workers when it ends. */
int
server_gate_run(struct gate *g)
{
	int rc = 0;

	for (unsigned i = 0; i < g->nworkers; i++) {
		if (pthread_create(&g->workers[i].thread, NULL, server_worker_main,
		    &g->workers[i]) != 0) {
			log_error("msg=\"cannot start worker\" worker=%u", i);
			rc = -1;
			break;
		}
		g->workers[i].started = 1;
		atomic_fetch_add(&g->running, 1);
	}
	if (rc == 0) {
		sd_notify(0, "READY=1");
		if (event_base_dispatch(g->base) < 0)
			rc = -1;
	}
	for (unsigned i = 0; i < g->nworkers; i++)
		if (g->workers[i].started) {
			event_active(g->workers[i].ev_stop, EV_TIMEOUT, 0);
			pthread_join(g->workers[i].thread, NULL);
			g->workers[i].started = 0;
		}
	return rc;
}

/* Free one worker (its thread has ended). */
static void
server_worker_close(struct server *srv)
{
	for (size_t i = 0; i < srv->nlisteners; i++)
		if (srv->listeners[i] != NULL)
			server_listener_free(srv, srv->listeners[i]);
	free(srv->listeners);
	if (srv->ev_stop != NULL)
		event_free(srv->ev_stop);
	if (srv->ev_reload != NULL)
		event_free(srv->ev_reload);
	if (srv->ev_drain != NULL)
		event_free(srv->ev_drain);
	if (srv->ev_ctl != NULL)
		event_free(srv->ev_ctl);
	if (srv->ev_reap != NULL) {
		session_reap(srv);
		event_free(srv->ev_reap);
	}
	/* After the sessions: their lookups are cancelled, none uses the pool. */
	authhttp_pool_free(srv->auth_pool);
	srv->auth_pool = NULL;
	if (srv->next_gen != NULL)
		generation_unref(srv->next_gen);
	if (srv->base != NULL)
		pthread_mutex_destroy(&srv->lock);
	if (srv->base != NULL)
		event_base_free(srv->base);
	generation_unref(srv->gen);
}

/* Free everything. */
void
server_gate_close(struct gate *g)
{
	for (unsigned i = 0; i < g->nworkers; i++)
		server_worker_close(&g->workers[i]);
	free(g->workers);
	if (g->ev_sigint != NULL)
		event_free(g->ev_sigint);
	if (g->ev_sigterm != NULL)
		event_free(g->ev_sigterm);
	if (g->ev_sighup != NULL)
		event_free(g->ev_sighup);
	if (g->ev_trim != NULL)
		event_free(g->ev_trim);
	metrics_stop(g->metrics);
	control_close(g);
	if (g->gen != NULL)
		pool_health_stop(g->gen->pool);
	generation_unref(g->gen);
	connlimit_free(g->limits);
	pthread_cond_destroy(&g->reload_cond);
	pthread_mutex_destroy(&g->reload_lock);
	endpoint_thread_done();		/* health checks' endpoints ran here */
	if (g->base != NULL)
		event_base_free(g->base);
}
