/* log: leveled key=value lines on stderr (or syslog). */
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <syslog.h>
#include <time.h>

#include "log.h"

/* Longest log line; longer ones are cut. */
#define LOG_LINE_MAX	2048
/* Room around a line's fields: timestamp, level, and in JSON the braces. */
#define LOG_WRAP_MAX	128

/*
 * Level, format and output, 8 bits each, in one atomic word.  The main
 * thread changes them on SIGHUP while the workers log: one word means no
 * data race, and every line is built from one consistent set (never the
 * new format with the old output).  A line loads the word once.  The
 * store is a release and the load in log_msg an acquire, so the openlog()
 * done before switching to syslog is seen by every thread that logs there.
 */
#define LOG_PACK(l, f, o)	((unsigned)(l) | (unsigned)(f) << 8 | (unsigned)(o) << 16)
#define LOG_LEVEL(w)		((enum config_log_level)((w) & 0xff))
#define LOG_FORMAT(w)		((enum config_log_format)((w) >> 8 & 0xff))
#define LOG_OUTPUT(w)		((enum config_log_output)((w) >> 16 & 0xff))
#define LOG_LEVEL_MASK		LOG_PACK(0xff, 0, 0)
#define LOG_DEST_MASK		LOG_PACK(0, 0xff, 0xff)

static _Atomic unsigned log_settings =
    LOG_PACK(CONFIG_LOG_INFO, CONFIG_LOG_TEXT, CONFIG_LOG_STDERR);
static const int log_syslog_prio[] = { LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG };
static const char *const log_names[] = { "error", "warn", "info", "debug" };

/* Replace the bits of mask in the settings with bits (any thread). */
static void
log_update(unsigned mask, unsigned bits)
{
	unsigned old = atomic_load_explicit(&log_settings, memory_order_relaxed);

	while (!atomic_compare_exchange_weak_explicit(&log_settings, &old,
	    (old & ~mask) | (bits & mask), memory_order_release, memory_order_relaxed))
		;
}

/* Open syslog before the first line goes there (openlog twice is harmless). */
static void
log_open_output(enum config_log_output output)
{
	unsigned w = atomic_load_explicit(&log_settings, memory_order_relaxed);

	if (output == CONFIG_LOG_SYSLOG && LOG_OUTPUT(w) != CONFIG_LOG_SYSLOG)
		openlog("imapgate", LOG_PID | LOG_NDELAY, LOG_DAEMON);
}

/* Set level, format and output in one store. */
void
log_configure(enum config_log_level level, enum config_log_format format,
    enum config_log_output output)
{
	log_open_output(output);
	log_update(LOG_LEVEL_MASK | LOG_DEST_MASK, LOG_PACK(level, format, output));
}

/* Set the least severe level printed. */
void
log_set_level(enum config_log_level level)
{
	log_update(LOG_LEVEL_MASK, LOG_PACK(level, 0, 0));
}

/* Set format and destination; syslog is opened once. */
void
log_set_output(enum config_log_format format, enum config_log_output output)
{
	log_open_output(output);
	log_update(LOG_DEST_MASK, LOG_PACK(0, format, output));
}

/* Room kept free in the JSON body to close a member cut short: '":""' and NUL. */
#define LOG_JSON_RESERVE	5

/* A JSON body being written into a fixed buffer; once full, nothing more goes in. */
struct log_json {
	char	*out;
	size_t	 len, o;
	int	 full;
};

/* Append n bytes if they fit with LOG_JSON_RESERVE to spare; otherwise stop for good. */
static void
log_json_put(struct log_json *j, const char *s, size_t n)
{
	if (j->full || j->o + n + LOG_JSON_RESERVE > j->len) {
		j->full = 1;
		return;
	}
	memcpy(j->out + j->o, s, n);
	j->o += n;
}

/*
 * Append one byte of a key or value inside a JSON string: a byte is one
 * code point (U+0000..U+00FF), so the bytes of any value come back
 * exactly (encode as Latin-1) and the line is valid UTF-8 whatever the
 * value holds.  Quote, backslash, control bytes and bytes past ASCII are
 * escaped.
 */
static void
log_json_byte(struct log_json *j, unsigned char c)
{
	char esc[8];

	if (c == '"' || c == '\\') {
		esc[0] = '\\';
		esc[1] = (char)c;
		log_json_put(j, esc, 2);
	} else if (c < 0x20 || c >= 0x7f) {
		snprintf(esc, sizeof(esc), "\\u%04x", c);
		log_json_put(j, esc, 6);
	} else
		log_json_put(j, (const char *)&c, 1);
}

