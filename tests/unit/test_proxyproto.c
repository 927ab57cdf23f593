/*
 * test_proxyproto: unit tests for the PROXY protocol parser and builders
 * (proxy/proxyproto.c).
 *
 * Every valid header is also fed at every split point: a prefix must give
 * 0 ("need more"), never a verdict, because the listener peeks a socket
 * that may hold only part of the header.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxyproto.h"
#include "check.h"

/* Room for any header the tests build (v2 with TLVs, or trailing data). */
#define HDR_MAX		(PROXYPROTO_V2_MAX + 64)


static const unsigned char sig[12] = {
	0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d, 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a,
};

/* The address and port of sa as "ip port" text, for comparisons. */
static const char *
addr_text(const struct sockaddr_storage *ss, char *buf, size_t len)
{
	char ip[INET6_ADDRSTRLEN];

	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *s = (const struct sockaddr_in *)ss;
		inet_ntop(AF_INET, &s->sin_addr, ip, sizeof(ip));
		snprintf(buf, len, "%s %u", ip, ntohs(s->sin_port));
	} else if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)ss;
		inet_ntop(AF_INET6, &s->sin6_addr, ip, sizeof(ip));
		snprintf(buf, len, "%s %u", ip, ntohs(s->sin6_port));
	} else
		snprintf(buf, len, "family %d", ss->ss_family);
	return buf;
}

/* Every proper prefix of buf[0..len) must parse as "incomplete" (0). */
static void
check_splits(const char *name, const unsigned char *buf, size_t len)
{
	struct proxyproto_result r;
	const char *err;

	for (size_t i = 0; i < len; i++) {
		int n = proxyproto_parse(buf, i, &r, &err);
		CHECK(n == 0, "%s: prefix of %zu/%zu bytes gave %d (%s)", name, i, len, n,
		    err ? err : "-");
	}
}

/*
 * Parse a complete valid header followed by trailing bytes (the TLS
 * ClientHello or IMAP that follows it); check its length, version, local
 * flag and the addresses.  src/dst NULL: not checked (LOCAL).
 */
static void
check_valid(const char *name, const unsigned char *hdr, size_t len, int version, int local,
    const char *src, const char *dst)
{
	unsigned char buf[HDR_MAX];
	struct proxyproto_result r;
	const char *err;
	char a[96], b[96];
	int n;

	check_splits(name, hdr, len);
	memcpy(buf, hdr, len);
	memcpy(buf + len, "\x16\x03\x01", 3);
	n = proxyproto_parse(buf, len + 3, &r, &err);
	CHECK(n == (int)len, "%s: parse gave %d, want %zu (%s)", name, n, len, err ? err : "-");
	if (n != (int)len)
		return;
	CHECK(r.version == version, "%s: version %d, want %d", name, r.version, version);
	CHECK(r.local == local, "%s: local %d, want %d", name, r.local, local);
	if (src != NULL) {
		addr_text(&r.src, a, sizeof(a));
		CHECK(strcmp(a, src) == 0, "%s: src \"%s\", want \"%s\"", name, a, src);
		CHECK(r.srclen == (r.src.ss_family == AF_INET ? sizeof(struct sockaddr_in) :
		    sizeof(struct sockaddr_in6)), "%s: srclen %u", name, (unsigned)r.srclen);
	}
	if (dst != NULL) {
		addr_text(&r.dst, b, sizeof(b));
		CHECK(strcmp(b, dst) == 0, "%s: dst \"%s\", want \"%s\"", name, b, dst);
	}
}

/* A header that must be refused (-1 with a reason), complete or not. */
static void
check_bad(const char *name, const unsigned char *buf, size_t len)
{
	struct proxyproto_result r;
	const char *err = NULL;
	int n = proxyproto_parse(buf, len, &r, &err);

	CHECK(n == -1, "%s: parse gave %d, want -1", name, n);
	CHECK(n != -1 || (err != NULL && err[0] != '\0'), "%s: no reason given", name);
}

/* check_bad for a text header. */
static void
check_bad_text(const char *name, const char *text)
{
	check_bad(name, (const unsigned char *)text, strlen(text));
}

