/*
 * proxyproto: the HAProxy PROXY protocol, versions 1 (text) and 2 (binary).
 *
 * Pure functions: parse a header at the start of a connection, and build
 * one to send to a backend.  No I/O, no logging.
 */
#ifndef IMAPGATE_PROXYPROTO_H
#define IMAPGATE_PROXYPROTO_H

#include <stddef.h>
#include <sys/socket.h>

#define PROXYPROTO_V1_MAX	107	/* the spec's longest v1 line, CRLF included */
#define PROXYPROTO_V2_MAX	(16 + 2048)	/* header + addresses + TLVs we accept */

struct proxyproto_result {
	int			version;	/* 1 or 2 */
	int			local;		/* v2 LOCAL or v1 UNKNOWN: keep the socket's addresses */
	struct sockaddr_storage	src, dst;
	socklen_t		srclen, dstlen;
};

/*
 * Parse a header at buf[0..len).  Returns its length once complete, 0 if
 * more bytes are needed, -1 if it is not a valid header (err says why).
 */
int	proxyproto_parse(const unsigned char *buf, size_t len,
	    struct proxyproto_result *r, const char **err);
/* Write a v1 line for src -> dst into out (>= PROXYPROTO_V1_MAX + 1); returns its length. */
size_t	proxyproto_build_v1(const struct sockaddr *src, const struct sockaddr *dst,
	    char *out, size_t outlen);
/* Write a v2 header for src -> dst into out (>= 52 bytes); returns its length. */
size_t	proxyproto_build_v2(const struct sockaddr *src, const struct sockaddr *dst,
	    unsigned char *out, size_t outlen);
/*
 * Write a header that carries no addresses (a health check, not a client):
 * version 1 "PROXY UNKNOWN\r\n", version 2 the LOCAL command.  Returns its
 * length, 0 if out is too small or the version unknown.
 */
size_t	proxyproto_build_local(int version, unsigned char *out, size_t outlen);

#endif
