/* stats: process-wide guard counters. */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "stats.h"

struct stats stats;
static pthread_mutex_t stats_lock = PTHREAD_MUTEX_INITIALIZER;	/* the code-name table */

static const char *const stats_guard_names[STATS_GUARD_MAX] = {
	"client_state", "desync_greeting", "desync_state", "backend_lost",
	"backend_lost_mid_response", "backend_timeout", "compress_refused",
	"starttls_refused", "line_too_long", "invalid_command",
};

static const char *const stats_bye_names[STATS_BYE_MAX] = {
	"unavailable", "client_state", "desync", "protocol", "timeout", "limit",
	"shutdown", "kick",
};

/* Name of guard event g. */
const char *
stats_guard_name(enum stats_guard g)
{
	return stats_guard_names[g];
}

/* Name of BYE reason b. */
const char *
stats_bye_name(enum stats_bye b)
{
	return stats_bye_names[b];
}

const uint64_t stats_rtt_bounds_us[STATS_RTT_BUCKETS] = {
	1000, 5000, 10000, 25000, 50000, 100000, 250000, 500000, 1000000, 5000000,
};

/* Count one under name. */
void
stats_name_add(struct stats_names *t, const char *name)
{
	pthread_mutex_lock(&stats_lock);
	for (size_t i = 0; i < STATS_MAX_CODES; i++) {
		struct stats_code *c = &t->v[i];

		if (c->name[0] == '\0')
			snprintf(c->name, sizeof(c->name), "%s", name);
		if (strcmp(c->name, name) == 0) {
			c->count++;
			pthread_mutex_unlock(&stats_lock);
			return;
		}
	}
	t->other++;
	pthread_mutex_unlock(&stats_lock);
}

/* Snapshot a table. */
void
stats_names_copy(struct stats_names *dst, const struct stats_names *t)
{
	pthread_mutex_lock(&stats_lock);
	memcpy(dst, t, sizeof(*dst));
	pthread_mutex_unlock(&stats_lock);
}

/* Count one rewrite under original. */
void
stats_rewrite(const char *original)
{
	stats_name_add(&stats.rewrites, original);
}

/* Count us microseconds in a histogram (buckets by stats_rtt_bounds_us) and its sum. */
static void
stats_hist(uint64_t *buckets, uint64_t *sum, uint64_t us)
{
	size_t b = 0;

	while (b < STATS_RTT_BUCKETS && us > stats_rtt_bounds_us[b])
		b++;
	stats_add(&buckets[b], 1);
	stats_add(sum, us);
}

/* One round trip of us microseconds for class cls. */
void
stats_rtt(unsigned cls, uint64_t us)
{
	if (cls < STATS_CMD_CLASSES)
		stats_hist(stats.rtt[cls], &stats.rtt_sum_us[cls], us);
}

/* Count one lookup (route: login) of type that took us. */
void
stats_lookup_time(unsigned type, uint64_t us)
{
	if (type < STATS_LOOKUP_TYPES)
		stats_hist(stats.lookup_time[type], &stats.lookup_sum_us[type], us);
}
