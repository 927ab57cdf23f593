/*
 * imap: the incremental IMAP tokenizer described in imap.h.
 *
 * Each line part is read in two phases.  The "head" (tag, command or
 * response name, the first argument, a response code) is read byte by
 * byte by a small state machine; once it has what it wants it sets
 * skip_rest and the rest of the part is only searched for its LF with
 * memchr.  Whether the part ends with a literal header is decided from
 * the last IMAP_LIT_TAIL bytes before the LF, which are kept across
 * feed() calls so that any split point gives the same answer.
 */
#include "imap.h"
#include "imapcmd.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

enum {
	LEX_LINE,
	LEX_LITERAL,
	LEX_ERROR,
};

enum {
	H_BEGIN,	/* nothing of the line seen yet */
	H_TOKSTART,	/* expecting the first byte of token `field` */
	H_ATOM,
	H_QUOTED,
	H_QESC,
	H_LITHDR,	/* inside "{..." or "~{..." */
	H_INLIT,	/* the token is a literal whose bytes are coming */
	H_AFTER,	/* after a quoted string or literal: SP or line end */
	H_SASL,		/* base64: a SASL line or AUTHENTICATE's initial response */
	H_IDLE,		/* a line in IDLE mode */
	H_CODESTART,	/* server: byte after the status word's SP */
	H_CODEATOM,
	H_CODEREST,
	H_CODEAFTER,
};

/*
 * The client framing lexer.  It reads every byte of a command line outside
 * literals, independently of the head scanner, to know exactly where
 * quoted strings and literal headers are (see imap_frame_byte).
 */
enum {
	FR_START,	/* at a token start: after the line start, a SP or "(" */
	FR_SPACE,	/* right after a SP (a token start; a second SP is not canonical) */
	FR_ATOM,
	FR_QUOTED,
	FR_QESC,
	FR_TILDE,	/* "~" at a token start: literal8 if "{" follows */
	FR_LBRACE,	/* "{" at a token start */
	FR_DIGITS,
	FR_PLUS,
	FR_LITEND,	/* "{n}" or "{n+}": only the line end may follow */
	FR_AFTER,	/* after a quoted string, ")" or a literal */
};

enum {
	CMD_OTHER,
	CMD_UID,
	CMD_LOGIN,
	CMD_AUTHENTICATE,
	CMD_IDLE,
	CMD_MAILBOX,	/* first argument is a mailbox we may capture from a literal */
};

/* Is c an ATOM-CHAR (RFC 3501 section 9)? */
static int
imap_is_atom_char(unsigned char c)
{
	if (c <= 0x20 || c >= 0x7f)
		return 0;
	switch (c) {
	case '(': case ')': case '{': case '%': case '*': case '"': case '\\': case ']':
		return 0;
	default:
		return 1;
	}
}

/* Is c allowed in a tag (ASTRING-CHAR except "+", RFC 3501 section 9)? */
static int
imap_is_tag_char(unsigned char c)
{
	return c == ']' || (c != '+' && imap_is_atom_char(c));
}

/* Upper-case ASCII letter conversion that ignores the locale. */
static char
imap_upper(unsigned char c)
{
	return (c >= 'a' && c <= 'z') ? (char)(c - 'a' + 'A') : (char)c;
}

/* Copy the current token into dst (size dstsz), optionally upper-cased. */
static void
imap_tok_copy(struct imap_parser *p, char *dst, size_t dstsz, int upper)
{
	size_t i, n = p->tok_len < dstsz - 1 ? p->tok_len : dstsz - 1;

	for (i = 0; i < n; i++)
		dst[i] = upper ? imap_upper((unsigned char)p->w->tok[i]) : p->w->tok[i];
	dst[n] = '\0';
}

/* Append one byte to the current token, marking it bad past limit. */
static void
imap_tok_put(struct imap_parser *p, unsigned char c, size_t limit)
{
	if (p->tok_len < limit)
		p->w->tok[p->tok_len++] = (char)c;
	else
		p->tok_bad = 1;
}

/* Start a new token at offset pos. */
static void
imap_tok_begin(struct imap_parser *p, uint64_t pos)
{
	p->tok_len = 0;
	p->tok_bad = 0;
	p->tok_start = pos;
}

/* Wipe everything that may have seen secret bytes of the current line. */
static void
imap_wipe_secrets(struct imap_parser *p)
{
	if (p->w != NULL)
		explicit_bzero(p->w->tail, sizeof(p->w->tail));
	p->tail_len = 0;
	explicit_bzero(&p->b64_acc, sizeof(p->b64_acc));
	p->b64_bits = 0;
}

/* Reset the head scanner for a new command or response. */
static void
imap_head_reset(struct imap_parser *p)
{
	p->hstate = H_BEGIN;
	p->field = 0;
	p->cmd = CMD_OTHER;
	p->is_uid = 0;
	p->skip_rest = 0;
	p->no_lit = 0;
	p->pending_cr = 0;
	p->capture = 0;
	p->b64_nuls = 0;
	p->b64_bad = 0;
	p->sasl_first = -1;
	p->user_len = 0;
	imap_tok_begin(p, 0);
	imap_wipe_secrets(p);
}

