/*
 * usermap: the map file of the static login route, "KEY host:port" a line.
 *
 * KEY is a user name ("alice@example.org", "bob") or a domain ("@example.org").
 * Pure: parses text (or reads a file, bounded) into a hash table built once,
 * then answers lookups in constant time.  No logging: every problem goes
 * back to the caller with its line and column.  Messages may quote bytes of
 * the file as they are; escape them before logging.  A map is read-only
 * once built: threads may look up in it at once without a lock.
 */
#ifndef IMAPGATE_USERMAP_H
#define IMAPGATE_USERMAP_H

#include <stddef.h>

#include "netaddr.h"

#define USERMAP_MAX_FILE	(64u * 1024 * 1024)	/* bytes in a map file */
#define USERMAP_MAX_LINE	4096	/* bytes in one line, its CR LF not counted */
#define USERMAP_MAX_KEY		512	/* bytes in one key */
#define USERMAP_MAX_ENTRIES	(4u * 1024 * 1024)	/* entries in one map */
#define USERMAP_MAX_ERRORS	100	/* errors collected before giving up */
#define USERMAP_MSGLEN		160	/* bytes in one message, NUL included */

struct usermap;

struct usermap_entry {
	const char		*key;		/* as written: "Alice@example.org", "@example.org" */
	const char		*target;	/* as written: "imap1.example.org:143" */
	const struct netaddr	*addr;		/* resolved at load; len 0 when not resolved */
	int			 line;		/* where the entry stands in the file */
};

struct usermap_error {
	int	line, col;	/* 1-based (bytes); line 0, col 0: the file as a whole */
	char	msg[USERMAP_MSGLEN];
};

/*
 * The errors of one parse or load, in file order.  Held inline so that
 * reporting needs no memory; past USERMAP_MAX_ERRORS one more says the
 * rest of the file was not read.
 */
struct usermap_errors {
	size_t			n;
	struct usermap_error	v[USERMAP_MAX_ERRORS + 1];
};

/*
 * Parse a map from text[0..len) (any bytes).  resolve = 1 resolves each
 * distinct target once (it may block on DNS); 0 only checks its syntax.
 * Returns the map, or NULL with at least one error in errs.
 */
struct usermap *usermap_parse(const char *text, size_t len, int resolve,
	    struct usermap_errors *errs);
/* Read path (a regular file of at most USERMAP_MAX_FILE bytes) and parse it, resolving. */
struct usermap *usermap_load(const char *path, struct usermap_errors *errs);
/*
 * The entry for user: its own if there is one, else the one of "@domain"
 * where domain follows the last '@' of user, else NULL.  ASCII case is
 * ignored; other bytes must match exactly.
 */
const struct usermap_entry *usermap_find(const struct usermap *m, const char *user);
/* How many entries m holds. */
size_t	usermap_count(const struct usermap *m);
/* Entry i (0 <= i < count) in file order, or NULL. */
const struct usermap_entry *usermap_at(const struct usermap *m, size_t i);
/* Free m and everything its entries point to (NULL is fine). */
void	usermap_free(struct usermap *m);

#endif
