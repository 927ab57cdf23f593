/* guard: response normalization and desync recognition. */
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config.h"
#include "guard.h"

/* Room for what a rewrite may add to a line besides capabilities.add. */
#define GUARD_SLACK	256

/* Length of line without its CRLF or LF. */
static size_t
guard_content_len(const char *line, size_t len)
{
	if (len > 0 && line[len - 1] == '\n')
		len--;
	if (len > 0 && line[len - 1] == '\r')
		len--;
	return len;
}

/* Copy bytes [from, to) of line into a NUL-terminated string (NULL on ENOMEM). */
static char *
guard_substr(const char *line, size_t from, size_t to)
{
	char *s;

	if (to < from)
		to = from;
	if ((s = malloc(to - from + 1)) == NULL)
		return NULL;
	memcpy(s, line + from, to - from);
	s[to - from] = '\0';
	return s;
}

/* Does any regex in v[0..n) match text? */
static int
guard_match_any(const regex_t *v, size_t n, const char *text)
{
	for (size_t i = 0; i < n; i++)
		if (regexec(&v[i], text, 0, NULL, 0) == 0)
			return 1;
	return 0;
}

/* Is cap (len bytes) removed by configuration or by necessity? */
static int
guard_cap_removed(const struct config *cf, const char *cap, size_t len)
{
	/*
	 * COMPRESS and STARTTLS would change the byte stream under the
	 * parser; a stream imapgate cannot read cannot be guarded.
	 */
	if ((len >= 9 && strncasecmp(cap, "COMPRESS=", 9) == 0) ||
	    (len == 8 && strncasecmp(cap, "STARTTLS", 8) == 0))
		return 1;
	for (size_t i = 0; i < cf->ncap_remove; i++) {
		const char *r = cf->cap_remove[i];
		size_t rl = strlen(r);

		if (rl > 0 && r[rl - 1] == '=' ? (len >= rl && strncasecmp(cap, r, rl) == 0) :
		    (len == rl && strncasecmp(cap, r, rl) == 0))
			return 1;
	}
	return 0;
}

/* Append cap to the list out[0..o) unless it is there; returns the new length. */
static size_t
guard_caps_add(char *out, size_t o, const char *a)
{
	size_t al = strlen(a), p = 0;

	while (p < o) {
		size_t q = p;
		while (q < o && out[q] != ' ')
			q++;
		if (q - p == al && strncasecmp(out + p, a, al) == 0)
			return o;
		p = q + 1;
	}
	if (o > 0)
		out[o++] = ' ';
	memcpy(out + o, a, al);
	return o + al;
}

/* Filter the space-separated list in[0..len) into out; returns bytes written. */
static size_t
guard_caps(const struct config *cf, const char *in, size_t len, unsigned caps, char *out)
{
	size_t i = 0, o = 0, j, k;

	while (i < len) {
		while (i < len && in[i] == ' ')
			i++;
		for (j = i; j < len && in[j] != ' '; j++)
			;
		if (j > i && !guard_cap_removed(cf, in + i, j - i)) {
			if (o > 0)
				out[o++] = ' ';
			memcpy(out + o, in + i, j - i);
			o += j - i;
		}
		i = j;
	}
	for (k = 0; k < cf->ncap_add; k++)
		o = guard_caps_add(out, o, cf->cap_add[k]);
	if (caps & GUARD_CAP_STARTTLS)
		o = guard_caps_add(out, o, "STARTTLS");
	if (caps & GUARD_CAP_LOGINDISABLED)
		o = guard_caps_add(out, o, "LOGINDISABLED");
	/* imapgate's own COMPRESS (the backend's is removed above). */
	if (caps & GUARD_CAP_COMPRESS)
		o = guard_caps_add(out, o, "COMPRESS=DEFLATE");
	return o;
}

/* Bytes capabilities.add may add to one list. */
static size_t
guard_caps_slack(const struct config *cf)
{
	size_t n = 0;

	for (size_t k = 0; k < cf->ncap_add; k++)
		n += strlen(cf->cap_add[k]) + 1;
	return n + sizeof(" STARTTLS LOGINDISABLED COMPRESS=DEFLATE");
}

