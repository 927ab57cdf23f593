/* authhttp: nginx mail auth_http lookups over libevent's HTTP client. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <sys/queue.h>	/* TAILQ_FOREACH over libevent's header lists */

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/http_struct.h>		/* the request's HTTP version */
#include <event2/keyvalq_struct.h>
#include <event2/util.h>
#include <openssl/crypto.h>

#include "authhttp.h"
#include "netaddr.h"

#define AUTHHTTP_HNAME_MAX	64	/* auth_http_header name */
#define AUTHHTTP_HVALUE_MAX	1024	/* auth_http_header value */
#define AUTHHTTP_PORT_DIGITS	5	/* "65535" */
#define AUTHHTTP_QUOTE_MAX	48	/* bytes of a bad answer value quoted in a reason */
#define AUTHHTTP_IO_SLACK_MS	1000	/* libevent's own timeouts: this much after ours */

/*
 * One request.  Without a pool it has a connection of its own (HTTP/1.0,
 * no keep-alive, as nginx asks), and a fresh connection keeps whatever a
 * broken server left in one answer out of the next.  With a pool
 * (authhttp_pool_new) it asks in HTTP/1.1 on a kept-alive connection,
 * which goes back to the pool only after a clean answer: the body read to
 * its end and not one byte after it (authhttp_keep), so that nothing a
 * service sends can be taken for the next user's answer.
 *
 * libevent's HTTP client calls back from inside its own stack, where its
 * connection must not be freed, and (a connect that fails at once, e.g. no
 * socket to be had) even from inside evhttp_make_request.  So its
 * callbacks only write the answer and mark it decided; a zero-delay event
 * (done) then frees the connection (or gives it back to the pool) and
 * calls the caller, from the loop.  The request object is ours
 * (evhttp_request_own), so that it has one owner on every path: libevent's
 * "free after the callback" otherwise depends on which of its paths failed.
 */
struct authhttp {
	struct event_base		*base;
	struct evhttp_connection	*evcon;
	struct evhttp_request		*req;
	struct evbuffer_cb_entry	*in_cb, *out_cb;	/* byte counters */
	struct event			*timer;		/* the whole-request timeout */
	struct event			*done;		/* delivers the answer from the loop */
	void				(*cb)(const struct authhttp_answer *, void *);
	void				*arg;
	uint64_t			 timeout_ms;
	size_t				 received;	/* answer bytes read */
	size_t				 sent;		/* request bytes queued (after connect) */
	int				 decided;	/* answer final: later events are ignored */
	int				 delivering;	/* cb is running */
	struct authhttp_pool		*pool;		/* NULL: one connection, HTTP/1.0 */
	unsigned			 keepalive;	/* the pool's idle bound for this request */
	int				 reused;	/* evcon was connected when we asked */
	int				 retried;	/* sent again after a stale connection */
	int				 retry;		/* done: send again instead of delivering */
	int				 keep;		/* the answer allows keeping the connection */
	int				 complete;	/* libevent read the whole answer */
	char				*path;		/* for a second try */
	uint64_t			 started_ms;	/* monotonic; the timeout counts from here */
	char				 ip[64];	/* the service's address and port */
	unsigned			 port;
	struct authhttp_answer		 answer;
};

/* An idle kept-alive connection; on its pool's list. */
struct authhttp_idle {
	TAILQ_ENTRY(authhttp_idle)	 entry;
	struct evhttp_connection	*evcon;
	char				 ip[64];	/* where it goes: must match the request */
	unsigned			 port;
};

struct authhttp_pool {
	TAILQ_HEAD(authhttp_idleq, authhttp_idle) idle;	/* oldest first */
	size_t				 nidle;
};

/*
 * Request headers this module sends itself.  An auth_http_header may not
 * repeat one (nor the HTTP framing headers): a second Host or Auth-Pass
 * would leave the service to guess.
 */
static const char *const authhttp_own_headers[] = {
	"Host", "Auth-Method", "Auth-User", "Auth-Pass", "Auth-Salt",
	"Auth-Protocol", "Auth-Login-Attempt", "Client-IP", "Client-Host",
	"Auth-SSL", "Auth-SSL-Protocol", "Auth-SSL-Cipher", "Auth-SSL-Verify",
	"Auth-SSL-Subject", "Auth-SSL-Issuer", "Auth-SSL-Serial",
	"Auth-SSL-Fingerprint", "Auth-SSL-Cert", "Proxy-Protocol-Addr",
	"Proxy-Protocol-Port", "Proxy-Protocol-Server-Addr",
	"Proxy-Protocol-Server-Port", "Content-Length", "Transfer-Encoding",
};

static void	authhttp_resend(struct authhttp *);

/* Free what authhttp_url_parse allocated. */
void
authhttp_url_clear(struct authhttp_url *u)
{
	free(u->host);
	free(u->path);
	free(u->hostport);
	free(u->ip);
	memset(u, 0, sizeof(*u));
}

/* Parse a decimal port 1-65535 from s[0..len): digits only. */
static int
authhttp_port(const char *s, size_t len, unsigned *port)
{
	unsigned v = 0;
	size_t i;

	if (len == 0 || len > AUTHHTTP_PORT_DIGITS)
		return -1;
	for (i = 0; i < len; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		v = v * 10 + (unsigned)(s[i] - '0');
	}
	if (v < 1 || v > 65535)
		return -1;
	*port = v;
	return 0;
}

