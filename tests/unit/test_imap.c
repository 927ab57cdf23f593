/*
 * test_imap: unit tests for the incremental IMAP tokenizer (proxy/imap.c).
 *
 * Every input is parsed once whole, then again split at every byte
 * position, at pairs of positions, byte by byte and in random chunks,
 * with literal bytes both fed and skipped; every run must produce the
 * same transcript (events, their stream offsets and the line fields).
 * The recorded sessions in tests/fixtures are run the same way.
 */
#include "imap.h"
#include "check.h"

#include <dirent.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_LINES	256	/* lines kept from one run for field checks */
#define FIXTURE_MAX	(256 * 1024)


struct tbuf {
	char	*s;
	size_t	 len, cap;
};

/* Append printf output to a growing transcript. */
static void
tbuf_printf(struct tbuf *t, const char *fmt, ...)
{
	va_list ap;
	int n;

	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(t->s ? t->s + t->len : NULL, t->cap - t->len, fmt, ap);
		va_end(ap);
		if (n >= 0 && (size_t)n < t->cap - t->len) {
			t->len += (size_t)n;
			return;
		}
		t->cap = t->cap * 2 + (size_t)n + 256;
		t->s = realloc(t->s, t->cap);
		if (t->s == NULL)
			abort();
	}
}

/* Append raw bytes to a transcript. */
static void
tbuf_add(struct tbuf *t, const void *d, size_t n)
{
	if (t->cap - t->len < n) {
		t->cap = t->cap * 2 + n + 256;
		t->s = realloc(t->s, t->cap);
		if (t->s == NULL)
			abort();
	}
	memcpy(t->s + t->len, d, n);
	t->len += n;
}

/* Transcripts are binary (fast) unless a failure is being shown. */
static int text_mode;

/* What one run produced. */
struct run {
	struct tbuf	 tr;		/* full transcript */
	char		 ev[4096];	/* event letters */
	size_t		 nev;
	struct imap_line lines[MAX_LINES];
	size_t		 nlines;
	int		 leaked;	/* secret found in the parser afterwards */
};

enum split { SPLIT_WHOLE, SPLIT_LIST, SPLIT_RANDOM };

struct sched {
	enum split	 kind;
	size_t		 cuts[4];	/* SPLIT_LIST: cut positions, ascending */
	size_t		 ncuts;
	unsigned	 seed, maxchunk;
	int		 skip;		/* skip literal bytes instead of feeding */
};

/* Tiny deterministic PRNG for chunk sizes. */
static unsigned
rnd(unsigned *s)
{
	*s = *s * 1103515245u + 12345u;
	return (*s >> 16) & 0x7fff;
}

/* Serialise a line into the transcript. */
static void
dump_line(struct tbuf *t, const struct imap_line *l)
{
	tbuf_printf(t, " k=%d tag=[%s] name=[%s] sub=[%s] num=%u/%d st=%d sw=[%s] "
	    "code=[%s] off=%zu,%zu,%zu,%zu arg=[%s] user=[%s] ir=%d nl=%u tl=%d "
	    "len=%llu lf=%d\n", l->kind, l->tag, l->name, l->subname, l->number,
	    l->has_number, l->status, l->status_word, l->code, l->status_off,
	    l->code_off, l->code_end, l->text_off, l->arg, l->user, l->sasl_ir,
	    l->nliterals, l->toolong, (unsigned long long)l->len, l->bare_lf);
}

/* Record one event at stream offset pos. */
static void
record(struct run *r, struct imap_parser *p, const struct imap_event *ev, size_t pos)
{
	static const char letters[] = "NLHDTE";

	if (r->nev < sizeof(r->ev) - 1)
		r->ev[r->nev++] = letters[ev->type];
	if (ev->type == IMAP_EV_LINE && r->nlines < MAX_LINES)
		r->lines[r->nlines++] = *imap_parse_line(p);
	if (!text_mode) {
		const struct imap_line *l = imap_parse_line(p);
		uint64_t v[24];
		size_t k = 0;

		v[k++] = pos;
		v[k++] = (uint64_t)ev->type;
		v[k++] = ev->lit_len;
		v[k++] = (uint64_t)ev->lit_sync;
		v[k++] = (uint64_t)ev->lit8;
		v[k++] = (uint64_t)imap_parse_literal_wanted(p);
		if (ev->type == IMAP_EV_LINE) {
			v[k++] = l->kind;
			v[k++] = l->number;
			v[k++] = (uint64_t)l->has_number;
			v[k++] = l->status;
			v[k++] = l->status_off;
			v[k++] = l->code_off;
			v[k++] = l->code_end;
			v[k++] = l->text_off;
			v[k++] = (uint64_t)l->sasl_ir;
			v[k++] = l->nliterals;
			v[k++] = (uint64_t)l->toolong;
			v[k++] = l->len;
			v[k++] = (uint64_t)l->bare_lf;
			v[k++] = (uint64_t)p->mode;
			tbuf_add(&r->tr, v, k * sizeof(v[0]));
			tbuf_add(&r->tr, l->tag, strlen(l->tag) + 1);
			tbuf_add(&r->tr, l->name, strlen(l->name) + 1);
			tbuf_add(&r->tr, l->subname, strlen(l->subname) + 1);
			tbuf_add(&r->tr, l->status_word, strlen(l->status_word) + 1);
			tbuf_add(&r->tr, l->code, strlen(l->code) + 1);
			tbuf_add(&r->tr, l->arg, strlen(l->arg) + 1);
			tbuf_add(&r->tr, l->user, strlen(l->user) + 1);
		} else
			tbuf_add(&r->tr, v, k * sizeof(v[0]));
		return;
	}
	tbuf_printf(&r->tr, "%zu %c", pos, letters[ev->type]);
	if (ev->type == IMAP_EV_LITERAL_HEAD)
		tbuf_printf(&r->tr, " n=%llu s=%d 8=%d w=%d", (unsigned long long)ev->lit_len,
		    ev->lit_sync, ev->lit8, imap_parse_literal_wanted(p));
	if (ev->type == IMAP_EV_LINE) {
		dump_line(&r->tr, imap_parse_line(p));
		tbuf_printf(&r->tr, " mode=%d", p->mode);
	}
	if (ev->type == IMAP_EV_ERROR)
		tbuf_printf(&r->tr, " err=[%s]", p->error);
	tbuf_printf(&r->tr, "\n");
}

