/*
 * guard: what imapgate changes in a backend's responses, and how it
 * recognises a backend that is out of step with the session.
 *
 * Pure functions over one complete response line (no literals inside):
 * no I/O and no logging; the session applies the results and counts them.
 */
#ifndef IMAPGATE_GUARD_H
#define IMAPGATE_GUARD_H

#include <stddef.h>

#include "imap.h"

struct config;

/* Capabilities the session itself adds (a STARTTLS listener before TLS). */
#define GUARD_CAP_STARTTLS		0x01
#define GUARD_CAP_LOGINDISABLED		0x02
#define GUARD_CAP_COMPRESS		0x04	/* listen[].compress, after login, not yet active */

struct guard_out {
	char	*buf;				/* the new line, malloc'd; the caller frees */
	size_t	 len;
	char	 original[IMAP_MAX_ATOM + 1];	/* the code or status word that was rewritten */
	int	 status_changed, code_changed, caps_changed;
};

/*
 * Rewrite a status response (non-standard status, unknown code, rules) or a
 * capability list.  Returns 1 with out filled when the line changes, 0 when
 * it stays as it is, -1 when out of memory.
 */
int	guard_rewrite(const struct config *cf, const struct imap_line *l,
	    const char *line, size_t len, unsigned caps, struct guard_out *out);
/* Remove the response code (a pre-STARTTLS [CAPABILITY] in a greeting); 1 if changed. */
int	guard_drop_code(const struct imap_line *l, const char *line, size_t len,
	    struct guard_out *out);
/* Does a tagged NO/BAD's text say "wrong state" (guard.desync_patterns)? */
int	guard_is_wrong_state(const struct config *cf, const struct imap_line *l,
	    const char *line, size_t len);
/* Does an untagged OK's text look like a fresh greeting (guard.greeting_patterns)? */
int	guard_is_greeting(const struct config *cf, const struct imap_line *l,
	    const char *line, size_t len);

#endif
