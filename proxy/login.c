/* login: the pre-login IMAP server and the backend login builders (see login.h). */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "imapcmd.h"
#include "login.h"

#define LOGIN_MAX_NAME		32	/* longest command or mechanism name we compare */

static const char login_b64chars[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Where a builder writes: buf[0..len), always NUL-terminated while it fits. */
struct login_out {
	char	*buf;
	size_t	 len;
	size_t	 pos;
	int	 full;		/* something did not fit: the result is -1 */
};

/* A cursor over a command's bytes; never moves past len. */
struct login_cur {
	const unsigned char	*s;
	size_t			 len;
	size_t			 pos;
};

enum login_argkind {
	LOGIN_ARG_ATOM,
	LOGIN_ARG_QUOTED,
	LOGIN_ARG_LITERAL,
};

/* A string argument as found in the command (nothing copied yet). */
struct login_arg {
	enum login_argkind	 kind;
	const unsigned char	*p;	/* atom, inside of the quotes (escapes kept), literal data */
	size_t			 n;	/* bytes at p */
	size_t			 declen;	/* bytes once the escapes are removed */
};

/* A piece of a decoded SASL message. */
struct login_span {
	const unsigned char	*p;
	size_t			 n;
};

/* Start writing into buf. */
static void
login_out_init(struct login_out *o, char *buf, size_t len)
{
	o->buf = buf;
	o->len = len;
	o->pos = 0;
	o->full = len == 0;
	if (len > 0)
		buf[0] = '\0';
}

/* Append n bytes (room for the NUL is kept). */
static void
login_put(struct login_out *o, const void *p, size_t n)
{
	if (o->full || n == 0)
		return;
	if (n >= o->len - o->pos) {
		o->full = 1;
		return;
	}
	memcpy(o->buf + o->pos, p, n);
	o->pos += n;
	o->buf[o->pos] = '\0';
}

/* Append a C string. */
static void
login_puts(struct login_out *o, const char *s)
{
	login_put(o, s, strlen(s));
}

/* Append a decimal number. */
static void
login_putnum(struct login_out *o, size_t v)
{
	char d[24];
	size_t i = sizeof(d);

	do {
		d[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v > 0);
	login_put(o, d + i, sizeof(d) - i);
}

/* The builder's result: its length, or -1 (wiping buf) if it did not fit. */
static int
login_out_done(struct login_out *o)
{
	if (o->full) {
		if (o->len > 0)
			explicit_bzero(o->buf, o->len);
		return -1;
	}
	return (int)o->pos;
}

/* Is c an ATOM-CHAR (RFC 9051 section 9)? */
static int
login_is_atom_char(unsigned char c)
{
	return c > 0x20 && c < 0x7f && strchr("(){%*\"\\]", c) == NULL;
}

/* Is c an ASTRING-CHAR (ATOM-CHAR or "]")? */
static int
login_is_astring_char(unsigned char c)
{
	return c == ']' || login_is_atom_char(c);
}

/* Is c allowed in a tag (ASTRING-CHAR except "+")? */
static int
login_is_tag_char(unsigned char c)
{
	return c != '+' && login_is_astring_char(c);
}

/* Is s a tag we can write (1 to LOGIN_MAX_TAG tag characters)? */
static int
login_tag_ok(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n > LOGIN_MAX_TAG)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (!login_is_tag_char((unsigned char)s[i]))
			return 0;
	return 1;
}

/* Can p[0..n) go in a quoted string (RFC 3501 TEXT-CHAR: 7-bit, no CR/LF/NUL)? */
static int
login_quotable(const unsigned char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] == 0 || p[i] == '\r' || p[i] == '\n' || p[i] >= 0x80)
			return 0;
	return 1;
}

/* Append p[0..n) as a quoted string (the caller checked login_quotable). */
static void
login_put_quoted(struct login_out *o, const unsigned char *p, size_t n)
{
	login_put(o, "\"", 1);
	for (size_t i = 0; i < n; i++) {
		if (p[i] == '"' || p[i] == '\\')
			login_put(o, "\\", 1);
		login_put(o, p + i, 1);
	}
	login_put(o, "\"", 1);
}

/*
 * Append p[0..n) as a string a backend with capabilities caps reads:
 * quoted if it can be, else a non-synchronizing literal (the login
 * dialog does not wait for "+" inside a command).  -1 if neither.
 */
static int
login_put_string(struct login_out *o, const unsigned char *p, size_t n, unsigned caps)
{
	if (login_quotable(p, n)) {
		login_put_quoted(o, p, n);
		return 0;
	}
	if (!(caps & LOGIN_BCAP_LITERALPLUS) &&
	    !((caps & LOGIN_BCAP_LITERALMINUS) && n <= LOGIN_LITERALMINUS_MAX))
		return -1;
	login_put(o, "{", 1);
	login_putnum(o, n);
	login_put(o, "+}\r\n", 4);
	login_put(o, p, n);
	return 0;
}

/* Append p[0..n) in base64. */
static void
login_b64_put(struct login_out *o, const unsigned char *p, size_t n)
{
	char q[4];

	for (size_t i = 0; i < n; i += 3) {
		uint32_t v = (uint32_t)p[i] << 16;

		if (i + 1 < n)
			v |= (uint32_t)p[i + 1] << 8;
		if (i + 2 < n)
			v |= p[i + 2];
		q[0] = login_b64chars[(v >> 18) & 63];
		q[1] = login_b64chars[(v >> 12) & 63];
		q[2] = i + 1 < n ? login_b64chars[(v >> 6) & 63] : '=';
		q[3] = i + 2 < n ? login_b64chars[v & 63] : '=';
		login_put(o, q, 4);
	}
	explicit_bzero(q, sizeof(q));
}

/* Value of one base64 character, -1 if it is none (NUL and "=" included). */
static int
login_b64_digit(unsigned char c)
{
	const char *at = c != 0 ? memchr(login_b64chars, c, 64) : NULL;

	return at != NULL ? (int)(at - login_b64chars) : -1;
}

/*
 * Decode in[0..n) into out (room for n / 4 * 3 bytes).  Strict RFC 4648:
 * padded to a multiple of 4, "=" only at the end, unused bits zero; RFC
 * 9051 6.2.2 wants anything else refused.  Returns the length or -1.
 */
static long
login_b64_decode(const unsigned char *in, size_t n, unsigned char *out)
{
	size_t i, o = 0;
	uint32_t v;
	int d[4], pad, k;

	if (n % 4 != 0)
		return -1;
	for (i = 0; i < n; i += 4) {
		pad = 0;
		for (k = 0; k < 4; k++) {
			d[k] = login_b64_digit(in[i + k]);
			if (d[k] < 0) {
				/* "=" may end the last quad: "xx==" or "xxx=". */
				if (in[i + k] != '=' || i + 4 != n || k < 2 ||
				    (k == 2 && in[i + 3] != '='))
					return -1;
				d[k] = 0;
				pad++;
			}
		}
		v = (uint32_t)d[0] << 18 | (uint32_t)d[1] << 12 | (uint32_t)d[2] << 6 |
		    (uint32_t)d[3];
		if ((pad == 2 && (v & 0xffff) != 0) || (pad == 1 && (v & 0xff) != 0))
			return -1;
		out[o++] = (unsigned char)(v >> 16);
		if (pad < 2)
			out[o++] = (unsigned char)(v >> 8);
		if (pad < 1)
			out[o++] = (unsigned char)v;
	}
	explicit_bzero(&v, sizeof(v));
	explicit_bzero(d, sizeof(d));
	return (long)o;
}