/* Forget the command or response being read. */
static void
imap_cur_reset(struct imap_parser *p)
{
	struct imap_line *c;

	p->part_len = 0;
	p->lit_left = 0;
	imap_head_reset(p);
	if (p->w == NULL)
		return;
	c = &p->w->cur;
	/*
	 * Field by field rather than memset: this runs once per response
	 * and the string buffers are most of the struct.  Strings are always
	 * written with their terminator, so clearing the first byte is enough
	 * (and no buffer of cur ever holds a password).  Keep in step with
	 * struct imap_line.
	 */
	c->kind = IMAP_KIND_NONE;
	c->tag[0] = c->name[0] = c->subname[0] = c->status_word[0] = '\0';
	c->code[0] = c->arg[0] = c->user[0] = '\0';
	c->command = NULL;
	c->number = 0;
	c->has_number = 0;
	c->status = IMAP_STATUS_NONE;
	c->status_off = c->code_off = c->code_end = c->text_off = 0;
	c->sasl_ir = 0;
	c->nliterals = 0;
	c->toolong = 0;
	c->len = 0;
	c->bare_lf = 0;
	c->bad = c->strict = NULL;
	p->fr = FR_START;
	p->fr_cr = 0;
	p->fr_depth = 0;
}

void
imap_parse_init(struct imap_parser *p, enum imap_dir dir, size_t max_line)
{
	memset(p, 0, sizeof(*p));
	p->dir = dir;
	p->max_line = max_line ? max_line : IMAP_DEFAULT_MAX_LINE;
	p->mode = IMAP_MODE_COMMAND;
	p->lex = LEX_LINE;
	p->error = "";
	imap_cur_reset(p);
}

void
imap_parse_restart(struct imap_parser *p)
{
	struct imap_work *w = p->w;

	imap_parse_init(p, p->dir, p->max_line);
	p->w = w;
	imap_cur_reset(p);
}

void
imap_parse_free(struct imap_parser *p)
{
	free(p->w);
	p->w = NULL;
	p->line_done = 0;
}

int
imap_parse_release(struct imap_parser *p)
{
	if (p->w == NULL || !imap_parse_at_boundary(p))
		return 0;
	imap_parse_free(p);
	return 1;
}

const struct imap_line *
imap_parse_line(const struct imap_parser *p)
{
	return &p->w->line;
}

const struct imap_line *
imap_parse_current(const struct imap_parser *p)
{
	return &p->w->cur;
}

/* Allocate the working buffers before bytes are read; -1 if out of memory. */
static int
imap_work_get(struct imap_parser *p)
{
	if (p->w != NULL)
		return 0;
	if ((p->w = malloc(sizeof(*p->w))) == NULL) {
		p->lex = LEX_ERROR;
		p->error = "out of memory";
		return -1;
	}
	p->line_done = 0;
	imap_cur_reset(p);
	return 0;
}

/* ---- client side head ---- */

/* Index of the current argument (0 = first argument), or -1 before. */
static int
imap_argi(const struct imap_parser *p)
{
	unsigned first = 2 + (p->is_uid ? 1 : 0);

	return p->field < first ? -1 : (int)(p->field - first);
}

/* Classify a command (its table entry, NULL if unknown) for the head scanner. */
static int
imap_cmd_class(const struct imapcmd *c)
{
	if (c == NULL)
		return CMD_OTHER;
	switch (c->args) {
	case IMAPCMD_ARGS_SUBCMD:
		return CMD_UID;
	case IMAPCMD_ARGS_USER:
		return CMD_LOGIN;
	case IMAPCMD_ARGS_SASL:
		return CMD_AUTHENTICATE;
	case IMAPCMD_ARGS_MAILBOX:
		return CMD_MAILBOX;
	default:
		return c->starts == IMAPCMD_STARTS_IDLE ? CMD_IDLE : CMD_OTHER;
	}
}

/* Value of a base64 character, -1 for '=', -2 for anything else. */
static int
imap_b64_val(unsigned char c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+')
		return 62;
	if (c == '/')
		return 63;
	if (c == '=')
		return -1;
	return -2;
}

/*
 * One decoded byte of a SASL PLAIN message "authzid NUL authcid NUL
 * password".  Only the authcid is kept; decoding stops at the second NUL
 * so that no password byte is ever decoded.
 */
static void
imap_plain_byte(struct imap_parser *p, unsigned char b)
{
	if (b == 0) {
		if (++p->b64_nuls == 2) {
			p->w->cur.user[p->b64_bad ? 0 : p->user_len] = '\0';
			explicit_bzero(&p->b64_acc, sizeof(p->b64_acc));
			p->b64_bits = 0;
			p->skip_rest = 1;
		}
		return;
	}
	if (p->b64_nuls == 1) {
		if (p->user_len < IMAP_MAX_ARG)
			p->w->cur.user[p->user_len++] = (char)b;
		else
			p->b64_bad = 1;
	}
}

/* One byte of base64 in a SASL response (PLAIN: look for the authcid). */
static void
imap_sasl_byte(struct imap_parser *p, unsigned char c, uint64_t pos)
{
	int v;

	if (p->sasl_first < 0 && pos == 0)
		p->sasl_first = c;
	if (strcmp(p->sasl_mech, "PLAIN") != 0 || p->b64_bad) {
		/* Only the first two bytes matter (is it "*"?). */
		if (pos >= 1)
			p->skip_rest = 1;
		return;
	}
	if (c == ' ') {		/* end of the SASL-IR argument */
		p->skip_rest = 1;
		return;
	}
	v = imap_b64_val(c);
	if (v == -1)
		return;
	if (v < 0) {
		p->b64_bad = 1;
		return;
	}
	p->b64_acc = (p->b64_acc << 6) | (uint32_t)v;
	p->b64_bits += 6;
	if (p->b64_bits >= 8) {
		p->b64_bits -= 8;
		imap_plain_byte(p, (unsigned char)(p->b64_acc >> p->b64_bits));
		p->b64_acc &= (1u << p->b64_bits) - 1;
	}
}

