/*
 * test_guard: unit tests for response normalization and desync recognition
 * (proxy/guard.c).
 *
 * Each response is real bytes fed through the server-side tokenizer
 * (proxy/imap.c) after a greeting, so guard_rewrite() sees the same
 * imap_line the session gives it.  The configuration is built by hand
 * (regexes compiled the way the loader does) so these tests do not depend
 * on the YAML loader.
 */
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "guard.h"
#include "imap.h"
#include "check.h"

/* Bound on one test response (several literals and lines at most). */
#define RESP_MAX	4096


/* Compile a regex the way the config loader does; abort on a bad pattern. */
static void
re_compile(regex_t *re, const char *pattern)
{
	if (regcomp(re, pattern, REG_EXTENDED | REG_ICASE | REG_NOSUB) != 0) {
		printf("FAIL: cannot compile /%s/\n", pattern);
		exit(1);
	}
}

/* A configuration with defaults: strip unknown codes, no rules. */
static void
cf_init(struct config *cf)
{
	memset(cf, 0, sizeof(*cf));
	cf->max_line = IMAP_DEFAULT_MAX_LINE;
}

/* Free what the tests put in cf (strings are literals, not owned). */
static void
cf_free(struct config *cf)
{
	for (size_t i = 0; i < cf->nrules; i++)
		if (cf->rules[i].has_re)
			regfree(&cf->rules[i].match_re);
	for (size_t i = 0; i < cf->ndesync_patterns; i++)
		regfree(&cf->desync_re[i]);
	for (size_t i = 0; i < cf->ngreeting_patterns; i++)
		regfree(&cf->greeting_re[i]);
	free(cf->rules);
	free(cf->desync_re);
	free(cf->greeting_re);
	memset(cf, 0, sizeof(*cf));
}

/* Append a rewrite rule; text may be NULL (any), code NULL (any). */
static void
cf_rule(struct config *cf, enum config_status mstatus, const char *mcode,
    const char *mtext, enum config_status sstatus, const char *scode)
{
	struct config_rule *r;

	cf->rules = realloc(cf->rules, (cf->nrules + 1) * sizeof(*cf->rules));
	if (cf->rules == NULL)
		abort();
	r = &cf->rules[cf->nrules++];
	memset(r, 0, sizeof(*r));
	r->match_status = mstatus;
	r->match_code = (char *)mcode;
	r->match_text = (char *)mtext;
	if (mtext != NULL) {
		re_compile(&r->match_re, mtext);
		r->has_re = 1;
	}
	r->set_status = sstatus;
	r->set_code = (char *)scode;
}

/* Compile a list of patterns into a malloc'd regex array. */
static regex_t *
cf_patterns(const char *const *pat, size_t n)
{
	regex_t *v = calloc(n, sizeof(*v));

	if (v == NULL)
		abort();
	for (size_t i = 0; i < n; i++)
		re_compile(&v[i], pat[i]);
	return v;
}

/* A parsed server response and its bytes. */
struct resp {
	struct imap_line	 l;
	char			 buf[RESP_MAX];
	size_t			 len;
	int			 ok;	/* exactly one complete response was parsed */
};

/*
 * Parse resp (one response, literals included) with a server parser that
 * has already seen a greeting, unless greeting is set.
 */
static void
parse(struct resp *r, const char *bytes, size_t len, int greeting, size_t max_line)
{
	struct imap_parser p;
	struct imap_event ev;
	const char *hello = "* OK hello\r\n";
	size_t off = 0, n;
	int lines = 0, guard = 0;

	memset(r, 0, sizeof(*r));
	imap_parse_init(&p, IMAP_DIR_SERVER, max_line);
	if (!greeting) {
		n = imap_parse_feed(&p, hello, strlen(hello), &ev);
		if (n != strlen(hello) || ev.type != IMAP_EV_LINE)
			printf("FAIL: greeting not parsed\n");
	}
	while (off < len && guard++ < 10000) {
		n = imap_parse_feed(&p, bytes + off, len - off, &ev);
		off += n;
		if (ev.type == IMAP_EV_ERROR)
			break;
		if (ev.type == IMAP_EV_LINE) {
			lines++;
			r->l = *imap_parse_line(&p);
		}
	}
	if (len > sizeof(r->buf))
		len = sizeof(r->buf);
	memcpy(r->buf, bytes, len);
	r->len = len;
	r->ok = lines == 1 && off == len;
	imap_parse_free(&p);
}

