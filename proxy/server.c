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
#include "log.h"
#include "server.h"
#include "session.h"
#include "tls.h"

/* How long accepting pauses when the process is out of file descriptors. */
#define SERVER_ACCEPT_PAUSE_MS	100

struct server_listener {
	struct server		*srv;
	const struct config_listen *lc;
	struct evconnlistener	*evl;
	struct event		*ev_resume;
};

/* A client connected: hand the socket to a new session. */
static void
server_accept_cb(struct evconnlistener *evl, evutil_socket_t fd,
    struct sockaddr *sa, int salen, void *arg)
{
	struct server_listener *l = arg;

	(void)evl;
	session_start(l->srv, l->lc, fd, sa, (socklen_t)salen);
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
		if (cf->listen[i].tls == CONFIG_TLS_IMPLICIT)
			break;
	if (i < cf->nlisten && (srv->tls = tls_ctx_new(cf, err, sizeof(err))) == NULL) {
		log_error("msg=\"tls setup failed\" error=\"%s\"", err);
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
		log_info("msg=listening listen=%s tls=%s", lc->address,
		    lc->tls == CONFIG_TLS_IMPLICIT ? "implicit" : "none");
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
	if (srv->base != NULL)
		event_base_free(srv->base);
}