/* A client token ended (SP, line end, closing quote or literal end). */
static void
imap_client_token_done(struct imap_parser *p)
{
	int argi = imap_argi(p);

	p->w->tok[p->tok_len] = '\0';
	if (p->field == 0) {
		if (p->tok_bad || p->tok_len == 0 || p->tok_len > IMAP_MAX_TAG) {
			p->skip_rest = 1;
			return;
		}
		imap_tok_copy(p, p->w->cur.tag, sizeof(p->w->cur.tag), 0);
		return;
	}
	if (p->field == 1) {
		if (p->tok_bad || p->tok_len == 0 || p->tok_len > IMAP_MAX_ATOM) {
			p->skip_rest = 1;
			return;
		}
		imap_tok_copy(p, p->w->cur.name, sizeof(p->w->cur.name), 1);
		p->w->cur.kind = IMAP_KIND_COMMAND;
		p->w->cur.command = imapcmd_find(p->w->cur.name);
		p->cmd = imap_cmd_class(p->w->cur.command);
		p->is_uid = p->cmd == CMD_UID;
		return;
	}
	if (p->is_uid && p->field == 2) {
		if (!p->tok_bad && p->tok_len <= IMAP_MAX_ATOM)
			imap_tok_copy(p, p->w->cur.subname, sizeof(p->w->cur.subname), 1);
		return;
	}
	if (argi == 0) {
		if (!p->tok_bad) {
			imap_tok_copy(p, p->w->cur.arg, sizeof(p->w->cur.arg), 0);
			if (p->cmd == CMD_LOGIN)
				imap_tok_copy(p, p->w->cur.user, sizeof(p->w->cur.user), 0);
		}
		if (p->cmd == CMD_AUTHENTICATE) {
			if (!p->tok_bad && p->tok_len <= IMAP_MAX_ATOM)
				imap_tok_copy(p, p->sasl_mech, sizeof(p->sasl_mech), 1);
			else
				p->sasl_mech[0] = '\0';
		}
		if (p->cmd != CMD_LOGIN && p->cmd != CMD_AUTHENTICATE)
			p->skip_rest = 1;
		return;
	}
	p->skip_rest = 1;
}

/* After a token: move on to the next one unless the head is done. */
static void
imap_client_next_token(struct imap_parser *p)
{
	if (p->skip_rest)
		return;
	p->field++;
	p->hstate = H_TOKSTART;
}

/* One byte of a client line's head. */
static void
imap_client_char(struct imap_parser *p, unsigned char c, uint64_t pos)
{
	int argi;

	switch (p->hstate) {
	case H_BEGIN:
		if (p->mode == IMAP_MODE_SASL) {
			p->w->cur.kind = IMAP_KIND_SASL;
			p->hstate = H_SASL;
			imap_sasl_byte(p, c, pos);
			return;
		}
		if (p->mode == IMAP_MODE_IDLE) {
			p->w->cur.kind = IMAP_KIND_INVALID;
			p->hstate = H_IDLE;
			imap_tok_begin(p, pos);
			imap_tok_put(p, c, 8);
			return;
		}
		p->w->cur.kind = IMAP_KIND_INVALID;
		p->field = 0;
		p->hstate = H_TOKSTART;
		/* FALLTHROUGH */
	case H_TOKSTART:
		imap_tok_begin(p, pos);
		argi = imap_argi(p);
		if (argi == 1 && p->cmd == CMD_LOGIN) {
			/* The password: never look at it. */
			p->skip_rest = 1;
			return;
		}
		if (argi == 1 && p->cmd == CMD_AUTHENTICATE) {
			p->w->cur.sasl_ir = 1;
			p->hstate = H_SASL;
			p->sasl_first = 0;	/* not a SASL line: no "*" check */
			imap_sasl_byte(p, c, pos);
			return;
		}
		if (argi >= 0 && c == '"') {
			p->hstate = H_QUOTED;
			return;
		}
		if (argi >= 0 && (c == '{' || c == '~')) {
			p->hstate = H_LITHDR;
			return;
		}
		p->hstate = H_ATOM;
		/* FALLTHROUGH */
	case H_ATOM:
		if (c == ' ') {
			imap_client_token_done(p);
			imap_client_next_token(p);
			return;
		}
		if (p->field == 0 ? !imap_is_tag_char(c) :
		    !(imap_is_atom_char(c) || (p->field >= 2 && c == ']')))
			p->tok_bad = 1;
		imap_tok_put(p, c, IMAP_MAX_ARG);
		return;
	case H_QUOTED:
		if (c == '\\')
			p->hstate = H_QESC;
		else if (c == '"') {
			imap_client_token_done(p);
			p->hstate = H_AFTER;
		} else
			imap_tok_put(p, c, IMAP_MAX_ARG);
		return;
	case H_QESC:
		imap_tok_put(p, c, IMAP_MAX_ARG);
		p->hstate = H_QUOTED;
		return;
	case H_LITHDR:
		if (c == ' ')	/* "{...}" that was not a literal header */
			p->skip_rest = 1;
		return;
	case H_AFTER:
		if (c == ' ')
			imap_client_next_token(p);
		else
			p->skip_rest = 1;
		return;
	case H_SASL:
		imap_sasl_byte(p, c, pos);
		return;
	case H_IDLE:
		imap_tok_put(p, c, 8);
		if (p->tok_bad)
			p->skip_rest = 1;
		return;
	default:
		p->skip_rest = 1;
		return;
	}
}

/* Finish the SASL decoder at the end of its argument or line. */
static void
imap_sasl_end(struct imap_parser *p)
{
	if (p->b64_nuls < 2)
		explicit_bzero(p->w->cur.user, sizeof(p->w->cur.user));
	imap_wipe_secrets(p);
}