/* Wipe and free a NUL-terminated heap string. */
static void
login_free_str(char *s)
{
	if (s == NULL)
		return;
	explicit_bzero(s, strlen(s));
	free(s);
}

/* A heap copy of p[0..n) with a NUL after it. */
static char *
login_dup(const void *p, size_t n)
{
	char *d = malloc(n + 1);

	if (d == NULL)
		return NULL;
	memcpy(d, p, n);
	d[n] = '\0';
	return d;
}

/* Zero each credential before it is freed. */
void
login_creds_wipe(struct login_creds *c)
{
	login_free_str(c->user);
	login_free_str(c->authz);
	if (c->secret != NULL) {
		explicit_bzero(c->secret, c->secretlen);
		free(c->secret);
	}
	if (c->raw != NULL) {
		explicit_bzero(c->raw, c->rawlen);
		free(c->raw);
	}
	memset(c, 0, sizeof(*c));
}

/* Drop the client's ID parameters. */
static void
login_id_clear(struct login_id_pair *id, size_t *n)
{
	for (size_t i = 0; i < *n; i++) {
		free(id[i].field);
		free(id[i].value);
		id[i].field = id[i].value = NULL;
	}
	*n = 0;
}

/* End the AUTHENTICATE exchange in progress, wiping what it kept. */
static void
login_sasl_end(struct login_ctx *ctx)
{
	login_free_str(ctx->sasl_user);
	ctx->sasl_user = NULL;
	ctx->sasl_mech = LOGIN_MECH_NONE;
	ctx->sasl_step = 0;
	ctx->sasl_tag[0] = '\0';
}

/* A fresh context: nothing said yet. */
void
login_ctx_init(struct login_ctx *ctx, unsigned flags)
{
	memset(ctx, 0, sizeof(*ctx));
	ctx->flags = flags;
}

/* Wipe the SASL exchange and free the ID pairs. */
void
login_ctx_free(struct login_ctx *ctx)
{
	login_sasl_end(ctx);
	login_id_clear(ctx->id, &ctx->nid);
}

/*
 * Whatever the client said before TLS may have been injected by someone
 * on the path (the STARTTLS injection class), so its ID goes too.
 */
void
login_tls_started(struct login_ctx *ctx)
{
	ctx->flags |= LOGIN_CTX_TLS;
	ctx->flags &= ~(unsigned)(LOGIN_CTX_STARTTLS | LOGIN_CTX_LOGINDISABLED);
	login_sasl_end(ctx);
	login_id_clear(ctx->id, &ctx->nid);
}

/* Is STARTTLS offered now? */
static int
login_starttls_offered(const struct login_ctx *ctx)
{
	return (ctx->flags & LOGIN_CTX_STARTTLS) && !(ctx->flags & LOGIN_CTX_TLS);
}

/*
 * The AUTH= mechanisms go with LOGINDISABLED: RFC 9051 6.2.3 says a
 * server that refuses plaintext logins should not offer plaintext
 * mechanisms, and a bearer token in clear is no better than a password.
 */
int
login_capabilities(const struct login_ctx *ctx, char *buf, size_t len)
{
	struct login_out o;

	login_out_init(&o, buf, len);
	login_puts(&o, "IMAP4rev1 SASL-IR LITERAL+ ID");
	if (!(ctx->flags & LOGIN_CTX_LOGINDISABLED)) {
		login_puts(&o, " AUTH=PLAIN AUTH=LOGIN");
		if (ctx->flags & LOGIN_CTX_OAUTH)
			login_puts(&o, " AUTH=XOAUTH2 AUTH=OAUTHBEARER");
	}
	if (login_starttls_offered(ctx))
		login_puts(&o, " STARTTLS");
	if (ctx->flags & LOGIN_CTX_LOGINDISABLED)
		login_puts(&o, " LOGINDISABLED");
	return login_out_done(&o);
}

/* The greeting text is configuration: printable ASCII only, bounded. */
int
login_greeting(const struct login_ctx *ctx, const char *text, char *buf, size_t len)
{
	char caps[LOGIN_MAX_CAPS], t[LOGIN_MAX_GREETING_TEXT + 1];
	struct login_out o;
	size_t n = 0;

	for (; text != NULL && *text != '\0' && n < LOGIN_MAX_GREETING_TEXT; text++)
		t[n++] = *text >= 0x20 && *text < 0x7f ? *text : '?';
	t[n] = '\0';
	if (login_capabilities(ctx, caps, sizeof(caps)) < 0)
		return -1;
	login_out_init(&o, buf, len);
	login_puts(&o, "* OK [CAPABILITY ");
	login_puts(&o, caps);
	login_puts(&o, "] ");
	login_puts(&o, n > 0 ? t : "Ready");
	login_puts(&o, "\r\n");
	return login_out_done(&o);
}

/* Clear r before an answer is written into it. */
static void
login_result_init(struct login_result *r)
{
	r->act = LOGIN_ACT_REPLY;
	r->tag[0] = '\0';
	r->reply[0] = '\0';
	r->replylen = 0;
	memset(&r->creds, 0, sizeof(r->creds));
}

/* Append the line "<r->tag or *> <text>\r\n" to r->reply. */
static void
login_reply_line(struct login_result *r, int tagged, const char *text)
{
	struct login_out o;

	/* Every text here is a constant and a tag is at most 64 bytes: it fits. */
	login_out_init(&o, r->reply + r->replylen, sizeof(r->reply) - r->replylen);
	login_puts(&o, tagged ? r->tag : "*");
	login_puts(&o, " ");
	login_puts(&o, text);
	login_puts(&o, "\r\n");
	if (!o.full)
		r->replylen += o.pos;
}

/* Answer the tagged "text" and end the command. */
static int
login_reply(struct login_result *r, const char *text)
{
	login_reply_line(r, 1, text);
	return 0;
}

/* Answer BAD (a protocol error of the client's) and count it. */
static int
login_bad(struct login_ctx *ctx, struct login_result *r, const char *text)
{
	ctx->bads++;
	login_reply_line(r, r->tag[0] != '\0', text);
	return 0;
}

/* Refuse a login attempt with NO (text starts with its response code) and count it. */
static int
login_fail(struct login_ctx *ctx, struct login_result *r, const char *text)
{
	ctx->attempts++;
	login_sasl_end(ctx);
	return login_reply(r, text);
}

