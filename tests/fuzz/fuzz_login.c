/*
 * fuzz_login: libFuzzer target for the pre-login server (proxy/login.c).
 *
 * Input: three bytes of settings (the listener's LOGIN_CTX_ flags, the
 * backend's LOGIN_BCAP_ bits, master credentials or not), then client
 * bytes.  Those are cut into commands the way the session's framing does
 * (a line, or a line part ending in a literal header "{n}" followed by n
 * bytes and the rest of the line) and fed to login_command, or to
 * login_sasl_line after LOGIN_ACT_CONTINUE (and read as a backend
 * capability list).  Every answer is checked for shape; credentials go
 * through the backend builders, whose PLAIN response must decode back to
 * them.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "login.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_BUF	(3 * LOGIN_MAX_SECRET)

static const char fuzz_b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Decode base64 s[0..n) (no validation: the builder wrote it) into out; the length. */
static size_t
fuzz_dec(const char *s, size_t n, unsigned char *out)
{
	unsigned v = 0;
	int bits = 0;
	size_t o = 0;

	for (size_t i = 0; i < n && s[i] != '='; i++) {
		const char *at = memchr(fuzz_b64, s[i], 64);
		if (at == NULL)
			abort();
		v = v << 6 | (unsigned)(at - fuzz_b64);
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out[o++] = (unsigned char)(v >> bits);
		}
	}
	return o;
}

/*
 * Where the command at data[0..size) ends, as the framing cuts it: at a
 * line end, unless the line part ends with "{n}" or "{n+}" (up to six
 * digits): then n literal bytes follow and the line goes on.
 */
static size_t
fuzz_cut(const uint8_t *data, size_t size)
{
	size_t i = 0, e, d, lit;
	const uint8_t *lf;

	for (;;) {
		lf = memchr(data + i, '\n', size - i);
		if (lf == NULL)
			return size;
		e = (size_t)(lf - data);
		if (e > i && data[e - 1] == '\r')
			e--;
		if (e == i || data[e - 1] != '}')
			return (size_t)(lf - data) + 1;
		e--;
		if (e > i && data[e - 1] == '+')
			e--;
		for (d = e; d > i && data[d - 1] >= '0' && data[d - 1] <= '9'; d--)
			;
		if (d == e || d == i || data[d - 1] != '{' || e - d > 6)
			return (size_t)(lf - data) + 1;
		for (lit = 0; d < e; d++)
			lit = lit * 10 + (size_t)(data[d] - '0');
		i = (size_t)(lf - data) + 1;
		if (lit > size - i)
			return size;
		i += lit;
	}
}

/* An answer's lines: tag, "*" or "+" first, printable ASCII, CRLF ends. */
static void
fuzz_check_reply(const struct login_result *r)
{
	size_t i = 0, tl = strlen(r->tag);

	if (r->replylen >= LOGIN_MAX_REPLY || strlen(r->reply) != r->replylen)
		abort();
	if ((r->replylen == 0) != (r->act == LOGIN_ACT_AUTH))
		abort();
	if (r->act == LOGIN_ACT_CONTINUE && strncmp(r->reply, "+ ", 2) != 0)
		abort();
	while (i < r->replylen) {
		if (!(tl > 0 && strncmp(r->reply + i, r->tag, tl) == 0 &&
		    r->reply[i + tl] == ' ') && strncmp(r->reply + i, "* ", 2) != 0 && strncmp(r->reply + i, "+ ", 2) != 0)
			abort();
		for (; r->reply[i] != '\r'; i++)
			if (r->reply[i] < 0x20 || r->reply[i] > 0x7e)
				abort();
		if (r->reply[i + 1] != '\n')
			abort();
		i += 2;
	}
}

/* Credentials as login_command promises them. */
static void
fuzz_check_creds(const struct login_creds *c)
{
	int oauth = c->mech == LOGIN_MECH_XOAUTH2 || c->mech == LOGIN_MECH_OAUTHBEARER;

	if (c->user == NULL || c->user[0] == '\0' || strlen(c->user) > LOGIN_MAX_USER)
		abort();
	if (c->secret == NULL || strlen(c->secret) != c->secretlen ||
	    c->secretlen > LOGIN_MAX_SECRET)
		abort();
	if (c->authz != NULL && (c->authz[0] == '\0' || strcmp(c->authz, c->user) == 0))
		abort();
	if ((c->raw != NULL) != oauth || (oauth && c->rawlen > LOGIN_MAX_SASL))
		abort();
}

