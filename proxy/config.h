/*
 * config: the YAML configuration, read through a table of keys.
 *
 * config_load() never logs: it returns a config or collects every error
 * with its position.  Derived data (resolved addresses) is built here once.
 */
#ifndef IMAPGATE_CONFIG_H
#define IMAPGATE_CONFIG_H

#include <regex.h>
#include <stddef.h>
#include <stdint.h>

#include "netaddr.h"

enum config_tls_mode {
	CONFIG_TLS_NONE,
	CONFIG_TLS_IMPLICIT,
	CONFIG_TLS_STARTTLS,
};

enum config_log_level {
	CONFIG_LOG_ERROR,
	CONFIG_LOG_WARN,
	CONFIG_LOG_INFO,
	CONFIG_LOG_DEBUG,
};

enum config_guard_mode {
	CONFIG_GUARD_BYE,
	CONFIG_GUARD_PASS,
};

struct config_listen {
	char			*address;	/* as written */
	struct netaddr		 addr;
	enum config_tls_mode	 tls;
	int			 line, col;	/* position of the entry */
};

struct config_cert {
	char			*cert;
	char			*key;
	int			 line, col;
};

struct config_server {
	char			*address;
	struct netaddr		 addr;
	int			 line, col;
};

/* Status words a rewrite rule can match or set. */
enum config_status {
	CONFIG_STATUS_ANY,	/* match only: any status */
	CONFIG_STATUS_OK,
	CONFIG_STATUS_NO,
	CONFIG_STATUS_BAD,
	CONFIG_STATUS_BYE,
	CONFIG_STATUS_PREAUTH,
	CONFIG_STATUS_OTHER,	/* match only: a tagged word that is not OK/NO/BAD */
	CONFIG_STATUS_KEEP,	/* set only: leave the status as it is */
};

/* rewrite.rules[]: the first rule whose match holds sets status and code. */
struct config_rule {
	enum config_status	 match_status;	/* rewrite.rules[].match.status, default any */
	char			*match_code;	/* .match.code: an atom, "none" (no code), NULL = any */
	char			*match_text;	/* .match.text: POSIX extended regex, NULL = any */
	regex_t			 match_re;	/* compiled at load (case-insensitive) */
	int			 has_re;
	enum config_status	 set_status;	/* rewrite.rules[].set.status, default keep */
	char			*set_code;	/* .set.code: an atom, "none" = remove, NULL = keep */
	int			 line, col;
};

struct config {
	char			*path;

	struct config_listen	*listen;
	size_t			 nlisten;

	struct config_cert	*certs;
	size_t			 ncerts;

	struct config_server	*servers;
	size_t			 nservers;

	enum config_log_level	 log_level;

	size_t			 max_line;		/* limits.max_line */
	size_t			 buffer;		/* limits.buffer */
	uint64_t		 backend_connect_ms;	/* timeouts.backend_connect */
	uint64_t		 backend_response_ms;	/* timeouts.backend_response */

	enum config_guard_mode	 guard_client_state;	/* guard.client_state: bye | pass */
	enum config_guard_mode	 guard_desync;		/* guard.desync: bye | pass */
	char			**desync_patterns;	/* guard.desync_patterns (regex); defaults when absent */
	size_t			 ndesync_patterns;
	regex_t			*desync_re;		/* compiled at load */
	char			**greeting_patterns;	/* guard.greeting_patterns (regex) */
	size_t			 ngreeting_patterns;
	regex_t			*greeting_re;

	int			 rewrite_keep_unknown;	/* rewrite.unknown_codes: strip (0) | keep (1) */
	char			**allow_codes;		/* rewrite.allow_codes: extra codes let through */
	size_t			 nallow_codes;
	struct config_rule	*rules;			/* rewrite.rules[] */
	size_t			 nrules;

	char			**cap_remove;		/* capabilities.remove */
	size_t			 ncap_remove;
	char			**cap_add;		/* capabilities.add */
	size_t			 ncap_add;
};

struct config_error {
	char	*file;
	int	 line, col;	/* 1-based; 0 when the error has no position */
	char	*msg;
};

struct config_errors {
	struct config_error	*v;
	size_t			 n;
};

/* Load and check path; on any error return NULL and fill errs. */
struct config	*config_load(const char *path, struct config_errors *errs);
/* Free a configuration returned by config_load. */
void		 config_free(struct config *cf);
/* Free the error list filled by config_load. */
void		 config_errors_free(struct config_errors *errs);

/* Parse a duration ("500ms", "30s", "5m", "1h", bare number = seconds) into ms. */
int		 config_parse_duration(const char *s, uint64_t *ms);
/* Parse a size ("512", "64KiB", "16MiB", "1GiB") into bytes. */
int		 config_parse_size(const char *s, uint64_t *bytes);

#endif