/* Does rule r match this status response? */
static int
guard_rule_matches(const struct config_rule *r, const struct imap_line *l,
    const char *text)
{
	switch (r->match_status) {
	case CONFIG_STATUS_ANY:
		break;
	case CONFIG_STATUS_OK:
		if (l->status != IMAP_STATUS_OK)
			return 0;
		break;
	case CONFIG_STATUS_NO:
		if (l->status != IMAP_STATUS_NO)
			return 0;
		break;
	case CONFIG_STATUS_BAD:
		if (l->status != IMAP_STATUS_BAD)
			return 0;
		break;
	case CONFIG_STATUS_BYE:
		if (l->status != IMAP_STATUS_BYE)
			return 0;
		break;
	case CONFIG_STATUS_PREAUTH:
		if (l->status != IMAP_STATUS_PREAUTH)
			return 0;
		break;
	case CONFIG_STATUS_OTHER:
		if (l->status != IMAP_STATUS_OTHER)
			return 0;
		break;
	default:
		return 0;
	}
	if (r->match_code != NULL) {
		if (strcasecmp(r->match_code, "none") == 0 ? l->code[0] != '\0' :
		    strcasecmp(r->match_code, l->code) != 0)
			return 0;
	}
	if (r->has_re && regexec(&r->match_re, text, 0, NULL, 0) != 0)
		return 0;
	return 1;
}

/* The status word for a configured status. */
static const char *
guard_status_word(enum config_status st)
{
	switch (st) {
	case CONFIG_STATUS_NO:
		return "NO";
	case CONFIG_STATUS_BAD:
		return "BAD";
	case CONFIG_STATUS_BYE:
		return "BYE";
	default:
		return NULL;
	}
}

/* Rebuild "* CAPABILITY ..." with the filtered list. */
static int
guard_rewrite_capdata(const struct config *cf, const struct imap_line *l,
    const char *line, size_t len, unsigned caps, struct guard_out *out)
{
	size_t clen = guard_content_len(line, len), start, o;
	const char *kw;

	/* The list starts after "* CAPABILITY" (the word in any case). */
	(void)l;
	if (clen < 2 || line[0] != '*' || line[1] != ' ')
		return 0;
	kw = memchr(line + 2, ' ', clen - 2);
	start = kw != NULL ? (size_t)(kw - line) : clen;
	if ((out->buf = malloc(len + guard_caps_slack(cf) + GUARD_SLACK)) == NULL)
		return -1;
	memcpy(out->buf, line, start);
	o = start;
	out->buf[o++] = ' ';
	o += guard_caps(cf, line + start, clen - start, caps, out->buf + o);
	if (out->buf[o - 1] == ' ')
		o--;
	memcpy(out->buf + o, line + clen, len - clen);
	o += len - clen;
	if (o == len && memcmp(out->buf, line, len) == 0) {
		free(out->buf);
		out->buf = NULL;
		return 0;
	}
	out->len = o;
	out->caps_changed = 1;
	snprintf(out->original, sizeof(out->original), "CAPABILITY");
	return 1;
}