/* Out of memory: wipe what r holds and tell the client to try later. */
static int
login_nomem(struct login_ctx *ctx, struct login_result *r)
{
	login_creds_wipe(&r->creds);
	login_sasl_end(ctx);
	r->act = LOGIN_ACT_REPLY;
	login_reply(r, "NO [UNAVAILABLE] Temporary failure, try again later");
	return -1;
}

/* Ask for the next SASL response: "+ <challenge>\r\n". */
static int
login_continue(struct login_result *r, const char *challenge)
{
	struct login_out o;

	login_out_init(&o, r->reply, sizeof(r->reply));
	login_puts(&o, "+ ");
	login_puts(&o, challenge);
	login_puts(&o, "\r\n");
	r->replylen = o.pos;
	r->act = LOGIN_ACT_CONTINUE;
	return 0;
}

/* Is the cursor at a SP? */
static int
login_at_sp(const struct login_cur *c)
{
	return c->pos < c->len && c->s[c->pos] == ' ';
}

/* Step over one SP; 0 if there is none. */
static int
login_sp(struct login_cur *c)
{
	if (!login_at_sp(c))
		return 0;
	c->pos++;
	return 1;
}

/* Is the cursor at the command's end: exactly CRLF or LF left? */
static int
login_at_eol(const struct login_cur *c)
{
	size_t left = c->len - c->pos;

	return (left == 1 && c->s[c->pos] == '\n') ||
	    (left == 2 && c->s[c->pos] == '\r' && c->s[c->pos + 1] == '\n');
}

/* Read an atom of up to max bytes into dst (upper-cased); 0, -1 if empty, -2 if longer. */
static int
login_name(struct login_cur *c, char *dst, size_t max)
{
	size_t n = 0;

	while (c->pos < c->len && login_is_atom_char(c->s[c->pos])) {
		if (n < max)
			dst[n] = (char)(c->s[c->pos] >= 'a' && c->s[c->pos] <= 'z' ?
			    c->s[c->pos] - 'a' + 'A' : c->s[c->pos]);
		n++;
		c->pos++;
	}
	dst[n < max ? n : max] = '\0';
	return n == 0 ? -1 : n > max ? -2 : 0;
}

/* Read a quoted string after its opening quote; 0 or -1. */
static int
login_quoted(struct login_cur *c, struct login_arg *a)
{
	size_t start = c->pos, dec = 0;
	unsigned char ch;

	while (c->pos < c->len) {
		ch = c->s[c->pos];
		if (ch == '"') {
			a->kind = LOGIN_ARG_QUOTED;
			a->p = c->s + start;
			a->n = c->pos - start;
			a->declen = dec;
			c->pos++;
			return 0;
		}
		/* 8-bit bytes pass (RFC 9051 quoted UTF-8); no CR, LF or NUL. */
		if (ch == '\r' || ch == '\n' || ch == 0)
			return -1;
		if (ch == '\\') {
			c->pos++;
			if (c->pos >= c->len || (c->s[c->pos] != '"' && c->s[c->pos] != '\\'))
				return -1;
		}
		c->pos++;
		dec++;
	}
	return -1;
}

/*
 * Read a literal "{n}" or "{n+}", its line end and its n bytes, after the
 * "{".  The length is checked against the bytes left before anything is
 * read; literal data is CHAR8 (RFC 9051 section 9), so a NUL is an error.
 */
static int
login_literal(struct login_cur *c, struct login_arg *a)
{
	size_t v = 0, digits = 0;

	while (c->pos < c->len && c->s[c->pos] >= '0' && c->s[c->pos] <= '9') {
		if (v > (SIZE_MAX - 9) / 10)
			return -1;
		v = v * 10 + (size_t)(c->s[c->pos++] - '0');
		digits++;
	}
	if (digits == 0)
		return -1;
	if (c->pos < c->len && c->s[c->pos] == '+')
		c->pos++;
	if (c->pos >= c->len || c->s[c->pos] != '}')
		return -1;
	c->pos++;
	if (c->pos < c->len && c->s[c->pos] == '\r')
		c->pos++;
	if (c->pos >= c->len || c->s[c->pos] != '\n')
		return -1;
	c->pos++;
	if (v > c->len - c->pos || memchr(c->s + c->pos, 0, v) != NULL)
		return -1;
	a->kind = LOGIN_ARG_LITERAL;
	a->p = c->s + c->pos;
	a->n = a->declen = v;
	c->pos += v;
	return 0;
}

/*
 * Read a string (quoted or literal), or an astring when atom_ok.  A
 * literal8 "~{n}" reads as the atom "~" followed by junk, so it fails.
 */
static int
login_string(struct login_cur *c, int atom_ok, struct login_arg *a)
{
	size_t start = c->pos;

	if (c->pos >= c->len)
		return -1;
	if (c->s[c->pos] == '"') {
		c->pos++;
		return login_quoted(c, a);
	}
	if (c->s[c->pos] == '{') {
		c->pos++;
		return login_literal(c, a);
	}
	if (!atom_ok)
		return -1;
	while (c->pos < c->len && login_is_astring_char(c->s[c->pos]))
		c->pos++;
	if (c->pos == start)
		return -1;
	a->kind = LOGIN_ARG_ATOM;
	a->p = c->s + start;
	a->n = a->declen = c->pos - start;
	return 0;
}

/* A heap copy of the argument with its escapes removed. */
static char *
login_arg_dup(const struct login_arg *a)
{
	char *d;
	size_t i, j = 0;

	if (a->kind != LOGIN_ARG_QUOTED)
		return login_dup(a->p, a->n);
	d = malloc(a->declen + 1);
	if (d == NULL)
		return NULL;
	for (i = 0; i < a->n; i++) {
		if (a->p[i] == '\\')
			i++;
		d[j++] = (char)a->p[i];
	}
	d[j] = '\0';
	return d;
}

/*
 * Why a user (or authorization) name cannot log in, as a NO text, or
 * NULL if it can.  Too long is an implementation limit (RFC 5530 LIMIT),
 * not a syntax error; empty or with control bytes it is no user anyone
 * has, and it must not reach the user lookup (HTTP headers, logs).
 */
static const char *
login_user_refusal(const unsigned char *u, size_t n)
{
	if (n > LOGIN_MAX_USER)
		return "NO [LIMIT] User name too long";
	if (n == 0)
		return "NO [AUTHENTICATIONFAILED] Authentication failed";
	for (size_t i = 0; i < n; i++)
		if (u[i] < 0x20 || u[i] == 0x7f)
			return "NO [AUTHENTICATIONFAILED] Authentication failed";
	return NULL;
}

/*
 * The exchange gave credentials: check them, copy them into r->creds and
 * hand them to the caller (LOGIN_ACT_AUTH), or refuse with NO.  authz
 * equal to the user is dropped: it asks for nothing more.
 */
static int
login_creds_set(struct login_ctx *ctx, struct login_result *r, enum login_mech mech,
    struct login_span user, struct login_span authz, struct login_span secret,
    struct login_span raw)
{
	const char *why = login_user_refusal(user.p, user.n);
	struct login_creds *cr = &r->creds;

