/* Unit tests for the configuration loader: good files, each kind of bad input, parsers. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <regex.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "authhttp.h"
#include "config.h"
#include "usermap.h"

#define TEST_PATHLEN	4096
#define TEST_YAMLLEN	32768
#define TEST_MAX_LOAD_CPU	2.0	/* seconds of CPU any file may take to load */

static int test_checks, test_failures;
static const char *test_data;		/* $TESTDATA: certificates and YAML files */
static char test_dir[TEST_PATHLEN / 2];	/* scratch directory for inline cases */

#define CHECK(cond, ...) do {						\
	test_checks++;							\
	if (!(cond)) {							\
		test_failures++;					\
		printf("FAIL %s:%d: ", __FILE__, __LINE__);		\
		printf(__VA_ARGS__);					\
		printf("\n");						\
	}								\
} while (0)

/* Lines shared by inline cases, so each case only writes what it is about. */
#define LISTEN	"listen:\n  - address: 127.0.0.1:10993\n"		/* 2 lines */
#define CERTS	"tls:\n  certificates:\n    - cert: @DATA@/cert.pem\n"	\
		"      key: @DATA@/key.pem\n"				/* 4 lines */
#define BACKEND	"backend:\n  servers:\n    - address: 127.0.0.1:11143\n"	/* 3 lines */

/* Print every error of a failed load, to explain a failed check. */
static void
test_dump(const struct config_errors *errs)
{
	for (size_t i = 0; i < errs->n; i++)
		printf("    got %s:%d:%d: %s\n", errs->v[i].file, errs->v[i].line,
		    errs->v[i].col, errs->v[i].msg);
}

/* The path of a file in the test data directory. */
static const char *
test_datafile(const char *name)
{
	static char buf[TEST_PATHLEN];

	snprintf(buf, sizeof(buf), "%s/%s", test_data, name);
	return buf;
}

/* Write yaml (with @DATA@ replaced by $TESTDATA) to a scratch file; return its path. */
static const char *
test_write(const char *yaml)
{
	static char path[TEST_PATHLEN];
	char out[TEST_YAMLLEN];
	size_t o = 0, dl = strlen(test_data);
	FILE *f;

	for (const char *p = yaml; *p != '\0' && o + dl + 1 < sizeof(out); ) {
		if (strncmp(p, "@DATA@", 6) == 0) {
			memcpy(out + o, test_data, dl);
			o += dl;
			p += 6;
		} else
			out[o++] = *p++;
	}
	snprintf(path, sizeof(path), "%s/case.yaml", test_dir);
	if ((f = fopen(path, "w")) == NULL) {
		perror(path);
		exit(2);
	}
	fwrite(out, 1, o, f);
	fclose(f);
	return path;
}

/* Load a file that must be good; NULL (after reporting) if it is not. */
static struct config *
test_load_good(const char *path, int srcline)
{
	struct config_errors errs;
	struct config *cf = config_load(path, &errs);

	CHECK(cf != NULL && errs.n == 0, "line %d: %s should load cleanly", srcline, path);
	if (cf == NULL)
		test_dump(&errs);
	config_errors_free(&errs);
	return cf;
}

/* Whether errs holds an error at line:col whose message contains want. */
static int
test_has(const struct config_errors *errs, int line, int col, const char *want)
{
	for (size_t i = 0; i < errs->n; i++)
		if (errs->v[i].line == line && errs->v[i].col == col &&
		    strstr(errs->v[i].msg, want) != NULL)
			return 1;
	return 0;
}

/*
 * Load inline yaml, which must fail with exactly nerr errors, one of them
 * at line:col containing want.
 */
static void
test_bad(int srcline, const char *yaml, size_t nerr, int line, int col, const char *want)
{
	struct config_errors errs;
	const char *path = test_write(yaml);
	struct config *cf = config_load(path, &errs);
	int ok = cf == NULL && errs.n == nerr && test_has(&errs, line, col, want);

	CHECK(ok, "case at line %d: want %zu error(s), one at %d:%d with \"%s\"",
	    srcline, nerr, line, col, want);
	if (!ok)
		test_dump(&errs);
	for (size_t i = 0; i < errs.n; i++)
		CHECK(strcmp(errs.v[i].file, path) == 0, "error file is %s", errs.v[i].file);
	config_free(cf);
	config_errors_free(&errs);
}

#define BAD(yaml, n, line, col, want)	test_bad(__LINE__, yaml, n, line, col, want)

/* The port of a parsed address, in host order. */
static unsigned
test_port(const struct netaddr *a)
{
	if (a->ss.ss_family == AF_INET)
		return ntohs(((const struct sockaddr_in *)&a->ss)->sin_port);
	if (a->ss.ss_family == AF_INET6)
		return ntohs(((const struct sockaddr_in6 *)&a->ss)->sin6_port);
	return 0;
}

/* Whether text matches any of the n compiled expressions in re. */
static int
test_matches(const regex_t *re, size_t n, const char *text)
{
	for (size_t i = 0; i < n; i++)
		if (regexec(&re[i], text, 0, NULL, 0) == 0)
			return 1;
	return 0;
}

/* Whether list v of n strings holds s. */
static int
test_in(char *const *v, size_t n, const char *s)
{
	for (size_t i = 0; i < n; i++)
		if (strcmp(v[i], s) == 0)
			return 1;
	return 0;
}

/* Texts the built-in desync patterns must match, and must not. */
static const char *const test_desync_yes[] = {
	"SELECT not allowed now",			/* WildDuck */
	"NAMESPACE not allowed now",
	"UID FETCH not allowed now",
	"No mailbox selected (0.001 + 0.000 secs).",	/* Dovecot imap */
	"no mailbox selected.",
	"Please login first",				/* Cyrus */
	"Please select a mailbox first",
	NULL,
};
static const char *const test_desync_no[] = {
	"Mailbox doesn't exist: nosuch (0.005 + 0.000 + 0.004 secs).",
	"Error in IMAP command SELECT: Invalid arguments (0.001 + 0.000 secs).",
	"Error in IMAP command received by server.",	/* Courier: any error */
	"Run STARTTLS first",
	"Database error",
	"Unrecognized command",
	"Invalid SASL argument",
	"Copying not allowed now because the mailbox is full",
	NULL,
};
/* Texts the built-in greeting patterns must match, and must not. */
static const char *const test_greet_yes[] = {
	"WildDuck IMAP Server ready for requests from 127.0.0.1 yqNm2ICG1Ee5",
	"Dovecot ready.",
	"Dovecot (Debian) ready.",
	"Dovecot (Ubuntu) ready.",
	"mail.example.org Cyrus IMAP v3.6.1-Debian-3.6.1-4 server ready",
	"mail.example.org server ready",
	"Courier-IMAP ready. Copyright 1998-2018 Double Precision, Inc.  "
	    "See COPYING for distribution information.",
	NULL,
};
static const char *const test_greet_no[] = {
	"Still here (1700000000000)",
	"Logged in",
	"Searched 91% of the mailbox, ETA 0:05",
	"The server will be ready again in five minutes",
	NULL,
};

/*
 * The guard defaults: timeouts and modes, and the built-in patterns present
 * and compiled, matching what the servers really send and not their
 * ordinary errors.
 */
static void
test_guard_defaults_present(const struct config *cf)
{
	CHECK(cf->backend_response_ms == 300000, "backend_response default %llu",
	    (unsigned long long)cf->backend_response_ms);
	CHECK(cf->guard_client_state == CONFIG_GUARD_BYE, "client_state default");
	CHECK(cf->guard_desync == CONFIG_GUARD_BYE, "desync default");
	CHECK(cf->ndesync_patterns > 0 && cf->desync_re != NULL, "desync defaults present");
	CHECK(cf->ngreeting_patterns > 0 && cf->greeting_re != NULL, "greeting defaults present");
	CHECK(cf->ndesync_patterns > 0 && cf->desync_patterns[0] != NULL &&
	    regexec(&cf->desync_re[0], "SELECT not allowed now", 0, NULL, 0) == 0,
	    "first desync default matches WildDuck");
	for (size_t i = 0; test_desync_yes[i] != NULL; i++)
		CHECK(test_matches(cf->desync_re, cf->ndesync_patterns, test_desync_yes[i]),
		    "desync defaults should match \"%s\"", test_desync_yes[i]);
	for (size_t i = 0; test_desync_no[i] != NULL; i++)
		CHECK(!test_matches(cf->desync_re, cf->ndesync_patterns, test_desync_no[i]),
		    "desync defaults should not match \"%s\"", test_desync_no[i]);
	for (size_t i = 0; test_greet_yes[i] != NULL; i++)
		CHECK(test_matches(cf->greeting_re, cf->ngreeting_patterns, test_greet_yes[i]),
		    "greeting defaults should match \"%s\"", test_greet_yes[i]);
	for (size_t i = 0; test_greet_no[i] != NULL; i++)
		CHECK(!test_matches(cf->greeting_re, cf->ngreeting_patterns, test_greet_no[i]),
		    "greeting defaults should not match \"%s\"", test_greet_no[i]);
}

/* Every default of the guard, rewrite and capability keys. */
static void
test_guard_defaults(const struct config *cf)
{
	test_guard_defaults_present(cf);
	CHECK(cf->rewrite_keep_unknown == 0, "unknown_codes default strip");
	CHECK(cf->nallow_codes == 0 && cf->nrules == 0, "no codes, no rules by default");
	CHECK(cf->ncap_remove == 0 && cf->ncap_add == 0, "no capability changes by default");
}

/* The defaults of the TLS, pool, limit and operations keys. */
static void
test_ops_defaults(const struct config *cf)
{
	for (size_t i = 0; i < cf->nlisten; i++) {
		const struct config_listen *l = &cf->listen[i];
		CHECK(l->require_tls == 1 && l->insecure == 0 && l->proxy_protocol == 0 &&
		    l->ntrusted_proxies == 0, "listen[%zu] defaults", i);
	}
	for (size_t i = 0; i < cf->nservers; i++)
		CHECK(cf->servers[i].weight == 1 && cf->servers[i].max_connections == 0,
		    "servers[%zu] defaults", i);
	CHECK(cf->tls_min_version == 12 && cf->tls_ciphers == NULL &&
	    cf->tls_ciphersuites == NULL, "tls defaults");
	CHECK(cf->backend_tls == CONFIG_TLS_NONE && cf->backend_ca_file == NULL &&
	    cf->backend_server_name == NULL && cf->backend_verify == 1 &&
	    cf->client_ip == CONFIG_CLIENT_IP_NONE, "backend TLS defaults");
	CHECK(cf->balance == CONFIG_BALANCE_ROUND_ROBIN && cf->health_interval_ms == 5000 &&
	    cf->health_timeout_ms == 2000 && cf->health_rise == 2 && cf->health_fall == 2 &&
	    cf->connect_tries == 3, "pool defaults");
	CHECK(cf->workers == 0 && cf->user == NULL && cf->group == NULL, "process defaults");
	CHECK(cf->metrics_address == NULL && cf->metrics_addr.ss.ss_family == 0,
	    "no metrics by default");
	CHECK(cf->log_format == CONFIG_LOG_TEXT && cf->log_output == CONFIG_LOG_STDERR,
	    "log defaults");
	CHECK(cf->max_connections == 50000 && cf->max_connections_per_ip == 50,
	    "limits defaults %u %u", cf->max_connections, cf->max_connections_per_ip);
	CHECK(cf->tls_handshake_ms == 10000 && cf->preauth_ms == 60000 &&
	    cf->idle_ms == 30 * 60000 && cf->drain_ms == 30000, "timeout defaults");
}

/* Whether c is the network fam/text/prefix. */
static int
test_cidr(const struct config_cidr *c, int fam, const char *text, unsigned prefix)
{
	unsigned char want[16] = { 0 };

	if (inet_pton(fam, text, want) != 1)
		return 0;
	return c->family == fam && c->prefix == prefix &&
	    memcmp(c->addr, want, fam == AF_INET ? 4 : 16) == 0;
}

/* The minimal file: one listener, one certificate, one server, defaults elsewhere. */
static void
test_minimal(void)
{
	struct config *cf = test_load_good(test_datafile("good-minimal.yaml"), __LINE__);
	char want[TEST_PATHLEN];

	if (cf == NULL)
		return;
	CHECK(cf->nlisten == 1, "nlisten %zu", cf->nlisten);
	CHECK(strcmp(cf->listen[0].address, "127.0.0.1:10993") == 0, "address %s",
	    cf->listen[0].address);
	CHECK(cf->listen[0].addr.ss.ss_family == AF_INET && test_port(&cf->listen[0].addr) == 10993,
	    "listen addr parsed");
	CHECK(cf->listen[0].tls == CONFIG_TLS_IMPLICIT, "tls default %d", cf->listen[0].tls);
	CHECK(cf->listen[0].line == 3 && cf->listen[0].col == 5, "listen pos %d:%d",
	    cf->listen[0].line, cf->listen[0].col);
	CHECK(cf->ncerts == 1, "ncerts %zu", cf->ncerts);
	/* Relative names are taken from the file's directory. */
	snprintf(want, sizeof(want), "%s/cert.pem", test_data);
	CHECK(cf->ncerts == 1 && strcmp(cf->certs[0].cert, want) == 0,
	    "relative cert path resolved to %s, want %s", cf->ncerts ? cf->certs[0].cert : "-",
	    want);
	CHECK(cf->ncerts == 1 && cf->certs[0].key[0] == '/' &&
	    strstr(cf->certs[0].key, "/key.pem") != NULL, "key path %s", cf->certs[0].key);
	CHECK(cf->nservers == 1 && test_port(&cf->servers[0].addr) == 11143, "server");
	CHECK(cf->log_level == CONFIG_LOG_INFO, "log default %d", cf->log_level);
	CHECK(cf->max_line == 64 * 1024, "max_line default %zu", cf->max_line);
	CHECK(cf->buffer == 256 * 1024, "buffer default %zu", cf->buffer);
	CHECK(cf->backend_connect_ms == 5000, "backend_connect default %llu",
	    (unsigned long long)cf->backend_connect_ms);
	CHECK(strcmp(cf->path, test_datafile("good-minimal.yaml")) == 0, "path %s", cf->path);
	test_guard_defaults(cf);
	test_ops_defaults(cf);
	config_free(cf);
}

