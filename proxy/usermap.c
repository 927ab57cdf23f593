/* usermap: the static route's map file, parsed into an open-addressing hash table. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "usermap.h"

#define USERMAP_ECHO		40	/* bytes of a key or target quoted in a message */
#define USERMAP_QUOTELEN	(USERMAP_ECHO + 4)	/* ... and room for "..." and NUL */
#define USERMAP_TABLE_MIN	64	/* slots in a new table (a power of two) */
#define USERMAP_ENTRY_MIN	1024	/* entries room is first made for */
#define USERMAP_MAX_HOST	255	/* bytes in a target's host (netaddr's buffer) */
#define USERMAP_MAX_PORT	65535

/* One slot of a table: what it holds as index + 1 (0: empty), and its hash. */
struct usermap_slot {
	uint32_t	hash;
	uint32_t	idx;
};

/* Open addressing with linear probing, kept at most half full. */
struct usermap_table {
	struct usermap_slot	*slot;
	size_t			 mask;		/* slots - 1 */
	size_t			 used;
};

/* A distinct target text and its address, shared by the entries naming it. */
struct usermap_target {
	const char	*text;
	struct netaddr	 addr;
	int		 line;		/* where it was first written */
	int		 bad;		/* its error was reported there */
};

struct usermap {
	char			*arena;		/* keys' and targets' text, NUL-terminated */
	struct usermap_entry	*entry;
	size_t			 nentry;
	struct usermap_target	*target;
	size_t			 ntarget;
	struct usermap_table	 keys;		/* entry index by key, ASCII case folded */
};

/* What one parse keeps besides the map it builds. */
struct usermap_parser {
	struct usermap		*m;
	struct usermap_errors	*errs;
	struct usermap_table	 targets;	/* target index by exact text */
	uint32_t		*tidx;		/* each entry's target index */
	size_t			 cap_entry, cap_target;
	size_t			 arena_used, arena_cap;
	int			 resolve;
	int			 line;
	int			 stop;		/* too many errors, or no memory */
};

/* What a table probe compares its candidates with. */
struct usermap_probe {
	const struct usermap	*m;
	const char		*s;
	size_t			 len;
};

/* A byte with ASCII upper case lowered; other bytes stay as they are. */
static unsigned char
usermap_lower(unsigned char c)
{
	return c >= 'A' && c <= 'Z' ? (unsigned char)(c - 'A' + 'a') : c;
}

/* A control byte (C0 or DEL), which no key or target may hold. */
static int
usermap_ctl(unsigned char c)
{
	return c < 0x20 || c == 0x7f;
}

/*
 * FNV-1a over s[0..len), ASCII case folded when fold, then a murmur3
 * finaliser so that the low bits the table indexes by are well mixed.
 * Only for this process's tables: it is free to change.
 */
static uint32_t
usermap_hash(const char *s, size_t len, int fold)
{
	uint64_t h = 0xcbf29ce484222325ull;

	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		h ^= fold ? usermap_lower(c) : c;
		h *= 0x100000001b3ull;
	}
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdull;
	h ^= h >> 33;
	return (uint32_t)h;
}

/* s[0..len) for a message: at most USERMAP_ECHO bytes, "..." where cut. */
static const char *
usermap_quote(char *buf, const char *s, size_t len)
{
	if (len > USERMAP_ECHO)
		snprintf(buf, USERMAP_QUOTELEN, "%.*s...", USERMAP_ECHO, s);
	else
		snprintf(buf, USERMAP_QUOTELEN, "%.*s", (int)len, s);
	return buf;
}

/* Add an error; past USERMAP_MAX_ERRORS a last one says the rest was not read. */
static void
usermap_verror(struct usermap_errors *errs, int line, int col, const char *fmt, va_list ap)
{
	struct usermap_error *e;

	if (errs->n > USERMAP_MAX_ERRORS)
		return;
	e = &errs->v[errs->n++];
	e->line = line;
	e->col = col;
	if (errs->n > USERMAP_MAX_ERRORS)
		snprintf(e->msg, sizeof(e->msg),
		    "more than %d errors: the rest of the file was not read", USERMAP_MAX_ERRORS);
	else
		vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
}