	if (why == NULL && secret.n > LOGIN_MAX_SECRET)
		why = "NO [LIMIT] Password too long";
	if (authz.n == user.n && authz.n > 0 && memcmp(authz.p, user.p, user.n) == 0)
		authz.n = 0;
	if (why == NULL && authz.n > 0)
		why = login_user_refusal(authz.p, authz.n);
	if (why != NULL)
		return login_fail(ctx, r, why);
	cr->mech = mech;
	cr->user = login_dup(user.p, user.n);
	cr->authz = authz.n > 0 ? login_dup(authz.p, authz.n) : NULL;
	cr->secret = login_dup(secret.p, secret.n);
	cr->secretlen = secret.n;
	cr->raw = raw.p != NULL ? login_dup(raw.p, raw.n) : NULL;
	cr->rawlen = raw.p != NULL ? raw.n : 0;
	if (cr->user == NULL || cr->secret == NULL || (authz.n > 0 && cr->authz == NULL) ||
	    (raw.p != NULL && cr->raw == NULL))
		return login_nomem(ctx, r);
	ctx->attempts++;
	login_sasl_end(ctx);
	r->act = LOGIN_ACT_AUTH;
	return 0;
}

/* The SASL message is not what the mechanism defines: a failed exchange. */
static int
login_sasl_malformed(struct login_ctx *ctx, struct login_result *r)
{
	return login_fail(ctx, r, "NO [AUTHENTICATIONFAILED] Authentication failed");
}

/* PLAIN (RFC 4616): authzid NUL authcid NUL passwd, authcid and passwd not empty. */
static int
login_sasl_plain(struct login_ctx *ctx, const unsigned char *m, size_t n, struct login_result *r)
{
	const unsigned char *z1 = memchr(m, 0, n), *z2;
	struct login_span authz, user, pass, none = { NULL, 0 };

	if (z1 == NULL)
		return login_sasl_malformed(ctx, r);
	z2 = memchr(z1 + 1, 0, n - (size_t)(z1 + 1 - m));
	if (z2 == NULL || memchr(z2 + 1, 0, n - (size_t)(z2 + 1 - m)) != NULL ||
	    z2 == z1 + 1 || z2 + 1 == m + n)
		return login_sasl_malformed(ctx, r);
	authz = (struct login_span){ m, (size_t)(z1 - m) };
	user = (struct login_span){ z1 + 1, (size_t)(z2 - z1 - 1) };
	pass = (struct login_span){ z2 + 1, n - (size_t)(z2 + 1 - m) };
	return login_creds_set(ctx, r, LOGIN_MECH_PLAIN, user, authz, pass, none);
}

/* Is t a bearer token (RFC 6750 b64token: printable, no space)? */
static int
login_token_ok(struct login_span t)
{
	if (t.n == 0)
		return 0;
	for (size_t i = 0; i < t.n; i++)
		if (t.p[i] <= 0x20 || t.p[i] >= 0x7f)
			return 0;
	return 1;
}

/*
 * Read "key=value" ^A pairs up to the empty pair that ends the message
 * (RFC 7628 section 3.1; Google's XOAUTH2 has the same shape).  Keeps
 * "user" and the token of "auth=Bearer <token>".  0, or -1 if malformed.
 */
static int
login_kvpairs(const unsigned char *p, size_t n, struct login_span *user, struct login_span *token)
{
	const unsigned char *end, *eq, *v;
	size_t i = 0, kv, vn;

	while (i < n) {
		end = memchr(p + i, 0x01, n - i);
		if (end == NULL)
			return -1;
		kv = (size_t)(end - (p + i));
		if (kv == 0)
			return i + 1 == n && token->p != NULL ? 0 : -1;
		eq = memchr(p + i, '=', kv);
		if (eq == NULL)
			return -1;
		v = eq + 1;
		vn = kv - (size_t)(v - (p + i));
		if (eq - (p + i) == 4 && memcmp(p + i, "user", 4) == 0) {
			if (user->p != NULL)
				return -1;
			*user = (struct login_span){ v, vn };
		} else if (eq - (p + i) == 4 && memcmp(p + i, "auth", 4) == 0) {
			/* The scheme name is case-insensitive (RFC 9110 11.1). */
			if (token->p != NULL || vn < 8 ||
			    strncasecmp((const char *)v, "Bearer ", 7) != 0)
				return -1;
			*token = (struct login_span){ v + 7, vn - 7 };
			if (!login_token_ok(*token))
				return -1;
		}
		i += kv + 1;
	}
	return -1;
}

/*
 * OAUTHBEARER (RFC 7628): gs2 header "n,a=user," (or "y,"), ^A, pairs,
 * ^A.  The user comes from a= (=2C and =3D decoded in place, m is ours).
 * Channel binding ("p=") cannot be relayed to the backend: it binds
 * this TLS connection, not imapgate's.  No a=: we cannot route.
 */
static int
login_sasl_oauthbearer(struct login_ctx *ctx, unsigned char *m, size_t n, struct login_span raw,
    struct login_result *r)
{
	struct login_span user = { NULL, 0 }, ignored = { NULL, 0 }, token = { NULL, 0 };
	struct login_span none = { NULL, 0 };
	size_t i = 2, o;

	if (n < 3 || (m[0] != 'n' && m[0] != 'y') || m[1] != ',')
		return login_sasl_malformed(ctx, r);
	if (m[i] == 'a' && i + 1 < n && m[i + 1] == '=') {
		i += 2;
		user.p = m + i;
		for (o = i; i < n && m[i] != ','; i++) {
			if (m[i] == '=') {
				if (i + 2 >= n || !((m[i + 1] == '2' && m[i + 2] == 'C') ||
				    (m[i + 1] == '3' && m[i + 2] == 'D')))
					return login_sasl_malformed(ctx, r);
				m[o++] = m[i + 2] == 'D' ? '=' : ',';
				i += 2;
			} else
				m[o++] = m[i];
		}
		user.n = o - (size_t)(user.p - m);
	}
	if (i + 1 >= n || m[i] != ',' || m[i + 1] != 0x01 ||
	    login_kvpairs(m + i + 2, n - i - 2, &ignored, &token) != 0)
		return login_sasl_malformed(ctx, r);
	if (user.p == NULL)
		return login_fail(ctx, r,
		    "NO [AUTHENTICATIONFAILED] OAUTHBEARER needs the user name (a=)");
	return login_creds_set(ctx, r, LOGIN_MECH_OAUTHBEARER, user, none, token, raw);
}

/* XOAUTH2: "user=U" ^A "auth=Bearer T" ^A ^A. */
static int
login_sasl_xoauth2(struct login_ctx *ctx, const unsigned char *m, size_t n, struct login_span raw,
    struct login_result *r)
{
	struct login_span user = { NULL, 0 }, token = { NULL, 0 }, none = { NULL, 0 };