/*
 * Stand in for the relay's state model: a SASL exchange ends after one
 * response (PLAIN) or with SASL-IR, as the server's tagged reply would.
 */
static void
fake_server_reply(struct imap_parser *p)
{
	const struct imap_line *l = imap_parse_line(p);

	if (l->kind == IMAP_KIND_SASL || l->kind == IMAP_KIND_SASL_CANCEL ||
	    (l->kind == IMAP_KIND_COMMAND && l->sasl_ir))
		imap_parse_set_mode(p, IMAP_MODE_COMMAND);
}

/* Parse buf with the given chunking into r. */
static void
run_input(struct run *r, enum imap_dir dir, size_t max_line, const char *buf,
    size_t len, const struct sched *sc, const char *secret)
{
	struct imap_parser p;
	struct imap_event ev;
	size_t pos = 0, ci = 0, end, off, c;
	unsigned seed = sc->seed;
	int inlit = 0, stop = 0;

	memset(&r->tr, 0, sizeof(r->tr));	/* lines[] is large: reset counters only */
	r->nev = r->nlines = 0;
	r->leaked = 0;
	imap_parse_init(&p, dir, max_line);
	while (!stop && (pos < len || pos == 0)) {
		if (sc->kind == SPLIT_WHOLE)
			end = len;
		else if (sc->kind == SPLIT_LIST)
			end = ci < sc->ncuts ? sc->cuts[ci++] : len;
		else
			end = pos + 1 + rnd(&seed) % sc->maxchunk;
		if (end > len)
			end = len;
		if (end < pos)
			end = pos;
		off = pos;
		for (;;) {
			if (off == end && !(inlit && imap_parse_literal_left(&p) == 0))
				break;
			if (inlit && sc->skip && !imap_parse_literal_wanted(&p)) {
				uint64_t left = imap_parse_literal_left(&p);
				size_t n = left < end - off ? (size_t)left : end - off;

				off += n;
				if (imap_parse_skip(&p, n)) {
					memset(&ev, 0, sizeof(ev));
					ev.type = IMAP_EV_LITERAL_DONE;
					record(r, &p, &ev, off);
					inlit = 0;
				}
				continue;
			}
			c = imap_parse_feed(&p, buf + off, end - off, &ev);
			off += c;
			if (ev.type != IMAP_EV_NONE)
				record(r, &p, &ev, off);
			if (ev.type == IMAP_EV_LITERAL_HEAD)
				inlit = 1;
			else if (ev.type == IMAP_EV_LITERAL_DONE)
				inlit = 0;
			else if (ev.type == IMAP_EV_LINE && dir == IMAP_DIR_CLIENT)
				fake_server_reply(&p);
			else if (ev.type == IMAP_EV_ERROR) {
				stop = 1;
				break;
			}
			/*
			 * Split runs give the working buffers back after every
			 * feed, as the relay does when it runs dry: the events
			 * must not change (whole runs keep them, for reference).
			 */
			if (sc->kind != SPLIT_WHOLE)
				imap_parse_release(&p);
			if (c == 0 && ev.type == IMAP_EV_NONE)
				break;
		}
		pos = end;
		if (len == 0)
			break;
	}
	if (!stop && inlit) {
		c = imap_parse_feed(&p, "", 0, &ev);
		if (ev.type != IMAP_EV_NONE)
			record(r, &p, &ev, pos);
	}
	r->ev[r->nev] = '\0';
	if (text_mode)
		tbuf_printf(&r->tr, "end boundary=%d left=%llu\n", imap_parse_at_boundary(&p),
		    (unsigned long long)imap_parse_literal_left(&p));
	else {
		uint64_t v[2] = { (uint64_t)imap_parse_at_boundary(&p), imap_parse_literal_left(&p) };

		tbuf_add(&r->tr, v, sizeof(v));
	}
	if (secret != NULL)
		r->leaked = memmem(&p, sizeof(p), secret, strlen(secret)) != NULL ||
		    (p.w != NULL && memmem(p.w, sizeof(*p.w), secret, strlen(secret)) != NULL);
	imap_parse_free(&p);
}

struct sched;
static void run_input(struct run *, enum imap_dir, size_t, const char *, size_t,
    const struct sched *, const char *);

/* Where a comparison's inputs came from, to re-run a failure in text. */
struct origin {
	enum imap_dir	 dir;
	size_t		 max_line;
	const char	*buf;
	size_t		 len;
	const struct sched *whole, *split;
};

/* Compare one run against the reference; report the first difference. */
static int
same_run(const char *name, const struct run *ref0, const struct run *r0, const char *how,
    const struct origin *o)
{
	struct run *ref, *r;
	size_t i;

	checks++;
	if (ref0->tr.len == r0->tr.len && memcmp(ref0->tr.s, r0->tr.s, r0->tr.len) == 0)
		return 1;
	failures++;
	ref = calloc(1, sizeof(*ref));
	r = calloc(1, sizeof(*r));
	text_mode = 1;
	run_input(ref, o->dir, o->max_line, o->buf, o->len, o->whole, NULL);
	run_input(r, o->dir, o->max_line, o->buf, o->len, o->split, NULL);
	text_mode = 0;
	for (i = 0; i < ref->tr.len && i < r->tr.len && ref->tr.s[i] == r->tr.s[i]; i++)
		;
	printf("FAIL %s: split %s differs at transcript byte %zu\n--- whole:\n%.*s\n--- split:\n%.*s\n",
	    name, how, i, (int)(ref->tr.len < 600 ? ref->tr.len : 600), ref->tr.s,
	    (int)(r->tr.len < 600 ? r->tr.len : 600), r->tr.s);
	free(ref->tr.s);
	free(r->tr.s);
	free(ref);
	free(r);
	return 0;
}

