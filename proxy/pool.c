/* pool: backend selection, passive and active health, state kept across reloads. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <netinet/in.h>

#include <event2/event.h>

#include "config.h"
#include "endpoint.h"
#include "hrw.h"
#include "log.h"
#include "logesc.h"
#include "netaddr.h"
#include "pool.h"
#include "proxyproto.h"

/* Longest reason text kept in a backend-down line (an endpoint error is shorter). */
#define POOL_WHY_MAX	128

/* Longest line a health check reads (greeting, STARTTLS and LOGOUT answers). */
#define POOL_LINE_MAX		1024
/* Room for the PROXY header a health check sends (v1 UNKNOWN or v2 LOCAL). */
#define POOL_PROXY_MAX		32
/* Tags of the health check's commands. */
#define POOL_TAG_STARTTLS	"hc1"
#define POOL_TAG_LOGOUT		"hc2"
#define POOL_TAG_LOGIN		"hc3"
/* Room for `hc3 LOGIN "user" "password"` with every byte escaped. */
#define POOL_LOGIN_MAX		(32 + 4 * 1024 + 16)

/* Where a health check is. */
enum pool_hc_step {
	POOL_HC_CONNECT,	/* TCP connect under way */
	POOL_HC_TLS,		/* implicit TLS handshake */
	POOL_HC_GREETING,	/* waiting for the greeting */
	POOL_HC_STARTTLS,	/* STARTTLS sent, waiting for its tagged answer */
	POOL_HC_UPGRADE,	/* TLS handshake after STARTTLS */
	POOL_HC_LOGIN,		/* LOGIN sent (backend.health.user), waiting for its tagged OK */
	POOL_HC_LOGOUT,		/* LOGOUT sent, waiting for its tagged OK */
};

/*
 * A server's runtime state, shared by every pool (generation) that names
 * the same address: reference-counted, found by (address, nth) where nth
 * counts earlier entries with the same address in the file.
 */
struct pool_state {
	atomic_int			 refs;
	char				*address;
	unsigned			 nth;
	atomic_int			 up;
	atomic_uint			 active;
	atomic_uint			 fails;		/* consecutive failures */
	atomic_uint			 oks;		/* consecutive successes while down */
	atomic_uint_fast64_t		 connects;
	atomic_uint_fast64_t		 failures;
	atomic_int			 admin;		/* POOL_ADMIN_*: set by the control socket */
	atomic_uint			 weight;	/* the control socket's weight, 0 = the file's */
	atomic_uint_fast64_t		 logins_ok;	/* route: login: logins through imapgate */
	atomic_uint_fast64_t		 logins_failed;
	pthread_mutex_t			 lock;		/* check_now, last_error */
	char				 last_error[POOL_WHY_MAX];	/* the last failure's reason */
	struct event			*check_now;	/* the checking pool's "check now" event */
};

struct pool_server {
	struct pool			*pool;
	int				 index;
	const struct config_server	*cf;
	struct pool_state		*st;
	int				 current_weight;	/* smooth weighted round robin */
	/* active health check, main thread only */
	struct endpoint			*hc_ep;
	struct event			*hc_timer;
	struct event			*hc_now;	/* a session saw failures: check at once */
	int				 hc_running;
	enum pool_hc_step		 hc_step;
	int				 hc_bye;	/* the LOGOUT's * BYE arrived */
	int				 hc_preauth;	/* greeted with PREAUTH: no LOGIN */
};

struct pool {
	const struct config	*cf;
	struct pool_server	*servers;
	int			 n;
	struct pool_state	**retired;	/* removed by a reload, maybe still in use */
	int			 nretired;
	int			 nlisted;	/* retired[0 .. nlisted): listed for metrics */
	pthread_mutex_t		 lock;		/* round-robin weights */
	struct event_base	*base;
	struct tls_ctx		*btls;
};

/* A fresh state for address (up until shown otherwise). */
static struct pool_state *
pool_state_new(const char *address, unsigned nth)
{
	struct pool_state *st;

	if ((st = calloc(1, sizeof(*st))) == NULL)
		return NULL;
	if ((st->address = strdup(address)) == NULL) {
		free(st);
		return NULL;
	}
	atomic_init(&st->refs, 1);
	st->nth = nth;
	atomic_init(&st->up, 1);
	pthread_mutex_init(&st->lock, NULL);
	return st;
}

/* One more pool holds st. */
static struct pool_state *
pool_state_ref(struct pool_state *st)
{
	atomic_fetch_add(&st->refs, 1);
	return st;
}

