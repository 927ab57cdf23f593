/*
 * logesc: peer-controlled values made safe for a log line.  Every value a
 * client or backend chooses (user, SNI, mailbox, tag, an error text) goes
 * into a line as key="..." through logesc_quote, so that it cannot end
 * its field, start another, or split the line; log.c turns the same
 * escapes back into the value's bytes for JSON.
 */
#ifndef IMAPGATE_LOGESC_H
#define IMAPGATE_LOGESC_H

#include <stddef.h>

/* Bytes logesc_quote needs for a value of n bytes, NUL included. */
#define LOGESC_SIZE(n)	(4 * (size_t)(n) + 1)

/*
 * Write v into buf as the body of a quoted value: '"' and '\' preceded by
 * '\', bytes outside printable ASCII (controls, DEL, 0x80-0xff) as \xHH
 * with lower-case hex, every other byte as itself.  A value that does not
 * fit is cut between two escapes, never inside one.  Returns buf.
 */
const char	*logesc_quote(const char *v, char *buf, size_t size);
/* Bytes logesc_json needs for a value of n bytes, NUL included. */
#define LOGESC_JSON_SIZE(n)	(6 * (n) + 1)
/* v as the body of a JSON string (any bytes give valid JSON), cut to size. */
const char	*logesc_json(const char *v, char *buf, size_t size);

#endif