/*
 * Parse input whole (into *ref) and under every chunking; all runs must
 * agree.  secret, if set, must not be left anywhere in the parser.
 */
static void
check_splits(const char *name, enum imap_dir dir, size_t max_line, const char *buf,
    size_t len, struct run *ref, const char *secret, int thorough)
{
	struct run *r = calloc(1, sizeof(*r)), *bin = calloc(1, sizeof(*bin));
	struct sched sc, whole;
	struct origin o = { dir, max_line, buf, len, &whole, &sc };
	size_t i, j, step;
	int skip, bad = 0;
	char how[64];

	memset(&sc, 0, sizeof(sc));
	memset(&whole, 0, sizeof(whole));
	whole.kind = SPLIT_WHOLE;
	text_mode = 1;
	run_input(ref, dir, max_line, buf, len, &whole, secret);
	text_mode = 0;
	run_input(bin, dir, max_line, buf, len, &whole, secret);
	CHECK(!ref->leaked, "%s: secret left in parser", name);
	for (skip = 0; skip <= 1 && !bad; skip++) {
		sc.skip = skip;
		sc.kind = SPLIT_LIST;
		sc.ncuts = 1;
		for (i = 1; i < len && !bad; i++) {
			sc.cuts[0] = i;
			run_input(r, dir, max_line, buf, len, &sc, secret);
			snprintf(how, sizeof(how), "at %zu skip=%d", i, skip);
			bad = !same_run(name, bin, r, how, &o);
			if (r->leaked) {
				CHECK(!r->leaked, "%s: secret left (%s)", name, how);
				bad = 1;
			}
			free(r->tr.s);
		}
		sc.ncuts = 2;
		step = thorough ? 1 : len / 23 + 1;
		for (i = 1; i < len && !bad; i += step) {
			for (j = i + 1; j < len && !bad; j += step + 2) {
				sc.cuts[0] = i;
				sc.cuts[1] = j;
				run_input(r, dir, max_line, buf, len, &sc, secret);
				snprintf(how, sizeof(how), "at %zu,%zu skip=%d", i, j, skip);
				bad = !same_run(name, bin, r, how, &o);
				free(r->tr.s);
			}
		}
		sc.kind = SPLIT_RANDOM;
		for (i = 0; i < 40 && !bad; i++) {
			sc.seed = (unsigned)i * 7919u + 1;
			sc.maxchunk = i == 0 ? 1 : (i % 3 == 0 ? 4096 : (i % 3 == 1 ? 7 : 64));
			run_input(r, dir, max_line, buf, len, &sc, secret);
			snprintf(how, sizeof(how), "random seed %u max %u skip=%d", sc.seed,
			    sc.maxchunk, skip);
			bad = !same_run(name, bin, r, how, &o);
			if (r->leaked) {
				CHECK(!r->leaked, "%s: secret left (%s)", name, how);
				bad = 1;
			}
			free(r->tr.s);
		}
	}
	free(bin->tr.s);
	free(bin);
	free(r);
}

/* Standard base64 of len bytes of s into out (NUL-terminated). */
static void
b64(const unsigned char *s, size_t len, char *out)
{
	static const char a[] =
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	size_t i, o = 0;
	uint32_t v;

	for (i = 0; i < len; i += 3) {
		v = (uint32_t)s[i] << 16;
		if (i + 1 < len)
			v |= (uint32_t)s[i + 1] << 8;
		if (i + 2 < len)
			v |= s[i + 2];
		out[o++] = a[(v >> 18) & 63];
		out[o++] = a[(v >> 12) & 63];
		out[o++] = i + 1 < len ? a[(v >> 6) & 63] : '=';
		out[o++] = i + 2 < len ? a[v & 63] : '=';
	}
	out[o] = '\0';
}

/* One table case: input, expected event letters. */
struct tcase {
	const char	*name;
	enum imap_dir	 dir;
	size_t		 max_line;
	const char	*in;
	size_t		 inlen;		/* 0: strlen */
	const char	*events;	/* expected letters, NULL: don't check */
};

#define C IMAP_DIR_CLIENT
#define S IMAP_DIR_SERVER

static const char decoys[] =
    "\r\nA1 OK done\r\n* BYE fake\r\n+ go\r\n{5}\r\n* OK fake greeting\r\n";

/* Line n of a run, or an empty line if there are fewer. */
static const struct imap_line *
L(const struct run *r, size_t n)
{
	static struct imap_line none;

	return n < r->nlines ? &r->lines[n] : &none;
}

/* Run one table case through all splits and check its events. */
static struct run *
run_case(const struct tcase *t)
{
	struct run *ref = calloc(1, sizeof(*ref));
	size_t len = t->inlen ? t->inlen : strlen(t->in);

	check_splits(t->name, t->dir, t->max_line, t->in, len, ref, NULL, len < 400);
	if (t->events != NULL)
		CHECK(strcmp(ref->ev, t->events) == 0, "%s: events %s, want %s", t->name,
		    ref->ev, t->events);
	return ref;
}

/* Free a run from run_case. */
static void
run_free(struct run *r)
{
	free(r->tr.s);
	free(r);
}