/* Print bytes with CR, LF and non-printables escaped, for failure messages. */
static void
show(const char *s, size_t n)
{
	putchar('[');
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)s[i];

		if (ch == '\r')
			fputs("\\r", stdout);
		else if (ch == '\n')
			fputs("\\n", stdout);
		else if (ch < 0x20 || ch >= 0x7f)
			printf("\\x%02x", ch);
		else
			putchar(ch);
	}
	putchar(']');
}

/*
 * Rewrite in and compare with want (NULL: the line must stay as it is).
 * Returns the guard_out flags for further checks through *outp if given.
 */
static void
expect_full(const struct config *cf, const char *in, size_t inlen, int greeting,
    size_t max_line, const char *want, int line, struct guard_out *outp)
{
	struct resp r;
	struct guard_out out;
	int rc;

	parse(&r, in, inlen, greeting, max_line);
	if (!r.ok) {
		failures++;
		checks++;
		printf("FAIL line %d: %.*s did not parse as one response\n", line,
		    (int)inlen, in);
		return;
	}
	rc = guard_rewrite(cf, &r.l, r.buf, r.len, 0, &out);
	checks++;
	if ((want == NULL && rc != 0) || (want != NULL && (rc != 1 ||
	    out.len != strlen(want) || memcmp(out.buf, want, out.len) != 0))) {
		failures++;
		printf("FAIL line %d: ", line);
		show(in, inlen);
		printf(" -> rc %d ", rc);
		show(rc == 1 ? out.buf : "", rc == 1 ? out.len : 0);
		printf(", want ");
		if (want != NULL)
			show(want, strlen(want));
		else
			printf("unchanged");
		putchar('\n');
	}
	if (outp != NULL)
		*outp = out;
	if (rc == 1 && outp == NULL)
		free(out.buf);
}

#define EXPECT(cf, in, want)	\
	expect_full((cf), (in), strlen(in), 0, 0, (want), __LINE__, NULL)
#define EXPECT_GREETING(cf, in, want)	\
	expect_full((cf), (in), strlen(in), 1, 0, (want), __LINE__, NULL)

