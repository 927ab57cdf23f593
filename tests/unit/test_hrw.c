/*
 * test_hrw: unit tests for weighted rendezvous hashing (proxy/hrw.c).
 *
 * The pinned hashes and orders were computed by an independent SipHash-2-4
 * (checked against the reference test vectors) from the layout hrw.c
 * documents.  If one of them fails, the hash changed: every instance
 * running the new code would send most users to another server.  Do not
 * "fix" the numbers; put the function back.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hrw.h"
#include "check.h"

#define KEYS		30000	/* keys in each distribution test */
#define NSERVERS	5	/* servers in the pinned orders */

static const char *const ids5[NSERVERS] = {
	"10.0.0.1:143", "10.0.0.2:143", "10.0.0.3:143", "imap4.example.org:143",
	"[2001:db8::5]:143",
};

/* Key number i of the distribution tests, in the shapes users have. */
static const char *
key_of(int i, char *buf, size_t len)
{
	snprintf(buf, len, "user%d@example%d.org", i, i % 97);
	return buf;
}

/* The best of n servers for key (order[0]). */
static int
best_of(const char *key, const char *const *ids, const unsigned *w, size_t n)
{
	int order[HRW_MAX];

	if (hrw_order(key, strlen(key), ids, w, n, order) != 0)
		return -1;
	return order[0];
}

/* Whether order[0..n) names the indices want[0..n). */
static int
same_order(const int *order, const int *want, size_t n)
{
	return memcmp(order, want, n * sizeof(*order)) == 0;
}

/* The hash and the orders, pinned: they must never change. */
static void
test_pinned(void)
{
	static const struct {
		const char	*key, *id;
		unsigned long long hash;
	} hashes[] = {
		{ "alice@example.org", "10.0.0.1:143", 0xa4ce972a7c823379ull },
		{ "Alice@Example.ORG", "10.0.0.1:143", 0xa4ce972a7c823379ull },
		{ "", "imap1.example.org:143", 0x0578ced0f89f3ac7ull },
		{ "@example.org", "[2001:db8::1]:993", 0xa3783659ed65e8e7ull },
	};
	static const struct {
		const char	*key;
		int		 equal[NSERVERS], weighted[NSERVERS];
	} orders[] = {
		{ "alice@example.org", { 2, 3, 0, 1, 4 }, { 2, 3, 1, 0, 4 } },
		{ "bob", { 1, 4, 3, 2, 0 }, { 1, 3, 4, 2, 0 } },
		{ "@example.org", { 3, 4, 2, 0, 1 }, { 3, 4, 2, 0, 1 } },
		{ "carol@example.net", { 3, 1, 0, 2, 4 }, { 3, 1, 0, 2, 4 } },
		{ "dave@example.com", { 1, 0, 3, 4, 2 }, { 1, 3, 0, 4, 2 } },
		{ "erin@example.org", { 4, 0, 1, 2, 3 }, { 4, 1, 0, 3, 2 } },
	};
	static const unsigned w[NSERVERS] = { 1, 2, 1, 3, 1 };
	int order[NSERVERS];

	for (size_t i = 0; i < sizeof(hashes) / sizeof(hashes[0]); i++) {
		unsigned long long h = hrw_hash(hashes[i].key, strlen(hashes[i].key), hashes[i].id);
		CHECK(h == hashes[i].hash, "hash(%s, %s) = %016llx, pinned %016llx",
		    hashes[i].key, hashes[i].id, h, hashes[i].hash);
	}
	for (size_t i = 0; i < sizeof(orders) / sizeof(orders[0]); i++) {
		const char *k = orders[i].key;
		CHECK(hrw_order(k, strlen(k), ids5, NULL, NSERVERS, order) == 0, "order %s", k);
		CHECK(same_order(order, orders[i].equal, NSERVERS),
		    "%s: equal weights gave %d %d %d %d %d", k, order[0], order[1], order[2],
		    order[3], order[4]);
		CHECK(hrw_order(k, strlen(k), ids5, w, NSERVERS, order) == 0, "order %s", k);
		CHECK(same_order(order, orders[i].weighted, NSERVERS),
		    "%s: weights 1:2:1:3:1 gave %d %d %d %d %d", k, order[0], order[1],
		    order[2], order[3], order[4]);
	}
	/* Only the key's length counts, not a NUL in it or what follows. */
	CHECK(hrw_hash("bob\0x", 3, "a") == hrw_hash("bob", 3, "a"), "keylen bounds the key");
	CHECK(hrw_hash("bob\0x", 5, "a") != hrw_hash("bob", 3, "a"), "bytes after a NUL count");
	/* The id's length is hashed first: ("ab", "c") is not ("a", "bc"). */
	CHECK(hrw_hash("c", 1, "ab") != hrw_hash("bc", 2, "a"), "id/key boundary");
	/* Case folds in keys only, and only ASCII. */
	CHECK(hrw_hash("BOB", 3, "a") == hrw_hash("bob", 3, "a"), "key case");
	CHECK(hrw_hash("bob", 3, "A") != hrw_hash("bob", 3, "a"), "ids are taken as written");
	CHECK(hrw_hash("\xc3\x84", 2, "a") != hrw_hash("\xc3\xa4", 2, "a"), "no Unicode folding");
}

