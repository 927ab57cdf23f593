/* connlimit: shared connection counters with a per-address hash table. */
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "connlimit.h"

/* Buckets of the per-address table (entries chain; an entry lives while its count > 0). */
#define CONNLIMIT_BUCKETS	4096

/*
 * Failed logins (route: login) are remembered per address for this long
 * after the last one, also while the address has no connection: a client
 * that reconnects after each failure keeps its count.
 */
#define CONNLIMIT_FAIL_WINDOW	600
/* Addresses remembered only for their failures, at most (a flood from many addresses). */
#define CONNLIMIT_MAX_FAILING	65536

struct connlimit_entry {
	struct connlimit_entry	*next;
	unsigned char		 addr[16];	/* IPv4 stored as v4-mapped v6 */
	unsigned		 count;
	unsigned		 fails;		/* failed logins in the window */
	time_t			 fail_at;	/* the last one (monotonic seconds) */
};

struct connlimit {
	pthread_mutex_t		 lock;
	unsigned		 max_total, max_per_ip;
	unsigned		 total;
	unsigned		 failing;	/* entries kept only for their failures */
	struct connlimit_entry	*buckets[CONNLIMIT_BUCKETS];
};

/* Create the table. */
struct connlimit *
connlimit_new(unsigned max_total, unsigned max_per_ip)
{
	struct connlimit *l = calloc(1, sizeof(*l));

	if (l == NULL)
		return NULL;
	pthread_mutex_init(&l->lock, NULL);
	l->max_total = max_total;
	l->max_per_ip = max_per_ip;
	return l;
}

/* New limits from a reload. */
void
connlimit_set_max(struct connlimit *l, unsigned max_total, unsigned max_per_ip)
{
	pthread_mutex_lock(&l->lock);
	l->max_total = max_total;
	l->max_per_ip = max_per_ip;
	pthread_mutex_unlock(&l->lock);
}

/* Free the table and its entries. */
void
connlimit_free(struct connlimit *l)
{
	if (l == NULL)
		return;
	for (size_t i = 0; i < CONNLIMIT_BUCKETS; i++) {
		struct connlimit_entry *e = l->buckets[i], *n;
		for (; e != NULL; e = n) {
			n = e->next;
			free(e);
		}
	}
	pthread_mutex_destroy(&l->lock);
	free(l);
}

/* The 16-byte key of an address (IPv4 as ::ffff:a.b.c.d, so both spellings count once). */
static void
connlimit_key(const struct sockaddr *sa, unsigned char key[16])
{
	memset(key, 0, 16);
	if (sa->sa_family == AF_INET) {
		key[10] = key[11] = 0xff;
		memcpy(key + 12, &((const struct sockaddr_in *)sa)->sin_addr, 4);
	} else if (sa->sa_family == AF_INET6)
		memcpy(key, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
}

/* Bucket of a key. */
static size_t
connlimit_bucket(const unsigned char key[16])
{
	uint32_t h = 2166136261u;

	for (size_t i = 0; i < 16; i++) {
		h ^= key[i];
		h *= 16777619u;
	}
	return h % CONNLIMIT_BUCKETS;
}

/* Monotonic seconds, coarse (failure windows only). */
static time_t
connlimit_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return ts.tv_sec;
}

/* Are e's failures still inside the window? */
static int
connlimit_failing(const struct connlimit_entry *e, time_t now)
{
	return e->fails > 0 && now - e->fail_at < CONNLIMIT_FAIL_WINDOW;
}

/*
 * The entry of key in bucket b, NULL if none; entries that only remembered
 * failures now out of the window are freed on the way.  Lock held.
 */
static struct connlimit_entry *
connlimit_find(struct connlimit *l, size_t b, const unsigned char key[16], time_t now)
{
	struct connlimit_entry **ep, *e;

	for (ep = &l->buckets[b]; (e = *ep) != NULL; ) {
		if (e->count == 0 && !connlimit_failing(e, now)) {
			*ep = e->next;
			free(e);
			l->failing--;
			continue;
		}
		if (memcmp(e->addr, key, 16) == 0)
			return e;
		ep = &e->next;
	}
	return NULL;
}