/* Non-standard tagged status and unknown response codes. */
static void
test_status_and_codes(void)
{
	struct config cf;
	struct guard_out out;

	cf_init(&cf);
	EXPECT(&cf, "a MAYBE [X-FOO] text\r\n", "a NO text\r\n");
	EXPECT(&cf, "a MAYBE text\r\n", "a NO text\r\n");
	EXPECT(&cf, "a NO [X-FOO] text\r\n", "a NO text\r\n");
	EXPECT(&cf, "a NO [X-FOO 1 (a b)] text\r\n", "a NO text\r\n");
	/* resp-text needs text: an empty one keeps the dropped code's name. */
	EXPECT(&cf, "a NO [X-FOO]\r\n", "a NO X-FOO\r\n");
	/* On OK and PREAUTH an unknown code passes (RFC 3501: clients ignore unknown codes). */
	EXPECT(&cf, "a OK [X-FOO]\r\n", NULL);
	EXPECT(&cf, "* OK [MYRIGHTS \"acdilrsw\"] ACL\r\n", NULL);
	EXPECT(&cf, "* PREAUTH [X-FOO] welcome\r\n", NULL);
	EXPECT(&cf, "* NO [X-FOO] text\r\n", "* NO text\r\n");
	EXPECT(&cf, "* BAD [X-FOO] text\r\n", "* BAD text\r\n");
	EXPECT(&cf, "* BYE [X-FOO] going\r\n", "* BYE going\r\n");
	EXPECT(&cf, "* OK [RateLimitedError] slow down\r\n", NULL);
	EXPECT_GREETING(&cf, "* OK [X-FOO] ready\r\n", NULL);

	/* Standard codes, with or without arguments, stay. */
	EXPECT(&cf, "a NO [TRYCREATE] x\r\n", NULL);
	EXPECT(&cf, "* OK [UIDNEXT 4] Predicted next UID\r\n", NULL);
	EXPECT(&cf, "* OK [PERMANENTFLAGS (\\Deleted \\Seen \\*)] Flags permitted.\r\n", NULL);
	EXPECT(&cf, "a OK [APPENDUID 1700000000 5] Append completed.\r\n", NULL);
	EXPECT(&cf, "a NO [AUTHENTICATIONFAILED] Authentication failed.\r\n", NULL);
	EXPECT(&cf, "a OK [READ-WRITE] Select completed\r\n", NULL);
	EXPECT(&cf, "* OK [CLOSED] Previous mailbox closed\r\n", NULL);
	EXPECT(&cf, "a OK done\r\n", NULL);
	EXPECT(&cf, "a BAD Error in IMAP command: Unknown command.\r\n", NULL);

	/*
	 * Status words are case-insensitive (RFC 3501 9, note 3): a line that
	 * needs no change must pass as it is, not be rebuilt in upper case
	 * and counted as a capability rewrite.
	 */
	EXPECT(&cf, "a no [TRYCREATE] x\r\n", NULL);
	EXPECT(&cf, "a Ok done\r\n", NULL);

	/* A bracket later in the text is plain text. */
	EXPECT(&cf, "a NO text [with bracket]\r\n", NULL);
	EXPECT(&cf, "a NO text [X-FOO] here\r\n", NULL);
	EXPECT(&cf, "a BAD Unexpected char at position 27 [E16: \"\\r\"]\r\n", NULL);

	/* Data responses are never touched. */
	EXPECT(&cf, "* 3 EXISTS\r\n", NULL);
	EXPECT(&cf, "* MAYBE [X-FOO] text\r\n", NULL);
	EXPECT(&cf, "* LIST (\\HasNoChildren) \"/\" \"[X-FOO]\"\r\n", NULL);
	EXPECT(&cf, "+ [X-FOO] go\r\n", NULL);

	/* What was rewritten, for the counters. */
	expect_full(&cf, "a NO [X-FOO] text\r\n", 19, 0, 0, "a NO text\r\n", __LINE__, &out);
	CHECK(out.code_changed == 1 && out.status_changed == 0,
	    "flags code %d status %d", out.code_changed, out.status_changed);
	CHECK(strcmp(out.original, "X-FOO") == 0, "original [%s]", out.original);
	free(out.buf);
	expect_full(&cf, "a MAYBE text\r\n", 14, 0, 0, "a NO text\r\n", __LINE__, &out);
	CHECK(out.status_changed == 1, "status_changed %d", out.status_changed);
	CHECK(strcmp(out.original, "MAYBE") == 0, "original [%s]", out.original);
	free(out.buf);

	/* Allowed codes and unknown_codes: keep. */
	cf.allow_codes = (char *[]){ "X-BAR", "x-foo" };
	cf.nallow_codes = 2;
	EXPECT(&cf, "a NO [X-FOO] text\r\n", NULL);
	EXPECT(&cf, "a NO [X-FOO 1 2] text\r\n", NULL);
	EXPECT(&cf, "a MAYBE [X-FOO] text\r\n", "a NO [X-FOO] text\r\n");
	EXPECT(&cf, "a NO [X-BAZ] text\r\n", "a NO text\r\n");
	cf.allow_codes = NULL;
	cf.nallow_codes = 0;
	cf.rewrite_keep_unknown = 1;
	EXPECT(&cf, "a NO [X-FOO] text\r\n", NULL);
	EXPECT(&cf, "a NO [X-FOO]\r\n", NULL);
	EXPECT(&cf, "a MAYBE [X-FOO] text\r\n", "a NO [X-FOO] text\r\n");
	cf_free(&cf);
}

