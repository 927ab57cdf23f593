/*
 * test_usermap: unit tests for the static route's map file (proxy/usermap.c).
 *
 * Errors are compared as "LINE:COL message" prefixes, in file order, so a
 * moved column or a lost error fails.  Targets are IPv4 literals: they
 * resolve without DNS wherever the tests run.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "usermap.h"
#include "check.h"

#define BIG_ENTRIES	200000	/* entries of the generated map */
#define BIG_TARGETS	16	/* distinct targets they share */
#define ERRTEXT		(USERMAP_MSGLEN + 32)

/* Error i of errs as "LINE:COL message". */
static const char *
err_text(const struct usermap_errors *errs, size_t i, char *buf, size_t len)
{
	snprintf(buf, len, "%d:%d %s", errs->v[i].line, errs->v[i].col, errs->v[i].msg);
	return buf;
}

/*
 * Parse text[0..len) (syntax only) and check it fails with exactly the
 * errors want[0..nwant), each a prefix of "LINE:COL message".
 */
static void
check_errors(const char *name, const char *text, size_t len, const char *const *want,
    size_t nwant)
{
	struct usermap_errors errs;
	struct usermap *m;
	char got[ERRTEXT];

	m = usermap_parse(text, len, 0, &errs);
	CHECK(m == NULL, "%s: parsed despite errors", name);
	usermap_free(m);
	CHECK(errs.n == nwant, "%s: %zu errors, want %zu", name, errs.n, nwant);
	for (size_t i = 0; i < errs.n; i++) {
		err_text(&errs, i, got, sizeof(got));
		CHECK(i < nwant && strncmp(got, want[i], strlen(want[i])) == 0,
		    "%s: error %zu is \"%s\", want \"%s\"", name, i, got, i < nwant ? want[i] : "-");
	}
}

/* check_errors for a NUL-terminated text and one expected error. */
static void
check_error1(const char *text, const char *want)
{
	check_errors(text, text, strlen(text), &want, 1);
}

/* Parse text (NUL-terminated) that must be valid; NULL (and a failure) if not. */
static struct usermap *
parse_ok(const char *name, const char *text, int resolve)
{
	struct usermap_errors errs;
	struct usermap *m;
	char got[ERRTEXT];

	m = usermap_parse(text, strlen(text), resolve, &errs);
	CHECK(m != NULL && errs.n == 0, "%s: did not parse (%s)", name,
	    errs.n > 0 ? err_text(&errs, 0, got, sizeof(got)) : "no error");
	return m;
}

/* The target user finds in m, or "-" for none. */
static const char *
target_of(const struct usermap *m, const char *user)
{
	const struct usermap_entry *e = usermap_find(m, user);

	return e != NULL ? e->target : "-";
}

/* Check the target user finds in m. */
static void
check_find(const struct usermap *m, const char *user, const char *want)
{
	const char *got = target_of(m, user);

	CHECK(strcmp(got, want) == 0, "find \"%s\" gave %s, want %s", user, got, want);
}