/* check_valid for a text (v1) header. */
static void
check_v1(const char *text, int local, const char *src, const char *dst)
{
	check_valid(text, (const unsigned char *)text, strlen(text), 1, local, src, dst);
}

/* Build a v2 header: version/command byte, family byte, address block, TLVs. */
static size_t
v2(unsigned char *out, unsigned char vercmd, unsigned char fam, const unsigned char *body,
    size_t blen)
{
	memcpy(out, sig, 12);
	out[12] = vercmd;
	out[13] = fam;
	out[14] = (unsigned char)(blen >> 8);
	out[15] = (unsigned char)(blen & 0xff);
	if (blen > 0)
		memcpy(out + 16, body, blen);
	return 16 + blen;
}

/* v1: the three protocols, and the spec's longest line. */
static void
test_v1_valid(void)
{
	char longest[PROXYPROTO_V1_MAX + 1];

	check_v1("PROXY TCP4 192.0.2.7 198.51.100.1 51234 993\r\n", 0,
	    "192.0.2.7 51234", "198.51.100.1 993");
	check_v1("PROXY TCP4 0.0.0.0 255.255.255.255 0 65535\r\n", 0,
	    "0.0.0.0 0", "255.255.255.255 65535");
	check_v1("PROXY TCP6 2001:db8::7 2001:db8::1 40000 143\r\n", 0,
	    "2001:db8::7 40000", "2001:db8::1 143");
	check_v1("PROXY UNKNOWN\r\n", 1, NULL, NULL);
	check_v1("PROXY UNKNOWN ffff:f...f:ffff ffff:f...f:ffff 65535 65535\r\n", 1, NULL, NULL);
	/* The longest TCP6 line (104 bytes), and 107 bytes: the spec's maximum. */
	snprintf(longest, sizeof(longest), "PROXY TCP6 %s %s 65535 65535\r\n",
	    "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
	check_v1(longest, 0, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535",
	    "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535");
	snprintf(longest, sizeof(longest), "PROXY UNKNOWN %s %s 65535 65535\r\n",
	    "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
	CHECK(strlen(longest) == PROXYPROTO_V1_MAX, "longest v1 is %zu bytes", strlen(longest));
	check_v1(longest, 1, NULL, NULL);
}

/* v1: every way a line can be wrong. */
static void
test_v1_bad(void)
{
	char toolong[PROXYPROTO_V1_MAX + 16];

	check_bad_text("missing CR", "PROXY TCP4 192.0.2.7 198.51.100.1 51234 993\n");
	check_bad_text("bad protocol", "PROXY UDP4 192.0.2.7 198.51.100.1 51234 993\r\n");
	check_bad_text("lower case", "PROXY tcp4 192.0.2.7 198.51.100.1 51234 993\r\n");
	check_bad_text("too few fields", "PROXY TCP4 192.0.2.7 198.51.100.1 51234\r\n");
	check_bad_text("too many fields", "PROXY TCP4 192.0.2.7 198.51.100.1 51234 993 1\r\n");
	check_bad_text("bad src", "PROXY TCP4 192.0.2.300 198.51.100.1 51234 993\r\n");
	check_bad_text("bad dst", "PROXY TCP4 192.0.2.7 198.51.100 51234 993\r\n");
	check_bad_text("v6 in TCP4", "PROXY TCP4 2001:db8::7 2001:db8::1 51234 993\r\n");
	check_bad_text("v4 in TCP6", "PROXY TCP6 192.0.2.7 198.51.100.1 51234 993\r\n");
	check_bad_text("port too big", "PROXY TCP4 192.0.2.7 198.51.100.1 65536 993\r\n");
	check_bad_text("port 6 digits", "PROXY TCP4 192.0.2.7 198.51.100.1 100000 993\r\n");
	check_bad_text("port sign", "PROXY TCP4 192.0.2.7 198.51.100.1 -1 993\r\n");
	check_bad_text("port letters", "PROXY TCP4 192.0.2.7 198.51.100.1 12a 993\r\n");
	check_bad_text("no keyword", "HELLO TCP4 192.0.2.7 198.51.100.1 51234 993\r\n");
	check_bad_text("IMAP instead", "a LOGIN demo demo\r\n");
	check_bad_text("TLS instead", "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03");
	check_bad_text("empty line", "PROXY \r\n");
	/* No line end within 107 bytes. */
	memset(toolong, 'x', sizeof(toolong) - 1);
	memcpy(toolong, "PROXY TCP4 ", 11);
	toolong[sizeof(toolong) - 1] = '\0';
	check_bad_text("too long", toolong);
	toolong[PROXYPROTO_V1_MAX] = '\0';
	check_bad_text("107 bytes without LF", toolong);
	/* One byte short of the limit and no LF yet: still undecided. */
	{
		struct proxyproto_result r;
		const char *err;
		CHECK(proxyproto_parse((const unsigned char *)toolong, PROXYPROTO_V1_MAX - 1,
		    &r, &err) == 0, "106 bytes without LF should wait for more");
	}
}

/* v2: TCP4, TCP6, LOCAL, UNSPEC, with and without TLVs. */
static void
test_v2_valid(void)
{
	unsigned char h[HDR_MAX], body[256];
	size_t n;
	static const unsigned char a4[12] = { 192, 0, 2, 7, 198, 51, 100, 1, 0xc8, 0x22, 0x03, 0xe1 };
	/* TLVs: PP2_TYPE_ALPN "imap", PP2_TYPE_AUTHORITY "mail.example.org", NOOP. */
	static const unsigned char tlv[] = {
		0x01, 0x00, 0x04, 'i', 'm', 'a', 'p',
		0x02, 0x00, 0x10, 'm', 'a', 'i', 'l', '.', 'e', 'x', 'a', 'm', 'p', 'l', 'e',
		'.', 'o', 'r', 'g',
		0x04, 0x00, 0x00,
	};
	unsigned char a6[36];

	n = v2(h, 0x21, 0x11, a4, sizeof(a4));
	check_valid("v2 TCP4", h, n, 2, 0, "192.0.2.7 51234", "198.51.100.1 993");

	memcpy(body, a4, sizeof(a4));
	memcpy(body + sizeof(a4), tlv, sizeof(tlv));
	n = v2(h, 0x21, 0x11, body, sizeof(a4) + sizeof(tlv));
	check_valid("v2 TCP4 + TLVs", h, n, 2, 0, "192.0.2.7 51234", "198.51.100.1 993");

	memset(a6, 0, sizeof(a6));
	inet_pton(AF_INET6, "2001:db8::7", a6);
	inet_pton(AF_INET6, "2001:db8::1", a6 + 16);
	a6[32] = 0x9c;	/* 40000 */
	a6[33] = 0x40;
	a6[34] = 0x00;	/* 143 */
	a6[35] = 0x8f;
	n = v2(h, 0x21, 0x21, a6, sizeof(a6));
	check_valid("v2 TCP6", h, n, 2, 0, "2001:db8::7 40000", "2001:db8::1 143");
	memcpy(body, a6, sizeof(a6));
	memcpy(body + sizeof(a6), tlv, sizeof(tlv));
	n = v2(h, 0x21, 0x21, body, sizeof(a6) + sizeof(tlv));
	check_valid("v2 TCP6 + TLVs", h, n, 2, 0, "2001:db8::7 40000", "2001:db8::1 143");

	/* LOCAL (health check): addresses, if any, are ignored. */
	n = v2(h, 0x20, 0x00, NULL, 0);
	check_valid("v2 LOCAL", h, n, 2, 1, NULL, NULL);
	n = v2(h, 0x20, 0x11, a4, sizeof(a4));
	check_valid("v2 LOCAL with TCP4 block", h, n, 2, 1, NULL, NULL);
	/* PROXY command with family UNSPEC: no usable addresses. */
	n = v2(h, 0x21, 0x00, NULL, 0);
	check_valid("v2 PROXY UNSPEC", h, n, 2, 1, NULL, NULL);
	n = v2(h, 0x21, 0x00, tlv, sizeof(tlv));
	check_valid("v2 PROXY UNSPEC + TLVs", h, n, 2, 1, NULL, NULL);
}

/* v2: bad signature, version, command, family, lengths. */
static void
test_v2_bad(void)
{
	unsigned char h[HDR_MAX], big[PROXYPROTO_V2_MAX];
	static const unsigned char a4[12] = { 192, 0, 2, 7, 198, 51, 100, 1, 0xc8, 0x22, 0x03, 0xe1 };
	size_t n;

	n = v2(h, 0x21, 0x11, a4, sizeof(a4));
	h[11] = 0x0b;	/* last signature byte wrong */
	check_bad("v2 bad signature", h, n);
	n = v2(h, 0x21, 0x11, a4, sizeof(a4));
	h[0] = 0x0a;
	check_bad("v2 bad first byte", h, n);
	n = v2(h, 0x11, 0x11, a4, sizeof(a4));
	check_bad("v2 version 1", h, n);
	n = v2(h, 0x31, 0x11, a4, sizeof(a4));
	check_bad("v2 version 3", h, n);
	n = v2(h, 0x22, 0x11, a4, sizeof(a4));
	check_bad("v2 command 2", h, n);
	n = v2(h, 0x21, 0x11, a4, 8);
	check_bad("v2 TCP4 short block", h, n);
	n = v2(h, 0x21, 0x21, a4, sizeof(a4));
	check_bad("v2 TCP6 short block", h, n);
	n = v2(h, 0x21, 0x12, a4, sizeof(a4));
	check_bad("v2 UDP4", h, n);
	n = v2(h, 0x21, 0x31, a4, sizeof(a4));
	check_bad("v2 UNIX", h, n);
	/* Declared length beyond the limit: refused from the 16-byte header alone. */
	memset(big, 0, sizeof(big));
	n = v2(h, 0x21, 0x11, a4, sizeof(a4));
	h[14] = 0x10;	/* 4096 + 12 bytes of addresses and TLVs */
	check_bad("v2 too long", h, 16);
	/* The largest accepted length still parses. */
	n = v2(big, 0x21, 0x11, a4, sizeof(a4));
	big[14] = (unsigned char)((PROXYPROTO_V2_MAX - 16) >> 8);
	big[15] = (unsigned char)((PROXYPROTO_V2_MAX - 16) & 0xff);
	check_valid("v2 longest", big, PROXYPROTO_V2_MAX, 2, 0, "192.0.2.7 51234",
	    "198.51.100.1 993");
	(void)n;
}

/* build_v1 / build_v2 output parses back to the same addresses. */
static void
test_roundtrip(void)
{
	struct sockaddr_in s4, d4;
	struct sockaddr_in6 s6, d6;
	char line[PROXYPROTO_V1_MAX + 1];
	unsigned char bin[64];
	size_t n;

	memset(&s4, 0, sizeof(s4));
	memset(&d4, 0, sizeof(d4));
	s4.sin_family = d4.sin_family = AF_INET;
	inet_pton(AF_INET, "203.0.113.9", &s4.sin_addr);
	inet_pton(AF_INET, "10.1.2.3", &d4.sin_addr);
	s4.sin_port = htons(61000);
	d4.sin_port = htons(143);
	memset(&s6, 0, sizeof(s6));
	memset(&d6, 0, sizeof(d6));
	s6.sin6_family = d6.sin6_family = AF_INET6;
	inet_pton(AF_INET6, "2001:db8:1::9", &s6.sin6_addr);
	inet_pton(AF_INET6, "fd00::3", &d6.sin6_addr);
	s6.sin6_port = htons(1);
	d6.sin6_port = htons(993);

	n = proxyproto_build_v1((struct sockaddr *)&s4, (struct sockaddr *)&d4, line, sizeof(line));
	CHECK(n > 0 && strcmp(line, "PROXY TCP4 203.0.113.9 10.1.2.3 61000 143\r\n") == 0,
	    "build_v1 TCP4 gave \"%s\"", line);
	check_valid("build_v1 TCP4", (unsigned char *)line, n, 1, 0, "203.0.113.9 61000",
	    "10.1.2.3 143");
	n = proxyproto_build_v1((struct sockaddr *)&s6, (struct sockaddr *)&d6, line, sizeof(line));
	CHECK(n > 0 && strcmp(line, "PROXY TCP6 2001:db8:1::9 fd00::3 1 993\r\n") == 0,
	    "build_v1 TCP6 gave \"%s\"", line);
	check_valid("build_v1 TCP6", (unsigned char *)line, n, 1, 0, "2001:db8:1::9 1",
	    "fd00::3 993");
	n = proxyproto_build_v1((struct sockaddr *)&s4, (struct sockaddr *)&d6, line, sizeof(line));
	CHECK(n > 0 && strcmp(line, "PROXY UNKNOWN\r\n") == 0, "build_v1 mixed gave \"%s\"", line);
	check_valid("build_v1 mixed", (unsigned char *)line, n, 1, 1, NULL, NULL);
	/* Too small an output buffer: 0, never a truncated line. */
	CHECK(proxyproto_build_v1((struct sockaddr *)&s4, (struct sockaddr *)&d4, line, 10) == 0,
	    "build_v1 into 10 bytes should fail");

	n = proxyproto_build_v2((struct sockaddr *)&s4, (struct sockaddr *)&d4, bin, sizeof(bin));
	CHECK(n == 28, "build_v2 TCP4 length %zu", n);
	check_valid("build_v2 TCP4", bin, n, 2, 0, "203.0.113.9 61000", "10.1.2.3 143");
	n = proxyproto_build_v2((struct sockaddr *)&s6, (struct sockaddr *)&d6, bin, sizeof(bin));
	CHECK(n == 52, "build_v2 TCP6 length %zu", n);
	check_valid("build_v2 TCP6", bin, n, 2, 0, "2001:db8:1::9 1", "fd00::3 993");
	n = proxyproto_build_v2((struct sockaddr *)&s6, (struct sockaddr *)&d4, bin, sizeof(bin));
	CHECK(n == 16, "build_v2 mixed length %zu", n);
	check_valid("build_v2 mixed (LOCAL)", bin, n, 2, 1, NULL, NULL);
	CHECK(proxyproto_build_v2((struct sockaddr *)&s4, (struct sockaddr *)&d4, bin, 20) == 0,
	    "build_v2 into 20 bytes should fail");
}

/* build_local: v1 UNKNOWN and v2 LOCAL parse back as local, never truncated. */
static void
test_local(void)
{
	unsigned char out[64];
	size_t n;

	n = proxyproto_build_local(1, out, sizeof(out));
	CHECK(n == 15 && memcmp(out, "PROXY UNKNOWN\r\n", 15) == 0, "build_local v1 length %zu", n);
	check_valid("build_local v1", out, n, 1, 1, NULL, NULL);
	n = proxyproto_build_local(2, out, sizeof(out));
	CHECK(n == 16 && out[12] == 0x20 && out[13] == 0x00, "build_local v2 length %zu", n);
	check_valid("build_local v2 (LOCAL)", out, n, 2, 1, NULL, NULL);
	CHECK(proxyproto_build_local(1, out, 14) == 0, "build_local v1 into 14 bytes should fail");
	CHECK(proxyproto_build_local(2, out, 15) == 0, "build_local v2 into 15 bytes should fail");
	CHECK(proxyproto_build_local(3, out, sizeof(out)) == 0, "build_local v3 should fail");
}

/* Nothing at all, and an empty parse result on error. */
static void
test_edges(void)
{
	struct proxyproto_result r;
	const char *err;

	CHECK(proxyproto_parse((const unsigned char *)"", 0, &r, &err) == 0,
	    "empty input should wait for more");
	CHECK(proxyproto_parse((const unsigned char *)"P", 1, &r, &err) == 0,
	    "\"P\" should wait for more");
	CHECK(proxyproto_parse((const unsigned char *)"PX", 2, &r, &err) == -1,
	    "\"PX\" cannot become a header");
	CHECK(proxyproto_parse(sig, 5, &r, &err) == 0, "part of the v2 signature should wait");
}

int
main(void)
{
	test_v1_valid();
	test_v1_bad();
	test_v2_valid();
	test_v2_bad();
	test_roundtrip();
	test_local();
	test_edges();
	printf("%d checks, %d failures\n", checks, failures);
	return failures ? 1 : 0;
}