/* Is c allowed in a host name: letters, digits, '-', '.', '_'? */
static int
authhttp_host_char(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	    (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_';
}

/* Find the numeric address to connect to for host (a name is resolved now). */
static int
authhttp_url_resolve(const char *host, unsigned port, char *ip, size_t iplen,
    char *err, size_t errlen)
{
	char hp[AUTHHTTP_HOST_MAX + 8], e[256];
	unsigned char bin[sizeof(struct in6_addr)];
	struct netaddr na;
	unsigned unused;
	size_t hlen = strlen(host);

	/* A literal is used as written: no lookup, no AI_ADDRCONFIG surprises. */
	if (host[0] == '[') {
		if (hlen - 2 >= iplen)
			return -1;
		memcpy(ip, host + 1, hlen - 2);
		ip[hlen - 2] = '\0';
		if (inet_pton(AF_INET6, ip, bin) != 1) {
			snprintf(err, errlen, "[host] is not an IPv6 address");
			return -1;
		}
		return 0;
	}
	if (inet_pton(AF_INET, host, bin) == 1) {
		snprintf(ip, iplen, "%s", host);
		return 0;
	}
	snprintf(hp, sizeof(hp), "%s:%u", host, port);
	if (netaddr_parse(hp, 0, &na, e, sizeof(e)) != 0) {
		snprintf(err, errlen, "cannot resolve: %s", e);
		return -1;
	}
	netaddr_ip((const struct sockaddr *)&na.ss, ip, iplen, &unused);
	return 0;
}

/* Parse [http://]host[:port][/path][?query] and resolve host. */
int
authhttp_url_parse(const char *text, struct authhttp_url *u, char *err, size_t errlen)
{
	char host[AUTHHTTP_HOST_MAX + 1], ip[INET6_ADDRSTRLEN], e[300];
	char hp[AUTHHTTP_HOST_MAX + 8];
	const char *p = text, *hend, *path;
	unsigned port = 80;
	size_t hlen, plen, i;

	memset(u, 0, sizeof(*u));
	if (evutil_ascii_strncasecmp(p, "https://", 8) == 0) {
		snprintf(err, errlen, "auth_http URL \"%s\": https is not supported "
		    "(the lookup speaks plain HTTP, as nginx's does)", text);
		return -1;
	}
	if (evutil_ascii_strncasecmp(p, "unix:", 5) == 0) {
		snprintf(err, errlen, "auth_http URL \"%s\": unix sockets are not supported", text);
		return -1;
	}
	if (evutil_ascii_strncasecmp(p, "http://", 7) == 0)
		p += 7;
	else if (strstr(p, "://") != NULL) {
		snprintf(err, errlen, "auth_http URL \"%s\": only http:// is supported", text);
		return -1;
	}

	if (*p == '[') {
		hend = strchr(p, ']');
		if (hend == NULL) {
			snprintf(err, errlen, "auth_http URL \"%s\": \"[\" without \"]\"", text);
			return -1;
		}
		hend++;
	} else {
		hend = p + strcspn(p, ":/?");
		for (i = 0; p + i < hend; i++) {
			if (p[i] == '@') {
				snprintf(err, errlen, "auth_http URL \"%s\": user@ is not supported", text);
				return -1;
			}
			if (!authhttp_host_char((unsigned char)p[i])) {
				snprintf(err, errlen, "auth_http URL \"%s\": bad character in host", text);
				return -1;
			}
		}
	}
	hlen = (size_t)(hend - p);
	if (hlen == 0 || (p[0] == '[' && hlen <= 2)) {
		snprintf(err, errlen, "auth_http URL \"%s\": no host", text);
		return -1;
	}
	if (hlen > AUTHHTTP_HOST_MAX) {
		snprintf(err, errlen, "auth_http URL \"%s\": host longer than %d bytes",
		    text, AUTHHTTP_HOST_MAX);
		return -1;
	}
	memcpy(host, p, hlen);
	host[hlen] = '\0';

	p = hend;
	if (*p == ':') {
		size_t n = strcspn(++p, "/?");

		if (authhttp_port(p, n, &port) != 0) {
			snprintf(err, errlen, "auth_http URL \"%s\": port must be 1-65535", text);
			return -1;
		}
		p += n;
	}
	if (*p != '\0' && *p != '/' && *p != '?') {
		snprintf(err, errlen, "auth_http URL \"%s\": unexpected text after the host", text);
		return -1;
	}

	/* The path goes into the request line as is: no spaces, controls, 8-bit or '#'. */
	path = *p == '\0' ? "/" : p;
	plen = strlen(path);
	if (plen > AUTHHTTP_PATH_MAX) {
		snprintf(err, errlen, "auth_http URL \"%s\": path longer than %d bytes",
		    text, AUTHHTTP_PATH_MAX);
		return -1;
	}
	for (i = 0; i < plen; i++) {
		unsigned char c = (unsigned char)path[i];

		if (c <= 0x20 || c >= 0x7f || c == '#') {
			snprintf(err, errlen, "auth_http URL \"%s\": the path must be "
			    "printable ASCII without spaces or '#' (percent-encode)", text);
			return -1;
		}
	}

	if (authhttp_url_resolve(host, port, ip, sizeof(ip), e, sizeof(e)) != 0) {
		snprintf(err, errlen, "auth_http URL \"%s\": %s", text, e);
		return -1;
	}
	snprintf(hp, sizeof(hp), "%s:%u", host, port);
	u->host = strdup(host);
	u->hostport = strdup(hp);
	u->ip = strdup(ip);
	u->port = port;
	/* nginx would send "GET ?q": a query alone gets the root path. */
	if (path[0] == '?') {
		if ((u->path = malloc(plen + 2)) != NULL) {
			u->path[0] = '/';
			memcpy(u->path + 1, path, plen + 1);
		}
	} else
		u->path = strdup(path);
	if (u->host == NULL || u->hostport == NULL || u->ip == NULL || u->path == NULL) {
		authhttp_url_clear(u);
		snprintf(err, errlen, "auth_http URL \"%s\": out of memory", text);
		return -1;
	}
	return 0;
}

/* Is s a header value we can send: no control bytes but tab (8-bit is sent as is)? */
static int
authhttp_value_ok(const char *s)
{
	for (; *s != '\0'; s++) {
		unsigned char c = (unsigned char)*s;

		if (c < 0x20 && c != '\t')
			return 0;
	}
	return 1;
}

/* Check an auth_http_header: a token name not sent by us, a sendable value. */
int
authhttp_header_check(const char *name, const char *value, char *err, size_t errlen)
{
	size_t i, n = strlen(name);

	if (n == 0 || n > AUTHHTTP_HNAME_MAX) {
		snprintf(err, errlen, "auth_http_header name must be 1-%d bytes", AUTHHTTP_HNAME_MAX);
		return -1;
	}
	for (i = 0; i < n; i++) {
		unsigned char c = (unsigned char)name[i];

		if (!authhttp_host_char(c) && strchr("!#$%&'*+^`|~", c) == NULL) {
			snprintf(err, errlen, "auth_http_header \"%s\": bad character in the name", name);
			return -1;
		}
	}
	for (i = 0; i < sizeof(authhttp_own_headers) / sizeof(authhttp_own_headers[0]); i++) {
		if (evutil_ascii_strcasecmp(name, authhttp_own_headers[i]) == 0) {
			snprintf(err, errlen, "auth_http_header \"%s\": imapgate sends that "
			    "header itself", name);
			return -1;
		}
	}
	if (strlen(value) > AUTHHTTP_HVALUE_MAX || !authhttp_value_ok(value)) {
		snprintf(err, errlen, "auth_http_header \"%s\": the value must be at most %d "
		    "bytes without control characters", name, AUTHHTTP_HVALUE_MAX);
		return -1;
	}
	return 0;
}

/* A short name for e. */
const char *
authhttp_error_name(enum authhttp_error e)
{
	switch (e) {
	case AUTHHTTP_E_NONE:		return "none";
	case AUTHHTTP_E_REQUEST:	return "request";
	case AUTHHTTP_E_CONNECT:	return "connect";
	case AUTHHTTP_E_TIMEOUT:	return "timeout";
	case AUTHHTTP_E_CLOSED:		return "closed";
	case AUTHHTTP_E_PROTOCOL:	return "protocol";
	case AUTHHTTP_E_TOO_LARGE:	return "too_large";
	case AUTHHTTP_E_HTTP_STATUS:	return "http_status";
	case AUTHHTTP_E_NO_STATUS:	return "no_status";
	case AUTHHTTP_E_SERVER:		return "server";
	case AUTHHTTP_E_PORT:		return "port";
	case AUTHHTTP_E_INTERNAL:	return "internal";
	}
	return "unknown";
}

/*
 * Escape s[0..len) as nginx does for Auth-User and Auth-Pass
 * (ngx_escape_uri with NGX_ESCAPE_MAIL_AUTH): only the bytes 0x00-0x1f,
 * space and '%' become %XX (upper-case hex); 0x7f and 8-bit bytes go
 * as they are.  len is at most AUTHHTTP_CRED_MAX, so len * 3 cannot wrap.
 */
static char *
authhttp_escape(const char *s, size_t len)
{
	static const char hex[] = "0123456789ABCDEF";
	char *out, *o;
	size_t i;

	if ((out = malloc(len * 3 + 1)) == NULL)
		return NULL;
	for (o = out, i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c < 0x20 || c == ' ' || c == '%') {
			*o++ = '%';
			*o++ = hex[c >> 4];
			*o++ = hex[c & 0x0f];
		} else
			*o++ = (char)c;
	}
	*o = '\0';
	return out;
}