/* A config path without a directory: names are made absolute from the cwd. */
static void
test_relative(void)
{
	char old[TEST_PATHLEN / 2], want[TEST_PATHLEN];
	struct config *cf;

	if (getcwd(old, sizeof(old)) == NULL || chdir(test_data) != 0) {
		CHECK(0, "cannot chdir to %s", test_data);
		return;
	}
	cf = test_load_good("good-minimal.yaml", __LINE__);
	snprintf(want, sizeof(want), "%s/cert.pem", test_data);
	CHECK(cf == NULL || strcmp(cf->certs[0].cert, want) == 0, "cert %s, want %s",
	    cf ? cf->certs[0].cert : "-", want);
	config_free(cf);
	cf = NULL;
	if (chdir("..") == 0)
		cf = test_load_good("data/good-minimal.yaml", __LINE__);
	CHECK(cf == NULL || strcmp(cf->certs[0].key, test_datafile("key.pem")) == 0,
	    "key %s", cf ? cf->certs[0].key : "-");
	config_free(cf);
	CHECK(chdir(old) == 0, "chdir back");
}

/* The full file: every key set away from its default. */
static void
test_full(void)
{
	struct config *cf = test_load_good(test_datafile("good-full.yaml"), __LINE__);

	if (cf == NULL)
		return;
	CHECK(cf->nlisten == 3, "nlisten %zu", cf->nlisten);
	if (cf->nlisten == 3) {
		CHECK(cf->listen[0].tls == CONFIG_TLS_IMPLICIT, "listen[0].tls");
		CHECK(cf->listen[1].tls == CONFIG_TLS_NONE, "listen[1].tls");
		CHECK(cf->listen[1].addr.ss.ss_family == AF_INET6 &&
		    test_port(&cf->listen[1].addr) == 10143, "listen[1] is [::1]:10143");
		CHECK(cf->listen[2].tls == CONFIG_TLS_IMPLICIT, "listen[2].tls default");
		CHECK(test_port(&cf->listen[2].addr) == 20993, "listen[2] wildcard port");
		CHECK(cf->listen[1].line == 5 && cf->listen[1].col == 5, "listen[1] pos");
	}
	CHECK(cf->nservers == 2, "nservers %zu", cf->nservers);
	if (cf->nservers == 2)
		CHECK(strcmp(cf->servers[1].address, "localhost:11144") == 0 &&
		    test_port(&cf->servers[1].addr) == 11144, "servers[1]");
	CHECK(cf->log_level == CONFIG_LOG_DEBUG, "log level %d", cf->log_level);
	CHECK(cf->max_line == 1024 * 1024, "max_line %zu", cf->max_line);
	CHECK(cf->buffer == 512 * 1024, "buffer %zu", cf->buffer);
	CHECK(cf->backend_connect_ms == 1500, "backend_connect %llu",
	    (unsigned long long)cf->backend_connect_ms);
	CHECK(cf->backend_response_ms == 90000, "backend_response %llu",
	    (unsigned long long)cf->backend_response_ms);
	CHECK(cf->guard_client_state == CONFIG_GUARD_PASS, "client_state");
	CHECK(cf->guard_desync == CONFIG_GUARD_PASS, "desync");
	/* A list in the file replaces the defaults; an empty one leaves none. */
	CHECK(cf->ndesync_patterns == 2 && strcmp(cf->desync_patterns[0], "^Wrong state$") == 0,
	    "desync patterns %zu", cf->ndesync_patterns);
	CHECK(cf->ndesync_patterns == 2 &&
	    regexec(&cf->desync_re[0], "WRONG STATE", 0, NULL, 0) == 0 &&
	    regexec(&cf->desync_re[1], "LIST not allowed here", 0, NULL, 0) == 0 &&
	    regexec(&cf->desync_re[1], "SELECT not allowed now", 0, NULL, 0) == 0 &&
	    regexec(&cf->desync_re[0], "in the wrong state", 0, NULL, 0) != 0,
	    "desync patterns compiled case-insensitively");
	CHECK(cf->ngreeting_patterns == 0, "greeting patterns %zu", cf->ngreeting_patterns);
	CHECK(cf->rewrite_keep_unknown == 1, "unknown_codes keep");
	CHECK(cf->nallow_codes == 2 && strcmp(cf->allow_codes[0], "X-FOO") == 0 &&
	    strcmp(cf->allow_codes[1], "XAPPLEPUSHSERVICE") == 0, "allow_codes upper-cased");
	CHECK(cf->nrules == 5, "nrules %zu", cf->nrules);
	if (cf->nrules == 5) {
		const struct config_rule *r = cf->rules;
		CHECK(r[0].match_status == CONFIG_STATUS_OTHER && r[0].set_status == CONFIG_STATUS_NO &&
		    r[0].match_code == NULL && r[0].set_code == NULL && !r[0].has_re &&
		    r[0].match_text == NULL, "rules[0]");
		CHECK(r[0].line == 35 && r[0].col == 7, "rules[0] at %d:%d", r[0].line, r[0].col);
		CHECK(r[1].match_status == CONFIG_STATUS_NO &&
		    strcmp(r[1].match_code, "RATELIMITEDERROR") == 0 &&
		    r[1].set_status == CONFIG_STATUS_KEEP &&
		    strcmp(r[1].set_code, "UNAVAILABLE") == 0, "rules[1] (flow)");
		CHECK(r[1].line == 37 && r[1].col == 7, "rules[1] at %d:%d", r[1].line, r[1].col);
		CHECK(r[2].match_status == CONFIG_STATUS_BAD && strcmp(r[2].match_code, "none") == 0 &&
		    r[2].has_re && strcmp(r[2].match_text, "^Database error") == 0 &&
		    regexec(&r[2].match_re, "DATABASE ERROR", 0, NULL, 0) == 0 &&
		    regexec(&r[2].match_re, "No database error", 0, NULL, 0) != 0 &&
		    r[2].set_status == CONFIG_STATUS_NO && strcmp(r[2].set_code, "SERVERBUG") == 0,
		    "rules[2]");
		CHECK(r[3].match_status == CONFIG_STATUS_ANY && strcmp(r[3].match_code, "TEMPFAIL") == 0 &&
		    r[3].set_status == CONFIG_STATUS_BYE && strcmp(r[3].set_code, "none") == 0,
		    "rules[3]");
		/* An empty rule is allowed: it matches everything and changes nothing. */
		CHECK(r[4].match_status == CONFIG_STATUS_ANY && r[4].set_status == CONFIG_STATUS_KEEP &&
		    r[4].match_code == NULL && r[4].set_code == NULL && !r[4].has_re, "rules[4]");
	}
	CHECK(cf->ncap_remove == 2 && strcmp(cf->cap_remove[0], "COMPRESS=DEFLATE") == 0 &&
	    strcmp(cf->cap_remove[1], "XLIST") == 0, "capabilities.remove");
	CHECK(cf->ncap_add == 2 && strcmp(cf->cap_add[0], "ID") == 0 &&
	    strcmp(cf->cap_add[1], "APPENDLIMIT=35651584") == 0, "capabilities.add");
	config_free(cf);
}

/* Flow style everywhere, and no certificates since no listener uses TLS. */
static void
test_flow(void)
{
	struct config *cf = test_load_good(test_datafile("good-flow.yaml"), __LINE__);

	if (cf == NULL)
		return;
	CHECK(cf->nlisten == 1 && cf->listen[0].tls == CONFIG_TLS_NONE, "listen");
	CHECK(cf->ncerts == 0, "ncerts %zu", cf->ncerts);
	CHECK(cf->nservers == 1 && test_port(&cf->servers[0].addr) == 143, "servers");
	CHECK(cf->log_level == CONFIG_LOG_WARN, "log level");
	CHECK(cf->max_line == 2048, "max_line %zu", cf->max_line);
	CHECK(cf->buffer == 16 * 1024, "buffer %zu", cf->buffer);
	CHECK(cf->backend_connect_ms == 120000, "backend_connect");
	CHECK(cf->backend_response_ms == 24 * 3600 * 1000, "backend_response");
	CHECK(cf->ndesync_patterns == 1 && test_in(cf->desync_patterns, 1, " not allowed now$"),
	    "desync patterns replaced");
	/* Absent greeting_patterns: the defaults, even when guard is given. */
	CHECK(cf->ngreeting_patterns > 0 &&
	    test_matches(cf->greeting_re, cf->ngreeting_patterns, "Dovecot ready."),
	    "greeting defaults kept");
	CHECK(cf->nrules == 2, "nrules %zu", cf->nrules);
	if (cf->nrules == 2) {
		CHECK(cf->rules[0].match_status == CONFIG_STATUS_OTHER &&
		    cf->rules[0].set_status == CONFIG_STATUS_BAD, "flow rule 0");
		CHECK(cf->rules[1].has_re && cf->rules[1].match_status == CONFIG_STATUS_ANY &&
		    cf->rules[1].set_status == CONFIG_STATUS_KEEP, "flow rule 1");
		CHECK(cf->rules[0].line == 6 && cf->rules[0].col == 20, "flow rule 0 at %d:%d",
		    cf->rules[0].line, cf->rules[0].col);
	}
	CHECK(cf->ncap_remove == 0 && cf->ncap_add == 1 && strcmp(cf->cap_add[0], "IDLE") == 0,
	    "capabilities");
	config_free(cf);
}

/* Inline good cases: empty groups, quoted values, absolute certificate paths. */
static void
test_good_inline(void)
{
	struct config *cf;

	cf = test_load_good(test_write(LISTEN CERTS BACKEND "log:\nlimits:\n"), __LINE__);
	if (cf != NULL)
		CHECK(cf->log_level == CONFIG_LOG_INFO && cf->max_line == 65536,
		    "empty groups keep defaults");
	config_free(cf);

	/* The brief's example: block list, flow entries; "key:" with nothing is an empty list. */
	cf = test_load_good(test_write(LISTEN CERTS BACKEND "rewrite:\n  rules:\n"
	    "    - {match: {status: other}, set: {status: no}}\n"
	    "    - {match: {status: any, code: X-Foo}, set: {status: keep, code: NONE}}\n"
	    "  allow_codes:\nguard:\n  desync_patterns:\n"), __LINE__);
	if (cf != NULL) {
		CHECK(cf->nrules == 2 && cf->rules[0].match_status == CONFIG_STATUS_OTHER &&
		    cf->rules[0].set_status == CONFIG_STATUS_NO && cf->rules[0].line == 12 &&
		    cf->rules[0].col == 7, "flow rule in block list");
		CHECK(cf->nrules == 2 && strcmp(cf->rules[1].match_code, "X-FOO") == 0 &&
		    strcmp(cf->rules[1].set_code, "none") == 0, "code none in any case");
		CHECK(cf->nallow_codes == 0 && cf->ndesync_patterns == 0 && cf->desync_re != NULL,
		    "empty lists");
		CHECK(cf->ngreeting_patterns > 0, "greeting defaults");
	}
	config_free(cf);

	cf = test_load_good(test_write("listen:\n  - {address: '127.0.0.1:1', tls: \"none\"}\n"
	    BACKEND "limits: {max_line: \"1KiB\"}\n"), __LINE__);
	if (cf != NULL)
		CHECK(cf->max_line == 1024 && cf->ncerts == 0, "quoted values");
	config_free(cf);
}

/* The file with many mistakes: every one reported, each at its place. */
static void
test_many(void)
{
	static const struct {
		int line, col;
		const char *msg;
	} want[] = {
		{ 1, 1, "unknown key \"lisen\"" },
		{ 4, 14, "listen[0].address: address \"127.0.0.1:99999\": port must be 1-65535" },
		{ 5, 10, "listen[0].tls: \"startls\" is not one of implicit, none, starttls" },
		{ 6, 5, "listen[1]: missing required key \"address\"" },
		{ 9, 13, "tls.certificates[0].cert: cannot read" },
		{ 12, 12, "tls.certificates[1].key: " },
		{ 14, 12, "backend.servers: at least 1 entry is required" },
		{ 16, 10, "log.level: \"verbose\" is not one of error, warn, info, debug" },
		{ 18, 13, "limits.max_line: 100 is below the minimum 1KiB" },
		{ 19, 11, "limits.buffer: \"64KB\" is not a size" },
		{ 21, 20, "timeouts.backend_connect: expected a single value, got a list" },
	};
	size_t nwant = sizeof(want) / sizeof(want[0]);
	struct config_errors errs;
	struct config *cf = config_load(test_datafile("bad-many.yaml"), &errs);
	int bad = 0;

	CHECK(cf == NULL, "bad-many.yaml loaded");
	CHECK(errs.n == nwant, "bad-many.yaml: %zu errors, want %zu", errs.n, nwant);
	for (size_t i = 0; i < nwant; i++) {
		int ok = test_has(&errs, want[i].line, want[i].col, want[i].msg);
		CHECK(ok, "bad-many.yaml: missing %d:%d %s", want[i].line, want[i].col, want[i].msg);
		bad |= !ok;
	}
	CHECK(test_has(&errs, 12, 12, "does not match"), "mismatched key reported");
	if (bad || errs.n != nwant)
		test_dump(&errs);
	config_free(cf);
	config_errors_free(&errs);
}