/* The client line's content ended (at offset end) with no literal. */
static void
imap_client_eol(struct imap_parser *p, uint64_t content_len)
{
	if (p->mode == IMAP_MODE_SASL && p->hstate == H_BEGIN)
		p->w->cur.kind = IMAP_KIND_SASL;	/* empty response */
	else if (p->hstate == H_BEGIN)
		p->w->cur.kind = IMAP_KIND_INVALID;
	if (p->w->cur.kind == IMAP_KIND_SASL) {
		if (content_len == 1 && p->sasl_first == '*')
			p->w->cur.kind = IMAP_KIND_SASL_CANCEL;
		imap_sasl_end(p);
		return;
	}
	if (p->hstate == H_SASL) {	/* SASL-IR ran to the line end */
		imap_sasl_end(p);
		return;
	}
	if (p->hstate == H_IDLE) {
		if (!p->skip_rest && !p->tok_bad && p->tok_len == 4 &&
		    strncasecmp(p->w->tok, "DONE", 4) == 0)
			p->w->cur.kind = IMAP_KIND_DONE;
		return;
	}
	if (!p->skip_rest && p->hstate == H_ATOM)
		imap_client_token_done(p);
}

/* ---- server side head ---- */

/* Map an upper-case word to a status. */
static enum imap_status
imap_status_of(const char *w)
{
	if (w[0] != 'O' && w[0] != 'N' && w[0] != 'B' && w[0] != 'P')
		return IMAP_STATUS_NONE;
	if (strcmp(w, "OK") == 0)
		return IMAP_STATUS_OK;
	if (strcmp(w, "NO") == 0)
		return IMAP_STATUS_NO;
	if (strcmp(w, "BAD") == 0)
		return IMAP_STATUS_BAD;
	if (strcmp(w, "BYE") == 0)
		return IMAP_STATUS_BYE;
	if (strcmp(w, "PREAUTH") == 0)
		return IMAP_STATUS_PREAUTH;
	return IMAP_STATUS_NONE;
}

/* The server's status word ended (by SP if more follows). */
static void
imap_server_status(struct imap_parser *p, enum imap_status st, int by_sp)
{
	p->w->cur.status = st;
	imap_tok_copy(p, p->w->cur.status_word, sizeof(p->w->cur.status_word), 1);
	p->w->cur.status_off = p->tok_start;
	p->no_lit = 1;		/* resp-text holds no literals */
	if (by_sp)
		p->hstate = H_CODESTART;
	else
		p->skip_rest = 1;
}

/* A server token ended; by_sp says whether a SP follows. */
static void
imap_server_token_done(struct imap_parser *p, int by_sp)
{
	enum imap_status st;
	size_t i;

	p->w->tok[p->tok_len] = '\0';
	if (p->field == 0) {
		if (p->tok_len == 1 && p->w->tok[0] == '*') {
			p->w->cur.kind = IMAP_KIND_UNTAGGED;
		} else if (!p->tok_bad && p->tok_len > 0 && p->tok_len <= IMAP_MAX_TAG) {
			imap_tok_copy(p, p->w->cur.tag, sizeof(p->w->cur.tag), 0);
			p->w->cur.kind = IMAP_KIND_TAGGED;
			p->no_lit = 1;
		} else {
			p->skip_rest = 1;
			return;
		}
		if (!by_sp) {
			if (p->w->cur.kind == IMAP_KIND_TAGGED)
				p->w->cur.kind = IMAP_KIND_INVALID;
			p->skip_rest = 1;
		}
		return;
	}
	if (p->w->cur.kind == IMAP_KIND_TAGGED) {
		if (p->tok_len == 0) {
			p->skip_rest = 1;
			return;
		}
		imap_tok_copy(p, p->w->cur.status_word, sizeof(p->w->cur.status_word), 1);
		st = imap_status_of(p->w->cur.status_word);
		imap_server_status(p, st == IMAP_STATUS_NONE ? IMAP_STATUS_OTHER : st, by_sp);
		return;
	}
	/* untagged: field 1 is a number or the name, field 2 the name */
	if (p->field == 1 && p->tok_len > 0 && by_sp) {
		uint64_t n = 0;

		for (i = 0; i < p->tok_len; i++) {
			if (p->w->tok[i] < '0' || p->w->tok[i] > '9')
				break;
			if (n <= UINT32_MAX)
				n = n * 10 + (uint64_t)(p->w->tok[i] - '0');
		}
		if (i == p->tok_len) {
			if (n <= UINT32_MAX) {
				p->w->cur.number = (uint32_t)n;
				p->w->cur.has_number = 1;
			}
			return;		/* the name comes next */
		}
	}
	if (p->tok_bad || p->tok_len == 0 || p->tok_len > IMAP_MAX_ATOM) {
		p->skip_rest = 1;
		return;
	}
	imap_tok_copy(p, p->w->cur.name, sizeof(p->w->cur.name), 1);
	st = imap_status_of(p->w->cur.name);
	if (p->field == 1 && st != IMAP_STATUS_NONE)
		imap_server_status(p, st, by_sp);
	else
		p->skip_rest = 1;
}