/* Copy src into dst as printable ASCII (any other byte becomes '?'), cut to fit. */
static void
authhttp_printable(char *dst, size_t dstlen, const char *src)
{
	size_t n = 0;

	for (; *src != '\0' && n + 1 < dstlen; src++) {
		unsigned char c = (unsigned char)*src;

		dst[n++] = c >= 0x20 && c <= 0x7e ? (char)c : '?';
	}
	dst[n] = '\0';
}

/* Overwrite every copy of a password in h (Auth-Pass values) before it is freed. */
static void
authhttp_wipe_headers(struct evkeyvalq *h)
{
	struct evkeyval *kv;

	if (h == NULL)
		return;
	TAILQ_FOREACH(kv, h, next) {
		if (evutil_ascii_strcasecmp(kv->key, "Auth-Pass") == 0)
			OPENSSL_cleanse(kv->value, strlen(kv->value));
	}
}

/* Overwrite the bytes still in buf (an unsent request, an unread answer). */
static void
authhttp_wipe_buffer(struct evbuffer *buf)
{
	struct evbuffer_iovec v[16];
	int i, n;

	n = evbuffer_peek(buf, -1, NULL, v, 16);
	if (n > 16) {
		/* More chains than fit: wipe them all with a second, larger look. */
		struct evbuffer_iovec *vv = calloc((size_t)n, sizeof(*vv));

		if (vv != NULL) {
			n = evbuffer_peek(buf, -1, NULL, vv, n);
			for (i = 0; i < n; i++)
				OPENSSL_cleanse(vv[i].iov_base, vv[i].iov_len);
			free(vv);
		}
		return;
	}
	for (i = 0; i < n; i++)
		OPENSSL_cleanse(v[i].iov_base, v[i].iov_len);
}

/* Free the request (wiping the passwords it holds). */
static void
authhttp_drop_request(struct authhttp *r)
{
	if (r->req != NULL) {
		authhttp_wipe_headers(evhttp_request_get_output_headers(r->req));
		authhttp_wipe_headers(evhttp_request_get_input_headers(r->req));
		evhttp_request_free(r->req);
		r->req = NULL;
	}
}

/*
 * Whether an idle connection has anything to read: bytes the service sent
 * after its answer, or its close, already in the socket though libevent
 * has not looked yet (it would close the connection at its next look).
 * Such a connection must not be asked again: those bytes would be read as
 * the answer.
 */
static int
authhttp_idle_dirty(struct evhttp_connection *evcon)
{
	struct bufferevent *bev = evhttp_connection_get_bufferevent(evcon);
	evutil_socket_t fd = bufferevent_getfd(bev);
	char c;

	if (fd < 0 || evbuffer_get_length(bufferevent_get_input(bev)) > 0)
		return 1;
	if (recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT) < 0 &&
	    (errno == EAGAIN || errno == EWOULDBLOCK))
		return 0;
	return 1;
}

/* Free an idle pool entry and its connection. */
static void
authhttp_idle_free(struct authhttp_pool *p, struct authhttp_idle *e)
{
	TAILQ_REMOVE(&p->idle, e, entry);
	p->nidle--;
	evhttp_connection_free(e->evcon);
	free(e);
}

/*
 * Whether the finished request leaves its connection fit for the next
 * one: libevent read the whole answer, nothing came after it, the socket
 * is still open and the answer allows it (HTTP/1.1 without "Connection:
 * close", or 1.0 with "Connection: keep-alive").
 */