/* Client commands. */
static void
test_client(void)
{
	struct run *r;
	char buf[2048];
	size_t n;

	{
		struct tcase t = { "pipelined", C, 0,
		    "a1 capability\r\nA2 NOOP\r\nA3 select \"Sent \\\"x\\\\y\"\r\n"
		    "A4 UID fetch 1:* (FLAGS)\r\nA5 examine INBOX\r\n", 0, "LLLLL" };
		r = run_case(&t);
		CHECK(strcmp(L(r, 0)->tag, "a1") == 0 && strcmp(L(r, 0)->name, "CAPABILITY") == 0,
		    "tag/name");
		CHECK(L(r, 0)->kind == IMAP_KIND_COMMAND && L(r, 0)->len == 15, "kind/len");
		CHECK(strcmp(L(r, 2)->arg, "Sent \"x\\y") == 0, "quoted arg [%s]", L(r, 2)->arg);
		CHECK(strcmp(L(r, 3)->name, "UID") == 0 && strcmp(L(r, 3)->subname, "FETCH") == 0,
		    "uid fetch [%s][%s]", L(r, 3)->name, L(r, 3)->subname);
		CHECK(strcmp(L(r, 4)->arg, "INBOX") == 0, "examine arg");
		run_free(r);
	}
	{
		struct tcase t = { "login quoted", C, 0,
		    "A1 LOGIN \"alice\" \"s3cr3tPW\"\r\nA2 LOGIN bob s3cr3tPW\r\n", 0, "LL" };
		r = run_case(&t);
		CHECK(strcmp(L(r, 0)->user, "alice") == 0, "user [%s]", L(r, 0)->user);
		CHECK(strcmp(L(r, 1)->user, "bob") == 0, "user [%s]", L(r, 1)->user);
		run_free(r);
		r = calloc(1, sizeof(*r));
		check_splits("login secret", C, 0, t.in, strlen(t.in), r, "s3cr3tPW", 1);
		run_free(r);
	}
	{
		struct tcase t = { "login literals", C, 0,
		    "A1 LOGIN {5}\r\nalice {8}\r\ns3cr3tPW\r\nA2 LOGIN {5+}\r\ncarol \"x\"\r\n",
		    0, "HDHDLHDL" };
		r = run_case(&t);
		CHECK(strcmp(L(r, 0)->user, "alice") == 0 && L(r, 0)->nliterals == 2,
		    "literal user [%s]", L(r, 0)->user);
		CHECK(strcmp(L(r, 1)->user, "carol") == 0, "literal+ user [%s]", L(r, 1)->user);
		run_free(r);
		r = calloc(1, sizeof(*r));
		check_splits("login literal secret", C, 0, t.in, strlen(t.in), r, "s3cr3tPW", 1);
		run_free(r);
	}
	{
		/* AUTHENTICATE PLAIN with SASL-IR, then without, then cancelled */
		static const unsigned char plain[] = "\0alice\0s3cr3tPW";
		static const unsigned char plain2[] = "admin\0bob\0s3cr3tPW";
		char enc[64], enc2[64];

		b64(plain, sizeof(plain) - 1, enc);
		b64(plain2, sizeof(plain2) - 1, enc2);
		n = (size_t)snprintf(buf, sizeof(buf),
		    "A1 AUTHENTICATE PLAIN %s\r\nA2 authenticate plain\r\n%s\r\n"
		    "A3 AUTHENTICATE PLAIN\r\n*\r\nA4 AUTHENTICATE XOAUTH2\r\nabc\r\nA5 NOOP\r\n",
		    enc, enc2);
		struct tcase t = { "authenticate", C, 0, buf, n, "LLLLLLLL" };
		r = run_case(&t);
		CHECK(strcmp(L(r, 0)->user, "alice") == 0 && L(r, 0)->sasl_ir == 1,
		    "IR user [%s]", L(r, 0)->user);
		CHECK(strcmp(L(r, 0)->arg, "PLAIN") == 0, "mech");
		CHECK(L(r, 1)->kind == IMAP_KIND_COMMAND && L(r, 1)->sasl_ir == 0, "no IR");
		CHECK(L(r, 2)->kind == IMAP_KIND_SASL && strcmp(L(r, 2)->user, "bob") == 0,
		    "sasl line user [%s] kind %d", L(r, 2)->user, L(r, 2)->kind);
		CHECK(L(r, 4)->kind == IMAP_KIND_SASL_CANCEL, "cancel kind %d", L(r, 4)->kind);
		CHECK(L(r, 6)->kind == IMAP_KIND_SASL && L(r, 6)->user[0] == '\0', "xoauth");
		CHECK(L(r, 7)->kind == IMAP_KIND_COMMAND, "back to commands");
		run_free(r);
		r = calloc(1, sizeof(*r));
		check_splits("authenticate secret", C, 0, buf, n, r, "s3cr3tPW", 1);
		run_free(r);
	}
	{
		struct tcase t = { "idle", C, 0,
		    "A1 IDLE\r\nnoop\r\ndone\r\nA2 IDLE\r\nDONE\nA3 NOOP\r\n", 0, "LLLLLL" };
		r = run_case(&t);
		CHECK(L(r, 1)->kind == IMAP_KIND_INVALID, "noop in idle %d", L(r, 1)->kind);
		CHECK(L(r, 2)->kind == IMAP_KIND_DONE, "done %d", L(r, 2)->kind);
		CHECK(L(r, 4)->kind == IMAP_KIND_DONE && L(r, 4)->bare_lf, "bare LF done");
		CHECK(L(r, 5)->kind == IMAP_KIND_COMMAND, "after idle");
		run_free(r);
	}
	{
		n = (size_t)snprintf(buf, sizeof(buf),
		    "A1 APPEND Drafts (\\Seen) {%zu}\r\n%s\r\n"
		    "A2 APPEND INBOX {%zu+}\r\n%s\r\n"
		    "A3 APPEND INBOX ~{%zu}\r\n%s\r\n"
		    "A4 APPEND INBOX {3}\r\nabc {0}\r\n\r\n"
		    "A5 NOOP\r\n",
		    sizeof(decoys) - 1, decoys, sizeof(decoys) - 1, decoys, sizeof(decoys) - 1,
		    decoys);
		struct tcase t = { "append decoys", C, 0, buf, n, "HDLHDLHDLHDHDLL" };
		r = run_case(&t);
		CHECK(strcmp(L(r, 0)->arg, "Drafts") == 0 && L(r, 0)->nliterals == 1, "append");
		CHECK(strcmp(L(r, 4)->tag, "A5") == 0, "after decoys [%s]", L(r, 4)->tag);
		CHECK(strstr(r->tr.s, "n=57 s=1 8=0") && strstr(r->tr.s, "n=57 s=0 8=0") &&
		    strstr(r->tr.s, "n=57 s=1 8=1"), "literal kinds:\n%s", r->tr.s);
		run_free(r);
	}
	{
		/* 8-bit and NUL bytes in literals; MULTIAPPEND */
		static const char in[] = "A1 APPEND INBOX {4}\r\n\0\xff\r\n (\\Seen) {2}\r\n\n\0\r\n"
		    "A2 SELECT {5}\r\nI\0B\xe4X\r\n";
		struct tcase t = { "binary multiappend", C, 0, in, sizeof(in) - 1, "HDHDLHDL" };
		r = run_case(&t);
		CHECK(L(r, 0)->nliterals == 2 && L(r, 0)->len == 21 + 4 + 14 + 2 + 2, "multi len %llu",
		    (unsigned long long)L(r, 0)->len);
		CHECK(memcmp(L(r, 1)->arg, "I", 2) == 0, "arg with NUL is cut at NUL");
		run_free(r);
	}
	{
		struct tcase t = { "invalid lines", C, 0,
		    "\r\n A1 NOOP\r\nA1\r\n+A NOOP\r\nA(1 NOOP\r\nA1 NO\"OP\r\n"
		    "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA NOOP\r\n",
		    0, "LLLLLLL" };
		r = run_case(&t);
		CHECK(L(r, 0)->kind == IMAP_KIND_INVALID && L(r, 0)->tag[0] == '\0', "empty");
		CHECK(L(r, 1)->kind == IMAP_KIND_INVALID, "leading space");
		CHECK(L(r, 2)->kind == IMAP_KIND_INVALID && strcmp(L(r, 2)->tag, "A1") == 0,
		    "tag only");
		CHECK(L(r, 3)->kind == IMAP_KIND_INVALID && L(r, 3)->tag[0] == '\0', "plus tag");
		CHECK(L(r, 4)->kind == IMAP_KIND_INVALID, "paren tag");
		CHECK(L(r, 5)->kind == IMAP_KIND_INVALID && strcmp(L(r, 5)->tag, "A1") == 0,
		    "bad name");
		CHECK(L(r, 6)->kind == IMAP_KIND_INVALID && L(r, 6)->tag[0] == '\0', "long tag");
		run_free(r);
	}
	{
		char big[400];

		memset(big, 'x', sizeof(big));
		n = (size_t)snprintf(buf, sizeof(buf), "A1 SELECT %.*s\r\nA2 APPEND INBOX %.*s {3}\r\nabc\r\nA3 NOOP\r\n",
		    200, big, 200, big);
		struct tcase t = { "toolong", C, 64, buf, n, "TLTHDLL" };
		r = run_case(&t);
		CHECK(L(r, 0)->toolong && strcmp(L(r, 0)->tag, "A1") == 0, "toolong line");
		CHECK(L(r, 1)->toolong && L(r, 1)->nliterals == 1, "toolong literal line");
		CHECK(!L(r, 2)->toolong, "next line fine");
		CHECK(strstr(r->tr.s, "65 T") != NULL, "toolong position:\n%s", r->tr.s);
		run_free(r);
	}
	{
		struct tcase t = { "huge literal", C, 0,
		    "A1 APPEND INBOX {99999999999999999999}\r\nA2 NOOP\r\n", 0, "E" };
		run_free(run_case(&t));
		struct tcase t2 = { "above limit", C, 0,
		    "A1 APPEND INBOX {1099511627777}\r\n", 0, "E" };
		run_free(run_case(&t2));
		struct tcase t3 = { "at limit", C, 0,
		    "A1 APPEND INBOX {1099511627776}\r\n", 0, "H" };
		run_free(run_case(&t3));
		struct tcase t4 = { "garbage header", C, 0, "A1 APPEND INBOX {1x2}\r\n", 0, "L" };
		r = run_case(&t4);
		CHECK(L(r, 0)->bad != NULL, "garbage header is bad");
		run_free(r);
		struct tcase t5 = { "many digits", C, 0,
		    "A1 APPEND INBOX {0000000000000000000000000000000000000000001}\r\n", 0, "E" };
		run_free(run_case(&t5));
		struct tcase t6 = { "brace text", C, 0, "A1 NOOP }\r\nA2 X {}x\r\n", 0, "LL" };
		run_free(run_case(&t6));
	}
}

