/* endpoint: bufferevent-backed byte streams, plaintext or TLS. */
#include <errno.h>
#include <stdarg.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/ioctl.h>
#include <sys/uio.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/bufferevent_ssl.h>
#include <event2/event.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <zlib.h>

#include "endpoint.h"
#include "netaddr.h"
#include "tls.h"

/* Bytes read from a plaintext socket per wakeup beyond libevent's first 4 KiB, and per read. */
#define ENDPOINT_READ_BUDGET	(256 * 1024)
#define ENDPOINT_READ_CHUNK	(64 * 1024)
/* The most libevent 2.1 reads from a socket per wakeup (EVBUFFER_MAX_READ). */
#define ENDPOINT_LIBEVENT_READ	4096
#define ENDPOINT_ERROR_MAX	128	/* longest error text kept */
/* Most bytes written to a TLS endpoint with one direct SSL_write (one record). */
#define ENDPOINT_STAGE_MAX	16384
/*
 * COMPRESS=DEFLATE (RFC 4978).  Inflate must take the client's window
 * (up to 32 KiB, raw deflate).  Our own deflater is smaller (4 KiB window,
 * memLevel 5, level 1: fast, most of the gain on mail text; ~38 KiB) and is only
 * held while the session sends: an idle session gives it back
 * (endpoint_deflate_idle), which leaves the inflater's 32 KiB window as
 * the cost of an idle compressed session.
 */
#define ENDPOINT_Z_LEVEL	1
#define ENDPOINT_Z_WBITS	12
#define ENDPOINT_Z_MEMLEVEL	5
#define ENDPOINT_Z_CHUNK	16384	/* bytes (de)compressed per step */
#define ENDPOINT_Z_IDLE_MS	2000	/* no output this long: the deflater is released */

struct endpoint {
	struct bufferevent	*bev;
	SSL			*ssl;
	const struct endpoint_cbs *cbs;
	void			*arg;
	size_t			 out_high;
	int			 flushing;
	struct tls_ctx		*tls_pending;	/* start TLS once the output is written */
	struct event_base	*base;
	int			 connected;
	uint64_t		 bytes_in;	/* counted as the session takes bytes */
	uint64_t		 bytes_out;
	char			*error;		/* last error text (NULL: none) */
	/* COMPRESS=DEFLATE (zin NULL: off) */
	z_stream		*zin;		/* the peer's stream, inflated into plain_in */
	z_stream		*zout;		/* ours; NULL between bursts when idle */
	struct evbuffer		*plain_in;	/* inflated input the session reads */
	size_t			 in_high;	/* inflate no further ahead than this */
	struct event		*zflush;	/* deferred sync flush of zout */
	struct event		*zidle;		/* no output for a while: release zout */
	int			 zpending;	/* zout holds bytes not yet flushed */
};

/*
 * Direct TLS writes.  A reply relayed to an idle TLS client would be
 * queued: libevent registers for writability, comes back one loop
 * iteration later, writes one record per buffer chain (a reply moved line
 * by line is several chains) and unregisters: two epoll_ctl calls and often
 * two records per reply.  Instead, bytes moved to a TLS endpoint with
 * nothing queued are staged in one buffer per thread, and a deferred event
 * (it runs after the current callbacks, before the loop waits again) writes
 * them with one SSL_write: one record, one write(2).  Any other output to
 * that endpoint first appends the stage to its queue, so order is kept.
 */
struct endpoint_stage {
	struct evbuffer		*buf;
	struct endpoint		*owner;		/* whose bytes buf holds; NULL: none */
	struct event		*ev;		/* endpoint_stage_cb on this thread's loop */
};

static _Thread_local struct endpoint_stage endpoint_stage;

/* Queue what ep has staged behind its output (the usual libevent path). */
static void
endpoint_unstage(struct endpoint *ep)
{
	if (endpoint_stage.owner != ep)
		return;
	endpoint_stage.owner = NULL;
	evbuffer_add_buffer(bufferevent_get_output(ep->bev), endpoint_stage.buf);
}

/* Can bytes for ep skip the queue: TLS up and nothing queued? */
static int
endpoint_direct_ok(const struct endpoint *ep)
{
	return ep->ssl != NULL && ep->tls_pending == NULL && !ep->flushing && ep->zin == NULL &&
	    SSL_is_init_finished(ep->ssl) &&
	    evbuffer_get_length(bufferevent_get_output(ep->bev)) == 0;
}

