/*
 * authhttp: the client side of nginx's mail auth_http protocol.
 *
 * Before login imapgate asks an HTTP service whether a user may log in and
 * which backend serves them, the way nginx's mail proxy asks its auth_http
 * server, so an existing service works unchanged: one GET carrying Auth-*
 * request headers, an answer in Auth-* response headers, the body ignored.
 * Asynchronous, on libevent's HTTP client: one connection per request
 * (HTTP/1.0, as nginx), or with a pool, HTTP/1.1 connections kept open
 * and reused (authhttp_pool_new).
 * The answer goes to a callback, always from the event loop (never from
 * inside authhttp_start), exactly once unless the request is cancelled.
 * No logging: the answer says what happened and the caller logs it.
 */
#ifndef IMAPGATE_AUTHHTTP_H
#define IMAPGATE_AUTHHTTP_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct event_base;
struct authhttp;
struct authhttp_pool;

#define AUTHHTTP_HOST_MAX	255		/* host part of the URL */
#define AUTHHTTP_PATH_MAX	2048		/* path and query of the URL */
#define AUTHHTTP_CRED_MAX	16384		/* user or password/token, before escaping */
#define AUTHHTTP_HEADERS_MAX	(8 * 1024)	/* the answer's status line and headers */
#define AUTHHTTP_BODY_MAX	(64 * 1024)	/* a backstop: the body is never read */
#define AUTHHTTP_STATUS_MAX	256		/* Auth-Status text kept for the client */
#define AUTHHTTP_REASON_MAX	128		/* the answer's reason text, NUL included */
#define AUTHHTTP_WAIT_MAX	300		/* Auth-Wait seconds; more is cut to this */
#define AUTHHTTP_TIMEOUT_DEFAULT_MS 60000	/* nginx's auth_http_timeout default */
#define AUTHHTTP_TIMEOUT_MAX_MS	3600000		/* longest timeout accepted */
#define AUTHHTTP_KEEPALIVE_MAX	1024		/* idle connections a pool keeps */
#define AUTHHTTP_IDLE_S		60		/* an idle kept connection is closed after */

/* The lookup's URL, parsed and resolved once, at configuration time. */
struct authhttp_url {
	char		*host;		/* as written: name, IPv4 or [IPv6]; sent as Host */
	unsigned	 port;		/* 80 if not written */
	char		*path;		/* path and query, at least "/" */
	char		*hostport;	/* "host:port", for messages */
	char		*ip;		/* the numeric address connected to */
};

/* One auth_http_header: sent as is with every request. */
struct authhttp_header {
	const char	*name;
	const char	*value;
};

/* What a request is sent with; read only during authhttp_start. */
struct authhttp_conf {
	const struct authhttp_url	*url;
	uint64_t			 timeout_ms;	/* whole request; 0: the default */
	const struct authhttp_header	*headers;	/* auth_http_header, in order */
	size_t				 nheaders;
	struct authhttp_pool		*pool;		/* NULL: one connection per request */
	unsigned			 keepalive;	/* idle connections pool keeps; 0: none */
};

/*
 * How the client authenticated.  Both are sent as "Auth-Method: plain":
 * nginx (up to 1.31) has no OAuth method, and a service written for nginx
 * knows no other value for a user and a secret.
 */
enum authhttp_method {
	AUTHHTTP_METHOD_PLAIN,		/* LOGIN, AUTHENTICATE PLAIN or LOGIN */
	AUTHHTTP_METHOD_OAUTH,		/* XOAUTH2, OAUTHBEARER: the token is the password */
};

/* One login attempt, as nginx describes it; read only during authhttp_start. */
struct authhttp_query {
	enum authhttp_method	 method;
	const char		*user;		/* Auth-User, escaped */
	const char		*pass;		/* Auth-Pass (any bytes), escaped */
	size_t			 passlen;
	unsigned		 attempt;	/* Auth-Login-Attempt: 1 for the first */
	const char		*client_ip;	/* Client-IP: the bare address */
	int			 ssl;		/* client side is TLS: Auth-SSL: on */
	const char		*ssl_protocol;	/* Auth-SSL-Protocol, NULL: not sent */
	const char		*ssl_cipher;	/* Auth-SSL-Cipher, NULL: not sent */
	const char		*pp_addr;	/* Proxy-Protocol-*, NULL: the client */
	unsigned		 pp_port;	/*   connection had no PROXY header */
	const char		*pp_server_addr;
	unsigned		 pp_server_port;
};

enum authhttp_outcome {
	AUTHHTTP_OK,		/* log in to server; user/pass may replace the client's */
	AUTHHTTP_DENIED,	/* Auth-Status not OK: login failed, status has the text */
	AUTHHTTP_RETRY,		/* Auth-Status: WAIT: ask again after wait_s seconds */
	AUTHHTTP_ERROR,		/* no usable answer: error says which kind */
};

