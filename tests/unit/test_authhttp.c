/*
 * test_authhttp: unit tests for the auth_http client (proxy/authhttp.c).
 *
 * Scripted HTTP servers run in this process, on 127.0.0.1 ephemeral
 * ports and on the same event loop as the client: an evhttp server for
 * well-formed answers, and a raw listener for broken ones (closing early,
 * garbage, silence, a 1 MiB header, a slow drip) and for capturing the
 * request byte for byte.  Run under ASan, the cancel tests also show that
 * nothing leaks.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <event2/listener.h>

#include "authhttp.h"
#include "check.h"

#define RAW_REQ_MAX	65536		/* request bytes a raw server keeps */
#define WAIT_MS		5000		/* longest a test waits for an answer */
#define SEQ_REQUESTS	1000		/* requests in the fd-growth test */
#define HUGE_HEADER	(1024 * 1024)	/* the oversized header's length */

static struct event_base *base;

/* ---- waiting on the loop ---- */

/* Set *flag when the deadline passes. */
static void
deadline_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	*(int *)arg = 1;
}

/* Run the loop until *flag is nonzero or ms have passed; returns *flag. */
static int
run_until(const int *flag, int ms)
{
	struct timeval tv = { ms / 1000, (ms % 1000) * 1000 };
	int expired = 0;
	struct event *ev = evtimer_new(base, deadline_cb, &expired);

	evtimer_add(ev, &tv);
	while (!*flag && !expired)
		event_base_loop(base, EVLOOP_ONCE);
	event_free(ev);
	return *flag;
}

/* Run the loop for ms. */
static void
run_for(int ms)
{
	int never = 0;

	run_until(&never, ms);
}

/* Milliseconds from a to b. */
static long
ms_between(const struct timeval *a, const struct timeval *b)
{
	return (b->tv_sec - a->tv_sec) * 1000L + (b->tv_usec - a->tv_usec) / 1000L;
}

/* Open file descriptors of this process. */
static int
count_fds(void)
{
	DIR *d = opendir("/proc/self/fd");
	struct dirent *e;
	int n = 0;

	if (d == NULL)
		return -1;
	while ((e = readdir(d)) != NULL)
		if (e->d_name[0] != '.')
			n++;
	closedir(d);
	return n - 1;	/* the directory itself */
}

/* A loopback port nobody listens on: bind one, note it, close it. */
static unsigned
dead_port(void)
{
	struct sockaddr_in sin;
	socklen_t len = sizeof(sin);
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	bind(fd, (struct sockaddr *)&sin, sizeof(sin));
	getsockname(fd, (struct sockaddr *)&sin, &len);
	close(fd);
	return ntohs(sin.sin_port);
}

/* Lower the descriptor limit to the lowest free descriptor (no new socket), or restore it. */
static void
no_more_fds(int on)
{
	static struct rlimit saved;
	struct rlimit low;
	int fd;

	if (!on) {
		setrlimit(RLIMIT_NOFILE, &saved);
		return;
	}
	fd = dup(0);
	close(fd);
	getrlimit(RLIMIT_NOFILE, &saved);
	low = saved;
	low.rlim_cur = (rlim_t)fd;
	setrlimit(RLIMIT_NOFILE, &low);
}

/* ---- the client side: one answer ---- */

struct result {
	int			 calls;
	int			 started;	/* authhttp_start has returned */
	int			 early;		/* the callback came before that */
	int			 cancel_in_cb;	/* call authhttp_cancel from the callback */
	struct authhttp		*h;
	struct authhttp_answer	 a;		/* copy; user and pass below */
	int			 has_user, has_pass;
	char			 user[512];
	char			 pass[512];
	size_t			 passlen;
	struct timeval		 at;
};

/* The callback: copy the answer (it is gone after return). */
static void
result_cb(const struct authhttp_answer *a, void *arg)
{
	struct result *res = arg;

	res->calls++;
	if (!res->started)
		res->early = 1;
	res->a = *a;
	res->a.user = res->a.pass = NULL;
	if (a->user != NULL) {
		res->has_user = 1;
		snprintf(res->user, sizeof(res->user), "%s", a->user);
	}
	if (a->pass != NULL && a->passlen < sizeof(res->pass)) {
		res->has_pass = 1;
		memcpy(res->pass, a->pass, a->passlen);
		res->passlen = a->passlen;
	}
	gettimeofday(&res->at, NULL);
	if (res->cancel_in_cb)
		authhttp_cancel(res->h);	/* must do nothing */
}

/* The usual query: alice/secret, first attempt, plaintext client. */
static struct authhttp_query
query_default(void)
{
	struct authhttp_query q;

	memset(&q, 0, sizeof(q));
	q.method = AUTHHTTP_METHOD_PLAIN;
	q.user = "alice";
	q.pass = "secret";
	q.passlen = 6;
	q.attempt = 1;
	q.client_ip = "192.0.2.42";
	return q;
}

/* Parse "http://127.0.0.1:port<path>" into u. */
static void
url_local(struct authhttp_url *u, unsigned port, const char *path)
{
	char text[128], err[256];

	snprintf(text, sizeof(text), "http://127.0.0.1:%u%s", port, path);
	if (authhttp_url_parse(text, u, err, sizeof(err)) != 0) {
		printf("cannot parse %s: %s\n", text, err);
		exit(2);
	}
}

/* Start one lookup, wait for its answer; returns the start time in *t0. */
static void
lookup(const struct authhttp_url *u, uint64_t timeout_ms, const struct authhttp_header *hdrs,
    size_t nhdrs, const struct authhttp_query *q, struct result *res, struct timeval *t0)
{
	struct authhttp_conf c = { u, timeout_ms, hdrs, nhdrs, NULL, 0 };
	struct timeval now;

	gettimeofday(t0 != NULL ? t0 : &now, NULL);
	res->h = authhttp_start(base, &c, q, result_cb, res);
	res->started = 1;
	run_until(&res->calls, WAIT_MS);
}

/* ---- the evhttp server: well-formed answers ---- */

struct reply {
	int		 code;
	const char	*hdr[16];	/* name, value, ..., NULL */
	size_t		 body;		/* body bytes ('b') */
};

static const struct reply *cur_reply;
static struct evhttp *http;
static unsigned http_port;
static int http_requests;
static char http_seen_user[256];

/* Answer a request as cur_reply says. */
static void
http_handler(struct evhttp_request *req, void *arg)
{
	struct evkeyvalq *out = evhttp_request_get_output_headers(req);
	const char *u = evhttp_find_header(evhttp_request_get_input_headers(req), "Auth-User");
	struct evbuffer *body = evbuffer_new();
	size_t i;

	(void)arg;
	http_requests++;
	snprintf(http_seen_user, sizeof(http_seen_user), "%s", u != NULL ? u : "");
	for (i = 0; cur_reply->hdr[i] != NULL; i += 2)
		evhttp_add_header(out, cur_reply->hdr[i], cur_reply->hdr[i + 1]);
	if (cur_reply->body > 0) {
		char *b = malloc(cur_reply->body);

		memset(b, 'b', cur_reply->body);
		evbuffer_add(body, b, cur_reply->body);
		free(b);
	}
	evhttp_send_reply(req, cur_reply->code, "Scripted", body);
	evbuffer_free(body);
}

/* The port a listening socket is bound to. */
static unsigned
bound_port(evutil_socket_t fd)
{
	struct sockaddr_in sin;
	socklen_t len = sizeof(sin);

	getsockname(fd, (struct sockaddr *)&sin, &len);
	return ntohs(sin.sin_port);
}

/* Start the evhttp server on an ephemeral port. */
static void
http_start(void)
{
	struct evhttp_bound_socket *bs;

	http = evhttp_new(base);
	bs = evhttp_bind_socket_with_handle(http, "127.0.0.1", 0);
	if (bs == NULL) {
		printf("cannot bind the evhttp server\n");
		exit(2);
	}
	http_port = bound_port(evhttp_bound_socket_get_fd(bs));
	evhttp_set_gencb(http, http_handler, NULL);
}

/* Ask the evhttp server for reply rp. */
static void
ask(const struct reply *rp, struct result *res)
{
	struct authhttp_url u;
	struct authhttp_query q = query_default();

	memset(res, 0, sizeof(*res));
	cur_reply = rp;
	url_local(&u, http_port, "/auth");
	lookup(&u, 3000, NULL, 0, &q, res, NULL);
	authhttp_url_clear(&u);
	run_for(5);	/* let the server side close */
}

/* ---- the raw server: broken answers, request capture ---- */

enum raw_mode {
	RAW_REPLY,		/* after the request: send reply, then close */
	RAW_CLOSE_AT_ONCE,	/* close as soon as accepted */
	RAW_SILENT,		/* read the request, never answer */
	RAW_DRIP,		/* a status line, then one header byte every 20 ms */
	RAW_HUGE,		/* a status line and a 1 MiB header */
	RAW_KEEP,		/* answer every request on the connection, keep it open */
};

struct raw_conn {
	struct bufferevent	*bev;
	unsigned		 answered;	/* RAW_KEEP: requests answered */
	struct event		*late;		/* RAW_KEEP: sends srv->late */
	struct event		*closer;	/* RAW_KEEP: close_delay_ms */
	struct event		*drip;
	struct raw_server	*srv;
	LIST_ENTRY(raw_conn)	 next;
};

struct raw_server {
	struct evconnlistener	*l;
	unsigned		 port;
	enum raw_mode		 mode;
	const char		*reply;
	char			 req[RAW_REQ_MAX];
	size_t			 reqlen;
	int			 got_request;
	LIST_HEAD(, raw_conn)	 conns;
	/* RAW_KEEP */
	unsigned		 accepts;	/* connections accepted */
	unsigned		 requests;	/* requests seen */
	unsigned		 answer_max;	/* answer this many per connection, then
						 * close at the next one (0: no limit) */
	int			 close_after;	/* close each connection after its answer */
	const char		*late;		/* sent 20 ms after each answer, unasked */
	int			 late_ms;	/* instead of 20 ms (0: 20 ms) */
	unsigned		 silent_from;	/* from this accept on, never answer (0: off) */
	int			 close_delay_ms;	/* answer_max: close this much later */
	char			 line[64];	/* the last request line */
};

