/* config: the YAML configuration, read through a table of keys. */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <grp.h>
#include <inttypes.h>
#include <limits.h>
#include <netinet/in.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <yaml.h>

#include "authhttp.h"
#include "config.h"
#include "netaddr.h"
#include "usermap.h"
#include "tls.h"

#define CONFIG_MAX_FILE		(4u * 1024 * 1024)	/* bytes of YAML read at most */
#define CONFIG_MAX_ENTRIES	1024	/* entries in any one list */
#define CONFIG_MAX_KEYLEN	64	/* bytes in one key name */
#define CONFIG_MAX_KEYS		256	/* keys in one mapping */
#define CONFIG_MAX_PATH		256	/* bytes in a dotted key path */
#define CONFIG_MAX_ERRORS	200	/* errors collected before giving up */
#define CONFIG_MAX_SUBMAPS	16	/* nested mappings remembered per scope */
#define CONFIG_MSGLEN		512	/* bytes in one error message */
#define CONFIG_MAX_ATOM		128	/* bytes in one response code or capability atom */
#define CONFIG_MAX_REGEX	1024	/* bytes in one regular expression */
#define CONFIG_MAX_SECRET	1024	/* bytes in a password file */
#define CONFIG_MAX_DEPTH	16	/* YAML mappings and lists nested in one another */
#define CONFIG_MAX_NODES	262144	/* YAML scalars, mappings and lists in the file */
#define CONFIG_REGEX_MAX_COUNT	100	/* largest m or n of a {m,n} repetition */
#define CONFIG_REGEX_MAX_DEPTH	16	/* parentheses nested in one regular expression */
#define CONFIG_REGEX_MAX_ANCHORS	8	/* ^ $ \b ... in one expression, copies counted */
#define CONFIG_REGEX_ANCHOR_UNITS	16	/* what one anchor adds to the compiled size */
#define CONFIG_REGEX_MAX_NESTED	128	/* units of nested optional parts beside an anchor */
#define CONFIG_REGEX_MAX_COST	2048	/* compiled size of one expression (see config_regex_cost) */
#define CONFIG_REGEX_MAX_TOTAL	32768	/* compiled size of all expressions of one load */
#define CONFIG_REGEX_COST_CAP	((uint64_t)UINT32_MAX)	/* estimates saturate here */
#define CONFIG_REGEX_ECHO	48	/* bytes of an expression quoted in its message */
#define CONFIG_MAX_HOSTNAME	253	/* bytes in backend.server_name (RFC 1035) */
#define CONFIG_MAX_CIDR		64	/* bytes in one trusted_proxies entry */
#define CONFIG_NOPOS		((size_t)-1)

#define CONFIG_XSTR(x)	#x
#define CONFIG_STR(x)	CONFIG_XSTR(x)

#define KIB	((uint64_t)1024)
#define MIB	(KIB * 1024)
#define GIB	(MIB * 1024)

enum config_type {
	CFT_STRING,	/* char * */
	CFT_PATH,	/* char *, relative to the config file's directory */
	CFT_ENUM,	/* int-sized enum, from words */
	CFT_DURATION,	/* uint64_t milliseconds */
	CFT_SIZE,	/* size_t bytes */
	CFT_UINT,	/* unsigned; words (optional) name special values */
	CFT_BOOL,	/* int, 0 or 1 */
	CFT_ADDR,	/* char * at off, struct netaddr at off2 */
	CFT_STRLIST,	/* char ** at off, size_t count at off2 */
	CFT_ATOMLIST,	/* like STRLIST; each an IMAP atom, stored upper-case */
	CFT_REGEXLIST,	/* like STRLIST; regex_t array (one per entry) at off3 */
	CFT_CIDRLIST,	/* like STRLIST; struct config_cidr array (one per entry) at off3 */
	CFT_REGEX,	/* char * at off, regex_t at off2, int "compiled" at off3 */
	CFT_CODE,	/* char *: a response code atom (upper-case) or "none" */
	CFT_LIST,	/* array of mappings at off, size_t count at off2 */
};

struct config_word {
	const char	*word;
	int		 value;
	const char	*reject;	/* non-NULL: the word is known but refused */
};

struct config_loader;
struct config_scope;

/*
 * One row per key.  The path names the key the way messages do, with "[]"
 * for "each entry of this list"; a key under "x[]." lives in the entry
 * struct of list x, every other key in struct config.  Mappings that only
 * group keys (tls, log, rewrite.rules[].match) need no row of their own:
 * any path that prefixes a row's path is a mapping.
 */
struct config_key {
	const char		*path;
	enum config_type	 type;
	int			 required;
	int64_t			 min, max;	/* UINT/SIZE/DURATION value bounds (set both
						   for UINT); entry counts for LIST */
	const char		*def;		/* default, in the syntax of the file */
	const char *const	*defs;		/* string lists: default entries, NULL-ended */
	size_t			 off;		/* the value, in the scope's struct */
	size_t			 off2;		/* count (lists), struct netaddr (ADDR),
						   regex_t (REGEX) */
	size_t			 off3;		/* REGEXLIST: regex_t *; REGEX: int flag */
	size_t			 elemsize;	/* LIST: size of one entry */
	size_t			 lineoff, coloff; /* LIST: entry position, or NOPOS */
	const struct config_word *words;	/* ENUM; UINT: words besides numbers */
	int			 passive;	/* ADDR: a listening address */
	/* LIST: called after each entry is read, for checks across its keys. */
	void			(*check)(struct config_loader *, struct config_scope *);
};

static const struct config_word config_tls_words[] = {
	{ "implicit", CONFIG_TLS_IMPLICIT, NULL },
	{ "none", CONFIG_TLS_NONE, NULL },
	{ "starttls", CONFIG_TLS_STARTTLS, NULL },
	{ NULL, 0, NULL },
};

/* RFC 8996 deprecates TLS 1.0 and 1.1; they are named so that the refusal says why. */
static const struct config_word config_tls_version_words[] = {
	{ "1.2", 12, NULL },
	{ "1.3", 13, NULL },
	{ "1.0", 0, "is refused: TLS 1.0 is deprecated (RFC 8996); use 1.2 or 1.3" },
	{ "1.1", 0, "is refused: TLS 1.1 is deprecated (RFC 8996); use 1.2 or 1.3" },
	{ NULL, 0, NULL },
};

static const struct config_word config_client_ip_words[] = {
	{ "none", CONFIG_CLIENT_IP_NONE, NULL },
	{ "proxy-v1", CONFIG_CLIENT_IP_PROXY_V1, NULL },
	{ "proxy-v2", CONFIG_CLIENT_IP_PROXY_V2, NULL },
	{ "id", CONFIG_CLIENT_IP_ID, NULL },
	{ NULL, 0, NULL },
};

static const struct config_word config_balance_words[] = {
	{ "round-robin", CONFIG_BALANCE_ROUND_ROBIN, NULL },
	{ "least-connections", CONFIG_BALANCE_LEAST_CONNECTIONS, NULL },
	{ "source-ip", CONFIG_BALANCE_SOURCE_IP, NULL },
	{ NULL, 0, NULL },
};

static const struct config_word config_route_words[] = {
	{ "connect", CONFIG_ROUTE_CONNECT, NULL },
	{ "login", CONFIG_ROUTE_LOGIN, NULL },
	{ NULL, 0, NULL },
};

static const struct config_word config_lookup_words[] = {
	{ "hash", CONFIG_LOOKUP_HASH, NULL },
	{ "static", CONFIG_LOOKUP_STATIC, NULL },
	{ "http", CONFIG_LOOKUP_HTTP, NULL },
	{ NULL, 0, NULL },
};

static const struct config_word config_lookup_key_words[] = {
	{ "user", CONFIG_LOOKUP_KEY_USER, NULL },
	{ "domain", CONFIG_LOOKUP_KEY_DOMAIN, NULL },
	{ NULL, 0, NULL },
};

static const struct config_word config_fallback_words[] = {
	{ "reject", CONFIG_FALLBACK_REJECT, NULL },
	{ "hash", CONFIG_FALLBACK_HASH, NULL },
	{ NULL, 0, NULL },
};

static const struct config_word config_credentials_words[] = {
	{ "client", CONFIG_CREDENTIALS_CLIENT, NULL },
	{ "master", CONFIG_CREDENTIALS_MASTER, NULL },
	{ NULL, 0, NULL },
};

static const struct config_word config_log_format_words[] = {
	{ "text", CONFIG_LOG_TEXT, NULL },
	{ "json", CONFIG_LOG_JSON, NULL },
	{ NULL, 0, NULL },
};

static const struct config_word config_log_output_words[] = {
	{ "stderr", CONFIG_LOG_STDERR, NULL },
	{ "syslog", CONFIG_LOG_SYSLOG, NULL },
	{ NULL, 0, NULL },
};

/* workers: "auto" is one worker per core, stored as 0. */
static const struct config_word config_workers_words[] = {
	{ "auto", 0, NULL },
	{ NULL, 0, NULL },
};

static const struct config_word config_log_words[] = {
	{ "error", CONFIG_LOG_ERROR, NULL },
	{ "warn", CONFIG_LOG_WARN, NULL },
	{ "info", CONFIG_LOG_INFO, NULL },
	{ "debug", CONFIG_LOG_DEBUG, NULL },
	{ NULL, 0, NULL },
};

static const struct config_word config_guard_words[] = {
	{ "bye", CONFIG_GUARD_BYE, NULL },
	{ "pass", CONFIG_GUARD_PASS, NULL },
	{ NULL, 0, NULL },
};

static const struct config_word config_unknown_code_words[] = {
	{ "strip", 0, NULL },
	{ "keep", 1, NULL },
	{ NULL, 0, NULL },
};

static const struct config_word config_match_status_words[] = {
	{ "any", CONFIG_STATUS_ANY, NULL },
	{ "ok", CONFIG_STATUS_OK, NULL },
	{ "no", CONFIG_STATUS_NO, NULL },
	{ "bad", CONFIG_STATUS_BAD, NULL },
	{ "bye", CONFIG_STATUS_BYE, NULL },
	{ "preauth", CONFIG_STATUS_PREAUTH, NULL },
	{ "other", CONFIG_STATUS_OTHER, NULL },
	{ NULL, 0, NULL },
};

/*
 * Turning an answer into OK would tell a client that a failed command
 * succeeded (it would then trust data it never got), and PREAUTH only
 * exists as a greeting: both are refused, not silently ignored.
 */
static const struct config_word config_set_status_words[] = {
	{ "no", CONFIG_STATUS_NO, NULL },
	{ "bad", CONFIG_STATUS_BAD, NULL },
	{ "bye", CONFIG_STATUS_BYE, NULL },
	{ "keep", CONFIG_STATUS_KEEP, NULL },
	{ "ok", 0, "is refused: imapgate never turns an answer into OK (a client would "
	  "take a failed command for a success); use no, bad, bye or keep" },
	{ "preauth", 0, "is refused: PREAUTH is only valid as a greeting; use no, bad, bye "
	  "or keep" },
	{ NULL, 0, NULL },
};

/*
 * guard.desync_patterns when the key is absent: the texts servers put in a
 * tagged NO/BAD when a command arrives in a state they do not accept it in.
 * Each must be specific to that situation: a pattern that also matches an
 * ordinary error (a bad argument, a missing mailbox) would end healthy
 * sessions.  Matched case-insensitively against the text after the status
 * word and response code.
 */
static const char *const config_desync_defaults[] = {
	/* WildDuck (imap-core): "TAG BAD SELECT not allowed now", any command outside its states. */
	"^[^ ]+( [^ ]+)? not allowed now$",
	/* Dovecot imap, after login: "TAG BAD No mailbox selected (0.001 + 0.000 secs)." */
	"^No mailbox selected",
	/* Cyrus imapd: a command that needs login, sent before it. */
	"^Please login first$",
	/* Cyrus imapd: a command that needs a selected mailbox, sent without one. */
	"^Please select a mailbox first$",
	/*
	 * Not here: Dovecot imap-login answers a SELECT before login with
	 * "Error in IMAP command received by server.", the same text it gives
	 * for a malformed LOGIN, and Courier uses that text for every error in
	 * every state; Dovecot itself ends such a session with "* BYE Too many
	 * invalid IMAP commands." after the third.  docs/configuration.md shows
	 * how to add it for a Dovecot-only deployment.
	 */
	NULL,
};

/*
 * guard.greeting_patterns when the key is absent: greeting texts, matched
 * case-insensitively against the text of an untagged OK (after any
 * response code) that arrives after the greeting, whether or not commands
 * are in flight (a balancer that reconnects to a restarted server delivers
 * the new greeting while the client waits for an answer).
 */
static const char *const config_greeting_defaults[] = {
	/* WildDuck: "* OK WildDuck IMAP Server ready for requests from 192.0.2.7 <id>". */
	" ready for requests from ",
	/* Dovecot: "* OK [CAPABILITY ...] Dovecot ready." ("Dovecot (Debian) ready." on Debian). */
	"^Dovecot( \\([^)]*\\))? ready\\.?$",
	/* Cyrus imapd: "* OK [CAPABILITY ...] mail.example.org Cyrus IMAP v3.6.1 server ready". */
	"Cyrus IMAP.* server ready$",
	/* Cyrus imapd with serverinfo: min: "* OK [CAPABILITY ...] mail.example.org server ready"
	 * (serverinfo: off sends just "server ready": config/presets/cyrus.yaml). */
	"^[^ ]+ server ready$",
	/* Courier-IMAP: "* OK [CAPABILITY ...] Courier-IMAP ready. Copyright 1998-2018 ...". */
	"^Courier-IMAP ready\\.",
	NULL,
};

static void	config_cert_check(struct config_loader *, struct config_scope *);
static void	config_listen_check(struct config_loader *, struct config_scope *);

