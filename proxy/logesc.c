/* logesc: peer-controlled values made safe for a log line. */
#include <string.h>

#include "logesc.h"

/* Longest escape logesc_quote writes for one byte: \xHH. */
#define LOGESC_MAX_SEQ	4
/* Longest escape logesc_json writes for one byte: \u00HH. */
#define LOGESC_MAX_JSON	6

/* Write v into buf as a quoted value's body; see logesc.h. */
const char *
logesc_quote(const char *v, char *buf, size_t size)
{
	static const char hex[] = "0123456789abcdef";
	size_t o = 0;

	if (size == 0)
		return buf;
	for (; *v != '\0' && o + LOGESC_MAX_SEQ < size; v++) {
		unsigned char c = (unsigned char)*v;

		if (c == '"' || c == '\\') {
			buf[o++] = '\\';
			buf[o++] = (char)c;
		} else if (c < 0x20 || c >= 0x7f) {
			buf[o++] = '\\';
			buf[o++] = 'x';
			buf[o++] = hex[c >> 4];
			buf[o++] = hex[c & 15];
		} else
			buf[o++] = (char)c;
	}
	buf[o] = '\0';
	return buf;
}

/*
 * Write v into buf as a JSON string's body: quote and backslash escaped,
 * every byte outside printable ASCII as \u00HH (a byte is a code point:
 * valid JSON whatever the bytes).  Cut at size.
 */
const char *
logesc_json(const char *v, char *buf, size_t size)
{
	static const char hex[] = "0123456789abcdef";
	size_t o = 0;

	if (size == 0)
		return buf;
	for (; *v != '\0' && o + LOGESC_MAX_JSON < size; v++) {
		unsigned char c = (unsigned char)*v;

		if (c == '"' || c == '\\') {
			buf[o++] = '\\';
			buf[o++] = (char)c;
		} else if (c < 0x20 || c >= 0x7f) {
			memcpy(buf + o, "\\u00", 4);
			o += 4;
			buf[o++] = hex[c >> 4];
			buf[o++] = hex[c & 15];
		} else
			buf[o++] = (char)c;
	}
	buf[o] = '\0';
	return buf;
}