/* One byte of a server line's head. */
static void
imap_server_char(struct imap_parser *p, unsigned char c, uint64_t pos)
{
	switch (p->hstate) {
	case H_BEGIN:
		p->w->cur.kind = IMAP_KIND_INVALID;
		if (c == '+') {
			p->w->cur.kind = IMAP_KIND_CONTINUATION;
			p->no_lit = 1;
			p->skip_rest = 1;
			return;
		}
		p->field = 0;
		/* FALLTHROUGH */
	case H_TOKSTART:
		imap_tok_begin(p, pos);
		p->hstate = H_ATOM;
		/* FALLTHROUGH */
	case H_ATOM:
		if (c == ' ') {
			imap_server_token_done(p, 1);
			if (!p->skip_rest && p->hstate == H_ATOM) {
				p->field++;
				p->hstate = H_TOKSTART;
			}
			return;
		}
		if (p->field == 0 ? !(imap_is_tag_char(c) || c == '*') :
		    !imap_is_atom_char(c))
			p->tok_bad = 1;
		imap_tok_put(p, c, IMAP_MAX_ARG);
		return;
	case H_CODESTART:
		if (c == '[') {
			p->w->cur.code_off = pos;
			imap_tok_begin(p, pos + 1);
			p->hstate = H_CODEATOM;
		} else {
			p->w->cur.text_off = pos;
			p->skip_rest = 1;
		}
		return;
	case H_CODEATOM:
		if (c == ' ' || c == ']') {
			if (!p->tok_bad)
				imap_tok_copy(p, p->w->cur.code, sizeof(p->w->cur.code), 1);
			if (c == ']') {
				p->w->cur.code_end = pos + 1;
				p->hstate = H_CODEAFTER;
			} else
				p->hstate = H_CODEREST;
			return;
		}
		imap_tok_put(p, c, IMAP_MAX_ATOM);
		return;
	case H_CODEREST:
		if (c == ']') {
			p->w->cur.code_end = pos + 1;
			p->hstate = H_CODEAFTER;
		}
		return;
	case H_CODEAFTER:
		p->w->cur.text_off = c == ' ' ? pos + 1 : pos;
		p->skip_rest = 1;
		return;
	default:
		p->skip_rest = 1;
		return;
	}
}

/* The server line's content ended at offset end with no literal. */
static void
imap_server_eol(struct imap_parser *p, uint64_t end)
{
	if (p->skip_rest)
		return;
	switch (p->hstate) {
	case H_ATOM:
		imap_server_token_done(p, 0);
		if (p->w->cur.status != IMAP_STATUS_NONE)
			p->w->cur.text_off = end;
		break;
	case H_CODESTART:
	case H_CODEAFTER:
		p->w->cur.text_off = end;
		break;
	case H_CODEATOM:
	case H_CODEREST:
		/* "[" never closed: it was all text */
		p->w->cur.text_off = p->w->cur.code_off;
		p->w->cur.code[0] = '\0';
		p->w->cur.code_off = p->w->cur.code_end = 0;
		break;
	default:
		break;
	}
}

/* ---- both directions ---- */

/* One byte of a line's head at offset pos; a CR waits to see if LF follows. */
static void
imap_head_byte(struct imap_parser *p, unsigned char c, uint64_t pos)
{
	if (p->pending_cr) {
		p->pending_cr = 0;
		if (p->dir == IMAP_DIR_CLIENT)
			imap_client_char(p, '\r', pos - 1);
		else
			imap_server_char(p, '\r', pos - 1);
		if (p->skip_rest)
			return;
	}
	if (c == '\r') {
		p->pending_cr = 1;
		return;
	}
	if (p->dir == IMAP_DIR_CLIENT)
		imap_client_char(p, c, pos);
	else
		imap_server_char(p, c, pos);
}

/* Remember the last IMAP_LIT_TAIL bytes of the line part. */
static void
imap_tail_add(struct imap_parser *p, const unsigned char *s, size_t n)
{
	size_t keep;

	if (n >= IMAP_LIT_TAIL) {
		memcpy(p->w->tail, s + n - IMAP_LIT_TAIL, IMAP_LIT_TAIL);
		p->tail_len = IMAP_LIT_TAIL;
	} else if (p->tail_len + n <= IMAP_LIT_TAIL) {
		memcpy(p->w->tail + p->tail_len, s, n);
		p->tail_len += n;
	} else {
		keep = IMAP_LIT_TAIL - n;
		memmove(p->w->tail, p->w->tail + p->tail_len - keep, keep);
		memcpy(p->w->tail + keep, s, n);
		p->tail_len = IMAP_LIT_TAIL;
	}
}

/* Mark the command as not in canonical form (the first reason is kept). */
static void
imap_frame_strict(struct imap_parser *p, const char *why)
{
	if (p->w->cur.strict == NULL)
		p->w->cur.strict = why;
}

/* Mark the command as one no server can be trusted to frame as we do. */
static void
imap_frame_bad(struct imap_parser *p, const char *why)
{
	if (p->w->cur.bad == NULL)
		p->w->cur.bad = why;
}

/* Can c stand in an atom-like token of a canonical command line? */
static int
imap_frame_atomish(unsigned char c)
{
	/* ATOM-CHAR plus what fetch, search and list use: "]", "%", "*", "\". */
	return c > 0x20 && c < 0x7f && c != '(' && c != ')' && c != '{' && c != '"';
}

/*
 * Bytes that only continue or start an atom, whatever the framing lexer's
 * state among FR_START, FR_SPACE and FR_ATOM: imap_frame_atomish, less "~"
 * (it may start a literal8 header).  Constant, so workers share it freely.
 */
static const unsigned char imap_frame_plain[256] = {
	0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
	0, 1, 0, 1, 1, 1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
	1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,
	1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, 0, 0,
	0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
	0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
	0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
	0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
};

/*
 * One byte of a client command line, outside literals (CR and LF of the
 * line end excluded).  Follows RFC 3501/9051 quoted strings exactly and
 * notes everything that is not canonical; a literal header counts only
 * at a token start and at the very end of the line part.
 */