/* Write the stage to its owner with one SSL_write, or queue it. */
static void
endpoint_stage_write(void)
{
	struct endpoint *ep = endpoint_stage.owner;
	struct evbuffer *buf = endpoint_stage.buf;
	size_t len;
	unsigned char *p;
	int r;

	if (ep == NULL)
		return;
	len = evbuffer_get_length(buf);
	if (len == 0 || len > ENDPOINT_STAGE_MAX || !endpoint_direct_ok(ep) ||
	    (p = evbuffer_pullup(buf, (ev_ssize_t)len)) == NULL) {
		endpoint_unstage(ep);
		return;
	}
	endpoint_stage.owner = NULL;
	ERR_clear_error();
	r = SSL_write(ep->ssl, p, (int)len);
	if (r <= 0) {
		/*
		 * Not written (the socket is full) or failed.  OpenSSL may hold
		 * the record: libevent's retry must start with the same bytes, in
		 * one piece (SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER lets them move).
		 * A failure shows up again on libevent's write and is reported.
		 */
		evbuffer_add(bufferevent_get_output(ep->bev), p, len);
	}
	evbuffer_drain(buf, len);
}

/* The deferred event: write what the callbacks just run have staged. */
static void
endpoint_stage_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	(void)arg;
	endpoint_stage_write();
}

/* Make room for n more bytes in ep's stage; -1 if ep cannot take the direct path. */
static int
endpoint_stage_claim(struct endpoint *ep, size_t n)
{
	struct endpoint_stage *st = &endpoint_stage;

	if (st->owner == ep) {
		if (evbuffer_get_length(st->buf) + n > ENDPOINT_STAGE_MAX) {
			endpoint_unstage(ep);
			return -1;
		}
	} else {
		if (n > ENDPOINT_STAGE_MAX || !endpoint_direct_ok(ep))
			return -1;
		if (st->buf == NULL && (st->buf = evbuffer_new()) == NULL)
			return -1;
		if (st->ev == NULL &&
		    (st->ev = event_new(ep->base, -1, 0, endpoint_stage_cb, NULL)) == NULL)
			return -1;
		endpoint_stage_write();		/* another endpoint's bytes go first */
		st->owner = ep;
		event_active(st->ev, EV_TIMEOUT, 0);
	}
	return 0;
}

/* Take n bytes from in into ep's stage; -1 if ep cannot take the direct path. */
static int
endpoint_stage_take(struct endpoint *ep, struct evbuffer *in, size_t n)
{
	if (endpoint_stage_claim(ep, n) != 0)
		return -1;
	evbuffer_remove_buffer(in, endpoint_stage.buf, n);
	return 0;
}

/* Is ep an idle, connected plaintext socket (bytes may go to the kernel at once)? */
static int
endpoint_plain_idle(const struct endpoint *ep)
{
	return ep->ssl == NULL && ep->tls_pending == NULL && ep->connected && ep->zin == NULL &&
	    !ep->flushing && evbuffer_get_length(bufferevent_get_output(ep->bev)) == 0;
}

/* Free this thread's stage (the worker's loop is about to go). */
void
endpoint_thread_done(void)
{
	endpoint_stage.owner = NULL;
	if (endpoint_stage.ev != NULL)
		event_free(endpoint_stage.ev);
	if (endpoint_stage.buf != NULL)
		evbuffer_free(endpoint_stage.buf);
	endpoint_stage.ev = NULL;
	endpoint_stage.buf = NULL;
}

/*
 * On a plaintext socket, read on after libevent's first read.  libevent
 * 2.1 reads at most 4 KiB per wakeup; for a FETCH of megabytes that means
 * a wakeup, a read and (behind TLS) a 4 KiB record and a write per 4 KiB.
 * Reading what the socket holds, in large chunks, up to a budget, lets the
 * TLS side write full records.  A read of 0 or an error is left for
 * libevent's next read to report as the usual event.
 */