static int
authhttp_reusable(struct authhttp *r)
{
	struct bufferevent *bev = evhttp_connection_get_bufferevent(r->evcon);

	return r->pool != NULL && r->keepalive > 0 && r->keep && r->complete &&
	    evbuffer_get_length(bufferevent_get_input(bev)) == 0 &&
	    evbuffer_get_length(bufferevent_get_output(bev)) == 0 &&
	    bufferevent_getfd(bev) >= 0;
}

/* Give r's connection to the pool (evicting the oldest over the bound). */
static void
authhttp_pool_put(struct authhttp *r)
{
	struct authhttp_pool *p = r->pool;
	struct authhttp_idle *e = calloc(1, sizeof(*e));
	struct timeval idle = { AUTHHTTP_IDLE_S, 0 };

	if (e == NULL) {
		evhttp_connection_free(r->evcon);
		r->evcon = NULL;
		return;
	}
	while (p->nidle >= r->keepalive && !TAILQ_EMPTY(&p->idle))
		authhttp_idle_free(p, TAILQ_FIRST(&p->idle));
	e->evcon = r->evcon;
	r->evcon = NULL;
	/* Idle, libevent's read timeout is how long it stays: closed after it. */
	evhttp_connection_set_timeout_tv(e->evcon, &idle);
	memcpy(e->ip, r->ip, sizeof(e->ip));
	e->port = r->port;
	TAILQ_INSERT_TAIL(&p->idle, e, entry);
	p->nidle++;
}

/* Free the connection (or give it back to the pool) and the request. */
static void
authhttp_close(struct authhttp *r)
{
	if (r->evcon != NULL) {
		struct bufferevent *bev = evhttp_connection_get_bufferevent(r->evcon);

		if (r->in_cb != NULL)
			evbuffer_remove_cb_entry(bufferevent_get_input(bev), r->in_cb);
		if (r->out_cb != NULL)
			evbuffer_remove_cb_entry(bufferevent_get_output(bev), r->out_cb);
		r->in_cb = r->out_cb = NULL;
		if (authhttp_reusable(r))
			authhttp_pool_put(r);
		else {
			authhttp_wipe_buffer(bufferevent_get_input(bev));
			authhttp_wipe_buffer(bufferevent_get_output(bev));
			evhttp_connection_free(r->evcon);
			r->evcon = NULL;
		}
	}
	authhttp_drop_request(r);
}

/* Free r and everything it holds. */
static void
authhttp_free(struct authhttp *r)
{
	authhttp_close(r);
	if (r->timer != NULL)
		event_free(r->timer);
	if (r->done != NULL)
		event_free(r->done);
	free(r->answer.user);
	free(r->path);
	if (r->answer.pass != NULL) {
		OPENSSL_cleanse(r->answer.pass, r->answer.passlen);
		free(r->answer.pass);
	}
	free(r);
}

/* The answer is final: stop the timer and deliver it from the loop. */
static void
authhttp_decide(struct authhttp *r)
{
	r->decided = 1;
	evtimer_del(r->timer);
	event_active(r->done, EV_TIMEOUT, 0);
}

/* Decide on an error of kind e with a reason; returns -1 for the caller's convenience. */
static int
authhttp_fail(struct authhttp *r, enum authhttp_error e, const char *fmt, ...)
{
	va_list ap;

	if (r->decided)
		return -1;
	r->answer.outcome = AUTHHTTP_ERROR;
	r->answer.error = e;
	va_start(ap, fmt);
	vsnprintf(r->answer.reason, sizeof(r->answer.reason), fmt, ap);
	va_end(ap);
	authhttp_decide(r);
	return -1;
}

/* Parse Auth-Wait: digits only; larger than AUTHHTTP_WAIT_MAX is cut to it. */
static int
authhttp_wait(const char *s, unsigned *wait)
{
	unsigned v = 0;

	if (*s == '\0')
		return -1;
	for (; *s != '\0'; s++) {
		if (*s < '0' || *s > '9')
			return -1;
		if (v <= AUTHHTTP_WAIT_MAX)
			v = v * 10 + (unsigned)(*s - '0');
	}
	*wait = v > AUTHHTTP_WAIT_MAX ? AUTHHTTP_WAIT_MAX : v;
	return 0;
}

/* Fill ss from Auth-Server (an IPv4 or IPv6 address, [IPv6] too) and port. */
static int
authhttp_server(const char *text, unsigned port, struct sockaddr_storage *ss,
    socklen_t *len)
{
	char buf[INET6_ADDRSTRLEN];
	size_t n = strlen(text);
	struct sockaddr_in *sin = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
	int bracket = n >= 2 && text[0] == '[' && text[n - 1] == ']';

	memset(ss, 0, sizeof(*ss));
	if (bracket) {
		text++;
		n -= 2;
	}
	if (n == 0 || n >= sizeof(buf))
		return -1;
	memcpy(buf, text, n);
	buf[n] = '\0';
	if (!bracket && inet_pton(AF_INET, buf, &sin->sin_addr) == 1) {
		sin->sin_family = AF_INET;
		sin->sin_port = htons((uint16_t)port);
		*len = sizeof(*sin);
		return 0;
	}
	if (inet_pton(AF_INET6, buf, &sin6->sin6_addr) == 1) {
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons((uint16_t)port);
		*len = sizeof(*sin6);
		return 0;
	}
	return -1;
}

/* Keep the OK answer's Auth-User and Auth-Pass: nginx uses them verbatim. */
static int
authhttp_overrides(struct authhttp *r, const char *user, const char *pass)
{
	struct authhttp_answer *a = &r->answer;

	if (user != NULL && (a->user = strdup(user)) == NULL)
		return -1;
	if (pass != NULL) {
		a->passlen = strlen(pass);
		if ((a->pass = malloc(a->passlen + 1)) == NULL)
			return -1;
		memcpy(a->pass, pass, a->passlen + 1);
	}
	return 0;
}