/* Each kind of bad input on its own, with its exact position. */
static void
test_bad_inputs(void)
{
	/* Unknown keys: the key's position. */
	BAD("lisen: 1\n" LISTEN CERTS BACKEND, 1, 1, 1, "unknown key \"lisen\"");
	BAD(LISTEN CERTS BACKEND "log:\n  levle: info\n", 1, 11, 3, "log: unknown key \"levle\"");
	BAD("listen:\n  - address: 127.0.0.1:993\n    adress: x\n" CERTS BACKEND, 1, 3, 5,
	    "listen[0]: unknown key \"adress\"");
	BAD(LISTEN CERTS BACKEND "limits.max_line: 2048\n", 1, 10, 1,
	    "unknown key \"limits.max_line\"");
	BAD("? [a, b]\n: 1\n" LISTEN CERTS BACKEND, 1, 1, 3, "keys must be plain names");

	/* Wrong types: the value's position. */
	BAD(LISTEN CERTS BACKEND "log:\n  level: [info]\n", 1, 11, 10,
	    "log.level: expected a single value, got a list");
	BAD(LISTEN CERTS BACKEND "log:\n  level: {a: b}\n", 1, 11, 10,
	    "log.level: expected a single value, got a mapping");
	BAD("listen:\n  address: 127.0.0.1:993\n" CERTS BACKEND, 1, 2, 3,
	    "listen: expected a list, got a mapping");
	BAD(LISTEN CERTS BACKEND "log: debug\n", 1, 10, 6, "log: expected a mapping, got a scalar");
	BAD("listen:\n  - 127.0.0.1:993\n" CERTS BACKEND, 1, 2, 5,
	    "listen[0]: expected a mapping, got a scalar");
	BAD(LISTEN BACKEND "tls: [a]\n", 2, 6, 6, "tls: expected a mapping, got a list");
	BAD("listen:\n  - address:\n" CERTS BACKEND, 1, 2, 13, "listen[0].address: no value given");
	BAD("listen:\n  - address: \"127.0.0.1\\0:993\"\n" CERTS BACKEND, 1, 2, 14,
	    "listen[0].address: value contains a NUL byte");

	/* Enums. */
	BAD(LISTEN CERTS BACKEND "log:\n  level: loud\n", 1, 11, 10,
	    "log.level: \"loud\" is not one of error, warn, info, debug");
	BAD("listen:\n  - address: 127.0.0.1:993\n    tls: TLS\n" CERTS BACKEND, 1, 3, 10,
	    "listen[0].tls: \"TLS\" is not one of implicit, none, starttls");

	/* Sizes and durations: syntax and bounds. */
	BAD(LISTEN CERTS BACKEND "limits:\n  max_line: 100\n", 1, 11, 13,
	    "limits.max_line: 100 is below the minimum 1KiB");
	BAD(LISTEN CERTS BACKEND "limits:\n  max_line: 17MiB\n", 1, 11, 13,
	    "limits.max_line: 17MiB is above the maximum 16MiB");
	BAD(LISTEN CERTS BACKEND "limits:\n  buffer: 1GiB\n", 1, 11, 11,
	    "limits.buffer: 1GiB is above the maximum 64MiB");
	BAD(LISTEN CERTS BACKEND "limits:\n  buffer: 99999999999999999999GiB\n", 1, 11, 11,
	    "is above the maximum 64MiB");
	BAD(LISTEN CERTS BACKEND "limits:\n  buffer: 17179869184GiB\n", 1, 11, 11,
	    "is above the maximum 64MiB");
	BAD(LISTEN CERTS BACKEND "limits:\n  max_line: 64KB\n", 1, 11, 13,
	    "limits.max_line: \"64KB\" is not a size");
	BAD(LISTEN CERTS BACKEND "limits:\n  max_line: 64KB\n", 1, 11, 13, "KB/MB are not accepted");
	BAD(LISTEN CERTS BACKEND "limits:\n  max_line: -5\n", 1, 11, 13, "is not a size");
	BAD(LISTEN CERTS BACKEND "timeouts:\n  backend_connect: 5 s\n", 1, 11, 20,
	    "timeouts.backend_connect: \"5 s\" is not a duration");
	BAD(LISTEN CERTS BACKEND "timeouts:\n  backend_connect: 10ms\n", 1, 11, 20,
	    "timeouts.backend_connect: 10ms is below the minimum 100ms");
	BAD(LISTEN CERTS BACKEND "timeouts:\n  backend_connect: 1h\n", 1, 11, 20,
	    "timeouts.backend_connect: 1h is above the maximum 10m");
	BAD(LISTEN CERTS BACKEND "timeouts:\n  backend_connect: 18446744073709551615\n", 1, 11, 20,
	    "is above the maximum 10m");

	/* Guard, rewrite and capability keys: the value's (or entry's) position. */
	BAD(LISTEN CERTS BACKEND "timeouts:\n  backend_response: 500ms\n", 1, 11, 21,
	    "timeouts.backend_response: 500ms is below the minimum 1s");
	BAD(LISTEN CERTS BACKEND "timeouts:\n  backend_response: 25h\n", 1, 11, 21,
	    "timeouts.backend_response: 25h is above the maximum 24h");
	BAD(LISTEN CERTS BACKEND "guard:\n  client_state: close\n", 1, 11, 17,
	    "guard.client_state: \"close\" is not one of bye, pass");
	BAD(LISTEN CERTS BACKEND "guard:\n  desync: yes\n", 1, 11, 11,
	    "guard.desync: \"yes\" is not one of bye, pass");
	BAD(LISTEN CERTS BACKEND "guard:\n  desync_patterns:\n    - ok\n    - 'a(b'\n", 1, 13, 7,
	    "guard.desync_patterns[1]: \"a(b\" is not a valid regular expression: ");
	BAD(LISTEN CERTS BACKEND "guard:\n  desync_patterns:\n    - ok\n    - 'a(b'\n", 1, 13, 7,
	    "Unmatched ( or");	/* regerror's own words (glibc, C locale) */
	BAD(LISTEN CERTS BACKEND "guard:\n  greeting_patterns: ['x{2,1}', '', [a]]\n", 3, 11, 23,
	    "guard.greeting_patterns[0]: \"x{2,1}\" is not a valid regular expression");
	BAD(LISTEN CERTS BACKEND "guard:\n  greeting_patterns: ['x{2,1}', '', [a]]\n", 3, 11, 33,
	    "guard.greeting_patterns[1]: an empty regular expression would match every text");
	BAD(LISTEN CERTS BACKEND "guard:\n  greeting_patterns: ['x{2,1}', '', [a]]\n", 3, 11, 37,
	    "guard.greeting_patterns[2]: expected a string, got a list");
	BAD(LISTEN CERTS BACKEND "guard:\n  greeting_patterns: ready\n", 1, 11, 22,
	    "guard.greeting_patterns: expected a list, got a scalar");
	BAD(LISTEN CERTS BACKEND "rewrite:\n  unknown_codes: drop\n", 1, 11, 18,
	    "rewrite.unknown_codes: \"drop\" is not one of strip, keep");
	BAD(LISTEN CERTS BACKEND "rewrite:\n  rules:\n    - set: {status: ok}\n", 1, 12, 21,
	    "rewrite.rules[0].set.status: \"ok\" is refused: imapgate never turns an answer into OK");
	BAD(LISTEN CERTS BACKEND "rewrite:\n  rules:\n    - set: {status: preauth}\n", 1, 12, 21,
	    "rewrite.rules[0].set.status: \"preauth\" is refused");
	BAD(LISTEN CERTS BACKEND "rewrite:\n  rules:\n    - set: {status: any}\n", 1, 12, 21,
	    "rewrite.rules[0].set.status: \"any\" is not one of no, bad, bye, keep");
	BAD(LISTEN CERTS BACKEND "rewrite:\n  rules:\n    - match: {status: maybe}\n", 1, 12, 23,
	    "rewrite.rules[0].match.status: \"maybe\" is not one of any, ok, no, bad, bye, "
	    "preauth, other");
	BAD(LISTEN CERTS BACKEND "rewrite:\n  rules:\n    - {}\n    - match: {text: '*a'}\n",
	    1, 13, 21, "rewrite.rules[1].match.text: \"*a\" is not a valid regular expression: ");
	BAD(LISTEN CERTS BACKEND "rewrite:\n  rules:\n    - match: {text: ''}\n", 1, 12, 21,
	    "rewrite.rules[0].match.text: an empty regular expression would match every text");
	BAD(LISTEN CERTS BACKEND "rewrite:\n  rules:\n    - match:\n        stauts: no\n", 1, 13, 9,
	    "rewrite.rules[0].match: unknown key \"stauts\"");
	BAD(LISTEN CERTS BACKEND "rewrite:\n  rules:\n    - match: {code: X}\n      sett: {}\n",
	    1, 13, 7, "rewrite.rules[0]: unknown key \"sett\"");
	BAD(LISTEN CERTS BACKEND "rewrite:\n  rules:\n    - match: no\n", 1, 12, 14,
	    "rewrite.rules[0].match: expected a mapping, got a scalar");
	BAD(LISTEN CERTS BACKEND "rewrite:\n  rules:\n    - match: {code: '[ALERT]'}\n", 1, 12, 21,
	    "rewrite.rules[0].match.code: \"[ALERT]\" is not an IMAP atom");
	BAD(LISTEN CERTS BACKEND "rewrite:\n  rules:\n    - set: {code: 'NO PERM'}\n", 1, 12, 19,
	    "rewrite.rules[0].set.code: \"NO PERM\" is not an IMAP atom");
	BAD(LISTEN CERTS BACKEND "rewrite:\n  rules:\n    - set: {code: ''}\n", 1, 12, 19,
	    "rewrite.rules[0].set.code: \"\" is empty");
	BAD(LISTEN CERTS BACKEND "rewrite:\n  allow_codes: [X-OK, 'X\\Y', '%', \"caf\\u00e9\"]\n",
	    3, 11, 23, "rewrite.allow_codes[1]: \"X\\Y\" is not an IMAP atom");
	BAD(LISTEN CERTS BACKEND "rewrite:\n  allow_codes: [X-OK, 'X\\Y', '%', \"caf\\u00e9\"]\n",
	    3, 11, 30, "rewrite.allow_codes[2]: \"%\" is not an IMAP atom");
	BAD(LISTEN CERTS BACKEND "rewrite:\n  allow_codes: [X-OK, 'X\\Y', '%', \"caf\\u00e9\"]\n",
	    3, 11, 35, "rewrite.allow_codes[3]: ");
	BAD(LISTEN CERTS BACKEND "capabilities:\n  add: [IDLE, 'AUTH=PLAIN X']\n", 1, 11, 15,
	    "capabilities.add[1]: \"AUTH=PLAIN X\" is not an IMAP atom");
	BAD(LISTEN CERTS BACKEND "capabilities:\n  remove:\n    - \"QUOTA*\"\n", 1, 12, 7,
	    "capabilities.remove[0]: \"QUOTA*\" is not an IMAP atom");
	BAD(LISTEN CERTS BACKEND "capabilities:\n  remove:\n    - \"(X)\"\n", 1, 12, 7,
	    "is not an IMAP atom");
	BAD(LISTEN CERTS BACKEND "capabilities:\n  remove:\n    - \"X\\tY\"\n", 1, 12, 7,
	    "is not an IMAP atom");
	BAD(LISTEN CERTS BACKEND "capabilities:\n  add: [IDLE, ~]\n", 1, 11, 15,
	    "capabilities.add[1]: no value given");
	BAD(LISTEN CERTS BACKEND "guard:\n  desync_patterns:\n    -\n", 1, 12, 6,
	    "guard.desync_patterns[0]: no value given");
	BAD(LISTEN CERTS BACKEND "capabilities:\n  remove: {a: b}\n", 1, 11, 11,
	    "capabilities.remove: expected a list, got a mapping");

	/* Missing required keys: the enclosing mapping's position. */
	BAD("listen:\n  - tls: none\n" CERTS BACKEND, 1, 2, 5,
	    "listen[0]: missing required key \"address\"");
	BAD("log:\n  level: info\n" CERTS BACKEND, 1, 1, 1, "missing required key \"listen\"");
	BAD(LISTEN CERTS, 1, 1, 1, "missing required key \"backend.servers\"");
	BAD(LISTEN CERTS "backend:\n  timeout: 1\n", 2, 8, 3, "backend: missing required key \"servers\"");
	BAD(LISTEN "tls:\n  certificates:\n    - cert: @DATA@/cert.pem\n" BACKEND, 1, 5, 7,
	    "tls.certificates[0]: missing required key \"key\"");
	BAD("listen: []\n" CERTS BACKEND, 1, 1, 9, "listen: at least 1 entry is required");
	BAD("listen:\n" CERTS BACKEND, 1, 1, 8, "listen: at least 1 entry is required");
	BAD(LISTEN BACKEND, 1, 2, 5,
	    "listen[0]: uses tls: implicit, but tls.certificates lists no certificate");
	BAD(LISTEN "tls:\n  certificates: []\n" BACKEND, 2, 4, 17,
	    "tls.certificates: at least 1 entry is required");

	/* Duplicates: the second key's position. */
	BAD(LISTEN "listen:\n  - address: 127.0.0.1:994\n" CERTS BACKEND, 1, 3, 1,
	    "duplicate key \"listen\" (first at line 1)");
	BAD("listen:\n  - address: 127.0.0.1:993\n    address: 127.0.0.1:994\n" CERTS BACKEND,
	    1, 3, 5, "listen[0]: duplicate key \"address\"");

	/* Certificates and keys: the value's position. */
	BAD(LISTEN "tls:\n  certificates:\n    - cert: nothere.pem\n      key: @DATA@/key.pem\n"
	    BACKEND, 1, 5, 13, "tls.certificates[0].cert: cannot read");
	BAD(LISTEN "tls:\n  certificates:\n    - cert: nothere.pem\n      key: @DATA@/key.pem\n"
	    BACKEND, 1, 5, 13, "/nothere.pem\": No such file or directory");
	BAD(LISTEN "tls:\n  certificates:\n    - cert: @DATA@/cert.pem\n      key: nokey.pem\n"
	    BACKEND, 1, 6, 12, "tls.certificates[0].key: cannot read");
	BAD(LISTEN "tls:\n  certificates:\n    - cert: @DATA@/cert.pem\n"
	    "      key: @DATA@/other-key.pem\n" BACKEND, 1, 6, 12, "does not match certificate");
	BAD(LISTEN "tls:\n  certificates:\n    - cert: @DATA@/garbage.pem\n"
	    "      key: @DATA@/key.pem\n" BACKEND, 1, 5, 13, "tls.certificates[0].cert: certificate");
	BAD(LISTEN "tls:\n  certificates:\n    - cert: @DATA@/cert.pem\n"
	    "      key: @DATA@/garbage.pem\n" BACKEND, 1, 6, 12, "tls.certificates[0].key: key");

	/* Addresses. */
	BAD("listen:\n  - address: nohost\n" CERTS BACKEND, 1, 2, 14, "expected host:port");
	BAD("listen:\n  - address: 127.0.0.1:0\n" CERTS BACKEND, 1, 2, 14, "port must be 1-65535");
	BAD("listen:\n  - address: ::1:993\n" CERTS BACKEND, 1, 2, 14, "must be written [v6]:port");
	BAD("listen:\n  - address: localhost:993\n" CERTS BACKEND, 1, 2, 14, "listen[0].address: ");
	BAD(LISTEN CERTS "backend:\n  servers:\n    - address: 127.0.0.1:x\n", 1, 9, 16,
	    "backend.servers[0].address: ");

	/* The document itself. */
	BAD("", 1, 1, 1, "the file is empty");
	BAD("# only a comment\n", 1, 1, 1, "the file is empty");
	BAD("- a\n- b\n", 1, 1, 1, "must be a mapping of keys, not a list");
	BAD("hello\n", 1, 1, 1, "must be a mapping of keys, not a scalar");
	BAD(LISTEN CERTS BACKEND "---\nlog: {level: info}\n", 1, 11, 1,
	    "only one YAML document is allowed");
	BAD("listen:\n  - address: [127.0.0.1:993\n" CERTS BACKEND, 1, 3, 4,
	    "YAML syntax error: did not find expected ',' or ']' (while parsing a flow sequence at line 2 column 14)");
	BAD("listen:\n\t- address: 127.0.0.1:993\n", 1, 2, 1,
	    "YAML syntax error: found character that cannot start any token");
	BAD(LISTEN CERTS BACKEND "log:\n  level: \xff\n", 1, 11, 10, "YAML error: invalid");
}