#define LIST_OF(stype, field, nfield, etype)				\
	.off = offsetof(stype, field), .off2 = offsetof(stype, nfield),	\
	.elemsize = sizeof(etype), .lineoff = offsetof(etype, line),	\
	.coloff = offsetof(etype, col)
#define AT(stype, field)	.off = offsetof(stype, field), .lineoff = CONFIG_NOPOS

static const struct config_key config_keys[] = {
	{ .path = "listen", .type = CFT_LIST, .required = 1,
	  .min = 1, .max = CONFIG_MAX_ENTRIES, .check = config_listen_check,
	  LIST_OF(struct config, listen, nlisten, struct config_listen) },
	{ .path = "listen[].address", .type = CFT_ADDR, .required = 1, .passive = 1,
	  AT(struct config_listen, address), .off2 = offsetof(struct config_listen, addr) },
	{ .path = "listen[].tls", .type = CFT_ENUM, .def = "implicit",
	  .words = config_tls_words, AT(struct config_listen, tls) },
	{ .path = "listen[].require_tls", .type = CFT_BOOL, .def = "true",
	  AT(struct config_listen, require_tls) },
	{ .path = "listen[].insecure", .type = CFT_BOOL, .def = "false",
	  AT(struct config_listen, insecure) },
	{ .path = "listen[].proxy_protocol", .type = CFT_BOOL, .def = "false",
	  AT(struct config_listen, proxy_protocol) },
	{ .path = "listen[].compress", .type = CFT_BOOL, .def = "false",
	  AT(struct config_listen, compress) },
	{ .path = "listen[].trusted_proxies", .type = CFT_CIDRLIST, .max = CONFIG_MAX_ENTRIES,
	  AT(struct config_listen, trusted_proxies),
	  .off2 = offsetof(struct config_listen, ntrusted_proxies),
	  .off3 = offsetof(struct config_listen, trusted) },

	/* Each entry's files are read and checked at load: at most TLS_MAX_CERTS. */
	{ .path = "tls.certificates", .type = CFT_LIST, .min = 1,
	  .max = TLS_MAX_CERTS, .check = config_cert_check,
	  LIST_OF(struct config, certs, ncerts, struct config_cert) },
	{ .path = "tls.certificates[].cert", .type = CFT_PATH, .required = 1,
	  AT(struct config_cert, cert) },
	{ .path = "tls.certificates[].key", .type = CFT_PATH, .required = 1,
	  AT(struct config_cert, key) },
	{ .path = "tls.min_version", .type = CFT_ENUM, .def = "1.2",
	  .words = config_tls_version_words, AT(struct config, tls_min_version) },
	{ .path = "tls.ciphers", .type = CFT_STRING, AT(struct config, tls_ciphers) },
	{ .path = "tls.ciphersuites", .type = CFT_STRING, AT(struct config, tls_ciphersuites) },

	{ .path = "backend.servers", .type = CFT_LIST, .required = 1,
	  .min = 1, .max = CONFIG_MAX_ENTRIES,
	  LIST_OF(struct config, servers, nservers, struct config_server) },
	{ .path = "backend.servers[].address", .type = CFT_ADDR, .required = 1,
	  AT(struct config_server, address), .off2 = offsetof(struct config_server, addr) },
	{ .path = "backend.servers[].weight", .type = CFT_UINT, .def = "1",
	  .min = 1, .max = 1000, AT(struct config_server, weight) },
	{ .path = "backend.servers[].max_connections", .type = CFT_UINT, .def = "0",
	  .min = 0, .max = 1000000, AT(struct config_server, max_connections) },
	{ .path = "backend.tls", .type = CFT_ENUM, .def = "none",
	  .words = config_tls_words, AT(struct config, backend_tls) },
	{ .path = "backend.ca_file", .type = CFT_PATH, AT(struct config, backend_ca_file) },
	{ .path = "backend.server_name", .type = CFT_STRING,
	  AT(struct config, backend_server_name) },
	{ .path = "backend.verify", .type = CFT_BOOL, .def = "true",
	  AT(struct config, backend_verify) },
	{ .path = "backend.client_ip", .type = CFT_ENUM, .def = "none",
	  .words = config_client_ip_words, AT(struct config, client_ip) },
	{ .path = "backend.balance", .type = CFT_ENUM, .def = "round-robin",
	  .words = config_balance_words, AT(struct config, balance) },
	{ .path = "backend.health.interval", .type = CFT_DURATION, .def = "5s",
	  .min = 100, .max = 3600 * 1000, AT(struct config, health_interval_ms) },
	{ .path = "backend.health.timeout", .type = CFT_DURATION, .def = "2s",
	  .min = 100, .max = 60 * 1000, AT(struct config, health_timeout_ms) },
	{ .path = "backend.health.rise", .type = CFT_UINT, .def = "2",
	  .min = 1, .max = 100, AT(struct config, health_rise) },
	{ .path = "backend.health.fall", .type = CFT_UINT, .def = "2",
	  .min = 1, .max = 100, AT(struct config, health_fall) },
	{ .path = "backend.connect_tries", .type = CFT_UINT, .def = "3",
	  .min = 1, .max = 16, AT(struct config, connect_tries) },
	{ .path = "backend.route", .type = CFT_ENUM, .def = "connect",
	  .words = config_route_words, AT(struct config, route) },
	{ .path = "backend.lookup.type", .type = CFT_ENUM, .def = "hash",
	  .words = config_lookup_words, AT(struct config, lookup) },
	{ .path = "backend.lookup.key", .type = CFT_ENUM, .def = "user",
	  .words = config_lookup_key_words, AT(struct config, lookup_key) },
	{ .path = "backend.lookup.file", .type = CFT_PATH, AT(struct config, lookup_file) },
	{ .path = "backend.lookup.fallback", .type = CFT_ENUM, .def = "reject",
	  .words = config_fallback_words, AT(struct config, lookup_fallback) },
	{ .path = "backend.lookup.url", .type = CFT_STRING, AT(struct config, lookup_url) },
	{ .path = "backend.lookup.timeout", .type = CFT_DURATION, .def = "5s",
	  .min = 100, .max = 60 * 1000, AT(struct config, lookup_timeout_ms) },
	{ .path = "backend.lookup.keepalive", .type = CFT_UINT, .def = "0",
	  .min = 0, .max = AUTHHTTP_KEEPALIVE_MAX, AT(struct config, lookup_keepalive) },
	{ .path = "backend.login.credentials", .type = CFT_ENUM, .def = "client",
	  .words = config_credentials_words, AT(struct config, credentials) },
	{ .path = "backend.login.master_user", .type = CFT_STRING,
	  AT(struct config, master_user) },
	{ .path = "backend.login.master_password_file", .type = CFT_PATH,
	  AT(struct config, master_password_file) },
	{ .path = "backend.login.master_separator", .type = CFT_STRING, .def = "*",
	  AT(struct config, master_separator) },
	{ .path = "backend.login.greeting", .type = CFT_STRING, .def = "IMAP server ready.",
	  AT(struct config, login_greeting) },
	{ .path = "backend.login.oauth", .type = CFT_BOOL, .def = "false",
	  AT(struct config, login_oauth) },
	{ .path = "backend.health.user", .type = CFT_STRING, AT(struct config, health_user) },
	{ .path = "backend.health.password_file", .type = CFT_PATH,
	  AT(struct config, health_password_file) },

	{ .path = "workers", .type = CFT_UINT, .def = "auto", .min = 1, .max = 64,
	  .words = config_workers_words, AT(struct config, workers) },
	{ .path = "user", .type = CFT_STRING, AT(struct config, user) },
	{ .path = "group", .type = CFT_STRING, AT(struct config, group) },

	{ .path = "metrics.address", .type = CFT_ADDR, .passive = 1,
	  AT(struct config, metrics_address), .off2 = offsetof(struct config, metrics_addr) },

	{ .path = "log.level", .type = CFT_ENUM, .def = "info",
	  .words = config_log_words, AT(struct config, log_level) },
	{ .path = "log.format", .type = CFT_ENUM, .def = "text",
	  .words = config_log_format_words, AT(struct config, log_format) },
	{ .path = "log.output", .type = CFT_ENUM, .def = "stderr",
	  .words = config_log_output_words, AT(struct config, log_output) },

	{ .path = "limits.max_line", .type = CFT_SIZE, .def = "64KiB",
	  .min = 1 * KIB, .max = 16 * MIB, AT(struct config, max_line) },
	{ .path = "limits.buffer", .type = CFT_SIZE, .def = "256KiB",
	  .min = 16 * KIB, .max = 64 * MIB, AT(struct config, buffer) },
	{ .path = "limits.max_connections", .type = CFT_UINT, .def = "50000",
	  .min = 1, .max = 10000000, AT(struct config, max_connections) },
	{ .path = "limits.login_failures_per_ip", .type = CFT_UINT, .def = "100",
	  .min = 0, .max = 1000000, AT(struct config, login_failures_per_ip) },
	{ .path = "limits.max_connections_per_ip", .type = CFT_UINT, .def = "50",
	  .min = 0, .max = 1000000, AT(struct config, max_connections_per_ip) },

	{ .path = "timeouts.backend_connect", .type = CFT_DURATION, .def = "5s",
	  .min = 100, .max = 10 * 60 * 1000, AT(struct config, backend_connect_ms) },
	{ .path = "timeouts.backend_response", .type = CFT_DURATION, .def = "5m",
	  .min = 1000, .max = 24 * 3600 * 1000, AT(struct config, backend_response_ms) },
	{ .path = "timeouts.tls_handshake", .type = CFT_DURATION, .def = "10s",
	  .min = 1000, .max = 5 * 60 * 1000, AT(struct config, tls_handshake_ms) },
	{ .path = "timeouts.preauth", .type = CFT_DURATION, .def = "60s",
	  .min = 1000, .max = 3600 * 1000, AT(struct config, preauth_ms) },
	/* RFC 3501 5.4 asks for at least 30 minutes; shorter is allowed, for tests. */
	{ .path = "timeouts.idle", .type = CFT_DURATION, .def = "30m",
	  .min = 60 * 1000, .max = 24 * 3600 * 1000, AT(struct config, idle_ms) },
	{ .path = "timeouts.login_failure", .type = CFT_DURATION, .def = "2s",
	  .min = 0, .max = 60 * 1000, AT(struct config, login_failure_delay_ms) },
	{ .path = "timeouts.idle_keepalive", .type = CFT_DURATION, .def = "2m",
	  .min = 0, .max = 3600 * 1000, AT(struct config, idle_keepalive_ms) },
	{ .path = "timeouts.drain_spread", .type = CFT_DURATION, .def = "2s",
	  .min = 0, .max = 3600 * 1000, AT(struct config, drain_spread_ms) },
	{ .path = "control.socket", .type = CFT_PATH, AT(struct config, control_socket) },
	{ .path = "control.group", .type = CFT_STRING, AT(struct config, control_group) },
	{ .path = "timeouts.drain", .type = CFT_DURATION, .def = "30s",
	  .min = 0, .max = 3600 * 1000, AT(struct config, drain_ms) },

	{ .path = "guard.client_state", .type = CFT_ENUM, .def = "bye",
	  .words = config_guard_words, AT(struct config, guard_client_state) },
	{ .path = "guard.desync", .type = CFT_ENUM, .def = "bye",
	  .words = config_guard_words, AT(struct config, guard_desync) },
	{ .path = "guard.desync_patterns", .type = CFT_REGEXLIST, .max = CONFIG_MAX_ENTRIES,
	  .defs = config_desync_defaults, AT(struct config, desync_patterns),
	  .off2 = offsetof(struct config, ndesync_patterns),
	  .off3 = offsetof(struct config, desync_re) },
	{ .path = "guard.greeting_patterns", .type = CFT_REGEXLIST, .max = CONFIG_MAX_ENTRIES,
	  .defs = config_greeting_defaults, AT(struct config, greeting_patterns),
	  .off2 = offsetof(struct config, ngreeting_patterns),
	  .off3 = offsetof(struct config, greeting_re) },

	{ .path = "rewrite.unknown_codes", .type = CFT_ENUM, .def = "strip",
	  .words = config_unknown_code_words, AT(struct config, rewrite_keep_unknown) },
	{ .path = "rewrite.allow_codes", .type = CFT_ATOMLIST, .max = CONFIG_MAX_ENTRIES,
	  AT(struct config, allow_codes), .off2 = offsetof(struct config, nallow_codes) },
	{ .path = "rewrite.rules", .type = CFT_LIST, .min = 0, .max = CONFIG_MAX_ENTRIES,
	  LIST_OF(struct config, rules, nrules, struct config_rule) },
	{ .path = "rewrite.rules[].match.status", .type = CFT_ENUM, .def = "any",
	  .words = config_match_status_words, AT(struct config_rule, match_status) },
	{ .path = "rewrite.rules[].match.code", .type = CFT_CODE,
	  AT(struct config_rule, match_code) },
	{ .path = "rewrite.rules[].match.text", .type = CFT_REGEX,
	  AT(struct config_rule, match_text), .off2 = offsetof(struct config_rule, match_re),
	  .off3 = offsetof(struct config_rule, has_re) },
	{ .path = "rewrite.rules[].set.status", .type = CFT_ENUM, .def = "keep",
	  .words = config_set_status_words, AT(struct config_rule, set_status) },
	{ .path = "rewrite.rules[].set.code", .type = CFT_CODE,
	  AT(struct config_rule, set_code) },

	{ .path = "capabilities.remove", .type = CFT_ATOMLIST, .max = CONFIG_MAX_ENTRIES,
	  AT(struct config, cap_remove), .off2 = offsetof(struct config, ncap_remove) },
	{ .path = "capabilities.add", .type = CFT_ATOMLIST, .max = CONFIG_MAX_ENTRIES,
	  AT(struct config, cap_add), .off2 = offsetof(struct config, ncap_add) },
};

#define CONFIG_NKEYS	(sizeof(config_keys) / sizeof(config_keys[0]))