/* Entries, comments, blank lines, separators and the fields as written. */
static void
test_valid(void)
{
	const char *text =
	    "# the static route\n"
	    "\n"
	    "   \t \n"
	    "alice@example.org 10.0.0.1:143\n"
	    "  bob\t\t10.0.0.2:00143   # a comment after the target\n"
	    "@example.org\t10.0.0.3:993\t\n"
	    "  # an indented comment\n"
	    "al#ice 10.0.0.1:143\n"
	    "carol 10.0.0.4:143 #\n"
	    "dave 10.0.0.5:143";	/* no newline at the end */
	const struct usermap_entry *e, *e2;
	struct usermap *m = parse_ok("valid", text, 0);

	if (m == NULL)
		return;
	CHECK(usermap_count(m) == 6, "count %zu", usermap_count(m));
	check_find(m, "alice@example.org", "10.0.0.1:143");
	check_find(m, "bob", "10.0.0.2:00143");
	check_find(m, "al#ice", "10.0.0.1:143");
	check_find(m, "carol", "10.0.0.4:143");
	check_find(m, "dave", "10.0.0.5:143");
	e = usermap_at(m, 1);
	CHECK(e != NULL && strcmp(e->key, "bob") == 0 && e->line == 5, "entry 1 is bob on line 5");
	e = usermap_at(m, 5);
	CHECK(e != NULL && strcmp(e->key, "dave") == 0 && e->line == 10, "entry 5 is dave");
	CHECK(usermap_at(m, 6) == NULL, "no entry 6");
	/* Not resolving: no address; one target text, one shared record. */
	e = usermap_find(m, "alice@example.org");
	e2 = usermap_find(m, "al#ice");
	CHECK(e != NULL && e2 != NULL && e->addr == e2->addr && e->addr->len == 0,
	    "a target text is one record, unresolved");
	usermap_free(m);

	m = parse_ok("empty", "", 0);
	CHECK(m != NULL && usermap_count(m) == 0, "an empty map is valid");
	if (m != NULL)
		CHECK(usermap_find(m, "alice") == NULL, "an empty map finds nothing");
	usermap_free(m);
	m = parse_ok("comments only", "# nothing yet\n\n#\n", 0);
	CHECK(m != NULL && usermap_count(m) == 0, "comments only");
	usermap_free(m);
	usermap_free(NULL);
}

/* Resolving fills the address; the text stays as written. */
static void
test_resolve(void)
{
	struct usermap *m = parse_ok("resolve", "alice 127.0.0.1:00143\nbob 127.0.0.1:00143\n", 1);
	const struct usermap_entry *e;
	const struct sockaddr_in *sin;

	if (m == NULL)
		return;
	e = usermap_find(m, "alice");
	CHECK(e != NULL && strcmp(e->target, "127.0.0.1:00143") == 0, "target as written");
	if (e != NULL) {
		sin = (const struct sockaddr_in *)&e->addr->ss;
		CHECK(e->addr->len == sizeof(*sin) && sin->sin_family == AF_INET &&
		    ntohs(sin->sin_port) == 143 && ntohl(sin->sin_addr.s_addr) == 0x7f000001,
		    "alice resolved to 127.0.0.1 port 143");
		CHECK(usermap_find(m, "bob")->addr == e->addr, "the same target resolved once");
	}
	usermap_free(m);
}

/* CRLF line ends, a byte order mark, and a CR that is not a line end. */
static void
test_crlf(void)
{
	struct usermap *m;

	m = parse_ok("crlf", "# c\r\nalice 10.0.0.1:143\r\n\r\nbob 10.0.0.2:143 # x\r\n"
	    "carol 10.0.0.3:143", 0);
	if (m != NULL) {
		CHECK(usermap_count(m) == 3, "crlf count %zu", usermap_count(m));
		check_find(m, "alice", "10.0.0.1:143");
		check_find(m, "bob", "10.0.0.2:143");
		check_find(m, "carol", "10.0.0.3:143");
	}
	usermap_free(m);
	m = parse_ok("bom", "\xef\xbb\xbf" "alice 10.0.0.1:143\n", 0);
	if (m != NULL)
		check_find(m, "alice", "10.0.0.1:143");
	usermap_free(m);
	/* Columns count from after the mark. */
	check_error1("\xef\xbb\xbf" "alice\n", "1:6 key \"alice\" has no target");
	check_error1("alice 10.0.0.1:143\r\r\n", "1:19 control character 0x0d in target");
	check_error1("alice\r 10.0.0.1:143\n", "1:6 control character 0x0d in key");
	check_errors("lone CR", "alice 10.0.0.1:143\rbob 10.0.0.2:143\n", 36,
	    (const char *const[]){ "1:19 control character 0x0d in target",
	    "1:24 unexpected field after the target" }, 2);
}

