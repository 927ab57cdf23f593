/*
 * test_login: unit tests for the pre-login server and the backend login
 * builders (proxy/login.c).
 *
 * Linked with -Wl,--wrap=free: __wrap_free checks that the buffers a test
 * watches are all zero when login.c frees them (credentials are wiped,
 * then freed), then frees them.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "login.h"
#include "check.h"

#define WATCH_MAX	4

void	__real_free(void *p);
void	__wrap_free(void *p);

static struct {
	const void	*p;
	size_t		 n;
	int		 freed;		/* 1 zeroed when freed, -1 not zeroed */
} watch[WATCH_MAX];

/* Check a watched buffer is zero before it goes. */
void
__wrap_free(void *p)
{
	for (int i = 0; p != NULL && i < WATCH_MAX; i++) {
		if (watch[i].p != p)
			continue;
		watch[i].freed = 1;
		for (size_t k = 0; k < watch[i].n; k++)
			if (((const unsigned char *)p)[k] != 0)
				watch[i].freed = -1;
		watch[i].p = NULL;
	}
	__real_free(p);
}

/* Watch buffer p of n bytes in slot i. */
static void
watch_set(int i, const void *p, size_t n)
{
	watch[i].p = p;
	watch[i].n = n;
	watch[i].freed = 0;
}

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Base64 of p[0..n) into out (NUL-terminated). */
static char *
enc(const void *p, size_t n, char *out)
{
	const unsigned char *s = p;
	size_t o = 0;

	for (size_t i = 0; i < n; i += 3) {
		unsigned v = (unsigned)s[i] << 16 | (i + 1 < n ? (unsigned)s[i + 1] << 8 : 0) |
		    (i + 2 < n ? s[i + 2] : 0);
		out[o++] = b64[v >> 18 & 63];
		out[o++] = b64[v >> 12 & 63];
		out[o++] = i + 1 < n ? b64[v >> 6 & 63] : '=';
		out[o++] = i + 2 < n ? b64[v & 63] : '=';
	}
	out[o] = '\0';
	return out;
}

/* Decode base64 s[0..n) into out; the length, or -1. */
static int
dec(const char *s, size_t n, unsigned char *out)
{
	unsigned v = 0;
	int bits = 0, o = 0;

	for (size_t i = 0; i < n && s[i] != '='; i++) {
		const char *at = strchr(b64, s[i]);
		if (at == NULL || s[i] == '\0')
			return -1;
		v = v << 6 | (unsigned)(at - b64);
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out[o++] = (unsigned char)(v >> bits);
		}
	}
	return o;
}

static struct login_result r;
static void (*volatile freep)(void *) = free;

/* Run one command (a C string) and return r. */
static struct login_result *
cmd(struct login_ctx *ctx, const char *c)
{
	login_command(ctx, c, strlen(c), &r);
	return &r;
}

/* Run a command of n bytes (may hold NUL). */
static struct login_result *
cmdn(struct login_ctx *ctx, const char *c, size_t n)
{
	login_command(ctx, c, n, &r);
	return &r;
}

/* Feed one SASL line. */
static struct login_result *
sasl(struct login_ctx *ctx, const char *l)
{
	login_sasl_line(ctx, l, strlen(l), &r);
	return &r;
}

/* The command gives exactly reply with action act. */
static void
expect(struct login_ctx *ctx, const char *c, enum login_action act, const char *reply)
{
	cmd(ctx, c);
	CHECK(r.act == act, "%s: act %d, want %d", c, r.act, act);
	CHECK(strcmp(r.reply, reply) == 0 && r.replylen == strlen(reply),
	    "%s: reply \"%s\", want \"%s\"", c, r.reply, reply);
	login_creds_wipe(&r.creds);
}

/* A command and the answer it must get. */
struct exchange {
	const char		*cmd;
	enum login_action	 act;
	const char		*reply;
};

/* Run each command of a table. */
static void
expect_all(struct login_ctx *ctx, const struct exchange *t, size_t n)
{
	for (size_t i = 0; i < n; i++)
		expect(ctx, t[i].cmd, t[i].act, t[i].reply);
}

/* Each command gets the same reply. */
static void
expect_same(struct login_ctx *ctx, const char *const *cmds, size_t n, const char *reply)
{
	for (size_t i = 0; i < n; i++)
		expect(ctx, cmds[i], LOGIN_ACT_REPLY, reply);
}

/* The last result carries these credentials (authz NULL: none). */
static void
expect_creds(const char *what, enum login_mech mech, const char *user, const char *authz,
    const char *secret, size_t secretlen)
{
	CHECK(r.act == LOGIN_ACT_AUTH, "%s: act %d (%s)", what, r.act, r.reply);
	if (r.act != LOGIN_ACT_AUTH)
		return;
	CHECK(r.creds.mech == mech, "%s: mech %d", what, r.creds.mech);
	CHECK(strcmp(r.creds.user, user) == 0, "%s: user \"%s\"", what, r.creds.user);
	CHECK((authz == NULL && r.creds.authz == NULL) ||
	    (authz != NULL && r.creds.authz != NULL && strcmp(authz, r.creds.authz) == 0),
	    "%s: authz %s", what, r.creds.authz ? r.creds.authz : "(null)");
	CHECK(r.creds.secretlen == secretlen && memcmp(r.creds.secret, secret, secretlen) == 0,
	    "%s: secret \"%s\"", what, r.creds.secret);
	CHECK(r.replylen == 0, "%s: reply \"%s\"", what, r.reply);
}