/* Enums are stored through an int pointer; make sure they are int-sized. */
_Static_assert(sizeof(enum config_tls_mode) == sizeof(int), "enum size");
_Static_assert(sizeof(enum config_log_level) == sizeof(int), "enum size");
_Static_assert(sizeof(enum config_guard_mode) == sizeof(int), "enum size");
_Static_assert(sizeof(enum config_status) == sizeof(int), "enum size");
_Static_assert(sizeof(enum config_client_ip) == sizeof(int), "enum size");
_Static_assert(sizeof(enum config_balance) == sizeof(int), "enum size");
_Static_assert(sizeof(enum config_log_format) == sizeof(int), "enum size");
_Static_assert(sizeof(enum config_log_output) == sizeof(int), "enum size");

struct config_loader {
	const char		*file;
	char			*dir;		/* for relative paths; NULL = cwd */
	const char		*text;		/* the file, for reader error offsets */
	size_t			 textlen;
	yaml_document_t		*doc;
	struct config		*cf;
	struct config_errors	*errs;
	uint64_t		 regex_cost;	/* compiled size of the expressions so far */
	int			 oom;
};

/* One mapping with its own keys: the top level or one list entry. */
struct config_scope {
	const char		*pattern;	/* "" or "listen[]" */
	const char		*where;		/* "" or "listen[0]", for messages */
	char			*base;		/* struct config or the entry struct */
	yaml_mark_t		 mark;		/* the scope's mapping */
	size_t			 nerr0;		/* errors collected before the scope was read */
	unsigned char		 seen[CONFIG_NKEYS];
	yaml_mark_t		 vmark[CONFIG_NKEYS];	/* where each seen value is */
	struct {
		char		 rel[CONFIG_MAX_PATH];
		yaml_mark_t	 mark;
	}			 submaps[CONFIG_MAX_SUBMAPS];
	size_t			 nsubmaps;
};

/* Append an error at line/col (1-based, 0 = none) to the loader's list. */
static void
config_errorv(struct config_loader *ld, int line, int col, const char *fmt, va_list ap)
{
	struct config_errors *e = ld->errs;
	struct config_error *v;
	char buf[CONFIG_MSGLEN];

	if (e->n >= CONFIG_MAX_ERRORS)
		return;
	vsnprintf(buf, sizeof(buf), fmt, ap);
	if (e->n + 1 == CONFIG_MAX_ERRORS)
		snprintf(buf, sizeof(buf), "too many errors, giving up");
	if ((v = realloc(e->v, (e->n + 1) * sizeof(*v))) == NULL) {
		ld->oom = 1;
		return;
	}
	e->v = v;
	v = &e->v[e->n];
	v->line = line;
	v->col = col;
	v->file = strdup(ld->file);
	v->msg = strdup(buf);
	if (v->file == NULL || v->msg == NULL) {
		free(v->file);
		free(v->msg);
		ld->oom = 1;
		return;
	}
	e->n++;
}

/* Add an error positioned at a libyaml mark (0-based) or, with NULL, nowhere. */
__attribute__((format(printf, 3, 4)))
static void
config_error(struct config_loader *ld, const yaml_mark_t *m, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	if (m != NULL)
		config_errorv(ld, (int)m->line + 1, (int)m->column + 1, fmt, ap);
	else
		config_errorv(ld, 0, 0, fmt, ap);
	va_end(ap);
}

/* Add an error at an explicit 1-based position. */
__attribute__((format(printf, 4, 5)))
static void
config_error_at(struct config_loader *ld, int line, int col, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	config_errorv(ld, line, col, fmt, ap);
	va_end(ap);
}

/*
 * Whether the walk should stop: memory ran out, or CONFIG_MAX_ERRORS were
 * collected.  Aliases let a small file name one mapping from every entry
 * of a list, so an unchecked walk could repeat its errors at length.
 */
static int
config_gave_up(const struct config_loader *ld)
{
	return ld->oom || ld->errs->n >= CONFIG_MAX_ERRORS;
}

/* strdup that records an allocation failure in the loader. */
static char *
config_strdup(struct config_loader *ld, const char *s)
{
	char *p = strdup(s);

	if (p == NULL)
		ld->oom = 1;
	return p;
}

/*
 * Parse an unsigned decimal number followed by a unit, scaling by the
 * unit's factor.  Returns 0, -1 on bad syntax, -2 on overflow.
 */
static int
config_parse_scaled(const char *s, const char *const *units, const uint64_t *factors,
    uint64_t *out)
{
	uint64_t v = 0;
	const char *p = s;
	size_t i;

	if (*p < '0' || *p > '9')
		return -1;
	for (; *p >= '0' && *p <= '9'; p++) {
		unsigned d = (unsigned)(*p - '0');
		if (v > (UINT64_MAX - d) / 10)
			return -2;
		v = v * 10 + d;
	}
	for (i = 0; units[i] != NULL; i++)
		if (strcmp(p, units[i]) == 0)
			break;
	if (units[i] == NULL)
		return -1;
	if (factors[i] != 0 && v > UINT64_MAX / factors[i])
		return -2;
	*out = v * factors[i];
	return 0;
}

static const char *const config_duration_units[] = { "", "ms", "s", "m", "h", NULL };
static const uint64_t config_duration_factors[] = { 1000, 1, 1000, 60000, 3600000 };
static const char *const config_size_units[] = { "", "KiB", "MiB", "GiB", NULL };
static const char *const config_count_units[] = { "", NULL };
static const uint64_t config_count_factors[] = { 1 };
static const uint64_t config_size_factors[] = { 1, KIB, MIB, GIB };

/* Duration parser with the overflow distinction kept for messages. */
static int
config_duration(const char *s, uint64_t *ms)
{
	return config_parse_scaled(s, config_duration_units, config_duration_factors, ms);
}

/* Size parser with the overflow distinction kept for messages. */
static int
config_size(const char *s, uint64_t *bytes)
{
	return config_parse_scaled(s, config_size_units, config_size_factors, bytes);
}

/* Parse a duration ("500ms", "30s", "5m", "1h", bare number = seconds) into ms. */
int
config_parse_duration(const char *s, uint64_t *ms)
{
	return config_duration(s, ms) == 0 ? 0 : -1;
}

/* Parse a size ("512", "64KiB", "16MiB", "1GiB") into bytes. */
int
config_parse_size(const char *s, uint64_t *bytes)
{
	return config_size(s, bytes) == 0 ? 0 : -1;
}

/* Write a bound the way a user would write it: the largest exact unit. */
static const char *
config_fmt_bound(const struct config_key *k, int64_t v, char *buf, size_t len)
{
	uint64_t u = (uint64_t)v;

	if (k->type == CFT_SIZE) {
		if (u != 0 && u % GIB == 0)
			snprintf(buf, len, "%" PRIu64 "GiB", u / GIB);
		else if (u != 0 && u % MIB == 0)
			snprintf(buf, len, "%" PRIu64 "MiB", u / MIB);
		else if (u != 0 && u % KIB == 0)
			snprintf(buf, len, "%" PRIu64 "KiB", u / KIB);
		else
			snprintf(buf, len, "%" PRIu64, u);
	} else if (k->type == CFT_DURATION) {
		if (u != 0 && u % 3600000 == 0)
			snprintf(buf, len, "%" PRIu64 "h", u / 3600000);
		else if (u != 0 && u % 60000 == 0)
			snprintf(buf, len, "%" PRIu64 "m", u / 60000);
		else if (u != 0 && u % 1000 == 0)
			snprintf(buf, len, "%" PRIu64 "s", u / 1000);
		else
			snprintf(buf, len, "%" PRIu64 "ms", u);
	} else
		snprintf(buf, len, "%" PRId64, v);
	return buf;
}

/* The list scope a key belongs to: its path up to the last "[]", or "". */
static size_t
config_key_scope_len(const char *path)
{
	const char *p, *last = NULL;

	for (p = path; (p = strstr(p, "[]")) != NULL; p += 2)
		last = p;
	return last == NULL ? 0 : (size_t)(last - path) + 2;
}

/* Whether key k lives directly in the scope named pattern. */
static int
config_key_in_scope(const struct config_key *k, const char *pattern)
{
	size_t n = config_key_scope_len(k->path);

	return n == strlen(pattern) && strncmp(k->path, pattern, n) == 0;
}

/* The table row for an exact path, or NULL. */
static const struct config_key *
config_key_find(const char *path)
{
	for (size_t i = 0; i < CONFIG_NKEYS; i++)
		if (strcmp(config_keys[i].path, path) == 0)
			return &config_keys[i];
	return NULL;
}

/* Whether path names a grouping mapping (a proper prefix of some row's path). */
static int
config_key_is_group(const char *path)
{
	size_t n = strlen(path);

	for (size_t i = 0; i < CONFIG_NKEYS; i++)
		if (strncmp(config_keys[i].path, path, n) == 0 && config_keys[i].path[n] == '.')
			return 1;
	return 0;
}

/* Join a message prefix and a relative name with a dot when both are set. */
static void
config_join(char *buf, size_t len, const char *a, const char *b)
{
	if (a[0] == '\0')
		snprintf(buf, len, "%s", b);
	else if (b[0] == '\0')
		snprintf(buf, len, "%s", a);
	else if (snprintf(buf, len, "%s.%s", a, b) >= (int)len)
		buf[len - 1] = '\0';	/* a cut name in a message is all that happens */
}

/* A word for the kind of node found where something else was expected. */
static const char *
config_node_kind(const yaml_node_t *n)
{
	switch (n->type) {
	case YAML_SEQUENCE_NODE:
		return "a list";
	case YAML_MAPPING_NODE:
		return "a mapping";
	default:
		return "a scalar";
	}
}

/* Whether n is a plain null (empty, "~" or "null"): a key written with no value. */
static int
config_node_is_null(const yaml_node_t *n)
{
	const char *v;

	if (n->type != YAML_SCALAR_NODE || n->data.scalar.style != YAML_PLAIN_SCALAR_STYLE)
		return 0;
	v = (const char *)n->data.scalar.value;
	return v[0] == '\0' || strcmp(v, "~") == 0 || strcmp(v, "null") == 0 ||
	    strcmp(v, "Null") == 0 || strcmp(v, "NULL") == 0;
}

static void config_free_scope(const char *pattern, char *base);

/* Free the value stored for key k in base (strings and lists), recursively. */
static void
config_free_value(const struct config_key *k, char *base)
{
	char **sp = (char **)(base + k->off);
	size_t *np = (size_t *)(base + k->off2);

	switch (k->type) {
	case CFT_STRING:
	case CFT_PATH:
	case CFT_ADDR:
	case CFT_CODE:
		free(*sp);
		*sp = NULL;
		break;
	case CFT_REGEX: {
		int *has = (int *)(base + k->off3);
		if (*has)
			regfree((regex_t *)(base + k->off2));
		*has = 0;
		free(*sp);
		*sp = NULL;
		break;
	}
	case CFT_STRLIST:
	case CFT_ATOMLIST:
	case CFT_REGEXLIST:
	case CFT_CIDRLIST: {
		char ***vp = (char ***)(base + k->off);
		regex_t **rp = (regex_t **)(base + k->off3);
		/* Entries and compiled expressions are added in pairs: n counts both. */
		for (size_t i = 0; *vp != NULL && i < *np; i++) {
			if (k->type == CFT_REGEXLIST && *rp != NULL)
				regfree(&(*rp)[i]);
			free((*vp)[i]);
		}
		free(*vp);
		*vp = NULL;
		if (k->type == CFT_REGEXLIST) {
			free(*rp);
			*rp = NULL;
		}
		if (k->type == CFT_CIDRLIST) {
			struct config_cidr **cp = (struct config_cidr **)(base + k->off3);
			free(*cp);
			*cp = NULL;
		}
		*np = 0;
		break;
	}
	case CFT_LIST: {
		char **ep = (char **)(base + k->off);
		char pattern[CONFIG_MAX_PATH];
		snprintf(pattern, sizeof(pattern), "%s[]", k->path);
		for (size_t i = 0; *ep != NULL && i < *np; i++)
			config_free_scope(pattern, *ep + i * k->elemsize);
		free(*ep);
		*ep = NULL;
		*np = 0;
		break;
	}
	default:
		break;
	}
}

/* Free every value owned by the keys of one scope. */
static void
config_free_scope(const char *pattern, char *base)
{
	for (size_t i = 0; i < CONFIG_NKEYS; i++)
		if (config_key_in_scope(&config_keys[i], pattern))
			config_free_value(&config_keys[i], base);
}

/* Resolve a relative file name against the config file's directory. */
static char *
config_resolve(struct config_loader *ld, const char *v)
{
	char *p;

	if (v[0] == '/' || ld->dir == NULL)
		return config_strdup(ld, v);
	/* "./x" and "x" alike; ".." is left for the kernel to resolve. */
	if (v[0] == '.' && v[1] == '/')
		v += 2;
	if (asprintf(&p, "%s/%s", ld->dir, v) < 0) {
		ld->oom = 1;
		return NULL;
	}
	return p;
}

/*
 * Check that v is an IMAP atom (RFC 3501 ATOM-CHAR: no space, control
 * character, parenthesis, brace, bracket, quote, backslash, "%" or "*";
 * 7-bit only).  Brackets are refused although "[" is an ATOM-CHAR: a code
 * or capability holding one could not be told apart from the response
 * code's own brackets.  Returns NULL or what is wrong.
 */
static const char *
config_atom_problem(const char *v)
{
	size_t n = strlen(v);

	if (n == 0)
		return "is empty";
	if (n > CONFIG_MAX_ATOM)
		return "is longer than " CONFIG_STR(CONFIG_MAX_ATOM) " bytes";
	for (const unsigned char *p = (const unsigned char *)v; *p != '\0'; p++)
		if (*p <= 0x20 || *p >= 0x7f || strchr("(){}[]\"\\%*", *p) != NULL)
			return "is not an IMAP atom (no spaces, control or non-ASCII characters, "
			    "or any of ( ) { } [ ] \" \\ % *)";
	return NULL;
}