/* Close one raw connection. */
static void
raw_close(struct raw_conn *rc)
{
	LIST_REMOVE(rc, next);
	if (rc->drip != NULL)
		event_free(rc->drip);
	if (rc->late != NULL)
		event_free(rc->late);
	if (rc->closer != NULL)
		event_free(rc->closer);
	bufferevent_free(rc->bev);
	free(rc);
}

/* Close once the reply is written. */
static void
raw_write_cb(struct bufferevent *bev, void *arg)
{
	(void)bev;
	raw_close(arg);
}

/* The peer closed or failed. */
static void
raw_event_cb(struct bufferevent *bev, short what, void *arg)
{
	(void)bev;
	(void)what;
	raw_close(arg);
}

/* Send one more header byte. */
static void
raw_drip_cb(evutil_socket_t fd, short what, void *arg)
{
	struct raw_conn *rc = arg;

	(void)fd;
	(void)what;
	bufferevent_write(rc->bev, "a", 1);
}

/* RAW_KEEP: bytes nobody asked for, on a connection the client keeps idle. */
static void
raw_late_cb(evutil_socket_t fd, short what, void *arg)
{
	struct raw_conn *rc = arg;

	(void)fd;
	(void)what;
	bufferevent_write(rc->bev, rc->srv->late, strlen(rc->srv->late));
}

/* RAW_KEEP: close_delay_ms is over. */
static void
raw_closer_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	raw_close(arg);
}

/* RAW_KEEP: answer each whole request in turn, as a keep-alive server would. */
static void
raw_keep_read(struct raw_conn *rc)
{
	struct raw_server *s = rc->srv;
	struct evbuffer *in = bufferevent_get_input(rc->bev);
	struct evbuffer_ptr end;
	size_t eol;

	for (;;) {
		end = evbuffer_search(in, "\r\n\r\n", 4, NULL);
		if (end.pos < 0)
			return;
		s->requests++;
		eol = (size_t)evbuffer_search(in, "\r\n", 2, NULL).pos;
		if (eol >= sizeof(s->line))
			eol = sizeof(s->line) - 1;
		evbuffer_copyout(in, s->line, eol);
		s->line[eol] = '\0';
		evbuffer_drain(in, (size_t)end.pos + 4);
		if (s->silent_from > 0 && s->accepts >= s->silent_from)
			continue;
		if (s->answer_max > 0 && rc->answered >= s->answer_max) {
			/* The keep-alive timeout racing a request. */
			if (s->close_delay_ms > 0 && rc->closer == NULL) {
				struct timeval tv = { 0, s->close_delay_ms * 1000 };

				rc->closer = evtimer_new(base, raw_closer_cb, rc);
				evtimer_add(rc->closer, &tv);
			} else if (s->close_delay_ms == 0)
				raw_close(rc);
			return;
		}
		rc->answered++;
		if (s->close_after)
			bufferevent_setcb(rc->bev, NULL, raw_write_cb, raw_event_cb, rc);
		bufferevent_write(rc->bev, s->reply, strlen(s->reply));
		if (s->late != NULL) {
			struct timeval tv = { 0, (s->late_ms > 0 ? s->late_ms : 20) * 1000 };

			if (rc->late == NULL)
				rc->late = evtimer_new(base, raw_late_cb, rc);
			evtimer_add(rc->late, &tv);
		}
		if (s->close_after)
			return;
	}
}

/* Collect the request; once it is whole, act as the mode says. */
static void
raw_read_cb(struct bufferevent *bev, void *arg)
{
	struct raw_conn *rc = arg;
	struct raw_server *s = rc->srv;
	struct evbuffer *in = bufferevent_get_input(bev);
	size_t n = evbuffer_get_length(in);

	if (s->mode == RAW_KEEP) {
		raw_keep_read(rc);
		return;
	}
	if (n > RAW_REQ_MAX - s->reqlen)
		n = RAW_REQ_MAX - s->reqlen;
	evbuffer_remove(in, s->req + s->reqlen, n);
	s->reqlen += n;
	if (s->got_request || memmem(s->req, s->reqlen, "\r\n\r\n", 4) == NULL)
		return;
	s->got_request = 1;
	switch (s->mode) {
	case RAW_REPLY:
		if (s->reply[0] == '\0') {
			raw_close(rc);
			return;
		}
		bufferevent_setcb(bev, NULL, raw_write_cb, raw_event_cb, rc);
		bufferevent_write(bev, s->reply, strlen(s->reply));
		break;
	case RAW_DRIP: {
		struct timeval tv = { 0, 20000 };

		bufferevent_write(bev, "HTTP/1.0 200 OK\r\nX-Drip: ", 25);
		rc->drip = event_new(base, -1, EV_PERSIST, raw_drip_cb, rc);
		evtimer_add(rc->drip, &tv);
		break;
	}
	case RAW_HUGE: {
		char *big = malloc(HUGE_HEADER);

		memset(big, 'h', HUGE_HEADER);
		bufferevent_write(bev, "HTTP/1.0 200 OK\r\nX-Huge: ", 25);
		bufferevent_write(bev, big, HUGE_HEADER);
		bufferevent_write(bev, "\r\nAuth-Status: OK\r\n\r\n", 21);
		free(big);
		break;
	}
	case RAW_SILENT:
	case RAW_CLOSE_AT_ONCE:
	case RAW_KEEP:
		break;
	}
}

/* A connection arrived. */
static void
raw_accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int salen,
    void *arg)
{
	struct raw_server *s = arg;
	struct raw_conn *rc = calloc(1, sizeof(*rc));

	(void)l;
	(void)sa;
	(void)salen;
	rc->srv = s;
	s->accepts++;
	rc->bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (s->late_ms > 0) {
		/* Split answers: the rest goes out at once, not after a delayed ACK. */
		int one = 1;

		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	}
	LIST_INSERT_HEAD(&s->conns, rc, next);
	if (s->mode == RAW_CLOSE_AT_ONCE) {
		raw_close(rc);
		return;
	}
	bufferevent_setcb(rc->bev, raw_read_cb, NULL, raw_event_cb, rc);
	bufferevent_enable(rc->bev, EV_READ | EV_WRITE);
}

/* Start a raw server in mode m answering reply (RAW_REPLY). */
static struct raw_server *
raw_start(enum raw_mode m, const char *reply)
{
	struct raw_server *s = calloc(1, sizeof(*s));
	struct sockaddr_in sin;

	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	s->mode = m;
	s->reply = reply != NULL ? reply : "";
	LIST_INIT(&s->conns);
	s->l = evconnlistener_new_bind(base, raw_accept_cb, s,
	    LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE, 16, (struct sockaddr *)&sin, sizeof(sin));
	if (s->l == NULL) {
		printf("cannot bind a raw server\n");
		exit(2);
	}
	s->port = bound_port(evconnlistener_get_fd(s->l));
	return s;
}

/* Stop a raw server and close its connections. */
static void
raw_stop(struct raw_server *s)
{
	while (!LIST_EMPTY(&s->conns))
		raw_close(LIST_FIRST(&s->conns));
	if (s->l != NULL)
		evconnlistener_free(s->l);
	free(s);
}

/* Ask a raw server in mode m (reply for RAW_REPLY) with timeout_ms. */
static void
ask_raw(enum raw_mode m, const char *reply, uint64_t timeout_ms, struct result *res,
    struct timeval *t0)
{
	struct raw_server *s = raw_start(m, reply);
	struct authhttp_url u;
	struct authhttp_query q = query_default();

	memset(res, 0, sizeof(*res));
	url_local(&u, s->port, "/auth");
	lookup(&u, timeout_ms, NULL, 0, &q, res, t0);
	authhttp_url_clear(&u);
	raw_stop(s);
}

/* ---- tests ---- */

