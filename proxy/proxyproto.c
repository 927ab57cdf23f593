/* proxyproto: PROXY protocol v1/v2 parsing and building. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxyproto.h"

static const unsigned char proxyproto_sig[12] = {
	0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
};

/* Parse a decimal port 0-65535 (no sign, no leading junk). */
static int
proxyproto_port(const char *s, uint16_t *port)
{
	unsigned long v = 0;

	if (*s == '\0' || strlen(s) > 5)
		return -1;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return -1;
		v = v * 10 + (unsigned long)(*s - '0');
	}
	if (v > 65535)
		return -1;
	*port = (uint16_t)v;
	return 0;
}

/* Fill ss from a textual address of family af and a port. */
static int
proxyproto_addr(int af, const char *ip, const char *port, struct sockaddr_storage *ss,
    socklen_t *len)
{
	uint16_t p;

	memset(ss, 0, sizeof(*ss));
	if (proxyproto_port(port, &p) != 0)
		return -1;
	if (af == AF_INET) {
		struct sockaddr_in *sin = (struct sockaddr_in *)ss;
		if (inet_pton(AF_INET, ip, &sin->sin_addr) != 1)
			return -1;
		sin->sin_family = AF_INET;
		sin->sin_port = htons(p);
		*len = sizeof(*sin);
	} else {
		struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
		if (inet_pton(AF_INET6, ip, &sin6->sin6_addr) != 1)
			return -1;
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = htons(p);
		*len = sizeof(*sin6);
	}
	return 0;
}

/* Parse a v1 line "PROXY TCP4|TCP6|UNKNOWN src dst sport dport\r\n". */
static int
proxyproto_parse_v1(const unsigned char *buf, size_t len, struct proxyproto_result *r,
    const char **err)
{
	char line[PROXYPROTO_V1_MAX + 1], *f[7], *save = NULL, *t;
	const unsigned char *eol;
	size_t n;
	int nf = 0, af;

	eol = memchr(buf, '\n', len < PROXYPROTO_V1_MAX ? len : PROXYPROTO_V1_MAX);
	if (eol == NULL) {
		if (len >= PROXYPROTO_V1_MAX) {
			*err = "v1 header too long";
			return -1;
		}
		return 0;
	}
	n = (size_t)(eol - buf) + 1;
	if (n < 2 || buf[n - 2] != '\r') {
		*err = "v1 header not ended by CRLF";
		return -1;
	}
	memcpy(line, buf, n - 2);
	line[n - 2] = '\0';
	for (t = strtok_r(line, " ", &save); t != NULL && nf < 7; t = strtok_r(NULL, " ", &save))
		f[nf++] = t;
	r->version = 1;
	if (nf >= 2 && strcmp(f[0], "PROXY") == 0 && strcmp(f[1], "UNKNOWN") == 0) {
		r->local = 1;
		return (int)n;
	}
	if (nf != 6 || strcmp(f[0], "PROXY") != 0) {
		*err = "malformed v1 header";
		return -1;
	}
	if (strcmp(f[1], "TCP4") == 0)
		af = AF_INET;
	else if (strcmp(f[1], "TCP6") == 0)
		af = AF_INET6;
	else {
		*err = "v1 header: unknown protocol";
		return -1;
	}
	if (proxyproto_addr(af, f[2], f[4], &r->src, &r->srclen) != 0 ||
	    proxyproto_addr(af, f[3], f[5], &r->dst, &r->dstlen) != 0) {
		*err = "v1 header: bad address or port";
		return -1;
	}
	return (int)n;
}

/* Parse a v2 binary header. */
static int
proxyproto_parse_v2(const unsigned char *buf, size_t len, struct proxyproto_result *r,
    const char **err)
{
	size_t total, alen;
	unsigned ver, cmd, fam;

	if (len < 16)
		return 0;
	ver = buf[12] >> 4;
	cmd = buf[12] & 0x0f;
	fam = buf[13];
	alen = ((size_t)buf[14] << 8) | buf[15];
	if (ver != 2 || cmd > 1) {
		*err = "v2 header: bad version or command";
		return -1;
	}
	total = 16 + alen;
	if (total > PROXYPROTO_V2_MAX) {
		*err = "v2 header too long";
		return -1;
	}
	if (len < total)
		return 0;
	r->version = 2;
	if (cmd == 0) {		/* LOCAL: a health check from the proxy itself */
		r->local = 1;
		return (int)total;
	}
	if (fam == 0x11) {	/* TCP over IPv4 */
		struct sockaddr_in *s = (struct sockaddr_in *)&r->src;
		struct sockaddr_in *d = (struct sockaddr_in *)&r->dst;
		if (alen < 12) {
			*err = "v2 header: short IPv4 addresses";
			return -1;
		}
		memset(&r->src, 0, sizeof(r->src));
		memset(&r->dst, 0, sizeof(r->dst));
		s->sin_family = d->sin_family = AF_INET;
		memcpy(&s->sin_addr, buf + 16, 4);
		memcpy(&d->sin_addr, buf + 20, 4);
		memcpy(&s->sin_port, buf + 24, 2);
		memcpy(&d->sin_port, buf + 26, 2);
		r->srclen = r->dstlen = sizeof(*s);
	} else if (fam == 0x21) {	/* TCP over IPv6 */
		struct sockaddr_in6 *s = (struct sockaddr_in6 *)&r->src;
		struct sockaddr_in6 *d = (struct sockaddr_in6 *)&r->dst;
		if (alen < 36) {
			*err = "v2 header: short IPv6 addresses";
			return -1;
		}
		memset(&r->src, 0, sizeof(r->src));
		memset(&r->dst, 0, sizeof(r->dst));
		s->sin6_family = d->sin6_family = AF_INET6;
		memcpy(&s->sin6_addr, buf + 16, 16);
		memcpy(&d->sin6_addr, buf + 32, 16);
		memcpy(&s->sin6_port, buf + 48, 2);
		memcpy(&d->sin6_port, buf + 50, 2);
		r->srclen = r->dstlen = sizeof(*s);
	} else if (fam == 0x00) {
		r->local = 1;	/* UNSPEC: addresses unknown */
	} else {
		*err = "v2 header: unsupported address family";
		return -1;
	}
	return (int)total;
}