/* The capability list per listener, and the greeting. */
static void
test_capabilities(void)
{
	struct login_ctx ctx;
	char buf[LOGIN_MAX_CAPS], g[512];

	login_ctx_init(&ctx, LOGIN_CTX_TLS);
	login_capabilities(&ctx, buf, sizeof(buf));
	CHECK(strcmp(buf, "IMAP4rev1 SASL-IR LITERAL+ ID AUTH=PLAIN AUTH=LOGIN") == 0, "%s", buf);
	login_ctx_init(&ctx, LOGIN_CTX_TLS | LOGIN_CTX_OAUTH | LOGIN_CTX_STARTTLS);
	login_capabilities(&ctx, buf, sizeof(buf));
	CHECK(strcmp(buf, "IMAP4rev1 SASL-IR LITERAL+ ID AUTH=PLAIN AUTH=LOGIN AUTH=XOAUTH2 "
	    "AUTH=OAUTHBEARER") == 0, "%s", buf);
	login_ctx_init(&ctx, LOGIN_CTX_STARTTLS);
	login_capabilities(&ctx, buf, sizeof(buf));
	CHECK(strcmp(buf, "IMAP4rev1 SASL-IR LITERAL+ ID AUTH=PLAIN AUTH=LOGIN STARTTLS") == 0,
	    "%s", buf);
	login_ctx_init(&ctx, LOGIN_CTX_STARTTLS | LOGIN_CTX_LOGINDISABLED | LOGIN_CTX_OAUTH);
	login_capabilities(&ctx, buf, sizeof(buf));
	CHECK(strcmp(buf, "IMAP4rev1 SASL-IR LITERAL+ ID STARTTLS LOGINDISABLED") == 0, "%s", buf);
	CHECK(login_capabilities(&ctx, buf, 10) == -1, "small buffer");
	login_tls_started(&ctx);
	login_capabilities(&ctx, buf, sizeof(buf));
	CHECK(strcmp(buf, "IMAP4rev1 SASL-IR LITERAL+ ID AUTH=PLAIN AUTH=LOGIN AUTH=XOAUTH2 "
	    "AUTH=OAUTHBEARER") == 0, "after TLS: %s", buf);

	login_ctx_init(&ctx, LOGIN_CTX_STARTTLS);
	login_greeting(&ctx, "Hello\r\n\x01there\xc3\xa9", g, sizeof(g));
	CHECK(strcmp(g, "* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID AUTH=PLAIN AUTH=LOGIN "
	    "STARTTLS] Hello???there??\r\n") == 0, "%s", g);
	login_greeting(&ctx, "", g, sizeof(g));
	CHECK(strstr(g, "] Ready\r\n") != NULL, "%s", g);
	login_greeting(&ctx, NULL, g, sizeof(g));
	CHECK(strstr(g, "] Ready\r\n") != NULL, "%s", g);
	memset(buf, 'x', 200);
	buf[200] = '\0';
	CHECK(login_greeting(&ctx, buf, g, sizeof(g)) == (int)strlen(g), "long greeting");
	CHECK(strlen(strstr(g, "] ")) == 2 + LOGIN_MAX_GREETING_TEXT + 2, "greeting text bounded");
	CHECK(login_greeting(&ctx, "hi", g, 40) == -1, "small greeting buffer");
}

/* CAPABILITY, NOOP, LOGOUT, tags and refused commands. */
static void
test_simple(void)
{
	static const struct exchange simple[] = {
		{ "a1 CAPABILITY\r\n", LOGIN_ACT_REPLY,
		  "* CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID AUTH=PLAIN AUTH=LOGIN\r\n"
		  "a1 OK Capability completed\r\n" },
		{ "a2 noop\r\n", LOGIN_ACT_REPLY, "a2 OK NOOP completed\r\n" },
		{ "a2 NoOp\n", LOGIN_ACT_REPLY, "a2 OK NOOP completed\r\n" },
		{ "a3 NOOP x\r\n", LOGIN_ACT_REPLY, "a3 BAD Unexpected arguments\r\n" },
		{ "a3 NOOP \r\n", LOGIN_ACT_REPLY, "a3 BAD Unexpected arguments\r\n" },
		{ "a3 NOOP\r\r\n", LOGIN_ACT_REPLY, "a3 BAD Unknown command\r\n" },
		{ "a3 NOOP", LOGIN_ACT_REPLY, "a3 BAD Unknown command\r\n" },
		{ "z LOGOUT\r\n", LOGIN_ACT_LOGOUT, "* BYE Logging out\r\nz OK Logout completed\r\n" },
		{ "a]1 NOOP\r\n", LOGIN_ACT_REPLY, "a]1 OK NOOP completed\r\n" },
		{ "a1\r\n", LOGIN_ACT_REPLY, "a1 BAD Missing command\r\n" },
		{ "a1 \r\n", LOGIN_ACT_REPLY, "a1 BAD Missing command\r\n" },
		{ "a1  NOOP\r\n", LOGIN_ACT_REPLY, "a1 BAD Missing command\r\n" },
		{ "a1 FROB\r\n", LOGIN_ACT_REPLY, "a1 BAD Unknown command\r\n" },
		{ "a1 NOOP(\r\n", LOGIN_ACT_REPLY, "a1 BAD Unknown command\r\n" },
		{ "a1 AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\r\n", LOGIN_ACT_REPLY,
		  "a1 BAD Unknown command\r\n" },
	};
	static const char *const badtag[] = {
		"* NOOP\r\n", "a+ NOOP\r\n", "a{ NOOP\r\n", "\r\n", "", " NOOP\r\n",
	};
	static const char *const notnow[] = {
		"a1 SELECT INBOX\r\n", "a1 enable CONDSTORE\r\n", "a1 UID FETCH 1 FLAGS\r\n",
		"a1 IDLE\r\n",
	};
	struct login_ctx ctx;
	char tag[80];

	login_ctx_init(&ctx, LOGIN_CTX_TLS);
	expect_all(&ctx, simple, sizeof(simple) / sizeof(simple[0]));
	expect_same(&ctx, badtag, sizeof(badtag) / sizeof(badtag[0]), "* BAD Invalid tag\r\n");
	memset(tag, 'T', 64);
	strcpy(tag + 64, " NOOP\r\n");
	cmd(&ctx, tag);
	CHECK(strlen(r.tag) == 64 && strncmp(r.reply + 64, " OK", 3) == 0, "64-byte tag: %s", r.reply);
	memset(tag, 'T', 65);
	strcpy(tag + 65, " NOOP\r\n");
	expect(&ctx, tag, LOGIN_ACT_REPLY, "* BAD Invalid tag\r\n");
	expect_same(&ctx, notnow, sizeof(notnow) / sizeof(notnow[0]),
	    "a1 BAD Command not valid before login\r\n");
	CHECK(ctx.bads == 21, "bads counted: %u", ctx.bads);
	CHECK(ctx.attempts == 0, "no attempts: %u", ctx.attempts);
}

/* STARTTLS and LOGINDISABLED before and after TLS. */
static void
test_starttls(void)
{
	struct login_ctx ctx;

	login_ctx_init(&ctx, LOGIN_CTX_STARTTLS | LOGIN_CTX_LOGINDISABLED);
	expect(&ctx, "s STARTTLS extra\r\n", LOGIN_ACT_REPLY, "s BAD Unexpected arguments\r\n");
	expect(&ctx, "s starttls\r\n", LOGIN_ACT_STARTTLS, "s OK Begin TLS negotiation now\r\n");
	expect(&ctx, "l LOGIN alice secret\r\n", LOGIN_ACT_REPLY,
	    "l NO [PRIVACYREQUIRED] Use STARTTLS first\r\n");
	expect(&ctx, "l AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==\r\n", LOGIN_ACT_REPLY,
	    "l NO [PRIVACYREQUIRED] Use STARTTLS first\r\n");
	expect(&ctx, "l AUTHENTICATE\r\n", LOGIN_ACT_REPLY,
	    "l NO [PRIVACYREQUIRED] Use STARTTLS first\r\n");
	CHECK(ctx.attempts == 0, "PRIVACYREQUIRED is no attempt");
	expect(&ctx, "i ID (\"name\" \"injected\")\r\n", LOGIN_ACT_REPLY,
	    "* ID NIL\r\ni OK ID completed\r\n");
	login_tls_started(&ctx);
	CHECK(ctx.nid == 0, "plaintext ID dropped at TLS");
	expect(&ctx, "s STARTTLS\r\n", LOGIN_ACT_REPLY, "s BAD STARTTLS not available\r\n");
	cmd(&ctx, "l LOGIN alice secret\r\n");
	expect_creds("LOGIN after STARTTLS", LOGIN_MECH_LOGIN_CMD, "alice", NULL, "secret", 6);
	login_creds_wipe(&r.creds);
	login_ctx_init(&ctx, LOGIN_CTX_TLS | LOGIN_CTX_STARTTLS);
	expect(&ctx, "s STARTTLS\r\n", LOGIN_ACT_REPLY, "s BAD STARTTLS not available\r\n");
	login_ctx_init(&ctx, 0);
	expect(&ctx, "s STARTTLS\r\n", LOGIN_ACT_REPLY, "s BAD STARTTLS not available\r\n");
	login_ctx_free(&ctx);
}