/* URLs: what is accepted, how it is split, what is refused and why. */
static void
test_url(void)
{
	static const char *const bad[] = {
		"https://127.0.0.1/auth", "ftp://127.0.0.1/", "unix:/run/auth.sock", "",
		"http://", "http://127.0.0.1:0/", "127.0.0.1:65536/", "127.0.0.1:12a/",
		"127.0.0.1:/", "user@127.0.0.1/", "127.0.0.1/a b", "127.0.0.1/a\x01",
		"127.0.0.1/a#frag", "127.0.0.1/\xc3\xa9", "[::1/x", "[zz]:80/", "[]:80/",
		"127.0.0.1x:80", "[::1]x/", "host.invalid./auth", "a_b c/",
	};
	struct authhttp_url u;
	char err[AUTHHTTP_PATH_MAX + 512], longurl[AUTHHTTP_PATH_MAX + 16];
	size_t i;

	CHECK(authhttp_url_parse("http://127.0.0.1:9000/auth", &u, err, sizeof(err)) == 0, "%s", err);
	CHECK(strcmp(u.host, "127.0.0.1") == 0 && u.port == 9000 && strcmp(u.path, "/auth") == 0 &&
	    strcmp(u.hostport, "127.0.0.1:9000") == 0 && strcmp(u.ip, "127.0.0.1") == 0,
	    "split %s %u %s %s %s", u.host, u.port, u.path, u.hostport, u.ip);
	authhttp_url_clear(&u);

	CHECK(authhttp_url_parse("127.0.0.1/cgi/auth.cgi?a=1&b=%20", &u, err, sizeof(err)) == 0,
	    "%s", err);
	CHECK(u.port == 80 && strcmp(u.path, "/cgi/auth.cgi?a=1&b=%20") == 0,
	    "default port and query: %u %s", u.port, u.path);
	authhttp_url_clear(&u);

	CHECK(authhttp_url_parse("HTTP://[::1]:8080?x=1", &u, err, sizeof(err)) == 0, "%s", err);
	CHECK(strcmp(u.host, "[::1]") == 0 && strcmp(u.ip, "::1") == 0 && u.port == 8080 &&
	    strcmp(u.path, "/?x=1") == 0 && strcmp(u.hostport, "[::1]:8080") == 0,
	    "IPv6: %s %s %u %s", u.host, u.ip, u.port, u.path);
	authhttp_url_clear(&u);

	CHECK(authhttp_url_parse("http://localhost:1", &u, err, sizeof(err)) == 0, "%s", err);
	CHECK(strcmp(u.host, "localhost") == 0 && strcmp(u.path, "/") == 0 &&
	    (strcmp(u.ip, "127.0.0.1") == 0 || strcmp(u.ip, "::1") == 0),
	    "name resolved: %s %s", u.host, u.ip);
	authhttp_url_clear(&u);
	authhttp_url_clear(&u);		/* twice is harmless */

	memcpy(longurl, "127.0.0.1/", 10);
	memset(longurl + 10, 'p', AUTHHTTP_PATH_MAX - 1);
	longurl[10 + AUTHHTTP_PATH_MAX - 1] = '\0';
	CHECK(authhttp_url_parse(longurl, &u, err, sizeof(err)) == 0 &&
	    strlen(u.path) == AUTHHTTP_PATH_MAX, "a path of %d bytes: %s", AUTHHTTP_PATH_MAX, err);
	authhttp_url_clear(&u);
	strcat(longurl, "p");
	CHECK(authhttp_url_parse(longurl, &u, err, sizeof(err)) == -1 &&
	    strstr(err, "path longer than") != NULL, "a path one byte too long");

	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		err[0] = '\0';
		CHECK(authhttp_url_parse(bad[i], &u, err, sizeof(err)) == -1,
		    "\"%s\" should be refused", bad[i]);
		CHECK(strstr(err, "auth_http URL") != NULL, "\"%s\": message \"%s\"", bad[i], err);
		CHECK(u.host == NULL && u.path == NULL && u.ip == NULL, "nothing left allocated");
	}
	authhttp_url_parse("https://x/", &u, err, sizeof(err));
	CHECK(strstr(err, "https is not supported") != NULL, "https message: %s", err);
	authhttp_url_parse("127.0.0.1:0/", &u, err, sizeof(err));
	CHECK(strstr(err, "port must be 1-65535") != NULL, "port message: %s", err);
}