/* Parse a v1 or v2 header at the start of buf. */
int
proxyproto_parse(const unsigned char *buf, size_t len, struct proxyproto_result *r,
    const char **err)
{
	size_t n = len < sizeof(proxyproto_sig) ? len : sizeof(proxyproto_sig);

	memset(r, 0, sizeof(*r));
	*err = NULL;
	if (len == 0)
		return 0;
	if (memcmp(buf, proxyproto_sig, n) == 0)
		return n < sizeof(proxyproto_sig) ? 0 : proxyproto_parse_v2(buf, len, r, err);
	n = len < 6 ? len : 6;
	if (memcmp(buf, "PROXY ", n) == 0)
		return n < 6 ? 0 : proxyproto_parse_v1(buf, len, r, err);
	*err = "no PROXY protocol header";
	return -1;
}

/* Build a v1 line. */
size_t
proxyproto_build_v1(const struct sockaddr *src, const struct sockaddr *dst, char *out,
    size_t outlen)
{
	char s[INET6_ADDRSTRLEN], d[INET6_ADDRSTRLEN];
	int n;

	if (src->sa_family == AF_INET && dst->sa_family == AF_INET) {
		const struct sockaddr_in *a = (const void *)src, *b = (const void *)dst;
		inet_ntop(AF_INET, &a->sin_addr, s, sizeof(s));
		inet_ntop(AF_INET, &b->sin_addr, d, sizeof(d));
		n = snprintf(out, outlen, "PROXY TCP4 %s %s %u %u\r\n", s, d,
		    ntohs(a->sin_port), ntohs(b->sin_port));
	} else if (src->sa_family == AF_INET6 && dst->sa_family == AF_INET6) {
		const struct sockaddr_in6 *a = (const void *)src, *b = (const void *)dst;
		inet_ntop(AF_INET6, &a->sin6_addr, s, sizeof(s));
		inet_ntop(AF_INET6, &b->sin6_addr, d, sizeof(d));
		n = snprintf(out, outlen, "PROXY TCP6 %s %s %u %u\r\n", s, d,
		    ntohs(a->sin6_port), ntohs(b->sin6_port));
	} else
		n = snprintf(out, outlen, "PROXY UNKNOWN\r\n");
	return n > 0 && (size_t)n < outlen ? (size_t)n : 0;
}

/* Build a v2 header (PROXY command, TCP, no TLVs). */
size_t
proxyproto_build_v2(const struct sockaddr *src, const struct sockaddr *dst,
    unsigned char *out, size_t outlen)
{
	if (outlen < 52)
		return 0;
	memcpy(out, proxyproto_sig, sizeof(proxyproto_sig));
	if (src->sa_family == AF_INET && dst->sa_family == AF_INET) {
		const struct sockaddr_in *a = (const void *)src, *b = (const void *)dst;
		out[12] = 0x21;
		out[13] = 0x11;
		out[14] = 0;
		out[15] = 12;
		memcpy(out + 16, &a->sin_addr, 4);
		memcpy(out + 20, &b->sin_addr, 4);
		memcpy(out + 24, &a->sin_port, 2);
		memcpy(out + 26, &b->sin_port, 2);
		return 28;
	}
	if (src->sa_family == AF_INET6 && dst->sa_family == AF_INET6) {
		const struct sockaddr_in6 *a = (const void *)src, *b = (const void *)dst;
		out[12] = 0x21;
		out[13] = 0x21;
		out[14] = 0;
		out[15] = 36;
		memcpy(out + 16, &a->sin6_addr, 16);
		memcpy(out + 32, &b->sin6_addr, 16);
		memcpy(out + 48, &a->sin6_port, 2);
		memcpy(out + 50, &b->sin6_port, 2);
		return 52;
	}
	/* Mixed families: LOCAL, the backend keeps the socket's addresses. */
	out[12] = 0x20;
	out[13] = 0x00;
	out[14] = 0;
	out[15] = 0;
	return 16;
}

/* Build a header without addresses: v1 UNKNOWN, v2 LOCAL. */
size_t
proxyproto_build_local(int version, unsigned char *out, size_t outlen)
{
	static const char v1[] = "PROXY UNKNOWN\r\n";

	if (version == 1) {
		if (outlen < sizeof(v1) - 1)
			return 0;
		memcpy(out, v1, sizeof(v1) - 1);
		return sizeof(v1) - 1;
	}
	if (version != 2 || outlen < sizeof(proxyproto_sig) + 4)
		return 0;
	memcpy(out, proxyproto_sig, sizeof(proxyproto_sig));
	out[12] = 0x20;		/* version 2, LOCAL */
	out[13] = 0x00;		/* UNSPEC */
	out[14] = 0;
	out[15] = 0;
	return sizeof(proxyproto_sig) + 4;
}