static void
imap_frame_byte(struct imap_parser *p, unsigned char c)
{
	if (p->fr_cr) {
		p->fr_cr = 0;
		imap_frame_bad(p, "bare CR in command line");
	}
	if (c == '\r') {
		p->fr_cr = 1;	/* CRLF ends the part; a CR before anything else is bare */
		return;
	}
	if (c == 0)
		imap_frame_bad(p, "NUL in command line");
	switch (p->fr) {
	case FR_QUOTED:
		if (c == '\\')
			p->fr = FR_QESC;
		else if (c == '"')
			p->fr = FR_AFTER;
		else if (c >= 0x80)
			imap_frame_strict(p, "8-bit byte in a quoted string");
		return;
	case FR_QESC:
		if (c != '"' && c != '\\')
			imap_frame_strict(p, "bad escape in a quoted string");
		p->fr = FR_QUOTED;
		return;
	case FR_TILDE:
		if (c == '{') {
			p->fr = FR_LBRACE;
			return;
		}
		p->fr = FR_ATOM;
		break;
	case FR_LBRACE:
		p->fr = c >= '0' && c <= '9' ? FR_DIGITS : FR_ATOM;
		if (p->fr == FR_ATOM)
			imap_frame_bad(p, "malformed literal header");
		return;
	case FR_DIGITS:
		if (c >= '0' && c <= '9')
			return;
		p->fr = c == '+' ? FR_PLUS : c == '}' ? FR_LITEND : FR_ATOM;
		if (p->fr == FR_ATOM)
			imap_frame_bad(p, "malformed literal header");
		return;
	case FR_PLUS:
		p->fr = c == '}' ? FR_LITEND : FR_ATOM;
		if (p->fr == FR_ATOM)
			imap_frame_bad(p, "malformed literal header");
		return;
	case FR_LITEND:
		imap_frame_bad(p, "literal header not at the line end");
		p->fr = FR_ATOM;
		break;
	default:
		break;
	}
	switch (c) {
	case ' ':
		if (p->fr == FR_SPACE || p->fr == FR_START)
			imap_frame_strict(p, "empty token");
		p->fr = FR_SPACE;
		return;
	case '(':
		if (p->fr == FR_ATOM || p->fr == FR_AFTER)
			imap_frame_strict(p, "\"(\" inside a token");
		p->fr_depth++;
		p->fr = FR_START;
		return;
	case ')':
		if (p->fr_depth == 0)
			imap_frame_strict(p, "unbalanced \")\"");
		else
			p->fr_depth--;
		if (p->fr == FR_SPACE)
			imap_frame_strict(p, "SP before \")\"");
		p->fr = FR_AFTER;
		return;
	case '"':
		if (p->fr == FR_START || p->fr == FR_SPACE) {
			p->fr = FR_QUOTED;
			return;
		}
		imap_frame_bad(p, "quote inside a token");
		p->fr = FR_ATOM;
		return;
	case '{':
		if (p->fr == FR_START || p->fr == FR_SPACE) {
			p->fr = FR_LBRACE;
			return;
		}
		imap_frame_bad(p, "\"{\" inside a token");
		p->fr = FR_ATOM;
		return;
	case '~':
		if (p->fr == FR_START || p->fr == FR_SPACE) {
			p->fr = FR_TILDE;
			return;
		}
		break;
	default:
		break;
	}
	if (!imap_frame_atomish(c) && c != 0)
		imap_frame_strict(p, "8-bit or control byte outside a quoted string");
	p->fr = FR_ATOM;
}

/* One byte of a SASL response line: base64, or "*" to cancel. */
static void
imap_frame_sasl_byte(struct imap_parser *p, unsigned char c)
{
	if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
	    c == '+' || c == '/' || c == '=' || c == '*' || c == '\r'))
		imap_frame_bad(p, "SASL response is not base64");
}

/* Scan n line bytes (no LF among them). */
static void
imap_scan(struct imap_parser *p, const unsigned char *s, size_t n)
{
	uint64_t base = p->w->cur.len;
	size_t i;

	if (p->dir == IMAP_DIR_CLIENT && p->mode == IMAP_MODE_COMMAND) {
		for (i = 0; i < n; i++) {
			/* The common byte: an atom character outside anything special. */
			if (imap_frame_plain[s[i]] && p->fr <= FR_ATOM && !p->fr_cr) {
				p->fr = FR_ATOM;
				continue;
			}
			imap_frame_byte(p, s[i]);
		}
	}
	else if (p->dir == IMAP_DIR_CLIENT && p->mode == IMAP_MODE_SASL)
		for (i = 0; i < n; i++)
			imap_frame_sasl_byte(p, s[i]);
	for (i = 0; i < n && !p->skip_rest; i++)
		imap_head_byte(p, s[i], base + i);
	imap_tail_add(p, s, n);
	p->part_len += n;
	p->w->cur.len += n;
}

/*
 * Does the line part end with a literal header?  Returns 1 with *n, *sync
 * and *lit8 set, 0 if not, -1 if it cannot be read (p->error set).
 * e is the number of tail bytes before the CR/LF.
 */
static int
imap_tail_literal(struct imap_parser *p, size_t e, uint64_t *n, int *sync, int *lit8)
{
	const unsigned char *t = p->w->tail;
	size_t k, dend, i;
	int plus = 0;
	uint64_t v = 0;

	if (e == 0 || t[e - 1] != '}')
		return 0;
	k = e - 1;
	if (k > 0 && t[k - 1] == '+') {
		plus = 1;
		k--;
	}
	dend = k;
	while (k > 0 && t[k - 1] >= '0' && t[k - 1] <= '9')
		k--;
	if (k == 0 && dend > 0 && p->part_len > p->tail_len) {
		p->error = "literal length has too many digits";
		return -1;
	}
	if (k == 0 || t[k - 1] != '{' || dend == k)
		return 0;	/* not "{digits}" (the client framing lexer judges the rest) */
	for (i = k; i < dend; i++) {
		uint64_t d = (uint64_t)(t[i] - '0');

		if (v > (IMAP_MAX_LITERAL - d) / 10) {
			p->error = "literal length above limit";
			return -1;
		}
		v = v * 10 + d;
	}
	*n = v;
	*sync = p->dir == IMAP_DIR_CLIENT && !plus;
	*lit8 = k >= 2 && t[k - 2] == '~';
	return 1;
}