/* Add an error about the file as a whole (line 0). */
__attribute__((format(printf, 2, 3)))
static void
usermap_error(struct usermap_errors *errs, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	usermap_verror(errs, 0, 0, fmt, ap);
	va_end(ap);
}

/* Add an error at column col of the current line; stop once there are too many. */
__attribute__((format(printf, 3, 4)))
static void
usermap_fail(struct usermap_parser *p, size_t col, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	usermap_verror(p->errs, p->line, (int)col, fmt, ap);
	va_end(ap);
	if (p->errs->n > USERMAP_MAX_ERRORS)
		p->stop = 1;
}

/* Record that memory ran out (in the last slot if the others are full) and stop. */
static void
usermap_nomem(struct usermap_parser *p)
{
	struct usermap_errors *errs = p->errs;
	size_t i = errs->n < USERMAP_MAX_ERRORS ? errs->n : USERMAP_MAX_ERRORS;

	errs->v[i].line = errs->v[i].col = 0;
	snprintf(errs->v[i].msg, sizeof(errs->v[i].msg), "out of memory");
	errs->n = i + 1;
	p->stop = 1;
}

/* Give t slots empty slots (a power of two); -1 if memory ran out. */
static int
usermap_table_init(struct usermap_table *t, size_t slots)
{
	t->slot = calloc(slots, sizeof(*t->slot));
	t->mask = slots - 1;
	t->used = 0;
	return t->slot != NULL ? 0 : -1;
}

/* The slot of the item eq accepts, or the empty slot where it would go. */
static size_t
usermap_table_probe(const struct usermap_table *t, uint32_t h,
    int (*eq)(const struct usermap_probe *, size_t), const struct usermap_probe *pr)
{
	size_t i = h & t->mask;

	while (t->slot[i].idx != 0) {
		if (t->slot[i].hash == h && eq(pr, t->slot[i].idx - 1))
			return i;
		i = (i + 1) & t->mask;
	}
	return i;
}

/* Make room for one more item, doubling t while it would be over half full. */
static int
usermap_table_reserve(struct usermap_table *t)
{
	struct usermap_table bigger;
	size_t slots = t->mask + 1, i, j;

	if ((t->used + 1) * 2 <= slots)
		return 0;
	if (usermap_table_init(&bigger, slots * 2) != 0)
		return -1;
	for (i = 0; i < slots; i++) {
		if (t->slot[i].idx == 0)
			continue;
		for (j = t->slot[i].hash & bigger.mask; bigger.slot[j].idx != 0;
		    j = (j + 1) & bigger.mask)
			;
		bigger.slot[j] = t->slot[i];
	}
	bigger.used = t->used;
	free(t->slot);
	*t = bigger;
	return 0;
}

/* Put item idx with hash h into the empty slot at (from usermap_table_probe). */
static void
usermap_table_put(struct usermap_table *t, size_t at, uint32_t h, size_t idx)
{
	t->slot[at].hash = h;
	t->slot[at].idx = (uint32_t)idx + 1;
	t->used++;
}

/* Whether entry idx's key is pr's text, ASCII case ignored. */
static int
usermap_key_eq(const struct usermap_probe *pr, size_t idx)
{
	const char *k = pr->m->entry[idx].key;

	for (size_t i = 0; i < pr->len; i++)
		if (k[i] == '\0' || usermap_lower((unsigned char)k[i]) !=
		    usermap_lower((unsigned char)pr->s[i]))
			return 0;
	return k[pr->len] == '\0';
}

/* Whether target idx's text is pr's text exactly. */
static int
usermap_target_eq(const struct usermap_probe *pr, size_t idx)
{
	const char *t = pr->m->target[idx].text;

	return strncmp(t, pr->s, pr->len) == 0 && t[pr->len] == '\0';
}

/* Copy s[0..len) to the arena, NUL-terminated. */
static char *
usermap_arena_put(struct usermap_parser *p, const char *s, size_t len)
{
	char *d = p->m->arena + p->arena_used;

	/*
	 * Cannot happen: the arena has the input's length + 1, and a line
	 * stores at most its key, its target and two NULs, which its own bytes
	 * (at least one separator) and its newline pay for; only the last line
	 * may lack a newline, hence the + 1.
	 */
	if (len + 1 > p->arena_cap - p->arena_used)
		return NULL;
	memcpy(d, s, len);
	d[len] = '\0';
	p->arena_used += len + 1;
	return d;
}