/* Count one more session for sa unless a limit says no. */
enum connlimit_verdict
connlimit_acquire(struct connlimit *l, const struct sockaddr *sa)
{
	unsigned char key[16];
	struct connlimit_entry *e;
	size_t b;

	connlimit_key(sa, key);
	b = connlimit_bucket(key);
	pthread_mutex_lock(&l->lock);
	if (l->total >= l->max_total) {
		pthread_mutex_unlock(&l->lock);
		return CONNLIMIT_TOTAL;
	}
	e = connlimit_find(l, b, key, connlimit_now());
	if (e != NULL && l->max_per_ip > 0 && e->count >= l->max_per_ip) {
		pthread_mutex_unlock(&l->lock);
		return CONNLIMIT_PER_IP;
	}
	if (e == NULL) {
		if ((e = calloc(1, sizeof(*e))) == NULL) {
			pthread_mutex_unlock(&l->lock);
			return CONNLIMIT_TOTAL;
		}
		memcpy(e->addr, key, 16);
		e->next = l->buckets[b];
		l->buckets[b] = e;
	} else if (e->count == 0)
		l->failing--;	/* kept for its failures, now for a session again */
	e->count++;
	l->total++;
	pthread_mutex_unlock(&l->lock);
	return CONNLIMIT_OK;
}

/* One session fewer for sa. */
void
connlimit_release(struct connlimit *l, const struct sockaddr *sa)
{
	unsigned char key[16];
	struct connlimit_entry **ep, *e;

	connlimit_key(sa, key);
	pthread_mutex_lock(&l->lock);
	for (ep = &l->buckets[connlimit_bucket(key)]; (e = *ep) != NULL; ep = &e->next)
		if (memcmp(e->addr, key, 16) == 0) {
			if (--e->count == 0) {
				if (connlimit_failing(e, connlimit_now()) &&
				    l->failing < CONNLIMIT_MAX_FAILING)
					l->failing++;	/* its failures are remembered */
				else {
					*ep = e->next;
					free(e);
				}
			}
			l->total--;
			break;
		}
	pthread_mutex_unlock(&l->lock);
}

/* Sessions counted. */
unsigned
connlimit_total(struct connlimit *l)
{
	unsigned n;

	pthread_mutex_lock(&l->lock);
	n = l->total;
	pthread_mutex_unlock(&l->lock);
	return n;
}

/*
 * The key failed logins are counted under: the address for IPv4, its /64
 * for IPv6 (one host usually holds a whole /64: counting single addresses
 * would let it try 2^64 times).  The /64 key is marked so that it is never
 * the key of a real address's connections.
 */
static void
connlimit_fail_key(const struct sockaddr *sa, unsigned char key[16])
{
	connlimit_key(sa, key);
	if (sa->sa_family == AF_INET6) {
		memset(key + 8, 0xff, 8);
		key[8] = 0xfe;
	}
}

/* Count a failed login from sa; returns the failures in the window with this one. */
unsigned
connlimit_login_failed(struct connlimit *l, const struct sockaddr *sa)
{
	unsigned char key[16];
	struct connlimit_entry *e;
	time_t now = connlimit_now();
	size_t b;
	unsigned n = 1;

	connlimit_fail_key(sa, key);
	b = connlimit_bucket(key);
	pthread_mutex_lock(&l->lock);
	if ((e = connlimit_find(l, b, key, now)) == NULL && l->failing < CONNLIMIT_MAX_FAILING &&
	    (e = calloc(1, sizeof(*e))) != NULL) {
		/* An IPv6 /64 has no connection of its own: an entry for its failures only. */
		memcpy(e->addr, key, 16);
		e->next = l->buckets[b];
		l->buckets[b] = e;
		l->failing++;
	}
	if (e != NULL) {
		if (!connlimit_failing(e, now))
			e->fails = 0;
		if (e->fails < UINT32_MAX)
			e->fails++;
		e->fail_at = now;
		n = e->fails;
	}
	pthread_mutex_unlock(&l->lock);
	return n;
}

/* Failed logins from sa in the window. */
unsigned
connlimit_login_failures(struct connlimit *l, const struct sockaddr *sa)
{
	unsigned char key[16];
	struct connlimit_entry *e;
	time_t now = connlimit_now();
	unsigned n = 0;

	connlimit_fail_key(sa, key);
	pthread_mutex_lock(&l->lock);
	if ((e = connlimit_find(l, connlimit_bucket(key), key, now)) != NULL &&
	    connlimit_failing(e, now))
		n = e->fails;
	pthread_mutex_unlock(&l->lock);
	return n;
}