/* The file with every TLS, pool, limit and operations key set. */
static void
test_ops(void)
{
	struct config *cf = test_load_good(test_datafile("good-ops.yaml"), __LINE__);
	char want[TEST_PATHLEN];

	if (cf == NULL)
		return;
	CHECK(cf->workers == 4, "workers %u", cf->workers);
	CHECK(cf->user != NULL && strcmp(cf->user, "daemon") == 0 && cf->group != NULL &&
	    strcmp(cf->group, "daemon") == 0, "user and group");
	CHECK(cf->nlisten == 3, "nlisten %zu", cf->nlisten);
	if (cf->nlisten == 3) {
		const struct config_listen *l = &cf->listen[0];
		CHECK(l->tls == CONFIG_TLS_STARTTLS && l->require_tls == 0 && l->insecure == 1 &&
		    l->proxy_protocol == 1, "listen[0] flags");
		CHECK(l->ntrusted_proxies == 7 && l->trusted != NULL, "trusted %zu",
		    l->ntrusted_proxies);
		if (l->ntrusted_proxies == 7) {
			CHECK(strcmp(l->trusted_proxies[2], "::1/128") == 0, "as written");
			CHECK(test_cidr(&l->trusted[0], AF_INET, "10.0.0.0", 8), "10/8");
			CHECK(test_cidr(&l->trusted[1], AF_INET, "127.0.0.0", 8), "127/8");
			CHECK(test_cidr(&l->trusted[2], AF_INET6, "::1", 128), "::1/128");
			CHECK(test_cidr(&l->trusted[3], AF_INET6, "2001:db8::", 32), "2001:db8::/32");
			CHECK(test_cidr(&l->trusted[4], AF_INET, "192.0.2.7", 32), "bare v4 is /32");
			CHECK(test_cidr(&l->trusted[5], AF_INET6, "2001:db8::1", 128),
			    "bare v6 is /128");
			CHECK(test_cidr(&l->trusted[6], AF_INET, "0.0.0.0", 0), "0/0");
		}
		CHECK(cf->listen[1].tls == CONFIG_TLS_NONE && cf->listen[1].insecure == 1,
		    "listen[1] insecure off loopback");
		CHECK(cf->listen[2].tls == CONFIG_TLS_NONE && cf->listen[2].insecure == 0,
		    "listen[2] plaintext on ::1 needs no insecure");
	}
	CHECK(cf->tls_min_version == 13, "min_version %d", cf->tls_min_version);
	CHECK(cf->tls_ciphers != NULL && strcmp(cf->tls_ciphers, "ECDHE+AESGCM:!aNULL") == 0,
	    "ciphers");
	CHECK(cf->tls_ciphersuites != NULL &&
	    strcmp(cf->tls_ciphersuites, "TLS_AES_256_GCM_SHA384") == 0, "ciphersuites");
	snprintf(want, sizeof(want), "%s/cert.pem", test_data);
	CHECK(cf->backend_tls == CONFIG_TLS_IMPLICIT && cf->backend_ca_file != NULL &&
	    strcmp(cf->backend_ca_file, want) == 0 && cf->backend_verify == 0 &&
	    cf->backend_server_name != NULL &&
	    strcmp(cf->backend_server_name, "imap.internal") == 0, "backend TLS");
	CHECK(cf->client_ip == CONFIG_CLIENT_IP_PROXY_V2, "client_ip");
	CHECK(cf->balance == CONFIG_BALANCE_LEAST_CONNECTIONS, "balance");
	CHECK(cf->health_interval_ms == 3600000 && cf->health_timeout_ms == 60000 &&
	    cf->health_rise == 100 && cf->health_fall == 1, "health");
	CHECK(cf->connect_tries == 16, "connect_tries");
	CHECK(cf->nservers == 2 && cf->servers[0].weight == 1000 &&
	    cf->servers[0].max_connections == 1000000 && cf->servers[1].weight == 1 &&
	    cf->servers[1].max_connections == 0, "server weights and limits");
	CHECK(cf->metrics_address != NULL && strcmp(cf->metrics_address, "127.0.0.1:9143") == 0 &&
	    test_port(&cf->metrics_addr) == 9143, "metrics address");
	CHECK(cf->log_format == CONFIG_LOG_JSON && cf->log_output == CONFIG_LOG_SYSLOG, "log");
	CHECK(cf->max_connections == 10000000 && cf->max_connections_per_ip == 0, "limits");
	CHECK(cf->tls_handshake_ms == 300000 && cf->preauth_ms == 1000 && cf->idle_ms == 60000 &&
	    cf->drain_ms == 0, "timeouts");
	config_free(cf);
}

/* Inline good cases of the new keys: spellings, edges, rules that hold. */
static void
test_ops_inline(void)
{
	struct config *cf;

	/* "1.2" quoted or not, workers a number, drain written as 0s. */
	cf = test_load_good(test_write(LISTEN CERTS BACKEND "  tls: starttls\n"
	    "  server_name: imap.example.org\nworkers: 64\ntimeouts: {drain: 0s}\n"), __LINE__);
	if (cf != NULL)
		CHECK(cf->backend_tls == CONFIG_TLS_STARTTLS && cf->backend_verify == 1 &&
		    cf->workers == 64 && cf->drain_ms == 0 && cf->tls_min_version == 12,
		    "starttls backend with server_name");
	config_free(cf);
	cf = test_load_good(test_write(LISTEN BACKEND "  tls: implicit\n  verify: false\n"
	    "tls:\n  certificates: [{cert: @DATA@/cert.pem, key: @DATA@/key.pem}]\n"
	    "  min_version: \"1.2\"\nworkers: auto\n"), __LINE__);
	if (cf != NULL)
		CHECK(cf->backend_verify == 0 && cf->backend_server_name == NULL &&
		    cf->tls_min_version == 12 && cf->workers == 0, "verify: false needs no name");
	config_free(cf);

	/* Loopback in each spelling needs no insecure; starttls on loopback may drop require_tls. */
	cf = test_load_good(test_write("listen:\n  - {address: 127.1.2.3:10143, tls: none}\n"
	    "  - {address: '[::1]:10144', tls: none}\n"
	    "  - {address: '[::ffff:127.0.0.1]:10145', tls: none}\n"
	    "  - {address: 127.0.0.1:10146, tls: starttls, require_tls: false}\n"
	    "  - {address: 0.0.0.0:10147, tls: starttls}\n"
	    CERTS BACKEND), __LINE__);
	if (cf != NULL)
		CHECK(cf->nlisten == 5 && cf->listen[3].require_tls == 0 &&
		    cf->listen[4].tls == CONFIG_TLS_STARTTLS && cf->listen[4].require_tls == 1,
		    "loopback listeners");
	config_free(cf);

	/* A plaintext listener off loopback with insecure written out; trusted proxies. */
	cf = test_load_good(test_write("listen:\n  - address: '*:10143'\n    tls: none\n"
	    "    insecure: true\n    proxy_protocol: true\n    trusted_proxies:\n"
	    "      - 10.0.0.0/8\n      - 'fd00::/8'\n" BACKEND), __LINE__);
	if (cf != NULL && cf->nlisten == 1)
		CHECK(cf->listen[0].ntrusted_proxies == 2 &&
		    test_cidr(&cf->listen[0].trusted[1], AF_INET6, "fd00::", 8), "trusted block list");
	config_free(cf);

	/* An empty trusted_proxies without proxy_protocol is harmless. */
	cf = test_load_good(test_write("listen:\n  - {address: 127.0.0.1:1, tls: none, "
	    "trusted_proxies: []}\n" BACKEND), __LINE__);
	config_free(cf);

	/* Health: timeout equal to the interval is fine; metrics on a wildcard. */
	cf = test_load_good(test_write(LISTEN CERTS BACKEND
	    "  health: {interval: 100ms, timeout: 100ms}\nmetrics: {address: '[::1]:9100'}\n"
	    "user: root\ngroup: root\n"), __LINE__);
	if (cf != NULL)
		CHECK(cf->health_interval_ms == 100 && cf->health_timeout_ms == 100 &&
		    cf->metrics_addr.ss.ss_family == AF_INET6 && strcmp(cf->user, "root") == 0,
		    "edges");
	config_free(cf);
}

/* Each mistake in the new keys on its own, with its exact position. */
/* backend.health.user and password_file: read at load, checked, both or neither. */
static void
test_health_login(void)
{
	char pw[TEST_PATHLEN + 16], yaml[TEST_YAMLLEN];
	struct config *cf;
	FILE *f;

	snprintf(pw, sizeof(pw), "%s/health.pw", test_dir);
	if ((f = fopen(pw, "w")) == NULL) {
		perror(pw);
		exit(2);
	}
	fputs("s3cret \"x\"\n", f);
	fclose(f);
	snprintf(yaml, sizeof(yaml), LISTEN CERTS BACKEND
	    "  health: {user: check, password_file: %s}\n", pw);
	if ((cf = test_load_good(test_write(yaml), __LINE__)) != NULL) {
		CHECK(cf->health_user != NULL && strcmp(cf->health_user, "check") == 0, "user");
		CHECK(cf->health_password != NULL &&
		    strcmp(cf->health_password, "s3cret \"x\"") == 0, "password without its LF");
		config_free(cf);
	}
	BAD(LISTEN CERTS BACKEND "  health: {user: check}\n", 1, 10, 18,
	    "backend.health: user and password_file go together");
	snprintf(yaml, sizeof(yaml), LISTEN CERTS BACKEND
	    "  health:\n    user: check\n    password_file: %s/none.pw\n", test_dir);
	BAD(yaml, 1, 12, 20, "backend.health.password_file: cannot open");
	if ((f = fopen(pw, "w")) != NULL) {
		fputs("two\nlines\n", f);
		fclose(f);
	}
	snprintf(yaml, sizeof(yaml), LISTEN CERTS BACKEND
	    "  health:\n    user: check\n    password_file: %s\n", pw);
	BAD(yaml, 1, 12, 20, "holds a byte that is not printable ASCII (at offset 3)");
	if ((f = fopen(pw, "w")) != NULL)
		fclose(f);
	BAD(yaml, 1, 12, 20, "is empty");
	unlink(pw);
}

/* Write text to a scratch file named name; return its path (static storage). */
static const char *
test_scratch(const char *name, const char *text)
{
	static char path[TEST_PATHLEN + 32];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", test_dir, name);
	if ((f = fopen(path, "w")) == NULL) {
		perror(path);
		exit(2);
	}
	fputs(text, f);
	fclose(f);
	return path;
}