/* LOGIN: every string form, limits and syntax errors. */
static void
test_login_cmd(void)
{
	static const char nul_q[] = "l LOGIN \"al\0ce\" pw\r\n";
	static const char nul_l[] = "l LOGIN {5}\r\nal\0ce pw\r\n";
	static const char *const badlogin[] = {
		"l2 LOGIN alice\r\n", "l2 LOGIN\r\n", "l2 LOGIN a b c\r\n",
		"l2 LOGIN a  b\r\n", "l2 LOGIN a b \r\n", "l2 LOGIN a \"b\r\n",
		"l2 LOGIN a \"b\\n\"\r\n", "l2 LOGIN a \"b\"c\r\n", "l2 LOGIN a ~{1}\r\nb\r\n",
		"l2 LOGIN a {7}\r\nb\r\n", "l2 LOGIN a {3}\r\nb\r\n",
		"l2 LOGIN a {99999999999999999999999}\r\nb\r\n", "l2 LOGIN a {}\r\n\r\n",
		"l2 LOGIN a {1}x\r\nb\r\n", "l2 LOGIN a {1}\rb\r\n", "l2 LOGIN a {1}",
		"l2 LOGIN \xc3\xa9 pw\r\n", "l2 LOGIN a b",
	};
	static const struct {
		const char	*cmd, *user, *secret;
		size_t		 secretlen;
	} good[] = {
		{ "l1 login \"alice\" \"se cr\\\"et\\\\\"\r\n", "alice", "se cr\"et\\", 9 },
		{ "l1 LOGIN {5}\r\nalice {6}\r\nsecret\r\n", "alice", "secret", 6 },
		{ "l1 LOGIN {5+}\r\nalice {6+}\r\nsecret\r\n", "alice", "secret", 6 },
		{ "l1 LOGIN {5}\nalice \"se\\\\c\"\n", "alice", "se\\c", 4 },
		{ "l1 LOGIN alice {0}\r\n\r\n", "alice", "", 0 },
		{ "l1 LOGIN alice \"\"\r\n", "alice", "", 0 },
		/* 8-bit user in a literal, CRLF in the password */
		{ "l1 LOGIN {5+}\r\nj\xc3\xb6rg {4}\r\np\r\nw\r\n", "j\xc3\xb6rg", "p\r\nw", 4 },
		{ "l1 LOGIN \"j\xc3\xb6rg\" pw\r\n", "j\xc3\xb6rg", "pw", 2 },
		{ "l1 LOGIN NIL ]x\r\n", "NIL", "]x", 2 },	/* NIL is a user name here */
	};
	struct login_ctx ctx;
	char *big;
	size_t n;

	login_ctx_init(&ctx, LOGIN_CTX_TLS);
	cmd(&ctx, "l1 LOGIN alice secret\r\n");
	expect_creds("atoms", LOGIN_MECH_LOGIN_CMD, "alice", NULL, "secret", 6);
	CHECK(strcmp(r.tag, "l1") == 0, "tag %s", r.tag);
	login_creds_wipe(&r.creds);
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		cmd(&ctx, good[i].cmd);
		expect_creds(good[i].cmd, LOGIN_MECH_LOGIN_CMD, good[i].user, NULL, good[i].secret,
		    good[i].secretlen);
		login_creds_wipe(&r.creds);
	}
	CHECK(ctx.attempts == 10, "attempts %u", ctx.attempts);

	expect(&ctx, "l2 LOGIN \"\" pw\r\n", LOGIN_ACT_REPLY,
	    "l2 NO [AUTHENTICATIONFAILED] Authentication failed\r\n");
	expect(&ctx, "l2 LOGIN {3}\r\na\tb pw\r\n", LOGIN_ACT_REPLY,
	    "l2 NO [AUTHENTICATIONFAILED] Authentication failed\r\n");
	expect_same(&ctx, badlogin, sizeof(badlogin) / sizeof(badlogin[0]),
	    "l2 BAD Invalid LOGIN arguments\r\n");
	cmdn(&ctx, nul_q, sizeof(nul_q) - 1);
	CHECK(strcmp(r.reply, "l BAD Invalid LOGIN arguments\r\n") == 0, "NUL quoted: %s", r.reply);
	cmdn(&ctx, nul_l, sizeof(nul_l) - 1);
	CHECK(strcmp(r.reply, "l BAD Invalid LOGIN arguments\r\n") == 0, "NUL literal: %s", r.reply);

	/* Limits: a 512-byte user passes, 1 KiB is NO [LIMIT], as is a 8193-byte password. */
	big = malloc(LOGIN_MAX_SECRET + 64);
	if (big == NULL)
		return;
	n = (size_t)sprintf(big, "l3 LOGIN {%d}\r\n", LOGIN_MAX_USER);
	memset(big + n, 'u', LOGIN_MAX_USER);
	strcpy(big + n + LOGIN_MAX_USER, " pw\r\n");
	cmd(&ctx, big);
	CHECK(r.act == LOGIN_ACT_AUTH && strlen(r.creds.user) == LOGIN_MAX_USER, "512-byte user");
	login_creds_wipe(&r.creds);
	n = (size_t)sprintf(big, "l3 LOGIN \"");
	memset(big + n, 'u', 1024);
	strcpy(big + n + 1024, "\" pw\r\n");
	expect(&ctx, big, LOGIN_ACT_REPLY, "l3 NO [LIMIT] User name too long\r\n");
	n = (size_t)sprintf(big, "l3 LOGIN alice {%d+}\r\n", LOGIN_MAX_SECRET + 1);
	memset(big + n, 'p', LOGIN_MAX_SECRET + 1);
	strcpy(big + n + LOGIN_MAX_SECRET + 1, "\r\n");
	expect(&ctx, big, LOGIN_ACT_REPLY, "l3 NO [LIMIT] Password too long\r\n");
	n = (size_t)sprintf(big, "l3 LOGIN alice {%d+}\r\n", LOGIN_MAX_SECRET);
	memset(big + n, 'p', LOGIN_MAX_SECRET);
	strcpy(big + n + LOGIN_MAX_SECRET, "\r\n");
	cmd(&ctx, big);
	CHECK(r.act == LOGIN_ACT_AUTH && r.creds.secretlen == LOGIN_MAX_SECRET, "8192-byte password");
	login_creds_wipe(&r.creds);
	free(big);
	login_ctx_free(&ctx);
}