	if (login_kvpairs(m, n, &user, &token) != 0 || user.p == NULL)
		return login_sasl_malformed(ctx, r);
	return login_creds_set(ctx, r, LOGIN_MECH_XOAUTH2, user, none, token, raw);
}

/* The LOGIN mechanism: the user name, then the password, each after a prompt. */
static int
login_sasl_login(struct login_ctx *ctx, const unsigned char *m, size_t n, struct login_result *r)
{
	struct login_span user, pass, none = { NULL, 0 };
	const char *why;

	if (ctx->sasl_step == 0) {
		why = memchr(m, 0, n) != NULL ? "NO [AUTHENTICATIONFAILED] Authentication failed" :
		    login_user_refusal(m, n);
		if (why != NULL)
			return login_fail(ctx, r, why);
		ctx->sasl_user = login_dup(m, n);
		if (ctx->sasl_user == NULL)
			return login_nomem(ctx, r);
		ctx->sasl_step = 1;
		return login_continue(r, "UGFzc3dvcmQ6");	/* "Password:" */
	}
	if (memchr(m, 0, n) != NULL)
		return login_sasl_malformed(ctx, r);
	user = (struct login_span){ (const unsigned char *)ctx->sasl_user, strlen(ctx->sasl_user) };
	pass = (struct login_span){ m, n };
	return login_creds_set(ctx, r, LOGIN_MECH_LOGIN, user, none, pass, none);
}

/*
 * One SASL response (the initial response or a line), base64 in b64[0..n).
 * Not base64 is a protocol error (BAD, RFC 9051 6.2.2); a decoded message
 * the mechanism cannot read fails the exchange like a wrong password
 * (NO [AUTHENTICATIONFAILED], RFC 4422 section 3: the mechanism fails).
 */
static int
login_sasl_response(struct login_ctx *ctx, const unsigned char *b64, size_t n,
    struct login_result *r)
{
	struct login_span raw = { b64, n };
	unsigned char *m;
	long mlen;
	int rc;

	if (n > LOGIN_MAX_SASL)
		return login_fail(ctx, r, "NO [LIMIT] Authentication response too long");
	m = malloc(n / 4 * 3 + 1);
	if (m == NULL)
		return login_nomem(ctx, r);
	mlen = login_b64_decode(b64, n, m);
	if (mlen < 0) {
		free(m);
		login_sasl_end(ctx);
		return login_bad(ctx, r, "BAD Invalid base64 in authentication response");
	}
	switch (ctx->sasl_mech) {
	case LOGIN_MECH_PLAIN:
		rc = login_sasl_plain(ctx, m, (size_t)mlen, r);
		break;
	case LOGIN_MECH_LOGIN:
		rc = login_sasl_login(ctx, m, (size_t)mlen, r);
		break;
	case LOGIN_MECH_XOAUTH2:
		rc = login_sasl_xoauth2(ctx, m, (size_t)mlen, raw, r);
		break;
	case LOGIN_MECH_OAUTHBEARER:
		rc = login_sasl_oauthbearer(ctx, m, (size_t)mlen, raw, r);
		break;
	default:
		rc = login_sasl_malformed(ctx, r);
		break;
	}
	explicit_bzero(m, (size_t)mlen);
	free(m);
	return rc;
}

/* One line inside AUTHENTICATE: a response, or "*". */
int
login_sasl_line(struct login_ctx *ctx, const char *line, size_t len, struct login_result *r)
{
	const unsigned char *s = (const unsigned char *)line;
	size_t n = len;

	login_result_init(r);
	if (ctx->sasl_mech == LOGIN_MECH_NONE)
		return login_bad(ctx, r, "BAD No authentication in progress");
	memcpy(r->tag, ctx->sasl_tag, sizeof(r->tag));
	if (n == 0 || s[n - 1] != '\n') {
		login_sasl_end(ctx);
		return login_bad(ctx, r, "BAD Authentication response not ended by a line end");
	}
	n--;
	if (n > 0 && s[n - 1] == '\r')
		n--;
	/* RFC 9051 6.2.2: "*" cancels, answered with a tagged BAD. */
	if (n == 1 && s[0] == '*') {
		login_sasl_end(ctx);
		return login_bad(ctx, r, "BAD Authentication cancelled");
	}
	return login_sasl_response(ctx, s, n, r);
}

/* The commands without arguments: a SP after the name is an error. */
static int
login_no_args(struct login_ctx *ctx, struct login_cur *c, struct login_result *r)
{
	if (!login_at_eol(c)) {
		login_bad(ctx, r, "BAD Unexpected arguments");
		return -1;
	}
	return 0;
}

/* CAPABILITY */
static int
login_cmd_capability(struct login_ctx *ctx, struct login_cur *c, struct login_result *r)
{
	char caps[LOGIN_MAX_CAPS], line[sizeof("CAPABILITY ") + LOGIN_MAX_CAPS];
	struct login_out o;

	if (login_no_args(ctx, c, r) != 0)
		return 0;
	login_capabilities(ctx, caps, sizeof(caps));
	login_out_init(&o, line, sizeof(line));
	login_puts(&o, "CAPABILITY ");
	login_puts(&o, caps);
	login_reply_line(r, 0, line);
	return login_reply(r, "OK Capability completed");
}

/* NOOP */
static int
login_cmd_noop(struct login_ctx *ctx, struct login_cur *c, struct login_result *r)
{
	if (login_no_args(ctx, c, r) != 0)
		return 0;
	return login_reply(r, "OK NOOP completed");
}

/* LOGOUT */
static int
login_cmd_logout(struct login_ctx *ctx, struct login_cur *c, struct login_result *r)
{
	if (login_no_args(ctx, c, r) != 0)
		return 0;
	login_reply_line(r, 0, "BYE Logging out");
	r->act = LOGIN_ACT_LOGOUT;
	return login_reply(r, "OK Logout completed");
}

/*
 * STARTTLS.  Not offered (no TLS on this listener, or TLS is up) is BAD:
 * RFC 9051 6.2.1 keeps NO for "TLS negotiation can't be initiated, due
 * to server configuration error", and BAD for a command the server does
 * not know here; Dovecot answers BAD when TLS is already active.
 */
static int
login_cmd_starttls(struct login_ctx *ctx, struct login_cur *c, struct login_result *r)
{
	if (login_no_args(ctx, c, r) != 0)
		return 0;
	if (!login_starttls_offered(ctx))
		return login_bad(ctx, r, "BAD STARTTLS not available");
	r->act = LOGIN_ACT_STARTTLS;
	return login_reply(r, "OK Begin TLS negotiation now");
}

/* Step over the atom NIL (any case); 0 if it is not there. */
static int
login_nil(struct login_cur *c)
{
	if (c->len - c->pos < 3 || strncasecmp((const char *)c->s + c->pos, "NIL", 3) != 0)
		return 0;
	c->pos += 3;
	return 1;
}