/* Each kind of error, with its line and column. */
static void
test_error_kinds(void)
{
	char line[USERMAP_MAX_LINE + 64], want[96];
	size_t n;

	check_error1("bob\n", "1:4 key \"bob\" has no target (expected KEY host:port)");
	check_error1("\n  bob   # no target\n", "2:6 key \"bob\" has no target");
	check_error1("bob 10.0.0.1:143 extra\n", "1:18 unexpected field after the target");
	check_error1("bob 10.0.0.1:143\t\textra # c\n", "1:19 unexpected field after the target");
	check_error1("bob 10.0.0.1\n", "1:5 address \"10.0.0.1\": expected host:port");
	check_error1("bob 10.0.0.1:0\n", "1:5 address \"10.0.0.1:0\": port must be 1-65535");
	check_error1("bob 10.0.0.1:65536\n", "1:5 address \"10.0.0.1:65536\": port must be 1-65535");
	check_error1("bob 10.0.0.1:+143\n", "1:5 address \"10.0.0.1:+143\": port must be 1-65535");
	check_error1("bob 10.0.0.1:\n", "1:5 address \"10.0.0.1:\": port must be 1-65535");
	check_error1("bob 10.0.0.1:1430000\n", "1:5 address \"10.0.0.1:1430000\": port must be");
	check_error1("bob 10.0.0.1:143#x\n", "1:5 address \"10.0.0.1:143#x\": port must be");
	check_error1("bob ::1:143\n", "1:5 address \"::1:143\": an IPv6 address must be written");
	check_error1("bob [::1]143\n", "1:5 address \"[::1]143\": expected [v6]:port");
	check_error1("bob [::1\n", "1:5 address \"[::1\": expected [v6]:port");
	check_error1("bob []:143\n", "1:5 address \"[]:143\": bad host");
	check_error1("bob :143\n", "1:5 address \":143\": bad host");
	check_error1("bob *:143\n", "1:5 address \"*:143\": bad host");
	check_error1("@ 10.0.0.1:143\n", "1:1 \"@\" without a domain");
	check_error1("  @a@b 10.0.0.1:143\n", "1:5 a domain key has one '@', at its start");
	check_error1("ali\x01" "ce 10.0.0.1:143\n", "1:4 control character 0x01 in key");
	check_error1("\x7f" "bob 10.0.0.1:143\n", "1:1 control character 0x7f in key");
	check_error1("bob\v 10.0.0.1:143\n", "1:4 control character 0x0b in key");
	check_error1("bob 10.0.0.1:1\x1b" "43\n", "1:15 control character 0x1b in target");
	check_errors("NUL in key", "ali\0ce 10.0.0.1:143\n", 20,
	    (const char *const[]){ "1:4 NUL byte" }, 1);
	check_errors("NUL in comment", "ok 10.0.0.1:143\n# a\0b\n", 22,
	    (const char *const[]){ "2:4 NUL byte" }, 1);

	/* A 4096-byte line is fine, CRLF or not; 4097 bytes are not. */
	n = USERMAP_MAX_LINE - strlen("k 10.0.0.1:143");
	memcpy(line, "k", 1);
	memset(line + 1, ' ', n);
	strcpy(line + 1 + n, " 10.0.0.1:143\r\n");
	usermap_free(parse_ok("4096-byte line", line, 0));
	memset(line, 'k', 1);
	memset(line + 1, ' ', n + 1);
	strcpy(line + 2 + n, " 10.0.0.1:143\r\n");
	snprintf(want, sizeof(want), "1:%d line is longer than %d bytes", USERMAP_MAX_LINE + 1,
	    USERMAP_MAX_LINE);
	check_error1(line, want);

	/* A 512-byte key is fine; 513 bytes are not. */
	memset(line, 'k', USERMAP_MAX_KEY);
	strcpy(line + USERMAP_MAX_KEY, " 10.0.0.1:143\n");
	usermap_free(parse_ok("512-byte key", line, 0));
	memset(line, 'k', USERMAP_MAX_KEY + 1);
	strcpy(line + USERMAP_MAX_KEY + 1, " 10.0.0.1:143\n");
	snprintf(want, sizeof(want), "1:1 key is longer than %d bytes", USERMAP_MAX_KEY);
	check_error1(line, want);
}