/* ID: parsing, bounds, replacement, and the backend ID command. */
static void
test_id(void)
{
	static const char *const extra[] = {
		"x-originating-ip", "192.0.2.1", "NAME", "imapgate-client", "x-session-id", NULL,
	};
	struct login_ctx ctx;
	char buf[4096], line[4096], tag26[40], tag27[40], *p;
	int n;

	login_ctx_init(&ctx, LOGIN_CTX_TLS);
	n = login_id_build(&ctx, "i1", NULL, 0, buf, sizeof(buf));
	CHECK(n == 11 && strcmp(buf, "i1 ID NIL\r\n") == 0, "no ID: %s", buf);
	expect(&ctx, "i ID NIL\r\n", LOGIN_ACT_REPLY, "* ID NIL\r\ni OK ID completed\r\n");
	expect(&ctx, "i ID nil\r\n", LOGIN_ACT_REPLY, "* ID NIL\r\ni OK ID completed\r\n");
	expect(&ctx, "i ID ()\r\n", LOGIN_ACT_REPLY, "* ID NIL\r\ni OK ID completed\r\n");
	expect(&ctx, "i ID (\"name\" \"Thunder\\\"bird\" \"version\" NIL \"os\" {5}\r\nLi\rux"
	    " \"x-originating-ip\" \"10.9.9.9\" \"vendor\" \"caf\xc3\xa9\")\r\n", LOGIN_ACT_REPLY,
	    "* ID NIL\r\ni OK ID completed\r\n");
	CHECK(ctx.nid == 5, "5 pairs kept: %zu", ctx.nid);
	n = login_id_build(&ctx, "B1", NULL, 0, buf, sizeof(buf));
	CHECK(n > 0 && strcmp(buf, "B1 ID (\"name\" \"Thunder\\\"bird\" \"version\" NIL)\r\n") == 0,
	    "client pairs (CR and 8-bit values and x- fields dropped): %s", buf);
	n = login_id_build(&ctx, "B2", extra, 3, buf, sizeof(buf));
	CHECK(n > 0 && strcmp(buf, "B2 ID (\"x-originating-ip\" \"192.0.2.1\" \"NAME\" "
	    "\"imapgate-client\" \"x-session-id\" NIL \"version\" NIL)\r\n") == 0,
	    "extra pairs replace: %s", buf);
	CHECK(login_id_build(&ctx, "B2", extra, 3, buf, 20) == -1, "small buffer");
	CHECK(login_id_build(&ctx, "B 2", extra, 3, buf, sizeof(buf)) == -1, "bad tag");
	/* A later ID replaces the earlier one; a malformed one keeps it. */
	expect(&ctx, "i ID (\"name\" \"x\") \r\n", LOGIN_ACT_REPLY, "i BAD Invalid ID arguments\r\n");
	CHECK(ctx.nid == 5, "malformed ID keeps the earlier one");
	expect(&ctx, "i ID (\"name\" \"mutt\")\r\n", LOGIN_ACT_REPLY, "* ID NIL\r\ni OK ID completed\r\n");
	n = login_id_build(&ctx, "B3", NULL, 0, buf, sizeof(buf));
	CHECK(strcmp(buf, "B3 ID (\"name\" \"mutt\")\r\n") == 0, "replaced: %s", buf);
	expect(&ctx, "i ID NIL\r\n", LOGIN_ACT_REPLY, "* ID NIL\r\ni OK ID completed\r\n");
	CHECK(ctx.nid == 0, "ID NIL clears");

	static const char *const bad[] = {
		"i ID\r\n", "i ID \r\n", "i ID (\r\n", "i ID (\"a\")\r\n", "i ID (\"a\" )\r\n",
		"i ID (name \"x\")\r\n", "i ID (NIL \"x\")\r\n", "i ID (\"a\" \"b\"\r\n",
		"i ID (\"a\" \"b\" )\r\n", "i ID (\"a\"  \"b\")\r\n", "i ID (\"a\" \"b\")x\r\n",
		"i ID (\"a\" b)\r\n", "i ID (\"a\" \"b\" \"A\" \"c\")\r\n", "i ID NILL\r\n",
		"i ID (\"0123456789012345678901234567890\" \"x\")\r\n", "i ID x\r\n",
		"i ID (\"a\" ~{1}\r\nb)\r\n", "i ID (\"a\" NILx)\r\n",
	};
	expect_same(&ctx, bad, sizeof(bad) / sizeof(bad[0]), "i BAD Invalid ID arguments\r\n");
	/* Bounds: 30 pairs, 30-byte fields and 1024-byte values pass. */
	p = line + sprintf(line, "i ID (");
	for (int i = 0; i < LOGIN_ID_MAX_PAIRS; i++)
		p += sprintf(p, "%s\"f%028d\" \"v\"", i ? " " : "", i);
	strcpy(p, ")\r\n");
	expect(&ctx, line, LOGIN_ACT_REPLY, "* ID NIL\r\ni OK ID completed\r\n");
	CHECK(ctx.nid == 30, "30 pairs");
	n = login_id_build(&ctx, "B4", extra, 3, buf, sizeof(buf));
	snprintf(tag26, sizeof(tag26), "\"f%028d\"", 26);
	snprintf(tag27, sizeof(tag27), "\"f%028d\"", 27);
	CHECK(n > 0 && strstr(buf, tag26) != NULL && strstr(buf, tag27) == NULL,
	    "at most 30 pairs, extras first: %s", buf);
	strcpy(p - 1, " \"f\" \"v\")\r\n");
	expect(&ctx, line, LOGIN_ACT_REPLY, "i BAD Invalid ID arguments\r\n");
	p = line + sprintf(line, "i ID (\"f\" \"");
	memset(p, 'v', 1024);
	strcpy(p + 1024, "\")\r\n");
	expect(&ctx, line, LOGIN_ACT_REPLY, "* ID NIL\r\ni OK ID completed\r\n");
	strcpy(p + 1024, "v\")\r\n");
	expect(&ctx, line, LOGIN_ACT_REPLY, "i BAD Invalid ID arguments\r\n");
	login_ctx_free(&ctx);
	CHECK(ctx.nid == 0, "freed");
}

