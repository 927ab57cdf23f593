/*
 * ratelog: log lines for events a client can trigger at will (refused
 * connections, refused commands, guard events), limited per kind: the
 * first RATELOG_BURST of each second are logged, the rest only counted,
 * and one summary line per kind and second says how many were left out;
 * while a flood goes on from one second to the next, only the summary.
 * Metrics count every event regardless (the caller's stats).
 */
#ifndef IMAPGATE_RATELOG_H
#define IMAPGATE_RATELOG_H

/* Lines of one kind logged per second before the rest are only counted. */
#define RATELOG_BURST	5

enum ratelog_kind {
	RATELOG_REFUSAL,	/* a connection refused by a limit */
	RATELOG_GUARD,		/* a guard event (refused command, invalid line, ...) */
	RATELOG_HANDSHAKE,	/* a connection that ended before its TLS handshake was done */
	RATELOG_NKINDS
};

/* Count one event of kind; returns 1 if its log line may be written now. */
int	ratelog_allow(enum ratelog_kind kind);
/* Write the summary lines of the seconds that ended (the main thread calls it each second). */
void	ratelog_flush(void);
/* Name of a kind, for the summary line. */
const char *ratelog_name(enum ratelog_kind kind);

#endif