/*
 * Client framing (issue 13): quoted strings followed exactly, literal
 * headers only at a token start and the line end, everything else marked.
 * Each case runs through every split by run_case.
 */
static void
test_client_framing(void)
{
	static const struct {
		const char	*name, *in, *events;
		int		 bad, strict;
	} cases[] = {
		{ "quoted literal marker", "a NOOP \"x{19+}\r\nb LOGIN demo demo\r\n\r\n", "HDL", 1, 0 },
		{ "quoted marker closed", "a SELECT \"x{5}\"\r\n", "L", 0, 0 },
		{ "escaped quote", "a SELECT \"x\\\" {5}\r\nabcde\r\n", "HDL", 1, 0 },
		{ "escaped backslash", "a SELECT \"x\\\\\" {5}\r\nINBOX\r\n", "HDL", 0, 0 },
		{ "atom literal marker", "a NOOP x{5}\r\nabcde\r\n", "HDL", 1, 0 },
		{ "unterminated quote", "a SELECT \"INBOX\r\n", "L", 1, 0 },
		{ "double space", "a SELECT  {5}\r\nINBOX\r\n", "HDL", 0, 1 },
		{ "quote in atom", "a SELECT IN\"BOX\r\n", "L", 1, 0 },
		{ "nul", "a SELECT IN\0BOX {1}\r\nx\r\n", "HDL", 1, 0 },
		{ "bare cr", "a SELECT IN\rBOX\r\n", "L", 1, 0 },
		{ "unbalanced", "a FETCH 1 (FLAGS\r\n", "L", 0, 1 },
		{ "canonical", "a FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (From)]<0.10>)\r\n", "L", 0, 0 },
		{ "list literal", "a LIST \"\" {1+}\r\n*\r\n", "HDL", 0, 0 },
		{ "literal8", "a APPEND x (\\Seen) ~{3}\r\nabc\r\n", "HDL", 0, 0 },
		{ "two literals", "a LOGIN {4}\r\ndemo {4+}\r\ndemo\r\n", "HDHDL", 0, 0 },
		{ "after literal", "a LOGIN {4}\r\ndemo\"x\"\r\n", "HDL", 1, 0 },
		{ "empty list", "a APPEND x () {1}\r\nz\r\n", "HDL", 0, 0 },
		{ "header then text", "a NOOP {5}x\r\n", "L", 1, 0 },
	};
	struct run *r;
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct tcase t = { cases[i].name, C, 0, cases[i].in, 0, cases[i].events };

		t.inlen = strlen(cases[i].in);
		if (strcmp(cases[i].name, "nul") == 0)
			t.inlen = strlen("a SELECT IN") + 1 + strlen("BOX {1}\r\nx\r\n");
		r = run_case(&t);
		CHECK((L(r, 0)->bad != NULL) == cases[i].bad, "%s: bad=%s", cases[i].name,
		    L(r, 0)->bad ? L(r, 0)->bad : "-");
		CHECK(cases[i].bad || (L(r, 0)->strict != NULL) == cases[i].strict, "%s: strict=%s",
		    cases[i].name, L(r, 0)->strict ? L(r, 0)->strict : "-");
		run_free(r);
	}
}