enum authhttp_error {
	AUTHHTTP_E_NONE,	/* outcome is not AUTHHTTP_ERROR */
	AUTHHTTP_E_REQUEST,	/* the query cannot be sent (too long, CR/LF in a field) */
	AUTHHTTP_E_CONNECT,	/* the connection failed: refused, unreachable */
	AUTHHTTP_E_TIMEOUT,	/* no complete answer within the timeout */
	AUTHHTTP_E_CLOSED,	/* closed or reset before the headers ended */
	AUTHHTTP_E_PROTOCOL,	/* not an HTTP/1.x answer, or a malformed header */
	AUTHHTTP_E_TOO_LARGE,	/* status line and headers over AUTHHTTP_HEADERS_MAX */
	AUTHHTTP_E_HTTP_STATUS,	/* not 2xx, and no Auth-Status denial */
	AUTHHTTP_E_NO_STATUS,	/* 2xx without Auth-Status */
	AUTHHTTP_E_SERVER,	/* OK without Auth-Server, or it is not an IP address */
	AUTHHTTP_E_PORT,	/* OK without Auth-Port, or it is not 1-65535 */
	AUTHHTTP_E_INTERNAL,	/* out of memory, or libevent refused */
};

/* An answer; valid only during the callback (copy what is kept). */
struct authhttp_answer {
	enum authhttp_outcome	 outcome;
	enum authhttp_error	 error;
	int			 http_status;	/* 0: no status line was read */
	char			 reason[AUTHHTTP_REASON_MAX];	/* for the log */
	char			 status[AUTHHTTP_STATUS_MAX + 1]; /* DENIED: printable ASCII */
	struct sockaddr_storage	 server;	/* OK: Auth-Server and Auth-Port */
	socklen_t		 serverlen;
	int			 has_wait;	/* DENIED, RETRY: Auth-Wait was given */
	unsigned		 wait_s;	/*   its value, at most AUTHHTTP_WAIT_MAX */
	char			*user;		/* OK: Auth-User override, NULL: none */
	char			*pass;		/* OK: Auth-Pass override, NULL: none */
	size_t			 passlen;	/*   (wiped and freed after the callback) */
	int			 reused;	/* asked on a kept-alive connection */
};

/*
 * Parse an auth_http URL: [http://]host[:port][/path][?query], host a
 * name (resolved here, once, first address), an IPv4 or an [IPv6]
 * address.  Returns 0, or -1 with a message in err.
 */
int	authhttp_url_parse(const char *text, struct authhttp_url *u, char *err,
	    size_t errlen);
/* Free what authhttp_url_parse allocated (u may be all zero). */
void	authhttp_url_clear(struct authhttp_url *u);
/* Check an auth_http_header name and value.  Returns 0, or -1 with a message in err. */
int	authhttp_header_check(const char *name, const char *value, char *err,
	    size_t errlen);

/*
 * Send q to the lookup.  cb runs once, from base's loop, unless
 * authhttp_cancel comes first; the request is freed when cb returns.
 * Returns NULL only if even the handle could not be allocated (then
 * nothing was sent and cb never runs).
 */
struct authhttp	*authhttp_start(struct event_base *base, const struct authhttp_conf *c,
		    const struct authhttp_query *q,
		    void (*cb)(const struct authhttp_answer *, void *), void *arg);
/*
 * Abandon r: cb will not run, everything is freed.  Safe at any time
 * before cb runs, NULL included; inside cb it does nothing.
 */
void		 authhttp_cancel(struct authhttp *r);
/*
 * A pool of idle keep-alive connections, for one event loop.  A request
 * with a pool and keepalive > 0 asks in HTTP/1.1, takes an idle
 * connection to its address if there is one, and gives it back after a
 * clean answer: a final status, one unambiguous length (Content-Length
 * or chunked; none only for 204/304), the whole body read, nothing left
 * after it, HTTP/1.1 without a "close" Connection option (or 1.0 with
 * "keep-alive").
 * At most keepalive connections stay idle (the oldest go first); one the
 * service closes, or idle for AUTHHTTP_IDLE_S (below nginx's 75 s
 * keepalive_timeout, so that we close first), is closed.
 * A request that finds its reused connection closed before any answer
 * byte is sent again once, on a new connection.  Free the pool after
 * every request that used it has ended or been cancelled.
 */
struct authhttp_pool	*authhttp_pool_new(void);
/* Close and free every idle connection, then the pool; NULL is fine. */
void			 authhttp_pool_free(struct authhttp_pool *p);

/* A short name for e ("timeout", "connect"...), for logs and counters. */
const char	*authhttp_error_name(enum authhttp_error e);

#endif