/* Scores follow the formula; the order agrees with the scores. */
static void
test_score(void)
{
	int order[NSERVERS];
	double s1, s2;

	s1 = hrw_score("bob", 3, ids5[0], 1);
	s2 = hrw_score("bob", 3, ids5[0], 2);
	CHECK(s1 > 0 && s2 > 1.999999 * s1 && s2 < 2.000001 * s1, "score scales with weight %g %g",
	    s1, s2);
	CHECK(hrw_order("bob", 3, ids5, NULL, NSERVERS, order) == 0, "order bob");
	for (int i = 1; i < NSERVERS; i++)
		CHECK(hrw_score("bob", 3, ids5[order[i - 1]], 1) >=
		    hrw_score("bob", 3, ids5[order[i]], 1), "order %d follows the scores", i);
}

/* Bad arguments leave order untouched; edge sizes work. */
static void
test_bounds(void)
{
	const char *ids[HRW_MAX + 1];
	unsigned w[HRW_MAX + 1];
	char names[HRW_MAX + 1][32];
	int order[HRW_MAX + 1], seen[HRW_MAX];

	for (int i = 0; i <= HRW_MAX; i++) {
		snprintf(names[i], sizeof(names[i]), "10.1.%d.1:143", i);
		ids[i] = names[i];
		w[i] = 1;
		order[i] = -7;
	}
	CHECK(hrw_order("k", 1, ids, w, HRW_MAX + 1, order) == -1, "more than HRW_MAX servers");
	w[3] = 0;
	CHECK(hrw_order("k", 1, ids, w, 4, order) == -1, "weight 0");
	w[3] = HRW_MAX_WEIGHT + 1;
	CHECK(hrw_order("k", 1, ids, w, 4, order) == -1, "weight over the bound");
	CHECK(order[0] == -7 && order[3] == -7, "order untouched on error");
	w[3] = HRW_MAX_WEIGHT;
	CHECK(hrw_order("k", 1, ids, w, 4, order) == 0, "weight at the bound");
	order[0] = -7;
	CHECK(hrw_order("k", 1, ids, w, 0, order) == 0 && order[0] == -7, "no servers");
	CHECK(hrw_order("k", 1, ids, NULL, 1, order) == 0 && order[0] == 0, "one server");
	CHECK(hrw_order("k", 1, ids, NULL, HRW_MAX, order) == 0, "HRW_MAX servers");
	memset(seen, 0, sizeof(seen));
	for (int i = 0; i < HRW_MAX; i++)
		if (order[i] >= 0 && order[i] < HRW_MAX)
			seen[order[i]]++;
	for (int i = 0; i < HRW_MAX; i++)
		CHECK(seen[i] == 1, "index %d appears %d times", i, seen[i]);
	/* Two servers with the same id tie on every key: the lower index wins. */
	ids[1] = ids[0];
	CHECK(hrw_order("k", 1, ids, NULL, 2, order) == 0 && order[0] == 0 && order[1] == 1,
	    "a tie goes to the lower index");
	CHECK(hrw_order("other", 5, ids, NULL, 2, order) == 0 && order[0] == 0,
	    "a tie goes to the lower index (2)");
}

/* Count how many of the KEYS keys each of the three servers ids[] ranks first. */
static void
split(const char *const *ids, const unsigned *w, int count[3])
{
	char key[64];

	count[0] = count[1] = count[2] = 0;
	for (int i = 0; i < KEYS; i++) {
		int b = best_of(key_of(i, key, sizeof(key)), ids, w, 3);
		if (b >= 0)
			count[b]++;
	}
}

/* 30,000 keys over three equal servers: each gets a third, within 3 %. */
static void
test_equal_split(void)
{
	const char *ids[3] = { "10.0.0.1:143", "10.0.0.2:143", "10.0.0.3:143" };
	int count[3];

	split(ids, NULL, count);
	for (int s = 0; s < 3; s++)
		CHECK(count[s] >= KEYS / 3 * 97 / 100 && count[s] <= KEYS / 3 * 103 / 100,
		    "server %d got %d of %d keys", s, count[s], KEYS);
}

