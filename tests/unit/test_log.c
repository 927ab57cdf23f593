/* Unit tests for log lines: peer values escaped, JSON lines valid whatever they hold or however cut. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "logesc.h"

#define TEST_LINE_MAX	16384	/* longest line read back */
#define TEST_FIELD_MAX	4096	/* longest decoded key or value */
#define TEST_MAX_FIELDS	400	/* fields kept per parsed line */

static int test_checks, test_failures;
static FILE *test_out;		/* where stderr goes: the lines read back */

#define CHECK(cond, ...) do {						\
	test_checks++;							\
	if (!(cond)) {							\
		test_failures++;					\
		printf("FAIL %s:%d: ", __FILE__, __LINE__);		\
		printf(__VA_ARGS__);					\
		printf("\n");						\
	}								\
} while (0)

/* One JSON member read back: key and value as bytes (one code point per byte). */
struct test_field {
	char		key[TEST_FIELD_MAX];
	unsigned char	val[TEST_FIELD_MAX];
	size_t		vlen;
};

/* The last line written to stderr (the scratch file), without its newline. */
static const char *
test_last_line(void)
{
	static char line[TEST_LINE_MAX];
	char *p;

	fflush(stderr);
	rewind(test_out);
	line[0] = '\0';
	while (fgets(line, sizeof(line), test_out) != NULL)
		;
	if ((p = strchr(line, '\n')) != NULL)
		*p = '\0';
	/* Start the next line on an empty file. */
	if (ftruncate(fileno(test_out), 0) != 0)
		perror("ftruncate");
	rewind(test_out);
	return line;
}

/* Read a JSON string at *p into out (bytes: code points up to U+00FF); 0 or -1. */
static int
test_json_string(const char **p, unsigned char *out, size_t *len)
{
	const char *s = *p;
	size_t n = 0;

	if (*s++ != '"')
		return -1;
	while (*s != '"') {
		unsigned c = (unsigned char)*s;
		if (c == '\0' || c < 0x20 || c >= 0x7f || n + 1 >= TEST_FIELD_MAX)
			return -1;	/* raw controls are invalid JSON; we write ASCII only */
		if (c != '\\') {
			out[n++] = (unsigned char)c;
			s++;
			continue;
		}
		s++;
		if (*s == '"' || *s == '\\' || *s == '/') {
			out[n++] = (unsigned char)*s++;
		} else if (*s == 'u') {
			unsigned v;
			if (sscanf(s + 1, "%4x", &v) != 1 || strspn(s + 1, "0123456789abcdefABCDEF") < 4 ||
			    v > 0xff)
				return -1;
			out[n++] = (unsigned char)v;
			s += 5;
		} else
			return -1;	/* \x, \n and the rest are not what log.c writes */
	}
	*p = s + 1;
	*len = n;
	out[n] = '\0';
	return 0;
}

/* Parse a JSON object of string members; the number of fields, or -1 if invalid. */
static int
test_json_parse(const char *line, struct test_field *f, int maxf)
{
	const char *p = line;
	int n = 0;

	if (*p++ != '{')
		return -1;
	if (*p == '}')
		return p[1] == '\0' ? 0 : -1;
	for (;;) {
		size_t klen;
		if (n >= maxf)
			return -1;
		if (test_json_string(&p, (unsigned char *)f[n].key, &klen) != 0 || *p++ != ':' ||
		    test_json_string(&p, f[n].val, &f[n].vlen) != 0)
			return -1;
		for (int i = 0; i < n; i++)
			if (strcmp(f[i].key, f[n].key) == 0)
				return -1;	/* a key twice */
		n++;
		if (*p == '}')
			return p[1] == '\0' ? n : -1;
		if (*p++ != ',')
			return -1;
	}
}

/* The field called key among n, or NULL. */
static const struct test_field *
test_get(const struct test_field *f, int n, const char *key)
{
	for (int i = 0; i < n; i++)
		if (strcmp(f[i].key, key) == 0)
			return &f[i];
	return NULL;
}

/* Every byte 1..255 as a quoted value: escaped in text, back byte for byte in JSON. */
static void
test_every_byte(void)
{
	static struct test_field f[TEST_MAX_FIELDS];
	char raw[256], esc[LOGESC_SIZE(256)];
	const struct test_field *u;
	const char *line;
	int n;

	for (int i = 1; i < 256; i++)
		raw[i - 1] = (char)i;
	raw[255] = '\0';
	logesc_quote(raw, esc, sizeof(esc));
	for (const char *c = esc; *c != '\0'; c++)
		CHECK(*c >= 0x20 && *c < 0x7f, "escaped byte 0x%02x", (unsigned char)*c);

	log_configure(CONFIG_LOG_INFO, CONFIG_LOG_TEXT, CONFIG_LOG_STDERR);
	log_info("msg=t user=\"%s\" state=x", esc);
	line = test_last_line();
	CHECK(strstr(line, " state=x") != NULL && strstr(line, esc) != NULL, "text line %s", line);

	log_configure(CONFIG_LOG_INFO, CONFIG_LOG_JSON, CONFIG_LOG_STDERR);
	log_info("msg=t user=\"%s\" state=x", esc);
	line = test_last_line();
	n = test_json_parse(line, f, TEST_MAX_FIELDS);
	CHECK(n == 5, "JSON line with %d fields: %s", n, line);
	u = test_get(f, n, "user");
	CHECK(u != NULL && u->vlen == 255 && memcmp(u->val, raw, 255) == 0,
	    "user does not come back byte for byte: %s", line);
	CHECK(test_get(f, n, "state") != NULL, "state lost: %s", line);
}

