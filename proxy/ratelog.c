/* ratelog: per-kind, per-second limits on log lines peers can cause (see ratelog.h). */
#include <pthread.h>
#include <time.h>

#include "log.h"
#include "ratelog.h"

/* One kind's count for the current second; workers and the main thread share it. */
struct ratelog_slot {
	pthread_mutex_t	 mu;
	time_t		 second;	/* the second counted */
	unsigned long	 n;		/* events in it */
	unsigned long	 dropped;	/* of those, not logged */
	int		 flooding;	/* the second before also dropped lines */
};

static struct ratelog_slot ratelog_slots[RATELOG_NKINDS] = {
	[RATELOG_REFUSAL] = { .mu = PTHREAD_MUTEX_INITIALIZER },
	[RATELOG_GUARD] = { .mu = PTHREAD_MUTEX_INITIALIZER },
	[RATELOG_HANDSHAKE] = { .mu = PTHREAD_MUTEX_INITIALIZER },
};

static const char *const ratelog_names[RATELOG_NKINDS] = { "refusal", "guard", "handshake" };

/* The current second, cheaply (a coarse clock is enough for a budget). */
static time_t
ratelog_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	return ts.tv_sec;
}

const char *
ratelog_name(enum ratelog_kind kind)
{
	return ratelog_names[kind];
}

/* Summarise slot's finished second if lines were left out; the caller holds its lock. */
static void
ratelog_close_second(enum ratelog_kind kind, struct ratelog_slot *slot, time_t now)
{
	if (slot->second == now)
		return;
	if (slot->dropped > 0)
		log_info("msg=rate-limited kind=%s events=%lu not_logged=%lu", ratelog_names[kind],
		    slot->n, slot->dropped);
	/*
	 * In a flood that goes on (lines were left out the second before),
	 * the summary is all: a sustained flood costs one line a second.
	 */
	slot->flooding = slot->dropped > 0 && now - slot->second == 1;
	slot->second = now;
	slot->n = slot->dropped = 0;
}

int
ratelog_allow(enum ratelog_kind kind)
{
	struct ratelog_slot *slot = &ratelog_slots[kind];
	time_t now = ratelog_now();
	int ok;

	pthread_mutex_lock(&slot->mu);
	ratelog_close_second(kind, slot, now);
	ok = ++slot->n <= RATELOG_BURST && !slot->flooding;
	if (!ok)
		slot->dropped++;
	pthread_mutex_unlock(&slot->mu);
	return ok;
}

void
ratelog_flush(void)
{
	time_t now = ratelog_now();

	for (int k = 0; k < RATELOG_NKINDS; k++) {
		pthread_mutex_lock(&ratelog_slots[k].mu);
		ratelog_close_second((enum ratelog_kind)k, &ratelog_slots[k], now);
		pthread_mutex_unlock(&ratelog_slots[k].mu);
	}
}
