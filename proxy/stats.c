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
	"shutdown",
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

/* Count one rewrite under original. */
void
stats_rewrite(const char *original)
{
	pthread_mutex_lock(&stats_lock);
	for (size_t i = 0; i < STATS_MAX_CODES; i++) {
		struct stats_code *c = &stats.rewrites[i];

		if (c->name[0] == '\0')
			snprintf(c->name, sizeof(c->name), "%s", original);
		if (strcmp(c->name, original) == 0) {
			c->count++;
			pthread_mutex_unlock(&stats_lock);
			return;
		}
	}
	stats.rewrites_other++;
	pthread_mutex_unlock(&stats_lock);
}