/*
 * Read the answer the way nginx does (ngx_mail_auth_http_process_headers):
 * header names match without case, the last Auth-Server, Auth-Port,
 * Auth-User, Auth-Pass and valid Auth-Wait count, any Auth-Status other
 * than "OK" or "WAIT" (case matters) makes a denial even beside an OK.
 * Stricter than nginx: a 2xx status is required unless the answer is a
 * denial, and an answer without Auth-Status is not taken as OK.
 */
static void
authhttp_read_answer(struct authhttp *r, struct evhttp_request *req)
{
	struct authhttp_answer *a = &r->answer;
	struct evkeyval *kv;
	const char *denial = NULL, *server = NULL, *port = NULL, *user = NULL, *pass = NULL;
	char quote[AUTHHTTP_QUOTE_MAX];
	int ok = 0, wait = 0, code = evhttp_request_get_response_code(req);
	unsigned pn, w;

	a->http_status = code;
	TAILQ_FOREACH(kv, evhttp_request_get_input_headers(req), next) {
		if (evutil_ascii_strcasecmp(kv->key, "Auth-Status") == 0) {
			if (strcmp(kv->value, "OK") == 0)
				ok = 1;
			else if (strcmp(kv->value, "WAIT") == 0)
				wait = 1;
			else
				denial = kv->value;
		} else if (evutil_ascii_strcasecmp(kv->key, "Auth-Server") == 0)
			server = kv->value;
		else if (evutil_ascii_strcasecmp(kv->key, "Auth-Port") == 0)
			port = kv->value;
		else if (evutil_ascii_strcasecmp(kv->key, "Auth-User") == 0)
			user = kv->value;
		else if (evutil_ascii_strcasecmp(kv->key, "Auth-Pass") == 0)
			pass = kv->value;
		else if (evutil_ascii_strcasecmp(kv->key, "Auth-Wait") == 0 &&
		    authhttp_wait(kv->value, &w) == 0) {
			a->has_wait = 1;
			a->wait_s = w;
		}
	}

	if (denial != NULL) {
		a->outcome = AUTHHTTP_DENIED;
		authhttp_printable(a->status, sizeof(a->status), denial);
		snprintf(a->reason, sizeof(a->reason), "denied (HTTP %d)", code);
		authhttp_decide(r);
		return;
	}
	if (code < 200 || code > 299) {
		authhttp_fail(r, AUTHHTTP_E_HTTP_STATUS, "HTTP status %d without an Auth-Status denial",
		    code);
		return;
	}
	if (wait) {
		a->outcome = AUTHHTTP_RETRY;
		snprintf(a->reason, sizeof(a->reason), "Auth-Status: WAIT");
		authhttp_decide(r);
		return;
	}
	if (!ok) {
		authhttp_fail(r, AUTHHTTP_E_NO_STATUS, "no Auth-Status in the answer");
		return;
	}
	a->has_wait = 0;
	a->wait_s = 0;
	if (server == NULL || *server == '\0') {
		authhttp_fail(r, AUTHHTTP_E_SERVER, "Auth-Status OK without Auth-Server");
		return;
	}
	if (port == NULL || *port == '\0') {
		authhttp_fail(r, AUTHHTTP_E_PORT, "Auth-Status OK without Auth-Port");
		return;
	}
	if (authhttp_port(port, strlen(port), &pn) != 0) {
		authhttp_printable(quote, sizeof(quote), port);
		authhttp_fail(r, AUTHHTTP_E_PORT, "Auth-Port \"%s\" is not 1-65535", quote);
		return;
	}
	if (authhttp_server(server, pn, &a->server, &a->serverlen) != 0) {
		authhttp_printable(quote, sizeof(quote), server);
		authhttp_fail(r, AUTHHTTP_E_SERVER,
		    "Auth-Server \"%s\" is not an IP address (names are not resolved)", quote);
		return;
	}
	if (authhttp_overrides(r, user, pass) != 0) {
		authhttp_fail(r, AUTHHTTP_E_INTERNAL, "out of memory");
		return;
	}
	a->outcome = AUTHHTTP_OK;
	snprintf(a->reason, sizeof(a->reason), "OK (HTTP %d)", code);
	authhttp_decide(r);
}

/* Whether a Connection header of h lists option opt (a comma list, any case). */
static int
authhttp_conn_option(struct evkeyvalq *h, const char *opt)
{
	struct evkeyval *kv;
	size_t olen = strlen(opt), n;
	const char *p;

	TAILQ_FOREACH(kv, h, next) {
		if (evutil_ascii_strcasecmp(kv->key, "Connection") != 0)
			continue;
		for (p = kv->value; *p != '\0'; p += n) {
			p += strspn(p, " \t,");
			n = strcspn(p, " \t,");
			if (n == olen && evutil_ascii_strncasecmp(p, opt, n) == 0)
				return 1;
		}
	}
	return 0;
}

/*
 * Whether the answer's end is where libevent ends it, so that no later
 * byte of it can be read as the next answer: a final status (not 1xx),
 * and one length both sides read alike: 204 or 304 without a body (no
 * length, or 0), else exactly one Transfer-Encoding: chunked, or exactly
 * one Content-Length of digits and no Transfer-Encoding.  Not: a body
 * that ends at the close (libevent takes any Connection header for "no
 * body"), two lengths, "+5", a coding libevent does not know.
 */
static int
authhttp_framed(struct evhttp_request *req)
{
	struct evkeyval *kv;
	const char *cl = NULL, *te = NULL;
	int ncl = 0, nte = 0, code = evhttp_request_get_response_code(req);

	if (code < 200)
		return 0;
	TAILQ_FOREACH(kv, evhttp_request_get_input_headers(req), next) {
		if (evutil_ascii_strcasecmp(kv->key, "Content-Length") == 0) {
			ncl++;
			cl = kv->value;
		} else if (evutil_ascii_strcasecmp(kv->key, "Transfer-Encoding") == 0) {
			nte++;
			te = kv->value;
		}
	}
	if (ncl > 1 || nte > 1 || (cl != NULL && te != NULL))
		return 0;
	if (cl != NULL && (*cl == '\0' || cl[strspn(cl, "0123456789")] != '\0'))
		return 0;
	if (code == 204 || code == 304)
		return te == NULL && (cl == NULL || cl[strspn(cl, "0")] == '\0');
	if (te != NULL)
		return evutil_ascii_strcasecmp(te, "chunked") == 0;
	return cl != NULL;
}