/* Copy atom v in upper case (IMAP atoms compare case-insensitively). */
static char *
config_atom_upper(struct config_loader *ld, const char *v)
{
	char *s = config_strdup(ld, v);

	for (char *p = s; p != NULL && *p != '\0'; p++)
		*p = (char)toupper((unsigned char)*p);
	return s;
}

/* a + b, held at CONFIG_REGEX_COST_CAP (both are at most the cap). */
static uint64_t
config_cost_add(uint64_t a, uint64_t b)
{
	return a + b > CONFIG_REGEX_COST_CAP ? CONFIG_REGEX_COST_CAP : a + b;
}

/* a * b, held at CONFIG_REGEX_COST_CAP. */
static uint64_t
config_cost_mul(uint64_t a, uint64_t b)
{
	return b != 0 && a > CONFIG_REGEX_COST_CAP / b ? CONFIG_REGEX_COST_CAP : a * b;
}

/*
 * Read an interval "{m}", "{m,}", "{m,n}" or "{,n}" (glibc's "{0,n}") at p,
 * which points at the "{".  Returns its length, or 0 if p holds none of
 * these (regcomp then reports the "{").  *hi is -1 for no upper bound;
 * numbers saturate at CONFIG_REGEX_COST_CAP.
 */
static size_t
config_regex_interval(const char *p, uint64_t *lo, int64_t *hi)
{
	const char *q = p + 1;
	uint64_t n = 0;
	int digits = 0;

	for (; *q >= '0' && *q <= '9'; q++, digits = 1)
		n = config_cost_add(config_cost_mul(n, 10), (uint64_t)(*q - '0'));
	*lo = n;
	if (*q == '}' && digits) {
		*hi = (int64_t)n;
		return (size_t)(q - p) + 1;
	}
	if (*q != ',')
		return 0;
	n = 0;
	digits = 0;
	for (q++; *q >= '0' && *q <= '9'; q++, digits = 1)
		n = config_cost_add(config_cost_mul(n, 10), (uint64_t)(*q - '0'));
	if (*q != '}')
		return 0;
	*hi = digits ? (int64_t)n : -1;
	return (size_t)(q - p) + 1;
}

/*
 * The end of the bracket expression opening at p ("[...]", "[^]...]",
 * with "[:alpha:]", "[=e=]" and "[.x.]" inside), just past its "]"; NULL
 * if it is not closed (regcomp then reports it, having read to the end).
 */
static const char *
config_regex_bracket(const char *p)
{
	p++;
	if (*p == '^')
		p++;
	if (*p == ']')
		p++;
	for (; *p != '\0'; p++) {
		if (*p == ']')
			return p + 1;
		if (*p == '[' && (p[1] == ':' || p[1] == '=' || p[1] == '.')) {
			char delim = p[1];
			for (p += 2; *p != '\0' && !(*p == delim && p[1] == ']'); p++)
				;
			if (*p == '\0')
				return NULL;
			p++;
		}
	}
	return NULL;
}

/* What part of an expression costs: units, anchors, optional and nested optional units. */
struct config_re_size {
	uint64_t	 units;
	uint64_t	 anchors;
	uint64_t	 optional;	/* units of the parts that can match the empty text */
	uint64_t	 nested;	/* units of optional parts inside optional parts */
};

/* One level of parentheses while config_regex_cost reads an expression. */
struct config_re_frame {
	struct config_re_size	 alts;		/* the finished branches */
	struct config_re_size	 branch;	/* the current branch, its last piece included */
	struct config_re_size	 pre;		/* the current branch before its last piece */
	struct config_re_size	 last;		/* the last piece; units 0 = none yet */
	int			 alts_empty;	/* a finished branch can match the empty text */
	int			 branch_empty;	/* the current branch can */
	int			 pre_empty;	/* it could before its last piece */
	int			 last_empty;	/* the last piece can */
	int			 last_counted;	/* the last piece holds a {m,n} */
	int			 counted;	/* the group holds a {m,n} */
};

/* a + b, each count held at CONFIG_REGEX_COST_CAP. */
static struct config_re_size
config_re_add(struct config_re_size a, struct config_re_size b)
{
	a.units = config_cost_add(a.units, b.units);
	a.anchors = config_cost_add(a.anchors, b.anchors);
	a.optional = config_cost_add(a.optional, b.optional);
	a.nested = config_cost_add(a.nested, b.nested);
	return a;
}

/* Start a branch in f: empty, so it matches the empty text. */
static void
config_re_branch(struct config_re_frame *f)
{
	memset(&f->branch, 0, sizeof(f->branch));
	f->pre = f->last = f->branch;
	f->branch_empty = f->pre_empty = 1;
	f->last_empty = f->last_counted = 0;
}

/* Open a group (or the whole expression) in f: one empty branch. */
static void
config_re_open(struct config_re_frame *f)
{
	memset(f, 0, sizeof(*f));
	config_re_branch(f);
}

/* Append a piece to f's current branch. */
static void
config_re_piece(struct config_re_frame *f, struct config_re_size sz, int empty, int counted)
{
	f->pre = f->branch;
	f->pre_empty = f->branch_empty;
	f->last = sz;
	f->last_empty = empty;
	f->last_counted = counted;
	f->branch = config_re_add(f->pre, sz);
	f->branch_empty = f->pre_empty && empty;
}

/* Replace f's last piece by its repetition. */
static void
config_re_repeat(struct config_re_frame *f, struct config_re_size sz, int empty, int counted)
{
	f->last = sz;
	f->last_empty = empty;
	f->last_counted = counted;
	f->branch = config_re_add(f->pre, sz);
	f->branch_empty = f->pre_empty && empty;
}

/* Close the group in f: its branches, plus one unit for the group. */
static struct config_re_size
config_re_close(const struct config_re_frame *f)
{
	struct config_re_size one = { 1, 0, 0, 0 }, sz;

	sz = config_re_add(config_re_add(f->alts, f->branch), one);
	if (f->alts_empty || f->branch_empty)
		sz.optional = sz.units;
	return sz;
}

/*
 * Estimate what POSIX extended expression v (glibc's dialect, C locale)
 * costs regcomp, before regcomp runs.  Units: one per character, bracket
 * expression or group, CONFIG_REGEX_ANCHOR_UNITS per anchor (^ $ \b \B
 * \< \> \` \'); a repetition copies what it repeats (glibc expands x{m,n}
 * into n copies of x, x{m,} into m+1, x+ into 2), so a repeated piece's
 * units and anchors are multiplied by its copies.
 *
 * Refuses, with the reason in why: a {m,n} count above
 * CONFIG_REGEX_MAX_COUNT; a {m,n} applied to something holding another
 * (the copies multiply); a loop (*, +, {m,}) over something that can
 * match the empty text, such as (a*)* or (x?|y)+: glibc's closure over
 * empty paths is exponential once they form cycles ((()+|) twenty times
 * took 3 s, ((a*)?(a*)?...)+ 5 s); more than CONFIG_REGEX_MAX_ANCHORS
 * anchors, copies counted (glibc's work grows with a high power of their
 * number: (^$|) a hundred times took 15 s); anchors beside more than
 * CONFIG_REGEX_MAX_NESTED units of optional parts inside optional parts
 * (glibc copies what can follow an anchor without consuming text, path by
 * path: ^(b?([a-z]?|b+)?a?){1,96} took 0.9 s, ^(a?b?)? a hundred times
 * 64 ms, and the time grows with about the fourth power; flat optional
 * parts such as ^a?a?a? or ^.{0,80}$ stay cheap and are not counted);
 * parentheses deeper than CONFIG_REGEX_MAX_DEPTH; back-references
 * (matching them backtracks, in time exponential in the text).  Returns 0
 * with the units in *cost, or -1.  A malformed expression is costed as
 * far as it reads; regcomp reports it.
 */
static int
config_regex_cost(const char *v, uint64_t *cost, char *why, size_t whylen)
{
	static const struct config_re_size one = { 1, 0, 0, 0 }, anchor = { 1, 1, 0, 0 };
	struct config_re_frame st[CONFIG_REGEX_MAX_DEPTH + 1], *f = st;
	struct config_re_size sz;
	const char *p = v, *end;
	uint64_t lo, copies, oc;
	int64_t hi;
	size_t n;
	int counted, empty;

	config_re_open(f);
	while (*p != '\0') {
		size_t at = (size_t)(p - v) + 1;

		switch (*p) {
		case '(':
			if (f == &st[CONFIG_REGEX_MAX_DEPTH]) {
				snprintf(why, whylen, "nests parentheses deeper than %d levels "
				    "(at byte %zu)", CONFIG_REGEX_MAX_DEPTH, at);
				return -1;
			}
			config_re_open(++f);
			p++;
			continue;
		case ')':
			if (f == st)
				break;		/* an unmatched ")" is an ordinary character */
			sz = config_re_close(f);
			empty = f->alts_empty || f->branch_empty;
			counted = f->counted;
			f--;
			config_re_piece(f, sz, empty, counted);
			f->counted |= counted;
			p++;
			continue;
		case '|':
			f->alts = config_re_add(config_re_add(f->alts, f->branch), one);
			f->alts_empty |= f->branch_empty;
			config_re_branch(f);
			p++;
			continue;
		case '*':
		case '+':
		case '?':
		case '{':
			if (f->last.units == 0)
				break;		/* nothing to repeat: regcomp refuses it */
			lo = *p == '+' ? 1 : 0;
			hi = *p == '?' ? 1 : -1;
			n = 1;
			if (*p == '{') {
				if ((n = config_regex_interval(p, &lo, &hi)) == 0)
					break;
				if (lo > CONFIG_REGEX_MAX_COUNT ||
				    (hi >= 0 && (uint64_t)hi > CONFIG_REGEX_MAX_COUNT)) {
					snprintf(why, whylen, "repeats %" PRIu64 " times (at byte %zu); "
					    "a count may be at most %d", lo > CONFIG_REGEX_MAX_COUNT ?
					    lo : (uint64_t)hi, at, CONFIG_REGEX_MAX_COUNT);
					return -1;
				}
				if (f->last_counted) {
					snprintf(why, whylen, "repeats a counted repetition with "
					    "another count (at byte %zu): the copies multiply; write "
					    "the inner one out, or use *, + or ?", at);
					return -1;
				}
				f->counted = 1;
			}
			if (hi < 0 && f->last_empty) {
				snprintf(why, whylen, "repeats without bound (at byte %zu) something "
				    "that can match the empty text, which can make compiling take "
				    "exponential time; repeat what cannot match empty, e.g. (a|b)* "
				    "rather than (a*|b)*", at);
				return -1;
			}
			copies = hi > 0 ? (uint64_t)hi : hi == 0 ? 1 : lo + 1;
			oc = copies > lo ? copies - lo : 0;	/* the optional copies */
			sz.units = config_cost_mul(copies, config_cost_add(f->last.units, 1));
			sz.anchors = config_cost_mul(copies, f->last.anchors);
			empty = lo == 0 || f->last_empty;
			sz.optional = empty ? sz.units : config_cost_add(config_cost_mul(lo,
			    f->last.optional), config_cost_mul(oc, config_cost_add(f->last.units, 1)));
			/*
			 * Each optional copy wraps the optional parts the piece holds;
			 * copies of a piece that matches empty nest in one another
			 * (x{1,3} is x(x(x)?)?) with every level reachable.
			 */
			sz.nested = config_cost_add(config_cost_mul(copies, f->last.nested),
			    f->last_empty ? config_cost_mul(f->last.units,
			    config_cost_mul(oc, oc + 1) / 2) : config_cost_mul(oc, f->last.optional));
			config_re_repeat(f, sz, empty, f->last_counted || *p == '{');
			p += n;
			continue;
		case '[':
			if ((end = config_regex_bracket(p)) == NULL) {
				p += strlen(p);
				continue;
			}
			config_re_piece(f, one, 0, 0);
			p = end;
			continue;
		case '^':
		case '$':
			/* Anchors match the empty text (where they hold). */
			config_re_piece(f, anchor, 1, 0);
			p++;
			continue;
		case '\\':
			if (p[1] >= '1' && p[1] <= '9') {
				snprintf(why, whylen, "uses the back-reference \\%c (at byte %zu); "
				    "back-references are refused: matching them can take time "
				    "exponential in the length of the text", p[1], at);
				return -1;
			}
			if (p[1] == '\0')
				break;
			/* GNU's word-boundary and buffer anchors, like ^ and $. */
			if (strchr("bB<>`'", p[1]) != NULL)
				config_re_piece(f, anchor, 1, 0);
			else
				config_re_piece(f, one, 0, 0);
			p += 2;
			continue;
		default:
			break;
		}
		/* An ordinary character or ".". */
		config_re_piece(f, one, 0, 0);
		p++;
	}
	/* Groups left open (regcomp refuses them) are costed as if closed. */
	for (; f > st; f--)
		config_re_piece(f - 1, config_re_close(f), 0, 0);
	sz = config_re_add(st[0].alts, st[0].branch);
	if (sz.anchors > CONFIG_REGEX_MAX_ANCHORS) {
		snprintf(why, whylen, "holds %" PRIu64 "%s anchors (^ $ \\b \\B \\< \\> \\` \\'), "
		    "copies made by repetitions counted; at most %d are allowed", sz.anchors,
		    sz.anchors == CONFIG_REGEX_COST_CAP ? "+" : "", CONFIG_REGEX_MAX_ANCHORS);
		return -1;
	}
	if (sz.anchors > 0 && sz.nested > CONFIG_REGEX_MAX_NESTED) {
		snprintf(why, whylen, "holds anchors (^ $ \\b ...) and about %" PRIu64 "%s units "
		    "of optional parts inside optional parts (such as (a?b)? or (x?){1,9}); "
		    "with an anchor at most %d are allowed", sz.nested,
		    sz.nested == CONFIG_REGEX_COST_CAP ? "+" : "", CONFIG_REGEX_MAX_NESTED);
		return -1;
	}
	*cost = config_cost_add(sz.units, config_cost_mul(sz.anchors, CONFIG_REGEX_ANCHOR_UNITS));
	return 0;
}