/* Is field (n bytes) among the first k pairs of id, case-insensitively? */
static int
login_id_has(const struct login_id_pair *id, size_t k, const char *field, size_t n)
{
	for (size_t i = 0; i < k; i++)
		if (strlen(id[i].field) == n && strncasecmp(id[i].field, field, n) == 0)
			return 1;
	return 0;
}

/*
 * Read the ID parameters "(" [string SP nstring *(SP string SP nstring)]
 * ")" into id[]; RFC 2971 3.3 bounds (30 pairs, 30 and 1024 bytes) and
 * its ban on a repeated field are syntax here.  0, -1 malformed, -2 memory.
 */
static int
login_id_parse(struct login_cur *c, struct login_id_pair *id, size_t *nid)
{
	struct login_arg f, v;

	c->pos++;	/* "(" */
	if (c->pos < c->len && c->s[c->pos] == ')') {
		c->pos++;
		return 0;
	}
	for (;;) {
		if (*nid >= LOGIN_ID_MAX_PAIRS || login_string(c, 0, &f) != 0 || !login_sp(c) ||
		    f.declen > LOGIN_ID_MAX_FIELD)
			return -1;
		if (login_nil(c))
			v.p = NULL;
		else if (login_string(c, 0, &v) != 0 || v.declen > LOGIN_ID_MAX_VALUE)
			return -1;
		id[*nid].field = login_arg_dup(&f);
		id[*nid].value = v.p != NULL ? login_arg_dup(&v) : NULL;
		(*nid)++;
		if (id[*nid - 1].field == NULL || (v.p != NULL && id[*nid - 1].value == NULL))
			return -2;
		if (login_id_has(id, *nid - 1, id[*nid - 1].field, strlen(id[*nid - 1].field)))
			return -1;
		if (c->pos < c->len && c->s[c->pos] == ')') {
			c->pos++;
			return 0;
		}
		if (!login_sp(c))
			return -1;
	}
}

/* ID (RFC 2971): keep the client's parameters, reveal nothing of ours. */
static int
login_cmd_id(struct login_ctx *ctx, struct login_cur *c, struct login_result *r)
{
	struct login_id_pair id[LOGIN_ID_MAX_PAIRS];
	size_t nid = 0;
	int rc = 0;

	if (!login_sp(c))
		return login_bad(ctx, r, "BAD Invalid ID arguments");
	if (!login_nil(c))
		rc = c->pos < c->len && c->s[c->pos] == '(' ? login_id_parse(c, id, &nid) : -1;
	if (rc == 0 && !login_at_eol(c))
		rc = -1;
	if (rc != 0) {
		login_id_clear(id, &nid);
		return rc == -2 ? login_nomem(ctx, r) :
		    login_bad(ctx, r, "BAD Invalid ID arguments");
	}
	login_id_clear(ctx->id, &ctx->nid);
	memcpy(ctx->id, id, nid * sizeof(id[0]));
	ctx->nid = nid;
	login_reply_line(r, 0, "ID NIL");
	return login_reply(r, "OK ID completed");
}

/*
 * LOGIN user password.  With LOGINDISABLED nothing of the arguments is
 * read.  Syntax errors (a NUL included: literal data is CHAR8) are BAD;
 * a name or password over our limits is NO [LIMIT] (valid syntax, an
 * implementation limit: RFC 5530), an empty user a failed login.
 */
static int
login_cmd_login(struct login_ctx *ctx, struct login_cur *c, struct login_result *r)
{
	struct login_arg ua, pa;
	struct login_span user, pass, none = { NULL, 0 };
	char *u, *p;
	int rc;

	if (ctx->flags & LOGIN_CTX_LOGINDISABLED)
		return login_reply(r, "NO [PRIVACYREQUIRED] Use STARTTLS first");
	if (!login_sp(c) || login_string(c, 1, &ua) != 0 || !login_sp(c) ||
	    login_string(c, 1, &pa) != 0 || !login_at_eol(c))
		return login_bad(ctx, r, "BAD Invalid LOGIN arguments");
	u = login_arg_dup(&ua);
	p = login_arg_dup(&pa);
	if (u == NULL || p == NULL) {
		login_free_str(u);
		login_free_str(p);
		return login_nomem(ctx, r);
	}
	user = (struct login_span){ (const unsigned char *)u, ua.declen };
	pass = (struct login_span){ (const unsigned char *)p, pa.declen };
	rc = login_creds_set(ctx, r, LOGIN_MECH_LOGIN_CMD, user, none, pass, none);
	login_free_str(u);
	login_free_str(p);
	return rc;
}

/* A mechanism name we offer, or LOGIN_MECH_NONE. */
static enum login_mech
login_mech_of(const struct login_ctx *ctx, const char *name)
{
	if (strcmp(name, "PLAIN") == 0)
		return LOGIN_MECH_PLAIN;
	if (strcmp(name, "LOGIN") == 0)
		return LOGIN_MECH_LOGIN;
	if (!(ctx->flags & LOGIN_CTX_OAUTH))
		return LOGIN_MECH_NONE;
	if (strcmp(name, "XOAUTH2") == 0)
		return LOGIN_MECH_XOAUTH2;
	if (strcmp(name, "OAUTHBEARER") == 0)
		return LOGIN_MECH_OAUTHBEARER;
	return LOGIN_MECH_NONE;
}

/*
 * AUTHENTICATE mechanism [initial-response] (RFC 9051 6.2.2, RFC 4959).
 * An unknown mechanism is NO (RFC 9051: "SHOULD reject ... tagged NO").
 */
static int
login_cmd_authenticate(struct login_ctx *ctx, struct login_cur *c, struct login_result *r)
{
	char mech[LOGIN_MAX_NAME + 1];
	size_t ir = 0, irlen = 0;
	int has_ir = 0;

	if (ctx->flags & LOGIN_CTX_LOGINDISABLED)
		return login_reply(r, "NO [PRIVACYREQUIRED] Use STARTTLS first");
	if (!login_sp(c) || login_name(c, mech, LOGIN_MAX_NAME) != 0)
		return login_bad(ctx, r, "BAD Invalid AUTHENTICATE arguments");
	if (login_sp(c)) {
		has_ir = 1;
		ir = c->pos;
		while (c->pos < c->len &&
		    (login_b64_digit(c->s[c->pos]) >= 0 || c->s[c->pos] == '='))
			c->pos++;
		irlen = c->pos - ir;
	}
	if ((has_ir && irlen == 0) || !login_at_eol(c))
		return login_bad(ctx, r, "BAD Invalid AUTHENTICATE arguments");
	ctx->sasl_mech = login_mech_of(ctx, mech);
	if (ctx->sasl_mech == LOGIN_MECH_NONE)
		return login_reply(r, "NO Unsupported authentication mechanism");
	memcpy(ctx->sasl_tag, r->tag, sizeof(ctx->sasl_tag));
	ctx->sasl_step = 0;
	/* RFC 4959: "=" is an empty initial response. */
	if (has_ir)
		return login_sasl_response(ctx, c->s + ir,
		    irlen == 1 && c->s[ir] == '=' ? 0 : irlen, r);
	/* "Username:" for LOGIN, an empty challenge for the others. */
	return login_continue(r, ctx->sasl_mech == LOGIN_MECH_LOGIN ? "VXNlcm5hbWU6" : "");
}