/* backend.route: login and its lookup and login keys. */
static void
test_route(void)
{
	char yaml[TEST_YAMLLEN], map[TEST_PATHLEN + 32], pw[TEST_PATHLEN + 32];
	struct config_errors errs;
	struct config *cf;
	const char *path;
	int found = 0;

	snprintf(map, sizeof(map), "%s", test_scratch("users.map",
	    "# users\nalice@a.test 127.0.0.1:1143\n@b.test   127.0.0.1:2143\n"));
	snprintf(pw, sizeof(pw), "%s", test_scratch("master.pw", "m4ster\n"));

	/* hash is the default lookup; defaults of the login keys. */
	if ((cf = test_load_good(test_write(LISTEN CERTS BACKEND "  route: login\n"),
	    __LINE__)) != NULL) {
		CHECK(cf->route == CONFIG_ROUTE_LOGIN && cf->lookup == CONFIG_LOOKUP_HASH,
		    "route login, hash");
		CHECK(cf->credentials == CONFIG_CREDENTIALS_CLIENT, "client credentials");
		CHECK(strcmp(cf->master_separator, "*") == 0, "separator %s", cf->master_separator);
		CHECK(cf->login_failure_delay_ms == 2000, "login_failure");
		CHECK(cf->login_failures_per_ip == 100, "login_failures_per_ip");
		config_free(cf);
	}
	snprintf(yaml, sizeof(yaml), LISTEN CERTS BACKEND "  route: login\n"
	    "  lookup: {type: static, file: %s, fallback: hash}\n", map);
	if ((cf = test_load_good(test_write(yaml), __LINE__)) != NULL) {
		CHECK(cf->usermap != NULL && usermap_count(cf->usermap) == 2, "map entries");
		CHECK(cf->usermap != NULL && usermap_find(cf->usermap, "x@B.test") != NULL,
		    "domain entry");
		CHECK(cf->lookup_fallback == CONFIG_FALLBACK_HASH, "fallback");
		config_free(cf);
	}
	snprintf(yaml, sizeof(yaml), LISTEN CERTS BACKEND "  route: login\n"
	    "  lookup: {type: http, url: 'http://127.0.0.1:9000/auth', timeout: 2s, keepalive: 16}\n"
	    "  login: {credentials: master, master_user: admin, master_password_file: %s}\n",
	    pw);
	if ((cf = test_load_good(test_write(yaml), __LINE__)) != NULL) {
		CHECK(cf->lookup_http != NULL && cf->lookup_http->port == 9000, "url port");
		CHECK(cf->master_password != NULL && strcmp(cf->master_password, "m4ster") == 0,
		    "master password read");
		CHECK(cf->lookup_timeout_ms == 2000, "timeout");
		CHECK(cf->lookup_keepalive == 16, "keepalive %u", cf->lookup_keepalive);
		config_free(cf);
	}

	/* Keys of login routing without route: login. */
	BAD(LISTEN CERTS BACKEND "  lookup: {type: hash}\n", 1, 10, 18,
	    "backend.lookup.type: only used with backend.route: login");
	/* Each lookup's own keys. */
	BAD(LISTEN CERTS BACKEND "  route: login\n  lookup: {type: static}\n", 1, 11, 18,
	    "backend.lookup.type: static needs backend.lookup.file");
	BAD(LISTEN CERTS BACKEND "  route: login\n  lookup: {type: http}\n", 1, 11, 18,
	    "backend.lookup.type: http needs backend.lookup.url");
	BAD(LISTEN CERTS BACKEND "  route: login\n  lookup: {type: hash, url: 'http://x'}\n",
	    1, 11, 29, "backend.lookup.url: only used with backend.lookup.type: http");
	BAD(LISTEN CERTS BACKEND "  route: login\n"
	    "  lookup: {type: http, url: 'ftp://127.0.0.1/'}\n", 1, 11, 29, "backend.lookup.url: ");
	BAD(LISTEN CERTS BACKEND "  route: login\n  lookup: {type: hash, keepalive: 4}\n",
	    1, 11, 35, "backend.lookup.keepalive: only used with backend.lookup.type: http");
	BAD(LISTEN CERTS BACKEND "  route: login\n"
	    "  lookup: {type: http, url: 'http://127.0.0.1/', keepalive: 1025}\n", 1, 11, 61,
	    "backend.lookup.keepalive");
	/* A master login without a lookup that checks the password. */
	snprintf(yaml, sizeof(yaml), LISTEN CERTS BACKEND "  route: login\n"
	    "  login: {credentials: master, master_user: admin, master_password_file: %s}\n", pw);
	BAD(yaml, 1, 11, 24, "master needs backend.lookup.type: http");
	BAD(LISTEN CERTS BACKEND "  route: login\n  login: {master_user: admin}\n", 1, 11, 24,
	    "backend.login.master_user: only used with backend.login.credentials: master");
	BAD(LISTEN CERTS BACKEND "  route: login\n  login: {master_separator: ' '}\n", 1, 11, 29,
	    "backend.login.master_separator: 1 to 8 printable");
	BAD(LISTEN CERTS BACKEND "  route: login\n  login: {greeting: \"a\\tb\"}\n", 1, 11, 21,
	    "backend.login.greeting: printable ASCII");

	/* Runtime control keys. */
	BAD(LISTEN CERTS BACKEND "timeouts: {idle_keepalive: 500ms}\n", 1, 10, 28,
	    "timeouts.idle_keepalive: 0 (off) or at least 1s");
	BAD(LISTEN CERTS BACKEND "control: {group: root}\n", 1, 10, 18,
	    "control.group: only used with control.socket");
	BAD(LISTEN CERTS BACKEND "control: {socket: /tmp/x.sock, group: no-such-group-x}\n", 1, 10,
	    39, "control.group: no such group");
	if ((cf = test_load_good(test_write(LISTEN CERTS BACKEND
	    "control: {socket: /run/imapgate/control.sock}\n"
	    "timeouts: {idle_keepalive: 0s, drain_spread: 10s}\n"), __LINE__)) != NULL) {
		CHECK(cf->control_socket != NULL &&
		    strcmp(cf->control_socket, "/run/imapgate/control.sock") == 0, "socket");
		CHECK(cf->idle_keepalive_ms == 0 && cf->drain_spread_ms == 10000, "timeouts");
		config_free(cf);
	}

	/* Errors in the map file are reported against the map file, positioned. */
	snprintf(map, sizeof(map), "%s", test_scratch("bad.map",
	    "alice@a.test 127.0.0.1:1143\nbob@a.test\nalice@A.test 127.0.0.1:1\n"));
	snprintf(yaml, sizeof(yaml), LISTEN CERTS BACKEND "  route: login\n"
	    "  lookup: {type: static, file: %s}\n", map);
	path = test_write(yaml);
	cf = config_load(path, &errs);
	CHECK(cf == NULL && errs.n == 2, "two map errors, got %zu", errs.n);
	for (size_t i = 0; i < errs.n; i++)
		if (strcmp(errs.v[i].file, map) == 0 && errs.v[i].line == 2)
			found++;
	CHECK(found == 1, "an error at %s:2", map);
	if (cf == NULL && found != 1)
		test_dump(&errs);
	config_free(cf);
	config_errors_free(&errs);
	unlink(map);
	unlink(pw);
	unlink(test_scratch("users.map", ""));
}