/* Check a key's length and bytes; 0 if it may be looked up. */
static int
usermap_check_key(struct usermap_parser *p, const char *k, size_t len, size_t col)
{
	const char *at;

	if (len > USERMAP_MAX_KEY) {
		usermap_fail(p, col, "key is longer than %d bytes", USERMAP_MAX_KEY);
		return -1;
	}
	for (size_t i = 0; i < len; i++)
		if (usermap_ctl((unsigned char)k[i])) {
			usermap_fail(p, col + i, "control character 0x%02x in key",
			    (unsigned char)k[i]);
			return -1;
		}
	if (k[0] != '@')
		return 0;
	if (len == 1) {
		usermap_fail(p, col, "\"@\" without a domain");
		return -1;
	}
	if ((at = memchr(k + 1, '@', len - 1)) != NULL) {
		/* A user's domain is what follows the last '@': it holds none. */
		usermap_fail(p, col + (size_t)(at - k),
		    "a domain key has one '@', at its start: this one could never match");
		return -1;
	}
	return 0;
}

/*
 * Check the shape netaddr_parse accepts without resolving (a syntax-only
 * parse must not touch DNS), a little stricter: the port is digits only,
 * and "*" (any address) is no backend.  0, or -1 with a message in err.
 */
static int
usermap_target_syntax(const char *t, size_t len, char *err, size_t errlen)
{
	char q[USERMAP_QUOTELEN];
	const char *host = t, *colon = NULL, *port;
	size_t hlen, plen, i;
	unsigned long pn = 0;

	if (t[0] == '[') {
		const char *rb = memchr(t, ']', len);
		if (rb == NULL || rb + 1 == t + len || rb[1] != ':') {
			snprintf(err, errlen, "address \"%s\": expected [v6]:port",
			    usermap_quote(q, t, len));
			return -1;
		}
		host = t + 1;
		hlen = (size_t)(rb - host);
		colon = rb + 1;
	} else {
		for (i = len; i > 0 && colon == NULL; i--)
			if (t[i - 1] == ':')
				colon = t + i - 1;
		if (colon == NULL) {
			snprintf(err, errlen, "address \"%s\": expected host:port",
			    usermap_quote(q, t, len));
			return -1;
		}
		if (memchr(t, ':', (size_t)(colon - t)) != NULL) {
			snprintf(err, errlen, "address \"%s\": an IPv6 address must be written [v6]:port",
			    usermap_quote(q, t, len));
			return -1;
		}
		hlen = (size_t)(colon - t);
	}
	if (hlen == 0 || hlen > USERMAP_MAX_HOST || (hlen == 1 && host[0] == '*')) {
		snprintf(err, errlen, "address \"%s\": bad host", usermap_quote(q, t, len));
		return -1;
	}
	port = colon + 1;
	plen = (size_t)(t + len - port);
	for (i = 0; i < plen && i < 6 && port[i] >= '0' && port[i] <= '9'; i++)
		pn = pn * 10 + (unsigned long)(port[i] - '0');
	if (plen == 0 || i != plen || pn < 1 || pn > USERMAP_MAX_PORT) {
		snprintf(err, errlen, "address \"%s\": port must be 1-%d",
		    usermap_quote(q, t, len), USERMAP_MAX_PORT);
		return -1;
	}
	return 0;
}

/* Add a target slot to the map's array, growing it; NULL if memory ran out. */
static struct usermap_target *
usermap_target_new(struct usermap_parser *p)
{
	struct usermap *m = p->m;

	if (m->ntarget == p->cap_target) {
		size_t cap = p->cap_target ? p->cap_target * 2 : USERMAP_ENTRY_MIN;
		struct usermap_target *v = realloc(m->target, cap * sizeof(*v));
		if (v == NULL)
			return NULL;
		m->target = v;
		p->cap_target = cap;
	}
	return &m->target[m->ntarget];
}

/*
 * Check and (when resolving) resolve target t[0..len), each distinct text
 * once: later lines naming it share the address, or the first error.
 * Sets *tix to its index; -1 if it cannot be used.
 */