/* The commands answered before login. */
static const struct {
	const char	*name;
	int		(*run)(struct login_ctx *, struct login_cur *, struct login_result *);
} login_cmds[] = {
	{ "CAPABILITY",		login_cmd_capability },
	{ "NOOP",		login_cmd_noop },
	{ "LOGOUT",		login_cmd_logout },
	{ "ID",			login_cmd_id },
	{ "STARTTLS",		login_cmd_starttls },
	{ "LOGIN",		login_cmd_login },
	{ "AUTHENTICATE",	login_cmd_authenticate },
};

/*
 * Parse "tag SP name ..." and run the command.  A command of the table
 * that needs login is BAD, as for any client error: RFC 9051 7.1.5 keeps
 * BAD for "a protocol-level error in the client's command", NO for a
 * valid command that failed; Dovecot and Cyrus answer BAD too.  The
 * connection stays open (the caller may close after many BADs).
 */
int
login_command(struct login_ctx *ctx, const char *cmd, size_t len, struct login_result *r)
{
	struct login_cur c = { (const unsigned char *)cmd, len, 0 };
	char name[LOGIN_MAX_NAME + 1];
	size_t i;
	int rc;

	login_result_init(r);
	login_sasl_end(ctx);
	while (c.pos < c.len && login_is_tag_char(c.s[c.pos]))
		c.pos++;
	if (c.pos == 0 || c.pos > LOGIN_MAX_TAG || (!login_at_sp(&c) && !login_at_eol(&c)))
		return login_bad(ctx, r, "BAD Invalid tag");
	memcpy(r->tag, cmd, c.pos);
	r->tag[c.pos] = '\0';
	if (!login_sp(&c))
		return login_bad(ctx, r, "BAD Missing command");
	rc = login_name(&c, name, LOGIN_MAX_NAME);
	if (rc == -1)
		return login_bad(ctx, r, "BAD Missing command");
	if (rc != 0 || (!login_at_sp(&c) && !login_at_eol(&c)))
		return login_bad(ctx, r, "BAD Unknown command");
	for (i = 0; i < sizeof(login_cmds) / sizeof(login_cmds[0]); i++)
		if (strcmp(name, login_cmds[i].name) == 0)
			return login_cmds[i].run(ctx, &c, r);
	if (imapcmd_find(name) != NULL)
		return login_bad(ctx, r, "BAD Command not valid before login");
	return login_bad(ctx, r, "BAD Unknown command");
}

/* Is field among the extra pairs' fields (case-insensitive)? */
static int
login_extra_has(const char *const *extra_pairs, size_t nextra, const char *field)
{
	for (size_t k = 0; k < nextra; k++)
		if (extra_pairs[2 * k] != NULL && strcasecmp(extra_pairs[2 * k], field) == 0)
			return 1;
	return 0;
}

/* "TAG ID (...)" or "TAG ID NIL" (see login.h). */
int
login_id_build(const struct login_ctx *ctx, const char *tag, const char *const *extra_pairs,
    size_t nextra, char *buf, size_t len)
{
	struct login_out o;
	const char *f, *v;
	size_t i, k, n = 0;

	login_out_init(&o, buf, len);
	if (!login_tag_ok(tag))
		return -1;
	login_puts(&o, tag);
	login_puts(&o, " ID (");
	for (i = 0; i < ctx->nid + nextra && n < LOGIN_ID_MAX_PAIRS; i++) {
		/* The extra pairs first, so that they win when the limit is reached. */
		k = i < nextra ? i : i - nextra;
		f = i < nextra ? extra_pairs[2 * k] : ctx->id[k].field;
		v = i < nextra ? extra_pairs[2 * k + 1] : ctx->id[k].value;
		if (f == NULL || strlen(f) > LOGIN_ID_MAX_FIELD ||
		    (v != NULL && strlen(v) > LOGIN_ID_MAX_VALUE) ||
		    !login_quotable((const unsigned char *)f, strlen(f)) ||
		    (v != NULL && !login_quotable((const unsigned char *)v, strlen(v))))
			continue;
		/*
		 * A client's "x-" field would be believed: Dovecot takes
		 * x-originating-ip, x-session-id, x-forward-* from a trusted
		 * proxy (login_trusted_networks), and that proxy is us.
		 */
		if (i >= nextra && (strncasecmp(f, "x-", 2) == 0 ||
		    login_extra_has(extra_pairs, nextra, f)))
			continue;
		login_puts(&o, n > 0 ? " " : "");
		login_put_quoted(&o, (const unsigned char *)f, strlen(f));
		login_puts(&o, " ");
		if (v != NULL)
			login_put_quoted(&o, (const unsigned char *)v, strlen(v));
		else
			login_puts(&o, "NIL");
		n++;
	}
	if (n == 0) {
		login_out_init(&o, buf, len);
		login_puts(&o, tag);
		login_puts(&o, " ID NIL\r\n");
	} else
		login_puts(&o, ")\r\n");
	return login_out_done(&o);
}

/* A capability list's names and the LOGIN_BCAP_ bits they give. */
static const struct {
	const char	*name;
	unsigned	 bit;
} login_bcaps[] = {
	{ "SASL-IR",		LOGIN_BCAP_SASL_IR },
	{ "AUTH=PLAIN",		LOGIN_BCAP_AUTH_PLAIN },
	{ "LITERAL+",		LOGIN_BCAP_LITERALPLUS },
	{ "LITERAL-",		LOGIN_BCAP_LITERALMINUS },
	{ "AUTH=XOAUTH2",	LOGIN_BCAP_XOAUTH2 },
	{ "AUTH=OAUTHBEARER",	LOGIN_BCAP_OAUTHBEARER },
	{ "LOGINDISABLED",	LOGIN_BCAP_LOGINDISABLED },
};

/* Words end at SP, CR, LF and brackets: "[CAPABILITY ...]" reads as well. */
unsigned
login_backend_caps(const char *caplist, size_t len)
{
	const unsigned char *s = (const unsigned char *)caplist;
	unsigned caps = 0;
	size_t i = 0, start, k;

	while (i < len) {
		while (i < len && (s[i] <= 0x20 || s[i] == '[' || s[i] == ']'))
			i++;
		start = i;
		while (i < len && s[i] > 0x20 && s[i] != '[' && s[i] != ']')
			i++;
		for (k = 0; k < sizeof(login_bcaps) / sizeof(login_bcaps[0]); k++)
			if (strlen(login_bcaps[k].name) == i - start &&
			    strncasecmp(caplist + start, login_bcaps[k].name, i - start) == 0)
				caps |= login_bcaps[k].bit;
	}
	return caps;
}