/* Server responses. */
static void
test_server(void)
{
	struct run *r;
	char buf[4096];
	size_t n;

	{
		struct tcase t = { "greeting ok", S, 0,
		    "* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID] Dovecot ready.\r\n"
		    "* CAPABILITY IMAP4rev1 IDLE\r\n* 5 EXISTS\r\n* 0 RECENT\r\n"
		    "* OK [UIDVALIDITY 1700000000] UIDs valid\r\n"
		    "* FLAGS (\\Answered \\Seen)\r\n"
		    "A1 OK [READ-WRITE] Select completed (0.001 + 0.000 secs).\r\n"
		    "A2 NO [TRYCREATE] Mailbox doesn't exist: Foo\r\n"
		    "A3 BAD Error in IMAP command: Unknown command [x]\r\n"
		    "A4 MAYBE whatever\r\n"
		    "A5 OK [APPENDUID 1 2] Append completed.\r\n"
		    "+ go ahead\r\n+\r\n"
		    "A6 OK\r\nA7 NO  [ALERT] two spaces\r\nA8 OK [ALERT no end\r\n"
		    "* BYE Logging out\r\n",
		    0, "LLLLLLLLLLLLLLLLL" };
		r = run_case(&t);
		CHECK(L(r, 0)->kind == IMAP_KIND_GREETING && L(r, 0)->status == IMAP_STATUS_OK,
		    "greeting");
		CHECK(strcmp(L(r, 0)->code, "CAPABILITY") == 0 && L(r, 0)->code_off == 5 &&
		    L(r, 0)->code_end == 47 && L(r, 0)->text_off == 48 && L(r, 0)->status_off == 2,
		    "greeting code [%s] %zu %zu %zu", L(r, 0)->code, L(r, 0)->code_off,
		    L(r, 0)->code_end, L(r, 0)->text_off);
		CHECK(L(r, 1)->kind == IMAP_KIND_UNTAGGED && strcmp(L(r, 1)->name, "CAPABILITY") == 0 &&
		    L(r, 1)->status == IMAP_STATUS_NONE, "capability");
		CHECK(L(r, 2)->has_number && L(r, 2)->number == 5 && strcmp(L(r, 2)->name, "EXISTS") == 0,
		    "exists");
		CHECK(strcmp(L(r, 4)->code, "UIDVALIDITY") == 0 && L(r, 4)->status == IMAP_STATUS_OK,
		    "uidvalidity");
		CHECK(L(r, 6)->kind == IMAP_KIND_TAGGED && strcmp(L(r, 6)->tag, "A1") == 0 &&
		    L(r, 6)->status == IMAP_STATUS_OK && strcmp(L(r, 6)->code, "READ-WRITE") == 0,
		    "tagged ok");
		CHECK(L(r, 7)->status == IMAP_STATUS_NO && strcmp(L(r, 7)->code, "TRYCREATE") == 0 &&
		    L(r, 7)->text_off == 18, "tagged no %zu", L(r, 7)->text_off);
		CHECK(L(r, 8)->status == IMAP_STATUS_BAD && L(r, 8)->code[0] == '\0' &&
		    L(r, 8)->code_off == 0 && L(r, 8)->text_off == 7, "bracket later is text");
		CHECK(L(r, 9)->status == IMAP_STATUS_OTHER && strcmp(L(r, 9)->status_word, "MAYBE") == 0,
		    "maybe");
		CHECK(strcmp(L(r, 10)->code, "APPENDUID") == 0 && L(r, 10)->code_end == 21, "appenduid");
		CHECK(L(r, 11)->kind == IMAP_KIND_CONTINUATION && L(r, 12)->kind == IMAP_KIND_CONTINUATION,
		    "continuation");
		CHECK(L(r, 13)->status == IMAP_STATUS_OK && L(r, 13)->text_off == 5, "bare ok %zu",
		    L(r, 13)->text_off);
		CHECK(L(r, 14)->code[0] == '\0' && L(r, 14)->text_off == 6, "two spaces");
		CHECK(L(r, 15)->code[0] == '\0' && L(r, 15)->code_end == 0, "unclosed code");
		CHECK(L(r, 16)->kind == IMAP_KIND_UNTAGGED && L(r, 16)->status == IMAP_STATUS_BYE, "bye");
		run_free(r);
	}
	{
		struct tcase t1 = { "greeting preauth", S, 0, "* PREAUTH [CAPABILITY X] hi\r\n", 0, "L" };
		r = run_case(&t1);
		CHECK(L(r, 0)->kind == IMAP_KIND_GREETING && L(r, 0)->status == IMAP_STATUS_PREAUTH, "preauth");
		run_free(r);
		struct tcase t2 = { "greeting bye", S, 0, "* BYE go away\n", 0, "L" };
		r = run_case(&t2);
		CHECK(L(r, 0)->status == IMAP_STATUS_BYE && L(r, 0)->bare_lf, "bye greeting");
		run_free(r);
		struct tcase t3 = { "greeting odd", S, 0, "* HELLO there\r\n", 0, "L" };
		r = run_case(&t3);
		CHECK(L(r, 0)->kind == IMAP_KIND_GREETING && L(r, 0)->status == IMAP_STATUS_OTHER,
		    "odd greeting");
		run_free(r);
		struct tcase t4 = { "greeting garbage", S, 0, "hello\r\n", 0, "L" };
		r = run_case(&t4);
		CHECK(L(r, 0)->kind == IMAP_KIND_GREETING && L(r, 0)->status == IMAP_STATUS_NONE,
		    "garbage greeting");
		run_free(r);
	}
	{
		n = (size_t)snprintf(buf, sizeof(buf),
		    "* OK ready\r\n* 1 FETCH (UID 7 BODY[] {%zu}\r\n%s)\r\n"
		    "* 2 FETCH (BINARY[] ~{%zu}\r\n%s FLAGS (\\Seen))\r\n"
		    "* LIST () \"/\" {5}\r\nIN\"BX\r\n"
		    "A1 OK {5}\r\n* 3 FETCH (BODY[] {0}\r\n)\r\n"
		    "* 4 FETCH (BODY[] {99999999999999999999}\r\n",
		    sizeof(decoys) - 1, decoys, sizeof(decoys) - 1, decoys);
		struct tcase t = { "fetch literals", S, 0, buf, n, "LHDLHDLHDLLHDLE" };
		r = run_case(&t);
		CHECK(L(r, 1)->kind == IMAP_KIND_UNTAGGED && L(r, 1)->number == 1 &&
		    strcmp(L(r, 1)->name, "FETCH") == 0 && L(r, 1)->nliterals == 1, "fetch");
		CHECK(strstr(r->tr.s, "n=57 s=0 8=1") != NULL, "literal8");
		CHECK(strcmp(L(r, 3)->name, "LIST") == 0, "list");
		CHECK(L(r, 4)->kind == IMAP_KIND_TAGGED && L(r, 4)->nliterals == 0, "no literal in text");
		run_free(r);
	}
}