/* Values written to forge fields stay one field in both formats. */
static void
test_forgery(void)
{
	static const char *const forged[] = {
		"x\" user=\"admin\" state=Selected",
		"x\",\"user\":\"admin",
		"\"", "\\", "\\\"", "a\\x41b", "\\u0000", "\r\nlevel=error msg=forged",
	};
	static struct test_field f[TEST_MAX_FIELDS];
	char esc[LOGESC_SIZE(64)];

	for (size_t i = 0; i < sizeof(forged) / sizeof(forged[0]); i++) {
		const struct test_field *s;
		const char *line;
		int n;

		logesc_quote(forged[i], esc, sizeof(esc));
		log_configure(CONFIG_LOG_INFO, CONFIG_LOG_JSON, CONFIG_LOG_STDERR);
		log_info("msg=session-end sni=\"%s\" user=\"\" state=NotAuthenticated", esc);
		line = test_last_line();
		n = test_json_parse(line, f, TEST_MAX_FIELDS);
		s = test_get(f, n, "sni");
		CHECK(n == 6 && s != NULL && s->vlen == strlen(forged[i]) &&
		    memcmp(s->val, forged[i], s->vlen) == 0 &&
		    test_get(f, n, "user")->vlen == 0, "forged SNI %zu: %s", i, line);
	}
}

/*
 * Lines cut at the line limit, unquoted values with quotes and bytes past
 * ASCII, raw control bytes: still one valid JSON object each.
 */
static void
test_cut_lines(void)
{
	static struct test_field f[TEST_MAX_FIELDS];
	static char big[8192], esc[LOGESC_SIZE(8192)];
	const char *line;
	int n;

	log_configure(CONFIG_LOG_INFO, CONFIG_LOG_JSON, CONFIG_LOG_STDERR);
	/* Raw bytes past ASCII expand six times in JSON: cut, but closed. */
	memset(big, 0xff, 3000);
	big[3000] = '\0';
	log_info("msg=t raw=%s", big);
	line = test_last_line();
	CHECK(test_json_parse(line, f, TEST_MAX_FIELDS) > 0, "cut raw value: %.80s...", line);
	/* A quoted value cut open by the line limit. */
	for (int i = 0; i < 3000; i++)
		big[i] = (char)(1 + i % 255);
	big[3000] = '\0';
	logesc_quote(big, esc, sizeof(esc));
	log_info("msg=t user=\"%s\" state=x", esc);
	line = test_last_line();
	n = test_json_parse(line, f, TEST_MAX_FIELDS);
	CHECK(n == 4 && test_get(f, n, "user") != NULL, "cut quoted value (%d): %.80s...", n, line);
	/* Every cut position of a line of many short fields. */
	for (int len = 1900; len < 2100; len++) {
		size_t o = 0;
		while (o + 8 < (size_t)len)
			o += (size_t)snprintf(big + o, sizeof(big) - o, "k%zu=\"\\\\\" ", o);
		big[len] = '\0';
		log_info("%s", big);
		line = test_last_line();
		CHECK(test_json_parse(line, f, TEST_MAX_FIELDS) > 0, "line cut at %d: ...%s", len,
		    line + (strlen(line) > 100 ? strlen(line) - 100 : 0));
	}
	/* Unquoted values holding quotes, backslashes, controls and bytes past ASCII. */
	log_info("msg=t a=x\"y b=\\ c=\x01\x1f\x7f d=\xc3\xa9 \"loose");
	line = test_last_line();
	n = test_json_parse(line, f, TEST_MAX_FIELDS);
	CHECK(n == 8, "unquoted odd values (%d): %s", n, line);
	CHECK(n == 8 && test_get(f, n, "a")->vlen == 3 && test_get(f, n, "d")->vlen == 2 &&
	    test_get(f, n, "d")->val[0] == 0xc3, "unquoted values: %s", line);

	/* Text: control bytes never appear raw. */
	log_configure(CONFIG_LOG_INFO, CONFIG_LOG_TEXT, CONFIG_LOG_STDERR);
	log_info("msg=t a=\x01\x1b[31m\r\nb");
	line = test_last_line();
	for (const char *c = line; *c != '\0'; c++)
		CHECK((unsigned char)*c >= 0x20 && *c != 0x7f, "raw control in %s", line);
}

int
main(void)
{
	/* Lines go to a scratch file instead of the terminal. */
	if ((test_out = tmpfile()) == NULL || dup2(fileno(test_out), STDERR_FILENO) < 0) {
		perror("tmpfile");
		return 2;
	}
	setvbuf(stderr, NULL, _IONBF, 0);
	test_every_byte();
	test_forgery();
	test_cut_lines();
	printf("%d checks, %d failed\n", test_checks, test_failures);
	return test_failures == 0 ? 0 : 1;
}