static int
usermap_check_target(struct usermap_parser *p, const char *t, size_t len, size_t col,
    size_t *tix)
{
	struct usermap_probe pr = { p->m, t, len };
	struct usermap_target *tg;
	char err[USERMAP_MSGLEN], q[USERMAP_QUOTELEN];
	uint32_t h = usermap_hash(t, len, 0);
	size_t at;

	for (size_t i = 0; i < len; i++)
		if (usermap_ctl((unsigned char)t[i])) {
			usermap_fail(p, col + i, "control character 0x%02x in target",
			    (unsigned char)t[i]);
			return -1;
		}
	if (usermap_table_reserve(&p->targets) != 0 || (tg = usermap_target_new(p)) == NULL) {
		usermap_nomem(p);
		return -1;
	}
	at = usermap_table_probe(&p->targets, h, usermap_target_eq, &pr);
	if (p->targets.slot[at].idx != 0) {
		*tix = p->targets.slot[at].idx - 1;
		tg = &p->m->target[*tix];
		if (tg->bad) {
			usermap_fail(p, col, "address \"%s\": not usable (see line %d)",
			    usermap_quote(q, t, len), tg->line);
			return -1;
		}
		return 0;
	}
	memset(tg, 0, sizeof(*tg));
	tg->line = p->line;
	if ((tg->text = usermap_arena_put(p, t, len)) == NULL) {
		usermap_nomem(p);
		return -1;
	}
	if (usermap_target_syntax(t, len, err, sizeof(err)) != 0 ||
	    (p->resolve && netaddr_parse(tg->text, 0, &tg->addr, err, sizeof(err)) != 0)) {
		usermap_fail(p, col, "%s", err);
		tg->bad = 1;
	}
	*tix = p->m->ntarget++;
	usermap_table_put(&p->targets, at, h, *tix);
	return tg->bad ? -1 : 0;
}

/* Grow the entry arrays for one more entry; -1 if memory ran out. */
static int
usermap_entry_room(struct usermap_parser *p)
{
	struct usermap *m = p->m;
	struct usermap_entry *v;
	uint32_t *ti;
	size_t cap;

	if (m->nentry < p->cap_entry)
		return 0;
	cap = p->cap_entry ? p->cap_entry * 2 : USERMAP_ENTRY_MIN;
	if (cap > USERMAP_MAX_ENTRIES)
		cap = USERMAP_MAX_ENTRIES;
	if ((v = realloc(m->entry, cap * sizeof(*v))) == NULL)
		return -1;
	m->entry = v;
	if ((ti = realloc(p->tidx, cap * sizeof(*ti))) == NULL)
		return -1;
	p->tidx = ti;
	p->cap_entry = cap;
	return 0;
}

/* Add key k[0..len) at column col unless it is there already; tix: its target. */
static void
usermap_add(struct usermap_parser *p, const char *k, size_t len, size_t col, size_t tix)
{
	struct usermap *m = p->m;
	struct usermap_probe pr = { m, k, len };
	struct usermap_entry *e;
	char q[USERMAP_QUOTELEN], q1[USERMAP_QUOTELEN];
	uint32_t h = usermap_hash(k, len, 1);
	size_t at;

	if (usermap_table_reserve(&m->keys) != 0) {
		usermap_nomem(p);
		return;
	}
	at = usermap_table_probe(&m->keys, h, usermap_key_eq, &pr);
	if (m->keys.slot[at].idx != 0) {
		e = &m->entry[m->keys.slot[at].idx - 1];
		if (strncmp(e->key, k, len) == 0)
			usermap_fail(p, col, "duplicate key \"%s\" (first on line %d)",
			    usermap_quote(q, k, len), e->line);
		else
			usermap_fail(p, col, "duplicate key \"%s\" (first on line %d as \"%s\"; "
			    "case is ignored)", usermap_quote(q, k, len), e->line,
			    usermap_quote(q1, e->key, strlen(e->key)));
		return;
	}
	if (m->nentry >= USERMAP_MAX_ENTRIES) {
		usermap_fail(p, col, "more than %u entries", USERMAP_MAX_ENTRIES);
		p->stop = 1;
		return;
	}
	if (usermap_entry_room(p) != 0) {
		usermap_nomem(p);
		return;
	}
	e = &m->entry[m->nentry];
	if ((e->key = usermap_arena_put(p, k, len)) == NULL) {
		usermap_nomem(p);
		return;
	}
	e->target = NULL;
	e->addr = NULL;
	e->line = p->line;
	p->tidx[m->nentry] = (uint32_t)tix;
	usermap_table_put(&m->keys, at, h, m->nentry++);
}