/* A backend command: tag first, CRLF last; a PLAIN response decodes to the credentials. */
static void
fuzz_backend(const struct login_creds *c, unsigned caps, int master)
{
	static char buf[FUZZ_BUF];
	static unsigned char m[FUZZ_BUF];
	const char *mu = master ? "master" : NULL, *mp = master ? "mpass" : NULL;
	const char *sep = master & 2 ? "*" : NULL;
	int n, cont;
	size_t ml, ul;

	n = login_backend_auth(c, "T1", caps, mu, mp, sep, buf, sizeof(buf), &cont);
	if (n < 0)
		return;
	if (n < 6 || strncmp(buf, "T1 ", 3) != 0 || memcmp(buf + n - 2, "\r\n", 2) != 0)
		abort();
	if (strncmp(buf, "T1 AUTHENTICATE PLAIN ", 22) == 0) {
		ml = fuzz_dec(buf + 22, (size_t)n - 24, m);
		ul = strlen(c->user);
		if (master ? (ml < ul + 1 || memcmp(m, c->user, ul + 1) != 0) :
		    (ml < c->secretlen ||
		    memcmp(m + ml - c->secretlen, c->secret, c->secretlen) != 0))
			abort();
	}
	if (cont) {
		n = login_backend_continuation(c, caps, mu, mp, buf, sizeof(buf));
		if (n < 2 || memcmp(buf + n - 2, "\r\n", 2) != 0)
			abort();
	}
	explicit_bzero(buf, sizeof(buf));
}

/* The ID for the backend: one line, one extra pair always first. */
static void
fuzz_id(const struct login_ctx *ctx)
{
	static const char *const extra[] = { "x-originating-ip", "192.0.2.7" };
	static char buf[LOGIN_ID_MAX_PAIRS * (2 * LOGIN_ID_MAX_VALUE + 80)];
	int n = login_id_build(ctx, "T2", extra, 1, buf, sizeof(buf));

	if (n < 0 || strncmp(buf, "T2 ID (\"x-originating-ip\" \"192.0.2.7\"", 37) != 0)
		abort();
	if (memchr(buf, '\n', (size_t)n - 1) != NULL || memchr(buf, '\r', (size_t)n - 2) != NULL)
		abort();
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct login_ctx ctx;
	struct login_result r;
	enum login_action last = LOGIN_ACT_REPLY;
	char out[512];
	unsigned caps;
	int master, rc;
	size_t n;

	if (size < 3)
		return 0;
	login_ctx_init(&ctx, data[0] & 0x0f);
	caps = data[1] & 0x7f;
	master = data[2] & 3;
	data += 3;
	size -= 3;
	if (login_greeting(&ctx, size > 0 && data[0] == '!' ? "x\x01y" : "Ready", out,
	    sizeof(out)) <= 0)
		abort();
	while (size > 0) {
		n = fuzz_cut(data, size);
		/* The same bytes as a backend's capability list. */
		if (login_backend_caps((const char *)data, n) & ~0x7fu)
			abort();
		if (last == LOGIN_ACT_CONTINUE)
			rc = login_sasl_line(&ctx, (const char *)data, n, &r);
		else
			rc = login_command(&ctx, (const char *)data, n, &r);
		if (rc != 0 && rc != -1)
			abort();
		fuzz_check_reply(&r);
		if ((ctx.sasl_mech != LOGIN_MECH_NONE) != (r.act == LOGIN_ACT_CONTINUE))
			abort();
		if (ctx.nid > LOGIN_ID_MAX_PAIRS)
			abort();
		if (r.act == LOGIN_ACT_AUTH) {
			fuzz_check_creds(&r.creds);
			fuzz_backend(&r.creds, caps, master);
			login_creds_wipe(&r.creds);
		}
		if (r.act == LOGIN_ACT_STARTTLS)
			login_tls_started(&ctx);
		if (ctx.nid > 0)
			fuzz_id(&ctx);
		last = r.act;
		data += n;
		size -= n;
	}
	if (login_capabilities(&ctx, out, sizeof(out)) <= 0)
		abort();
	login_ctx_free(&ctx);
	return 0;
}