static void
endpoint_read_more(struct endpoint *ep)
{
	struct evbuffer *in = bufferevent_get_input(ep->bev);
	int fd = bufferevent_getfd(ep->bev);
	size_t budget = ENDPOINT_READ_BUDGET, high = 0;

	bufferevent_getwatermark(ep->bev, EV_READ, NULL, &high);
	/* A bufferevent keeps its input's end frozen between its own reads. */
	evbuffer_unfreeze(in, 0);
	while (budget > 0 && (high == 0 || evbuffer_get_length(in) < high)) {
		struct evbuffer_iovec v[2];
		struct iovec iov[2];
		size_t want = budget < ENDPOINT_READ_CHUNK ? budget : ENDPOINT_READ_CHUNK;
		size_t got, left;
		ssize_t r;
		int n, avail = 0;

		/*
		 * Ask first: reserving space for a read that finds nothing
		 * would leave an empty 64 KiB chain behind on every idle
		 * connection.
		 */
		if (ioctl(fd, FIONREAD, &avail) != 0 || avail <= 0)
			break;
		if ((size_t)avail < want)
			want = (size_t)avail;

		if ((n = evbuffer_reserve_space(in, (ev_ssize_t)want, v, 2)) <= 0)
			break;
		for (int i = 0; i < n; i++) {
			iov[i].iov_base = v[i].iov_base;
			iov[i].iov_len = v[i].iov_len;
		}
		r = readv(fd, iov, n);
		if (r <= 0) {
			evbuffer_commit_space(in, v, 0);
			break;
		}
		got = (size_t)r;
		left = got;
		for (int i = 0; i < n; i++) {
			if (v[i].iov_len > left)
				v[i].iov_len = left;
			left -= v[i].iov_len;
		}
		evbuffer_commit_space(in, v, n);
		budget -= got < budget ? got : budget;
		if (got < want)
			break;	/* the socket is drained */
	}
	evbuffer_freeze(in, 0);
}

static void endpoint_set_error(struct endpoint *, const char *, ...)
    __attribute__((format(printf, 2, 3)));

/* The input the session reads: the inflated stream when compressed. */
static struct evbuffer *
endpoint_in(const struct endpoint *ep)
{
	return ep->zin != NULL ? ep->plain_in : bufferevent_get_input(ep->bev);
}

/*
 * Inflate what the peer sent into plain_in, no further than in_high
 * ahead of the session (a small input can inflate to a huge one: a
 * compression bomb is read at the session's pace).  -1 with the error
 * set when the stream is not valid deflate.
 */
static int
endpoint_inflate(struct endpoint *ep)
{
	struct evbuffer *raw = bufferevent_get_input(ep->bev);
	z_stream *z = ep->zin;

	while (evbuffer_get_length(raw) > 0 &&
	    (ep->in_high == 0 || evbuffer_get_length(ep->plain_in) < ep->in_high)) {
		struct evbuffer_iovec src, dst;
		size_t used, made;
		int r;

		if (evbuffer_peek(raw, -1, NULL, &src, 1) < 1 ||
		    evbuffer_reserve_space(ep->plain_in, ENDPOINT_Z_CHUNK, &dst, 1) < 1) {
			endpoint_set_error(ep, "compress: out of memory");
			return -1;
		}
		z->next_in = src.iov_base;
		z->avail_in = (uInt)src.iov_len;
		z->next_out = dst.iov_base;
		z->avail_out = (uInt)dst.iov_len;
		r = inflate(z, Z_SYNC_FLUSH);
		used = src.iov_len - z->avail_in;
		made = dst.iov_len - z->avail_out;
		dst.iov_len = made;
		evbuffer_commit_space(ep->plain_in, &dst, 1);
		evbuffer_drain(raw, used);
		if (r == Z_STREAM_END || (r != Z_OK && r != Z_BUF_ERROR)) {
			/* RFC 4978 has no end: a final block is as broken as garbage. */
			endpoint_set_error(ep, "compress: %s", r == Z_STREAM_END ?
			    "the deflate stream ended" : z->msg != NULL ? z->msg : "bad deflate data");
			return -1;
		}
		if (used == 0 && made == 0)
			break;	/* needs more input than one chain: the next read brings it */
	}
	return 0;
}

/* Deflate len bytes at p into the output (flush: Z_NO_FLUSH or Z_SYNC_FLUSH); -1 on error. */
static int
endpoint_deflate(struct endpoint *ep, const unsigned char *p, size_t len, int flush)
{
	struct evbuffer *out = bufferevent_get_output(ep->bev);
	z_stream *z;

	if (ep->zout == NULL) {
		/* A fresh deflater continues the same raw stream: the peer keeps its state. */
		if ((z = calloc(1, sizeof(*z))) == NULL)
			return -1;
		if (deflateInit2(z, ENDPOINT_Z_LEVEL, Z_DEFLATED, -ENDPOINT_Z_WBITS,
		    ENDPOINT_Z_MEMLEVEL, Z_DEFAULT_STRATEGY) != Z_OK) {
			free(z);
			return -1;
		}
		ep->zout = z;
	}
	z = ep->zout;
	z->next_in = (Bytef *)(uintptr_t)p;
	z->avail_in = (uInt)len;
	do {
		struct evbuffer_iovec v;

		if (evbuffer_reserve_space(out, ENDPOINT_Z_CHUNK, &v, 1) < 1)
			return -1;
		z->next_out = v.iov_base;
		z->avail_out = (uInt)v.iov_len;
		if (deflate(z, flush) == Z_STREAM_ERROR)
			return -1;
		v.iov_len -= z->avail_out;
		evbuffer_commit_space(out, &v, 1);
	} while (z->avail_in > 0 || z->avail_out == 0);
	return 0;
}