/* One pool fewer holds st; the last frees it (on any thread). */
static void
pool_state_unref(struct pool_state *st)
{
	if (st == NULL || atomic_fetch_sub(&st->refs, 1) != 1)
		return;
	pthread_mutex_destroy(&st->lock);
	free(st->address);
	free(st);
}

/* Index in prev's servers, then retired (offset by prev->n), of (address, nth); -1 if none. */
static int
pool_state_find(const struct pool *prev, const char *address, unsigned nth)
{
	if (prev == NULL)
		return -1;
	for (int i = 0; i < prev->n; i++)
		if (prev->servers[i].st->nth == nth &&
		    strcmp(prev->servers[i].st->address, address) == 0)
			return i;
	for (int i = 0; i < prev->nretired; i++)
		if (prev->retired[i]->nth == nth && strcmp(prev->retired[i]->address, address) == 0)
			return prev->n + i;
	return -1;
}

/* prev's state number k (servers, then retired). */
static struct pool_state *
pool_prev_state(const struct pool *prev, int k)
{
	return k < prev->n ? prev->servers[k].st : prev->retired[k - prev->n];
}

/* Does any configured server of p, or a listed retired one, carry address? */
static int
pool_name_taken(const struct pool *p, const char *address)
{
	for (int i = 0; i < p->n; i++)
		if (strcmp(p->servers[i].cf->address, address) == 0)
			return 1;
	for (int i = 0; i < p->nlisted; i++)
		if (strcmp(p->retired[i]->address, address) == 0)
			return 1;
	return 0;
}

/*
 * Keep the states of prev that p's servers did not take: every server prev
 * itself named (sessions of prev's generation may still pick it), and
 * those prev kept that an older pool still holds or sessions still use.
 * Listed ones (a name no configured server has) go first.
 */
static int
pool_keep_retired(struct pool *p, const struct pool *prev, const unsigned char *taken)
{
	int total = prev->n + prev->nretired, nkeep = 0;
	struct pool_state **keep;

	if (total == 0)
		return 0;
	if ((keep = calloc((size_t)total, sizeof(*keep))) == NULL)
		return -1;
	for (int k = 0; k < total; k++) {
		struct pool_state *st = pool_prev_state(prev, k);

		if (taken[k])
			continue;
		if (k >= prev->n && atomic_load(&st->refs) <= 1 && atomic_load(&st->active) == 0)
			continue;
		keep[nkeep++] = pool_state_ref(st);
	}
	p->retired = keep;
	p->nretired = nkeep;
	/* Listed first: a stable partition by "has a name of its own". */
	for (int i = 0; i < nkeep; i++)
		if (!pool_name_taken(p, keep[i]->address)) {
			struct pool_state *t = keep[i];

			memmove(&keep[p->nlisted + 1], &keep[p->nlisted],
			    (size_t)(i - p->nlisted) * sizeof(*keep));
			keep[p->nlisted++] = t;
		}
	return 0;
}

