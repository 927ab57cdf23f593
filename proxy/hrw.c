/* hrw: weighted rendezvous hashing over SipHash-2-4. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "hrw.h"

/*
 * NEVER CHANGE the key, the message layout (hrw_hash) or the mapping to u
 * (hrw_u) once released.  Instances agree on a user's server only because
 * they compute the same numbers; a change, even in one instance, sends
 * nearly every user to another server at once (cold caches, index
 * rebuilds, two servers writing one mailbox while old and new instances
 * run side by side).
 *
 * The key is public and fixed, not secret: it spreads names, it defends
 * nothing (a client picks only its own name, and the operator the
 * servers).  It is "imapgate-hrw-v1\0" read as two little-endian words.
 */
#define HRW_K0		0x6574616770616d69ull	/* "imapgate" */
#define HRW_K1		0x0031762d7772682dull	/* "-hrw-v1\0" */
#define HRW_U_BITS	52	/* hash bits in u: (x + 0.5) / 2^52 is exact in a double */

/* SipHash-2-4 fed a byte at a time (keys and ids are short). */
struct hrw_sip {
	uint64_t	v0, v1, v2, v3;
	uint64_t	m;	/* bytes of the word being filled, little-endian */
	uint64_t	len;	/* bytes fed */
};

/* Rotate x left by b bits. */
static uint64_t
hrw_rotl(uint64_t x, int b)
{
	return (x << b) | (x >> (64 - b));
}

/* One SipRound. */
static void
hrw_round(struct hrw_sip *s)
{
	s->v0 += s->v1;
	s->v1 = hrw_rotl(s->v1, 13);
	s->v1 ^= s->v0;
	s->v0 = hrw_rotl(s->v0, 32);
	s->v2 += s->v3;
	s->v3 = hrw_rotl(s->v3, 16);
	s->v3 ^= s->v2;
	s->v0 += s->v3;
	s->v3 = hrw_rotl(s->v3, 21);
	s->v3 ^= s->v0;
	s->v2 += s->v1;
	s->v1 = hrw_rotl(s->v1, 17);
	s->v1 ^= s->v2;
	s->v2 = hrw_rotl(s->v2, 32);
}

/* Mix one 64-bit message word in (two rounds: the "2" of 2-4). */
static void
hrw_compress(struct hrw_sip *s, uint64_t m)
{
	s->v3 ^= m;
	hrw_round(s);
	hrw_round(s);
	s->v0 ^= m;
}

/* Start a SipHash with the fixed key. */
static void
hrw_sip_init(struct hrw_sip *s)
{
	s->v0 = HRW_K0 ^ 0x736f6d6570736575ull;
	s->v1 = HRW_K1 ^ 0x646f72616e646f6dull;
	s->v2 = HRW_K0 ^ 0x6c7967656e657261ull;
	s->v3 = HRW_K1 ^ 0x7465646279746573ull;
	s->m = 0;
	s->len = 0;
}

/* Feed one byte. */
static void
hrw_sip_byte(struct hrw_sip *s, unsigned char c)
{
	s->m |= (uint64_t)c << (8 * (s->len & 7));
	if ((++s->len & 7) == 0) {
		hrw_compress(s, s->m);
		s->m = 0;
	}
}

/* Finish: the length byte, then four rounds (the "4"). */
static uint64_t
hrw_sip_final(struct hrw_sip *s)
{
	hrw_compress(s, s->m | (s->len & 0xff) << 56);
	s->v2 ^= 0xff;
	for (int i = 0; i < 4; i++)
		hrw_round(s);
	return s->v0 ^ s->v1 ^ s->v2 ^ s->v3;
}

/*
 * SipHash-2-4 of len(id) as 8 little-endian bytes, id, then key with ASCII
 * letters lowered.  The length first keeps ("ab", "c") apart from
 * ("a", "bc").
 */
uint64_t
hrw_hash(const char *key, size_t keylen, const char *id)
{
	struct hrw_sip s;
	uint64_t idlen = strlen(id);
	size_t i;

	hrw_sip_init(&s);
	for (i = 0; i < 8; i++)
		hrw_sip_byte(&s, (unsigned char)(idlen >> (8 * i)));
	for (i = 0; i < idlen; i++)
		hrw_sip_byte(&s, (unsigned char)id[i]);
	for (i = 0; i < keylen; i++) {
		unsigned char c = (unsigned char)key[i];
		hrw_sip_byte(&s, c >= 'A' && c <= 'Z' ? (unsigned char)(c - 'A' + 'a') : c);
	}
	return hrw_sip_final(&s);
}

/* The top HRW_U_BITS of h as x, for u = (x + 0.5) / 2^52, strictly inside (0, 1). */
static uint64_t
hrw_u(uint64_t h)
{
	return h >> (64 - HRW_U_BITS);
}

/*
 * The logarithmic method: -weight / ln(u) is weight times an exponential
 * variate's inverse, so the best of servers with weights w_i is server j
 * with probability w_j / sum(w_i), and raising one weight only raises that
 * server's scores (keys move only to it).
 */
static double
hrw_score_of(uint64_t h, unsigned weight)
{
	double u = ((double)hrw_u(h) + 0.5) / (double)(UINT64_C(1) << HRW_U_BITS);

	return -(double)weight / log(u);
}

/* Server id's score for key. */
double
hrw_score(const char *key, size_t keylen, const char *id, unsigned weight)
{
	return hrw_score_of(hrw_hash(key, keylen, id), weight);
}

/*
 * Whether server a ranks before server b.  Between equal weights the order
 * of -w / ln(u) is the order of u, so integers decide it and no libm's
 * rounding of log can make two platforms disagree; only different weights
 * compare the floating-point scores.
 */
static int
hrw_before(size_t a, size_t b, const uint64_t *h, const double *score, const unsigned *w)
{
	if (w[a] == w[b]) {
		if (hrw_u(h[a]) != hrw_u(h[b]))
			return hrw_u(h[a]) > hrw_u(h[b]);
	} else if (score[a] != score[b])
		return score[a] > score[b];
	return a < b;
}

/* Rank n servers for key, best first. */
int
hrw_order(const char *key, size_t keylen, const char *const *ids, const unsigned *weights,
    size_t n, int *order)
{
	uint64_t h[HRW_MAX];
	double score[HRW_MAX];
	unsigned w[HRW_MAX];
	size_t i, j;

	if (n > HRW_MAX)
		return -1;
	for (i = 0; i < n; i++) {
		w[i] = weights != NULL ? weights[i] : 1;
		if (w[i] < 1 || w[i] > HRW_MAX_WEIGHT)
			return -1;
	}
	/* Insertion sort: n is at most 64, and the order must not depend on the sort's luck. */
	for (i = 0; i < n; i++) {
		h[i] = hrw_hash(key, keylen, ids[i]);
		score[i] = hrw_score_of(h[i], w[i]);
		for (j = i; j > 0 && hrw_before(i, (size_t)order[j - 1], h, score, w); j--)
			order[j] = order[j - 1];
		order[j] = (int)i;
	}
	return 0;
}