/*
 * Whether the answer lets the connection stay open for another request:
 * framed (above), and HTTP/1.1 without a "close" option, or 1.0 with
 * "keep-alive" (every Connection header, every option in it).
 */
static int
authhttp_keep(struct evhttp_request *req)
{
	struct evkeyvalq *h = evhttp_request_get_input_headers(req);

	if (req->major != 1 || !authhttp_framed(req) || authhttp_conn_option(h, "close"))
		return 0;
	return req->minor > 0 || authhttp_conn_option(h, "keep-alive");
}

/* libevent: the answer's headers are in. */
static int
authhttp_header_cb(struct evhttp_request *req, void *arg)
{
	struct authhttp *r = arg;

	if (!r->decided)
		authhttp_read_answer(r, req);
	/*
	 * Like nginx, close once the headers are in: the body is never read.
	 * With a pool, read the (bounded) body when the answer allows keeping
	 * the connection, so that it can serve the next request.
	 */
	if (r->pool == NULL || r->keepalive == 0 || !authhttp_keep(req))
		return -1;
	r->keep = 1;
	return 0;
}

/* libevent: the request failed before its headers were read. */
static void
authhttp_error_cb(enum evhttp_request_error e, void *arg)
{
	struct authhttp *r = arg;

	switch (e) {
	case EVREQ_HTTP_TIMEOUT:
		authhttp_fail(r, AUTHHTTP_E_TIMEOUT, "no answer within %llu ms",
		    (unsigned long long)r->timeout_ms);
		break;
	case EVREQ_HTTP_EOF:
	case EVREQ_HTTP_BUFFER_ERROR:
		/*
		 * A kept-alive connection the service closed just as we asked
		 * on it: ask once more, on a new connection (from the loop).
		 */
		if (r->reused && !r->retried && r->received == 0 && !r->decided) {
			r->retry = 1;
			evtimer_del(r->timer);
			event_active(r->done, EV_TIMEOUT, 0);
			break;
		}
		/* The request goes into the output only once connected. */
		if (r->sent == 0)
			authhttp_fail(r, AUTHHTTP_E_CONNECT, "cannot connect");
		else if (r->received == 0)
			authhttp_fail(r, AUTHHTTP_E_CLOSED, "connection closed without an answer");
		else
			authhttp_fail(r, AUTHHTTP_E_CLOSED,
			    "connection closed in the middle of the answer headers");
		break;
	case EVREQ_HTTP_INVALID_HEADER:
		/* libevent reports headers over the limit as invalid too. */
		if (r->received > AUTHHTTP_HEADERS_MAX)
			authhttp_fail(r, AUTHHTTP_E_TOO_LARGE, "answer headers over %d bytes",
			    AUTHHTTP_HEADERS_MAX);
		else
			authhttp_fail(r, AUTHHTTP_E_PROTOCOL,
			    "not an HTTP/1.x answer with valid headers");
		break;
	case EVREQ_HTTP_DATA_TOO_LONG:
		authhttp_fail(r, AUTHHTTP_E_TOO_LARGE, "answer over the size limits");
		break;
	case EVREQ_HTTP_REQUEST_CANCEL:
	default:
		authhttp_fail(r, AUTHHTTP_E_INTERNAL, "HTTP client error %d", (int)e);
		break;
	}
}

/* libevent: the request is over (req NULL after an error, code 0 if never connected). */
static void
authhttp_request_cb(struct evhttp_request *req, void *arg)
{
	struct authhttp *r = arg;

	if (r->retry)
		return;
	if (r->decided && req != NULL && evhttp_request_get_response_code(req) != 0) {
		r->complete = 1;	/* the body of an answer read at its headers */
		return;
	}
	if (req != NULL && evhttp_request_get_response_code(req) == 0)
		authhttp_fail(r, AUTHHTTP_E_CONNECT, "cannot connect");
	else
		authhttp_fail(r, AUTHHTTP_E_PROTOCOL, "answer ended without headers");
}

/* Count answer bytes read, to tell "too large" from "malformed". */
static void
authhttp_input_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
	struct authhttp *r = arg;

	(void)buf;
	r->received += info->n_added;
}

/* Count request bytes queued: libevent writes the request once connected. */
static void
authhttp_output_cb(struct evbuffer *buf, const struct evbuffer_cb_info *info, void *arg)
{
	struct authhttp *r = arg;

	(void)buf;
	r->sent += info->n_added;
}

/* The whole-request timeout. */
static void
authhttp_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct authhttp *r = arg;

	(void)fd;
	(void)what;
	authhttp_fail(r, AUTHHTTP_E_TIMEOUT, "no complete answer within %llu ms",
	    (unsigned long long)r->timeout_ms);
}

/* Deliver the answer: outside libevent's HTTP stack, so everything can go. */
static void
authhttp_done_cb(evutil_socket_t fd, short what, void *arg)
{
	struct authhttp *r = arg;

	(void)fd;
	(void)what;
	if (r->retry) {
		authhttp_resend(r);
		return;
	}
	r->answer.reused = r->reused;
	authhttp_close(r);
	r->delivering = 1;
	r->cb(&r->answer, r->arg);
	authhttp_free(r);
}

/* Add one request header; -1 if the value cannot be sent or memory ran out. */
static int
authhttp_add(struct evkeyvalq *h, const char *name, const char *value)
{
	if (value == NULL || !authhttp_value_ok(value))
		return -1;
	return evhttp_add_header(h, name, value);
}

/*
 * The request headers, in nginx's order (ngx_mail_auth_http_create_request
 * for IMAP): Host (without port), Auth-Method, Auth-User, Auth-Pass,
 * Auth-Protocol, Auth-Login-Attempt, Client-IP, Proxy-Protocol-* for a
 * client that came with a PROXY header, Auth-SSL* for a TLS client, then
 * the configured headers.  Never sent here: Auth-Salt (APOP, CRAM-MD5),
 * Client-Host (SMTP only), Auth-SMTP-*, Auth-SSL-Verify and the other
 * client-certificate headers (nginx sends them only with ssl_verify_client).
 */
