/*
 * stats: process-wide counters of what the guard did, kept for the
 * summary lines and for the metrics exporter.
 */
#ifndef IMAPGATE_STATS_H
#define IMAPGATE_STATS_H

#include <stdint.h>

#include "imap.h"

enum stats_guard {
	STATS_GUARD_CLIENT_STATE,	/* command before login: BYE */
	STATS_GUARD_DESYNC_GREETING,	/* backend greeted again */
	STATS_GUARD_DESYNC_STATE,	/* backend answered a valid command with a wrong-state error */
	STATS_GUARD_BACKEND_LOST,	/* backend gone at a response boundary: BYE */
	STATS_GUARD_BACKEND_LOST_MID,	/* backend gone inside a response: closed without BYE */
	STATS_GUARD_BACKEND_TIMEOUT,	/* a command unanswered for timeouts.backend_response */
	STATS_GUARD_COMPRESS_REFUSED,
	STATS_GUARD_STARTTLS_REFUSED,
	STATS_GUARD_LINE_TOOLONG,
	STATS_GUARD_INVALID_COMMAND,
	STATS_GUARD_MAX,
};

enum stats_bye {
	STATS_BYE_UNAVAILABLE,		/* backend unavailable or lost */
	STATS_BYE_CLIENT_STATE,
	STATS_BYE_DESYNC,
	STATS_BYE_PROTOCOL,		/* unreadable client stream */
	STATS_BYE_TIMEOUT,		/* autologout: preauth or idle */
	STATS_BYE_LIMIT,		/* too many connections */
	STATS_BYE_SHUTDOWN,		/* drain on SIGTERM */
	STATS_BYE_MAX,
};

/* Distinct original codes counted by name; the rest go to "other". */
#define STATS_MAX_CODES	64

struct stats_code {
	char		name[IMAP_MAX_ATOM + 1];
	uint64_t	count;
};

/*
 * Every worker thread updates these: use stats_add (relaxed atomics) and
 * read them with stats_get.
 */
struct stats {
	uint64_t		sessions_total;
	uint64_t		guard[STATS_GUARD_MAX];
	uint64_t		bye[STATS_BYE_MAX];
	struct stats_code	rewrites[STATS_MAX_CODES];
	uint64_t		rewrites_other;
};

extern struct stats stats;

/* Add n to a counter from any thread. */
static inline void
stats_add(uint64_t *c, uint64_t n)
{
	__atomic_fetch_add(c, n, __ATOMIC_RELAXED);
}

/* Read a counter written by other threads. */
static inline uint64_t
stats_get(const uint64_t *c)
{
	return __atomic_load_n(c, __ATOMIC_RELAXED);
}

/* Name of a guard event kind, for logs and metrics. */
const char	*stats_guard_name(enum stats_guard g);
/* Name of a BYE reason. */
const char	*stats_bye_name(enum stats_bye b);
/* Count a rewritten response under its original code (or status word). */
void		 stats_rewrite(const char *original);

#endif