/*
 * The client line part ended (r: what its last bytes look like, from
 * imap_tail_literal).  A canonical literal header stands at a token
 * start; "{n}" anywhere else (inside a quoted string, an atom) is a
 * framing some servers would take as a literal and others not, so the
 * command is marked bad: imapgate answers it, skipping the literal.
 */
static int
imap_frame_part_end(struct imap_parser *p, int r)
{
	int quoted = p->fr == FR_QUOTED || p->fr == FR_QESC;

	p->fr_cr = 0;
	if (r > 0 && p->fr != FR_LITEND) {
		/*
		 * Still read as a literal: the client (and some servers) meant
		 * one, so its bytes are never taken for commands; the command
		 * is never forwarded.
		 */
		imap_frame_bad(p, quoted ? "literal marker inside a quoted string" :
		    "literal marker inside a token");
	}
	if (r == 0) {
		if (quoted)
			imap_frame_bad(p, "unterminated quoted string");
		if (p->fr == FR_SPACE)
			imap_frame_strict(p, "SP at the line end");
		else if (!quoted && p->fr != FR_ATOM && p->fr != FR_AFTER && p->fr != FR_START)
			imap_frame_bad(p, "malformed literal header");
		if (p->fr_depth > 0)
			imap_frame_strict(p, "unbalanced \"(\"");
	}
	if (r > 0)
		p->fr = FR_AFTER;	/* what follows the literal */
	return r;
}

/* A literal header ended the line part: enter literal state. */
static void
imap_literal_begin(struct imap_parser *p, uint64_t n)
{
	p->lex = LEX_LITERAL;
	p->lit_left = n;
	p->w->cur.nliterals++;
	p->capture = 0;
	if (p->skip_rest)
		return;
	if (p->hstate != H_LITHDR) {
		p->skip_rest = 1;
		return;
	}
	p->hstate = H_INLIT;
	imap_tok_begin(p, p->w->cur.len);
	p->tok_bad = 1;
	if (p->dir == IMAP_DIR_CLIENT && imap_argi(p) == 0 &&
	    (p->cmd == CMD_LOGIN || p->cmd == CMD_MAILBOX) && n <= IMAP_MAX_ARG) {
		p->capture = 1;
		p->tok_bad = 0;
	}
}

/* The literal's last byte went by: the line goes on. */
static void
imap_literal_end(struct imap_parser *p)
{
	p->lex = LEX_LINE;
	p->capture = 0;
	if (!p->skip_rest && p->hstate == H_INLIT) {
		imap_client_token_done(p);
		p->hstate = H_AFTER;
	}
}

/* The command or response is complete: publish it in p->w->line. */
static void
imap_line_end(struct imap_parser *p, int bare)
{
	struct imap_line *c = &p->w->cur;

	c->bare_lf = bare;
	if (p->dir == IMAP_DIR_CLIENT) {
		if (p->mode == IMAP_MODE_COMMAND && c->kind == IMAP_KIND_COMMAND &&
		    c->bad == NULL) {
			/* The mode the command starts if the server accepts it. */
			if (p->cmd == CMD_AUTHENTICATE)
				p->mode = IMAP_MODE_SASL;
			else if (p->cmd == CMD_IDLE)
				p->mode = IMAP_MODE_IDLE;
		} else if (c->kind == IMAP_KIND_DONE)
			p->mode = IMAP_MODE_COMMAND;
	} else {
		if (!p->seen_greeting) {
			c->kind = IMAP_KIND_GREETING;
			if (c->status == IMAP_STATUS_NONE && c->name[0] != '\0') {
				c->status = IMAP_STATUS_OTHER;
				memcpy(c->status_word, c->name, sizeof(c->status_word));
			}
		}
		p->seen_greeting = 1;
	}
	p->line_done = 1;	/* the line is *c; reset when bytes are fed again */
}

/* Start a new command or response if the last one was handed out. */
static void
imap_next_line(struct imap_parser *p)
{
	if (p->line_done) {
		p->line_done = 0;
		imap_cur_reset(p);
	}
}

/* The LF of a line part was consumed. */
static void
imap_part_end(struct imap_parser *p, struct imap_event *ev)
{
	int bare, sync = 0, lit8 = 0, r = 0;
	size_t e = p->tail_len;
	uint64_t n = 0, end;

	bare = e == 0 || p->w->tail[e - 1] != '\r';
	if (!bare)
		e--;
	end = p->w->cur.len - 1 - (bare ? 0 : 1);	/* offset of the content end */
	p->pending_cr = 0;
	if (p->dir == IMAP_DIR_CLIENT ? p->mode == IMAP_MODE_COMMAND : !p->no_lit)
		r = imap_tail_literal(p, e, &n, &sync, &lit8);
	if (p->dir == IMAP_DIR_CLIENT && p->mode == IMAP_MODE_COMMAND)
		r = imap_frame_part_end(p, r);
	explicit_bzero(p->w->tail, sizeof(p->w->tail));
	p->tail_len = 0;
	p->part_len = 0;
	if (r < 0) {
		p->lex = LEX_ERROR;
		ev->type = IMAP_EV_ERROR;
		imap_wipe_secrets(p);
		return;
	}
	if (r > 0) {
		ev->type = IMAP_EV_LITERAL_HEAD;
		ev->lit_len = n;
		ev->lit_sync = sync;
		ev->lit8 = lit8;
		imap_literal_begin(p, n);
		return;
	}
	if (p->dir == IMAP_DIR_CLIENT)
		imap_client_eol(p, end);
	else
		imap_server_eol(p, end);
	imap_line_end(p, bare);
	ev->type = IMAP_EV_LINE;
}