/*
 * Compile v as a case-insensitive POSIX extended expression into re.
 * Returns 0, or -1 after reporting the problem at m as name's error.
 */
static int
config_regex(struct config_loader *ld, regex_t *re, const char *name, const char *v,
    const yaml_mark_t *m)
{
	char err[CONFIG_MSGLEN];
	uint64_t cost;
	int rc;

	if (v[0] == '\0') {
		config_error(ld, m, "%s: an empty regular expression would match every text",
		    name);
		return -1;
	}
	if (strlen(v) > CONFIG_MAX_REGEX) {
		config_error(ld, m, "%s: regular expression is longer than %d bytes", name,
		    CONFIG_MAX_REGEX);
		return -1;
	}
	/* Before regcomp, whose time and memory grow with the copies repetitions make. */
	if (config_regex_cost(v, &cost, err, sizeof(err)) != 0) {
		config_error(ld, m, "%s: \"%.*s%s\" %s", name, CONFIG_REGEX_ECHO, v,
		    strlen(v) > CONFIG_REGEX_ECHO ? "..." : "", err);
		return -1;
	}
	if (cost > CONFIG_REGEX_MAX_COST) {
		config_error(ld, m, "%s: \"%.*s%s\" is too large once compiled: about %"
		    PRIu64 "%s units, at most %d are allowed (one per character; a "
		    "repetition {m,n} copies what it repeats n times)", name,
		    CONFIG_REGEX_ECHO, v, strlen(v) > CONFIG_REGEX_ECHO ? "..." : "", cost,
		    cost == CONFIG_REGEX_COST_CAP ? "+" : "", CONFIG_REGEX_MAX_COST);
		return -1;
	}
	if (ld->regex_cost + cost > CONFIG_REGEX_MAX_TOTAL) {
		config_error(ld, m, "%s: the regular expressions of the file, this one "
		    "included, are too large once compiled: more than %d units in all",
		    name, CONFIG_REGEX_MAX_TOTAL);
		return -1;
	}
	ld->regex_cost += cost;
	if ((rc = regcomp(re, v, REG_EXTENDED | REG_ICASE | REG_NOSUB)) != 0) {
		if (rc == REG_ESPACE)
			ld->oom = 1;
		else {
			regerror(rc, re, err, sizeof(err));
			config_error(ld, m, "%s: \"%s\" is not a valid regular expression: %s",
			    name, v, err);
		}
		/* A failed regcomp leaves nothing to regfree (POSIX leaves it undefined). */
		return -1;
	}
	return 0;
}

/*
 * Parse a network "10.0.0.0/8", "2001:db8::/32" or a single address (a /32
 * or /128) into c.  Bits set past the prefix are refused rather than
 * masked off: "10.1.2.3/8" is more likely a typo for a /32 than a wish to
 * trust all of 10/8.  Returns 0, or -1 with a message in err.
 */
static int
config_cidr_parse(const char *v, struct config_cidr *c, char *err, size_t errlen)
{
	char host[CONFIG_MAX_CIDR], net[INET6_ADDRSTRLEN];
	const char *slash = strchr(v, '/');
	size_t hlen = slash != NULL ? (size_t)(slash - v) : strlen(v);
	unsigned maxp, prefix = 0, bad = 0;

	memset(c, 0, sizeof(*c));
	if (strlen(v) >= CONFIG_MAX_CIDR || hlen >= sizeof(host)) {
		snprintf(err, errlen, "\"%.*s...\" is too long for a network", 16, v);
		return -1;
	}
	memcpy(host, v, hlen);
	host[hlen] = '\0';
	if (inet_pton(AF_INET, host, c->addr) == 1) {
		c->family = AF_INET;
		maxp = 32;
	} else if (inet_pton(AF_INET6, host, c->addr) == 1) {
		c->family = AF_INET6;
		maxp = 128;
	} else {
		snprintf(err, errlen, "\"%s\" is not an IP network (write 10.0.0.0/8, "
		    "2001:db8::/32, or a single address; no host names)", v);
		return -1;
	}
	if (slash == NULL)
		prefix = maxp;
	else {
		const char *p = slash + 1;
		/* At most three digits: the value is then checked against maxp. */
		if (*p == '\0' || strlen(p) > 3 || strspn(p, "0123456789") != strlen(p))
			bad = 1;
		else
			prefix = (unsigned)atoi(p);
		if (bad || prefix > maxp) {
			snprintf(err, errlen, "\"%s\": the prefix length must be 0-%u", v, maxp);
			return -1;
		}
	}
	c->prefix = prefix;
	for (unsigned i = prefix; i < maxp; i++)
		if (c->addr[i / 8] & (0x80u >> (i % 8)))
			bad = 1;
	if (bad) {
		unsigned char m[16];
		memcpy(m, c->addr, sizeof(m));
		for (unsigned i = prefix; i < maxp; i++)
			m[i / 8] &= (unsigned char)~(0x80u >> (i % 8));
		inet_ntop(c->family, m, net, sizeof(net));
		snprintf(err, errlen, "\"%s\" has bits set past the /%u prefix (the network "
		    "is %s/%u; for one address write it without a prefix)", v, prefix, net,
		    prefix);
		return -1;
	}
	return 0;
}

/*
 * Add entry v to the string list of key k in base, which has room for it,
 * checking and converting it for the list's type.  name names the entry
 * for messages; m is where it is (NULL for built-in defaults).
 */
static void
config_list_add(struct config_loader *ld, const struct config_key *k, char *base,
    const char *name, const char *v, const yaml_mark_t *m)
{
	char **vp = *(char ***)(base + k->off);
	size_t *np = (size_t *)(base + k->off2);
	const char *why;
	char *s;

	if (k->type == CFT_ATOMLIST) {
		if ((why = config_atom_problem(v)) != NULL) {
			config_error(ld, m, "%s: \"%s\" %s", name, v, why);
			return;
		}
		s = config_atom_upper(ld, v);
	} else
		s = config_strdup(ld, v);
	if (s == NULL)
		return;
	if (k->type == CFT_REGEXLIST &&
	    config_regex(ld, &(*(regex_t **)(base + k->off3))[*np], name, v, m) != 0) {
		free(s);
		return;
	}
	if (k->type == CFT_CIDRLIST) {
		char err[CONFIG_MSGLEN];
		if (config_cidr_parse(v, &(*(struct config_cidr **)(base + k->off3))[*np],
		    err, sizeof(err)) != 0) {
			config_error(ld, m, "%s: %s", name, err);
			free(s);
			return;
		}
	}
	vp[(*np)++] = s;
}

/* Allocate room for cnt entries in the string list of key k; 0 or -1 (no memory). */
static int
config_list_alloc(struct config_loader *ld, const struct config_key *k, char *base,
    size_t cnt)
{
	char ***vp = (char ***)(base + k->off);

	if ((*vp = calloc(cnt + 1, sizeof(char *))) == NULL) {
		ld->oom = 1;
		return -1;
	}
	if (k->type == CFT_REGEXLIST &&
	    (*(regex_t **)(base + k->off3) = calloc(cnt + 1, sizeof(regex_t))) == NULL) {
		ld->oom = 1;
		return -1;
	}
	if (k->type == CFT_CIDRLIST && (*(struct config_cidr **)(base + k->off3) =
	    calloc(cnt + 1, sizeof(struct config_cidr))) == NULL) {
		ld->oom = 1;
		return -1;
	}
	return 0;
}

/*
 * Convert scalar text v for key k and store it in base.  name is the
 * key's path for messages; m is where the value is (NULL for defaults,
 * whose failure is a bug in the table and reported as such).
 */
static void
config_store(struct config_loader *ld, const struct config_key *k, char *base,
    const char *name, const char *v, const yaml_mark_t *m)
{
	char lo[32], hi[32], err[CONFIG_MSGLEN];
	uint64_t u = 0;
	int rc;

	switch (k->type) {
	case CFT_STRING:
	case CFT_PATH: {
		char *s;
		if (v[0] == '\0') {
			config_error(ld, m, "%s: the value is empty", name);
			return;
		}
		s = k->type == CFT_PATH ? config_resolve(ld, v) : config_strdup(ld, v);
		if (s == NULL)
			return;
		free(*(char **)(base + k->off));
		*(char **)(base + k->off) = s;
		return;
	}
	case CFT_CODE: {
		const char *why;
		char *s;
		/* "none" is the keyword (no code / remove the code), in any case. */
		if (strcasecmp(v, "none") == 0)
			s = config_strdup(ld, "none");
		else if ((why = config_atom_problem(v)) != NULL) {
			config_error(ld, m, "%s: \"%s\" %s", name, v, why);
			return;
		} else
			s = config_atom_upper(ld, v);
		if (s == NULL)
			return;
		free(*(char **)(base + k->off));
		*(char **)(base + k->off) = s;
		return;
	}
	case CFT_REGEX: {
		regex_t *re = (regex_t *)(base + k->off2);
		int *has = (int *)(base + k->off3);
		char *s;
		if (*has) {
			regfree(re);
			*has = 0;
		}
		free(*(char **)(base + k->off));
		*(char **)(base + k->off) = NULL;
		if (config_regex(ld, re, name, v, m) != 0)
			return;
		*has = 1;
		if ((s = config_strdup(ld, v)) != NULL)
			*(char **)(base + k->off) = s;
		return;
	}
	case CFT_ADDR: {
		char *s = config_strdup(ld, v);
		if (s == NULL)
			return;
		free(*(char **)(base + k->off));
		*(char **)(base + k->off) = s;
		if (netaddr_parse(v, k->passive, (struct netaddr *)(base + k->off2),
		    err, sizeof(err)) != 0)
			config_error(ld, m, "%s: %s", name, err);
		return;
	}
	case CFT_ENUM: {
		const struct config_word *w;
		char words[CONFIG_MSGLEN] = "";
		/*
		 * A refused word leaves -1, not the default, so that checks
		 * across keys do not act on a value the user did not write.
		 */
		*(int *)(base + k->off) = -1;
		for (w = k->words; w->word != NULL; w++) {
			if (strcmp(w->word, v) != 0)
				continue;
			if (w->reject != NULL)
				config_error(ld, m, "%s: \"%s\" %s", name, v, w->reject);
			else
				*(int *)(base + k->off) = w->value;
			return;
		}
		for (w = k->words; w->word != NULL; w++) {
			if (w->reject != NULL)
				continue;
			size_t n = strlen(words);
			snprintf(words + n, sizeof(words) - n, "%s%s", n ? ", " : "", w->word);
		}
		config_error(ld, m, "%s: \"%s\" is not one of %s", name, v, words);
		return;
	}
	case CFT_BOOL:
		if (!strcasecmp(v, "true") || !strcasecmp(v, "yes") || !strcasecmp(v, "on"))
			*(int *)(base + k->off) = 1;
		else if (!strcasecmp(v, "false") || !strcasecmp(v, "no") || !strcasecmp(v, "off"))
			*(int *)(base + k->off) = 0;
		else
			config_error(ld, m, "%s: \"%s\" is not a boolean (use true or false)", name, v);
		return;
	case CFT_UINT: {
		const struct config_word *w;
		for (w = k->words; w != NULL && w->word != NULL; w++)
			if (strcmp(w->word, v) == 0) {
				*(unsigned *)(base + k->off) = (unsigned)w->value;
				return;
			}
		rc = config_parse_scaled(v, config_count_units, config_count_factors, &u);
		if (rc == -1) {
			config_error(ld, m, "%s: \"%s\" is not %s%sa whole number", name, v,
			    k->words != NULL ? k->words[0].word : "",
			    k->words != NULL ? " or " : "");
			return;
		}
		if (rc == -2 || u < (uint64_t)k->min || u > (uint64_t)k->max) {
			config_error(ld, m, "%s: %s is out of range %s..%s%s%s%s", name, v,
			    config_fmt_bound(k, k->min, lo, sizeof(lo)),
			    config_fmt_bound(k, k->max, hi, sizeof(hi)),
			    k->words != NULL ? " (or " : "",
			    k->words != NULL ? k->words[0].word : "",
			    k->words != NULL ? ")" : "");
			return;
		}
		*(unsigned *)(base + k->off) = (unsigned)u;
		return;
	}
	case CFT_SIZE:
	case CFT_DURATION:
		rc = k->type == CFT_SIZE ? config_size(v, &u) : config_duration(v, &u);
		if (rc == -1) {
			if (k->type == CFT_SIZE)
				config_error(ld, m, "%s: \"%s\" is not a size (write bytes, or a "
				    "whole number with KiB, MiB or GiB, e.g. 64KiB; KB/MB are not "
				    "accepted)", name, v);
			else
				config_error(ld, m, "%s: \"%s\" is not a duration (write a whole "
				    "number with ms, s, m or h, e.g. 30s)", name, v);
			return;
		}
		if (rc == -2 || u > (uint64_t)k->max) {
			config_error(ld, m, "%s: %s is above the maximum %s", name, v,
			    config_fmt_bound(k, k->max, hi, sizeof(hi)));
			return;
		}
		if (u < (uint64_t)k->min) {
			config_error(ld, m, "%s: %s is below the minimum %s", name, v,
			    config_fmt_bound(k, k->min, lo, sizeof(lo)));
			return;
		}
		if (k->type == CFT_SIZE)
			*(size_t *)(base + k->off) = (size_t)u;
		else
			*(uint64_t *)(base + k->off) = u;
		return;
	default:
		config_error(ld, m, "%s: internal error: key type %d is not a scalar",
		    name, (int)k->type);
		return;
	}
}

