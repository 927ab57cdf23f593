/*
 * hrw: weighted rendezvous (highest random weight) hashing, the choice of
 * a backend for a key (a user name or a domain) without shared state.
 *
 * Every instance with the same server list ranks the servers for a key the
 * same way; removing a server moves only the keys it ranked first (each to
 * its next choice), adding one takes keys only to itself, and weights give
 * proportional shares.  Pure functions: no state, no I/O.
 */
#ifndef IMAPGATE_HRW_H
#define IMAPGATE_HRW_H

#include <stddef.h>
#include <stdint.h>

#define HRW_MAX		64	/* servers one ranking takes (the pool's tried set is 64 bits) */
#define HRW_MAX_WEIGHT	1000	/* as backend.servers[].weight */

/*
 * The 64-bit hash of (server id, key): SipHash-2-4 with a fixed key, ASCII
 * letters of key lowered (so "Alice@Example.org" and "alice@example.org"
 * rank alike), id taken as written.  Never changes (see hrw.c).
 */
uint64_t hrw_hash(const char *key, size_t keylen, const char *id);
/* Server id's score for key: -weight / ln(u), u in (0,1) from hrw_hash.  Higher wins. */
double	hrw_score(const char *key, size_t keylen, const char *id, unsigned weight);
/*
 * Rank n servers for key, best first: order[0..n) gets the indices 0..n-1.
 * ids[i] is server i's id, its address text as written in the
 * configuration; weights[i] is in 1..HRW_MAX_WEIGHT (weights NULL: all 1).
 * Equal scores go to the lower index.  Returns 0, or -1 (order untouched)
 * if n > HRW_MAX or a weight is out of range.
 */
int	hrw_order(const char *key, size_t keylen, const char *const *ids,
	    const unsigned *weights, size_t n, int *order);

#endif