static void
test_ops_bad(void)
{
	BAD(LISTEN CERTS BACKEND "  tls: implicit\n", 1, 10, 8,
	    "backend.tls: backend.server_name is needed to verify the backend's "
	    "certificate (or set verify: false)");
	BAD(LISTEN CERTS BACKEND "  tls: implicit\n" "  server_name: imap.internal\n"
	    "  ca_file: nothere.pem\n", 1, 12, 12,
	    "backend.ca_file: cannot read \"");
	BAD(LISTEN CERTS BACKEND "  ca_file: @DATA@/cert.pem\n", 1, 10, 12,
	    "backend.ca_file: only used with backend.tls: implicit or starttls "
	    "(backend.tls is none)");
	BAD(LISTEN CERTS BACKEND "  server_name: imap.internal\n", 1, 10, 16,
	    "backend.server_name: only used with backend.tls: implicit or starttls");
	BAD(LISTEN CERTS BACKEND "  tls: implicit\n" "  server_name: 'imap internal'\n", 1, 11, 16,
	    "backend.server_name: \"imap internal\" is not a host name");
	BAD(LISTEN CERTS BACKEND "  tls: implicit\n" "  server_name: ''\n", 1, 11, 16,
	    "backend.server_name: the value is empty");
	BAD(LISTEN CERTS BACKEND "  tls: tls\n", 1, 10, 8,
	    "backend.tls: \"tls\" is not one of implicit, none, starttls");
	BAD(LISTEN CERTS BACKEND "  verify: maybe\n", 1, 10, 11,
	    "backend.verify: \"maybe\" is not a boolean");
	BAD(LISTEN CERTS BACKEND "  client_ip: proxy-v3\n", 1, 10, 14,
	    "backend.client_ip: \"proxy-v3\" is not one of none, proxy-v1, proxy-v2, id");
	BAD(LISTEN CERTS BACKEND "  balance: random\n", 1, 10, 12,
	    "backend.balance: \"random\" is not one of round-robin, least-connections, "
	    "source-ip");
	BAD(LISTEN CERTS BACKEND "  health: {interval: 50ms}\n", 1, 10, 22,
	    "backend.health.interval: 50ms is below the minimum 100ms");
	BAD(LISTEN CERTS BACKEND "  health: {interval: 2h}\n", 1, 10, 22,
	    "backend.health.interval: 2h is above the maximum 1h");
	BAD(LISTEN CERTS BACKEND "  health: {timeout: 61s}\n", 1, 10, 21,
	    "backend.health.timeout: 61s is above the maximum 1m");
	BAD(LISTEN CERTS BACKEND "  health: {timeout: 99ms}\n", 1, 10, 21,
	    "backend.health.timeout: 99ms is below the minimum 100ms");
	BAD(LISTEN CERTS BACKEND "  health:\n" "    rise: 0\n", 1, 11, 11,
	    "backend.health.rise: 0 is out of range 1..100");
	BAD(LISTEN CERTS BACKEND "  health:\n" "    fall: 101\n", 1, 11, 11,
	    "backend.health.fall: 101 is out of range 1..100");
	BAD(LISTEN CERTS BACKEND "  health:\n" "    fall: 2.5\n", 1, 11, 11,
	    "backend.health.fall: \"2.5\" is not a whole number");
	BAD(LISTEN CERTS BACKEND "  health: {interval: 1s}\n", 1, 10, 22,
	    "backend.health.timeout (2000ms) is longer than backend.health.interval "
	    "(1000ms)");
	BAD(LISTEN CERTS BACKEND "  health: {interval: 2s, timeout: 3s}\n", 1, 10, 35,
	    "backend.health.timeout (3000ms) is longer than backend.health.interval "
	    "(2000ms)");
	BAD(LISTEN CERTS BACKEND "  health: 5s\n", 1, 10, 11,
	    "backend.health: expected a mapping, got a scalar");
	BAD(LISTEN CERTS BACKEND "  health: {every: 5s}\n", 1, 10, 12,
	    "backend.health: unknown key \"every\"");
	BAD(LISTEN CERTS BACKEND "  connect_tries: 17\n", 1, 10, 18,
	    "backend.connect_tries: 17 is out of range 1..16");
	BAD(LISTEN CERTS BACKEND "  connect_tries: 0\n", 1, 10, 18,
	    "backend.connect_tries: 0 is out of range 1..16");
	BAD(LISTEN CERTS "backend:\n" "  servers:\n"
	    "    - {address: 127.0.0.1:1, weight: 0}\n", 1, 9, 38,
	    "backend.servers[0].weight: 0 is out of range 1..1000");
	BAD(LISTEN CERTS "backend:\n" "  servers:\n"
	    "    - {address: 127.0.0.1:1, weight: 1001}\n", 1, 9, 38,
	    "backend.servers[0].weight: 1001 is out of range 1..1000");
	BAD(LISTEN CERTS "backend:\n" "  servers:\n"
	    "    - {address: 127.0.0.1:1, weight: -1}\n", 1, 9, 38,
	    "backend.servers[0].weight: \"-1\" is not a whole number");
	BAD(LISTEN CERTS "backend:\n" "  servers:\n"
	    "    - {address: 127.0.0.1:1, weight: +2}\n", 1, 9, 38,
	    "backend.servers[0].weight: \"+2\" is not a whole number");
	BAD(LISTEN CERTS "backend:\n" "  servers:\n"
	    "    - {address: 127.0.0.1:1, max_connections: 1000001}\n", 1, 9, 47,
	    "backend.servers[0].max_connections: 1000001 is out of range 0..1000000");
	BAD(LISTEN CERTS "backend:\n" "  servers:\n"
	    "    - {address: 127.0.0.1:1, max_connections: 99999999999999999999999}\n", 1, 9, 47,
	    "backend.servers[0].max_connections: 99999999999999999999999 is out of range "
	    "0..1000000");
	BAD(LISTEN CERTS BACKEND "workers: 0\n", 1, 10, 10,
	    "workers: 0 is out of range 1..64 (or auto)");
	BAD(LISTEN CERTS BACKEND "workers: 65\n", 1, 10, 10,
	    "workers: 65 is out of range 1..64 (or auto)");
	BAD(LISTEN CERTS BACKEND "workers: all\n", 1, 10, 10,
	    "workers: \"all\" is not auto or a whole number");
	BAD(LISTEN CERTS BACKEND "workers: Auto\n", 1, 10, 10,
	    "workers: \"Auto\" is not auto or a whole number");
	BAD(LISTEN CERTS BACKEND "limits:\n" "  max_connections: 0\n", 1, 11, 20,
	    "limits.max_connections: 0 is out of range 1..10000000");
	BAD(LISTEN CERTS BACKEND "limits:\n" "  max_connections: 10000001\n", 1, 11, 20,
	    "limits.max_connections: 10000001 is out of range 1..10000000");
	BAD(LISTEN CERTS BACKEND "limits:\n" "  max_connections_per_ip: 1000001\n", 1, 11, 27,
	    "limits.max_connections_per_ip: 1000001 is out of range 0..1000000");
	BAD(LISTEN CERTS BACKEND "timeouts:\n" "  tls_handshake: 999ms\n", 1, 11, 18,
	    "timeouts.tls_handshake: 999ms is below the minimum 1s");
	BAD(LISTEN CERTS BACKEND "timeouts:\n" "  tls_handshake: 301s\n", 1, 11, 18,
	    "timeouts.tls_handshake: 301s is above the maximum 5m");
	BAD(LISTEN CERTS BACKEND "timeouts:\n" "  preauth: 0\n", 1, 11, 12,
	    "timeouts.preauth: 0 is below the minimum 1s");
	BAD(LISTEN CERTS BACKEND "timeouts:\n" "  preauth: 61m\n", 1, 11, 12,
	    "timeouts.preauth: 61m is above the maximum 1h");
	BAD(LISTEN CERTS BACKEND "timeouts:\n" "  idle: 59s\n", 1, 11, 9,
	    "timeouts.idle: 59s is below the minimum 1m");
	BAD(LISTEN CERTS BACKEND "timeouts:\n" "  idle: 25h\n", 1, 11, 9,
	    "timeouts.idle: 25h is above the maximum 24h");
	BAD(LISTEN CERTS BACKEND "timeouts:\n" "  drain: 3601s\n", 1, 11, 10,
	    "timeouts.drain: 3601s is above the maximum 1h");
	BAD(LISTEN CERTS BACKEND "timeouts:\n" "  drain: -1s\n", 1, 11, 10,
	    "timeouts.drain: \"-1s\" is not a duration");
	BAD(LISTEN CERTS BACKEND "metrics:\n" "  address: localhost:9100\n", 1, 11, 12,
	    "metrics.address: ");
	BAD(LISTEN CERTS BACKEND "metrics:\n" "  address: 127.0.0.1:99999\n", 1, 11, 12,
	    "metrics.address: address \"127.0.0.1:99999\": port must be 1-65535");
	BAD(LISTEN CERTS BACKEND "metrics: 127.0.0.1:9100\n", 1, 10, 10,
	    "metrics: expected a mapping, got a scalar");
	BAD(LISTEN CERTS BACKEND "log:\n" "  format: yaml\n", 1, 11, 11,
	    "log.format: \"yaml\" is not one of text, json");
	BAD(LISTEN CERTS BACKEND "log:\n" "  output: file\n", 1, 11, 11,
	    "log.output: \"file\" is not one of stderr, syslog");
	BAD(LISTEN CERTS BACKEND "user: no-such-user-imapgate\n", 1, 10, 7,
	    "user: no such user \"no-such-user-imapgate\"");
	BAD(LISTEN CERTS BACKEND "group: no-such-group-imapgate\n", 1, 10, 8,
	    "group: no such group \"no-such-group-imapgate\"");
	BAD(LISTEN CERTS BACKEND "user: ''\n", 1, 10, 7,
	    "user: the value is empty");
	BAD(LISTEN CERTS BACKEND "user: [root]\n", 1, 10, 7,
	    "user: expected a single value, got a list");
	BAD(LISTEN BACKEND "tls:\n"
	    "  certificates: [{cert: @DATA@/cert.pem, key: @DATA@/key.pem}]\n"
	    "  min_version: 1.1\n", 1, 8, 16,
	    "tls.min_version: \"1.1\" is refused: TLS 1.1 is deprecated (RFC 8996); use "
	    "1.2 or 1.3");
	BAD(LISTEN BACKEND "tls:\n"
	    "  certificates: [{cert: @DATA@/cert.pem, key: @DATA@/key.pem}]\n"
	    "  min_version: 1.0\n", 1, 8, 16,
	    "tls.min_version: \"1.0\" is refused: TLS 1.0 is deprecated (RFC 8996)");
	BAD(LISTEN BACKEND "tls:\n"
	    "  certificates: [{cert: @DATA@/cert.pem, key: @DATA@/key.pem}]\n"
	    "  min_version: \"1.4\"\n", 1, 8, 16,
	    "tls.min_version: \"1.4\" is not one of 1.2, 1.3");
	BAD(LISTEN BACKEND "tls:\n"
	    "  certificates: [{cert: @DATA@/cert.pem, key: @DATA@/key.pem}]\n"
	    "  min_version: 1.20\n", 1, 8, 16,
	    "tls.min_version: \"1.20\" is not one of 1.2, 1.3");
	BAD(LISTEN BACKEND "tls:\n"
	    "  certificates: [{cert: @DATA@/cert.pem, key: @DATA@/key.pem}]\n"
	    "  ciphers: \"\"\n", 1, 8, 12,
	    "tls.ciphers: the value is empty");
	BAD(LISTEN BACKEND "tls:\n"
	    "  certificates: [{cert: @DATA@/cert.pem, key: @DATA@/key.pem}]\n"
	    "  ciphersuites: [TLS_AES_128_GCM_SHA256]\n", 1, 8, 17,
	    "tls.ciphersuites: expected a single value, got a list");
	BAD("listen:\n" "  - address: 0.0.0.0:10143\n" "    tls: none\n" BACKEND, 1, 3, 10,
	    "listen[0].tls: \"none\" on 0.0.0.0:10143, which is not a loopback address, "
	    "lets passwords cross the network in plaintext; use implicit or starttls, or "
	    "add insecure: true to accept that");
	BAD("listen:\n" "  - {address: \"*:10143\", tls: none, insecure: false}\n" BACKEND, 1, 2, 31,
	    "listen[0].tls: \"none\" on *:10143, which is not a loopback address");
	BAD("listen:\n" "  - address: 127.0.0.1:10143\n" "    tls: none\n"
	    "  - address: \"[::]:10143\"\n" "    tls: none\n" BACKEND, 1, 5, 10,
	    "listen[1].tls: \"none\" on [::]:10143, which is not a loopback address");
	BAD("listen:\n" "  - address: 192.0.2.1:10143\n" "    tls: none\n"
	    "    insecure: true\n" "  - address: 128.0.0.1:10143\n" "    tls: none\n"
	    BACKEND, 1, 6, 10,
	    "listen[1].tls: \"none\" on 128.0.0.1:10143, which is not a loopback");
	BAD("listen:\n" "  - address: 0.0.0.0:10143\n" "    tls: starttls\n"
	    "    require_tls: false\n" CERTS BACKEND, 1, 4, 18,
	    "listen[0].require_tls: false on 0.0.0.0:10143, which is not a loopback "
	    "address, lets clients log in before STARTTLS, in plaintext; add insecure: "
	    "true to accept that");
	BAD("listen:\n" "  - address: 127.0.0.1:10143\n" "    tls: starttls\n" BACKEND, 1, 2, 5,
	    "listen[0]: uses tls: starttls, but tls.certificates lists no certificate");
	BAD("listen:\n" "  - address: 127.0.0.1:10993\n" "    proxy_protocol: true\n" CERTS
	    BACKEND, 1, 3, 21,
	    "listen[0].proxy_protocol: true needs trusted_proxies, the networks whose "
	    "PROXY headers are believed (for example [10.0.0.0/8])");
	BAD("listen:\n" "  - address: 127.0.0.1:10993\n" "    proxy_protocol: true\n"
	    "    trusted_proxies: []\n" CERTS BACKEND, 1, 3, 21,
	    "listen[0].proxy_protocol: true needs trusted_proxies");
	BAD("listen:\n" "  - address: 127.0.0.1:10993\n" "    proxy_protocol: on\n"
	    "    trusted_proxies:\n" CERTS BACKEND, 1, 3, 21,
	    "listen[0].proxy_protocol: true needs trusted_proxies");
	BAD("listen:\n" "  - address: 127.0.0.1:10993\n"
	    "    trusted_proxies: [10.0.0.0/8]\n" CERTS BACKEND, 1, 3, 22,
	    "listen[0].trusted_proxies: only used with proxy_protocol: true (it does not "
	    "limit who may connect)");
	BAD("listen:\n" "  - address: 127.0.0.1:10993\n" "    proxy_protocol: true\n"
	    "    trusted_proxies: [10.0.0.1/8]\n" CERTS BACKEND, 1, 4, 23,
	    "listen[0].trusted_proxies[0]: \"10.0.0.1/8\" has bits set past the /8 "
	    "prefix (the network is 10.0.0.0/8; for one address write it without a "
	    "prefix)");
	BAD("listen:\n" "  - address: 127.0.0.1:10993\n" "    proxy_protocol: true\n"
	    "    trusted_proxies: [10.0.0.0/8, \"2001:db8::1/32\"]\n" CERTS BACKEND, 1, 4, 35,
	    "listen[0].trusted_proxies[1]: \"2001:db8::1/32\" has bits set past the /32 "
	    "prefix (the network is 2001:db8::/32;");
	BAD("listen:\n" "  - address: 127.0.0.1:10993\n" "    proxy_protocol: true\n"
	    "    trusted_proxies: [10.0.0.0/33]\n" CERTS BACKEND, 1, 4, 23,
	    "listen[0].trusted_proxies[0]: \"10.0.0.0/33\": the prefix length must be "
	    "0-32");
	BAD("listen:\n" "  - address: 127.0.0.1:10993\n" "    proxy_protocol: true\n"
	    "    trusted_proxies: [\"::/129\"]\n" CERTS BACKEND, 1, 4, 23,
	    "listen[0].trusted_proxies[0]: \"::/129\": the prefix length must be 0-128");
	BAD("listen:\n" "  - address: 127.0.0.1:10993\n" "    proxy_protocol: true\n"
	    "    trusted_proxies: [10.0.0.0/]\n" CERTS BACKEND, 1, 4, 23,
	    "\"10.0.0.0/\": the prefix length must be 0-32");
	BAD("listen:\n" "  - address: 127.0.0.1:10993\n" "    proxy_protocol: true\n"
	    "    trusted_proxies: [10.0.0.0/+8]\n" CERTS BACKEND, 1, 4, 23,
	    "\"10.0.0.0/+8\": the prefix length must be 0-32");
	BAD("listen:\n" "  - address: 127.0.0.1:10993\n" "    proxy_protocol: true\n"
	    "    trusted_proxies: [10.0.0.0/0008]\n" CERTS BACKEND, 1, 4, 23,
	    "\"10.0.0.0/0008\": the prefix length must be 0-32");
	BAD("listen:\n" "  - address: 127.0.0.1:10993\n" "    proxy_protocol: true\n"
	    "    trusted_proxies: [10.0.0/8]\n" CERTS BACKEND, 1, 4, 23,
	    "listen[0].trusted_proxies[0]: \"10.0.0/8\" is not an IP network (write "
	    "10.0.0.0/8, 2001:db8::/32, or a single address; no host names)");
	BAD("listen:\n" "  - address: 127.0.0.1:10993\n" "    proxy_protocol: true\n"
	    "    trusted_proxies: [proxy.example.org]\n" CERTS BACKEND, 1, 4, 23,
	    "\"proxy.example.org\" is not an IP network");
	BAD("listen:\n" "  - address: 127.0.0.1:10993\n" "    proxy_protocol: true\n"
	    "    trusted_proxies: [\"fe80::1%eth0\"]\n" CERTS BACKEND, 1, 4, 23,
	    "\"fe80::1%eth0\" is not an IP network");
	BAD("listen:\n" "  - address: 127.0.0.1:10993\n" "    proxy_protocol: true\n"
	    "    trusted_proxies: [\" 10.0.0.0/8\"]\n" CERTS BACKEND, 1, 4, 23,
	    "\" 10.0.0.0/8\" is not an IP network");
	BAD("listen:\n" "  - address: 127.0.0.1:10993\n" "    proxy_protocol: true\n"
	    "    trusted_proxies: [{a: b}]\n" CERTS BACKEND, 1, 4, 23,
	    "listen[0].trusted_proxies[0]: expected a string, got a mapping");
	BAD("listen:\n" "  - address: 127.0.0.1:10993\n" "    proxy_protocol: true\n"
	    "    trusted_proxies: 10.0.0.0/8\n" CERTS BACKEND, 1, 4, 22,
	    "listen[0].trusted_proxies: expected a list, got a scalar");
	BAD("listen:\n" "  - address: 127.0.0.1:10993\n" "    require_tls: maybe\n" CERTS
	    BACKEND, 1, 3, 18,
	    "listen[0].require_tls: \"maybe\" is not a boolean");
	BAD("listen:\n" "  - address: 127.0.0.1:10993\n" "    insecure: 1\n" CERTS BACKEND, 1, 3, 15,
	    "listen[0].insecure: \"1\" is not a boolean");

}

/* Several independent mistakes in one inline file: all of them come back. */
static void
test_several(void)
{
	BAD("listen:\n  - address: 127.0.0.1:993\n    tls: bogus\n"
	    "log: {level: chatty, colour: red}\n" BACKEND, 3, 4, 22, "unknown key \"colour\"");
	BAD("listen:\n  - address: 127.0.0.1:993\n    tls: bogus\n"
	    "log: {level: chatty, colour: red}\n" BACKEND, 3, 3, 10, "\"bogus\" is not one of");
	BAD("listen:\n  - address: 127.0.0.1:993\n    tls: bogus\n"
	    "log: {level: chatty, colour: red}\n" BACKEND, 3, 4, 14, "\"chatty\" is not one of");
}

/*
 * Load a file shipped in config/ with its certificate paths pointed at the
 * test data; NULL if it cannot be read or does not load.
 */
static struct config *
test_load_shipped(const char *rel, int srcline)
{
	static char text[TEST_YAMLLEN], fixed[TEST_YAMLLEN];
	static const struct {
		const char *from, *to;
	} subst[] = {
		{ "/etc/imapgate/fullchain.pem", "@DATA@/cert.pem" },
		{ "/etc/imapgate/privkey.pem", "@DATA@/key.pem" },
		{ "/etc/imapgate/backend-ca.pem", "@DATA@/cert.pem" },
	};
	char path[TEST_PATHLEN];
	size_t n, o = 0;
	FILE *f;

	/* $TESTDATA is tests/unit/data; the shipped files are under config/. */
	snprintf(path, sizeof(path), "%s/../../../%s", test_data, rel);
	if ((f = fopen(path, "r")) == NULL) {
		CHECK(0, "line %d: cannot open %s", srcline, path);
		return NULL;
	}
	n = fread(text, 1, sizeof(text) - 1, f);
	fclose(f);
	CHECK(n < sizeof(text) - 1, "%s is too large for the test buffer", rel);
	text[n] = '\0';
	for (const char *p = text; *p != '\0' && o + 64 < sizeof(fixed); ) {
		size_t i;
		for (i = 0; i < sizeof(subst) / sizeof(subst[0]); i++)
			if (strncmp(p, subst[i].from, strlen(subst[i].from)) == 0)
				break;
		if (i < sizeof(subst) / sizeof(subst[0])) {
			o += (size_t)snprintf(fixed + o, sizeof(fixed) - o, "%s", subst[i].to);
			p += strlen(subst[i].from);
		} else
			fixed[o++] = *p++;
	}
	fixed[o] = '\0';
	return test_load_good(test_write(fixed), srcline);
}