/* Calls outside feed: cancel, set_mode, skip(0), code registry. */
static void
test_api(void)
{
	struct imap_parser p;
	struct imap_event ev;
	size_t c;
	const char *s1 = "A1 APPEND INBOX {10}\r\n";
	const char *s2 = "A2 NOOP\r\n";

	imap_parse_init(&p, IMAP_DIR_CLIENT, 0);
	c = imap_parse_feed(&p, s1, strlen(s1), &ev);
	CHECK(c == strlen(s1) && ev.type == IMAP_EV_LITERAL_HEAD && ev.lit_sync == 1 && ev.lit_len == 10,
	    "sync head");
	CHECK(!imap_parse_at_boundary(&p) && imap_parse_literal_left(&p) == 10, "in literal");
	CHECK(imap_parse_release(&p) == 0 && p.w != NULL, "no release inside a literal");
	imap_parse_literal_cancel(&p);
	CHECK(imap_parse_at_boundary(&p), "boundary after cancel");
	c = imap_parse_feed(&p, s2, strlen(s2), &ev);
	CHECK(ev.type == IMAP_EV_LINE && strcmp(imap_parse_line(&p)->tag, "A2") == 0 && imap_parse_line(&p)->len == 9,
	    "line after cancel");

	/* release at a boundary; the next feed reads on */
	CHECK(imap_parse_release(&p) == 1 && p.w == NULL && imap_parse_at_boundary(&p),
	    "release after a line");
	CHECK(imap_parse_release(&p) == 0, "release twice");
	c = imap_parse_feed(&p, "A3 NO", 5, &ev);
	CHECK(c == 5 && ev.type == IMAP_EV_NONE && imap_parse_release(&p) == 0, "no release mid-line");
	c = imap_parse_feed(&p, "OP\r\n", 4, &ev);
	CHECK(c == 4 && ev.type == IMAP_EV_LINE && strcmp(imap_parse_line(&p)->name, "NOOP") == 0,
	    "line across a refused release");
	imap_parse_restart(&p);
	CHECK(p.w != NULL && imap_parse_at_boundary(&p) && p.dir == IMAP_DIR_CLIENT, "restart keeps buffers");
	imap_parse_free(&p);

	/* {0} with skip(0) */
	imap_parse_init(&p, IMAP_DIR_CLIENT, 0);
	c = imap_parse_feed(&p, "A1 X {0}\r\n\r\n", 12, &ev);
	CHECK(c == 10 && ev.type == IMAP_EV_LITERAL_HEAD && ev.lit_len == 0, "{0} head");
	CHECK(imap_parse_skip(&p, 0) == 1, "skip(0) ends {0}");
	c = imap_parse_feed(&p, "\r\n", 2, &ev);
	CHECK(c == 2 && ev.type == IMAP_EV_LINE && imap_parse_line(&p)->nliterals == 1, "{0} line");
	CHECK(imap_parse_skip(&p, 0) == 0, "skip outside literal");
	imap_parse_free(&p);

	/* set_mode */
	imap_parse_init(&p, IMAP_DIR_CLIENT, 0);
	imap_parse_feed(&p, "A1 AUTHENTICATE CRAM-MD5\r\n", 26, &ev);
	CHECK(p.mode == IMAP_MODE_SASL, "sasl mode");
	imap_parse_feed(&p, "A2 NOOP\r\n", 9, &ev);
	CHECK(imap_parse_line(&p)->kind == IMAP_KIND_SASL, "sasl line");
	imap_parse_set_mode(&p, IMAP_MODE_COMMAND);
	imap_parse_feed(&p, "A2 NOOP\r\n", 9, &ev);
	CHECK(imap_parse_line(&p)->kind == IMAP_KIND_COMMAND, "command again");
	imap_parse_free(&p);

	/* after an error nothing more */
	imap_parse_init(&p, IMAP_DIR_SERVER, 0);
	imap_parse_feed(&p, "* 1 FETCH {123456789012345678901234567890}\r\n", 44, &ev);
	CHECK(ev.type == IMAP_EV_ERROR && p.error[0] != '\0', "error");
	c = imap_parse_feed(&p, "* OK\r\n", 6, &ev);
	CHECK(c == 0 && ev.type == IMAP_EV_ERROR, "sticky error");
	imap_parse_free(&p);

	CHECK(imap_code_is_standard("APPENDUID") && imap_code_is_standard("capability") &&
	    imap_code_is_standard("READ-ONLY") && !imap_code_is_standard("RateLimitedError") &&
	    !imap_code_is_standard("") && !imap_code_is_standard(NULL), "code registry");
}