/* The index of the first byte at or after i in s[0..n) that is not a space or tab. */
static size_t
usermap_skip_blank(const char *s, size_t n, size_t i)
{
	while (i < n && (s[i] == ' ' || s[i] == '\t'))
		i++;
	return i;
}

/* The index just past the field that starts at i in s[0..n). */
static size_t
usermap_field_end(const char *s, size_t n, size_t i)
{
	while (i < n && s[i] != ' ' && s[i] != '\t')
		i++;
	return i;
}

/*
 * Parse one line s[0..n) (its CR LF taken off).  Each field is checked on
 * its own, so a line may give several errors; the key is added even when
 * its target is bad, so that a later duplicate is still reported.
 */
static void
usermap_line(struct usermap_parser *p, const char *s, size_t n)
{
	char q[USERMAP_QUOTELEN];
	const char *nul;
	size_t i, k, klen, t, tlen, tix = SIZE_MAX;
	int kok;

	if (n > USERMAP_MAX_LINE) {
		usermap_fail(p, USERMAP_MAX_LINE + 1, "line is longer than %d bytes",
		    USERMAP_MAX_LINE);
		return;
	}
	if ((nul = memchr(s, '\0', n)) != NULL) {
		usermap_fail(p, (size_t)(nul - s) + 1, "NUL byte");
		return;
	}
	/* '#' starts a comment only where a field would start. */
	k = usermap_skip_blank(s, n, 0);
	if (k == n || s[k] == '#')
		return;
	i = usermap_field_end(s, n, k);
	klen = i - k;
	t = usermap_skip_blank(s, n, i);
	i = t < n && s[t] != '#' ? usermap_field_end(s, n, t) : t;
	tlen = i - t;
	i = usermap_skip_blank(s, n, i);

	kok = usermap_check_key(p, s + k, klen, k + 1) == 0;
	if (p->stop)
		return;
	if (tlen == 0)
		usermap_fail(p, k + klen + 1, "key \"%s\" has no target (expected KEY host:port)",
		    usermap_quote(q, s + k, klen));
	else
		(void)usermap_check_target(p, s + t, tlen, t + 1, &tix);
	if (i < n && s[i] != '#')
		usermap_fail(p, i + 1,
		    "unexpected field after the target (a comment starts with '#')");
	if (kok && !p->stop)
		usermap_add(p, s + k, klen, k + 1, tix);
}

/* Free the map and whatever of it was built. */
void
usermap_free(struct usermap *m)
{
	if (m == NULL)
		return;
	free(m->arena);
	free(m->entry);
	free(m->target);
	free(m->keys.slot);
	free(m);
}

/* Parse text[0..len) into a map; NULL with errors in errs. */
struct usermap *
usermap_parse(const char *text, size_t len, int resolve, struct usermap_errors *errs)
{
	struct usermap_parser p;
	size_t off = 0, n;
	const char *s, *nl;

	errs->n = 0;
	if (len > USERMAP_MAX_FILE) {
		usermap_error(errs, "the map is %zu bytes, more than %u", len, USERMAP_MAX_FILE);
		return NULL;
	}
	memset(&p, 0, sizeof(p));
	p.errs = errs;
	p.resolve = resolve;
	p.arena_cap = len + 1;
	if ((p.m = calloc(1, sizeof(*p.m))) == NULL ||
	    (p.m->arena = malloc(p.arena_cap)) == NULL ||
	    usermap_table_init(&p.m->keys, USERMAP_TABLE_MIN) != 0 ||
	    usermap_table_init(&p.targets, USERMAP_TABLE_MIN) != 0)
		usermap_nomem(&p);
	/* Windows editors start UTF-8 files with a byte order mark; it is no part of a key. */
	if (len >= 3 && memcmp(text, "\xef\xbb\xbf", 3) == 0)
		off = 3;
	while (off < len && !p.stop) {
		s = text + off;
		nl = memchr(s, '\n', len - off);
		n = nl != NULL ? (size_t)(nl - s) : len - off;
		off += n + (nl != NULL);
		p.line++;
		if (n > 0 && s[n - 1] == '\r')
			n--;
		usermap_line(&p, s, n);
	}
	free(p.targets.slot);
	if (errs->n == 0) {
		/* The target array grows no more: its addresses are stable now. */
		for (size_t i = 0; i < p.m->nentry; i++) {
			p.m->entry[i].target = p.m->target[p.tidx[i]].text;
			p.m->entry[i].addr = &p.m->target[p.tidx[i]].addr;
		}
	} else {
		usermap_free(p.m);
		p.m = NULL;
	}
	free(p.tidx);
	return p.m;
}