/* Store the defaults of every scalar key in a scope. */
static void
config_defaults(struct config_loader *ld, const char *pattern, char *base)
{
	for (size_t i = 0; i < CONFIG_NKEYS; i++) {
		const struct config_key *k = &config_keys[i];
		size_t n = 0;
		if (!config_key_in_scope(k, pattern))
			continue;
		if (k->def != NULL)
			config_store(ld, k, base, k->path, k->def, NULL);
		if (k->defs == NULL)
			continue;
		/* Built-in list entries are stored as if the file had written them. */
		while (k->defs[n] != NULL)
			n++;
		if (config_list_alloc(ld, k, base, n) != 0)
			continue;
		for (size_t j = 0; j < n; j++)
			config_list_add(ld, k, base, k->path, k->defs[j], NULL);
	}
}

/* Get the text of a scalar node, refusing embedded NUL bytes. */
static const char *
config_scalar(struct config_loader *ld, const yaml_node_t *n, const char *name)
{
	const char *v = (const char *)n->data.scalar.value;

	if (strlen(v) != n->data.scalar.length) {
		config_error(ld, &n->start_mark, "%s: value contains a NUL byte", name);
		return NULL;
	}
	return v;
}

static void config_walk_map(struct config_loader *, struct config_scope *,
    const yaml_node_t *, const char *);
static void config_scope_finish(struct config_loader *, struct config_scope *);

/* Read a list of strings for key k. */
static void
config_read_strlist(struct config_loader *ld, const struct config_key *k, char *base,
    const char *name, const yaml_node_t *n)
{
	yaml_node_item_t *it = n->data.sequence.items.start;
	size_t cnt = (size_t)(n->data.sequence.items.top - it);
	size_t max = k->max > 0 ? (size_t)k->max : CONFIG_MAX_ENTRIES;

	/* The file's list replaces the defaults, whole. */
	config_free_value(k, base);
	if (cnt > max) {
		config_error(ld, &n->start_mark, "%s: at most %zu entries are allowed", name, max);
		return;
	}
	if (config_list_alloc(ld, k, base, cnt) != 0)
		return;
	for (size_t i = 0; i < cnt && !config_gave_up(ld); i++) {
		const yaml_node_t *e = yaml_document_get_node(ld->doc, it[i]);
		char ename[CONFIG_MAX_PATH];
		const char *v;

		snprintf(ename, sizeof(ename), "%s[%zu]", name, i);
		if (e->type != YAML_SCALAR_NODE) {
			config_error(ld, &e->start_mark, "%s: expected a string, got %s",
			    ename, config_node_kind(e));
			continue;
		}
		if (config_node_is_null(e)) {
			config_error(ld, &e->start_mark, "%s: no value given", ename);
			continue;
		}
		if ((v = config_scalar(ld, e, ename)) == NULL)
			continue;
		config_list_add(ld, k, base, ename, v, &e->start_mark);
	}
}

/* Read a list of mappings for key k: one scope per entry. */
static void
config_read_list(struct config_loader *ld, const struct config_key *k, char *base,
    const char *name, const yaml_node_t *n)
{
	char **ep = (char **)(base + k->off);
	size_t *np = (size_t *)(base + k->off2);
	yaml_node_item_t *it = n->data.sequence.items.start;
	size_t cnt = (size_t)(n->data.sequence.items.top - it);
	char pattern[CONFIG_MAX_PATH];

	snprintf(pattern, sizeof(pattern), "%s[]", k->path);
	if (cnt < (size_t)k->min)
		config_error(ld, &n->start_mark, "%s: at least %" PRId64 " %s required",
		    name, k->min, k->min == 1 ? "entry is" : "entries are");
	else if (cnt > (size_t)k->max) {
		config_error(ld, &n->start_mark, "%s: at most %" PRId64 " entries are allowed",
		    name, k->max);
		return;
	}
	if ((*ep = calloc(cnt ? cnt : 1, k->elemsize)) == NULL) {
		ld->oom = 1;
		return;
	}
	*np = cnt;
	for (size_t i = 0; i < cnt && !config_gave_up(ld); i++) {
		const yaml_node_t *e = yaml_document_get_node(ld->doc, it[i]);
		char *elem = *ep + i * k->elemsize;
		char where[CONFIG_MAX_PATH];
		struct config_scope *sc;

		snprintf(where, sizeof(where), "%s[%zu]", name, i);
		if (k->lineoff != CONFIG_NOPOS) {
			*(int *)(elem + k->lineoff) = (int)e->start_mark.line + 1;
			*(int *)(elem + k->coloff) = (int)e->start_mark.column + 1;
		}
		config_defaults(ld, pattern, elem);
		if (e->type != YAML_MAPPING_NODE) {
			config_error(ld, &e->start_mark, "%s: expected a mapping, got %s",
			    where, config_node_kind(e));
			continue;
		}
		if ((sc = calloc(1, sizeof(*sc))) == NULL) {
			ld->oom = 1;
			continue;
		}
		sc->pattern = pattern;
		sc->where = where;
		sc->base = elem;
		sc->mark = e->start_mark;
		sc->nerr0 = ld->errs->n;
		config_walk_map(ld, sc, e, "");
		config_scope_finish(ld, sc);
		if (k->check != NULL)
			k->check(ld, sc);
		free(sc);
	}
}

/* Handle one key's value node according to its table row. */
static void
config_read_value(struct config_loader *ld, struct config_scope *sc,
    const struct config_key *k, const char *name, const yaml_node_t *n)
{
	static const yaml_node_t empty_seq = { .type = YAML_SEQUENCE_NODE };
	const char *v;

	if (k->type == CFT_LIST || k->type == CFT_STRLIST || k->type == CFT_ATOMLIST ||
	    k->type == CFT_REGEXLIST || k->type == CFT_CIDRLIST) {
		if (config_node_is_null(n)) {
			/* "key:" with nothing under it is an empty list. */
			yaml_node_t e = empty_seq;
			e.start_mark = n->start_mark;
			if (k->type == CFT_LIST)
				config_read_list(ld, k, sc->base, name, &e);
			else
				config_read_strlist(ld, k, sc->base, name, &e);
			return;
		}
		if (n->type != YAML_SEQUENCE_NODE) {
			config_error(ld, &n->start_mark, "%s: expected a list, got %s",
			    name, config_node_kind(n));
			return;
		}
		if (k->type == CFT_LIST)
			config_read_list(ld, k, sc->base, name, n);
		else
			config_read_strlist(ld, k, sc->base, name, n);
		return;
	}
	if (n->type != YAML_SCALAR_NODE) {
		config_error(ld, &n->start_mark, "%s: expected a single value, got %s",
		    name, config_node_kind(n));
		return;
	}
	if (config_node_is_null(n)) {
		config_error(ld, &n->start_mark, "%s: no value given", name);
		return;
	}
	if ((v = config_scalar(ld, n, name)) == NULL)
		return;
	config_store(ld, k, sc->base, name, v, &n->start_mark);
}

/*
 * Walk mapping n, which is at path rel inside scope sc ("" for the scope's
 * own mapping, "tls" for the tls group at the top level).
 */
static void
config_walk_map(struct config_loader *ld, struct config_scope *sc,
    const yaml_node_t *n, const char *rel)
{
	yaml_node_pair_t *pairs = n->data.mapping.pairs.start;
	size_t cnt = (size_t)(n->data.mapping.pairs.top - pairs);

	/* The duplicate check below is quadratic; no real file comes near this. */
	if (cnt > CONFIG_MAX_KEYS) {
		char where[CONFIG_MAX_PATH];
		config_join(where, sizeof(where), sc->where, rel);
		config_error(ld, &n->start_mark, "%s%smore than %d keys in one mapping",
		    where, where[0] ? ": " : "", CONFIG_MAX_KEYS);
		return;
	}
	if (rel[0] != '\0' && sc->nsubmaps < CONFIG_MAX_SUBMAPS) {
		snprintf(sc->submaps[sc->nsubmaps].rel, CONFIG_MAX_PATH, "%s", rel);
		sc->submaps[sc->nsubmaps++].mark = n->start_mark;
	}
	for (size_t i = 0; i < cnt && !config_gave_up(ld); i++) {
		const yaml_node_t *kn = yaml_document_get_node(ld->doc, pairs[i].key);
		const yaml_node_t *vn = yaml_document_get_node(ld->doc, pairs[i].value);
		char where[CONFIG_MAX_PATH], subrel[CONFIG_MAX_PATH];
		char pattern[CONFIG_MAX_PATH], name[CONFIG_MAX_PATH];
		const struct config_key *k;
		const char *key;
		size_t j;

		config_join(where, sizeof(where), sc->where, rel);
		if (kn->type != YAML_SCALAR_NODE) {
			config_error(ld, &kn->start_mark, "%s%skeys must be plain names, not %s",
			    where, where[0] ? ": " : "", config_node_kind(kn));
			continue;
		}
		key = (const char *)kn->data.scalar.value;
		for (j = 0; j < i; j++) {
			const yaml_node_t *pk = yaml_document_get_node(ld->doc, pairs[j].key);
			if (pk->type == YAML_SCALAR_NODE &&
			    strcmp((const char *)pk->data.scalar.value, key) == 0)
				break;
		}
		if (j < i) {
			const yaml_node_t *pk = yaml_document_get_node(ld->doc, pairs[j].key);
			config_error(ld, &kn->start_mark,
			    "%s%sduplicate key \"%s\" (first at line %lu)", where,
			    where[0] ? ": " : "", key, (unsigned long)pk->start_mark.line + 1);
			continue;
		}
		/*
		 * Dots and brackets would let "limits.max_line: 5" at the top
		 * level match a nested key's path; names are plain words.
		 */
		if (strlen(key) > CONFIG_MAX_KEYLEN || key[strcspn(key, ".[]")] != '\0' ||
		    strlen(key) != kn->data.scalar.length) {
			config_error(ld, &kn->start_mark, "%s%sunknown key \"%.*s\"",
			    where, where[0] ? ": " : "", CONFIG_MAX_KEYLEN, key);
			continue;
		}
		config_join(subrel, sizeof(subrel), rel, key);
		config_join(pattern, sizeof(pattern), sc->pattern, subrel);
		config_join(name, sizeof(name), sc->where, subrel);

		if ((k = config_key_find(pattern)) != NULL) {
			size_t idx = (size_t)(k - config_keys);
			sc->seen[idx] = 1;
			sc->vmark[idx] = vn->start_mark;
			config_read_value(ld, sc, k, name, vn);
		} else if (config_key_is_group(pattern)) {
			if (vn->type == YAML_MAPPING_NODE)
				config_walk_map(ld, sc, vn, subrel);
			else if (config_node_is_null(vn)) {
				/* "log:" with every key commented out: an empty group. */
				yaml_node_t e = { .type = YAML_MAPPING_NODE };
				e.start_mark = vn->start_mark;
				config_walk_map(ld, sc, &e, subrel);
			} else
				config_error(ld, &vn->start_mark, "%s: expected a mapping, got %s",
				    name, config_node_kind(vn));
		} else
			config_error(ld, &kn->start_mark, "%s%sunknown key \"%s\"",
			    where, where[0] ? ": " : "", key);
	}
}

/* Report required keys of a scope that were not given. */
static void
config_scope_finish(struct config_loader *ld, struct config_scope *sc)
{
	size_t plen = strlen(sc->pattern);

	for (size_t i = 0; i < CONFIG_NKEYS; i++) {
		const struct config_key *k = &config_keys[i];
		const char *rel, *mapname = "";
		const yaml_mark_t *m = &sc->mark;
		size_t best = 0;
		char where[CONFIG_MAX_PATH];

		if (!k->required || sc->seen[i] || !config_key_in_scope(k, sc->pattern))
			continue;
		rel = k->path + plen + (plen ? 1 : 0);
		/* Blame the deepest enclosing mapping that is present. */
		for (size_t j = 0; j < sc->nsubmaps; j++) {
			size_t n = strlen(sc->submaps[j].rel);
			if (n > best && strncmp(rel, sc->submaps[j].rel, n) == 0 && rel[n] == '.') {
				best = n;
				m = &sc->submaps[j].mark;
				mapname = sc->submaps[j].rel;
			}
		}
		config_join(where, sizeof(where), sc->where, mapname);
		config_error(ld, m, "%s%smissing required key \"%s\"", where,
		    where[0] ? ": " : "", rel + best + (best ? 1 : 0));
	}
}

/* The index of the row with path, which must exist. */
static size_t
config_key_index(const char *path)
{
	const struct config_key *k = config_key_find(path);

	return k == NULL ? 0 : (size_t)(k - config_keys);
}

/* After a certificate entry: both files must be readable and belong together. */
static void
config_cert_check(struct config_loader *ld, struct config_scope *sc)
{
	const struct config_cert *c = (const struct config_cert *)sc->base;
	size_t ic = config_key_index("tls.certificates[].cert");
	size_t ik = config_key_index("tls.certificates[].key");
	char err[CONFIG_MSGLEN];
	int bad = 0;

	if (c->cert == NULL || c->key == NULL)
		return;
	if (access(c->cert, R_OK) != 0) {
		config_error(ld, &sc->vmark[ic], "%s.cert: cannot read \"%s\": %s",
		    sc->where, c->cert, strerror(errno));
		bad = 1;
	}
	if (access(c->key, R_OK) != 0) {
		config_error(ld, &sc->vmark[ik], "%s.key: cannot read \"%s\": %s",
		    sc->where, c->key, strerror(errno));
		bad = 1;
	}
	if (bad)
		return;
	if (tls_keypair_check(c->cert, c->key, err, sizeof(err)) != 0) {
		int oncert = strncmp(err, "certificate", 11) == 0;
		config_error(ld, oncert ? &sc->vmark[ic] : &sc->vmark[ik], "%s.%s: %s",
		    sc->where, oncert ? "cert" : "key", err);
	}
}