/* Read a whole file into buf; returns length or -1. */
static long
read_file(const char *path, char *buf, size_t cap)
{
	FILE *f = fopen(path, "rb");
	size_t n;

	if (f == NULL)
		return -1;
	n = fread(buf, 1, cap, f);
	fclose(f);
	return (long)n;
}

/* Every recorded session in FIXTURES, at every split. */
static void
test_fixtures(void)
{
	const char *dir = getenv("FIXTURES");
	char path[2048], fixdir[1024], *buf;
	struct dirent *de;
	struct run *r;
	DIR *d;
	long n;
	int count = 0;
	size_t len;

	if (dir == NULL) {
		/* meson runs tests from the build dir; __FILE__ leads to the source */
		snprintf(fixdir, sizeof(fixdir) - 16, "%s", __FILE__);
		if (strrchr(fixdir, '/') != NULL)
			strcpy(strrchr(fixdir, '/'), "/../fixtures");
		else
			strcpy(fixdir, "tests/fixtures");
		dir = fixdir;
	}
	d = opendir(dir);
	if (d == NULL) {
		printf("note: no fixtures in %s\n", dir);
		return;
	}
	buf = malloc(FIXTURE_MAX);
	while ((de = readdir(d)) != NULL) {
		len = strlen(de->d_name);
		if (len < 5 || (strcmp(de->d_name + len - 4, ".c2s") != 0 &&
		    strcmp(de->d_name + len - 4, ".s2c") != 0))
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		n = read_file(path, buf, FIXTURE_MAX);
		CHECK(n > 0, "read %s", path);
		if (n <= 0)
			continue;
		r = calloc(1, sizeof(*r));
		check_splits(de->d_name, strcmp(de->d_name + len - 4, ".c2s") == 0 ?
		    IMAP_DIR_CLIENT : IMAP_DIR_SERVER, 0, buf, (size_t)n, r, NULL, 0);
		CHECK(strchr(r->ev, 'E') == NULL && strchr(r->ev, 'T') == NULL,
		    "%s: events %s", de->d_name, r->ev);
		CHECK(r->nlines > 3, "%s: %zu lines", de->d_name, r->nlines);
		if (strcmp(de->d_name + len - 4, ".s2c") == 0) {
			size_t i, lits = 0, tagged = 0;

			CHECK(L(r, 0)->kind == IMAP_KIND_GREETING, "%s greeting", de->d_name);
			for (i = 0; i < r->nlines; i++) {
				lits += L(r, i)->nliterals;
				tagged += L(r, i)->kind == IMAP_KIND_TAGGED;
			}
			CHECK(lits >= 2 && tagged >= 8, "%s: %zu literals %zu tagged", de->d_name,
			    lits, tagged);
		} else {
			size_t i;
			int user = 0, done = 0, invalid = 0;

			for (i = 0; i < r->nlines; i++) {
				user |= strcmp(L(r, i)->user, "testuser") == 0;
				done |= L(r, i)->kind == IMAP_KIND_DONE;
				invalid |= L(r, i)->kind == IMAP_KIND_INVALID;
			}
			CHECK(user && done && !invalid, "%s: user %d done %d invalid %d", de->d_name,
			    user, done, invalid);
		}
		run_free(r);
		count++;
	}
	closedir(d);
	free(buf);
	printf("fixtures: %d files\n", count);
}

int
main(void)
{
	test_api();
	test_client();
	test_client_framing();
	test_server();
	test_fixtures();
	printf("%d checks, %d failures\n", checks, failures);
	return failures ? 1 : 0;
}