/* Rewrite one response line; see guard.h. */
int
guard_rewrite(const struct config *cf, const struct imap_line *l,
    const char *line, size_t len, unsigned caps, struct guard_out *out)
{
	size_t clen = guard_content_len(line, len), o, codelen, arglen;
	const char *status = NULL, *codename = NULL, *codeargs = NULL;
	const struct config_rule *rule = NULL;
	char *text;
	int has_code, keep_code, fails;

	memset(out, 0, sizeof(*out));
	if (l->nliterals > 0 || l->toolong)
		return 0;
	if (l->kind == IMAP_KIND_UNTAGGED && l->status == IMAP_STATUS_NONE &&
	    strcasecmp(l->name, "CAPABILITY") == 0)
		return guard_rewrite_capdata(cf, l, line, len, caps, out);
	if (l->status == IMAP_STATUS_NONE ||
	    (l->kind != IMAP_KIND_TAGGED && l->kind != IMAP_KIND_UNTAGGED &&
	    l->kind != IMAP_KIND_GREETING))
		return 0;
	if (l->text_off > clen || l->status_off >= clen)
		return 0;

	has_code = l->code_end > l->code_off && l->code_off > 0;
	/*
	 * The common case, checked without building anything: no rule to
	 * try, a standard status, and no code or a standard one that is not
	 * a capability list.  Most tagged OKs end here.
	 */
	if (cf->nrules == 0 && l->status != IMAP_STATUS_OTHER &&
	    (!has_code || ((cf->rewrite_keep_unknown || imap_code_is_standard(l->code) ||
	    l->status == IMAP_STATUS_OK || l->status == IMAP_STATUS_PREAUTH) &&
	    strcmp(l->code, "CAPABILITY") != 0)))
		return 0;
	if ((text = guard_substr(line, l->text_off, clen)) == NULL)
		return -1;
	for (size_t i = 0; i < cf->nrules; i++)
		if (guard_rule_matches(&cf->rules[i], l, text)) {
			rule = &cf->rules[i];
			break;
		}

	/* Status: a rule decides; otherwise a tagged non-standard word becomes NO. */
	if (rule != NULL && rule->set_status != CONFIG_STATUS_KEEP)
		status = guard_status_word(rule->set_status);
	else if (l->kind == IMAP_KIND_TAGGED && l->status == IMAP_STATUS_OTHER)
		status = "NO";
	if (status != NULL && strcasecmp(status, l->status_word) == 0)
		status = NULL;

	/*
	 * Code: a rule's set.code, else strip what the registry does not know
	 * from a failure (NO, BAD, BYE: clients act on those codes).  On OK
	 * and PREAUTH an unknown code passes: RFC 3501 tells clients to ignore
	 * codes they do not know, so removing one protects nobody and loses
	 * what clients that know it use (Courier's [MYRIGHTS ...]).
	 */
	keep_code = has_code;
	fails = status != NULL ? strcasecmp(status, "OK") != 0 && strcasecmp(status, "PREAUTH") != 0 :
	    l->status != IMAP_STATUS_OK && l->status != IMAP_STATUS_PREAUTH;
	if (rule != NULL && rule->set_code != NULL) {
		if (strcasecmp(rule->set_code, "none") == 0)
			keep_code = 0;
		else
			codename = rule->set_code;
	} else if (has_code && fails && !cf->rewrite_keep_unknown &&
	    !imap_code_is_standard(l->code)) {
		int allowed = 0;
		for (size_t i = 0; i < cf->nallow_codes && !allowed; i++)
			allowed = strcasecmp(cf->allow_codes[i], l->code) == 0;
		keep_code = allowed;
	}
	if (keep_code && codename == NULL) {
		/* The original code, its arguments filtered when it is CAPABILITY. */
		codeargs = line + l->code_off + 1;
	}

	if ((out->buf = malloc(len + guard_caps_slack(cf) + GUARD_SLACK + strlen(text))) == NULL) {
		free(text);
		return -1;
	}
	memcpy(out->buf, line, l->status_off);
	o = l->status_off;
	if (status != NULL) {
		o += (size_t)sprintf(out->buf + o, "%s", status);
		out->status_changed = 1;
	} else {
		/* The word as the server wrote it: case is not ours to change. */
		memcpy(out->buf + o, line + l->status_off, strlen(l->status_word));
		o += strlen(l->status_word);
	}
	if (codename != NULL) {
		o += (size_t)sprintf(out->buf + o, " [%s]", codename);
		out->code_changed = 1;
	} else if (codeargs != NULL) {
		codelen = strlen(l->code);
		out->buf[o++] = ' ';
		out->buf[o++] = '[';
		if (strcmp(l->code, "CAPABILITY") == 0) {
			memcpy(out->buf + o, codeargs, codelen);
			o += codelen;
			arglen = l->code_end - 1 - (l->code_off + 1 + codelen);
			out->buf[o++] = ' ';
			o += guard_caps(cf, codeargs + codelen, arglen, caps, out->buf + o);
			if (out->buf[o - 1] == ' ')
				o--;
		} else {
			arglen = l->code_end - 1 - (l->code_off + 1);
			memcpy(out->buf + o, codeargs, arglen);
			o += arglen;
		}
		out->buf[o++] = ']';
	} else if (has_code)
		out->code_changed = 1;
	out->buf[o++] = ' ';
	if (text[0] != '\0') {
		memcpy(out->buf + o, text, strlen(text));
		o += strlen(text);
	} else if (has_code && !keep_code) {
		/* resp-text needs text (RFC 3501 9); keep the dropped code's name as it. */
		const char *t = l->code[0] != '\0' ? l->code : "(no text)";
		memcpy(out->buf + o, t, strlen(t));
		o += strlen(t);
	} else
		o--;
	memcpy(out->buf + o, line + clen, len - clen);
	o += len - clen;
	free(text);

	if (o == len && memcmp(out->buf, line, len) == 0) {
		free(out->buf);
		memset(out, 0, sizeof(*out));
		return 0;
	}
	if (!out->status_changed && !out->code_changed)
		out->caps_changed = 1;
	snprintf(out->original, sizeof(out->original), "%s",
	    out->caps_changed ? "CAPABILITY" : has_code && l->code[0] != '\0' ? l->code :
	    has_code ? "(unreadable)" : l->status_word);
	out->len = o;
	return 1;
}