static int
authhttp_fill(struct authhttp *r, const struct authhttp_conf *c,
    const struct authhttp_query *q)
{
	struct evkeyvalq *h = evhttp_request_get_output_headers(r->req);
	const char *qu = q->user != NULL ? q->user : "";
	const char *qp = q->pass != NULL ? q->pass : "";
	size_t ulen = strlen(qu), plen = q->pass != NULL ? q->passlen : 0, i;
	char num[16], *user = NULL, *pass = NULL;
	int bad = 0, oom = 0;

	if (ulen > AUTHHTTP_CRED_MAX || plen > AUTHHTTP_CRED_MAX)
		return authhttp_fail(r, AUTHHTTP_E_REQUEST, "user or password over %d bytes",
		    AUTHHTTP_CRED_MAX);
	user = authhttp_escape(qu, ulen);
	pass = authhttp_escape(qp, plen);
	if (user == NULL || pass == NULL) {
		bad = oom = -1;
		goto out;
	}
	snprintf(num, sizeof(num), "%u", q->attempt);
	bad |= authhttp_add(h, "Host", c->url->host);
	bad |= authhttp_add(h, "Auth-Method", "plain");
	bad |= authhttp_add(h, "Auth-User", user);
	bad |= authhttp_add(h, "Auth-Pass", pass);
	bad |= authhttp_add(h, "Auth-Protocol", "imap");
	bad |= authhttp_add(h, "Auth-Login-Attempt", num);
	bad |= authhttp_add(h, "Client-IP", q->client_ip);
	if (q->pp_addr != NULL) {
		bad |= authhttp_add(h, "Proxy-Protocol-Addr", q->pp_addr);
		snprintf(num, sizeof(num), "%u", q->pp_port);
		bad |= authhttp_add(h, "Proxy-Protocol-Port", num);
		bad |= authhttp_add(h, "Proxy-Protocol-Server-Addr", q->pp_server_addr);
		snprintf(num, sizeof(num), "%u", q->pp_server_port);
		bad |= authhttp_add(h, "Proxy-Protocol-Server-Port", num);
	}
	if (q->ssl) {
		bad |= authhttp_add(h, "Auth-SSL", "on");
		if (q->ssl_protocol != NULL)
			bad |= authhttp_add(h, "Auth-SSL-Protocol", q->ssl_protocol);
		if (q->ssl_cipher != NULL)
			bad |= authhttp_add(h, "Auth-SSL-Cipher", q->ssl_cipher);
	}
	for (i = 0; i < c->nheaders; i++)
		bad |= authhttp_add(h, c->headers[i].name, c->headers[i].value);
out:
	if (user != NULL)
		free(user);
	if (pass != NULL) {
		OPENSSL_cleanse(pass, strlen(pass));
		free(pass);
	}
	if (bad != 0)
		return authhttp_fail(r, oom ? AUTHHTTP_E_INTERNAL : AUTHHTTP_E_REQUEST,
		    oom ? "out of memory" : "a request header cannot be sent (missing, "
		    "or a control character in it)");
	return 0;
}

/* A new request object with our callbacks: HTTP/1.0 without a pool, as nginx asks. */
static struct evhttp_request *
authhttp_request_new(struct authhttp *r)
{
	struct evhttp_request *req = evhttp_request_new(authhttp_request_cb, r);

	if (req == NULL)
		return NULL;
	evhttp_request_own(req);
	evhttp_request_set_header_cb(req, authhttp_header_cb);
	evhttp_request_set_error_cb(req, authhttp_error_cb);
	if (r->pool == NULL || r->keepalive == 0) {
		/* libevent has no setter for the version (1.1 otherwise). */
		req->major = 1;
		req->minor = 0;
	}
	return req;
}

/*
 * A connection for r: the newest idle one to the same address when r may
 * use the pool (dropping those the service closed or that timed out on
 * the way), else a new one.
 */
static struct evhttp_connection *
authhttp_connection(struct authhttp *r)
{
	struct authhttp_pool *p = r->pool;
	struct authhttp_idle *e, *prev;
	struct evhttp_connection *evcon;
	struct timeval io;
	uint64_t io_ms = r->timeout_ms + AUTHHTTP_IO_SLACK_MS;

	io.tv_sec = (time_t)(io_ms / 1000);
	io.tv_usec = (suseconds_t)(io_ms % 1000 * 1000);
	if (p != NULL && r->keepalive > 0 && !r->retried) {
		for (e = TAILQ_LAST(&p->idle, authhttp_idleq); e != NULL; e = prev) {
			prev = TAILQ_PREV(e, authhttp_idleq, entry);
			if (bufferevent_getfd(evhttp_connection_get_bufferevent(e->evcon)) < 0) {
				authhttp_idle_free(p, e);
				continue;
			}
			if (e->port != r->port || strcmp(e->ip, r->ip) != 0)
				continue;
			if (authhttp_idle_dirty(e->evcon)) {
				authhttp_idle_free(p, e);
				continue;
			}
			evcon = e->evcon;
			TAILQ_REMOVE(&p->idle, e, entry);
			p->nidle--;
			free(e);
			r->reused = 1;
			evhttp_connection_set_timeout_tv(evcon, &io);
			return evcon;
		}
	}
	evcon = evhttp_connection_base_new(r->base, NULL, r->ip, (ev_uint16_t)r->port);
	if (evcon == NULL)
		return NULL;
	/* Retries would repeat a failed connect behind the caller's back. */
	evhttp_connection_set_retries(evcon, 0);
	/* libevent's per-read/write timeouts only back up the whole-request timer. */
	evhttp_connection_set_timeout_tv(evcon, &io);
	evhttp_connection_set_max_headers_size(evcon, AUTHHTTP_HEADERS_MAX);
	evhttp_connection_set_max_body_size(evcon, AUTHHTTP_BODY_MAX);
	return evcon;
}