/* The value of hex digit c, or -1. */
static int
log_hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/*
 * Turn "k=v k2=\"quoted v\"" into JSON members: every log line is written
 * as key=value pairs, so one formatter serves both formats.  A quoted
 * value's escapes (\" \\ \xHH, written by logesc_quote) are undone, so the
 * JSON string holds the value's own bytes; anything else is copied byte
 * for byte.  Whatever the input, the output is valid JSON: a member cut
 * short by the buffer is closed, never left open.
 */
static size_t
log_kv_to_json(const char *in, char *out, size_t outlen)
{
	struct log_json j = { out, outlen, 0, 0 };
	enum { LOG_J_OUT, LOG_J_KEY, LOG_J_VALUE } where = LOG_J_OUT;
	int first = 1;

	while (*in != '\0' && !j.full) {
		while (*in == ' ')
			in++;
		if (*in == '\0')
			break;
		log_json_put(&j, first ? "\"" : ",\"", first ? 1 : 2);
		if (j.full)
			break;
		first = 0;
		where = LOG_J_KEY;
		for (; *in != '\0' && *in != ' ' && *in != '='; in++)
			log_json_byte(&j, (unsigned char)*in);
		log_json_put(&j, "\":\"", 3);
		if (j.full)
			break;
		where = LOG_J_VALUE;
		if (*in == '=' && in[1] == '"') {
			for (in += 2; *in != '\0' && *in != '"' && !j.full; in++) {
				int hi, lo;

				if (*in != '\\' || in[1] == '\0') {
					log_json_byte(&j, (unsigned char)*in);
					continue;
				}
				in++;
				if (*in == 'x' && (hi = log_hexval(in[1])) >= 0 &&
				    (lo = log_hexval(in[2])) >= 0) {
					log_json_byte(&j, (unsigned char)(hi << 4 | lo));
					in += 2;
				} else
					log_json_byte(&j, (unsigned char)*in);
			}
			if (*in == '"')
				in++;
		} else if (*in == '=') {
			for (in++; *in != '\0' && *in != ' ' && !j.full; in++)
				log_json_byte(&j, (unsigned char)*in);
		}
		log_json_put(&j, "\"", 1);
		if (!j.full)
			where = LOG_J_OUT;
	}
	/* The reserve holds what closes a member the buffer cut short. */
	if (where == LOG_J_KEY) {
		memcpy(out + j.o, "\":\"\"", 4);
		j.o += 4;
	} else if (where == LOG_J_VALUE)
		out[j.o++] = '"';
	out[j.o] = '\0';
	return j.o;
}

/* Tell whether level is printed. */
int
log_enabled(enum config_log_level level)
{
	return level <= LOG_LEVEL(atomic_load_explicit(&log_settings, memory_order_relaxed));
}

/* Print one timestamped key=value line (or JSON object); built whole, then written once. */
void
log_msg(enum config_log_level level, const char *fmt, ...)
{
	char msg[LOG_LINE_MAX], line[LOG_LINE_MAX * 2 + LOG_WRAP_MAX], ts[64];
	struct timeval tv;
	struct tm tm;
	va_list ap;
	unsigned w = atomic_load_explicit(&log_settings, memory_order_acquire);
	size_t n;
	int r;

	if (level > LOG_LEVEL(w))
		return;
	va_start(ap, fmt);
	r = vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (r < 0)
		return;
	/* Control characters would split or forge lines: show them escaped. */
	for (char *c = msg; *c; c++)
		if ((unsigned char)*c < 0x20 || *c == 0x7f)
			*c = '?';
	gettimeofday(&tv, NULL);
	gmtime_r(&tv.tv_sec, &tm);
	n = strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(ts + n, sizeof(ts) - n, ".%03dZ", (int)(tv.tv_usec / 1000));
	if (LOG_FORMAT(w) == CONFIG_LOG_JSON) {
		char body[LOG_LINE_MAX * 2];

		log_kv_to_json(msg, body, sizeof(body));
		r = snprintf(line, sizeof(line), "{\"ts\":\"%s\",\"level\":\"%s\"%s%s}",
		    ts, log_names[level], body[0] ? "," : "", body);
	} else if (LOG_OUTPUT(w) == CONFIG_LOG_SYSLOG)
		r = snprintf(line, sizeof(line), "level=%s %s", log_names[level], msg);
	else
		r = snprintf(line, sizeof(line), "%s level=%s %s", ts, log_names[level], msg);
	if (r < 0)
		return;
	n = (size_t)r < sizeof(line) - 1 ? (size_t)r : sizeof(line) - 2;
	if (LOG_OUTPUT(w) == CONFIG_LOG_SYSLOG) {
		line[n] = '\0';
		syslog(log_syslog_prio[level], "%s", line);
		return;
	}
	line[n++] = '\n';
	fwrite(line, 1, n, stderr);
}