size_t
imap_parse_feed(struct imap_parser *p, const void *buf, size_t len,
    struct imap_event *ev)
{
	const unsigned char *s = buf;
	const unsigned char *lf;
	size_t seg, cut, n;

	memset(ev, 0, sizeof(*ev));
	if (p->lex == LEX_ERROR) {
		ev->type = IMAP_EV_ERROR;
		return 0;
	}
	if (len > 0) {
		if (imap_work_get(p) != 0) {
			ev->type = IMAP_EV_ERROR;
			return 0;
		}
		imap_next_line(p);
	}
	if (p->lex == LEX_LITERAL) {
		n = p->lit_left < len ? (size_t)p->lit_left : len;
		if (p->capture && n > 0) {
			memcpy(p->w->tok + p->tok_len, s, n);	/* lit_len <= IMAP_MAX_ARG */
			p->tok_len += n;
		}
		p->lit_left -= n;
		p->w->cur.len += n;
		if (p->lit_left == 0) {
			imap_literal_end(p);
			ev->type = IMAP_EV_LITERAL_DONE;
		}
		return n;
	}
	if (len == 0)
		return 0;
	lf = memchr(s, '\n', len);
	seg = lf ? (size_t)(lf - s) : len;
	if (!p->w->cur.toolong && p->part_len + seg > p->max_line) {
		cut = p->max_line + 1 - p->part_len;
		imap_scan(p, s, cut);
		p->w->cur.toolong = 1;
		ev->type = IMAP_EV_TOOLONG;
		return cut;
	}
	imap_scan(p, s, seg);
	if (lf == NULL)
		return len;
	p->w->cur.len++;
	imap_part_end(p, ev);
	return seg + 1;
}

uint64_t
imap_parse_literal_left(const struct imap_parser *p)
{
	return p->lex == LEX_LITERAL ? p->lit_left : 0;
}

int
imap_parse_literal_wanted(const struct imap_parser *p)
{
	return p->lex == LEX_LITERAL && p->capture && p->lit_left > 0;
}

int
imap_parse_skip(struct imap_parser *p, uint64_t n)
{
	if (p->lex != LEX_LITERAL)
		return 0;
	imap_next_line(p);
	if (n > p->lit_left)
		n = p->lit_left;
	if (n > 0 && p->capture) {
		/* the caller moved bytes we wanted: the argument is unknown */
		p->capture = 0;
		p->tok_bad = 1;
	}
	p->lit_left -= n;
	p->w->cur.len += n;
	if (p->lit_left > 0)
		return 0;
	imap_literal_end(p);
	return 1;
}

void
imap_parse_literal_cancel(struct imap_parser *p)
{
	if (p->lex == LEX_ERROR)
		return;
	p->lex = LEX_LINE;
	p->line_done = 0;
	imap_cur_reset(p);
}

void
imap_parse_set_mode(struct imap_parser *p, enum imap_mode mode)
{
	p->mode = mode;
}

int
imap_parse_at_boundary(const struct imap_parser *p)
{
	return p->lex == LEX_LINE &&
	    (p->w == NULL || p->line_done || p->w->cur.len == 0);
}

int
imap_code_is_standard(const char *code)
{
	/* IANA "IMAP Response Codes" registry, plus CAPABILITY (RFC 3501 7.1). */
	static const char *const codes[] = {
		"NEWNAME", "REFERRAL", "ALERT", "BADCHARSET", "PARSE",
		"PERMANENTFLAGS", "READ-ONLY", "READ-WRITE", "TRYCREATE",
		"UIDNEXT", "UIDVALIDITY", "UNSEEN", "UNKNOWN-CTE",
		"UIDNOTSTICKY", "APPENDUID", "COPYUID", "URLMECH", "TOOBIG",
		"BADURL", "HIGHESTMODSEQ", "NOMODSEQ", "MODIFIED",
		"COMPRESSIONACTIVE", "CLOSED", "NOTSAVED", "BADCOMPARATOR",
		"ANNOTATE", "ANNOTATIONS", "TEMPFAIL", "MAXCONVERTMESSAGES",
		"MAXCONVERTPARTS", "NOUPDATE", "NOTIFICATIONOVERFLOW",
		"BADEVENT", "UNDEFINED-FILTER", "METADATA", "UNAVAILABLE",
		"AUTHENTICATIONFAILED", "AUTHORIZATIONFAILED", "EXPIRED",
		"PRIVACYREQUIRED", "CONTACTADMIN", "NOPERM", "INUSE",
		"EXPUNGEISSUED", "CORRUPTION", "SERVERBUG", "CLIENTBUG",
		"CANNOT", "LIMIT", "OVERQUOTA", "ALREADYEXISTS", "NONEXISTENT",
		"USEATTR", "DOWNGRADED", "HASCHILDREN", "MAILBOXID",
		"INPROGRESS", "UIDREQUIRED", "CAPABILITY", NULL,
	};
	size_t i;

	if (code == NULL)
		return 0;
	for (i = 0; codes[i] != NULL; i++)
		if (strcasecmp(code, codes[i]) == 0)
			return 1;
	return 0;
}