/* Send r->req on a connection (counting its bytes); -1 after deciding. */
static int
authhttp_issue(struct authhttp *r)
{
	struct bufferevent *bev;

	if ((r->evcon = authhttp_connection(r)) == NULL)
		return authhttp_fail(r, AUTHHTTP_E_INTERNAL, "out of memory");
	bev = evhttp_connection_get_bufferevent(r->evcon);
	r->in_cb = evbuffer_add_cb(bufferevent_get_input(bev), authhttp_input_cb, r);
	r->out_cb = evbuffer_add_cb(bufferevent_get_output(bev), authhttp_output_cb, r);
	if (r->in_cb == NULL || r->out_cb == NULL)
		return authhttp_fail(r, AUTHHTTP_E_INTERNAL, "out of memory");
	/* A connect refused at once calls authhttp_request_cb from in here. */
	if (evhttp_make_request(r->evcon, r->req, EVHTTP_REQ_GET, r->path) != 0)
		return authhttp_fail(r, AUTHHTTP_E_INTERNAL, "cannot start the request");
	return 0;
}

/* Milliseconds on the monotonic clock. */
static uint64_t
authhttp_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/*
 * Arm the whole-request timer for what is left of the timeout since the
 * request started (a second try gets no more time); -1 after deciding.
 */
static int
authhttp_arm(struct authhttp *r)
{
	struct timeval tv;
	uint64_t spent = authhttp_now_ms() - r->started_ms, left;

	if (spent >= r->timeout_ms)
		return authhttp_fail(r, AUTHHTTP_E_TIMEOUT, "no complete answer within %llu ms",
		    (unsigned long long)r->timeout_ms);
	left = r->timeout_ms - spent;
	tv.tv_sec = (time_t)(left / 1000);
	tv.tv_usec = (suseconds_t)(left % 1000 * 1000);
	if (evtimer_add(r->timer, &tv) != 0)
		return authhttp_fail(r, AUTHHTTP_E_INTERNAL, "cannot arm the timer");
	return 0;
}

/*
 * Ask again, on a new connection, after a kept-alive one was found closed
 * before any answer byte (the service's idle timeout racing our request):
 * the same headers, copied into a new request, within the same timeout.
 */
static void
authhttp_resend(struct authhttp *r)
{
	struct evhttp_request *old = r->req;
	struct evkeyval *kv;

	r->retry = 0;
	r->retried = 1;
	r->reused = 0;
	r->sent = r->received = 0;
	r->req = NULL;
	authhttp_close(r);	/* the stale connection, never pooled (not complete) */
	r->req = authhttp_request_new(r);
	if (r->req == NULL) {
		r->req = old;
		authhttp_fail(r, AUTHHTTP_E_INTERNAL, "out of memory");
		return;
	}
	TAILQ_FOREACH(kv, evhttp_request_get_output_headers(old), next) {
		if (evhttp_add_header(evhttp_request_get_output_headers(r->req), kv->key,
		    kv->value) != 0) {
			authhttp_wipe_headers(evhttp_request_get_output_headers(old));
			evhttp_request_free(old);
			authhttp_fail(r, AUTHHTTP_E_INTERNAL, "out of memory");
			return;
		}
	}
	authhttp_wipe_headers(evhttp_request_get_output_headers(old));
	authhttp_wipe_headers(evhttp_request_get_input_headers(old));
	evhttp_request_free(old);
	if (authhttp_arm(r) == 0)
		(void)authhttp_issue(r);
}

/* Build the request, find it a connection and start it. */
static int
authhttp_send(struct authhttp *r, const struct authhttp_conf *c,
    const struct authhttp_query *q)
{
	r->started_ms = authhttp_now_ms();
	if (authhttp_arm(r) != 0)
		return -1;
	if ((r->path = strdup(c->url->path)) == NULL || (r->req = authhttp_request_new(r)) == NULL)
		return authhttp_fail(r, AUTHHTTP_E_INTERNAL, "out of memory");
	if (snprintf(r->ip, sizeof(r->ip), "%s", c->url->ip) >= (int)sizeof(r->ip))
		return authhttp_fail(r, AUTHHTTP_E_INTERNAL, "address too long");
	r->port = c->url->port;
	if (authhttp_fill(r, c, q) != 0)
		return -1;
	return authhttp_issue(r);
}

/* Start a lookup; the answer comes to cb from the loop. */
struct authhttp *
authhttp_start(struct event_base *base, const struct authhttp_conf *c,
    const struct authhttp_query *q, void (*cb)(const struct authhttp_answer *, void *),
    void *arg)
{
	struct authhttp *r;

	if ((r = calloc(1, sizeof(*r))) == NULL)
		return NULL;
	r->base = base;
	r->cb = cb;
	r->arg = arg;
	r->done = event_new(base, -1, 0, authhttp_done_cb, r);
	r->timer = evtimer_new(base, authhttp_timer_cb, r);
	if (r->done == NULL || r->timer == NULL) {
		authhttp_free(r);
		return NULL;
	}
	r->pool = c->pool;
	r->keepalive = c->keepalive > AUTHHTTP_KEEPALIVE_MAX ? AUTHHTTP_KEEPALIVE_MAX : c->keepalive;
	r->timeout_ms = c->timeout_ms == 0 ? AUTHHTTP_TIMEOUT_DEFAULT_MS : c->timeout_ms;
	if (r->timeout_ms > AUTHHTTP_TIMEOUT_MAX_MS)
		r->timeout_ms = AUTHHTTP_TIMEOUT_MAX_MS;
	/* A failure here is decided already and goes to cb from the loop. */
	(void)authhttp_send(r, c, q);
	return r;
}

/* Abandon r without calling back; inside the callback it is freed on return anyway. */
void
authhttp_cancel(struct authhttp *r)
{
	if (r == NULL || r->delivering)
		return;
	authhttp_free(r);
}

/* A pool for kept-alive connections (see authhttp.h). */
struct authhttp_pool *
authhttp_pool_new(void)
{
	struct authhttp_pool *p = calloc(1, sizeof(*p));

	if (p != NULL)
		TAILQ_INIT(&p->idle);
	return p;
}

/* Close every idle connection and free the pool. */
void
authhttp_pool_free(struct authhttp_pool *p)
{
	if (p == NULL)
		return;
	while (!TAILQ_EMPTY(&p->idle))
		authhttp_idle_free(p, TAILQ_FIRST(&p->idle));
	free(p);
}