/* AUTHENTICATE with each mechanism, with and without initial response. */
static void
test_sasl(void)
{
	struct login_ctx ctx;
	char b[256], line[LOGIN_MAX_SASL + 64];

	login_ctx_init(&ctx, LOGIN_CTX_TLS | LOGIN_CTX_OAUTH);
	/* PLAIN with and without an initial response; authz. */
	cmd(&ctx, "a AUTHENTICATE PLAIN AGFsaWNlAHNlY3JldA==\r\n");
	expect_creds("PLAIN IR", LOGIN_MECH_PLAIN, "alice", NULL, "secret", 6);
	login_creds_wipe(&r.creds);
	expect(&ctx, "a authenticate plain\r\n", LOGIN_ACT_CONTINUE, "+ \r\n");
	CHECK(strcmp(r.tag, "a") == 0, "tag on continue");
	sasl(&ctx, "YWRtaW4AYWxpY2UAc2VjcmV0\r\n");
	expect_creds("PLAIN line with authz", LOGIN_MECH_PLAIN, "alice", "admin", "secret", 6);
	CHECK(strcmp(r.tag, "a") == 0 && ctx.sasl_mech == LOGIN_MECH_NONE, "exchange ended");
	login_creds_wipe(&r.creds);
	cmd(&ctx, "a AUTHENTICATE PLAIN\r\n");
	sasl(&ctx, strcat(enc("alice\0alice\0pw", 14, b), "\n"));
	expect_creds("authz = user dropped", LOGIN_MECH_PLAIN, "alice", NULL, "pw", 2);
	login_creds_wipe(&r.creds);

	/* Malformed PLAIN messages fail like a wrong password. */
	static const struct { const char *m; size_t n; } badplain[] = {
		{ "alicesecret", 11 }, { "\0alice", 6 }, { "\0\0secret", 8 }, { "\0alice\0", 7 },
		{ "\0alice\0se\0cret", 14 }, { "", 0 }, { "\0a\x01lice\0pw", 10 },
	};
	for (size_t i = 0; i < sizeof(badplain) / sizeof(badplain[0]); i++) {
		cmd(&ctx, "p AUTHENTICATE PLAIN\r\n");
		sasl(&ctx, strcat(enc(badplain[i].m, badplain[i].n, b), "\r\n"));
		CHECK(strcmp(r.reply, "p NO [AUTHENTICATIONFAILED] Authentication failed\r\n") == 0 &&
		    r.act == LOGIN_ACT_REPLY, "bad PLAIN %zu: %s", i, r.reply);
	}
	expect(&ctx, "p AUTHENTICATE PLAIN =\r\n", LOGIN_ACT_REPLY,
	    "p NO [AUTHENTICATIONFAILED] Authentication failed\r\n");
	/* Not base64: BAD, exchange over. */
	static const char *const badb64[] = {
		"AGFsaWNlAHNlY3JldA=\r\n", "AGFsaWNlAHNlY3JldA\r\n", "AGFs!WNlAHNlY3JldA==\r\n",
		"AGFsaWNlAHNlY3Jl=A==\r\n", "QR==\r\n", "QUJ=\r\n", "====\r\n", "A===\r\n",
		"AGFsaWNl AHNlY3JldA==\r\n", "=\r\n", "AGFsaWNlAHNlY3JldA==", "**\r\n",
	};
	for (size_t i = 0; i < sizeof(badb64) / sizeof(badb64[0]); i++) {
		cmd(&ctx, "p AUTHENTICATE PLAIN\r\n");
		sasl(&ctx, badb64[i]);
		CHECK(strncmp(r.reply, "p BAD ", 6) == 0 && ctx.sasl_mech == LOGIN_MECH_NONE,
		    "bad base64 %zu: %s", i, r.reply);
	}
	expect(&ctx, "p AUTHENTICATE PLAIN QR==\r\n", LOGIN_ACT_REPLY,
	    "p BAD Invalid base64 in authentication response\r\n");
	expect(&ctx, "p AUTHENTICATE PLAIN AG*x\r\n", LOGIN_ACT_REPLY,
	    "p BAD Invalid AUTHENTICATE arguments\r\n");
	expect(&ctx, "p AUTHENTICATE PLAIN \r\n", LOGIN_ACT_REPLY,
	    "p BAD Invalid AUTHENTICATE arguments\r\n");
	expect(&ctx, "p AUTHENTICATE\r\n", LOGIN_ACT_REPLY, "p BAD Invalid AUTHENTICATE arguments\r\n");
	expect(&ctx, "p AUTHENTICATE \"PLAIN\"\r\n", LOGIN_ACT_REPLY,
	    "p BAD Invalid AUTHENTICATE arguments\r\n");
	expect(&ctx, "p AUTHENTICATE CRAM-MD5\r\n", LOGIN_ACT_REPLY,
	    "p NO Unsupported authentication mechanism\r\n");
	/* An empty line is an empty response. */
	cmd(&ctx, "p AUTHENTICATE PLAIN\r\n");
	sasl(&ctx, "\r\n");
	CHECK(strcmp(r.reply, "p NO [AUTHENTICATIONFAILED] Authentication failed\r\n") == 0,
	    "empty response: %s", r.reply);

	/* Cancel. */
	expect(&ctx, "c AUTHENTICATE PLAIN\r\n", LOGIN_ACT_CONTINUE, "+ \r\n");
	sasl(&ctx, "*\r\n");
	CHECK(strcmp(r.reply, "c BAD Authentication cancelled\r\n") == 0 &&
	    ctx.sasl_mech == LOGIN_MECH_NONE, "cancel: %s", r.reply);
	sasl(&ctx, "AGFsaWNlAHNlY3JldA==\r\n");
	CHECK(strcmp(r.reply, "* BAD No authentication in progress\r\n") == 0, "%s", r.reply);

	/* LOGIN: two steps, with or without the user as initial response. */
	expect(&ctx, "g AUTHENTICATE LOGIN\r\n", LOGIN_ACT_CONTINUE, "+ VXNlcm5hbWU6\r\n");
	sasl(&ctx, "Ym9i\r\n");
	CHECK(r.act == LOGIN_ACT_CONTINUE && strcmp(r.reply, "+ UGFzc3dvcmQ6\r\n") == 0,
	    "LOGIN step 2: %s", r.reply);
	watch_set(0, ctx.sasl_user, 3);
	sasl(&ctx, "aHVudGVyMg==\r\n");
	expect_creds("LOGIN mechanism", LOGIN_MECH_LOGIN, "bob", NULL, "hunter2", 7);
	CHECK(watch[0].freed == 1, "step-1 user wiped then freed: %d", watch[0].freed);
	login_creds_wipe(&r.creds);
	expect(&ctx, "g AUTHENTICATE LOGIN Ym9i\r\n", LOGIN_ACT_CONTINUE, "+ UGFzc3dvcmQ6\r\n");
	watch_set(0, ctx.sasl_user, 3);
	sasl(&ctx, "*\r\n");
	CHECK(strcmp(r.reply, "g BAD Authentication cancelled\r\n") == 0, "LOGIN cancel: %s", r.reply);
	CHECK(watch[0].freed == 1 && ctx.sasl_user == NULL, "cancel wipes the user");
	expect(&ctx, "g AUTHENTICATE LOGIN =\r\n", LOGIN_ACT_REPLY,
	    "g NO [AUTHENTICATIONFAILED] Authentication failed\r\n");
	cmd(&ctx, "g AUTHENTICATE LOGIN\r\n");
	sasl(&ctx, "Ym9iAA==\r\n");
	CHECK(strcmp(r.reply, "g NO [AUTHENTICATIONFAILED] Authentication failed\r\n") == 0,
	    "NUL in LOGIN user: %s", r.reply);
	cmd(&ctx, "g AUTHENTICATE LOGIN Ym9i\r\n");
	sasl(&ctx, "cABw\r\n");
	CHECK(strcmp(r.reply, "g NO [AUTHENTICATIONFAILED] Authentication failed\r\n") == 0,
	    "NUL in LOGIN password: %s", r.reply);
	/* A new command ends a dangling exchange (and wipes it). */
	cmd(&ctx, "g AUTHENTICATE LOGIN Ym9i\r\n");
	watch_set(0, ctx.sasl_user, 3);
	expect(&ctx, "n NOOP\r\n", LOGIN_ACT_REPLY, "n OK NOOP completed\r\n");
	CHECK(watch[0].freed == 1 && ctx.sasl_mech == LOGIN_MECH_NONE, "new command ends SASL");

	/* XOAUTH2 (Google's sample) and OAUTHBEARER (RFC 7628 4.1). */
	static const char xo[] = "dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRm"
	    "dDRxbVRjMk52YjNSbGNrQmhkSFJoZG1semRHRXVZMjl0Q2cBAQ==";
	static const char ob[] = "bixhPXVzZXJAZXhhbXBsZS5jb20sAWhvc3Q9c2VydmVyLmV4YW1wbGUuY29tAXBv"
	    "cnQ9MTQzAWF1dGg9QmVhcmVyIHZGOWRmdDRxbVRjMk52YjNSbGNrQmhiSFJoZG1semRHRXVZMjl0Q2c9PQEB";
	snprintf(line, sizeof(line), "x AUTHENTICATE XOAUTH2 %s\r\n", xo);
	cmd(&ctx, line);
	expect_creds("XOAUTH2 IR", LOGIN_MECH_XOAUTH2, "someuser@example.com", NULL,
	    "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg", 45);
	CHECK(r.creds.rawlen == strlen(xo) && memcmp(r.creds.raw, xo, r.creds.rawlen) == 0, "raw kept");
	login_creds_wipe(&r.creds);
	expect(&ctx, "x AUTHENTICATE XOAUTH2\r\n", LOGIN_ACT_CONTINUE, "+ \r\n");
	snprintf(line, sizeof(line), "%s\r\n", xo);
	sasl(&ctx, line);
	expect_creds("XOAUTH2 line", LOGIN_MECH_XOAUTH2, "someuser@example.com", NULL,
	    "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg", 45);
	CHECK(r.creds.rawlen == strlen(xo) && memcmp(r.creds.raw, xo, r.creds.rawlen) == 0, "raw kept");
	login_creds_wipe(&r.creds);
	snprintf(line, sizeof(line), "%s\r\n", ob);
	expect(&ctx, "o AUTHENTICATE OAUTHBEARER\r\n", LOGIN_ACT_CONTINUE, "+ \r\n");
	sasl(&ctx, line);
	expect_creds("OAUTHBEARER line", LOGIN_MECH_OAUTHBEARER, "user@example.com", NULL,
	    "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==", 42);
	CHECK(r.creds.rawlen == strlen(ob) && memcmp(r.creds.raw, ob, r.creds.rawlen) == 0, "raw kept");
	CHECK(strcmp(r.tag, "o") == 0, "tag");
	login_creds_wipe(&r.creds);
	snprintf(line, sizeof(line), "o AUTHENTICATE OAUTHBEARER %s\r\n",
	    enc("y,a=a=2Cb=3Dc,\x01" "auth=bearer T0k-en\x01\x01", 35, b));
	cmd(&ctx, line);
	expect_creds("OAUTHBEARER escapes", LOGIN_MECH_OAUTHBEARER, "a,b=c", NULL, "T0k-en", 6);
	login_creds_wipe(&r.creds);
	static const struct { int mech; const char *m; } badoauth[] = {
		{ 0, "user=u\x01" "auth=Bearer t\x01" },		/* no final ^A */
		{ 0, "user=u\x01" "auth=Bearer t\x01\x01x" },	/* trailing bytes */
		{ 0, "auth=Bearer t\x01\x01" },			/* no user */
		{ 0, "user=u\x01\x01" },				/* no token */
		{ 0, "user=u\x01" "auth=Basic dDp0\x01\x01" },
		{ 0, "user=u\x01" "auth=Bearer \x01\x01" },
		{ 0, "user=u\x01" "auth=Bearer a b\x01\x01" },
		{ 0, "user=u\x01user=v\x01" "auth=Bearer t\x01\x01" },
		{ 0, "user=u\x01junk\x01" "auth=Bearer t\x01\x01" },
		{ 1, "n,a=u\x01" "auth=Bearer t\x01\x01" },	/* gs2 header not closed */
		{ 1, "p=tls-unique,a=u,\x01" "auth=Bearer t\x01\x01" },
		{ 1, "n,a=u=2X,\x01" "auth=Bearer t\x01\x01" },
		{ 1, "n,a=u=2,\x01" "auth=Bearer t\x01\x01" },
		{ 1, "n,a=u,auth=Bearer t\x01\x01" },
		{ 1, "n,a=u,\x01" "auth=Bearer t\x01" },
		{ 1, "n" },
	};
	for (size_t i = 0; i < sizeof(badoauth) / sizeof(badoauth[0]); i++) {
		snprintf(line, sizeof(line), "o AUTHENTICATE %s %s\r\n",
		    badoauth[i].mech ? "OAUTHBEARER" : "XOAUTH2",
		    enc(badoauth[i].m, strlen(badoauth[i].m), b));
		cmd(&ctx, line);
		CHECK(strcmp(r.reply, "o NO [AUTHENTICATIONFAILED] Authentication failed\r\n") == 0,
		    "bad OAuth %zu: %s", i, r.reply);
	}
	snprintf(line, sizeof(line), "o AUTHENTICATE OAUTHBEARER %s\r\n",
	    enc("n,,\x01" "auth=Bearer t\x01\x01", 19, b));
	expect(&ctx, line, LOGIN_ACT_REPLY,
	    "o NO [AUTHENTICATIONFAILED] OAUTHBEARER needs the user name (a=)\r\n");
	login_ctx_init(&ctx, LOGIN_CTX_TLS);
	expect(&ctx, "o AUTHENTICATE XOAUTH2\r\n", LOGIN_ACT_REPLY,
	    "o NO Unsupported authentication mechanism\r\n");
	expect(&ctx, "o AUTHENTICATE oauthbearer\r\n", LOGIN_ACT_REPLY,
	    "o NO Unsupported authentication mechanism\r\n");

	/* A SASL response over LOGIN_MAX_SASL is NO [LIMIT]. */
	cmd(&ctx, "t AUTHENTICATE PLAIN\r\n");
	memset(line, 'A', LOGIN_MAX_SASL + 4);
	strcpy(line + LOGIN_MAX_SASL + 4, "\r\n");
	sasl(&ctx, line);
	CHECK(strcmp(r.reply, "t NO [LIMIT] Authentication response too long\r\n") == 0,
	    "long SASL: %s", r.reply);
	login_ctx_free(&ctx);
}

