/* fuzz_proxyproto: libFuzzer target for the PROXY protocol v1/v2 parser. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "proxyproto.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Abort unless two parse results name the same addresses. */
static void
fuzz_same(const struct proxyproto_result *a, const struct proxyproto_result *b)
{
	if (a->local != b->local)
		abort();
	if (a->local)
		return;
	if (a->srclen != b->srclen || a->dstlen != b->dstlen ||
	    memcmp(&a->src, &b->src, a->srclen) != 0 ||
	    memcmp(&a->dst, &b->dst, a->dstlen) != 0)
		abort();
}

/* Build a header of the given version from r and check it parses back to r. */
static void
fuzz_roundtrip(const struct proxyproto_result *r, int version)
{
	unsigned char out[PROXYPROTO_V2_MAX];
	struct proxyproto_result back;
	const char *err = NULL;
	size_t n;
	int got;

	if (version == 1)
		n = proxyproto_build_v1((const struct sockaddr *)&r->src,
		    (const struct sockaddr *)&r->dst, (char *)out, sizeof(out));
	else
		n = proxyproto_build_v2((const struct sockaddr *)&r->src,
		    (const struct sockaddr *)&r->dst, out, sizeof(out));
	if (n == 0 || n > sizeof(out))
		abort();
	memset(&back, 0, sizeof(back));
	got = proxyproto_parse(out, n, &back, &err);
	if (got != (int)n || back.version != version)
		abort();
	/* A v1 line carries no LOCAL form, and mixed families become UNKNOWN. */
	if (r->src.ss_family == r->dst.ss_family && !back.local)
		fuzz_same(r, &back);
}

/*
 * Parse the input whole and byte by byte growing (the way the daemon sees
 * a header arrive), check both agree, then round-trip the addresses
 * through both builders.
 */
int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct proxyproto_result r, part;
	const char *err = NULL;
	int whole, got = 0;
	size_t len;

	memset(&r, 0, sizeof(r));
	whole = proxyproto_parse(data, size, &r, &err);
	if (whole < -1 || (size_t)(whole > 0 ? whole : 0) > size)
		abort();
	if (whole < 0 && err == NULL)
		abort();
	/* Feeding a prefix must never complete earlier or differently. */
	for (len = 0; len <= size && len <= PROXYPROTO_V2_MAX; len++) {
		memset(&part, 0, sizeof(part));
		err = NULL;
		got = proxyproto_parse(data, len, &part, &err);
		if (got != 0)
			break;
	}
	if (got > 0 && whole > 0 && got != whole)
		abort();
	if (whole <= 0 || r.local)
		return 0;
	if (r.version != 1 && r.version != 2)
		abort();
	if (r.src.ss_family != AF_INET && r.src.ss_family != AF_INET6)
		return 0;
	fuzz_roundtrip(&r, 1);
	fuzz_roundtrip(&r, 2);
	return 0;
}