/* Rebuild a status line without its response code. */
int
guard_drop_code(const struct imap_line *l, const char *line, size_t len,
    struct guard_out *out)
{
	size_t clen = guard_content_len(line, len), o;

	memset(out, 0, sizeof(*out));
	if (l->nliterals > 0 || l->toolong || l->code_end <= l->code_off ||
	    l->code_off == 0 || l->text_off > clen)
		return 0;
	if ((out->buf = malloc(len + GUARD_SLACK)) == NULL)
		return -1;
	memcpy(out->buf, line, l->code_off);
	o = l->code_off;
	if (l->text_off < clen) {
		memcpy(out->buf + o, line + l->text_off, clen - l->text_off);
		o += clen - l->text_off;
	} else
		o += (size_t)sprintf(out->buf + o, "ready");
	memcpy(out->buf + o, line + clen, len - clen);
	out->len = o + (len - clen);
	out->code_changed = 1;
	snprintf(out->original, sizeof(out->original), "%s", l->code);
	return 1;
}

/* Match text of a NO/BAD against guard.desync_patterns. */
int
guard_is_wrong_state(const struct config *cf, const struct imap_line *l,
    const char *line, size_t len)
{
	size_t clen = guard_content_len(line, len);
	char *text;
	int r;

	if (l->nliterals > 0 || l->toolong || l->text_off > clen ||
	    (l->status != IMAP_STATUS_NO && l->status != IMAP_STATUS_BAD))
		return 0;
	if ((text = guard_substr(line, l->text_off, clen)) == NULL)
		return 0;
	r = guard_match_any(cf->desync_re, cf->ndesync_patterns, text);
	free(text);
	return r;
}

/* Match an untagged OK's text against guard.greeting_patterns. */
int
guard_is_greeting(const struct config *cf, const struct imap_line *l,
    const char *line, size_t len)
{
	size_t clen = guard_content_len(line, len);
	char *text;
	int r;

	if (l->nliterals > 0 || l->toolong || l->text_off > clen ||
	    (l->status != IMAP_STATUS_OK && l->status != IMAP_STATUS_PREAUTH))
		return 0;
	if (l->status == IMAP_STATUS_PREAUTH)
		return 1;
	if ((text = guard_substr(line, l->text_off, clen)) == NULL)
		return 0;
	r = guard_match_any(cf->greeting_re, cf->ngreeting_patterns, text);
	free(text);
	return r;
}