/* How the backend login goes. */
enum login_bk {
	LOGIN_BK_NONE,		/* no way: the backend offers nothing that fits */
	LOGIN_BK_PLAIN,		/* AUTHENTICATE PLAIN */
	LOGIN_BK_OAUTH,		/* AUTHENTICATE with the client's OAuth mechanism and response */
	LOGIN_BK_LOGIN,		/* the LOGIN command */
};

/* Are master credentials given? */
static int
login_master(const char *master_user, const char *master_pass)
{
	return master_user != NULL && master_user[0] != '\0' && master_pass != NULL;
}

/*
 * Choose the backend login for c.  A client's authorization identity
 * needs PLAIN without master credentials: LOGIN cannot carry it, and a
 * master login already names the user as authzid.
 */
static enum login_bk
login_backend_choose(const struct login_creds *c, unsigned caps, int master)
{
	switch (c->mech) {
	case LOGIN_MECH_XOAUTH2:
		return (caps & LOGIN_BCAP_XOAUTH2) && c->raw != NULL ?
		    LOGIN_BK_OAUTH : LOGIN_BK_NONE;
	case LOGIN_MECH_OAUTHBEARER:
		return (caps & LOGIN_BCAP_OAUTHBEARER) && c->raw != NULL ?
		    LOGIN_BK_OAUTH : LOGIN_BK_NONE;
	case LOGIN_MECH_LOGIN_CMD:
	case LOGIN_MECH_PLAIN:
	case LOGIN_MECH_LOGIN:
		break;
	default:
		return LOGIN_BK_NONE;
	}
	if (c->user == NULL || c->secret == NULL || (c->authz != NULL && master))
		return LOGIN_BK_NONE;
	if (caps & LOGIN_BCAP_AUTH_PLAIN)
		return LOGIN_BK_PLAIN;
	if ((caps & LOGIN_BCAP_LOGINDISABLED) || c->authz != NULL)
		return LOGIN_BK_NONE;
	return LOGIN_BK_LOGIN;
}

/*
 * Append the SASL response of the chosen login in base64: the client's
 * own OAuth response, or a PLAIN message (authzid NUL authcid NUL passwd)
 * built in a heap buffer that is wiped (never empty: no "=" needed).
 * 0 or -1.
 */
static int
login_backend_response(const struct login_creds *c, enum login_bk how, const char *master_user,
    const char *master_pass, struct login_out *o)
{
	const char *z, *u, *p;
	size_t zl, ul, pl;
	unsigned char *m;

	if (how == LOGIN_BK_OAUTH) {
		login_put(o, c->raw, c->rawlen);
		return 0;
	}
	if (login_master(master_user, master_pass)) {
		z = c->user;
		u = master_user;
		p = master_pass;
		pl = strlen(p);
	} else {
		z = c->authz != NULL ? c->authz : "";
		u = c->user;
		p = c->secret;
		pl = c->secretlen;
	}
	zl = strlen(z);
	ul = strlen(u);
	if (zl > LOGIN_MAX_USER || ul > LOGIN_MAX_USER || pl > LOGIN_MAX_SECRET)
		return -1;
	m = malloc(zl + 1 + ul + 1 + pl);
	if (m == NULL)
		return -1;
	memcpy(m, z, zl);
	m[zl] = 0;
	memcpy(m + zl + 1, u, ul);
	m[zl + 1 + ul] = 0;
	memcpy(m + zl + 2 + ul, p, pl);
	login_b64_put(o, m, zl + 2 + ul + pl);
	explicit_bzero(m, zl + 2 + ul + pl);
	free(m);
	return 0;
}

/*
 * Append " LOGIN user password": master credentials log in as
 * "user<sep>master_user" with the master password (Dovecot's
 * auth_master_user_separator).
 */
static int
login_backend_login(const struct login_creds *c, unsigned caps, const char *master_user,
    const char *master_pass, const char *master_sep, struct login_out *o)
{
	const char *p = c->secret;
	size_t ul, sl, ml, pl = c->secretlen;
	char *u;
	int rc;

	if (login_master(master_user, master_pass)) {
		if (master_sep == NULL)
			return -1;
		ul = strlen(c->user);
		sl = strlen(master_sep);
		ml = strlen(master_user);
		if (ul > LOGIN_MAX_USER || sl > LOGIN_MAX_USER || ml > LOGIN_MAX_USER)
			return -1;
		u = malloc(ul + sl + ml + 1);
		if (u == NULL)
			return -1;
		memcpy(u, c->user, ul);
		memcpy(u + ul, master_sep, sl);
		memcpy(u + ul + sl, master_user, ml);
		u[ul + sl + ml] = '\0';
		p = master_pass;
		pl = strlen(p);
	} else {
		u = login_dup(c->user, strlen(c->user));
		if (u == NULL)
			return -1;
	}
	login_puts(o, " LOGIN ");
	rc = login_put_string(o, (const unsigned char *)u, strlen(u), caps);
	login_puts(o, " ");
	if (rc == 0)
		rc = login_put_string(o, (const unsigned char *)p, pl, caps);
	login_free_str(u);
	return rc;
}

/* The backend login command (see login.h). */
int
login_backend_auth(const struct login_creds *c, const char *tag, unsigned backend_caps,
    const char *master_user, const char *master_pass, const char *master_sep,
    char *buf, size_t len, int *needs_continuation)
{
	enum login_bk how = login_backend_choose(c, backend_caps,
	    login_master(master_user, master_pass));
	struct login_out o;
	int rc = 0;

	*needs_continuation = 0;
	login_out_init(&o, buf, len);
	if (how == LOGIN_BK_NONE || !login_tag_ok(tag))
		return -1;
	login_puts(&o, tag);
	if (how == LOGIN_BK_LOGIN)
		rc = login_backend_login(c, backend_caps, master_user, master_pass, master_sep, &o);
	else {
		login_puts(&o, " AUTHENTICATE ");
		login_puts(&o, how == LOGIN_BK_PLAIN ? "PLAIN" :
		    c->mech == LOGIN_MECH_XOAUTH2 ? "XOAUTH2" : "OAUTHBEARER");
		if (backend_caps & LOGIN_BCAP_SASL_IR) {
			login_puts(&o, " ");
			rc = login_backend_response(c, how, master_user, master_pass, &o);
		} else
			*needs_continuation = 1;
	}
	login_puts(&o, "\r\n");
	if (rc != 0)
		o.full = 1;
	if (o.full)
		*needs_continuation = 0;
	return login_out_done(&o);
}

/* The response line after the backend's "+" (see login.h). */
int
login_backend_continuation(const struct login_creds *c, unsigned backend_caps,
    const char *master_user, const char *master_pass, char *buf, size_t len)
{
	enum login_bk how = login_backend_choose(c, backend_caps,
	    login_master(master_user, master_pass));
	struct login_out o;

	login_out_init(&o, buf, len);
	if ((how != LOGIN_BK_PLAIN && how != LOGIN_BK_OAUTH) ||
	    login_backend_response(c, how, master_user, master_pass, &o) != 0)
		o.full = 1;
	login_puts(&o, "\r\n");
	return login_out_done(&o);
}