/* Whether a is a loopback address: 127.0.0.0/8, ::1, or 127/8 mapped into IPv6. */
static int
config_is_loopback(const struct netaddr *a)
{
	if (a->ss.ss_family == AF_INET) {
		const struct sockaddr_in *s4 = (const struct sockaddr_in *)&a->ss;
		return (ntohl(s4->sin_addr.s_addr) >> 24) == 127;
	}
	if (a->ss.ss_family == AF_INET6) {
		const struct in6_addr *s6 = &((const struct sockaddr_in6 *)&a->ss)->sin6_addr;
		return IN6_IS_ADDR_LOOPBACK(s6) ||
		    (IN6_IS_ADDR_V4MAPPED(s6) && s6->s6_addr[12] == 127);
	}
	return 0;
}

/* Where key path's value is in scope sc, or the scope's own mapping if not written. */
static const yaml_mark_t *
config_vmark(const struct config_scope *sc, const char *path)
{
	size_t i = config_key_index(path);

	return sc->seen[i] ? &sc->vmark[i] : &sc->mark;
}

/*
 * After a listener entry.  Plaintext logins off loopback need insecure:
 * true written out, so that a forgotten "tls:" line or a test setting
 * copied to production cannot expose passwords by accident.  A PROXY
 * header is only believed from listed networks, and a list without
 * proxy_protocol is refused because it reads like an access list, which
 * it is not.
 */
static void
config_listen_check(struct config_loader *ld, struct config_scope *sc)
{
	const struct config_listen *l = (const struct config_listen *)sc->base;
	size_t itp = config_key_index("listen[].trusted_proxies");

	if (l->address != NULL && l->addr.ss.ss_family != 0 && !config_is_loopback(&l->addr) &&
	    !l->insecure) {
		if (l->tls == CONFIG_TLS_NONE)
			config_error(ld, config_vmark(sc, "listen[].tls"), "%s.tls: \"none\" "
			    "on %s, which is not a loopback address, lets passwords cross the "
			    "network in plaintext; use implicit or starttls, or add insecure: "
			    "true to accept that", sc->where, l->address);
		else if (l->tls == CONFIG_TLS_STARTTLS && l->require_tls == 0)
			config_error(ld, config_vmark(sc, "listen[].require_tls"),
			    "%s.require_tls: false on %s, which is not a loopback address, "
			    "lets clients log in before STARTTLS, in plaintext; add insecure: "
			    "true to accept that", sc->where, l->address);
	}
	if (l->proxy_protocol == 1 && l->ntrusted_proxies == 0 && ld->errs->n == sc->nerr0)
		config_error(ld, config_vmark(sc, "listen[].proxy_protocol"),
		    "%s.proxy_protocol: true needs trusted_proxies, the networks whose PROXY "
		    "headers are believed (for example [10.0.0.0/8])", sc->where);
	if (l->proxy_protocol == 0 && sc->seen[itp] && l->ntrusted_proxies > 0)
		config_error(ld, &sc->vmark[itp], "%s.trusted_proxies: only used with "
		    "proxy_protocol: true (it does not limit who may connect)", sc->where);
}

/* Whether s is usable as a host name for SNI and certificate checks. */
static int
config_hostname_ok(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > CONFIG_MAX_HOSTNAME)
		return 0;
	/* Letters, digits, '-', '.', '_' (seen on internal names) and ':' (IPv6 literals). */
	for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++)
		if (!isalnum(*p) && strchr("-._:", *p) == NULL)
			return 0;
	return 1;
}

/*
 * Whether errno after a failed getpwnam/getgrnam means the lookup itself
 * failed; 0, ENOENT, ESRCH, EBADF and EPERM all mean "not found" (POSIX).
 */
static int
config_nss_failed(int e)
{
	return e != 0 && e != ENOENT && e != ESRCH && e != EBADF && e != EPERM;
}

/*
 * Read a password file at load: one line, its line end dropped, printable
 * ASCII only (it is sent in an IMAP quoted string).  NULL after an error
 * reported at mark.
 */
static char *
config_read_secret(struct config_loader *ld, const yaml_mark_t *mark, const char *key,
    const char *path)
{
	char buf[CONFIG_MAX_SECRET + 2];
	FILE *f;
	size_t n;
	char *v = NULL;

	if ((f = fopen(path, "rb")) == NULL) {
		config_error(ld, mark, "%s: cannot open \"%s\": %s", key, path, strerror(errno));
		return NULL;
	}
	n = fread(buf, 1, sizeof(buf), f);
	fclose(f);
	if (n > 0 && buf[n - 1] == '\n')
		n--;
	if (n > 0 && buf[n - 1] == '\r')
		n--;
	if (n > CONFIG_MAX_SECRET)
		config_error(ld, mark, "%s: \"%s\" is longer than %u bytes", key, path,
		    CONFIG_MAX_SECRET);
	else if (n == 0)
		config_error(ld, mark, "%s: \"%s\" is empty", key, path);
	else {
		size_t i;

		for (i = 0; i < n && buf[i] >= 0x20 && buf[i] < 0x7f; i++)
			;
		if (i < n)
			config_error(ld, mark, "%s: \"%s\" holds a byte that is not printable "
			    "ASCII (at offset %zu), or more than one line", key, path, i);
		else if ((v = malloc(n + 1)) == NULL)
			ld->oom = 1;
		else {
			memcpy(v, buf, n);
			v[n] = '\0';
		}
	}
	explicit_bzero(buf, sizeof(buf));
	return v;
}

/* backend.health.user and password_file: both or neither, the password read now. */
static void
config_health_login_check(struct config_loader *ld, struct config_scope *sc)
{
	struct config *cf = ld->cf;
	size_t iu = config_key_index("backend.health.user");
	size_t ip = config_key_index("backend.health.password_file");

	if ((cf->health_user != NULL) != (cf->health_password_file != NULL)) {
		config_error(ld, cf->health_user != NULL ? &sc->vmark[iu] : &sc->vmark[ip],
		    "backend.health: user and password_file go together (a check logs in "
		    "with both, or does not log in)");
		return;
	}
	if (cf->health_user == NULL)
		return;
	for (const char *c = cf->health_user; *c; c++)
		if ((unsigned char)*c < 0x20 || (unsigned char)*c >= 0x7f) {
			config_error(ld, &sc->vmark[iu], "backend.health.user: printable ASCII only");
			return;
		}
	if (cf->health_user[0] == '\0' || strlen(cf->health_user) > CONFIG_MAX_SECRET)
		config_error(ld, &sc->vmark[iu], "backend.health.user: 1 to %u bytes",
		    CONFIG_MAX_SECRET);
	cf->health_password = config_read_secret(ld, &sc->vmark[ip],
	    "backend.health.password_file", cf->health_password_file);
}

/* Is text printable ASCII of 1 .. max bytes? */
static int
config_printable(const char *text, size_t max)
{
	size_t n = 0;

	for (; text[n] != '\0'; n++)
		if ((unsigned char)text[n] < 0x20 || (unsigned char)text[n] >= 0x7f)
			return 0;
	return n > 0 && n <= max;
}

/* Read backend.lookup.file; its errors are reported against the map file itself. */
static void
config_usermap_load(struct config_loader *ld, const yaml_mark_t *mark)
{
	struct config *cf = ld->cf;
	struct usermap_errors *errs;
	const char *file = ld->file;

	if ((errs = calloc(1, sizeof(*errs))) == NULL) {
		ld->oom = 1;
		return;
	}
	cf->usermap = usermap_load(cf->lookup_file, errs);
	if (cf->usermap == NULL && errs->n == 0)
		config_error(ld, mark, "backend.lookup.file: cannot load \"%s\"", cf->lookup_file);
	ld->file = cf->lookup_file;
	for (size_t i = 0; i < errs->n; i++) {
		/* The file's own bytes may be quoted in a message: keep the terminal safe. */
		for (char *c = errs->v[i].msg; *c; c++)
			if ((unsigned char)*c < 0x20 || (unsigned char)*c >= 0x7f)
				*c = '?';
		config_error_at(ld, errs->v[i].line, errs->v[i].col, "%s", errs->v[i].msg);
	}
	ld->file = file;
	free(errs);
}

/*
 * backend.route and the keys of login routing: each lookup's own keys,
 * none of them without route: login, the map file read and the URL
 * resolved now, the master password read now.
 */
static void
config_route_check(struct config_loader *ld, struct config_scope *sc)
{
	static const char *const login_only[] = {
		"backend.lookup.type", "backend.lookup.key", "backend.lookup.file",
		"backend.lookup.fallback", "backend.lookup.url", "backend.lookup.timeout",
		"backend.lookup.keepalive", "backend.login.credentials", "backend.login.master_user",
		"backend.login.master_password_file", "backend.login.master_separator",
		"backend.login.greeting", "backend.login.oauth", NULL,
	};
	struct config *cf = ld->cf;
	size_t ifile = config_key_index("backend.lookup.file");
	size_t iurl = config_key_index("backend.lookup.url");
	size_t ika = config_key_index("backend.lookup.keepalive");
	size_t ifb = config_key_index("backend.lookup.fallback");
	size_t ikey = config_key_index("backend.lookup.key");
	size_t imu = config_key_index("backend.login.master_user");
	size_t imp = config_key_index("backend.login.master_password_file");
	size_t isep = config_key_index("backend.login.master_separator");
	size_t igr = config_key_index("backend.login.greeting");
	char err[256];

	if (cf->route != CONFIG_ROUTE_LOGIN) {
		for (size_t i = 0; login_only[i] != NULL; i++)
			if (sc->seen[config_key_index(login_only[i])])
				config_error(ld, &sc->vmark[config_key_index(login_only[i])],
				    "%s: only used with backend.route: login", login_only[i]);
		return;
	}
	if (cf->lookup != CONFIG_LOOKUP_STATIC && sc->seen[ifile])
		config_error(ld, &sc->vmark[ifile], "backend.lookup.file: only used with "
		    "backend.lookup.type: static");
	if (cf->lookup != CONFIG_LOOKUP_STATIC && sc->seen[ifb])
		config_error(ld, &sc->vmark[ifb], "backend.lookup.fallback: only used with "
		    "backend.lookup.type: static");
	if (cf->lookup != CONFIG_LOOKUP_HTTP && sc->seen[iurl])
		config_error(ld, &sc->vmark[iurl], "backend.lookup.url: only used with "
		    "backend.lookup.type: http");
	if (cf->lookup != CONFIG_LOOKUP_HTTP && sc->seen[ika])
		config_error(ld, &sc->vmark[ika], "backend.lookup.keepalive: only used with "
		    "backend.lookup.type: http");
	if (cf->lookup == CONFIG_LOOKUP_HTTP && sc->seen[ikey])
		config_error(ld, &sc->vmark[ikey], "backend.lookup.key: not used with "
		    "backend.lookup.type: http (the service gets the whole user name)");
	if (cf->lookup == CONFIG_LOOKUP_STATIC) {
		if (cf->lookup_file == NULL)
			config_error(ld, config_vmark(sc, "backend.lookup.type"),
			    "backend.lookup.type: static needs backend.lookup.file");
		else
			config_usermap_load(ld, &sc->vmark[ifile]);
	}
	if (cf->lookup == CONFIG_LOOKUP_HTTP) {
		if (cf->lookup_url == NULL)
			config_error(ld, config_vmark(sc, "backend.lookup.type"),
			    "backend.lookup.type: http needs backend.lookup.url");
		else if ((cf->lookup_http = calloc(1, sizeof(*cf->lookup_http))) == NULL)
			ld->oom = 1;
		else if (authhttp_url_parse(cf->lookup_url, cf->lookup_http, err, sizeof(err)) != 0)
			config_error(ld, &sc->vmark[iurl], "backend.lookup.url: %s", err);
	}
	if (cf->credentials == CONFIG_CREDENTIALS_MASTER) {
		/*
		 * A master login opens any mailbox without the user's password:
		 * only an http lookup checks that password (its auth service
		 * answers OK for the right one).  Hash or static would let anyone
		 * in as anyone.
		 */
		if (cf->lookup != CONFIG_LOOKUP_HTTP)
			config_error(ld, config_vmark(sc, "backend.login.credentials"),
			    "backend.login.credentials: master needs backend.lookup.type: http "
			    "(with hash or static nobody would check the user's password)");
		if (cf->master_user == NULL || cf->master_password_file == NULL)
			config_error(ld, config_vmark(sc, "backend.login.credentials"),
			    "backend.login.credentials: master needs master_user and "
			    "master_password_file");
		else if (!config_printable(cf->master_user, CONFIG_MAX_SECRET))
			config_error(ld, &sc->vmark[imu], "backend.login.master_user: printable "
			    "ASCII, 1 to %u bytes", CONFIG_MAX_SECRET);
		else
			cf->master_password = config_read_secret(ld, &sc->vmark[imp],
			    "backend.login.master_password_file", cf->master_password_file);
	} else if (sc->seen[imu] || sc->seen[imp])
		config_error(ld, &sc->vmark[sc->seen[imu] ? imu : imp], "%s: only used with "
		    "backend.login.credentials: master", sc->seen[imu] ?
		    "backend.login.master_user" : "backend.login.master_password_file");
	if (!config_printable(cf->master_separator, 8) ||
	    strpbrk(cf->master_separator, " \"\\(){%]") != NULL)
		config_error(ld, &sc->vmark[isep], "backend.login.master_separator: 1 to 8 "
		    "printable characters, no space, quote, backslash or IMAP special");
	if (!config_printable(cf->login_greeting, 128))
		config_error(ld, &sc->vmark[igr], "backend.login.greeting: printable ASCII, "
		    "1 to 128 bytes");
}

