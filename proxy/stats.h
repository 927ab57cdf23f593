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
	STATS_BYE_KICK,			/* the control socket's kick or server drain */
	STATS_BYE_MAX,
};

/* Distinct names counted in a stats_names table; the rest go to "other". */
#define STATS_MAX_CODES	64
/* Listeners whose open sessions are counted by state. */
#define STATS_MAX_LISTENERS	64
/* Protocol states counted (enum state_proto). */
#define STATS_STATES		4
/* Command classes timed (enum imapcmd_class). */
#define STATS_CMD_CLASSES	11
/* Lookup types timed (enum config_lookup: hash, static, http). */
#define STATS_LOOKUP_TYPES	3
/* Round-trip histogram bucket bounds in microseconds; one more bucket is +Inf. */
#define STATS_RTT_BUCKETS	10

struct stats_code {
	char		name[IMAP_MAX_ATOM + 1];
	uint64_t	count;
};

/* A small table of counters by name (reasons, codes), behind a lock. */
struct stats_names {
	struct stats_code	v[STATS_MAX_CODES];
	uint64_t		other;
};

/*
 * Every worker thread updates these: use stats_add (relaxed atomics) and
 * read them with stats_get.
 */
struct stats {
	uint64_t		sessions_total;
	uint64_t		sessions_ended;
	uint64_t		open[STATS_MAX_LISTENERS][STATS_STATES];	/* gauge */
	uint64_t		guard[STATS_GUARD_MAX];
	uint64_t		bye[STATS_BYE_MAX];
	uint64_t		client_in, client_out, backend_in, backend_out;
	uint64_t		tls_handshakes;
	uint64_t		rtt[STATS_CMD_CLASSES][STATS_RTT_BUCKETS + 1];
	uint64_t		rtt_sum_us[STATS_CMD_CLASSES];
	struct stats_names	rewrites;	/* by original code */
	struct stats_names	ended;		/* sessions by end reason */
	struct stats_names	tls_failures;	/* client handshakes by failure reason */
	/* backend.route: login */
	struct stats_names	lookups;	/* by "type:outcome" */
	struct stats_names	logins;		/* by result: ok, failed, unavailable, refused */
	uint64_t		lookup_time[STATS_LOOKUP_TYPES][STATS_RTT_BUCKETS + 1];
	uint64_t		lookup_sum_us[STATS_LOOKUP_TYPES];
	uint64_t		lookup_http_reused;	/* http lookups on a kept-alive connection */
};

extern const uint64_t stats_rtt_bounds_us[STATS_RTT_BUCKETS];

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
/* Count one under name in table t. */
void		 stats_name_add(struct stats_names *t, const char *name);
/* Copy table t (under its lock) for reading. */
void		 stats_names_copy(struct stats_names *dst, const struct stats_names *t);
/* Count a rewritten response under its original code (or status word). */
void		 stats_rewrite(const char *original);
/* Count one command round trip of class cls. */
void		 stats_rtt(unsigned cls, uint64_t us);
/* Count one lookup of type (enum config_lookup) that took us. */
void		 stats_lookup_time(unsigned type, uint64_t us);

#endif