/* Build the pool, taking over prev's states by address. */
struct pool *
pool_new(const struct config *cf, const struct pool *prev, char *err, size_t errlen)
{
	unsigned char *taken = NULL;
	struct pool *p;

	if (cf->nservers == 0 || cf->nservers > POOL_MAX_SERVERS) {
		snprintf(err, errlen, "backend.servers: between 1 and %d servers", POOL_MAX_SERVERS);
		return NULL;
	}
	if ((p = calloc(1, sizeof(*p))) == NULL ||
	    (p->servers = calloc(cf->nservers, sizeof(*p->servers))) == NULL ||
	    (prev != NULL &&
	    (taken = calloc((size_t)(prev->n + prev->nretired) + 1, 1)) == NULL)) {
		if (p != NULL)
			free(p->servers);
		free(p);
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	p->cf = cf;
	p->n = (int)cf->nservers;
	pthread_mutex_init(&p->lock, NULL);
	for (int i = 0; i < p->n; i++) {
		struct pool_server *s = &p->servers[i];
		unsigned nth = 0;
		int k;

		s->pool = p;
		s->index = i;
		s->cf = &cf->servers[i];
		for (int j = 0; j < i; j++)
			nth += strcmp(cf->servers[j].address, s->cf->address) == 0;
		k = pool_state_find(prev, s->cf->address, nth);
		if (k >= 0 && !taken[k]) {
			taken[k] = 1;
			s->st = pool_state_ref(pool_prev_state(prev, k));
		} else if ((s->st = pool_state_new(s->cf->address, nth)) == NULL)
			goto nomem;
	}
	if (prev != NULL && pool_keep_retired(p, prev, taken) != 0)
		goto nomem;
	free(taken);
	return p;
nomem:
	free(taken);
	pool_free(p);
	snprintf(err, errlen, "out of memory");
	return NULL;
}

/* Stop the checks: their events belong to the main thread's loop. */
void
pool_health_stop(struct pool *p)
{
	if (p == NULL)
		return;
	for (int i = 0; i < p->n; i++) {
		struct pool_server *s = &p->servers[i];

		/* Sessions ask the state for a check: forget our event there first. */
		pthread_mutex_lock(&s->st->lock);
		if (s->hc_now != NULL && s->st->check_now == s->hc_now)
			s->st->check_now = NULL;
		pthread_mutex_unlock(&s->st->lock);
		endpoint_free(s->hc_ep);
		s->hc_ep = NULL;
		s->hc_running = 0;
		if (s->hc_timer != NULL)
			event_free(s->hc_timer);
		s->hc_timer = NULL;
		if (s->hc_now != NULL)
			event_free(s->hc_now);
		s->hc_now = NULL;
	}
}

/* Free the pool (its checks must be stopped already). */
void
pool_free(struct pool *p)
{
	if (p == NULL)
		return;
	for (int i = 0; i < p->n; i++)
		pool_state_unref(p->servers[i].st);
	for (int i = 0; i < p->nretired; i++)
		pool_state_unref(p->retired[i]);
	free(p->retired);
	pthread_mutex_destroy(&p->lock);
	free(p->servers);
	free(p);
}

/* Weight of a server (at least 1): the control socket's, else the file's. */
static int
pool_weight(const struct pool_server *s)
{
	unsigned w = atomic_load(&s->st->weight);

	if (w > 0)
		return (int)w;
	return s->cf->weight > 0 ? (int)s->cf->weight : 1;
}

/* Can server s take one more session now? */
static int
pool_usable(const struct pool_server *s, uint64_t tried)
{
	if (tried & ((uint64_t)1 << s->index))
		return 0;
	/* Disabled or draining by the operator: no new sessions, even the only server. */
	if (atomic_load(&s->st->admin) != POOL_ADMIN_ENABLED)
		return 0;
	/*
	 * A server marked down gets no sessions, unless it is the only one:
	 * then there is nowhere better to go, and refusing everyone while it
	 * is merely slow would turn an overload into an outage.  Sessions try
	 * it and get BYE only when their own connect fails.
	 */
	if (!atomic_load(&s->st->up) && s->pool->n > 1)
		return 0;
	/*
	 * `fall` failures in a row seen by sessions make a server suspect: a
	 * check now decides whether it is down, and until it does, new
	 * sessions go elsewhere rather than each paying for a failed connect.
	 */
	if (atomic_load(&s->st->fails) >= s->pool->cf->health_fall && s->pool->n > 1)
		return 0;
	/* The count covers every generation's sessions on this server. */
	if (s->cf->max_connections > 0 && atomic_load(&s->st->active) >= s->cf->max_connections)
		return 0;
	return 1;
}

/* FNV-1a over the client's IP address bytes. */
static uint32_t
pool_hash_addr(const struct sockaddr *sa)
{
	const unsigned char *b = NULL;
	uint32_t h = 2166136261u;
	size_t n = 0;

	if (sa->sa_family == AF_INET) {
		b = (const unsigned char *)&((const struct sockaddr_in *)sa)->sin_addr;
		n = 4;
	} else if (sa->sa_family == AF_INET6) {
		b = (const unsigned char *)&((const struct sockaddr_in6 *)sa)->sin6_addr;
		n = 16;
	}
	for (size_t i = 0; i < n; i++) {
		h ^= b[i];
		h *= 16777619u;
	}
	return h;
}

/* Pick a server by the configured balance. */
int
pool_pick(struct pool *p, const struct sockaddr *addr, uint64_t tried)
{
	struct pool_server *best = NULL;
	int total = 0;

	switch (p->cf->balance) {
	case CONFIG_BALANCE_SOURCE_IP: {
		/*
		 * The same address goes to the same server while the set of
		 * usable servers stays the same; weights widen a server's share.
		 */
		uint32_t h;
		int w = 0;

		for (int i = 0; i < p->n; i++)
			if (pool_usable(&p->servers[i], tried))
				total += pool_weight(&p->servers[i]);
		if (total == 0)
			return -1;
		h = pool_hash_addr(addr) % (uint32_t)total;
		for (int i = 0; i < p->n && best == NULL; i++) {
			if (!pool_usable(&p->servers[i], tried))
				continue;
			w += pool_weight(&p->servers[i]);
			if (h < (uint32_t)w)
				best = &p->servers[i];
		}
		break;
	}
	case CONFIG_BALANCE_LEAST_CONNECTIONS:
		for (int i = 0; i < p->n; i++) {
			struct pool_server *s = &p->servers[i];

			if (!pool_usable(s, tried))
				continue;
			/* active/weight compared without division */
			if (best == NULL || (uint64_t)atomic_load(&s->st->active) *
			    (uint64_t)pool_weight(best) <
			    (uint64_t)atomic_load(&best->st->active) * (uint64_t)pool_weight(s))
				best = s;
		}
		break;
	default:
		/* Smooth weighted round robin: even spread, weights respected. */
		pthread_mutex_lock(&p->lock);
		for (int i = 0; i < p->n; i++) {
			struct pool_server *s = &p->servers[i];

			if (!pool_usable(s, tried))
				continue;
			s->current_weight += pool_weight(s);
			total += pool_weight(s);
			if (best == NULL || s->current_weight > best->current_weight)
				best = s;
		}
		if (best != NULL)
			best->current_weight -= total;
		pthread_mutex_unlock(&p->lock);
		break;
	}
	if (best == NULL)
		return -1;
	atomic_fetch_add(&best->st->active, 1);
	atomic_fetch_add(&best->st->connects, 1);
	return best->index;
}

/* The servers in key's rendezvous order, best first: how many, -1 if none. */
static int
pool_order(const struct pool *p, const char *key, size_t keylen, int *order)
{
	const char *ids[HRW_MAX];
	unsigned weights[HRW_MAX];
	int n = p->n < HRW_MAX ? p->n : HRW_MAX;

	if (n <= 0 || keylen == 0)
		return -1;
	for (int i = 0; i < n; i++) {
		ids[i] = p->servers[i].cf->address;
		weights[i] = (unsigned)pool_weight(&p->servers[i]);
	}
	return hrw_order(key, keylen, ids, weights, (size_t)n, order) == 0 ? n : -1;
}

/*
 * Pick a server for key by rendezvous hashing (backend.lookup.type: hash):
 * the first usable one in key's order over every server of the pool, so
 * instances with the same server list agree without talking, and a server
 * that is down or already tried hands on only its own keys.
 */
int
pool_pick_hash(struct pool *p, const char *key, size_t keylen, uint64_t tried)
{
	int order[HRW_MAX], n = pool_order(p, key, keylen, order);
	struct pool_server *best = NULL;

	for (int i = 0; i < n && best == NULL; i++)
		if (pool_usable(&p->servers[order[i]], tried))
			best = &p->servers[order[i]];
	if (best == NULL)
		return -1;
	atomic_fetch_add(&best->st->active, 1);
	atomic_fetch_add(&best->st->connects, 1);
	return best->index;
}

/* Take server i for a session (a lookup named it); -1 if it cannot take one now. */
int
pool_take(struct pool *p, int i, uint64_t tried)
{
	if (i < 0 || i >= p->n || !pool_usable(&p->servers[i], tried))
		return -1;
	atomic_fetch_add(&p->servers[i].st->active, 1);
	atomic_fetch_add(&p->servers[i].st->connects, 1);
	return i;
}

/* The pool index of the server at sa (same address and port), -1 if none. */
int
pool_find(const struct pool *p, const struct sockaddr *sa, socklen_t len)
{
	for (int i = 0; i < p->n; i++) {
		const struct netaddr *a = &p->servers[i].cf->addr;

		if (a->len == len && memcmp(&a->ss, sa, len) == 0)
			return i;
	}
	return -1;
}

/* Count a login through imapgate on server i (route: login). */
void
pool_login(struct pool *p, int i, int ok)
{
	if (i >= 0 && i < p->n)
		atomic_fetch_add(ok ? &p->servers[i].st->logins_ok : &p->servers[i].st->logins_failed, 1);
}

/* One fewer session on server i (of any generation's pool: the state is shared). */
void
pool_release(struct pool *p, int i)
{
	if (i >= 0 && i < p->n)
		atomic_fetch_sub(&p->servers[i].st->active, 1);
}

/* Mark st up or down, logging the change once. */
static void
pool_set_up(struct pool_state *st, int up, const char *why)
{
	char esc[LOGESC_SIZE(POOL_WHY_MAX)];
	int old = !up;

	if (atomic_compare_exchange_strong(&st->up, &old, up)) {
		if (up)
			log_info("msg=backend-up server=%s", st->address);
		else
			log_warn("msg=backend-down server=%s error=\"%s\"", st->address,
			    logesc_quote(why ? why : "-", esc, sizeof(esc)));
	}
}

/*
 * Count a result for s; rise/fall decide its state.  A failure seen by a
 * session (passive) does not take a server down by itself while active
 * checks run: a burst of sessions timing out together on a busy server
 * would otherwise mark it down although it answers.  It asks for a check
 * now instead, and the check's failure decides.  The request goes through
 * the shared state, so a session of an older generation reaches the
 * checks of the current one.
 */
static void
pool_result(struct pool_server *s, int ok, int active, const char *why)
{
	struct pool_state *st = s->st;
	const struct config *cf = s->pool->cf;

	if (ok) {
		atomic_store(&st->fails, 0);
		if (!atomic_load(&st->up) &&
		    atomic_fetch_add(&st->oks, 1) + 1 >= cf->health_rise) {
			atomic_store(&st->oks, 0);
			pool_set_up(st, 1, NULL);
		}
		return;
	}
	atomic_fetch_add(&st->failures, 1);
	atomic_store(&st->oks, 0);
	pthread_mutex_lock(&st->lock);
	snprintf(st->last_error, sizeof(st->last_error), "%s", why != NULL ? why : "failed");
	pthread_mutex_unlock(&st->lock);
	if (atomic_fetch_add(&st->fails, 1) + 1 < cf->health_fall)
		return;
	if (!active) {
		pthread_mutex_lock(&st->lock);
		if (st->check_now != NULL) {
			event_active(st->check_now, EV_TIMEOUT, 0);
			pthread_mutex_unlock(&st->lock);
			return;
		}
		pthread_mutex_unlock(&st->lock);
	}
	pool_set_up(st, 0, why);
}

/* A session's connect or greeting on server i went well or not. */
void
pool_report(struct pool *p, int i, int ok, const char *why)
{
	if (i >= 0 && i < p->n)
		pool_result(&p->servers[i], ok, 0, why);
}

static void pool_hc_arm(struct pool_server *s);

/* End one health check with its result. */
static void
pool_hc_done(struct pool_server *s, int ok, const char *why)
{
	/* Count first: why may point into the endpoint freed next. */
	pool_result(s, ok, 1, why);
	endpoint_free(s->hc_ep);
	s->hc_ep = NULL;
	s->hc_running = 0;
	pool_hc_arm(s);
}

/* Does line start with word (any case) followed by a space or the line end? */
static int
pool_hc_word(const char *line, size_t len, const char *word)
{
	size_t n = strlen(word);

	return len > n && strncasecmp(line, word, n) == 0 &&
	    (line[n] == ' ' || line[n] == '\r' || line[n] == '\n');
}

/* A tagged answer to tag: 1 if OK, 0 if another status, -1 if not ours. */
static int
pool_hc_tagged(const char *line, size_t len, const char *tag)
{
	size_t n = strlen(tag);

	if (len <= n || strncmp(line, tag, n) != 0 || line[n] != ' ')
		return -1;
	return pool_hc_word(line + n + 1, len - n - 1, "OK");
}

/* Send LOGOUT: the check ends at its tagged OK. */
static void
pool_hc_logout(struct pool_server *s)
{
	static const char cmd[] = POOL_TAG_LOGOUT " LOGOUT\r\n";

	endpoint_write(s->hc_ep, cmd, sizeof(cmd) - 1);
	s->hc_step = POOL_HC_LOGOUT;
	s->hc_bye = 0;
}

/* Append v to buf as an IMAP quoted string. */
static size_t
pool_hc_quote(char *buf, size_t at, const char *v)
{
	buf[at++] = '"';
	for (; *v; v++) {
		if (*v == '"' || *v == '\\')
			buf[at++] = '\\';
		buf[at++] = *v;
	}
	buf[at++] = '"';
	return at;
}

/*
 * After the greeting (and STARTTLS): log in when backend.health.user is
 * set, so the check exercises the server's authentication and Dovecot logs
 * a login rather than an aborted one; else straight to LOGOUT.  The
 * command carries the password: it is never logged and wiped here.
 */
static void
pool_hc_ready(struct pool_server *s)
{
	const struct config *cf = s->pool->cf;
	char cmd[POOL_LOGIN_MAX];
	size_t n;

	if (cf->health_user == NULL || cf->health_password == NULL || s->hc_preauth ||
	    strlen(cf->health_user) + strlen(cf->health_password) > (POOL_LOGIN_MAX - 32) / 2) {
		pool_hc_logout(s);
		return;
	}
	n = (size_t)snprintf(cmd, sizeof(cmd), "%s LOGIN ", POOL_TAG_LOGIN);
	n = pool_hc_quote(cmd, n, cf->health_user);
	cmd[n++] = ' ';
	n = pool_hc_quote(cmd, n, cf->health_password);
	cmd[n++] = '\r';
	cmd[n++] = '\n';
	endpoint_write(s->hc_ep, cmd, n);
	explicit_bzero(cmd, n);
	s->hc_step = POOL_HC_LOGIN;
}

/*
 * One line from a checked server.  Returns 1 when the check ended or
 * stopped reading lines (TLS under way), 0 to read on.
 */
static int
pool_hc_line(struct pool_server *s, const char *line, size_t len)
{
	struct pool *p = s->pool;
	int r;

	switch (s->hc_step) {
	case POOL_HC_GREETING:
		if (len < 2 || line[0] != '*' || line[1] != ' ' ||
		    (!pool_hc_word(line + 2, len - 2, "OK") &&
		    !pool_hc_word(line + 2, len - 2, "PREAUTH"))) {
			pool_hc_done(s, 0, len >= 2 && pool_hc_word(line + 2, len - 2, "BYE") ?
			    "greeted with BYE" : "bad greeting");
			return 1;
		}
		s->hc_preauth = pool_hc_word(line + 2, len - 2, "PREAUTH");
		if (p->cf->backend_tls == CONFIG_TLS_STARTTLS) {
			static const char cmd[] = POOL_TAG_STARTTLS " STARTTLS\r\n";

			endpoint_write(s->hc_ep, cmd, sizeof(cmd) - 1);
			s->hc_step = POOL_HC_STARTTLS;
			return 0;
		}
		pool_hc_ready(s);
		return 0;
	case POOL_HC_STARTTLS:
		if ((r = pool_hc_tagged(line, len, POOL_TAG_STARTTLS)) < 0)
			return 0;
		if (r == 0) {
			pool_hc_done(s, 0, "STARTTLS refused");
			return 1;
		}
		s->hc_step = POOL_HC_UPGRADE;
		if (p->btls == NULL || endpoint_start_tls(s->hc_ep, p->btls) != 0)
			pool_hc_done(s, 0, "tls setup failed");
		return 1;
	case POOL_HC_LOGIN:
		if ((r = pool_hc_tagged(line, len, POOL_TAG_LOGIN)) < 0)
			return 0;
		if (r == 0) {
			/* The server answers but refuses the check's user: its auth is broken. */
			pool_hc_done(s, 0, "health check login refused");
			return 1;
		}
		pool_hc_logout(s);
		return 0;
	case POOL_HC_LOGOUT:
		if (len >= 2 && line[0] == '*' && line[1] == ' ' &&
		    pool_hc_word(line + 2, len - 2, "BYE")) {
			s->hc_bye = 1;
			return 0;
		}
		if ((r = pool_hc_tagged(line, len, POOL_TAG_LOGOUT)) < 0)
			return 0;
		pool_hc_done(s, r == 1, r == 1 ? NULL : "LOGOUT refused");
		return 1;
	default:
		return 0;
	}
}

/* Input from a checked server: take it line by line. */
static void
pool_hc_readable(struct endpoint *ep, void *arg)
{
	struct pool_server *s = arg;
	char line[POOL_LINE_MAX];

	for (;;) {
		size_t n = endpoint_input_len(ep), len;
		const unsigned char *b, *nl;

		if (n == 0 || (s->hc_step != POOL_HC_GREETING && s->hc_step != POOL_HC_STARTTLS &&
		    s->hc_step != POOL_HC_LOGIN && s->hc_step != POOL_HC_LOGOUT))
			return;
		if (n > sizeof(line))
			n = sizeof(line);
		if ((b = endpoint_pullup(ep, n)) == NULL) {
			pool_hc_done(s, 0, "out of memory");
			return;
		}
		if ((nl = memchr(b, '\n', n)) == NULL) {
			if (n >= sizeof(line))
				pool_hc_done(s, 0, "line too long");
			return;
		}
		len = (size_t)(nl - b) + 1;
		memcpy(line, b, len);
		endpoint_drop(ep, len);
		if (pool_hc_line(s, line, len) != 0)
			return;
	}
}

/* Nothing to do when a check's output drains. */
static void
pool_hc_drained(struct endpoint *ep, void *arg)
{
	(void)ep;
	(void)arg;
}

/* Connected (TCP, or a TLS handshake done): PROXY header and TLS as configured. */
static void
pool_hc_connected(struct pool_server *s)
{
	struct pool *p = s->pool;
	unsigned char hdr[POOL_PROXY_MAX];
	size_t n = 0;

	switch (s->hc_step) {
	case POOL_HC_CONNECT:
		/* A header without addresses: the check is no client's connection. */
		if (p->cf->client_ip == CONFIG_CLIENT_IP_PROXY_V1)
			n = proxyproto_build_local(1, hdr, sizeof(hdr));
		else if (p->cf->client_ip == CONFIG_CLIENT_IP_PROXY_V2)
			n = proxyproto_build_local(2, hdr, sizeof(hdr));
		if (n > 0)
			endpoint_write(s->hc_ep, hdr, n);
		if (p->cf->backend_tls == CONFIG_TLS_IMPLICIT) {
			s->hc_step = POOL_HC_TLS;
			if (p->btls == NULL || endpoint_start_tls(s->hc_ep, p->btls) != 0)
				pool_hc_done(s, 0, "tls setup failed");
			return;
		}
		s->hc_step = POOL_HC_GREETING;
		return;
	case POOL_HC_TLS:
		s->hc_step = POOL_HC_GREETING;
		/* The greeting may have come with the handshake's last bytes. */
		pool_hc_readable(s->hc_ep, s);
		return;
	case POOL_HC_UPGRADE:
		pool_hc_ready(s);
		return;
	default:
		return;
	}
}

/* Connection events of a health check. */
static void
pool_hc_event(struct endpoint *ep, enum endpoint_event what, void *arg)
{
	struct pool_server *s = arg;

	if (what == ENDPOINT_CONNECTED) {
		pool_hc_connected(s);
		return;
	}
	if (what == ENDPOINT_FLUSHED)
		return;
	if (what == ENDPOINT_EOF && s->hc_step == POOL_HC_LOGOUT && s->hc_bye) {
		/* BYE and a close without the tagged OK: still a clean goodbye. */
		pool_hc_done(s, 1, NULL);
		return;
	}
	if (what != ENDPOINT_EOF) {
		pool_hc_done(s, 0, endpoint_error(ep));
		return;
	}
	pool_hc_done(s, 0, s->hc_step == POOL_HC_STARTTLS ? "closed during STARTTLS" :
	    s->hc_step == POOL_HC_LOGIN ? "closed before the LOGIN answer" :
	    s->hc_step == POOL_HC_LOGOUT ? "closed before the LOGOUT answer" :
	    "closed before greeting");
}

static const struct endpoint_cbs pool_hc_cbs = {
	pool_hc_readable, pool_hc_drained, pool_hc_event,
};

/* Timer: start a check, or give up on one that ran out of time. */
static void
pool_hc_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pool_server *s = arg;
	struct pool *p = s->pool;
	struct timeval tv;

	(void)fd;
	(void)what;
	if (s->hc_running) {
		pool_hc_done(s, 0, "health check timeout");
		return;
	}
	s->hc_step = POOL_HC_CONNECT;
	s->hc_bye = 0;
	s->hc_preauth = 0;
	s->hc_ep = endpoint_connect(p->base, &s->cf->addr, &pool_hc_cbs, s);
	if (s->hc_ep == NULL) {
		pool_result(s, 0, 1, "connect failed");
		pool_hc_arm(s);
		return;
	}
	s->hc_running = 1;
	tv.tv_sec = (time_t)(p->cf->health_timeout_ms / 1000);
	tv.tv_usec = (suseconds_t)((p->cf->health_timeout_ms % 1000) * 1000);
	evtimer_add(s->hc_timer, &tv);
}