/* Every error of a file is reported, several on one line, in order. */
static void
test_all_errors(void)
{
	const char *text =
	    "alice 10.0.0.1:143\n"
	    "@ 10.0.0.1 extra\n"		/* three errors on one line */
	    "bob\n"
	    "ok 10.0.0.2:143\n"
	    "carol 10.0.0.1\n"			/* the same bad target again */
	    "ALICE 10.0.0.3:143\n"
	    "alice 10.0.0.3:143\n"
	    "dave 10.0.0.1:143 # fine\n";
	const char *want[] = {
		"2:1 \"@\" without a domain",
		"2:3 address \"10.0.0.1\": expected host:port",
		"2:12 unexpected field after the target",
		"3:4 key \"bob\" has no target",
		"5:7 address \"10.0.0.1\": not usable (see line 2)",
		"6:1 duplicate key \"ALICE\" (first on line 1 as \"alice\"; case is ignored)",
		"7:1 duplicate key \"alice\" (first on line 1)",
	};

	check_errors("all errors", text, strlen(text), want, sizeof(want) / sizeof(want[0]));
	/* A key whose target is bad still counts for duplicates. */
	check_errors("duplicate of a bad line", "eve 1\neve 10.0.0.1:143\n", 22,
	    (const char *const[]){ "1:5 address \"1\": expected host:port",
	    "2:1 duplicate key \"eve\" (first on line 1)" }, 2);
}

/* Past USERMAP_MAX_ERRORS errors one more says so and the parse stops. */
static void
test_error_bound(void)
{
	struct usermap_errors errs;
	struct usermap *m;
	char *text, want[64], got[ERRTEXT];
	size_t len = 0, lines = USERMAP_MAX_ERRORS + 50;

	text = malloc(lines * 16);
	if (text == NULL)
		return;
	for (size_t i = 0; i < lines; i++)
		len += (size_t)sprintf(text + len, "u%05zu\n", i);
	m = usermap_parse(text, len, 0, &errs);
	CHECK(m == NULL && errs.n == USERMAP_MAX_ERRORS + 1, "%zu errors for %zu bad lines",
	    errs.n, lines);
	snprintf(want, sizeof(want), "%d:7 more than %d errors", USERMAP_MAX_ERRORS + 1,
	    USERMAP_MAX_ERRORS);
	if (errs.n == USERMAP_MAX_ERRORS + 1)
		CHECK(strncmp(err_text(&errs, USERMAP_MAX_ERRORS, got, sizeof(got)), want,
		    strlen(want)) == 0, "last error \"%s\"", got);
	usermap_free(m);
	free(text);
}

/* Case is ignored for ASCII only; domains are the fallback; the last '@' decides. */
static void
test_matching(void)
{
	const char *text =
	    "Alice@Example.ORG 10.0.0.1:143\n"
	    "@example.org 10.0.0.2:143\n"
	    "x@y@example.net 10.0.0.3:143\n"
	    "@example.net 10.0.0.4:143\n"
	    "@bob 10.0.0.5:143\n"
	    "\xc3\x84lice 10.0.0.6:143\n"
	    "@EXAMPLE.com 10.0.0.7:143\n";
	struct usermap *m = parse_ok("matching", text, 0);

	if (m == NULL)
		return;
	check_find(m, "alice@example.org", "10.0.0.1:143");
	check_find(m, "ALICE@EXAMPLE.ORG", "10.0.0.1:143");
	check_find(m, "bob@example.org", "10.0.0.2:143");
	check_find(m, "Bob@Example.Org", "10.0.0.2:143");
	check_find(m, "@example.org", "10.0.0.2:143");
	check_find(m, "alice@sub.example.org", "-");	/* no subdomain matching */
	check_find(m, "alice@example.org.", "-");
	check_find(m, "alice@", "-");
	check_find(m, "", "-");
	check_find(m, "@", "-");
	/* The domain is what follows the last '@'; an exact entry still wins. */
	check_find(m, "x@y@example.net", "10.0.0.3:143");
	check_find(m, "z@y@example.net", "10.0.0.4:143");
	check_find(m, "a@example.org@example.net", "10.0.0.4:143");
	check_find(m, "a@example.net@example.org", "10.0.0.2:143");
	/* "@bob" is the domain bob: never the user bob, who has no '@'. */
	check_find(m, "bob", "-");
	check_find(m, "carol@bob", "10.0.0.5:143");
	/* Bytes outside ASCII match exactly. */
	check_find(m, "\xc3\x84LICE", "10.0.0.6:143");
	check_find(m, "\xc3\xa4lice", "-");
	check_find(m, "dave@example.COM", "10.0.0.7:143");
	usermap_free(m);
}