/* Flush our deflate stream (Z_SYNC_FLUSH): the peer can read all we sent. */
static void
endpoint_zflush_now(struct endpoint *ep)
{
	if (!ep->zpending || ep->zout == NULL)
		return;
	ep->zpending = 0;
	if (endpoint_deflate(ep, NULL, 0, Z_SYNC_FLUSH) != 0)
		endpoint_set_error(ep, "compress: deflate failed");
	if (ep->zidle != NULL) {
		/* Re-armed per burst: a timer-heap update, no system call. */
		struct timeval tv = { ENDPOINT_Z_IDLE_MS / 1000, (ENDPOINT_Z_IDLE_MS % 1000) * 1000 };

		evtimer_add(ep->zidle, &tv);
	}
}

/* No output for ENDPOINT_Z_IDLE_MS: give the deflater back. */
static void
endpoint_zidle_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	endpoint_deflate_idle(arg);
}

/* The deferred sync flush: once per burst of output, after the callbacks that made it. */
static void
endpoint_zflush_cb(evutil_socket_t fd, short what, void *arg)
{
	(void)fd;
	(void)what;
	endpoint_zflush_now(arg);
}

/* Compress n bytes of src (evbuffer) into ep's output, then drain them from src. */
static void
endpoint_deflate_from(struct endpoint *ep, struct evbuffer *src, size_t n)
{
	while (n > 0) {
		struct evbuffer_iovec v;
		size_t k;

		if (evbuffer_peek(src, -1, NULL, &v, 1) < 1)
			break;
		k = v.iov_len < n ? v.iov_len : n;
		if (endpoint_deflate(ep, v.iov_base, k, Z_NO_FLUSH) != 0)
			endpoint_set_error(ep, "compress: deflate failed");
		evbuffer_drain(src, k);
		n -= k;
	}
	if (!ep->zpending) {
		ep->zpending = 1;
		event_active(ep->zflush, EV_TIMEOUT, 0);
	}
}

/* Input arrived: hand it to the session. */
static void
endpoint_readcb(struct bufferevent *bev, void *arg)
{
	struct endpoint *ep = arg;

	/* libevent stops at 4 KiB: only then may the socket hold more. */
	if (ep->ssl == NULL && ep->tls_pending == NULL &&
	    evbuffer_get_length(bufferevent_get_input(bev)) >= ENDPOINT_LIBEVENT_READ)
		endpoint_read_more(ep);
	if (ep->zin != NULL && endpoint_inflate(ep) != 0) {
		ep->cbs->event(ep, ENDPOINT_ERROR, ep->arg);
		return;
	}
	ep->cbs->readable(ep, ep->arg);
}

static int endpoint_do_tls(struct endpoint *);

/*
 * Record an error text.  Kept on the heap, only once something failed:
 * a healthy endpoint carries no buffer for it.
 */
