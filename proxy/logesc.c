/* logesc: peer-controlled values made safe for a log line. */
#include <string.h>

#include "logesc.h"

/*
 * Write v into buf as an escaped body: quote and backslash behind a
 * backslash, every byte outside printable ASCII as esc (a prefix) and two
 * hex digits, cut at size.
 */
static const char *
logesc_body(const char *v, char *buf, size_t size, const char *esc)
{
	static const char hex[] = "0123456789abcdef";
	size_t o = 0, el = strlen(esc);

	if (size == 0)
		return buf;
	for (; *v != '\0' && o + el + 2 < size; v++) {
		unsigned char c = (unsigned char)*v;

		if (c == '"' || c == '\\') {
			buf[o++] = '\\';
			buf[o++] = (char)c;
		} else if (c < 0x20 || c >= 0x7f) {
			memcpy(buf + o, esc, el);
			o += el;
			buf[o++] = hex[c >> 4];
			buf[o++] = hex[c & 15];
		} else
			buf[o++] = (char)c;
	}
	buf[o] = '\0';
	return buf;
}

/* Write v into buf as a quoted value's body (\xHH escapes); see logesc.h. */
const char *
logesc_quote(const char *v, char *buf, size_t size)
{
	return logesc_body(v, buf, size, "\\x");
}

/*
 * Write v into buf as a JSON string's body: every byte outside printable
 * ASCII as \u00HH (a byte is a code point: valid JSON whatever the bytes).
 */
const char *
logesc_json(const char *v, char *buf, size_t size)
{
	return logesc_body(v, buf, size, "\\u00");
}