/* Keys and users longer than a key can be: no exact match, the domain still counts. */
static void
test_long_user(void)
{
	char user[USERMAP_MAX_KEY * 3];
	struct usermap *m = parse_ok("long", "@example.org 10.0.0.2:143\n", 0);

	if (m == NULL)
		return;
	memset(user, 'u', sizeof(user));
	strcpy(user + sizeof(user) - 20, "@example.org");
	check_find(m, user, "10.0.0.2:143");
	memset(user, 'u', sizeof(user) - 1);
	user[sizeof(user) - 1] = '\0';
	user[10] = '@';
	check_find(m, user, "-");
	usermap_free(m);
}

/* A generated map of BIG_ENTRIES users and domains: all load and are found. */
static void
test_big(void)
{
	struct usermap_errors errs;
	struct usermap *m;
	size_t cap = (size_t)BIG_ENTRIES * 48, len = 0, found = 0, upper = 0;
	char *text = malloc(cap), key[64], want[32];
	clock_t t0, t1, t2;

	if (text == NULL)
		return;
	for (int i = 0; i < BIG_ENTRIES; i++) {
		if (i % 10 == 9)
			len += (size_t)snprintf(text + len, cap - len, "@dom%d.example 10.1.%d.1:143\n",
			    i, i % BIG_TARGETS);
		else
			len += (size_t)snprintf(text + len, cap - len,
			    "user%d@dom%d.example\t10.1.%d.1:143\n", i, i % 1000, i % BIG_TARGETS);
	}
	t0 = clock();
	m = usermap_parse(text, len, 1, &errs);
	t1 = clock();
	CHECK(m != NULL && usermap_count(m) == BIG_ENTRIES, "big map: %zu errors",
	    errs.n);
	if (m == NULL) {
		free(text);
		return;
	}
	for (int i = 0; i < BIG_ENTRIES; i++) {
		const struct usermap_entry *e;
		if (i % 10 == 9)
			snprintf(key, sizeof(key), "someone@DOM%d.example", i);
		else
			snprintf(key, sizeof(key), "user%d@dom%d.example", i, i % 1000);
		snprintf(want, sizeof(want), "10.1.%d.1:143", i % BIG_TARGETS);
		e = usermap_find(m, key);
		found += e != NULL && strcmp(e->target, want) == 0 && e->line == i + 1;
		key[0] = 'U';
		upper += usermap_find(m, key) == e;
	}
	t2 = clock();
	CHECK(found == BIG_ENTRIES && upper == BIG_ENTRIES, "found %zu, upper case %zu of %d",
	    found, upper, BIG_ENTRIES);
	printf("big map: %d entries parsed and resolved in %.2f s, %d x 2 lookups in %.2f s\n",
	    BIG_ENTRIES, (double)(t1 - t0) / CLOCKS_PER_SEC, BIG_ENTRIES,
	    (double)(t2 - t1) / CLOCKS_PER_SEC);
	usermap_free(m);
	free(text);
}