static void __attribute__((format(printf, 2, 3)))
endpoint_set_error(struct endpoint *ep, const char *fmt, ...)
{
	char buf[ENDPOINT_ERROR_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	free(ep->error);
	ep->error = strdup(buf);
}

/* Output fell to the low mark (or empty): resume the peer, or finish a flush. */
static void
endpoint_writecb(struct bufferevent *bev, void *arg)
{
	struct endpoint *ep = arg;

	if (ep->tls_pending != NULL) {
		if (evbuffer_get_length(bufferevent_get_output(bev)) == 0 &&
		    endpoint_do_tls(ep) != 0) {
			endpoint_set_error(ep, "tls: cannot start");
			ep->cbs->event(ep, ENDPOINT_ERROR, ep->arg);
		}
		return;
	}
	if (ep->flushing && evbuffer_get_length(bufferevent_get_output(bev)) == 0) {
		ep->flushing = 0;
		ep->cbs->event(ep, ENDPOINT_FLUSHED, ep->arg);
		return;
	}
	ep->cbs->drained(ep, ep->arg);
}

/* Record the reason for an error: OpenSSL's queue first, then errno. */
static void
endpoint_note_error(struct endpoint *ep, short what)
{
	unsigned long e;
	int sockerr = EVUTIL_SOCKET_ERROR();

	if (ep->ssl != NULL && (e = bufferevent_get_openssl_error(ep->bev)) != 0) {
		const char *r = ERR_reason_error_string(e);
		long v = SSL_get_verify_result(ep->ssl);

		if (v != X509_V_OK && !SSL_is_server(ep->ssl))
			endpoint_set_error(ep, "tls: %s: %s", r ? r : "error",
			    X509_verify_cert_error_string(v));
		else
			endpoint_set_error(ep, "tls: %s", r ? r : "error");
		while (bufferevent_get_openssl_error(ep->bev) != 0)
			;
	} else if (what & BEV_EVENT_TIMEOUT)
		endpoint_set_error(ep, "timeout");
	else if (sockerr != 0)
		endpoint_set_error(ep, "%s", strerror(sockerr));
	else
		endpoint_set_error(ep, "connection lost (events 0x%x)",
		    (unsigned)what);
}

/* Translate bufferevent events into endpoint events. */
static void
endpoint_eventcb(struct bufferevent *bev, short what, void *arg)
{
	struct endpoint *ep = arg;

	(void)bev;
	if (what & BEV_EVENT_CONNECTED) {
		int one = 1;
		setsockopt(bufferevent_getfd(ep->bev), IPPROTO_TCP, TCP_NODELAY,
		    &one, sizeof(one));
		ep->connected = 1;
		ep->cbs->event(ep, ENDPOINT_CONNECTED, ep->arg);
		return;
	}
	if (what & BEV_EVENT_EOF) {
		ep->cbs->event(ep, ENDPOINT_EOF, ep->arg);
		return;
	}
	endpoint_note_error(ep, what);
	ep->cbs->event(ep, ENDPOINT_ERROR, ep->arg);
}

/* Common setup once the bufferevent exists. */
static struct endpoint *
endpoint_setup(struct endpoint *ep, const struct endpoint_cbs *cbs, void *arg)
{
	ep->cbs = cbs;
	ep->arg = arg;
	ep->base = bufferevent_get_base(ep->bev);
	ep->out_high = 256 * 1024;
	bufferevent_setcb(ep->bev, endpoint_readcb, endpoint_writecb,
	    endpoint_eventcb, ep);
	bufferevent_setwatermark(ep->bev, EV_WRITE, ep->out_high / 2, 0);
	bufferevent_enable(ep->bev, EV_READ | EV_WRITE);
	return ep;
}

/* Wrap an accepted socket, with TLS when tls is set. */
struct endpoint *
endpoint_accept(struct event_base *base, int fd, struct tls_ctx *tls,
    const struct endpoint_cbs *cbs, void *arg)
{
	struct endpoint *ep;
	int one = 1;

	if ((ep = calloc(1, sizeof(*ep))) == NULL)
		return NULL;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	ep->connected = 1;
	if (tls != NULL) {
		if ((ep->ssl = tls_ssl_new(tls)) == NULL) {
			free(ep);
			return NULL;
		}
		ep->bev = bufferevent_openssl_socket_new(base, fd, ep->ssl,
		    BUFFEREVENT_SSL_ACCEPTING, BEV_OPT_CLOSE_ON_FREE);
		if (ep->bev != NULL)
			bufferevent_openssl_set_allow_dirty_shutdown(ep->bev, 1);
	} else
		ep->bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
	if (ep->bev == NULL) {
		if (ep->ssl != NULL)
			SSL_free(ep->ssl);
		free(ep);
		return NULL;
	}
	return endpoint_setup(ep, cbs, arg);
}

/* Start connecting to addr; ENDPOINT_CONNECTED or ENDPOINT_ERROR follows. */
struct endpoint *
endpoint_connect(struct event_base *base, const struct netaddr *addr,
    const struct endpoint_cbs *cbs, void *arg)
{
	struct endpoint *ep;

	if ((ep = calloc(1, sizeof(*ep))) == NULL)
		return NULL;
	if ((ep->bev = bufferevent_socket_new(base, -1, BEV_OPT_CLOSE_ON_FREE)) == NULL) {
		free(ep);
		return NULL;
	}
	endpoint_setup(ep, cbs, arg);
	if (bufferevent_socket_connect(ep->bev, (const struct sockaddr *)&addr->ss,
	    (int)addr->len) != 0) {
		/* libevent reports no event for a failure it returns at once. */
		bufferevent_free(ep->bev);
		free(ep);
		return NULL;
	}
	return ep;
}

/*
 * Replace the plaintext bufferevent by a TLS one on the same socket.  The
 * old one is detached from the descriptor first, so freeing it does not
 * close the socket.
 */
static int
endpoint_do_tls(struct endpoint *ep)
{
	struct tls_ctx *tls = ep->tls_pending;
	struct bufferevent *bev;
	size_t high_in = 0, high_out = ep->out_high;
	int fd = bufferevent_getfd(ep->bev);
	SSL *ssl;

	ep->tls_pending = NULL;
	bufferevent_getwatermark(ep->bev, EV_READ, NULL, &high_in);
	if ((ssl = tls_ssl_new(tls)) == NULL)
		return -1;
	bev = bufferevent_openssl_socket_new(ep->base, fd, ssl,
	    SSL_is_server(ssl) ? BUFFEREVENT_SSL_ACCEPTING : BUFFEREVENT_SSL_CONNECTING,
	    BEV_OPT_CLOSE_ON_FREE);
	if (bev == NULL) {
		SSL_free(ssl);
		return -1;
	}
	bufferevent_disable(ep->bev, EV_READ | EV_WRITE);
	bufferevent_setfd(ep->bev, -1);
	bufferevent_free(ep->bev);
	ep->bev = bev;
	ep->ssl = ssl;
	bufferevent_openssl_set_allow_dirty_shutdown(bev, 1);
	bufferevent_setcb(bev, endpoint_readcb, endpoint_writecb, endpoint_eventcb, ep);
	bufferevent_setwatermark(bev, EV_WRITE, high_out / 2, 0);
	bufferevent_setwatermark(bev, EV_READ, 0, high_in);
	bufferevent_enable(bev, EV_READ | EV_WRITE);
	return 0;
}

/* Start TLS on ep once what is queued has been written. */
int
endpoint_start_tls(struct endpoint *ep, struct tls_ctx *tls)
{
	struct evbuffer *in = bufferevent_get_input(ep->bev);

	if (ep->ssl != NULL || ep->tls_pending != NULL)
		return -1;
	endpoint_unstage(ep);
	/* Plaintext pipelined behind STARTTLS is dropped (RFC 9051 6.2.1). */
	evbuffer_drain(in, evbuffer_get_length(in));
	bufferevent_disable(ep->bev, EV_READ);
	ep->tls_pending = tls;
	if (evbuffer_get_length(bufferevent_get_output(ep->bev)) == 0)
		return endpoint_do_tls(ep);
	/* The write callback must fire at empty, not at the low mark. */
	bufferevent_setwatermark(ep->bev, EV_WRITE, 0, 0);
	return 0;
}

/* TLS on, or starting. */
int
endpoint_is_tls(const struct endpoint *ep)
{
	return ep->ssl != NULL || ep->tls_pending != NULL;
}

/* The client's SNI name. */
const char *
endpoint_sni(const struct endpoint *ep)
{
	return ep->ssl != NULL ? SSL_get_servername(ep->ssl, TLSEXT_NAMETYPE_host_name) : NULL;
}

/* Free the bufferevent (closing the socket and the SSL) and ep. */
void
endpoint_free(struct endpoint *ep)
{
	if (ep == NULL)
		return;
	if (endpoint_stage.owner == ep) {
		/* Like queued output, staged bytes die with the connection. */
		endpoint_stage.owner = NULL;
		evbuffer_drain(endpoint_stage.buf, evbuffer_get_length(endpoint_stage.buf));
	}
	if (ep->bev != NULL) {
		if (ep->ssl != NULL) {
			/* A close_notify for well-behaved peers; we never wait for theirs. */
			SSL_set_shutdown(ep->ssl, SSL_RECEIVED_SHUTDOWN);
			SSL_shutdown(ep->ssl);
		}
		bufferevent_free(ep->bev);
	}
	if (ep->zin != NULL) {
		inflateEnd(ep->zin);
		free(ep->zin);
	}
	if (ep->zout != NULL) {
		deflateEnd(ep->zout);
		free(ep->zout);
	}
	if (ep->plain_in != NULL)
		evbuffer_free(ep->plain_in);
	if (ep->zflush != NULL)
		event_free(ep->zflush);
	if (ep->zidle != NULL)
		event_free(ep->zidle);
	free(ep->error);
	free(ep);
}

/* Set the output high mark (resume at half of it) and the input read limit. */
void
endpoint_set_limits(struct endpoint *ep, size_t out_high, size_t in_high)
{
	ep->out_high = out_high;
	ep->in_high = in_high;
	bufferevent_setwatermark(ep->bev, EV_WRITE, out_high / 2, 0);
	bufferevent_setwatermark(ep->bev, EV_READ, 0, in_high);
}

/* Input bytes waiting. */
size_t
endpoint_input_len(const struct endpoint *ep)
{
	if (ep->zin != NULL) {
		/*
		 * Inflate on as the session reads: what arrived may have been
		 * held back at in_high.  An error shows on the next read.
		 */
		struct endpoint *w = (struct endpoint *)(uintptr_t)ep;

		if (evbuffer_get_length(bufferevent_get_input(w->bev)) > 0 &&
		    endpoint_inflate(w) != 0)
			return evbuffer_get_length(w->plain_in);
	}
	return evbuffer_get_length(endpoint_in(ep));
}

/* Output bytes waiting. */
size_t
endpoint_output_len(const struct endpoint *ep)
{
	return evbuffer_get_length(bufferevent_get_output(ep->bev)) +
	    (endpoint_stage.owner == ep ? evbuffer_get_length(endpoint_stage.buf) : 0);
}

/* Is the output above the high mark? */
int
endpoint_output_full(const struct endpoint *ep)
{
	return endpoint_output_len(ep) > ep->out_high;
}

/* Return the contiguous run of input that starts at off. */
const unsigned char *
endpoint_peek(struct endpoint *ep, size_t off, size_t *len)
{
	struct evbuffer *in = endpoint_in(ep);
	struct evbuffer_ptr pos;
	struct evbuffer_iovec v;

	*len = 0;
	if (evbuffer_ptr_set(in, &pos, off, EVBUFFER_PTR_SET) != 0)
		return NULL;
	if (evbuffer_peek(in, -1, &pos, &v, 1) < 1)
		return NULL;
	*len = v.iov_len;
	return v.iov_base;
}

/* Linearize the first n input bytes. */
const unsigned char *
endpoint_pullup(struct endpoint *ep, size_t n)
{
	return evbuffer_pullup(endpoint_in(ep), (ssize_t)n);
}

/* Move n input bytes of src to dst's output, chain by chain. */
void
endpoint_move(struct endpoint *src, struct endpoint *dst, size_t n)
{
	struct evbuffer *in = endpoint_in(src);
	struct evbuffer *out = bufferevent_get_output(dst->bev);
	size_t left = n;

	src->bytes_in += n;
	dst->bytes_out += n;
	if (dst->zin != NULL) {
		endpoint_deflate_from(dst, in, n);
		return;
	}
	/*
	 * To an idle plaintext socket, write at once from the source buffer:
	 * queueing would cost an epoll registration and its removal per
	 * command, plus a loop iteration.  What the kernel does not take is
	 * queued as usual.
	 */
	if (endpoint_plain_idle(dst)) {
		int w = evbuffer_write_atmost(in, bufferevent_getfd(dst->bev),
		    (ev_ssize_t)n);

		if (w > 0)
			left -= (size_t)w < left ? (size_t)w : left;
	} else if (dst->ssl != NULL && endpoint_stage_take(dst, in, left) == 0)
		left = 0;	/* staged: endpoint_stage_cb writes it */
	if (left > 0) {
		endpoint_unstage(dst);
		evbuffer_remove_buffer(in, out, left);
	}
}

/* Throw away n input bytes. */
void
endpoint_drop(struct endpoint *ep, size_t n)
{
	evbuffer_drain(endpoint_in(ep), n);
	ep->bytes_in += n;
}

/*
 * Write len bytes: like endpoint_move, straight to an idle plaintext socket
 * or into the stage of an idle TLS endpoint (one SSL_write from the loop),
 * else queued.  imapgate's own lines (the pre-login greeting and replies,
 * the backend login) would otherwise cost two epoll registrations each.
 */
void
endpoint_write(struct endpoint *ep, const void *buf, size_t len)
{
	const char *p = buf;

	if (ep->zin != NULL) {
		ep->bytes_out += len;
		endpoint_unstage(ep);
		if (endpoint_deflate(ep, buf, len, Z_NO_FLUSH) != 0)
			endpoint_set_error(ep, "compress: deflate failed");
		if (!ep->zpending) {
			ep->zpending = 1;
			event_active(ep->zflush, EV_TIMEOUT, 0);
		}
		return;
	}
	ep->bytes_out += len;
	if (len > 0 && endpoint_plain_idle(ep)) {
		ssize_t w = send(bufferevent_getfd(ep->bev), p, len, MSG_NOSIGNAL);

		/* Not taken or failed: queued below; libevent reports a failure. */
		if (w > 0) {
			p += w;
			len -= (size_t)w;
		}
		if (len == 0)
			return;
	} else if (len > 0 && ep->ssl != NULL && endpoint_stage_claim(ep, len) == 0) {
		if (evbuffer_add(endpoint_stage.buf, p, len) == 0)
			return;
	}
	endpoint_unstage(ep);
	bufferevent_write(ep->bev, p, len);
}

/*
 * From here on the stream is compressed both ways (COMPRESS=DEFLATE, RFC
 * 4978, raw deflate).  Bytes already received behind the command are the
 * peer's first compressed bytes: they are inflated with the rest.
 */
int
endpoint_start_deflate(struct endpoint *ep)
{
	if (ep->zin != NULL)
		return -1;
	endpoint_unstage(ep);
	if ((ep->zin = calloc(1, sizeof(*ep->zin))) == NULL)
		return -1;
	if (inflateInit2(ep->zin, -15) != Z_OK) {
		free(ep->zin);
		ep->zin = NULL;
		return -1;
	}
	if ((ep->plain_in = evbuffer_new()) == NULL ||
	    (ep->zflush = event_new(ep->base, -1, 0, endpoint_zflush_cb, ep)) == NULL ||
	    (ep->zidle = evtimer_new(ep->base, endpoint_zidle_cb, ep)) == NULL)
		return -1;	/* freed with the endpoint; the caller closes */
	/* Input beyond what the session took so far is compressed. */
	return endpoint_inflate(ep);
}

/* Is the stream compressed? */
int
endpoint_is_deflate(const struct endpoint *ep)
{
	return ep->zin != NULL;
}

/*
 * The session is idle: give our deflater back (its window and hash are
 * most of a compressed session's memory).  The next output starts a new
 * one; the stream stays valid because every burst ended in a sync flush.
 */
void
endpoint_deflate_idle(struct endpoint *ep)
{
	if (ep->zout == NULL || ep->zpending)
		return;
	deflateEnd(ep->zout);
	free(ep->zout);
	ep->zout = NULL;
}

/* Enable or disable reading. */
void
endpoint_read_enable(struct endpoint *ep, int on)
{
	if (on)
		bufferevent_enable(ep->bev, EV_READ);
	else
		bufferevent_disable(ep->bev, EV_READ);
}

/*
 * Ask for ENDPOINT_FLUSHED once everything queued has been written, always
 * from the event loop.  Reading stays on: a TLS handshake still in
 * progress needs it to finish.
 */
void
endpoint_flush(struct endpoint *ep)
{
	endpoint_unstage(ep);
	endpoint_zflush_now(ep);
	ep->flushing = 1;
	/* The write callback must fire at empty, not at the low mark. */
	bufferevent_setwatermark(ep->bev, EV_WRITE, 0, 0);
	/*
	 * Nothing queued: the write callback is asked for from the loop,
	 * never called from here, so the caller is not re-entered.
	 */
	if (endpoint_output_len(ep) == 0)
		bufferevent_trigger(ep->bev, EV_WRITE, BEV_TRIG_IGNORE_WATERMARKS |
		    BEV_TRIG_DEFER_CALLBACKS);
}

/* Bytes taken from this endpoint's input. */
uint64_t
endpoint_bytes_in(const struct endpoint *ep)
{
	return ep->bytes_in;
}

/* Bytes queued to this endpoint's output. */
uint64_t
endpoint_bytes_out(const struct endpoint *ep)
{
	return ep->bytes_out;
}

/* Negotiated TLS version. */
const char *
endpoint_tls_version(const struct endpoint *ep)
{
	return ep->ssl != NULL ? SSL_get_version(ep->ssl) : "-";
}

/* Negotiated cipher. */
const char *
endpoint_tls_cipher(const struct endpoint *ep)
{
	const char *c = ep->ssl != NULL ? SSL_get_cipher_name(ep->ssl) : NULL;

	return c != NULL && strcmp(c, "(NONE)") != 0 ? c : "-";
}

/* Last error text. */
const char *
endpoint_error(const struct endpoint *ep)
{
	return ep->error != NULL ? ep->error : "";
}

/* No more output: the peer reads EOF once what is queued has gone (a lingering close). */
void
endpoint_shutdown_write(struct endpoint *ep)
{
	if (ep->ssl == NULL)
		(void)shutdown(bufferevent_getfd(ep->bev), SHUT_WR);
}