/* rewrite.rules: match by status, code and text; first match wins. */
static void
test_rules(void)
{
	struct config cf;

	cf_init(&cf);
	/* 0: WildDuck's rate limit is a temporary unavailability. */
	cf_rule(&cf, CONFIG_STATUS_NO, "RateLimitedError", NULL, CONFIG_STATUS_KEEP,
	    "UNAVAILABLE");
	/* 1: a server fault answered with BAD is a NO the client may retry. */
	cf_rule(&cf, CONFIG_STATUS_BAD, NULL, "^database error", CONFIG_STATUS_NO,
	    "UNAVAILABLE");
	/* 2: drop a code entirely. */
	cf_rule(&cf, CONFIG_STATUS_ANY, "InvalidAuthScope", NULL, CONFIG_STATUS_KEEP, "none");
	/* 3: would also match "BAD Database error": must lose to rule 1. */
	cf_rule(&cf, CONFIG_STATUS_ANY, NULL, "database", CONFIG_STATUS_BAD, NULL);
	/* 4: only lines without a code. */
	cf_rule(&cf, CONFIG_STATUS_NO, "none", "^quota", CONFIG_STATUS_KEEP, "OVERQUOTA");
	/* 5: a non-standard tagged status. */
	cf_rule(&cf, CONFIG_STATUS_OTHER, NULL, NULL, CONFIG_STATUS_BAD, NULL);

	EXPECT(&cf, "a NO [RateLimitedError] Too many requests\r\n",
	    "a NO [UNAVAILABLE] Too many requests\r\n");
	/* Rule 0 is for NO only; the unknown code is then stripped. */
	EXPECT(&cf, "a BAD [RateLimitedError] Too many requests\r\n",
	    "a BAD Too many requests\r\n");
	EXPECT(&cf, "a BAD Database error\r\n", "a NO [UNAVAILABLE] Database error\r\n");
	EXPECT(&cf, "a BAD Database error (timeout)\r\n",
	    "a NO [UNAVAILABLE] Database error (timeout)\r\n");
	EXPECT(&cf, "a NO [InvalidAuthScope] Scope not allowed\r\n",
	    "a NO Scope not allowed\r\n");
	EXPECT(&cf, "a NO [INVALIDAUTHSCOPE]\r\n", "a NO INVALIDAUTHSCOPE\r\n");
	EXPECT(&cf, "a NO The database is down\r\n", "a BAD The database is down\r\n");
	EXPECT(&cf, "a NO Quota exceeded\r\n", "a NO [OVERQUOTA] Quota exceeded\r\n");
	/* Rule 4 wants no code: a line with one does not match it. */
	EXPECT(&cf, "a NO [ALERT] Quota exceeded\r\n", NULL);
	EXPECT(&cf, "a MAYBE perhaps\r\n", "a BAD perhaps\r\n");
	EXPECT(&cf, "a OK fine\r\n", NULL);
	/* Rules apply to untagged status responses too. */
	EXPECT(&cf, "* NO [RateLimitedError] slow\r\n", "* NO [UNAVAILABLE] slow\r\n");
	/* A set code replaces a standard code with arguments. */
	cf_free(&cf);

	cf_init(&cf);
	cf_rule(&cf, CONFIG_STATUS_NO, "TEMPFAIL", NULL, CONFIG_STATUS_KEEP, "UNAVAILABLE");
	cf_rule(&cf, CONFIG_STATUS_ANY, "UIDNEXT", NULL, CONFIG_STATUS_KEEP, "none");
	EXPECT(&cf, "a NO [TEMPFAIL] Try again\r\n", "a NO [UNAVAILABLE] Try again\r\n");
	EXPECT(&cf, "* OK [UIDNEXT 4] Predicted\r\n", "* OK Predicted\r\n");
	cf_free(&cf);
}