/* auth_http_header names and values. */
static void
test_header_check(void)
{
	char err[256], big[1024 + 2];

	CHECK(authhttp_header_check("X-Auth-Key", "secret string", err, sizeof(err)) == 0, "%s", err);
	CHECK(authhttp_header_check("Auth-Secret", "x", err, sizeof(err)) == 0, "%s", err);
	CHECK(authhttp_header_check("", "x", err, sizeof(err)) == -1, "empty name");
	CHECK(authhttp_header_check("X Key", "x", err, sizeof(err)) == -1, "space in name");
	CHECK(authhttp_header_check("X:Key", "x", err, sizeof(err)) == -1, "colon in name");
	CHECK(authhttp_header_check("auth-pass", "x", err, sizeof(err)) == -1, "our own header");
	CHECK(strstr(err, "sends that header itself") != NULL, "message: %s", err);
	CHECK(authhttp_header_check("HOST", "x", err, sizeof(err)) == -1, "Host");
	CHECK(authhttp_header_check("X-Key", "a\r\nAuth-Pass: x", err, sizeof(err)) == -1, "CRLF");
	CHECK(authhttp_header_check("X-Key", "a\x01", err, sizeof(err)) == -1, "control byte");
	memset(big, 'v', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	CHECK(authhttp_header_check("X-Key", big, err, sizeof(err)) == -1, "value too long");
	big[sizeof(big) - 2] = '\0';
	CHECK(authhttp_header_check("X-Key", big, err, sizeof(err)) == 0, "value at the limit");
}

/* An OK answer: IPv4, IPv6, [IPv6], overrides, a 204 answer, a body ignored. */
static void
test_ok(void)
{
	static const struct reply v4 = { 200, { "Auth-Status", "OK", "Auth-Server", "127.0.0.2",
	    "Auth-Port", "143", NULL }, 0 };
	static const struct reply v6 = { 200, { "auth-status", "OK", "AUTH-SERVER", "2001:db8::7",
	    "Auth-Port", "993", "Auth-Wait", "4", NULL }, 0 };
	static const struct reply v6b = { 200, { "Auth-Status", "OK", "Auth-Server", "[::1]",
	    "Auth-Port", "1", NULL }, 0 };
	static const struct reply over = { 200, { "Auth-Status", "OK", "Auth-Server", "10.0.0.1",
	    "Auth-Port", "65535", "Auth-User", "bob@example.org", "Auth-Pass", "p%20w d",
	    "Auth-Server", "10.0.0.9", NULL }, 0 };
	static const struct reply nocontent = { 204, { "Auth-Status", "OK", "Auth-Server",
	    "192.0.2.1", "Auth-Port", "143", NULL }, 0 };
	static const struct reply body = { 200, { "Auth-Status", "OK", "Auth-Server", "192.0.2.1",
	    "Auth-Port", "143", NULL }, 1024 * 1024 };
	struct result res;
	struct sockaddr_in *sin = (struct sockaddr_in *)&res.a.server;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&res.a.server;
	char ip[INET6_ADDRSTRLEN];

	ask(&v4, &res);
	CHECK(res.calls == 1 && res.a.outcome == AUTHHTTP_OK, "v4: calls %d outcome %d (%s)",
	    res.calls, res.a.outcome, res.a.reason);
	CHECK(res.a.error == AUTHHTTP_E_NONE && res.a.http_status == 200, "v4 error/status");
	CHECK(sin->sin_family == AF_INET && ntohs(sin->sin_port) == 143 &&
	    sin->sin_addr.s_addr == htonl(0x7f000002) && res.a.serverlen == sizeof(*sin),
	    "v4 address");
	CHECK(!res.has_user && !res.has_pass && !res.a.has_wait, "v4: no overrides, no wait");
	CHECK(strcmp(http_seen_user, "alice") == 0, "the server saw Auth-User %s", http_seen_user);

	ask(&v6, &res);
	inet_ntop(AF_INET6, &sin6->sin6_addr, ip, sizeof(ip));
	CHECK(res.a.outcome == AUTHHTTP_OK && sin6->sin6_family == AF_INET6 &&
	    strcmp(ip, "2001:db8::7") == 0 && ntohs(sin6->sin6_port) == 993 &&
	    res.a.serverlen == sizeof(*sin6), "v6 (names without case): %s %s", ip, res.a.reason);
	CHECK(!res.a.has_wait, "Auth-Wait is not reported with OK");

	ask(&v6b, &res);
	inet_ntop(AF_INET6, &sin6->sin6_addr, ip, sizeof(ip));
	CHECK(res.a.outcome == AUTHHTTP_OK && strcmp(ip, "::1") == 0 &&
	    ntohs(sin6->sin6_port) == 1, "[v6]: %s %s", ip, res.a.reason);

	ask(&over, &res);
	CHECK(res.a.outcome == AUTHHTTP_OK && ntohs(sin->sin_port) == 65535 &&
	    sin->sin_addr.s_addr == htonl(0x0a000009), "the last Auth-Server counts: %s",
	    res.a.reason);
	CHECK(res.has_user && strcmp(res.user, "bob@example.org") == 0, "Auth-User override");
	CHECK(res.has_pass && res.passlen == 7 && memcmp(res.pass, "p%20w d", 7) == 0,
	    "Auth-Pass override verbatim (not unescaped)");

	ask(&nocontent, &res);
	CHECK(res.a.outcome == AUTHHTTP_OK && res.a.http_status == 204, "204: %s", res.a.reason);

	ask(&body, &res);
	CHECK(res.a.outcome == AUTHHTTP_OK, "a 1 MiB body is not read: %s", res.a.reason);
}

/* Denials, WAIT, and how Auth-Status text and Auth-Wait are kept. */
static void
test_denied(void)
{
	static const struct reply wait3 = { 200, { "Auth-Status", "Invalid login or password",
	    "Auth-Wait", "3", NULL }, 0 };
	static const struct reply nowait = { 200, { "Auth-Status", "Invalid login", NULL }, 0 };
	static const struct reply badwait = { 200, { "Auth-Status", "No", "Auth-Wait", "2",
	    "Auth-Wait", "x1", NULL }, 0 };
	static const struct reply bigwait = { 200, { "Auth-Status", "No", "Auth-Wait",
	    "99999999999999999999", NULL }, 0 };
	static const struct reply dirty = { 200, { "Auth-Status", "Bad\x01login \xc3\xa9\x7f!",
	    NULL }, 0 };
	static const struct reply forbidden = { 403, { "Auth-Status", "Go away", NULL }, 0 };
	static const struct reply mixed = { 200, { "Auth-Status", "Temporary failure",
	    "Auth-Status", "OK", "Auth-Server", "127.0.0.1", "Auth-Port", "143", NULL }, 0 };
	static const struct reply lower = { 200, { "Auth-Status", "ok", "Auth-Server", "127.0.0.1",
	    "Auth-Port", "143", NULL }, 0 };
	static const struct reply retry = { 200, { "Auth-Status", "WAIT", "Auth-Wait", "2",
	    NULL }, 0 };
	static struct reply longtext = { 200, { "Auth-Status", NULL, NULL }, 0 };
	static char text[400];
	struct result res;

	ask(&wait3, &res);
	CHECK(res.a.outcome == AUTHHTTP_DENIED && res.a.error == AUTHHTTP_E_NONE,
	    "denied: %d %s", res.a.outcome, res.a.reason);
	CHECK(strcmp(res.a.status, "Invalid login or password") == 0, "status \"%s\"", res.a.status);
	CHECK(res.a.has_wait && res.a.wait_s == 3, "Auth-Wait 3: %d %u", res.a.has_wait, res.a.wait_s);

	ask(&nowait, &res);
	CHECK(res.a.outcome == AUTHHTTP_DENIED && !res.a.has_wait, "no Auth-Wait");

	ask(&badwait, &res);
	CHECK(res.a.has_wait && res.a.wait_s == 2, "a bad Auth-Wait is ignored: %u", res.a.wait_s);

	ask(&bigwait, &res);
	CHECK(res.a.has_wait && res.a.wait_s == AUTHHTTP_WAIT_MAX, "Auth-Wait cut to %u",
	    res.a.wait_s);

	ask(&dirty, &res);
	CHECK(strcmp(res.a.status, "Bad?login ?\?\?!") == 0, "printable only: \"%s\"", res.a.status);

	ask(&forbidden, &res);
	CHECK(res.a.outcome == AUTHHTTP_DENIED && res.a.http_status == 403 &&
	    strcmp(res.a.status, "Go away") == 0, "a 403 denial is a denial: %s", res.a.reason);

	ask(&mixed, &res);
	CHECK(res.a.outcome == AUTHHTTP_DENIED && strcmp(res.a.status, "Temporary failure") == 0,
	    "a denial beside OK wins (nginx): %d", res.a.outcome);

	ask(&lower, &res);
	CHECK(res.a.outcome == AUTHHTTP_DENIED && strcmp(res.a.status, "ok") == 0,
	    "\"ok\" is not OK (nginx compares with case)");

	ask(&retry, &res);
	CHECK(res.a.outcome == AUTHHTTP_RETRY && res.a.has_wait && res.a.wait_s == 2,
	    "WAIT: %d %u", res.a.outcome, res.a.wait_s);

	memset(text, 'x', sizeof(text) - 1);
	longtext.hdr[1] = text;
	ask(&longtext, &res);
	CHECK(res.a.outcome == AUTHHTTP_DENIED && strlen(res.a.status) == AUTHHTTP_STATUS_MAX,
	    "status cut to %zu", strlen(res.a.status));
}

/* Answers that are HTTP but not usable. */
static void
test_bad_answers(void)
{
	static const struct reply e500 = { 500, { NULL }, 0 };
	static const struct reply e502ok = { 502, { "Auth-Status", "OK", "Auth-Server", "127.0.0.1",
	    "Auth-Port", "143", NULL }, 0 };
	static const struct reply nostatus = { 200, { "Auth-Server", "127.0.0.1", "Auth-Port", "143",
	    NULL }, 0 };
	static const struct reply noserver = { 200, { "Auth-Status", "OK", "Auth-Port", "143",
	    NULL }, 0 };
	static const struct reply noport = { 200, { "Auth-Status", "OK", "Auth-Server", "127.0.0.1",
	    NULL }, 0 };
	static const char *const servers[] = { "mail.example.org", "1.2.3", "", "[1.2.3.4]",
	    "::1%lo", "127.0.0.1:143", "256.1.1.1" };
	static const char *const ports[] = { "abc", "0", "65536", "-1", "143x", "1433333", "" };
	static struct reply r = { 200, { "Auth-Status", "OK", "Auth-Server", NULL, "Auth-Port",
	    NULL, NULL }, 0 };
	struct result res;
	size_t i;

	ask(&e500, &res);
	CHECK(res.a.outcome == AUTHHTTP_ERROR && res.a.error == AUTHHTTP_E_HTTP_STATUS &&
	    res.a.http_status == 500, "500: %d %s", res.a.error, res.a.reason);
	ask(&e502ok, &res);
	CHECK(res.a.error == AUTHHTTP_E_HTTP_STATUS, "502 with OK is not OK: %s", res.a.reason);
	ask(&nostatus, &res);
	CHECK(res.a.error == AUTHHTTP_E_NO_STATUS, "no Auth-Status: %s", res.a.reason);
	ask(&noserver, &res);
	CHECK(res.a.error == AUTHHTTP_E_SERVER, "no Auth-Server: %s", res.a.reason);
	ask(&noport, &res);
	CHECK(res.a.error == AUTHHTTP_E_PORT, "no Auth-Port: %s", res.a.reason);

	r.hdr[5] = "143";
	for (i = 0; i < sizeof(servers) / sizeof(servers[0]); i++) {
		r.hdr[3] = servers[i];
		ask(&r, &res);
		CHECK(res.a.outcome == AUTHHTTP_ERROR && res.a.error == AUTHHTTP_E_SERVER,
		    "Auth-Server \"%s\": %d %s", servers[i], res.a.error, res.a.reason);
	}
	ask(&r, &res);
	CHECK(strstr(res.a.reason, "not an IP address") != NULL, "reason: %s", res.a.reason);
	r.hdr[3] = "127.0.0.1";
	for (i = 0; i < sizeof(ports) / sizeof(ports[0]); i++) {
		r.hdr[5] = ports[i];
		ask(&r, &res);
		CHECK(res.a.outcome == AUTHHTTP_ERROR && res.a.error == AUTHHTTP_E_PORT,
		    "Auth-Port \"%s\": %d %s", ports[i], res.a.error, res.a.reason);
	}
}

/* Broken servers: each failure is its own kind, with no hang. */
static void
test_broken(void)
{
	struct result res;
	struct timeval t0;
	long ms;
	struct authhttp_url u;
	struct authhttp_query q = query_default();

	ask_raw(RAW_REPLY, "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Ser", 3000, &res, NULL);
	CHECK(res.a.error == AUTHHTTP_E_CLOSED && strstr(res.a.reason, "middle") != NULL,
	    "closed mid-headers: %d %s", res.a.error, res.a.reason);
	ask_raw(RAW_REPLY, "", 3000, &res, NULL);
	CHECK(res.a.error == AUTHHTTP_E_CLOSED && strstr(res.a.reason, "without") != NULL,
	    "closed without answer: %d %s", res.a.error, res.a.reason);
	ask_raw(RAW_CLOSE_AT_ONCE, NULL, 3000, &res, NULL);
	CHECK(res.a.error == AUTHHTTP_E_CLOSED, "closed at once: %d %s", res.a.error, res.a.reason);
	ask_raw(RAW_REPLY, "SSH-2.0-OpenSSH_9.6\r\n\r\n", 3000, &res, NULL);
	CHECK(res.a.error == AUTHHTTP_E_PROTOCOL, "garbage: %d %s", res.a.error, res.a.reason);
	ask_raw(RAW_REPLY, "Auth-Status: OK\r\nAuth-Server: 127.0.0.1\r\nAuth-Port: 143\r\n\r\n",
	    3000, &res, NULL);
	CHECK(res.a.error == AUTHHTTP_E_PROTOCOL, "no status line: %d %s", res.a.error, res.a.reason);
	ask_raw(RAW_REPLY, "HTTP/2.0 200 OK\r\nAuth-Status: OK\r\n\r\n", 3000, &res, NULL);
	CHECK(res.a.error == AUTHHTTP_E_PROTOCOL, "HTTP/2.0: %d %s", res.a.error, res.a.reason);
	ask_raw(RAW_REPLY, "HTTP/1.0 200 OK\r\nno colon here\r\n\r\n", 3000, &res, NULL);
	CHECK(res.a.error == AUTHHTTP_E_PROTOCOL, "bad header: %d %s", res.a.error, res.a.reason);
	ask_raw(RAW_HUGE, NULL, 3000, &res, NULL);
	CHECK(res.a.error == AUTHHTTP_E_TOO_LARGE, "1 MiB header: %d %s", res.a.error, res.a.reason);

	ask_raw(RAW_SILENT, NULL, 300, &res, &t0);
	ms = ms_between(&t0, &res.at);
	CHECK(res.calls == 1 && res.a.error == AUTHHTTP_E_TIMEOUT, "silent: %d %s", res.a.error,
	    res.a.reason);
	CHECK(ms >= 295 && ms < 800, "timeout of 300 ms fired after %ld ms", ms);

	ask_raw(RAW_DRIP, NULL, 400, &res, &t0);
	ms = ms_between(&t0, &res.at);
	CHECK(res.a.error == AUTHHTTP_E_TIMEOUT, "drip: %d %s", res.a.error, res.a.reason);
	CHECK(ms >= 395 && ms < 900, "a slow drip cannot stretch the timeout: %ld ms", ms);

	memset(&res, 0, sizeof(res));
	url_local(&u, dead_port(), "/");
	lookup(&u, 3000, NULL, 0, &q, &res, NULL);
	CHECK(res.calls == 1 && res.a.error == AUTHHTTP_E_CONNECT, "refused: %d %s", res.a.error,
	    res.a.reason);
	CHECK(!res.early, "the callback came from inside authhttp_start");
	run_for(50);
	CHECK(res.calls == 1, "exactly one callback for a refused connect: %d", res.calls);
	authhttp_url_clear(&u);

	/*
	 * No descriptor left: libevent fails the connect inside
	 * evhttp_make_request and calls back at once; the answer must still
	 * come from the loop, after authhttp_start has returned.
	 */
	url_local(&u, http_port, "/");
	memset(&res, 0, sizeof(res));
	no_more_fds(1);
	lookup(&u, 3000, NULL, 0, &q, &res, NULL);
	no_more_fds(0);
	CHECK(res.calls == 1 && res.a.error == AUTHHTTP_E_CONNECT && !res.early,
	    "no socket: calls %d error %d early %d", res.calls, res.a.error, res.early);
	run_for(20);
	CHECK(res.calls == 1, "exactly one callback without a socket: %d", res.calls);
	authhttp_url_clear(&u);
}

/* The expected escaping of s, written from nginx's NGX_ESCAPE_MAIL_AUTH table. */
static size_t
expect_escape(const unsigned char *s, size_t len, char *out)
{
	size_t i, n = 0;

	for (i = 0; i < len; i++) {
		if (s[i] <= 0x20 || s[i] == 0x25)
			n += (size_t)sprintf(out + n, "%%%02X", s[i]);
		else
			out[n++] = (char)s[i];
	}
	out[n] = '\0';
	return n;
}

/* The request, byte for byte: headers, order, escaping of every byte. */
static void
test_request_bytes(void)
{
	static const struct authhttp_header extra[] = { { "X-Auth-Key", "secret string" } };
	static const char reply[] = "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\n"
	    "Auth-Server: 127.0.0.1\r\nAuth-Port: 143\r\n\r\n";
	unsigned char pass[256];
	const char *user = "us er%\x01\xc3\xa9+=";
	char *expect = malloc(8192), esc[1024], upath[64];
	struct raw_server *s;
	struct authhttp_url u;
	struct authhttp_query q = query_default();
	struct result res;
	size_t i, n;

	for (i = 0; i < 256; i++)
		pass[i] = (unsigned char)i;
	n = expect_escape(pass, 256, esc);
	CHECK(n == 256 + 34 * 2, "34 bytes are escaped: %zu", n);
	CHECK(strncmp(esc, "%00%01%02", 9) == 0 && strstr(esc, "%1F%20!\"#$%25&'") != NULL &&
	    strstr(esc, "~\x7f\x80\x81") != NULL, "spot check of the table");

	/* A TLS client behind a PROXY header, attempt 3, one auth_http_header. */
	s = raw_start(RAW_REPLY, reply);
	snprintf(upath, sizeof(upath), "/auth?x=1");
	url_local(&u, s->port, upath);
	q.user = user;
	q.pass = (const char *)pass;
	q.passlen = sizeof(pass);
	q.attempt = 3;
	q.ssl = 1;
	q.ssl_protocol = "TLSv1.3";
	q.ssl_cipher = "TLS_AES_256_GCM_SHA384";
	q.pp_addr = "192.0.2.42";
	q.pp_port = 50000;
	q.pp_server_addr = "198.51.100.1";
	q.pp_server_port = 993;
	memset(&res, 0, sizeof(res));
	lookup(&u, 3000, extra, 1, &q, &res, NULL);
	CHECK(res.a.outcome == AUTHHTTP_OK, "answer: %s", res.a.reason);
	n = (size_t)sprintf(expect, "GET /auth?x=1 HTTP/1.0\r\nHost: 127.0.0.1\r\n"
	    "Auth-Method: plain\r\nAuth-User: ");
	n += expect_escape((const unsigned char *)user, strlen(user), expect + n);
	n += (size_t)sprintf(expect + n, "\r\nAuth-Pass: ");
	n += expect_escape(pass, sizeof(pass), expect + n);
	n += (size_t)sprintf(expect + n, "\r\nAuth-Protocol: imap\r\nAuth-Login-Attempt: 3\r\n"
	    "Client-IP: 192.0.2.42\r\nProxy-Protocol-Addr: 192.0.2.42\r\n"
	    "Proxy-Protocol-Port: 50000\r\nProxy-Protocol-Server-Addr: 198.51.100.1\r\n"
	    "Proxy-Protocol-Server-Port: 993\r\nAuth-SSL: on\r\nAuth-SSL-Protocol: TLSv1.3\r\n"
	    "Auth-SSL-Cipher: TLS_AES_256_GCM_SHA384\r\nX-Auth-Key: secret string\r\n\r\n");
	CHECK(s->reqlen == n && memcmp(s->req, expect, n) == 0,
	    "request differs (%zu vs %zu bytes):\n%.*s\n--- expected ---\n%s", s->reqlen, n,
	    (int)s->reqlen, s->req, expect);
	CHECK(memmem(s->req, s->reqlen, "Auth-User: us%20er%25%01\xc3\xa9+=\r\n", 30) != NULL,
	    "Auth-User escaped by hand");
	authhttp_url_clear(&u);
	raw_stop(s);

	/* A plaintext client, an OAuth token: no Auth-SSL, still "plain". */
	s = raw_start(RAW_REPLY, reply);
	url_local(&u, s->port, "");
	q = query_default();
	q.method = AUTHHTTP_METHOD_OAUTH;
	q.user = "alice@example.org";
	q.pass = "ya29.a0Af-token";
	q.passlen = strlen(q.pass);
	memset(&res, 0, sizeof(res));
	lookup(&u, 3000, NULL, 0, &q, &res, NULL);
	strcpy(expect, "GET / HTTP/1.0\r\nHost: 127.0.0.1\r\nAuth-Method: plain\r\n"
	    "Auth-User: alice@example.org\r\nAuth-Pass: ya29.a0Af-token\r\nAuth-Protocol: imap\r\n"
	    "Auth-Login-Attempt: 1\r\nClient-IP: 192.0.2.42\r\n\r\n");
	CHECK(s->reqlen == strlen(expect) && memcmp(s->req, expect, s->reqlen) == 0,
	    "plain request:\n%.*s", (int)s->reqlen, s->req);
	authhttp_url_clear(&u);
	raw_stop(s);
	free(expect);
}

/* Queries that cannot be sent fail through the callback, from the loop. */
static void
test_bad_query(void)
{
	struct authhttp_url u;
	struct authhttp_query q = query_default();
	struct result res;
	char *big = malloc(AUTHHTTP_CRED_MAX + 2);

	url_local(&u, http_port, "/");
	q.client_ip = "192.0.2.1\r\nAuth-Pass: x";
	memset(&res, 0, sizeof(res));
	lookup(&u, 1000, NULL, 0, &q, &res, NULL);
	CHECK(res.calls == 1 && res.a.error == AUTHHTTP_E_REQUEST && !res.early,
	    "CRLF in Client-IP: %d %s", res.a.error, res.a.reason);

	q = query_default();
	q.client_ip = NULL;
	memset(&res, 0, sizeof(res));
	lookup(&u, 1000, NULL, 0, &q, &res, NULL);
	CHECK(res.a.error == AUTHHTTP_E_REQUEST, "no Client-IP: %s", res.a.reason);

	q = query_default();
	memset(big, 'p', AUTHHTTP_CRED_MAX + 1);
	q.pass = big;
	q.passlen = AUTHHTTP_CRED_MAX + 1;
	memset(&res, 0, sizeof(res));
	lookup(&u, 1000, NULL, 0, &q, &res, NULL);
	CHECK(res.a.error == AUTHHTTP_E_REQUEST && !res.early, "password too long: %s",
	    res.a.reason);
	authhttp_url_clear(&u);
	free(big);
}

/* Cancel: before connecting, mid-request, after a decided answer, inside the callback. */
static void
test_cancel(void)
{
	static const struct reply ok = { 200, { "Auth-Status", "OK", "Auth-Server", "127.0.0.1",
	    "Auth-Port", "143", NULL }, 0 };
	struct raw_server *s = raw_start(RAW_SILENT, NULL);
	struct authhttp_url u, dead;
	struct authhttp_query q = query_default();
	struct authhttp_conf c = { &u, 2000, NULL, 0, NULL, 0 };
	struct result res;

	authhttp_cancel(NULL);
	url_local(&u, s->port, "/auth");

	memset(&res, 0, sizeof(res));
	res.h = authhttp_start(base, &c, &q, result_cb, &res);
	authhttp_cancel(res.h);
	run_for(100);
	CHECK(res.calls == 0, "cancelled before connect, yet called back");

	memset(&res, 0, sizeof(res));
	s->got_request = 0;
	s->reqlen = 0;
	res.h = authhttp_start(base, &c, &q, result_cb, &res);
	run_until(&s->got_request, WAIT_MS);
	CHECK(s->got_request, "the silent server got the request");
	authhttp_cancel(res.h);
	run_for(100);
	CHECK(res.calls == 0, "cancelled mid-request, yet called back");
	authhttp_url_clear(&u);
	raw_stop(s);

	/* Cancel before a refusal arrives. */
	url_local(&dead, dead_port(), "/");
	c.url = &dead;
	memset(&res, 0, sizeof(res));
	res.h = authhttp_start(base, &c, &q, result_cb, &res);
	authhttp_cancel(res.h);
	run_for(50);
	CHECK(res.calls == 0, "cancelled before the refusal, yet called back");
	authhttp_url_clear(&dead);

	/* Decided inside authhttp_start (no socket to be had), cancelled before delivery. */
	url_local(&u, http_port, "/");
	c.url = &u;
	memset(&res, 0, sizeof(res));
	no_more_fds(1);
	res.h = authhttp_start(base, &c, &q, result_cb, &res);
	no_more_fds(0);
	authhttp_cancel(res.h);
	run_for(50);
	CHECK(res.calls == 0, "cancelled after a decided answer, yet called back");
	authhttp_url_clear(&u);

	/* Cancel from inside the callback does nothing; the request is freed after it. */
	memset(&res, 0, sizeof(res));
	res.cancel_in_cb = 1;
	cur_reply = &ok;
	url_local(&u, http_port, "/");
	c.url = &u;
	res.h = authhttp_start(base, &c, &q, result_cb, &res);
	res.started = 1;
	run_until(&res.calls, WAIT_MS);
	run_for(20);
	CHECK(res.calls == 1 && res.a.outcome == AUTHHTTP_OK, "cancel inside the callback: %d %s",
	    res.calls, res.a.reason);
	authhttp_url_clear(&u);
}

/* ---- keep-alive (a pool) ---- */

#define KEEP_OK "HTTP/1.1 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 127.0.0.1\r\n" \
	"Auth-Port: 143\r\nContent-Length: 0\r\n\r\n"

/* One lookup through pool p (keepalive k) to port; the answer in res. */
static void
lookup_pool(struct authhttp_pool *p, unsigned k, unsigned port, struct result *res)
{
	struct authhttp_url u;
	struct authhttp_query q = query_default();
	struct authhttp_conf c = { &u, 3000, NULL, 0, p, k };

	memset(res, 0, sizeof(*res));
	url_local(&u, port, "/auth");
	res->h = authhttp_start(base, &c, &q, result_cb, res);
	res->started = 1;
	run_until(&res->calls, WAIT_MS);
	authhttp_url_clear(&u);
}

/*
 * n lookups in a row through a fresh pool to a raw RAW_KEEP server s;
 * *good counts answers with outcome want; returns how many were reused.
 */
static int
keep_series(struct raw_server *s, unsigned k, int n, enum authhttp_outcome want, int *good)
{
	struct authhttp_pool *p = authhttp_pool_new();
	struct result res;
	int i, reused = 0;

	*good = 0;
	for (i = 0; i < n; i++) {
		lookup_pool(p, k, s->port, &res);
		if (res.calls == 1 && res.a.outcome == want)
			(*good)++;
		reused += res.a.reused;
		run_for(2);
	}
	authhttp_pool_free(p);
	run_for(20);
	return reused;
}

/* The headers of an OK answer to 127.0.0.1:143. */
#define AUTH_OK "Auth-Status: OK\r\nAuth-Server: 127.0.0.1\r\nAuth-Port: 143\r\n"

#define SMUGGLED "HTTP/1.1 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 127.0.0.1\r\n" \
	"Auth-Port: 999\r\nContent-Length: 0\r\n\r\n"

/* Three lookups to s, which sends SMUGGLED unasked: each must get its own answer. */
static void
keep_unsmuggled(struct raw_server *s, int pause_ms, const char *what)
{
	struct authhttp_pool *p = authhttp_pool_new();
	struct result res;
	int i;

	for (i = 0; i < 3; i++) {
		lookup_pool(p, 4, s->port, &res);
		CHECK(res.calls == 1 && res.a.outcome == AUTHHTTP_OK && res.a.reused == 0 &&
		    ntohs(((struct sockaddr_in *)&res.a.server)->sin_port) == 143,
		    "answer %d after %s: %s, reused %d", i, what, res.a.reason, res.a.reused);
		run_for(pause_ms);
	}
	CHECK(s->accepts == 3, "%s: %u connections for 3 lookups", what, s->accepts);
	authhttp_pool_free(p);
	raw_stop(s);
}

/* Kept-alive connections: reused when the answer allows it, never otherwise. */
static void
test_keepalive(void)
{
	static const struct {
		const char		*what;
		const char		*reply;
		enum authhttp_outcome	 outcome;
		unsigned		 conns;
		int			 reused;
	} cases[] = {
		{ "Connection: close", "HTTP/1.1 200 OK\r\nConnection: close\r\n"
		  "Auth-Status: OK\r\nAuth-Server: 127.0.0.1\r\nAuth-Port: 143\r\n"
		  "Content-Length: 0\r\n\r\n", AUTHHTTP_OK, 5, 0 },
		{ "HTTP/1.0", "HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 127.0.0.1\r\n"
		  "Auth-Port: 143\r\nContent-Length: 0\r\n\r\n", AUTHHTTP_OK, 5, 0 },
		{ "HTTP/1.0 keep-alive", "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n"
		  "Auth-Status: OK\r\nAuth-Server: 127.0.0.1\r\nAuth-Port: 143\r\n"
		  "Content-Length: 0\r\n\r\n", AUTHHTTP_OK, 1, 4 },
		{ "nginx's denial", "HTTP/1.1 204 No Content\r\nServer: nginx\r\n"
		  "Connection: keep-alive\r\nAuth-Status: Invalid login or password\r\n"
		  "Auth-Wait: 0\r\n\r\n", AUTHHTTP_DENIED, 1, 4 },
		{ "with a body", "HTTP/1.1 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 127.0.0.1\r\n"
		  "Auth-Port: 143\r\nContent-Length: 11\r\n\r\nhello world", AUTHHTTP_OK, 1, 4 },
	};
	struct raw_server *s;
	struct authhttp_pool *p;
	struct result res, many[5];
	struct authhttp_url u;
	struct authhttp_query q = query_default();
	int good, reused, before, i;

	/* HTTP/1.1 and Content-Length: one connection serves them all. */
	s = raw_start(RAW_KEEP, KEEP_OK);
	reused = keep_series(s, 4, 20, AUTHHTTP_OK, &good);
	CHECK(good == 20 && s->requests == 20, "keep-alive: %d OK, %u requests", good,
	    s->requests);
	CHECK(s->accepts == 1 && reused == 19, "keep-alive: %u connections, %d reused",
	    s->accepts, reused);
	CHECK(strcmp(s->line, "GET /auth HTTP/1.1") == 0, "pooled request line: %s", s->line);
	raw_stop(s);

	/* keepalive 0 with a pool: HTTP/1.0 and a connection each, as without. */
	s = raw_start(RAW_KEEP, KEEP_OK);
	reused = keep_series(s, 0, 5, AUTHHTTP_OK, &good);
	CHECK(good == 5 && s->accepts == 5 && reused == 0, "keepalive 0: %d OK, %u conns",
	    good, s->accepts);
	CHECK(strcmp(s->line, "GET /auth HTTP/1.0") == 0, "unpooled request line: %s", s->line);
	raw_stop(s);

	/*
	 * Five lookups a case: "Connection: close" and HTTP/1.0 without
	 * keep-alive are never reused; 1.0 with keep-alive, nginx's own
	 * denial (204, no body) and an answer with a body are.
	 */
	for (i = 0; i < (int)(sizeof(cases) / sizeof(cases[0])); i++) {
		s = raw_start(RAW_KEEP, cases[i].reply);
		reused = keep_series(s, 4, 5, cases[i].outcome, &good);
		CHECK(good == 5 && s->accepts == cases[i].conns && reused == cases[i].reused,
		    "%s: %d as expected, %u conns, %d reused", cases[i].what, good, s->accepts,
		    reused);
		raw_stop(s);
	}

	/*
	 * Bytes after the answer (a second answer nobody asked for, with
	 * another port), in the same read or 20 ms later on the idle
	 * connection: the connection is dropped, and the next user's answer
	 * is the service's answer to their own request.
	 */
	s = raw_start(RAW_KEEP, KEEP_OK SMUGGLED);
	keep_unsmuggled(s, 5, "trailing bytes");
	s = raw_start(RAW_KEEP, KEEP_OK);
	s->late = SMUGGLED;
	keep_unsmuggled(s, 60, "late bytes");

	/* The service closes a kept connection as the next request comes: asked again, once. */
	s = raw_start(RAW_KEEP, KEEP_OK);
	s->answer_max = 1;
	p = authhttp_pool_new();
	lookup_pool(p, 4, s->port, &res);
	run_for(5);
	lookup_pool(p, 4, s->port, &res);
	CHECK(res.calls == 1 && res.a.outcome == AUTHHTTP_OK && res.a.reused == 0,
	    "closed on the next request: %s, reused %d", res.a.reason, res.a.reused);
	CHECK(s->accepts == 2 && s->requests == 3, "closed on the next request: %u conns, "
	    "%u requests", s->accepts, s->requests);
	authhttp_pool_free(p);
	raw_stop(s);

	/* The second try gets what is left of the timeout, not a new one. */
	s = raw_start(RAW_KEEP, KEEP_OK);
	s->answer_max = 1;
	p = authhttp_pool_new();
	lookup_pool(p, 4, s->port, &res);
	run_for(5);
	s->silent_from = 2;
	s->close_delay_ms = 250;
	{
		struct authhttp_url tu;
		struct authhttp_conf c = { &tu, 400, NULL, 0, p, 4 };
		struct timeval t0;

		url_local(&tu, s->port, "/auth");
		memset(&res, 0, sizeof(res));
		gettimeofday(&t0, NULL);
		res.h = authhttp_start(base, &c, &q, result_cb, &res);
		res.started = 1;
		run_until(&res.calls, WAIT_MS);
		CHECK(res.calls == 1 && res.a.error == AUTHHTTP_E_TIMEOUT && s->accepts == 2 &&
		    ms_between(&t0, &res.at) < 400 + 150, "retry within the timeout: %s after "
		    "%ld ms, %u conns", res.a.reason, ms_between(&t0, &res.at), s->accepts);
		authhttp_url_clear(&tu);
	}
	authhttp_pool_free(p);
	raw_stop(s);

	/* A new connection closed without an answer is not asked again. */
	p = authhttp_pool_new();
	s = raw_start(RAW_REPLY, "");
	lookup_pool(p, 4, s->port, &res);
	CHECK(res.calls == 1 && res.a.outcome == AUTHHTTP_ERROR &&
	    res.a.error == AUTHHTTP_E_CLOSED && s->accepts == 1,
	    "fresh connection closed: %s, %u conns", res.a.reason, s->accepts);
	authhttp_pool_free(p);
	raw_stop(s);

	/* The service closes idle connections: dropped, the next lookup opens a new one. */
	s = raw_start(RAW_KEEP, KEEP_OK);
	s->close_after = 1;
	p = authhttp_pool_new();
	lookup_pool(p, 4, s->port, &res);
	run_for(50);
	lookup_pool(p, 4, s->port, &res);
	CHECK(res.calls == 1 && res.a.outcome == AUTHHTTP_OK && res.a.reused == 0 &&
	    s->accepts == 2, "closed while idle: %s, %u conns", res.a.reason, s->accepts);
	authhttp_pool_free(p);
	raw_stop(s);

	/* The bound: five at once, at most two kept; freeing the pool closes them. */
	s = raw_start(RAW_KEEP, KEEP_OK);
	run_for(20);
	before = count_fds();
	p = authhttp_pool_new();
	url_local(&u, s->port, "/auth");
	{
		struct authhttp_conf c = { &u, 3000, NULL, 0, p, 2 };
		int done = 0;

		for (i = 0; i < 5; i++) {
			memset(&many[i], 0, sizeof(many[i]));
			many[i].h = authhttp_start(base, &c, &q, result_cb, &many[i]);
			many[i].started = 1;
		}
		for (i = 0; i < 5; i++) {
			run_until(&many[i].calls, WAIT_MS);
			done += many[i].calls == 1 && many[i].a.outcome == AUTHHTTP_OK;
		}
		CHECK(done == 5 && s->accepts == 5, "five at once: %d OK, %u conns", done,
		    s->accepts);
	}
	run_for(20);
	/* Our side of each kept connection, and the raw server's side of it. */
	CHECK(count_fds() == before + 2 * 2, "kept at most 2: %d descriptors, %d before",
	    count_fds(), before);
	authhttp_pool_free(p);
	run_for(20);
	CHECK(count_fds() == before, "pool freed: %d descriptors, %d before", count_fds(),
	    before);

	/* Cancelled mid-request: the connection is closed, not kept. */
	p = authhttp_pool_new();
	{
		struct raw_server *silent = raw_start(RAW_SILENT, NULL);
		struct authhttp_url su;
		struct authhttp_conf c = { &su, 3000, NULL, 0, p, 4 };

		url_local(&su, silent->port, "/auth");
		memset(&res, 0, sizeof(res));
		res.h = authhttp_start(base, &c, &q, result_cb, &res);
		run_until(&silent->got_request, WAIT_MS);
		authhttp_cancel(res.h);
		run_for(20);
		CHECK(res.calls == 0 && silent->got_request, "cancelled pooled request");
		raw_stop(silent);
		run_for(20);
		CHECK(count_fds() == before, "cancelled pooled request: %d descriptors, %d before",
		    count_fds(), before);
		authhttp_url_clear(&su);
	}
	authhttp_pool_free(p);
	authhttp_url_clear(&u);
	raw_stop(s);

	/* libevent's own server, with keep-alive: many lookups, one connection, no growth. */
	{
		static const struct reply ok = { 200, { "Auth-Status", "OK", "Auth-Server",
		    "127.0.0.1", "Auth-Port", "143", NULL }, 0 };
		int n = 0, rn = 0;

		cur_reply = &ok;
		http_requests = 0;
		p = authhttp_pool_new();
		before = count_fds();
		for (i = 0; i < SEQ_REQUESTS; i++) {
			lookup_pool(p, 8, http_port, &res);
			n += res.calls == 1 && res.a.outcome == AUTHHTTP_OK;
			rn += res.a.reused;
		}
		CHECK(n == SEQ_REQUESTS && http_requests == SEQ_REQUESTS &&
		    rn == SEQ_REQUESTS - 1, "evhttp server: %d OK, %d served, %d reused", n,
		    http_requests, rn);
		CHECK(count_fds() <= before + 2, "evhttp server: %d descriptors, %d before",
		    count_fds(), before);
		authhttp_pool_free(p);
	}
}

/*
 * Two lookups in a row through one pool to s (which answers the first
 * request on a connection with its reply, then sends s->late 20 ms later
 * and never answers a second request): the second lookup must not take
 * the late bytes, meant for the first, as its own answer.
 */
static void
keep_no_late_answer(struct raw_server *s, const char *what)
{
	struct authhttp_pool *p = authhttp_pool_new();
	struct result res;

	s->answer_max = 1;
	s->close_delay_ms = 300;
	s->late = SMUGGLED;
	lookup_pool(p, 4, s->port, &res);
	lookup_pool(p, 4, s->port, &res);
	CHECK(res.calls == 1 && !(res.a.outcome == AUTHHTTP_OK &&
	    ntohs(((struct sockaddr_in *)&res.a.server)->sin_port) == 999),
	    "%s: the second lookup got the first one's late answer (%s, reused %d)", what,
	    res.a.reason, res.a.reused);
	CHECK(s->accepts == 2, "%s: %u connections for 2 lookups", what, s->accepts);
	authhttp_pool_free(p);
	run_for(20);
	raw_stop(s);
}

/* Framing an attacker or a careless service can use to smuggle an answer. */
static void
test_keepalive_attack(void)
{
	static const struct {
		const char	*what;
		const char	*reply;
	} unkeepable[] = {
		{ "1xx", "HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n" },
		{ "1.1 body to the close", "HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n" AUTH_OK
		  "\r\n" },
		{ "1.0 body to the close", "HTTP/1.0 200 OK\r\nConnection: keep-alive\r\n" AUTH_OK
		  "\r\n" },
		{ "two Content-Lengths", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n"
		  "Content-Length: 5\r\n" AUTH_OK "\r\n" },
		{ "Content-Length +0", "HTTP/1.1 200 OK\r\nContent-Length: +0\r\n" AUTH_OK "\r\n" },
		{ "204 with a length", "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n" AUTH_OK
		  "\r\n" },
		{ "keep-alive, close", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n"
		  "Connection: keep-alive, close\r\n" AUTH_OK "\r\n" },
		{ "a second Connection: close", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n"
		  "Connection: keep-alive\r\nConnection: Close\r\n" AUTH_OK "\r\n" },
	};
	static const char *const badchunks[] = {
		"5;ext=1\r\nhello\r\n0\r\n\r\n", "-1\r\n\r\n", "zz\r\nhello\r\n0\r\n\r\n",
		"ffffffffffffffffff\r\nhello\r\n0\r\n\r\n", "5\r\nhelloXX0\r\n\r\n",
		"5\r\nhello\r\n0\r\nBad trailer\r\n\r\n",
	};
	struct raw_server *s;
	size_t i;

	/*
	 * Answers after which more bytes of their own may come: an interim
	 * 1xx (the final answer follows), a body whose end is the close
	 * (RFC 9112 6.3: no Content-Length nor chunked, whatever Connection
	 * says; libevent takes any Connection header for "no body"), lengths
	 * libevent reads one way and a service may mean another (two
	 * Content-Lengths, "+0", a 204 with a length), or a "close" among
	 * other Connection options.  None may leave its connection kept.
	 */
	for (i = 0; i < sizeof(unkeepable) / sizeof(unkeepable[0]); i++)
		keep_no_late_answer(raw_start(RAW_KEEP, unkeepable[i].reply), unkeepable[i].what);

	/*
	 * Bad chunked bodies (an extension libevent refuses, a negative, a
	 * non-hex, an overflowing size, data without its CRLF) under a good
	 * OK: the answer counts (nginx never reads the body), the connection
	 * does not.
	 */
	for (i = 0; i < sizeof(badchunks) / sizeof(badchunks[0]); i++) {
		struct authhttp_pool *p = authhttp_pool_new();
		struct result res;
		char reply[512];
		int n;

		snprintf(reply, sizeof(reply), "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
		    AUTH_OK "\r\n%s", badchunks[i]);
		s = raw_start(RAW_KEEP, reply);
		for (n = 0; n < 2; n++) {
			lookup_pool(p, 4, s->port, &res);
			CHECK(res.calls == 1 && res.a.outcome == AUTHHTTP_OK && res.a.reused == 0,
			    "bad chunk %zu, lookup %d: %s, reused %d", i, n, res.a.reason,
			    res.a.reused);
			run_for(2);
		}
		CHECK(s->accepts == 2, "bad chunk %zu: %u connections", i, s->accepts);
		authhttp_pool_free(p);
		run_for(20);
		raw_stop(s);
	}

	/* Two services on one pool (a reload that changed the URL): each keeps its own. */
	{
		struct raw_server *sa = raw_start(RAW_KEEP, KEEP_OK);
		struct raw_server *sb = raw_start(RAW_KEEP, "HTTP/1.1 200 OK\r\nAuth-Status: OK\r\n"
		    "Auth-Server: 127.0.0.1\r\nAuth-Port: 144\r\nContent-Length: 0\r\n\r\n");
		struct authhttp_pool *p = authhttp_pool_new();
		struct result res;
		int n, good = 0, reused = 0;

		for (n = 0; n < 8; n++) {
			lookup_pool(p, 4, n % 2 ? sb->port : sa->port, &res);
			good += res.calls == 1 && res.a.outcome == AUTHHTTP_OK &&
			    ntohs(((struct sockaddr_in *)&res.a.server)->sin_port) == (n % 2 ? 144 : 143);
			reused += res.a.reused;
		}
		CHECK(good == 8 && reused == 6 && sa->accepts == 1 && sb->accepts == 1 &&
		    sa->requests == 4 && sb->requests == 4, "two services: %d right, %d reused, "
		    "%u+%u conns, %u+%u requests", good, reused, sa->accepts, sb->accepts,
		    sa->requests, sb->requests);
		authhttp_pool_free(p);
		run_for(20);
		raw_stop(sa);
		raw_stop(sb);
	}

	/* What stays kept: a chunked body with a trailer, a 204 saying "Content-Length: 0". */
	{
		static const char *const keepable[] = {
			"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n" AUTH_OK
			"\r\n5\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n",
			"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n"
			"Auth-Status: Invalid login\r\n\r\n",
		};
		int good, reused;

		for (i = 0; i < sizeof(keepable) / sizeof(keepable[0]); i++) {
			s = raw_start(RAW_KEEP, keepable[i]);
			reused = keep_series(s, 4, 5, i == 0 ? AUTHHTTP_OK : AUTHHTTP_DENIED, &good);
			CHECK(good == 5 && s->accepts == 1 && reused == 4, "keepable %zu: %d as "
			    "expected, %u conns, %d reused", i, good, s->accepts, reused);
			raw_stop(s);
		}
	}
}

/* Bytes already in our socket, not yet read by libevent, when the next lookup takes it. */
static void
test_keepalive_pending(void)
{
	struct raw_server *s;
	struct authhttp_pool *p;
	struct result res;
	int before;

	run_for(20);
	before = count_fds();
	/* The service sends a second answer unasked; it reaches the socket before we ask again. */
	s = raw_start(RAW_KEEP, KEEP_OK);
	p = authhttp_pool_new();
	lookup_pool(p, 4, s->port, &res);
	CHECK(res.calls == 1 && res.a.outcome == AUTHHTTP_OK, "pending bytes: first %s",
	    res.a.reason);
	send(bufferevent_getfd(LIST_FIRST(&s->conns)->bev), SMUGGLED, strlen(SMUGGLED), 0);
	lookup_pool(p, 4, s->port, &res);
	CHECK(res.calls == 1 && res.a.outcome == AUTHHTTP_OK &&
	    ntohs(((struct sockaddr_in *)&res.a.server)->sin_port) == 143,
	    "pending bytes: the second lookup got %s, port %u, reused %d", res.a.reason,
	    ntohs(((struct sockaddr_in *)&res.a.server)->sin_port), res.a.reused);
	authhttp_pool_free(p);
	run_for(20);
	raw_stop(s);

	/* The service closed it while idle, the close not yet seen: a new connection, no retry. */
	s = raw_start(RAW_KEEP, KEEP_OK);
	p = authhttp_pool_new();
	lookup_pool(p, 4, s->port, &res);
	shutdown(bufferevent_getfd(LIST_FIRST(&s->conns)->bev), SHUT_WR);
	lookup_pool(p, 4, s->port, &res);
	CHECK(res.calls == 1 && res.a.outcome == AUTHHTTP_OK && res.a.reused == 0 &&
	    s->accepts == 2 && s->requests == 2, "pending close: %s, reused %d, %u conns, "
	    "%u requests", res.a.reason, res.a.reused, s->accepts, s->requests);
	authhttp_pool_free(p);
	run_for(20);
	raw_stop(s);

	/* A body still coming after the headers: answered at once, the connection not kept. */
	s = raw_start(RAW_KEEP, "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n" AUTH_OK "\r\n");
	s->late = "hello";
	p = authhttp_pool_new();
	{
		struct timeval t0;

		gettimeofday(&t0, NULL);
		lookup_pool(p, 4, s->port, &res);
		CHECK(res.calls == 1 && res.a.outcome == AUTHHTTP_OK && ms_between(&t0, &res.at) < 15,
		    "body later: %s after %ld ms", res.a.reason, ms_between(&t0, &res.at));
	}
	run_for(60);
	lookup_pool(p, 4, s->port, &res);
	CHECK(res.calls == 1 && res.a.outcome == AUTHHTTP_OK && res.a.reused == 0 &&
	    s->accepts == 2, "body later: %s, reused %d, %u conns", res.a.reason, res.a.reused,
	    s->accepts);
	authhttp_pool_free(p);
	run_for(20);
	raw_stop(s);
	/* The kept connection closed at the request, the service gone: the second try fails at once. */
	s = raw_start(RAW_KEEP, KEEP_OK);
	s->answer_max = 1;
	p = authhttp_pool_new();
	lookup_pool(p, 4, s->port, &res);
	evconnlistener_free(s->l);
	s->l = NULL;
	{
		struct timeval t0;

		gettimeofday(&t0, NULL);
		lookup_pool(p, 4, s->port, &res);
		CHECK(res.calls == 1 && res.a.error == AUTHHTTP_E_CONNECT &&
		    ms_between(&t0, &res.at) < 500, "service gone: %s after %ld ms", res.a.reason,
		    ms_between(&t0, &res.at));
	}
	authhttp_pool_free(p);
	run_for(20);
	raw_stop(s);

	CHECK(count_fds() == before, "pending: %d descriptors, %d before", count_fds(), before);
}

/*
 * Cancel a lookup on a kept connection after every number of loop turns,
 * to a server that answers (mode 0), closes the kept connection at the
 * request so that it is asked again (1), or never answers (2): nothing is
 * called back after the cancel, no descriptor stays, the pool keeps its bound.
 */
static void
test_keepalive_cancel_stages(void)
{
	struct raw_server *s;
	struct authhttp_pool *p;
	struct result res;
	struct authhttp_url u;
	struct authhttp_query q = query_default();
	int mode, k, j, before, cancelled, delivered;

	run_for(20);
	before = count_fds();
	for (mode = 0; mode < 3; mode++) {
		cancelled = delivered = 0;
		for (k = 0; k < 40; k++) {
			struct authhttp_conf c = { &u, 2000, NULL, 0, NULL, 1 };

			s = raw_start(RAW_KEEP, KEEP_OK);
			p = authhttp_pool_new();
			c.pool = p;
			url_local(&u, s->port, "/auth");
			lookup_pool(p, 1, s->port, &res);	/* a kept connection */
			if (mode == 1)
				s->answer_max = 1;
			if (mode == 2)
				s->silent_from = 1;
			memset(&res, 0, sizeof(res));
			res.h = authhttp_start(base, &c, &q, result_cb, &res);
			res.started = 1;
			for (j = 0; j < k && res.calls == 0; j++) {
				if (j % 2 == 1)
					usleep(100);
				event_base_loop(base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
			}
			if (res.calls == 0) {
				authhttp_cancel(res.h);
				cancelled++;
			} else
				delivered++;
			run_for(5);
			CHECK(res.calls <= 1, "mode %d, cancel after %d turns: %d calls", mode, k,
			    res.calls);
			authhttp_pool_free(p);
			authhttp_url_clear(&u);
			raw_stop(s);
		}
		CHECK(cancelled > 1 && (mode == 2 || delivered > 0), "mode %d: %d cancelled, "
		    "%d delivered", mode, cancelled,
		    delivered);
	}
	run_for(20);
	CHECK(count_fds() == before, "cancel stages: %d descriptors, %d before", count_fds(),
	    before);
}

/*
 * Answers split in two at every byte (the rest 1 ms later): each lookup
 * gets its own answer whole, and a connection is kept only when the rest
 * held the end of the headers (the answer is taken at its headers, and a
 * body still to come closes the connection).
 */
static void
test_keepalive_splits(void)
{
	static const char *const answers[] = {
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n" AUTH_OK "\r\nhello",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n" AUTH_OK
		"\r\n5\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n",
	};
	char head[256];
	size_t a, i, len, hlen, bad = 0, wrongly_kept = 0, kept = 0, tries = 0;
	struct raw_server *s;
	struct authhttp_pool *p;
	struct result res;
	int n;

	for (a = 0; a < sizeof(answers) / sizeof(answers[0]); a++) {
		len = strlen(answers[a]);
		hlen = (size_t)(strstr(answers[a], "\r\n\r\n") - answers[a]) + 4;
		for (i = 1; i < len && i < sizeof(head); i++) {
			memcpy(head, answers[a], i);
			head[i] = '\0';
			s = raw_start(RAW_KEEP, head);
			s->late = answers[a] + i;
			s->late_ms = 1;
			p = authhttp_pool_new();
			for (n = 0; n < 2; n++) {
				lookup_pool(p, 4, s->port, &res);
				tries++;
				if (res.calls != 1 || res.a.outcome != AUTHHTTP_OK ||
				    ntohs(((struct sockaddr_in *)&res.a.server)->sin_port) != 143) {
					bad++;
					printf("split %zu at %zu, lookup %d: %s\n", a, i, n,
					    res.a.reason);
				}
				kept += res.a.reused;
				wrongly_kept += res.a.reused && i >= hlen;
				run_for(3);
			}
			authhttp_pool_free(p);
			raw_stop(s);
		}
	}
	CHECK(bad == 0, "splits: %zu of %zu lookups without their own answer", bad, tries);
	CHECK(wrongly_kept == 0 && kept > 0, "splits: %zu kept after a body that came late, "
	    "%zu kept in all", wrongly_kept, kept);
}

/* Many requests one after another leave no descriptor behind. */
static void
test_no_fd_growth(void)
{
	static const struct reply ok = { 200, { "Auth-Status", "OK", "Auth-Server", "127.0.0.1",
	    "Auth-Port", "143", NULL }, 0 };
	struct authhttp_url u;
	struct authhttp_query q = query_default();
	struct result res;
	int before, after, i, good = 0;

	cur_reply = &ok;
	url_local(&u, http_port, "/auth");
	run_for(20);
	before = count_fds();
	http_requests = 0;
	for (i = 0; i < SEQ_REQUESTS; i++) {
		memset(&res, 0, sizeof(res));
		lookup(&u, 3000, NULL, 0, &q, &res, NULL);
		if (res.calls == 1 && res.a.outcome == AUTHHTTP_OK)
			good++;
	}
	run_for(50);
	after = count_fds();
	CHECK(good == SEQ_REQUESTS && http_requests == SEQ_REQUESTS, "%d of %d OK, %d served",
	    good, SEQ_REQUESTS, http_requests);
	CHECK(before > 0 && after == before, "descriptors: %d before, %d after", before, after);
	authhttp_url_clear(&u);
}

int
main(void)
{
	signal(SIGPIPE, SIG_IGN);	/* as imapgate does: servers write to closed peers */
	base = event_base_new();
	http_start();

	test_url();
	test_header_check();
	test_ok();
	test_denied();
	test_bad_answers();
	test_broken();
	test_request_bytes();
	test_bad_query();
	test_cancel();
	test_no_fd_growth();
	test_keepalive();
	test_keepalive_attack();
	test_keepalive_pending();
	test_keepalive_cancel_stages();
	test_keepalive_splits();

	evhttp_free(http);
	event_base_free(base);
	printf("%d checks, %d failures\n", checks, failures);
	return failures ? 1 : 0;
}