/* The shipped example and every preset load (given real certificate files). */
static void
test_shipped(void)
{
	struct config *cf = test_load_shipped("config/imapgate.yaml", __LINE__);

	if (cf != NULL) {
		/* The example spells out the defaults; its results must equal them. */
		test_guard_defaults(cf);
		test_ops_defaults(cf);
		CHECK(cf->nlisten == 2 && cf->listen[0].tls == CONFIG_TLS_IMPLICIT &&
		    cf->listen[1].tls == CONFIG_TLS_STARTTLS, "example listen");
	}
	config_free(cf);

	/*
	 * The Debian package's /etc/imapgate/imapgate.yaml: loads with no
	 * certificate at all (the service starts right after installation), one
	 * plaintext listener on loopback only.
	 */
	cf = test_load_shipped("config/default.yaml", __LINE__);
	if (cf != NULL)
		CHECK(cf->nlisten == 1 && cf->listen[0].tls == CONFIG_TLS_NONE &&
		    cf->ncerts == 0 && cf->nservers == 1 && cf->backend_tls == CONFIG_TLS_NONE &&
		    cf->user == NULL, "package default configuration");
	config_free(cf);

	cf = test_load_shipped("config/presets/dovecot.yaml", __LINE__);
	if (cf != NULL) {
		test_guard_defaults(cf);
		CHECK(cf->nlisten == 2 && cf->listen[1].tls == CONFIG_TLS_STARTTLS &&
		    cf->listen[0].proxy_protocol && cf->listen[0].ntrusted_proxies == 1 &&
		    test_cidr(&cf->listen[0].trusted[0], AF_INET, "10.0.0.0", 24),
		    "dovecot preset listeners");
		CHECK(cf->backend_tls == CONFIG_TLS_IMPLICIT && cf->backend_verify == 1 &&
		    cf->backend_ca_file != NULL && cf->backend_server_name != NULL &&
		    cf->client_ip == CONFIG_CLIENT_IP_PROXY_V2 &&
		    cf->balance == CONFIG_BALANCE_LEAST_CONNECTIONS && cf->nservers == 2,
		    "dovecot preset backend");
	}
	config_free(cf);

	cf = test_load_shipped("config/presets/starttls-legacy.yaml", __LINE__);
	if (cf != NULL)
		CHECK(cf->backend_tls == CONFIG_TLS_STARTTLS && cf->backend_verify == 1 &&
		    cf->backend_server_name != NULL && cf->listen[1].require_tls == 1 &&
		    cf->connect_tries == 1, "starttls-legacy preset");
	config_free(cf);

	cf = test_load_shipped("config/presets/login-routing.yaml", __LINE__);
	if (cf != NULL)
		CHECK(cf->route == CONFIG_ROUTE_LOGIN && cf->lookup == CONFIG_LOOKUP_HASH &&
		    cf->nservers == 3 && cf->servers[2].weight == 2 &&
		    cf->listen[1].require_tls == 1, "login-routing preset");
	config_free(cf);

	cf = test_load_shipped("config/presets/wildduck.yaml", __LINE__);
	if (cf != NULL) {
		test_guard_defaults_present(cf);
		CHECK(cf->nlisten == 2 && cf->listen[1].tls == CONFIG_TLS_STARTTLS &&
		    cf->client_ip == CONFIG_CLIENT_IP_PROXY_V1 && cf->backend_tls == CONFIG_TLS_NONE,
		    "preset: STARTTLS listener, PROXY v1 to WildDuck");
		CHECK(cf->nrules == 6, "preset rules %zu", cf->nrules);
		CHECK(cf->nrules == 6 && cf->rules[0].match_status == CONFIG_STATUS_NO &&
		    strcmp(cf->rules[0].match_code, "RATELIMITEDERROR") == 0 &&
		    strcmp(cf->rules[0].set_code, "UNAVAILABLE") == 0 &&
		    cf->rules[0].set_status == CONFIG_STATUS_KEEP, "preset RateLimitedError");
		CHECK(cf->nrules == 6 && cf->rules[1].has_re &&
		    regexec(&cf->rules[1].match_re, "Access to requested service disabled", 0,
		    NULL, 0) == 0 &&
		    regexec(&cf->rules[1].match_re, "Authentication failed. Invalid scope", 0,
		    NULL, 0) != 0 && strcmp(cf->rules[1].set_code, "CONTACTADMIN") == 0,
		    "preset InvalidAuthScope (service disabled)");
		CHECK(cf->nrules == 6 && cf->rules[5].match_status == CONFIG_STATUS_BAD &&
		    strcmp(cf->rules[5].match_code, "none") == 0 &&
		    regexec(&cf->rules[5].match_re, "Database error", 0, NULL, 0) == 0 &&
		    cf->rules[5].set_status == CONFIG_STATUS_NO &&
		    strcmp(cf->rules[5].set_code, "UNAVAILABLE") == 0, "preset BAD Database error");
		CHECK(test_matches(cf->greeting_re, cf->ngreeting_patterns,
		    "WildDuck IMAP Server ready for requests from 127.0.0.1 yqNm2ICG1Ee5"),
		    "preset recognises WildDuck's greeting");
	}
	config_free(cf);

	/* Texts measured on Debian 12's servers (tests/integration/
	 * test_legacy_backends.py). */
	cf = test_load_shipped("config/presets/courier.yaml", __LINE__);
	if (cf != NULL) {
		test_guard_defaults_present(cf);
		CHECK(cf->nlisten == 2 && cf->listen[1].tls == CONFIG_TLS_STARTTLS &&
		    cf->backend_tls == CONFIG_TLS_NONE && cf->client_ip == CONFIG_CLIENT_IP_NONE &&
		    cf->nservers == 1, "courier preset: listeners, plaintext backend, no client_ip");
		CHECK(cf->ncap_add == 1 && test_in(cf->cap_add, cf->ncap_add, "AUTH=PLAIN") &&
		    cf->ncap_remove == 0, "courier preset adds AUTH=PLAIN only");
		CHECK(cf->nrules == 0 && cf->nallow_codes == 0, "courier preset: no rewrites");
		CHECK(test_matches(cf->greeting_re, cf->ngreeting_patterns,
		    "Courier-IMAP ready. Copyright 1998-2019 Double Precision, Inc.  "
		    "See COPYING for distribution information."),
		    "courier preset recognises Courier's greeting");
		CHECK(!test_matches(cf->desync_re, cf->ndesync_patterns,
		    "Error in IMAP command received by server."),
		    "courier preset: Courier's one error text is no desync");
	}
	config_free(cf);

	cf = test_load_shipped("config/presets/cyrus.yaml", __LINE__);
	if (cf != NULL) {
		CHECK(cf->guard_client_state == CONFIG_GUARD_BYE &&
		    cf->guard_desync == CONFIG_GUARD_BYE, "cyrus preset guard modes");
		CHECK(cf->nlisten == 2 && cf->listen[1].tls == CONFIG_TLS_STARTTLS &&
		    cf->backend_tls == CONFIG_TLS_NONE && cf->client_ip == CONFIG_CLIENT_IP_NONE &&
		    cf->nservers == 1, "cyrus preset: listeners, plaintext backend, no client_ip");
		CHECK(cf->ncap_add == 0 && cf->ncap_remove == 0 && cf->nrules == 0 &&
		    cf->nallow_codes == 0, "cyrus preset: no capability changes, no rewrites");
		/* serverinfo: on, min, off. */
		CHECK(cf->ngreeting_patterns == 3 &&
		    test_matches(cf->greeting_re, cf->ngreeting_patterns,
		    "vm Cyrus IMAP 3.6.1-Debian-3.6.1-4+deb12u5 server ready") &&
		    test_matches(cf->greeting_re, cf->ngreeting_patterns, "vm server ready") &&
		    test_matches(cf->greeting_re, cf->ngreeting_patterns, "server ready"),
		    "cyrus preset recognises Cyrus's greetings");
		for (size_t i = 0; test_greet_no[i] != NULL; i++)
			CHECK(!test_matches(cf->greeting_re, cf->ngreeting_patterns,
			    test_greet_no[i]), "cyrus preset greeting should not match \"%s\"",
			    test_greet_no[i]);
		CHECK(test_matches(cf->desync_re, cf->ndesync_patterns, "Please login first") &&
		    test_matches(cf->desync_re, cf->ndesync_patterns,
		    "Please select a mailbox first"), "cyrus preset: Cyrus's wrong-state texts");
		CHECK(!test_matches(cf->desync_re, cf->ndesync_patterns, "Mailbox does not exist") &&
		    !test_matches(cf->desync_re, cf->ndesync_patterns, "Permission denied"),
		    "cyrus preset: Cyrus's ordinary errors are no desync");
	}
	config_free(cf);
}

/* Hard limits: entries in a list, keys in a mapping. */
static void
test_limits(void)
{
	static char yaml[TEST_YAMLLEN];
	size_t o;

	o = (size_t)snprintf(yaml, sizeof(yaml), "listen: [");
	for (int i = 0; i < 1025; i++)
		o += (size_t)snprintf(yaml + o, sizeof(yaml) - o, "{},");
	snprintf(yaml + o, sizeof(yaml) - o, "]\n" BACKEND);
	BAD(yaml, 1, 1, 9, "listen: at most 1024 entries are allowed");

	o = (size_t)snprintf(yaml, sizeof(yaml), LISTEN CERTS BACKEND "log: {");
	for (int i = 0; i < 257; i++)
		o += (size_t)snprintf(yaml + o, sizeof(yaml) - o, "k%d: 1,", i);
	snprintf(yaml + o, sizeof(yaml) - o, "}\n");
	BAD(yaml, 1, 10, 6, "log: more than 256 keys in one mapping");

	o = (size_t)snprintf(yaml, sizeof(yaml), LISTEN CERTS BACKEND "capabilities: {add: [");
	for (int i = 0; i < 1025; i++)
		o += (size_t)snprintf(yaml + o, sizeof(yaml) - o, "A,");
	snprintf(yaml + o, sizeof(yaml) - o, "]}\n");
	BAD(yaml, 1, 10, 21, "capabilities.add: at most 1024 entries are allowed");

	/* An atom of the longest allowed length, and one byte more. */
	o = (size_t)snprintf(yaml, sizeof(yaml), LISTEN CERTS BACKEND "capabilities: {add: [");
	for (int i = 0; i < 129; i++)
		yaml[o++] = 'A';
	snprintf(yaml + o, sizeof(yaml) - o, "]}\n");
	BAD(yaml, 1, 10, 22, "capabilities.add[0]: \"AAAA");
	BAD(yaml, 1, 10, 22, "is longer than 128 bytes");
	yaml[o - 1] = ']';
	yaml[o] = '}';
	yaml[o + 1] = '\n';
	yaml[o + 2] = '\0';
	{
		struct config *cf = test_load_good(test_write(yaml), __LINE__);
		CHECK(cf == NULL || (cf->ncap_add == 1 && strlen(cf->cap_add[0]) == 128),
		    "128-byte atom");
		config_free(cf);
	}
}

/* A file that does not exist has one error without a position. */
static void
test_nofile(void)
{
	struct config_errors errs;
	struct config *cf = config_load("/nonexistent/imapgate.yaml", &errs);

	CHECK(cf == NULL && errs.n == 1 && errs.v[0].line == 0 &&
	    strstr(errs.v[0].msg, "cannot open") != NULL, "missing file");
	config_free(cf);
	config_errors_free(&errs);
}

/* Check one duration string: want < 0 means it must be rejected. */
static void
test_dur(const char *s, long long want)
{
	uint64_t v = 12345;
	int rc = config_parse_duration(s, &v);

	if (want < 0)
		CHECK(rc == -1, "duration \"%s\" should be rejected", s);
	else
		CHECK(rc == 0 && v == (uint64_t)want, "duration \"%s\" = %llu, rc %d, want %lld",
		    s, (unsigned long long)v, rc, want);
}

/* Check one size string: want < 0 means it must be rejected. */
static void
test_sz(const char *s, long long want)
{
	uint64_t v = 12345;
	int rc = config_parse_size(s, &v);

	if (want < 0)
		CHECK(rc == -1, "size \"%s\" should be rejected", s);
	else
		CHECK(rc == 0 && v == (uint64_t)want, "size \"%s\" = %llu, rc %d, want %lld",
		    s, (unsigned long long)v, rc, want);
}

/* Duration and size syntax, edges and overflow. */
static void
test_parsers(void)
{
	char buf[64];
	uint64_t v;

	test_dur("500ms", 500);
	test_dur("30s", 30000);
	test_dur("5m", 300000);
	test_dur("1h", 3600000);
	test_dur("7", 7000);
	test_dur("0", 0);
	test_dur("0ms", 0);
	test_dur("007s", 7000);
	test_dur("", -1);
	test_dur("ms", -1);
	test_dur("5 s", -1);
	test_dur(" 5s", -1);
	test_dur("5s ", -1);
	test_dur("-1s", -1);
	test_dur("+5s", -1);
	test_dur("1.5s", -1);
	test_dur("5S", -1);
	test_dur("5sec", -1);
	test_dur("1d", -1);
	test_dur("5ms5", -1);
	test_dur("0x10", -1);

	/* The largest values that fit, and one more. */
	CHECK(config_parse_duration("18446744073709551615ms", &v) == 0 && v == UINT64_MAX,
	    "max ms");
	test_dur("18446744073709551616ms", -1);
	test_dur("99999999999999999999999999ms", -1);
	snprintf(buf, sizeof(buf), "%llu", (unsigned long long)(UINT64_MAX / 1000));
	CHECK(config_parse_duration(buf, &v) == 0 && v == UINT64_MAX / 1000 * 1000, "max s");
	snprintf(buf, sizeof(buf), "%llu", (unsigned long long)(UINT64_MAX / 1000 + 1));
	test_dur(buf, -1);
	snprintf(buf, sizeof(buf), "%lluh", (unsigned long long)(UINT64_MAX / 3600000));
	CHECK(config_parse_duration(buf, &v) == 0, "max h");
	snprintf(buf, sizeof(buf), "%lluh", (unsigned long long)(UINT64_MAX / 3600000 + 1));
	test_dur(buf, -1);

	test_sz("512", 512);
	test_sz("0", 0);
	test_sz("64KiB", 65536);
	test_sz("16MiB", 16LL * 1024 * 1024);
	test_sz("1GiB", 1024LL * 1024 * 1024);
	test_sz("3GiB", 3LL * 1024 * 1024 * 1024);
	test_sz("64KB", -1);
	test_sz("64kb", -1);
	test_sz("64kib", -1);
	test_sz("64K", -1);
	test_sz("16MB", -1);
	test_sz("1TiB", -1);
	test_sz("", -1);
	test_sz("KiB", -1);
	test_sz("1.5MiB", -1);
	test_sz("-1", -1);
	test_sz("64 KiB", -1);
	test_sz("64B", -1);
	CHECK(config_parse_size("18446744073709551615", &v) == 0 && v == UINT64_MAX, "max bytes");
	test_sz("18446744073709551616", -1);
	test_sz("17179869184GiB", -1);	/* 2^34 GiB = 2^64 */
	CHECK(config_parse_size("17179869183GiB", &v) == 0 &&
	    v == 17179869183ULL * 1024 * 1024 * 1024, "largest GiB");
	test_sz("18014398509481984KiB", -1);	/* 2^54 KiB = 2^64 */
}

/* One pattern under guard.desync_patterns: its entry is at line 12, column 7. */
#define DESYNC_RE(re)	LISTEN CERTS BACKEND "guard:\n  desync_patterns:\n    - '" re "'\n"

/*
 * Regular expressions whose compile time or memory has no useful bound
 * are refused before regcomp sees them, at the entry's position, under
 * every key that holds one.
 */