/* Read the regular file at path (bounded) and parse it with resolving. */
struct usermap *
usermap_load(const char *path, struct usermap_errors *errs)
{
	struct usermap *m;
	struct stat st;
	size_t cap, n = 0;
	ssize_t r;
	char *buf;
	int fd;

	errs->n = 0;
	/* O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below). */
	if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK)) < 0) {
		usermap_error(errs, "cannot open: %s", strerror(errno));
		return NULL;
	}
	if (fstat(fd, &st) != 0) {
		usermap_error(errs, "cannot stat: %s", strerror(errno));
		close(fd);
		return NULL;
	}
	if (!S_ISREG(st.st_mode)) {
		usermap_error(errs, "not a regular file");
		close(fd);
		return NULL;
	}
	if (st.st_size < 0 || (uintmax_t)st.st_size > USERMAP_MAX_FILE) {
		usermap_error(errs, "the file is %jd bytes, more than %u", (intmax_t)st.st_size,
		    USERMAP_MAX_FILE);
		close(fd);
		return NULL;
	}
	/* One byte more than its size shows a file that grew while it was read. */
	cap = (size_t)st.st_size + 1;
	if ((buf = malloc(cap)) == NULL) {
		usermap_error(errs, "out of memory");
		close(fd);
		return NULL;
	}
	while (n < cap) {
		r = read(fd, buf + n, cap - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			usermap_error(errs, "cannot read: %s", strerror(errno));
			break;
		}
		if (r == 0)
			break;
		n += (size_t)r;
	}
	close(fd);
	if (errs->n == 0 && n == cap)
		usermap_error(errs, "the file grew while it was read (write a new file, "
		    "then rename it into place)");
	m = errs->n == 0 ? usermap_parse(buf, n, 1, errs) : NULL;
	free(buf);
	return m;
}

/* The entry whose key is s[0..len), ASCII case ignored, or NULL. */
static const struct usermap_entry *
usermap_lookup(const struct usermap *m, const char *s, size_t len)
{
	struct usermap_probe pr = { m, s, len };
	size_t at;

	if (len > USERMAP_MAX_KEY)
		return NULL;
	at = usermap_table_probe(&m->keys, usermap_hash(s, len, 1), usermap_key_eq, &pr);
	return m->keys.slot[at].idx != 0 ? &m->entry[m->keys.slot[at].idx - 1] : NULL;
}

/*
 * The user's own entry, else its domain's.  Case is folded for ASCII only:
 * mail systems treat User@Example.ORG as user@example.org in practice
 * (domains are case-insensitive by RFC 5321, local parts by every common
 * server), while folding other bytes would need a Unicode table and could
 * join names the backend keeps apart.
 */
const struct usermap_entry *
usermap_find(const struct usermap *m, const char *user)
{
	const struct usermap_entry *e;
	size_t len = strlen(user), i;

	if ((e = usermap_lookup(m, user, len)) != NULL)
		return e;
	for (i = len; i > 0; i--)
		if (user[i - 1] == '@')
			return usermap_lookup(m, user + i - 1, len - i + 1);
	return NULL;
}

/* The number of entries. */
size_t
usermap_count(const struct usermap *m)
{
	return m->nentry;
}

/* Entry i in file order. */
const struct usermap_entry *
usermap_at(const struct usermap *m, size_t i)
{
	return i < m->nentry ? &m->entry[i] : NULL;
}