/* Write text to a new file in dir; its path goes to path. */
static int
write_file(const char *dir, char *path, size_t len, const char *text)
{
	int fd;

	snprintf(path, len, "%s/usermapXXXXXX", dir);
	if ((fd = mkstemp(path)) < 0)
		return -1;
	if (write(fd, text, strlen(text)) != (ssize_t)strlen(text)) {
		close(fd);
		return -1;
	}
	return close(fd);
}

/* Check that loading path fails with one error of line 0 starting with want. */
static void
check_load_error(const char *path, const char *want)
{
	struct usermap_errors errs;
	struct usermap *m = usermap_load(path, &errs);
	char got[ERRTEXT];

	CHECK(m == NULL && errs.n == 1, "load %s: %zu errors", path, errs.n);
	usermap_free(m);
	if (errs.n == 1)
		CHECK(strncmp(err_text(&errs, 0, got, sizeof(got)), want, strlen(want)) == 0,
		    "load %s: \"%s\", want \"%s\"", path, got, want);
}

/* Loading files: a valid one, missing ones, non-files and files over the bound. */
static void
test_load(void)
{
	const char *tmp = getenv("TMPDIR") != NULL ? getenv("TMPDIR") : "/tmp";
	struct usermap_errors errs;
	struct usermap *m;
	char path[512], want[96];
	clock_t t0;
	int fd;

	if (write_file(tmp, path, sizeof(path), "alice 127.0.0.1:143\nbob 127.0.0.1:993\n") != 0) {
		CHECK(0, "cannot write a file in %s: %s", tmp, strerror(errno));
		return;
	}
	m = usermap_load(path, &errs);
	CHECK(m != NULL && usermap_count(m) == 2, "load a file: %zu errors", errs.n);
	if (m != NULL)
		check_find(m, "BOB", "127.0.0.1:993");
	usermap_free(m);
	unlink(path);

	check_load_error(path, "0:0 cannot open: No such file or directory");
	check_load_error(tmp, "0:0 not a regular file");
	check_load_error("/dev/zero", "0:0 not a regular file");
	/* A FIFO is refused at once, without waiting for a writer. */
	snprintf(path, sizeof(path), "%s/usermap-fifo-%ld", tmp, (long)getpid());
	if (mkfifo(path, 0600) == 0) {
		check_load_error(path, "0:0 not a regular file");
		unlink(path);
	}

	/* Errors in a loaded file keep their lines. */
	if (write_file(tmp, path, sizeof(path), "alice 127.0.0.1:143\nbob\n") == 0) {
		m = usermap_load(path, &errs);
		CHECK(m == NULL && errs.n == 1 && errs.v[0].line == 2 && errs.v[0].col == 4,
		    "load a bad file");
		usermap_free(m);
		unlink(path);
	}

	/*
	 * One byte over the bound, and a terabyte: both sparse, refused from
	 * their size alone (reading the second whole would take hours).
	 */
	if (write_file(tmp, path, sizeof(path), "") != 0)
		return;
	if ((fd = open(path, O_WRONLY)) >= 0) {
		CHECK(ftruncate(fd, (off_t)USERMAP_MAX_FILE + 1) == 0, "ftruncate");
		snprintf(want, sizeof(want), "0:0 the file is %u bytes, more than %u",
		    USERMAP_MAX_FILE + 1, USERMAP_MAX_FILE);
		check_load_error(path, want);
		if (ftruncate(fd, (off_t)1 << 40) == 0) {
			t0 = clock();
			check_load_error(path, "0:0 the file is 1099511627776 bytes, more than");
			CHECK(clock() - t0 < CLOCKS_PER_SEC, "the terabyte took %ld clocks",
			    (long)(clock() - t0));
		}
		close(fd);
	}
	unlink(path);
}

int
main(void)
{
	test_valid();
	test_resolve();
	test_crlf();
	test_error_kinds();
	test_all_errors();
	test_error_bound();
	test_matching();
	test_long_user();
	test_big();
	test_load();
	printf("%d checks, %d failures\n", checks, failures);
	return failures ? 1 : 0;
}