/* Check a builder's PLAIN response decodes to want (n bytes). */
static void
expect_plain(const char *what, const char *b64s, size_t len, const char *want, size_t n)
{
	unsigned char out[256];
	int got = dec(b64s, len, out);

	CHECK(got == (int)n && memcmp(out, want, n) == 0, "%s: decoded %d bytes", what, got);
}

/* The backend login builders for each capability combination, and wiping. */
static void
test_backend(void)
{
	struct login_ctx ctx;
	struct login_creds pw, az, xo, ob;
	char buf[1024], tiny[24];
	int n, cont;
	const char *sp;

	sp = "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE LITERAL+ AUTH=PLAIN";
	CHECK(login_backend_caps(sp, strlen(sp)) == (LOGIN_BCAP_SASL_IR | LOGIN_BCAP_LITERALPLUS |
	    LOGIN_BCAP_AUTH_PLAIN), "Dovecot list");
	sp = "[CAPABILITY IMAP4rev1 auth=plain STARTTLS LOGINDISABLED]";
	CHECK(login_backend_caps(sp, strlen(sp)) == (LOGIN_BCAP_AUTH_PLAIN |
	    LOGIN_BCAP_LOGINDISABLED), "bracketed, lower case");
	sp = "AUTH=PLAINX XAUTH=PLAIN LITERAL- AUTH=XOAUTH2 AUTH=OAUTHBEARER\r\n";
	CHECK(login_backend_caps(sp, strlen(sp)) == (LOGIN_BCAP_LITERALMINUS | LOGIN_BCAP_XOAUTH2 |
	    LOGIN_BCAP_OAUTHBEARER), "whole words only");
	CHECK(login_backend_caps("SASL-IR", 4) == 0, "bounded by len");

	login_ctx_init(&ctx, LOGIN_CTX_TLS | LOGIN_CTX_OAUTH);
	cmd(&ctx, "a LOGIN alice \"se\\\"cr\\\\et\"\r\n");
	pw = r.creds;
	cmd(&ctx, "a AUTHENTICATE PLAIN YWRtaW4AYWxpY2UAc2VjcmV0\r\n");
	az = r.creds;
	snprintf(buf, sizeof(buf), "a AUTHENTICATE XOAUTH2 %s\r\n",
	    "dXNlcj11AWF1dGg9QmVhcmVyIHQBAQ==");
	cmd(&ctx, buf);
	xo = r.creds;
	cmd(&ctx, "a AUTHENTICATE OAUTHBEARER bixhPXUsAWF1dGg9QmVhcmVyIHQBAQ==\r\n");
	ob = r.creds;
	CHECK(pw.user && az.authz && xo.raw && ob.raw, "creds for the builders");
	if (!(pw.user && az.authz && xo.raw && ob.raw))
		return;

	n = login_backend_auth(&pw, "B1", LOGIN_BCAP_SASL_IR | LOGIN_BCAP_AUTH_PLAIN,
	    NULL, NULL, NULL, buf, sizeof(buf), &cont);
	CHECK(n > 0 && cont == 0 && strncmp(buf, "B1 AUTHENTICATE PLAIN ", 22) == 0 &&
	    strcmp(buf + n - 2, "\r\n") == 0, "PLAIN IR: %s", buf);
	expect_plain("PLAIN IR", buf + 22, (size_t)n - 24, "\0alice\0se\"cr\\et", 15);
	n = login_backend_auth(&pw, "B2", LOGIN_BCAP_AUTH_PLAIN, NULL, NULL, NULL, buf,
	    sizeof(buf), &cont);
	CHECK(n > 0 && cont == 1 && strcmp(buf, "B2 AUTHENTICATE PLAIN\r\n") == 0, "PLAIN: %s", buf);
	n = login_backend_continuation(&pw, LOGIN_BCAP_AUTH_PLAIN, NULL, NULL, buf, sizeof(buf));
	CHECK(n > 2 && strcmp(buf + n - 2, "\r\n") == 0, "continuation: %s", buf);
	expect_plain("continuation", buf, (size_t)n - 2, "\0alice\0se\"cr\\et", 15);
	n = login_backend_auth(&pw, "B3", LOGIN_BCAP_SASL_IR, NULL, NULL, NULL, buf, sizeof(buf),
	    &cont);
	CHECK(n > 0 && cont == 0 && strcmp(buf, "B3 LOGIN \"alice\" \"se\\\"cr\\\\et\"\r\n") == 0,
	    "LOGIN quoted: %s", buf);
	CHECK(login_backend_continuation(&pw, 0, NULL, NULL, buf, sizeof(buf)) == -1,
	    "no continuation for LOGIN");
	CHECK(login_backend_auth(&pw, "B4", LOGIN_BCAP_LOGINDISABLED, NULL, NULL, NULL, buf,
	    sizeof(buf), &cont) == -1, "LOGINDISABLED without AUTH=PLAIN");
	n = login_backend_auth(&pw, "B4", LOGIN_BCAP_LOGINDISABLED | LOGIN_BCAP_AUTH_PLAIN |
	    LOGIN_BCAP_SASL_IR, NULL, NULL, NULL, buf, sizeof(buf), &cont);
	CHECK(n > 0 && strncmp(buf, "B4 AUTHENTICATE PLAIN ", 22) == 0, "LOGINDISABLED, PLAIN");

	/* Passwords that cannot be quoted: literals with LITERAL+ (or short, LITERAL-). */
	cmd(&ctx, "a LOGIN {5}\r\nj\xc3\xb6rg {3}\r\np\nw\r\n");
	n = login_backend_auth(&r.creds, "B5", LOGIN_BCAP_LITERALPLUS, NULL, NULL, NULL, buf,
	    sizeof(buf), &cont);
	CHECK(n > 0 && memcmp(buf, "B5 LOGIN {5+}\r\nj\xc3\xb6rg {3+}\r\np\nw\r\n", (size_t)n) == 0 &&
	    n == 32, "LOGIN literals: %s", buf);
	n = login_backend_auth(&r.creds, "B5", LOGIN_BCAP_LITERALMINUS, NULL, NULL, NULL, buf,
	    sizeof(buf), &cont);
	CHECK(n == 32, "LITERAL- short literals");
	CHECK(login_backend_auth(&r.creds, "B5", 0, NULL, NULL, NULL, buf, sizeof(buf), &cont) == -1,
	    "no literal: no way");
	login_creds_wipe(&r.creds);

	/* An authorization identity needs PLAIN. */
	n = login_backend_auth(&az, "B6", LOGIN_BCAP_SASL_IR | LOGIN_BCAP_AUTH_PLAIN, NULL, NULL,
	    NULL, buf, sizeof(buf), &cont);
	CHECK(n > 0, "authz PLAIN");
	expect_plain("authz PLAIN", buf + 22, (size_t)n - 24, "admin\0alice\0secret", 18);
	CHECK(login_backend_auth(&az, "B6", LOGIN_BCAP_LITERALPLUS, NULL, NULL, NULL, buf,
	    sizeof(buf), &cont) == -1, "authz without PLAIN");
	CHECK(login_backend_auth(&az, "B6", LOGIN_BCAP_AUTH_PLAIN | LOGIN_BCAP_SASL_IR, "master",
	    "mpw", "*", buf, sizeof(buf), &cont) == -1, "authz with master credentials");

	/* Master credentials. */
	n = login_backend_auth(&pw, "B7", LOGIN_BCAP_SASL_IR | LOGIN_BCAP_AUTH_PLAIN, "master",
	    "m\"pw", "*", buf, sizeof(buf), &cont);
	CHECK(n > 0 && cont == 0, "master PLAIN");
	expect_plain("master PLAIN", buf + 22, (size_t)n - 24, "alice\0master\0m\"pw", 17);
	n = login_backend_auth(&pw, "B7", LOGIN_BCAP_AUTH_PLAIN, "master", "m\"pw", "*", buf,
	    sizeof(buf), &cont);
	CHECK(n > 0 && cont == 1, "master PLAIN, continuation");
	n = login_backend_continuation(&pw, LOGIN_BCAP_AUTH_PLAIN, "master", "m\"pw", buf,
	    sizeof(buf));
	expect_plain("master continuation", buf, (size_t)n - 2, "alice\0master\0m\"pw", 17);
	n = login_backend_auth(&pw, "B8", 0, "master", "m\"pw", "*", buf, sizeof(buf), &cont);
	CHECK(n > 0 && strcmp(buf, "B8 LOGIN \"alice*master\" \"m\\\"pw\"\r\n") == 0,
	    "master LOGIN: %s", buf);
	CHECK(login_backend_auth(&pw, "B8", 0, "master", "mpw", NULL, buf, sizeof(buf), &cont) == -1,
	    "master LOGIN without a separator");
	n = login_backend_auth(&pw, "B8", 0, "", "mpw", NULL, buf, sizeof(buf), &cont);
	CHECK(n > 0 && strncmp(buf, "B8 LOGIN \"alice\" ", 17) == 0, "empty master user: none");

	/* OAuth: the same mechanism and response; never master credentials. */
	n = login_backend_auth(&xo, "B9", LOGIN_BCAP_SASL_IR | LOGIN_BCAP_XOAUTH2 |
	    LOGIN_BCAP_AUTH_PLAIN, "master", "mpw", "*", buf, sizeof(buf), &cont);
	CHECK(n > 0 && cont == 0 &&
	    strcmp(buf, "B9 AUTHENTICATE XOAUTH2 dXNlcj11AWF1dGg9QmVhcmVyIHQBAQ==\r\n") == 0,
	    "XOAUTH2 IR: %s", buf);
	n = login_backend_auth(&xo, "B9", LOGIN_BCAP_XOAUTH2, NULL, NULL, NULL, buf, sizeof(buf),
	    &cont);
	CHECK(n > 0 && cont == 1 && strcmp(buf, "B9 AUTHENTICATE XOAUTH2\r\n") == 0, "XOAUTH2");
	n = login_backend_continuation(&xo, LOGIN_BCAP_XOAUTH2, NULL, NULL, buf, sizeof(buf));
	CHECK(n > 0 && strcmp(buf, "dXNlcj11AWF1dGg9QmVhcmVyIHQBAQ==\r\n") == 0, "XOAUTH2 line");
	CHECK(login_backend_auth(&xo, "B9", LOGIN_BCAP_SASL_IR | LOGIN_BCAP_AUTH_PLAIN |
	    LOGIN_BCAP_OAUTHBEARER, NULL, NULL, NULL, buf, sizeof(buf), &cont) == -1,
	    "XOAUTH2 not offered");
	n = login_backend_auth(&ob, "BA", LOGIN_BCAP_SASL_IR | LOGIN_BCAP_OAUTHBEARER, NULL, NULL,
	    NULL, buf, sizeof(buf), &cont);
	CHECK(n > 0 && strcmp(buf, "BA AUTHENTICATE OAUTHBEARER bixhPXUsAWF1dGg9QmVhcmVyIHQBAQ==\r\n")
	    == 0, "OAUTHBEARER IR: %s", buf);
	CHECK(login_backend_auth(&ob, "BA", LOGIN_BCAP_XOAUTH2, NULL, NULL, NULL, buf, sizeof(buf),
	    &cont) == -1, "OAUTHBEARER not offered");

	/* Too small, bad tag: -1, and nothing of the secret left in the buffer. */
	memset(tiny, 'x', sizeof(tiny));
	CHECK(login_backend_auth(&pw, "B1", LOGIN_BCAP_SASL_IR | LOGIN_BCAP_AUTH_PLAIN, NULL, NULL,
	    NULL, tiny, sizeof(tiny), &cont) == -1 && cont == 0, "small buffer");
	for (size_t i = 0; i < sizeof(tiny); i++)
		CHECK(tiny[i] == 0, "small buffer wiped at %zu", i);
	CHECK(login_backend_auth(&pw, "B 1", 0, NULL, NULL, NULL, buf, sizeof(buf), &cont) == -1,
	    "bad tag");
	CHECK(login_backend_auth(&pw, "", 0, NULL, NULL, NULL, buf, sizeof(buf), &cont) == -1,
	    "empty tag");

	/* Wiping: every credential buffer is zero when freed. */
	watch_set(0, pw.user, strlen(pw.user));
	watch_set(1, pw.secret, pw.secretlen);
	login_creds_wipe(&pw);
	CHECK(watch[0].freed == 1 && watch[1].freed == 1, "LOGIN creds wiped: %d %d",
	    watch[0].freed, watch[1].freed);
	CHECK(pw.user == NULL && pw.secret == NULL && pw.secretlen == 0, "creds cleared");
	watch_set(0, az.user, strlen(az.user));
	watch_set(1, az.authz, strlen(az.authz));
	watch_set(2, az.secret, az.secretlen);
	login_creds_wipe(&az);
	CHECK(watch[0].freed == 1 && watch[1].freed == 1 && watch[2].freed == 1, "PLAIN creds wiped");
	watch_set(0, xo.user, strlen(xo.user));
	watch_set(1, xo.secret, xo.secretlen);
	watch_set(2, xo.raw, xo.rawlen);
	login_creds_wipe(&xo);
	CHECK(watch[0].freed == 1 && watch[1].freed == 1 && watch[2].freed == 1, "OAuth creds wiped");
	login_creds_wipe(&ob);
	login_creds_wipe(&ob);	/* twice is harmless */
	/* The wrapper itself notices a buffer that was not wiped. */
	/* (through a volatile pointer: GCC assumes free leaves globals alone) */
	sp = strdup("not wiped");
	watch_set(3, sp, 9);
	freep((void *)sp);
	CHECK(watch[3].freed == -1, "wrapper sees unwiped memory");
	login_ctx_free(&ctx);
}

/* Run every test; exit 1 on any failure. */
int
main(void)
{
	test_capabilities();
	test_simple();
	test_starttls();
	test_login_cmd();
	test_id();
	test_sasl();
	test_backend();
	printf("%d checks, %d failures\n", checks, failures);
	return failures != 0;
}
