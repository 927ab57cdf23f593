/* log: leveled key=value lines on stderr. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <syslog.h>
#include <time.h>

#include "log.h"

/* Longest log line; longer ones are cut. */
#define LOG_LINE_MAX	2048

static enum config_log_level log_level = CONFIG_LOG_INFO;
static enum config_log_format log_format = CONFIG_LOG_TEXT;
static enum config_log_output log_output = CONFIG_LOG_STDERR;
static const int log_syslog_prio[] = { LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG };
static const char *const log_names[] = { "error", "warn", "info", "debug" };

/* Set the least severe level printed. */
void
log_set_level(enum config_log_level level)
{
	log_level = level;
}

/* Set format and destination; syslog is opened once. */
void
log_set_output(enum config_log_format format, enum config_log_output output)
{
	if (output == CONFIG_LOG_SYSLOG && log_output != CONFIG_LOG_SYSLOG)
		openlog("imapgate", LOG_PID | LOG_NDELAY, LOG_DAEMON);
	log_format = format;
	log_output = output;
}

/*
 * Turn "k=v k2=\"quoted v\"" into JSON members: every log line is written
 * as key=value pairs, so one formatter serves both formats.
 */
static size_t
log_kv_to_json(const char *in, char *out, size_t outlen)
{
	size_t o = 0;
	int first = 1;

#define PUT(c) do { if (o + 2 < outlen) out[o++] = (c); } while (0)
	while (*in) {
		const char *k, *eq;

		while (*in == ' ')
			in++;
		if (*in == '\0')
			break;
		k = in;
		eq = NULL;
		while (*in && *in != ' ' && *in != '=')
			in++;
		if (*in == '=')
			eq = in;
		if (!first)
			PUT(',');
		first = 0;
		PUT('"');
		for (const char *c = k; c < (eq ? eq : in); c++)
			PUT(*c);
		PUT('"');
		PUT(':');
		PUT('"');
		if (eq != NULL) {
			in = eq + 1;
			if (*in == '"') {
				in++;
				while (*in && *in != '"') {
					if (*in == '\\' && in[1] != '\0') {
						PUT('\\');
						in++;
					}
					PUT(*in);
					in++;
				}
				if (*in == '"')
					in++;
			} else {
				while (*in && *in != ' ') {
					if (*in == '\\')
						PUT('\\');
					PUT(*in);
					in++;
				}
			}
		}
		PUT('"');
	}
#undef PUT
	out[o] = '\0';
	return o;
}

/* Tell whether level is printed. */
int
log_enabled(enum config_log_level level)
{
	return level <= log_level;
}

/* Print one timestamped key=value line (or JSON object); built whole, then written once. */
void
log_msg(enum config_log_level level, const char *fmt, ...)
{
	char msg[LOG_LINE_MAX], line[LOG_LINE_MAX * 2], ts[64];
	struct timeval tv;
	struct tm tm;
	va_list ap;
	size_t n;
	int r;

	if (!log_enabled(level))
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
	if (log_format == CONFIG_LOG_JSON) {
		char body[LOG_LINE_MAX * 2];

		log_kv_to_json(msg, body, sizeof(body));
		r = snprintf(line, sizeof(line), "{\"ts\":\"%s\",\"level\":\"%s\"%s%s}",
		    ts, log_names[level], body[0] ? "," : "", body);
	} else if (log_output == CONFIG_LOG_SYSLOG)
		r = snprintf(line, sizeof(line), "level=%s %s", log_names[level], msg);
	else
		r = snprintf(line, sizeof(line), "%s level=%s %s", ts, log_names[level], msg);
	if (r < 0)
		return;
	n = (size_t)r < sizeof(line) - 1 ? (size_t)r : sizeof(line) - 2;
	if (log_output == CONFIG_LOG_SYSLOG) {
		line[n] = '\0';
		syslog(log_syslog_prio[level], "%s", line);
		return;
	}
	line[n++] = '\n';
	fwrite(line, 1, n, stderr);
}
