/* log: leveled key=value lines on stderr. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

#include "log.h"

static enum config_log_level log_level = CONFIG_LOG_INFO;
static const char *const log_names[] = { "error", "warn", "info", "debug" };

/* Set the least severe level printed. */
void
log_set_level(enum config_log_level level)
{
	log_level = level;
}

/* Tell whether level is printed. */
int
log_enabled(enum config_log_level level)
{
	return level <= log_level;
}

/* Print one timestamped key=value line; the line is built whole, then written once. */
void
log_msg(enum config_log_level level, const char *fmt, ...)
{
	char line[2048];
	struct timeval tv;
	struct tm tm;
	va_list ap;
	size_t n;
	int r;

	if (!log_enabled(level))
		return;
	gettimeofday(&tv, NULL);
	gmtime_r(&tv.tv_sec, &tm);
	n = strftime(line, sizeof(line), "%Y-%m-%dT%H:%M:%S", &tm);
	r = snprintf(line + n, sizeof(line) - n, ".%03dZ level=%s ",
	    (int)(tv.tv_usec / 1000), log_names[level]);
	if (r > 0)
		n += (size_t)r;
	va_start(ap, fmt);
	r = vsnprintf(line + n, sizeof(line) - n - 1, fmt, ap);
	va_end(ap);
	if (r > 0)
		n += (size_t)r < sizeof(line) - n - 1 ? (size_t)r : sizeof(line) - n - 2;
	line[n++] = '\n';
	fwrite(line, 1, n, stderr);
}