/* Weights 1:2:1 give about 25/50/25 %. */
static void
test_weighted_split(void)
{
	const char *ids[3] = { "10.0.0.1:143", "10.0.0.2:143", "10.0.0.3:143" };
	const unsigned w[3] = { 1, 2, 1 };
	const int want[3] = { KEYS / 4, KEYS / 2, KEYS / 4 };
	int count[3];

	split(ids, w, count);
	/* +-1.5 points of KEYS: five standard deviations of the 50 % share. */
	for (int s = 0; s < 3; s++)
		CHECK(abs(count[s] - want[s]) <= KEYS * 15 / 1000,
		    "server %d (weight %u) got %d of %d keys, want about %d", s, w[s], count[s],
		    KEYS, want[s]);
}

/*
 * Removing a server moves exactly its keys, each to its second choice, and
 * the rest of every key's list keeps its order.  Adding it back takes keys
 * only to it.
 */
static void
test_remove(void)
{
	const char *all[4] = { "10.0.0.1:143", "10.0.0.2:143", "10.0.0.3:143", "10.0.0.4:143" };
	const char *rest[3] = { all[0], all[2], all[3] };	/* without all[1] */
	const int back[3] = { 0, 2, 3 };	/* rest's indices in all */
	int full[4], part[3], moved = 0, owned = 0, wrong = 0, reorder = 0;
	char key[64];

	for (int i = 0; i < KEYS; i++) {
		const char *k = key_of(i, key, sizeof(key));
		if (hrw_order(k, strlen(k), all, NULL, 4, full) != 0 ||
		    hrw_order(k, strlen(k), rest, NULL, 3, part) != 0) {
			wrong++;
			continue;
		}
		owned += full[0] == 1;
		moved += back[part[0]] != full[0];
		/* full without server 1 must be part, in the same order. */
		for (int a = 0, b = 0; a < 4; a++) {
			if (full[a] == 1)
				continue;
			reorder += back[part[b++]] != full[a];
		}
		if (full[0] == 1 && back[part[0]] != full[1])
			wrong++;
	}
	CHECK(owned > 0 && moved == owned, "%d keys moved, server 1 had %d", moved, owned);
	CHECK(wrong == 0, "%d of server 1's keys did not go to their second choice", wrong);
	CHECK(reorder == 0, "%d places of the fallback lists changed", reorder);
}

/* Raising one server's weight moves keys only to that server. */
static void
test_weight_change(void)
{
	const char *ids[3] = { "10.0.0.1:143", "10.0.0.2:143", "10.0.0.3:143" };
	const unsigned before[3] = { 1, 1, 1 }, after[3] = { 1, 1, 3 };
	int moved = 0, elsewhere = 0;
	char key[64];

	for (int i = 0; i < KEYS; i++) {
		const char *k = key_of(i, key, sizeof(key));
		int a = best_of(k, ids, before, 3), b = best_of(k, ids, after, 3);
		if (a != b) {
			moved++;
			elsewhere += b != 2;
		}
	}
	/* From a third to three fifths: about 27 % of the keys move, all to server 2. */
	CHECK(moved > KEYS / 5 && moved < KEYS / 3, "%d keys moved", moved);
	CHECK(elsewhere == 0, "%d keys moved to a server whose weight did not change",
	    elsewhere);
}

/* The list follows the ids, not their places: a reordered config ranks alike. */
static void
test_config_order(void)
{
	const char *ids[4] = { "10.0.0.1:143", "10.0.0.2:143", "10.0.0.3:143", "10.0.0.4:143" };
	const char *perm[4] = { ids[2], ids[0], ids[3], ids[1] };
	const unsigned w[4] = { 1, 2, 3, 4 }, pw[4] = { 3, 1, 4, 2 };
	int a[4], b[4], differ = 0;
	char key[64];

	for (int i = 0; i < KEYS / 10; i++) {
		const char *k = key_of(i, key, sizeof(key));
		if (hrw_order(k, strlen(k), ids, w, 4, a) != 0 ||
		    hrw_order(k, strlen(k), perm, pw, 4, b) != 0) {
			differ++;
			continue;
		}
		for (int j = 0; j < 4; j++)
			differ += strcmp(ids[a[j]], perm[b[j]]) != 0;
	}
	CHECK(differ == 0, "%d places differ when the config lists the servers in another order",
	    differ);
}

int
main(void)
{
	test_pinned();
	test_score();
	test_bounds();
	test_equal_split();
	test_weighted_split();
	test_remove();
	test_weight_change();
	test_config_order();
	printf("%d checks, %d failures\n", checks, failures);
	return failures ? 1 : 0;
}
