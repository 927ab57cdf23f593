/* log: leveled key=value logging to stderr. */
#ifndef IMAPGATE_LOG_H
#define IMAPGATE_LOG_H

#include "config.h"

/*
 * The settings are one atomic word: the main thread changes them on a
 * reload while worker threads log, and every line is written with one
 * consistent level, format and output.
 */
/* Set level, format and output at once (startup, reload). */
void	log_configure(enum config_log_level level, enum config_log_format format,
	    enum config_log_output output);
/* Set the least severe level that is printed (format and output unchanged). */
void	log_set_level(enum config_log_level level);
/* Choose text or JSON lines, on stderr or syslog (level unchanged). */
void	log_set_output(enum config_log_format format, enum config_log_output output);
/* Is level printed at all (to skip building expensive lines)? Any thread. */
int	log_enabled(enum config_log_level level);
/* Print one line "ts level=L msg" with printf-style key=value fields. */
void	log_msg(enum config_log_level level, const char *fmt, ...)
	    __attribute__((format(printf, 2, 3)));

#define log_error(...)	log_msg(CONFIG_LOG_ERROR, __VA_ARGS__)
#define log_warn(...)	log_msg(CONFIG_LOG_WARN, __VA_ARGS__)
#define log_info(...)	log_msg(CONFIG_LOG_INFO, __VA_ARGS__)
#define log_debug(...)	do { if (log_enabled(CONFIG_LOG_DEBUG)) \
		log_msg(CONFIG_LOG_DEBUG, __VA_ARGS__); } while (0)

#endif
