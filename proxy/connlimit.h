/*
 * connlimit: connection counts across all workers, in total and per client
 * address (limits.max_connections, limits.max_connections_per_ip).
 */
#ifndef IMAPGATE_CONNLIMIT_H
#define IMAPGATE_CONNLIMIT_H

#include <sys/socket.h>

struct connlimit;

enum connlimit_verdict {
	CONNLIMIT_OK,
	CONNLIMIT_TOTAL,		/* limits.max_connections reached */
	CONNLIMIT_PER_IP,		/* limits.max_connections_per_ip reached for this address */
};

/* A new table for max_total sessions, max_per_ip per address (0 = no limit). */
struct connlimit	*connlimit_new(unsigned max_total, unsigned max_per_ip);
/* Change the limits (a reload); counts are kept. */
void		 connlimit_set_max(struct connlimit *l, unsigned max_total, unsigned max_per_ip);
/* Free the table. */
void		 connlimit_free(struct connlimit *l);
/* Take a slot for a client at sa; on CONNLIMIT_OK the caller must connlimit_release it. */
enum connlimit_verdict connlimit_acquire(struct connlimit *l, const struct sockaddr *sa);
/* Give back the slot taken for sa. */
void		 connlimit_release(struct connlimit *l, const struct sockaddr *sa);
/*
 * Count a failed login from sa (which holds a session); returns its
 * failures in the last CONNLIMIT_FAIL_WINDOW seconds, this one included.
 * They are remembered after its sessions end, within a bound.
 */
unsigned	 connlimit_login_failed(struct connlimit *l, const struct sockaddr *sa);
/* Failed logins from sa in the window. */
unsigned	 connlimit_login_failures(struct connlimit *l, const struct sockaddr *sa);
/* Sessions counted now. */
unsigned	 connlimit_total(struct connlimit *l);

#endif