/* * CAPABILITY and [CAPABILITY ...]: COMPRESS/STARTTLS, remove, add. */
static void
test_capabilities(void)
{
	struct config cf;
	struct guard_out out;

	cf_init(&cf);
	EXPECT(&cf, "* CAPABILITY IMAP4rev1 COMPRESS=DEFLATE STARTTLS IDLE\r\n",
	    "* CAPABILITY IMAP4rev1 IDLE\r\n");
	EXPECT(&cf, "* CAPABILITY IMAP4rev1 IDLE\r\n", NULL);
	EXPECT(&cf, "* CAPABILITY IMAP4rev1 starttls compress=deflate\r\n",
	    "* CAPABILITY IMAP4rev1\r\n");
	/* A capability that only starts like one to remove stays. */
	EXPECT(&cf, "* CAPABILITY IMAP4rev1 STARTTLSX XCOMPRESS=DEFLATE\r\n", NULL);
	EXPECT_GREETING(&cf, "* OK [CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN] ready\r\n",
	    "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n");
	EXPECT(&cf, "* OK [CAPABILITY IMAP4rev1 STARTTLS AUTH=PLAIN] ready\r\n",
	    "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN] ready\r\n");
	EXPECT(&cf, "a OK [CAPABILITY IMAP4rev1 COMPRESS=DEFLATE IDLE] Logged in\r\n",
	    "a OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n");
	EXPECT(&cf, "a OK [CAPABILITY IMAP4rev1 COMPRESS=DEFLATE]\r\n",
	    "a OK [CAPABILITY IMAP4rev1]\r\n");
	EXPECT(&cf, "a OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n", NULL);
	expect_full(&cf, "* CAPABILITY IMAP4rev1 STARTTLS\r\n", 33, 0, 0,
	    "* CAPABILITY IMAP4rev1\r\n", __LINE__, &out);
	CHECK(out.caps_changed == 1 && strcmp(out.original, "CAPABILITY") == 0,
	    "caps flags %d [%s]", out.caps_changed, out.original);
	free(out.buf);

	/* capabilities.remove: exact names and "AUTH=" prefixes. */
	cf.cap_remove = (char *[]){ "IDLE", "AUTH=" };
	cf.ncap_remove = 2;
	EXPECT(&cf, "* CAPABILITY IMAP4rev1 IDLE IDLEX AUTH=PLAIN AUTH=LOGIN SASL-IR\r\n",
	    "* CAPABILITY IMAP4rev1 IDLEX SASL-IR\r\n");
	EXPECT_GREETING(&cf, "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN idle] ready\r\n",
	    "* OK [CAPABILITY IMAP4rev1] ready\r\n");
	/* "AUTH" alone is not an "AUTH=" mechanism. */
	EXPECT(&cf, "* CAPABILITY IMAP4rev1 AUTH\r\n", NULL);
	cf.cap_remove = NULL;
	cf.ncap_remove = 0;

	/* capabilities.add: appended once, never duplicated. */
	cf.cap_add = (char *[]){ "ID", "XIMAPGATE" };
	cf.ncap_add = 2;
	EXPECT(&cf, "* CAPABILITY IMAP4rev1 IDLE\r\n",
	    "* CAPABILITY IMAP4rev1 IDLE ID XIMAPGATE\r\n");
	EXPECT(&cf, "* CAPABILITY IMAP4rev1 id IDLE\r\n",
	    "* CAPABILITY IMAP4rev1 id IDLE XIMAPGATE\r\n");
	EXPECT(&cf, "* CAPABILITY IMAP4rev1 XIMAPGATE ID\r\n", NULL);
	EXPECT(&cf, "* CAPABILITY IMAP4rev1 IDX\r\n",
	    "* CAPABILITY IMAP4rev1 IDX ID XIMAPGATE\r\n");
	EXPECT_GREETING(&cf, "* OK [CAPABILITY IMAP4rev1 STARTTLS] ready\r\n",
	    "* OK [CAPABILITY IMAP4rev1 ID XIMAPGATE] ready\r\n");
	/* Removal and addition together. */
	cf.cap_remove = (char *[]){ "ID" };
	cf.ncap_remove = 1;
	cf.cap_add = (char *[]){ "XIMAPGATE" };
	cf.ncap_add = 1;
	EXPECT(&cf, "* CAPABILITY IMAP4rev1 ID XIMAPGATE\r\n", "* CAPABILITY IMAP4rev1 XIMAPGATE\r\n");
	cf.cap_remove = NULL;
	cf.ncap_remove = 0;
	cf.cap_add = NULL;
	cf.ncap_add = 0;
	cf_free(&cf);
}

/* Bare LF stays bare LF; literals and over-long lines are never rewritten. */
static void
test_line_ends_and_literals(void)
{
	static const char fetch[] =
	    "* 1 FETCH (UID 1 BODY[] {43}\r\n"
	    "a1 NO [X-FOO] fake\r\n* CAPABILITY STARTTLS\r\n)\r\n";
	static const char cap_lit[] = "* CAPABILITY IMAP4rev1 {8}\r\nSTARTTLS\r\n";
	struct config cf;
	char big[RESP_MAX];
	size_t n;

	cf_init(&cf);
	EXPECT(&cf, "a MAYBE [X-FOO] text\n", "a NO text\n");
	EXPECT(&cf, "a NO [X-FOO]\n", "a NO X-FOO\n");
	EXPECT(&cf, "* CAPABILITY IMAP4rev1 STARTTLS IDLE\n", "* CAPABILITY IMAP4rev1 IDLE\n");
	EXPECT(&cf, "a OK [CAPABILITY IMAP4rev1 STARTTLS] hi\n",
	    "a OK [CAPABILITY IMAP4rev1] hi\n");

	/* A FETCH body holding decoys: a data response with a literal. */
	expect_full(&cf, fetch, sizeof(fetch) - 1, 0, 0, NULL, __LINE__, NULL);
	/* A capability list that carries a literal is left alone. */
	expect_full(&cf, cap_lit, sizeof(cap_lit) - 1, 0, 0, NULL, __LINE__, NULL);

	/* Over max_line: the tokenizer flags it, the guard leaves it alone. */
	n = (size_t)snprintf(big, sizeof(big), "a NO [X-FOO] ");
	memset(big + n, 'x', 2000);
	n += 2000;
	memcpy(big + n, "\r\n", 2);
	n += 2;
	expect_full(&cf, big, n, 0, 1024, NULL, __LINE__, NULL);
	/* ... while the same line under the limit is rewritten. */
	{
		char want[RESP_MAX];
		size_t w = (size_t)snprintf(want, sizeof(want), "a NO ");

		memset(want + w, 'x', 2000);
		w += 2000;
		memcpy(want + w, "\r\n", 3);
		expect_full(&cf, big, n, 0, 0, want, __LINE__, NULL);
	}
	cf_free(&cf);
}

