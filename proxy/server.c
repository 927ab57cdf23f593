/* server: listeners, accept, signals, and the loop. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/listener.h>

#include "config.h"
#include "netaddr.h"
#include "proxyproto.h"
#include "log.h"
#include "server.h"
#include "session.h"
#include "tls.h"

/* How long accepting pauses when the process is out of file descriptors. */
#define SERVER_ACCEPT_PAUSE_MS	100
/* How long a PROXY header may take to arrive, and how often an incomplete one is re-read. */
#define SERVER_PROXY_TIMEOUT_MS	10000
#define SERVER_PROXY_RETRY_MS	5

struct server_listener {
	struct server		*srv;
	const struct config_listen *lc;
	struct evconnlistener	*evl;
	struct event		*ev_resume;
};

/* A connection whose PROXY protocol header has not arrived yet. */
struct server_pending {
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
		a = (const unsigned char *)&((const struct sockaddr_in6 *)sa)->sin6_addr;
		alen = 16;
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

/* Give up on a connection whose PROXY header is missing or bad. */
static void
server_pending_fail(struct server_pending *pp, const char *why)
{
	char addr[NETADDR_STRLEN];

	log_warn("msg=proxy-header-rejected listen=%s peer=%s error=\"%s\"",
	    pp->l->lc->address,
	    netaddr_str((const struct sockaddr *)&pp->peer, addr, sizeof(addr)), why);
	close(pp->fd);
	event_free(pp->ev);
	free(pp);
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

	(void)what;
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
		 * Part of the header is in the socket: it stays readable, so
		 * wait a moment instead of spinning; with nothing there, wait
		 * for bytes.  Either way the deadline above bounds it.
		 */
		event_del(pp->ev);
		event_assign(pp->ev, pp->l->srv->base, fd, n > 0 ? 0 : EV_READ,
		    server_pending_cb, pp);
		if (n == 0)
			timersub(&pp->deadline, &now, &retry);
		event_add(pp->ev, &retry);
		return;
	}
	if (recv(fd, buf, (size_t)len, 0) != len) {
		server_pending_fail(pp, "short read of the PROXY header");
		return;
	}
	event_free(pp->ev);
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
		log_warn("msg=proxy-peer-untrusted listen=%s peer=%s", l->lc->address,
		    netaddr_str(sa, addr, sizeof(addr)));
		close(fd);
		return;
	}
	if ((pp = calloc(1, sizeof(*pp))) == NULL) {
		close(fd);
		return;
	}
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

	log_warn("msg=accept-failed listen=%s error=\"%s\"", l->lc->address,
	    strerror(err));
	evconnlistener_disable(evl);
	evtimer_add(l->ev_resume, &tv);
}

/* SIGINT/SIGTERM: leave the loop. */
static void
server_signal_cb(evutil_socket_t sig, short what, void *arg)
{
	struct server *srv = arg;

	(void)what;
	log_info("msg=stopping signal=%d sessions=%llu", (int)sig,
	    (unsigned long long)srv->nsessions);
	event_base_loopbreak(srv->base);
}

/* Bind all listeners and install signal handlers. */
int
server_open(struct server *srv)
{
	struct config *cf = srv->cf;
	char err[256];
	size_t i;

	TAILQ_INIT(&srv->sessions);
	if ((srv->base = event_base_new()) == NULL) {
		log_error("msg=\"cannot create event base\"");
		return -1;
	}
	for (i = 0; i < cf->nlisten; i++)
		if (cf->listen[i].tls != CONFIG_TLS_NONE)
			break;
	if (i < cf->nlisten && (srv->tls = tls_ctx_new(cf, err, sizeof(err))) == NULL) {
		log_error("msg=\"tls setup failed\" error=\"%s\"", err);
		return -1;
	}
	if (cf->backend_tls != CONFIG_TLS_NONE &&
	    (srv->btls = tls_ctx_new_backend(cf, err, sizeof(err))) == NULL) {
		log_error("msg=\"backend tls setup failed\" error=\"%s\"", err);
		return -1;
	}
	if ((srv->listeners = calloc(cf->nlisten, sizeof(*srv->listeners))) == NULL)
		return -1;
	for (i = 0; i < cf->nlisten; i++) {
		struct server_listener *l = &srv->listeners[i];
		const struct config_listen *lc = &cf->listen[i];

		l->srv = srv;
		l->lc = lc;
		l->evl = evconnlistener_new_bind(srv->base, server_accept_cb, l,
		    LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_EXEC,
		    1024, (const struct sockaddr *)&lc->addr.ss, (int)lc->addr.len);
		if (l->evl == NULL) {
			log_error("msg=\"cannot listen\" listen=%s error=\"%s\"",
			    lc->address, strerror(errno));
			return -1;
		}
		srv->nlisteners++;
		evconnlistener_set_error_cb(l->evl, server_accept_error_cb);
		l->ev_resume = evtimer_new(srv->base, server_resume_cb, l);
		log_info("msg=listening listen=%s tls=%s proxy_protocol=%d", lc->address,
		    lc->tls == CONFIG_TLS_IMPLICIT ? "implicit" :
		    lc->tls == CONFIG_TLS_STARTTLS ? "starttls" : "none", lc->proxy_protocol);
	}
	signal(SIGPIPE, SIG_IGN);
	srv->ev_sigint = evsignal_new(srv->base, SIGINT, server_signal_cb, srv);
	srv->ev_sigterm = evsignal_new(srv->base, SIGTERM, server_signal_cb, srv);
	evsignal_add(srv->ev_sigint, NULL);
	evsignal_add(srv->ev_sigterm, NULL);
	srv->id_prefix = (uint32_t)getpid() ^ (uint32_t)time(NULL);
	return 0;
}

/* Run until stopped. */
int
server_run(struct server *srv)
{
	return event_base_dispatch(srv->base) < 0 ? -1 : 0;
}

/* Tear everything down: sessions first, then listeners, then the loop. */
void
server_close(struct server *srv)
{
	struct session *s;
	size_t i;

	while ((s = TAILQ_FIRST(&srv->sessions)) != NULL)
		session_close(s, "shutdown");
	/* Run the deferred frees the closes scheduled. */
	if (srv->base != NULL)
		event_base_loop(srv->base, EVLOOP_NONBLOCK);
	for (i = 0; i < srv->nlisteners; i++) {
		evconnlistener_free(srv->listeners[i].evl);
		if (srv->listeners[i].ev_resume != NULL)
			event_free(srv->listeners[i].ev_resume);
	}
	free(srv->listeners);
	if (srv->ev_sigint != NULL)
		event_free(srv->ev_sigint);
	if (srv->ev_sigterm != NULL)
		event_free(srv->ev_sigterm);
	tls_ctx_free(srv->tls);
	tls_ctx_free(srv->btls);
	if (srv->base != NULL)
		event_base_free(srv->base);
}