/* Sessions saw failures: check now unless a check is running. */
static void
pool_hc_now_cb(evutil_socket_t fd, short what, void *arg)
{
	struct pool_server *s = arg;

	if (s->hc_running)
		return;
	evtimer_del(s->hc_timer);
	pool_hc_timer_cb(fd, what, arg);
}

/* Schedule the next check of s. */
static void
pool_hc_arm(struct pool_server *s)
{
	uint64_t ms = s->pool->cf->health_interval_ms;
	struct timeval tv = { (time_t)(ms / 1000), (suseconds_t)((ms % 1000) * 1000) };

	evtimer_add(s->hc_timer, &tv);
}

/* Start checking every server every backend.health.interval. */
void
pool_health_start(struct pool *p, struct event_base *base, struct tls_ctx *btls)
{
	p->base = base;
	p->btls = btls;
	if (p->cf->health_interval_ms == 0)
		return;
	for (int i = 0; i < p->n; i++) {
		struct pool_server *s = &p->servers[i];

		s->hc_timer = evtimer_new(base, pool_hc_timer_cb, s);
		s->hc_now = event_new(base, -1, 0, pool_hc_now_cb, s);
		if (s->hc_timer == NULL || s->hc_now == NULL) {
			log_error("msg=\"health check setup failed\" server=%s", s->cf->address);
			continue;
		}
		pool_hc_arm(s);
		pthread_mutex_lock(&s->st->lock);
		s->st->check_now = s->hc_now;
		pthread_mutex_unlock(&s->st->lock);
	}
}

