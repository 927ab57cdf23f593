/*
 * endpoint: one side of a session (client or backend) as a byte stream.
 *
 * The only module (with tls) that touches bufferevents and SSL_*.  The
 * session sees bytes it can peek at, move to the peer, or drop, and a few
 * events; literal data is moved between endpoints as evbuffer chains,
 * never copied byte by byte.
 */
#ifndef IMAPGATE_ENDPOINT_H
#define IMAPGATE_ENDPOINT_H

#include <stddef.h>
#include <stdint.h>

struct event_base;
struct netaddr;
struct tls_ctx;
struct endpoint;

enum endpoint_event {
	ENDPOINT_CONNECTED,	/* outgoing connection (and TLS, if any) is up */
	ENDPOINT_EOF,		/* peer closed its side */
	ENDPOINT_ERROR,		/* reset, refused, TLS failure */
	ENDPOINT_FLUSHED,	/* after endpoint_flush(): output fully written */
};

struct endpoint_cbs {
	void	(*readable)(struct endpoint *, void *);	/* new input bytes */
	void	(*drained)(struct endpoint *, void *);	/* output fell to the low mark */
	void	(*event)(struct endpoint *, enum endpoint_event, void *);
};

/* Wrap an accepted socket; tls NULL means plaintext. */
struct endpoint	*endpoint_accept(struct event_base *base, int fd,
		    struct tls_ctx *tls, const struct endpoint_cbs *cbs, void *arg);
/* Start a non-blocking connect to addr. */
struct endpoint	*endpoint_connect(struct event_base *base, const struct netaddr *addr,
		    const struct endpoint_cbs *cbs, void *arg);
/*
 * Switch ep to TLS over the same socket once its output is written:
 * server side for a client's STARTTLS, client side (tls made by
 * tls_ctx_new_backend) for a backend.  Input not yet taken is discarded:
 * plaintext that arrives after STARTTLS must never be acted on.
 * ENDPOINT_CONNECTED follows when the handshake is done.
 */
int		 endpoint_start_tls(struct endpoint *ep, struct tls_ctx *tls);
/* Is ep speaking TLS (or about to)? */
int		 endpoint_is_tls(const struct endpoint *ep);
/* The SNI name the client asked for, or NULL. */
const char	*endpoint_sni(const struct endpoint *ep);
/* Close the socket and free everything. */
/* Half-close a plaintext endpoint after its output has been written (FLUSHED). */
void		 endpoint_shutdown_write(struct endpoint *ep);
/* Compress both directions from here on (COMPRESS=DEFLATE); -1 on failure. */
int		 endpoint_start_deflate(struct endpoint *ep);
/* Is the stream compressed? */
int		 endpoint_is_deflate(const struct endpoint *ep);
/* The session is idle: release the deflater until the next output. */
void		 endpoint_deflate_idle(struct endpoint *ep);
void		 endpoint_free(struct endpoint *ep);

/* Set the output high mark: above it the session stops reading the peer. */
void		 endpoint_set_limits(struct endpoint *ep, size_t out_high, size_t in_high);
/* Bytes waiting in ep's input. */
size_t		 endpoint_input_len(const struct endpoint *ep);
/* Bytes waiting in ep's output. */
size_t		 endpoint_output_len(const struct endpoint *ep);
/* Is ep's output above its high mark? */
int		 endpoint_output_full(const struct endpoint *ep);
/* Contiguous input bytes starting at offset off; *len is how many. */
const unsigned char *endpoint_peek(struct endpoint *ep, size_t off, size_t *len);
/* Make the first n input bytes contiguous and return them (n <= input length). */
const unsigned char *endpoint_pullup(struct endpoint *ep, size_t n);
/* Move n bytes from src's input to dst's output without copying data. */
void		 endpoint_move(struct endpoint *src, struct endpoint *dst, size_t n);
/* Discard n bytes of ep's input. */
void		 endpoint_drop(struct endpoint *ep, size_t n);
/* Queue bytes for writing. */
void		 endpoint_write(struct endpoint *ep, const void *buf, size_t len);
/* Stop or resume reading. */
void		 endpoint_read_enable(struct endpoint *ep, int on);
/* Report ENDPOINT_FLUSHED once the output is fully written (from the loop, even if empty). */
void		 endpoint_flush(struct endpoint *ep);
/* Total bytes read from / written to the socket (after TLS). */
uint64_t	 endpoint_bytes_in(const struct endpoint *ep);
uint64_t	 endpoint_bytes_out(const struct endpoint *ep);
/* TLS protocol version and cipher, or "-" for plaintext. */
const char	*endpoint_tls_version(const struct endpoint *ep);
const char	*endpoint_tls_cipher(const struct endpoint *ep);
/* Free this thread's direct-write buffer and event (at thread exit, before its loop). */
void		 endpoint_thread_done(void);
/* Last socket or TLS error as text ("" if none). */
const char	*endpoint_error(const struct endpoint *ep);

#endif