static void
test_regex_bounds(void)
{
	static char yaml[TEST_YAMLLEN];
	size_t o;

	/* The issue's 27 bytes: 13 s and 1.1 GB in regcomp. */
	BAD(DESYNC_RE("((a{1,100}){1,100}){1,100}"), 1, 12, 7, "guard.desync_patterns[0]: "
	    "\"((a{1,100}){1,100}){1,100}\" repeats a counted repetition with another count "
	    "(at byte 12)");
	BAD(DESYNC_RE("x{2}{3}"), 1, 12, 7, "repeats a counted repetition with another count");
	BAD(DESYNC_RE("a{101}"), 1, 12, 7, "\"a{101}\" repeats 101 times (at byte 2); a count "
	    "may be at most 100");
	BAD(DESYNC_RE("a{1,1000}"), 1, 12, 7, "repeats 1000 times");
	BAD(DESYNC_RE("a{99999999999999999999999}"), 1, 12, 7, "a count may be at most 100");
	/* Loops over what matches empty: exponential in glibc ((()+|) x20 took 3 s). */
	BAD(DESYNC_RE("(a*)*"), 1, 12, 7, "repeats without bound (at byte 5) something that "
	    "can match the empty text");
	BAD(DESYNC_RE("(x?|y)+"), 1, 12, 7, "can match the empty text");
	BAD(DESYNC_RE("(a|)*"), 1, 12, 7, "can match the empty text");
	BAD(DESYNC_RE("(^)*"), 1, 12, 7, "can match the empty text");
	BAD(DESYNC_RE("(b?c?){2,}"), 1, 12, 7, "can match the empty text");
	BAD(DESYNC_RE("(a)\\1"), 1, 12, 7, "uses the back-reference \\1 (at byte 4)");
	/* Anchors: (^$|) a hundred times took 15 s; ^(a?){1,96} 31 ms. */
	BAD(DESYNC_RE("(^$|)(^$|)(^$|)(^$|)(^$|)"), 1, 12, 7, "holds 10 anchors (^ $ \\b \\B "
	    "\\< \\> \\` \\'), copies made by repetitions counted; at most 8 are allowed");
	BAD(DESYNC_RE("(\\b|a){9}"), 1, 12, 7, "holds 9 anchors");
	BAD(DESYNC_RE("^(a?){1,20}"), 1, 12, 7, "holds anchors (^ $ \\b ...) and about 570 "
	    "units of optional parts inside optional parts");
	BAD(DESYNC_RE("^(a?b?)?(a?b?)?(a?b?)?(a?b?)?(a?b?)?(a?b?)?(a?b?)?(a?b?)?(a?b?)?"
	    "(a?b?)?(a?b?)?(a?b?)?(a?b?)?(a?b?)?(a?b?)?(a?b?)?(a?b?)?(a?b?)?(a?b?)?(a?b?)?"
	    "(a?b?)?(a?b?)?(a?b?)?(a?b?)?(a?b?)?(a?b?)?"), 1, 12, 7, "about 130 units of "
	    "optional parts inside optional parts");
	BAD(DESYNC_RE("((((((((((((((((((a))))))))))))))))))"), 1, 12, 7,
	    "nests parentheses deeper than 16 levels (at byte 17)");
	/* Size: every {m,n} copies what it repeats. */
	o = (size_t)snprintf(yaml, sizeof(yaml), "%s", DESYNC_RE(""));
	o -= 2;		/* before the closing quote and newline */
	for (int i = 0; i < 11; i++)
		o += (size_t)snprintf(yaml + o, sizeof(yaml) - o, "[a-z]{100}");
	snprintf(yaml + o, sizeof(yaml) - o, "'\n");
	BAD(yaml, 1, 12, 7, "is too large once compiled: about 2200 units, at most 2048 are "
	    "allowed");
	/* The other keys that hold expressions. */
	BAD(LISTEN CERTS BACKEND "guard:\n  greeting_patterns: [ok, '(a*)*']\n", 1, 11, 27,
	    "guard.greeting_patterns[1]: \"(a*)*\" repeats without bound");
	BAD(LISTEN CERTS BACKEND "rewrite:\n  rules:\n    - {}\n    - match: {text: 'a{101}'}\n",
	    1, 13, 21, "rewrite.rules[1].match.text: \"a{101}\" repeats 101 times");
	/* A long expression is quoted cut short in the message. */
	BAD(DESYNC_RE("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa(a*)*"), 1, 12, 7,
	    "\"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa...\" repeats without bound");

	/* All expressions together: 17 of 2000 units pass 32768 at the 17th. */
	o = (size_t)snprintf(yaml, sizeof(yaml), LISTEN CERTS BACKEND "guard:\n"
	    "  desync_patterns:\n");
	for (int i = 0; i < 17; i++) {
		o += (size_t)snprintf(yaml + o, sizeof(yaml) - o, "    - '");
		for (int j = 0; j < 10; j++)
			o += (size_t)snprintf(yaml + o, sizeof(yaml) - o, "[a-z]{100}");
		o += (size_t)snprintf(yaml + o, sizeof(yaml) - o, "'\n");
	}
	BAD(yaml, 1, 28, 7, "guard.desync_patterns[16]: the regular expressions of the file, "
	    "this one included, are too large once compiled: more than 32768 units in all");

	/* What real patterns look like still loads, and still matches. */
	{
		struct config *cf = test_load_good(test_write(LISTEN CERTS BACKEND "guard:\n"
		    "  desync_patterns:\n"
		    "    - '^[^ ]+( [^ ]+)? not allowed now$'\n"
		    "    - '(a|b)*c'\n"
		    "    - 'x{0,100}y{100}'\n"
		    "    - '(a+){2}(b{3})+'\n"
		    "    - '^[[:alpha:]]{1,100}[]x]*$'\n"
		    "    - '^(\\* )?(OK|NO)( \\[[^]]*\\])? .*$'\n"
		    "    - '\\bword\\b ([a-z]+\\.)+'\n"
		    "    - 'a)b'\n"), __LINE__);
		CHECK(cf == NULL || (cf->ndesync_patterns == 8 &&
		    regexec(&cf->desync_re[0], "SELECT not allowed now", 0, NULL, 0) == 0 &&
		    regexec(&cf->desync_re[5], "* NO [X] y", 0, NULL, 0) == 0 &&
		    regexec(&cf->desync_re[7], "a)b", 0, NULL, 0) == 0),
		    "bounded expressions load and match");
		config_free(cf);
	}
	/* regcomp still reports what it refuses itself. */
	BAD(DESYNC_RE("[a"), 1, 12, 7, "is not a valid regular expression");
	BAD(DESYNC_RE("a{2,1}"), 1, 12, 7, "is not a valid regular expression");
}

/* YAML nesting: at most 16 mappings and lists inside one another. */
static void
test_yaml_depth(void)
{
	static char yaml[TEST_YAMLLEN];
	size_t o;

	/* The top-level mapping and 15 lists: 16 levels, refused only for its type. */
	o = (size_t)snprintf(yaml, sizeof(yaml), LISTEN CERTS BACKEND "log: ");
	for (int i = 0; i < 15; i++)
		yaml[o++] = '[';
	for (int i = 0; i < 15; i++)
		yaml[o++] = ']';
	snprintf(yaml + o, sizeof(yaml) - o, "\n");
	BAD(yaml, 1, 10, 6, "log: expected a mapping, got a list");
	/* One more: the 17th level is refused where it opens. */
	o = (size_t)snprintf(yaml, sizeof(yaml), LISTEN CERTS BACKEND "log: ");
	for (int i = 0; i < 16; i++)
		yaml[o++] = '[';
	for (int i = 0; i < 16; i++)
		yaml[o++] = ']';
	snprintf(yaml + o, sizeof(yaml) - o, "\n");
	BAD(yaml, 1, 10, 21, "list nested too deep: at most 16 levels of mappings and lists "
	    "are allowed");
	BAD(LISTEN CERTS BACKEND "log: {a: {a: {a: {a: {a: {a: {a: {a: {a: {a: {a: {a: {a: {a: "
	    "{a: {a: 1}}}}}}}}}}}}}}}}\n", 1, 10, 66, "mapping nested too deep");
	BAD(LISTEN CERTS BACKEND "log:\n  - - - - - - - - - - - - - - - - - x\n", 1, 11, 33,
	    "list nested too deep");
	/* In a second document too (read only to be refused). */
	o = (size_t)snprintf(yaml, sizeof(yaml), LISTEN CERTS BACKEND "---\n");
	for (int i = 0; i < 40; i++)
		yaml[o++] = '[';
	snprintf(yaml + o, sizeof(yaml) - o, "\n");
	BAD(yaml, 1, 11, 17, "list nested too deep");
}

/* Write s to f with @DATA@ replaced by $TESTDATA. */
static void
test_fputs_data(const char *s, FILE *f)
{
	const char *at;

	while ((at = strstr(s, "@DATA@")) != NULL) {
		fwrite(s, 1, (size_t)(at - s), f);
		fputs(test_data, f);
		s = at + 6;
	}
	fputs(s, f);
}

/*
 * Write head, then unit n times, then tail to the scratch file big.yaml
 * (@DATA@ in head and tail replaced by $TESTDATA); its path.
 */
static const char *
test_write_big(const char *head, const char *unit, size_t n, const char *tail)
{
	static char path[TEST_PATHLEN];
	FILE *f;

	snprintf(path, sizeof(path), "%s/big.yaml", test_dir);
	if ((f = fopen(path, "w")) == NULL) {
		perror(path);
		exit(2);
	}
	test_fputs_data(head, f);
	for (size_t i = 0; i < n; i++)
		fputs(unit, f);
	test_fputs_data(tail, f);
	fclose(f);
	return path;
}

/*
 * Load a big hostile file: it must fail with want in one of its errors, and
 * take less than TEST_MAX_LOAD_CPU seconds of CPU.  nerr 0: any count.
 */
static void
test_big(int srcline, const char *path, size_t nerr, const char *want)
{
	struct config_errors errs;
	clock_t t0 = clock();
	struct config *cf = config_load(path, &errs);
	double cpu = (double)(clock() - t0) / CLOCKS_PER_SEC;
	int found = 0;

	for (size_t i = 0; i < errs.n; i++)
		found |= strstr(errs.v[i].msg, want) != NULL;
	CHECK(cf == NULL && found && (nerr == 0 || errs.n == nerr),
	    "case at line %d: want %zu error(s), one with \"%s\"", srcline, nerr, want);
	CHECK(cpu < TEST_MAX_LOAD_CPU, "case at line %d: %.2f s of CPU to load", srcline, cpu);
	if (!found || (nerr != 0 && errs.n != nerr))
		test_dump(&errs);
	config_free(cf);
	config_errors_free(&errs);
	unlink(path);
}

#define BIG(path, n, want)	test_big(__LINE__, path, n, want)

/* Files near CONFIG_MAX_FILE built to make the loader work: each is cut short. */
static void
test_bounded_work(void)
{
	static char unit[TEST_YAMLLEN];
	const size_t fill = 4 * 1024 * 1024 - 4096;	/* bytes of the repeated part */
	size_t o;

	/* Nesting: 40,000 "[" took 7 s in libyaml's loader. */
	BIG(test_write_big(LISTEN CERTS BACKEND "log: ", "[", fill, "\n"), 1, "nested too deep");
	BIG(test_write_big(LISTEN CERTS BACKEND "log: ", "{a: ", fill / 4, "\n"), 1,
	    "nested too deep");
	BIG(test_write_big(LISTEN CERTS BACKEND "log:\n  ", "- ", fill / 2, "x\n"), 1,
	    "nested too deep");
	/* Values: about 300 bytes of memory each in the loaded document. */
	BIG(test_write_big(LISTEN CERTS BACKEND "x: [", "a,", fill / 2, "]\n"), 1,
	    "the file holds more than 262144 values");
	BIG(test_write_big(LISTEN CERTS BACKEND "x: [", "{},", fill / 3, "]\n"), 1,
	    "the file holds more than 262144 values");
	/* Aliases: one mapping of 256 unknown keys in each of 1024 entries. */
	o = (size_t)snprintf(unit, sizeof(unit), "x: &m {");
	for (int i = 0; i < 256; i++)
		o += (size_t)snprintf(unit + o, sizeof(unit) - o, "k%d: 1, ", i);
	snprintf(unit + o, sizeof(unit) - o, "}\nlisten: [");
	BIG(test_write_big(unit, "*m, ", 1024, "]\n" CERTS BACKEND), 200,
	    "too many errors, giving up");
	/* Expressions: 1024 times one that is as costly as allowed, through an alias. */
	o = (size_t)snprintf(unit, sizeof(unit), LISTEN CERTS BACKEND "guard:\n"
	    "  desync_patterns: [&p '(b*(a?a+)(||a?|.*|([a-z]*|)(([a-z]*b)*(|)?|b)){0,76})b', ");
	BIG(test_write_big(unit, "*p, ", 1023, "]\n"), 0, "are too large once compiled");
	/* Certificates: each entry's files are read and checked, so at most 64. */
	BIG(test_write_big(LISTEN "tls:\n  certificates:\n",
	    "    - {cert: cert.pem, key: key.pem}\n", 1024, BACKEND), 2,
	    "tls.certificates: at most 64 entries are allowed");
}

int
main(void)
{
	/* Inline cases live in a scratch directory, so the data path must be absolute. */
	if ((test_data = getenv("TESTDATA")) == NULL)
		test_data = "data";
	if ((test_data = realpath(test_data, NULL)) == NULL) {
		perror("TESTDATA");
		return 2;
	}
	snprintf(test_dir, sizeof(test_dir), "/tmp/test_config.XXXXXX");
	if (mkdtemp(test_dir) == NULL) {
		perror("mkdtemp");
		return 2;
	}

	test_parsers();
	test_minimal();
	test_relative();
	test_full();
	test_flow();
	test_good_inline();
	test_many();
	test_bad_inputs();
	test_ops();
	test_ops_inline();
	test_ops_bad();
	test_health_login();
	test_route();
	test_several();
	test_limits();
	test_regex_bounds();
	test_yaml_depth();
	test_bounded_work();
	test_nofile();
	test_shipped();

	snprintf(test_dir + strlen(test_dir), sizeof(test_dir) - strlen(test_dir), "/case.yaml");
	unlink(test_dir);
	*strrchr(test_dir, '/') = '\0';
	rmdir(test_dir);
	free((char *)test_data);

	printf("%d checks, %d failed\n", test_checks, test_failures);
	return test_failures == 0 ? 0 : 1;
}