/* State number i: configured servers, then retired ones. */
static struct pool_state *
pool_state_at(const struct pool *p, int i)
{
	return i < p->n ? p->servers[i].st : p->retired[i - p->n];
}

/* Configured servers. */
int
pool_size(const struct pool *p)
{
	return p->n;
}

/* Configured servers plus the listed retired ones. */
int
pool_size_all(const struct pool *p)
{
	return p->n + p->nlisted;
}

/* Server i's address as configured. */
const char *
pool_name(const struct pool *p, int i)
{
	return i < p->n ? p->servers[i].cf->address : p->retired[i - p->n]->address;
}

/* Server i's configuration. */
const struct config_server *
pool_server(const struct pool *p, int i)
{
	return p->servers[i].cf;
}

/* Is server i up? */
int
pool_is_up(const struct pool *p, int i)
{
	return atomic_load(&pool_state_at(p, i)->up);
}

/* Sessions on server i now, of every generation. */
unsigned
pool_active(const struct pool *p, int i)
{
	return atomic_load(&pool_state_at(p, i)->active);
}

/* Sessions ever sent to server i. */
uint64_t
pool_connects(const struct pool *p, int i)
{
	return atomic_load(&pool_state_at(p, i)->connects);
}

/* Failures ever counted for server i. */
uint64_t
pool_failures(const struct pool *p, int i)
{
	return atomic_load(&pool_state_at(p, i)->failures);
}

