/* Unit tests for the configuration loader: good files, each kind of bad input, parsers. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"

#define TEST_PATHLEN	4096
#define TEST_YAMLLEN	16384

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
		{ 5, 10, "listen[0].tls: \"starttls\" is not supported yet (use implicit or none)" },
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
	BAD("listen:\n  - address: 127.0.0.1:993\n    tls: starttls\n" CERTS BACKEND, 1, 3, 10,
	    "listen[0].tls: \"starttls\" is not supported yet (use implicit or none)");
	BAD("listen:\n  - address: 127.0.0.1:993\n    tls: TLS\n" CERTS BACKEND, 1, 3, 10,
	    "listen[0].tls: \"TLS\" is not one of implicit, none");

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
	test_several();
	test_limits();
	test_nofile();

	snprintf(test_dir + strlen(test_dir), sizeof(test_dir) - strlen(test_dir), "/case.yaml");
	unlink(test_dir);
	*strrchr(test_dir, '/') = '\0';
	rmdir(test_dir);
	free((char *)test_data);

	printf("%d checks, %d failed\n", test_checks, test_failures);
	return test_failures == 0 ? 0 : 1;
}