/* Checks across keys of the top level, while their positions are known. */
static void
config_top_check(struct config_loader *ld, struct config_scope *sc)
{
	struct config *cf = ld->cf;
	size_t ica = config_key_index("backend.ca_file");
	size_t isn = config_key_index("backend.server_name");
	size_t iu = config_key_index("user"), ig = config_key_index("group");
	size_t iht = config_key_index("backend.health.timeout");

	if (cf->backend_tls == CONFIG_TLS_NONE) {
		/* Written for a backend reached in plaintext, they suggest TLS that is not there. */
		if (sc->seen[ica] && cf->backend_ca_file != NULL)
			config_error(ld, &sc->vmark[ica], "backend.ca_file: only used with "
			    "backend.tls: implicit or starttls (backend.tls is none)");
		if (sc->seen[isn] && cf->backend_server_name != NULL)
			config_error(ld, &sc->vmark[isn], "backend.server_name: only used with "
			    "backend.tls: implicit or starttls (backend.tls is none)");
	} else if (cf->backend_tls == CONFIG_TLS_IMPLICIT ||
	    cf->backend_tls == CONFIG_TLS_STARTTLS) {
		if (cf->backend_verify == 1 && cf->backend_server_name == NULL &&
		    !sc->seen[isn])
			config_error(ld, config_vmark(sc, "backend.tls"), "backend.tls: "
			    "backend.server_name is needed to verify the backend's certificate "
			    "(or set verify: false)");
		if (cf->backend_ca_file != NULL && access(cf->backend_ca_file, R_OK) != 0)
			config_error(ld, &sc->vmark[ica], "backend.ca_file: cannot read \"%s\": %s",
			    cf->backend_ca_file, strerror(errno));
	}
	if (cf->backend_server_name != NULL && !config_hostname_ok(cf->backend_server_name))
		config_error(ld, &sc->vmark[isn], "backend.server_name: \"%s\" is not a host "
		    "name", cf->backend_server_name);
	if (cf->health_timeout_ms > cf->health_interval_ms)
		config_error(ld, config_vmark(sc, sc->seen[iht] ? "backend.health.timeout" :
		    "backend.health.interval"), "backend.health.timeout (%" PRIu64 "ms) is "
		    "longer than backend.health.interval (%" PRIu64 "ms): a check would still "
		    "be running when the next one starts", cf->health_timeout_ms,
		    cf->health_interval_ms);
	config_health_login_check(ld, sc);
	config_route_check(ld, sc);
	if (cf->idle_keepalive_ms > 0 && cf->idle_keepalive_ms < 1000)
		config_error(ld, config_vmark(sc, "timeouts.idle_keepalive"),
		    "timeouts.idle_keepalive: 0 (off) or at least 1s");
	errno = 0;
	if (cf->control_group != NULL && getgrnam(cf->control_group) == NULL)
		config_error(ld, config_vmark(sc, "control.group"), "control.group: no such group "
		    "\"%s\"", cf->control_group);
	if (cf->control_group != NULL && cf->control_socket == NULL)
		config_error(ld, config_vmark(sc, "control.group"), "control.group: only used "
		    "with control.socket");
	/* Looked up here so that a typo fails "imapgate -t", not the start after binding. */
	errno = 0;
	if (cf->user != NULL && getpwnam(cf->user) == NULL)
		config_error(ld, &sc->vmark[iu], "user: no such user \"%s\"%s%s", cf->user,
		    config_nss_failed(errno) ? ": " : "",
		    config_nss_failed(errno) ? strerror(errno) : "");
	errno = 0;
	if (cf->group != NULL && getgrnam(cf->group) == NULL)
		config_error(ld, &sc->vmark[ig], "group: no such group \"%s\"%s%s", cf->group,
		    config_nss_failed(errno) ? ": " : "",
		    config_nss_failed(errno) ? strerror(errno) : "");
}

/* Checks that span several keys, after the whole file has been read. */
static void
config_check(struct config_loader *ld)
{
	struct config *cf = ld->cf;

	for (size_t i = 0; i < cf->nlisten && cf->ncerts == 0; i++) {
		if (cf->listen[i].tls != CONFIG_TLS_IMPLICIT &&
		    cf->listen[i].tls != CONFIG_TLS_STARTTLS)
			continue;
		config_error_at(ld, cf->listen[i].line, cf->listen[i].col,
		    "listen[%zu]: uses tls: %s, but tls.certificates lists no certificate",
		    i, cf->listen[i].tls == CONFIG_TLS_IMPLICIT ? "implicit" : "starttls");
		break;
	}
}

/* Turn a reader error's byte offset into a 1-based line and column. */
static void
config_offset_pos(const struct config_loader *ld, size_t off, int *line, int *col)
{
	*line = 1;
	*col = 1;
	for (size_t i = 0; i < off && i < ld->textlen; i++) {
		if (ld->text[i] == '\n') {
			(*line)++;
			*col = 1;
		} else
			(*col)++;
	}
}

/* Report a libyaml parser error with its position. */
static void
config_yaml_error(struct config_loader *ld, const yaml_parser_t *p)
{
	const char *problem = p->problem ? p->problem : "unknown error";
	int line, col;

	if (p->error == YAML_READER_ERROR) {
		config_offset_pos(ld, p->problem_offset, &line, &col);
		config_error_at(ld, line, col, "YAML error: %s", problem);
	} else if (p->error == YAML_MEMORY_ERROR) {
		ld->oom = 1;
	} else if (p->context != NULL)
		config_error(ld, &p->problem_mark,
		    "YAML syntax error: %s (%s at line %lu column %lu)", problem,
		    p->context, (unsigned long)p->context_mark.line + 1,
		    (unsigned long)p->context_mark.column + 1);
	else
		config_error(ld, &p->problem_mark, "YAML syntax error: %s", problem);
}

/* Read the whole file into memory, bounded by CONFIG_MAX_FILE. */
static char *
config_read_file(struct config_loader *ld, const char *path, size_t *len)
{
	FILE *f;
	char *buf;
	size_t n;

	if ((f = fopen(path, "rb")) == NULL) {
		config_error(ld, NULL, "cannot open: %s", strerror(errno));
		return NULL;
	}
	if ((buf = malloc(CONFIG_MAX_FILE + 1)) == NULL) {
		ld->oom = 1;
		fclose(f);
		return NULL;
	}
	n = fread(buf, 1, CONFIG_MAX_FILE + 1, f);
	if (ferror(f)) {
		config_error(ld, NULL, "cannot read: %s", strerror(errno));
		free(buf);
		fclose(f);
		return NULL;
	}
	fclose(f);
	if (n > CONFIG_MAX_FILE) {
		config_error(ld, NULL, "file is larger than %u bytes", CONFIG_MAX_FILE);
		free(buf);
		return NULL;
	}
	buf[n] = '\0';
	*len = n;
	return buf;
}

/*
 * The directory holding path, made absolute, for relative file names: the
 * daemon may change directory after loading, and the names must not move.
 */
static char *
config_dirname(struct config_loader *ld, const char *path)
{
	const char *slash = strrchr(path, '/');
	char cwd[PATH_MAX], *d;
	int rc;

	if (slash == path)
		return config_strdup(ld, "/");
	if (path[0] == '/')
		rc = asprintf(&d, "%.*s", (int)(slash - path), path);
	else {
		if (getcwd(cwd, sizeof(cwd)) == NULL) {
			config_error(ld, NULL, "cannot get the current directory: %s",
			    strerror(errno));
			return NULL;
		}
		if (slash == NULL)
			rc = asprintf(&d, "%s", cwd);
		else
			rc = asprintf(&d, "%s/%.*s", cwd, (int)(slash - path), path);
	}
	if (rc < 0) {
		ld->oom = 1;
		return NULL;
	}
	return d;
}

/*
 * Read the file's events once before loading it, and refuse mappings and
 * lists nested deeper than CONFIG_MAX_DEPTH, or more than CONFIG_MAX_NODES
 * values, before libyaml's loader sees them: its time grows with the
 * square of the nesting (40,000 "[" took seconds), its memory with the
 * nesting and the values (~300 bytes each).  Reads the two documents the
 * loader reads, no further.  Returns -1 after reporting; 0 otherwise, also
 * on a syntax error, which the loader then reports.
 */
static int
config_prescan(struct config_loader *ld)
{
	yaml_parser_t parser;
	yaml_event_t ev;
	unsigned depth = 0, docs = 0;
	size_t nodes = 0;
	int rc = 0, done = 0;

	if (!yaml_parser_initialize(&parser)) {
		ld->oom = 1;
		return -1;
	}
	yaml_parser_set_input_string(&parser, (const unsigned char *)ld->text, ld->textlen);
	while (!done && yaml_parser_parse(&parser, &ev)) {
		if ((ev.type == YAML_SCALAR_EVENT || ev.type == YAML_SEQUENCE_START_EVENT ||
		    ev.type == YAML_MAPPING_START_EVENT) && ++nodes > CONFIG_MAX_NODES) {
			config_error(ld, &ev.start_mark, "the file holds more than %d values "
			    "(scalars, lists and mappings)", CONFIG_MAX_NODES);
			rc = -1;
			done = 1;
		}
		switch (done ? YAML_NO_EVENT : ev.type) {
		case YAML_SEQUENCE_START_EVENT:
		case YAML_MAPPING_START_EVENT:
			if (++depth > CONFIG_MAX_DEPTH) {
				config_error(ld, &ev.start_mark, "%s nested too deep: at most %d "
				    "levels of mappings and lists are allowed",
				    ev.type == YAML_SEQUENCE_START_EVENT ? "list" : "mapping",
				    CONFIG_MAX_DEPTH);
				rc = -1;
				done = 1;
			}
			break;
		case YAML_SEQUENCE_END_EVENT:
		case YAML_MAPPING_END_EVENT:
			depth--;
			break;
		case YAML_DOCUMENT_END_EVENT:
			/* The loader reads a second document only to refuse it. */
			done = ++docs == 2;
			break;
		case YAML_STREAM_END_EVENT:
			done = 1;
			break;
		default:
			break;
		}
		yaml_event_delete(&ev);
	}
	yaml_parser_delete(&parser);
	return rc;
}

/* Parse the document and walk its top-level mapping into ld->cf. */
static void
config_load_doc(struct config_loader *ld)
{
	yaml_parser_t parser;
	yaml_document_t doc, extra;
	yaml_node_t *root;

	if (!yaml_parser_initialize(&parser)) {
		ld->oom = 1;
		return;
	}
	yaml_parser_set_input_string(&parser, (const unsigned char *)ld->text, ld->textlen);
	if (config_prescan(ld) != 0) {
		yaml_parser_delete(&parser);
		return;
	}
	if (!yaml_parser_load(&parser, &doc)) {
		config_yaml_error(ld, &parser);
		yaml_parser_delete(&parser);
		return;
	}
	ld->doc = &doc;
	root = yaml_document_get_root_node(&doc);
	if (root == NULL) {
		config_error_at(ld, 1, 1, "the file is empty (it must hold a mapping of keys)");
	} else if (root->type != YAML_MAPPING_NODE) {
		config_error(ld, &root->start_mark,
		    "the document must be a mapping of keys, not %s", config_node_kind(root));
	} else {
		struct config_scope *sc = calloc(1, sizeof(*sc));
		if (sc == NULL)
			ld->oom = 1;
		else {
			sc->pattern = "";
			sc->where = "";
			sc->base = (char *)ld->cf;
			sc->mark = root->start_mark;
			config_walk_map(ld, sc, root, "");
			config_scope_finish(ld, sc);
			if (!ld->oom)
				config_top_check(ld, sc);
			free(sc);
		}
		/* A second document would be silently ignored; refuse it. */
		if (!yaml_parser_load(&parser, &extra))
			config_yaml_error(ld, &parser);
		else {
			yaml_node_t *r2 = yaml_document_get_root_node(&extra);
			if (r2 != NULL)
				config_error(ld, &r2->start_mark,
				    "only one YAML document is allowed in the file");
			yaml_document_delete(&extra);
		}
	}
	ld->doc = NULL;
	yaml_document_delete(&doc);
	yaml_parser_delete(&parser);
}

/* Load and check path; on any error return NULL and fill errs. */
struct config *
config_load(const char *path, struct config_errors *errs)
{
	struct config_loader ld;
	char *text;

	memset(&ld, 0, sizeof(ld));
	ld.file = path;
	ld.errs = errs;
	errs->v = NULL;
	errs->n = 0;

	if ((ld.cf = calloc(1, sizeof(*ld.cf))) == NULL ||
	    (ld.cf->path = strdup(path)) == NULL) {
		ld.oom = 1;
		goto done;
	}
	config_defaults(&ld, "", (char *)ld.cf);
	if ((text = config_read_file(&ld, path, &ld.textlen)) == NULL)
		goto done;
	ld.text = text;
	ld.dir = config_dirname(&ld, path);
	config_load_doc(&ld);
	free(text);
	ld.text = NULL;
	if (!ld.oom)
		config_check(&ld);
done:
	free(ld.dir);
	if (ld.oom)
		config_error(&ld, NULL, "out of memory");
	if (errs->n > 0 || ld.oom) {
		config_free(ld.cf);
		return NULL;
	}
	return ld.cf;
}

/* Free a configuration returned by config_load. */
void
config_free(struct config *cf)
{
	if (cf == NULL)
		return;
	config_free_scope("", (char *)cf);
	if (cf->health_password != NULL) {
		explicit_bzero(cf->health_password, strlen(cf->health_password));
		free(cf->health_password);
	}
	if (cf->master_password != NULL) {
		explicit_bzero(cf->master_password, strlen(cf->master_password));
		free(cf->master_password);
	}
	usermap_free(cf->usermap);
	if (cf->lookup_http != NULL) {
		authhttp_url_clear(cf->lookup_http);
		free(cf->lookup_http);
	}
	free(cf->path);
	free(cf);
}

/* Free the error list filled by config_load. */
void
config_errors_free(struct config_errors *errs)
{
	for (size_t i = 0; i < errs->n; i++) {
		free(errs->v[i].file);
		free(errs->v[i].msg);
	}
	free(errs->v);
	errs->v = NULL;
	errs->n = 0;
}
