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

struct authhttp_url;
struct usermap;

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

enum config_client_ip {
	CONFIG_CLIENT_IP_NONE,
	CONFIG_CLIENT_IP_PROXY_V1,
	CONFIG_CLIENT_IP_PROXY_V2,
	CONFIG_CLIENT_IP_ID,
};

enum config_route {
	CONFIG_ROUTE_CONNECT,	/* a server picked at accept, its greeting relayed */
	CONFIG_ROUTE_LOGIN,	/* imapgate greets; the user's login picks the server */
};

enum config_lookup {
	CONFIG_LOOKUP_HASH,	/* rendezvous hashing over the pool */
	CONFIG_LOOKUP_STATIC,	/* a map file */
	CONFIG_LOOKUP_HTTP,	/* the nginx auth_http protocol */
};

enum config_lookup_key {
	CONFIG_LOOKUP_KEY_USER,
	CONFIG_LOOKUP_KEY_DOMAIN,
};

enum config_fallback {
	CONFIG_FALLBACK_REJECT,	/* an unmatched user fails to log in */
	CONFIG_FALLBACK_HASH,	/* an unmatched user is hashed over the pool */
};

enum config_credentials {
	CONFIG_CREDENTIALS_CLIENT,	/* replay the user's own */
	CONFIG_CREDENTIALS_MASTER,	/* log in as a master user on the user's behalf */
};

/* One network in CIDR form (listen[].trusted_proxies). */
struct config_cidr {
	int			 family;	/* AF_INET or AF_INET6 */
	unsigned char		 addr[16];
	unsigned		 prefix;
};

struct config_listen {
	char			*address;	/* as written */
	struct netaddr		 addr;
	enum config_tls_mode	 tls;
	int			 require_tls;	/* listen[].require_tls (starttls): no LOGIN before TLS */
	int			 insecure;	/* listen[].insecure: allow tls: none off loopback */
	int			 proxy_protocol;	/* listen[].proxy_protocol: PROXY v1/v2 header first */
	int			 compress;	/* listen[].compress: COMPRESS=DEFLATE at imapgate */
	char			**trusted_proxies;	/* listen[].trusted_proxies, as written */
	size_t			 ntrusted_proxies;
	struct config_cidr	*trusted;	/* parsed at load */
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
	unsigned		 weight;		/* backend.servers[].weight, default 1, 1-1000 */
	unsigned		 max_connections;	/* backend.servers[].max_connections, 0 = no limit */
	int			 line, col;
};

enum config_balance {
	CONFIG_BALANCE_ROUND_ROBIN,
	CONFIG_BALANCE_LEAST_CONNECTIONS,
	CONFIG_BALANCE_SOURCE_IP,
};

enum config_log_format {
	CONFIG_LOG_TEXT,
	CONFIG_LOG_JSON,
};

enum config_log_output {
	CONFIG_LOG_STDERR,
	CONFIG_LOG_SYSLOG,
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

	int			 tls_min_version;	/* tls.min_version: 12 ("1.2") or 13 ("1.3") */
	char			*tls_ciphers;		/* tls.ciphers (TLS 1.2 cipher list), NULL = OpenSSL's */
	char			*tls_ciphersuites;	/* tls.ciphersuites (TLS 1.3), NULL = OpenSSL's */

	enum config_tls_mode	 backend_tls;		/* backend.tls: none | implicit | starttls */
	char			*backend_ca_file;	/* backend.ca_file, NULL = system default */
	char			*backend_server_name;	/* backend.server_name: SNI and name checked */
	int			 backend_verify;	/* backend.verify (default true) */
	enum config_client_ip	 client_ip;		/* backend.client_ip */

	enum config_log_level	 log_level;
	enum config_log_format	 log_format;		/* log.format: text | json */
	enum config_log_output	 log_output;		/* log.output: stderr | syslog */

	unsigned		 workers;		/* workers: 0 = auto (one per core), else 1-64 */
	char			*user;			/* user: drop privileges to it after binding */
	char			*group;			/* group */

	char			*metrics_address;	/* metrics.address, NULL = no metrics listener */
	struct netaddr		 metrics_addr;

	enum config_balance	 balance;		/* backend.balance */
	uint64_t		 health_interval_ms;	/* backend.health.interval (default 5s) */
	uint64_t		 health_timeout_ms;	/* backend.health.timeout (default 2s) */
	unsigned		 health_rise;		/* backend.health.rise (default 2) */
	unsigned		 health_fall;		/* backend.health.fall (default 2) */
	unsigned		 connect_tries;		/* backend.connect_tries: servers tried per session (default 3) */
	char			*health_user;		/* backend.health.user: checks log in as it (NULL: no login) */
	char			*health_password_file;	/* backend.health.password_file */
	char			*health_password;	/* read from it at load; wiped when freed */

	enum config_route	 route;			/* backend.route */
	enum config_lookup	 lookup;		/* backend.lookup.type */
	enum config_lookup_key	 lookup_key;		/* backend.lookup.key */
	char			*lookup_file;		/* backend.lookup.file (static) */
	struct usermap		*usermap;		/* read from it at load */
	enum config_fallback	 lookup_fallback;	/* backend.lookup.fallback (static) */
	char			*lookup_url;		/* backend.lookup.url (http) */
	struct authhttp_url	*lookup_http;		/* parsed at load */
	uint64_t		 lookup_timeout_ms;	/* backend.lookup.timeout */
	unsigned		 lookup_keepalive;	/* backend.lookup.keepalive (http) */
	enum config_credentials	 credentials;		/* backend.login.credentials */
	char			*master_user;		/* backend.login.master_user */
	char			*master_password_file;	/* backend.login.master_password_file */
	char			*master_password;	/* read from it at load; wiped when freed */
	char			*master_separator;	/* backend.login.master_separator ("*") */
	char			*login_greeting;	/* backend.login.greeting */
	int			 login_oauth;		/* backend.login.oauth: offer XOAUTH2/OAUTHBEARER */
	uint64_t		 login_failure_delay_ms;/* timeouts.login_failure (2s) */
	unsigned		 login_failures_per_ip;	/* limits.login_failures_per_ip (0 = no limit) */

	unsigned		 max_connections;	/* limits.max_connections (default 50000) */
	unsigned		 max_connections_per_ip;/* limits.max_connections_per_ip (default 50, 0 = none) */

	uint64_t		 tls_handshake_ms;	/* timeouts.tls_handshake (10s) */
	uint64_t		 preauth_ms;		/* timeouts.preauth (60s) */
	uint64_t		 idle_ms;		/* timeouts.idle (30m) */
	uint64_t		 idle_keepalive_ms;	/* timeouts.idle_keepalive (2m, 0 = off) */
	uint64_t		 drain_spread_ms;	/* timeouts.drain_spread (5s) */
	char			*control_socket;	/* control.socket: Unix socket path, NULL = none */
	char			*control_group;		/* control.group: may use it too */
	uint64_t		 drain_ms;		/* timeouts.drain (30s) */

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