/* Logins through imapgate on server i (any index pool_size_all covers). */
uint64_t
pool_logins(const struct pool *p, int i, int ok)
{
	struct pool_state *st = pool_state_at(p, i);

	return ok ? atomic_load(&st->logins_ok) : atomic_load(&st->logins_failed);
}

/* The operator's state of server i (POOL_ADMIN_*); kept across reloads with the rest. */
int
pool_admin(const struct pool *p, int i)
{
	return atomic_load(&pool_state_at(p, i)->admin);
}

/* Set the operator's state of server i; logged once per change. */
void
pool_admin_set(struct pool *p, int i, int admin)
{
	static const char *const names[] = { "enabled", "disabled", "draining" };
	struct pool_state *st = pool_state_at(p, i);
	int old = atomic_exchange(&st->admin, admin);

	if (old != admin)
		log_info("msg=backend-admin server=%s state=%s->%s", st->address, names[old],
		    names[admin]);
}

/* The weight in force for server i. */
unsigned
pool_weight_of(const struct pool *p, int i)
{
	return (unsigned)pool_weight(&p->servers[i]);
}

/* Set server i's weight at run time (0: back to the file's). */
void
pool_weight_set(struct pool *p, int i, unsigned w)
{
	atomic_store(&pool_state_at(p, i)->weight, w);
	log_info("msg=backend-weight server=%s weight=%u", pool_state_at(p, i)->address,
	    (unsigned)pool_weight(&p->servers[i]));
}

/* The index of the server whose address text is name, -1 if none. */
int
pool_find_name(const struct pool *p, const char *name)
{
	for (int i = 0; i < p->n; i++)
		if (strcmp(p->servers[i].cf->address, name) == 0)
			return i;
	return -1;
}

/* The last failure's reason for server i ("" if none). */
void
pool_last_error(const struct pool *p, int i, char *buf, size_t len)
{
	struct pool_state *st = pool_state_at(p, i);

	pthread_mutex_lock(&st->lock);
	snprintf(buf, len, "%s", st->last_error);
	pthread_mutex_unlock(&st->lock);
}

/*
 * The hash lookup's order of the servers for user (by its domain when
 * domain is set): order[] gets every index, best first; returns how many,
 * -1 if there is no key.
 */
int
pool_rank(const struct pool *p, const char *user, int domain, int *order)
{
	const char *key = user, *at;

	if (domain) {
		if ((at = strrchr(user, '@')) == NULL)
			return -1;
		key = at + 1;
	}
	return pool_order(p, key, strlen(key), order);
}