/* Ask guard_is_wrong_state / guard_is_greeting about one response. */
static int
ask(const struct config *cf, const char *in, int greeting_fn)
{
	struct resp r;

	parse(&r, in, strlen(in), 0, 0);
	if (!r.ok) {
		printf("FAIL: %s did not parse\n", in);
		failures++;
		return -1;
	}
	return greeting_fn ? guard_is_greeting(cf, &r.l, r.buf, r.len) :
	    guard_is_wrong_state(cf, &r.l, r.buf, r.len);
}

/* Desync patterns: wrong-state answers and fresh greetings. */
static void
test_desync(void)
{
	static const char *const desync[] = {
		"not allowed now", "command not allowed in (this|the current) state",
	};
	static const char *const greet[] = {
		"^Dovecot.* ready", "^WildDuck IMAP Server ready",
	};
	struct config cf;

	cf_init(&cf);
	/* No patterns: nothing matches (but PREAUTH is always a greeting). */
	CHECK(ask(&cf, "a BAD SELECT not allowed now\r\n", 0) == 0, "no patterns matched");
	CHECK(ask(&cf, "* OK Dovecot ready.\r\n", 1) == 0, "no greeting patterns matched");
	CHECK(ask(&cf, "* PREAUTH logged in\r\n", 1) == 1, "untagged PREAUTH not a greeting");

	cf.desync_re = cf_patterns(desync, 2);
	cf.ndesync_patterns = 2;
	cf.greeting_re = cf_patterns(greet, 2);
	cf.ngreeting_patterns = 2;

	CHECK(ask(&cf, "a BAD SELECT not allowed now\r\n", 0) == 1, "WildDuck BAD");
	CHECK(ask(&cf, "a NO Command NOT ALLOWED NOW.\r\n", 0) == 1, "case-insensitive");
	CHECK(ask(&cf, "a BAD [CLIENTBUG] Command not allowed in this state\r\n", 0) == 1,
	    "pattern after a code");
	CHECK(ask(&cf, "a BAD Command not allowed in the current state\r\n", 0) == 1,
	    "second pattern");
	CHECK(ask(&cf, "a OK not allowed now\r\n", 0) == 0, "OK matched as wrong state");
	CHECK(ask(&cf, "a NO Mailbox doesn't exist\r\n", 0) == 0, "plain NO matched");
	CHECK(ask(&cf, "* 1 FETCH (BODY[] {15}\r\nnot allowed now)\r\n", 0) == 0,
	    "literal matched as wrong state");

	CHECK(ask(&cf, "* OK Dovecot ready.\r\n", 1) == 1, "Dovecot greeting");
	CHECK(ask(&cf, "* OK [CAPABILITY IMAP4rev1 IDLE] Dovecot (Debian) ready.\r\n", 1) == 1,
	    "Dovecot greeting with capabilities");
	CHECK(ask(&cf, "* OK WildDuck IMAP Server ready for requests from 127.0.0.1 abc\r\n",
	    1) == 1, "WildDuck greeting");
	CHECK(ask(&cf, "* OK Still here\r\n", 1) == 0, "keepalive taken for a greeting");
	CHECK(ask(&cf, "* NO Dovecot ready.\r\n", 1) == 0, "NO taken for a greeting");
	CHECK(ask(&cf, "* BYE Dovecot ready.\r\n", 1) == 0, "BYE taken for a greeting");
	CHECK(ask(&cf, "* 1 FETCH (BODY[] {19}\r\n* OK Dovecot ready.)\r\n", 1) == 0,
	    "literal taken for a greeting");
	cf_free(&cf);
}

int
main(void)
{
	setvbuf(stdout, NULL, _IONBF, 0);
	test_status_and_codes();
	test_rules();
	test_capabilities();
	test_line_ends_and_literals();
	test_desync();
	printf("%d checks, %d failures\n", checks, failures);
	return failures ? 1 : 0;
}
