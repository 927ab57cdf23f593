/*
 * control: the control socket.
 *
 * A Unix stream socket (control.socket, mode 0600, or 0660 with
 * control.group) on the main thread.  A client sends one command line and
 * reads the answer until the socket closes: a first line "ok" or
 * "error: TEXT", then the body (an aligned table, or JSON when the command
 * starts with "json").  `imapgate ctl` is that client.
 *
 * Commands about the backend pool run on the main thread.  Commands about
 * sessions are jobs for the workers (each owns its sessions): the main
 * thread hands the job to every worker, each does its share on its own
 * loop, and the last one to finish wakes the main thread to answer.  One
 * job runs at a time; a second one meanwhile is told to retry.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <grp.h>
#include <pthread.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/listener.h>

#include "control.h"
#include "endpoint.h"
#include "hrw.h"
#include "log.h"
#include "logesc.h"
#include "metrics.h"
#include "pool.h"
#include "server.h"
#include "session.h"
#include "state.h"
#include "usermap.h"

/* Words in one command line, at most. */
#define CONTROL_MAX_WORDS	16
/* Longest answer body (sessions of a big instance); past it the list is cut. */
#define CONTROL_MAX_OUTPUT	(64u * 1024 * 1024)
/*
 * Seconds a control client has to send its line; then it is closed, so a
 * few silent clients cannot hold every slot.  Waiting for the answer is
 * not bounded by it (a job may take its time on busy workers).
 */
#define CONTROL_CONN_TIMEOUT_S	10
/* Control connections open at once; more are closed at accept. */
#define CONTROL_MAX_CONNS	64
/* The BYE text of a kick without "reason". */
#define CONTROL_KICK_TEXT	"Please reconnect"
/* The BYE text of a server drain. */
#define CONTROL_DRAIN_TEXT	"Server going down for maintenance, please reconnect"
/* Longest spread or delay accepted. */
#define CONTROL_MAX_SPREAD_MS	(3600u * 1000)

enum control_op {
	CONTROL_JOB_LIST,
	CONTROL_JOB_COUNT,
	CONTROL_JOB_KICK,
	CONTROL_JOB_UNKICK,	/* server S enable/disable after a drain: its kicks called off */
};

/* A command's work for the workers; the answer is written when all are done. */
struct control_job {
	enum control_op		 op;
	struct control_filter	 f;
	int			 json;
	uint64_t		 spread_ms;
	char			 text[SESSION_KICK_TEXT_MAX + 1];
	pthread_mutex_t		 lock;		/* pending, out, count */
	unsigned		 pending;	/* workers not done yet */
	unsigned		 nworkers;
	struct evbuffer		*out[SERVER_MAX_WORKERS];
	uint64_t		 count[SERVER_MAX_WORKERS];
	struct event		*ev_done;	/* main thread: all done */
	struct control_conn	*conn;		/* NULL once the client went away */
};

/* One client of the socket. */
struct control_conn {
	struct endpoint		*ep;
	int			 answered;
	struct event		*ev_timeout;	/* CONTROL_CONN_TIMEOUT_S to send a line */
	int			 lingering;	/* answered and half-closed: reading to EOF */
};

/* Logins held back by "delay user U D". */
struct control_delay {
	char			 user[IMAP_MAX_ARG + 1];
	uint64_t		 until_us;	/* monotonic */
};

/* Main-thread state of the socket. */
static struct {
	struct gate		*g;
	struct evconnlistener	*lev;
	char			*path;		/* the socket file we made */
	unsigned		 nconns;
	struct control_job	*job;		/* the job running, if any */
} control;

static pthread_mutex_t control_delay_lock = PTHREAD_MUTEX_INITIALIZER;
static struct control_delay control_delays[CONTROL_MAX_DELAYS];

static const struct endpoint_cbs control_cbs;

static void	control_servers(struct control_conn *, int);

/* Monotonic microseconds. */
static uint64_t
control_now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000 + (uint64_t)ts.tv_nsec / 1000;
}

/* Milliseconds a login of user must still wait ("delay user"); any thread. */
uint64_t
control_login_delay(const char *user)
{
	uint64_t now = control_now_us(), left = 0;

	pthread_mutex_lock(&control_delay_lock);
	for (size_t i = 0; i < CONTROL_MAX_DELAYS; i++)
		if (control_delays[i].until_us > now &&
		    strcasecmp(control_delays[i].user, user) == 0) {
			left = (control_delays[i].until_us - now) / 1000 + 1;
			break;
		}
	pthread_mutex_unlock(&control_delay_lock);
	return left;
}

/* Hold user's logins for ms from now (0: release); -1 if the table is full. */
static int
control_delay_set(const char *user, uint64_t ms)
{
	uint64_t now = control_now_us();
	size_t i, freeslot = CONTROL_MAX_DELAYS;
	int rc = 0;

	pthread_mutex_lock(&control_delay_lock);
	for (i = 0; i < CONTROL_MAX_DELAYS; i++) {
		if (control_delays[i].until_us > now &&
		    strcasecmp(control_delays[i].user, user) == 0)
			break;
		if (control_delays[i].until_us <= now && freeslot == CONTROL_MAX_DELAYS)
			freeslot = i;
	}
	if (i == CONTROL_MAX_DELAYS)
		i = freeslot;
	if (i == CONTROL_MAX_DELAYS)
		rc = ms == 0 ? 0 : -1;
	else if (ms == 0)
		control_delays[i].until_us = 0;
	else {
		snprintf(control_delays[i].user, sizeof(control_delays[i].user), "%s", user);
		control_delays[i].until_us = now + ms * 1000;
	}
	pthread_mutex_unlock(&control_delay_lock);
	return rc;
}

/* "10s", "500ms", "2m", "1h", or bare seconds; -1 if not a duration. */
static int64_t
control_duration(const char *v)
{
	char *end;
	unsigned long long n;

	if (!isdigit((unsigned char)v[0]))
		return -1;
	errno = 0;
	n = strtoull(v, &end, 10);
	if (errno != 0 || n > CONTROL_MAX_SPREAD_MS)
		return -1;
	if (*end == '\0' || strcmp(end, "s") == 0)
		n *= 1000;
	else if (strcmp(end, "m") == 0)
		n *= 60 * 1000;
	else if (strcmp(end, "h") == 0)
		n *= 3600 * 1000;
	else if (strcmp(end, "ms") != 0)
		return -1;
	return n > CONTROL_MAX_SPREAD_MS ? -1 : (int64_t)n;
}

/* "10.0.0.0/8", "2001:db8::/32" or one address; -1 if not a network. */
static int
control_cidr(const char *v, struct config_cidr *c)
{
	char buf[INET6_ADDRSTRLEN + 8], *slash;
	unsigned long prefix;

	if (strlen(v) >= sizeof(buf))
		return -1;
	strcpy(buf, v);
	memset(c, 0, sizeof(*c));
	if ((slash = strchr(buf, '/')) != NULL)
		*slash++ = '\0';
	if (inet_pton(AF_INET, buf, c->addr) == 1)
		c->family = AF_INET;
	else if (inet_pton(AF_INET6, buf, c->addr) == 1)
		c->family = AF_INET6;
	else
		return -1;
	prefix = c->family == AF_INET ? 32 : 128;
	if (slash != NULL) {
		char *end;

		if (!isdigit((unsigned char)*slash))
			return -1;
		prefix = strtoul(slash, &end, 10);
		if (*end != '\0' || prefix > (c->family == AF_INET ? 32u : 128u))
			return -1;
	}
	c->prefix = (unsigned)prefix;
	return 0;
}

/* A state name as the control socket spells it; -1 if none. */
static int
control_state(const char *v)
{
	static const char *const names[][2] = {
		{ "NotAuthenticated", "notauth" }, { "Authenticated", "auth" },
		{ "Selected", "selected" }, { "Logout", "logout" },
	};

	for (int i = 0; i < 4; i++)
		if (strcasecmp(v, names[i][0]) == 0 || strcasecmp(v, names[i][1]) == 0)
			return i;
	return -1;
}

/* Free a filter's strings. */
static void
control_filter_clear(struct control_filter *f)
{
	free(f->user);
	free(f->server);
	f->user = f->server = NULL;
}

/*
 * Parse "[user U] [server S] [client CIDR] [state ST] [session ID]" from
 * w[0..n); NULL, or the error text.
 */
static const char *
control_filter_parse(char **w, int n, struct control_filter *f)
{
	memset(f, 0, sizeof(*f));
	f->state = -1;
	for (int i = 0; i < n; i += 2) {
		if (i + 1 >= n)
			return "a filter word needs a value";
		if (strcmp(w[i], "user") == 0 && f->user == NULL)
			f->user = strdup(w[i + 1]);
		else if (strcmp(w[i], "server") == 0 && f->server == NULL)
			f->server = strdup(w[i + 1]);
		else if (strcmp(w[i], "client") == 0 && !f->has_cidr) {
			if (control_cidr(w[i + 1], &f->cidr) != 0)
				return "client: not an address or network";
			f->has_cidr = 1;
		} else if (strcmp(w[i], "state") == 0 && f->state < 0) {
			if ((f->state = control_state(w[i + 1])) < 0)
				return "state: NotAuthenticated, Authenticated, Selected or Logout";
		} else if (strcmp(w[i], "session") == 0 && f->id[0] == '\0') {
			if (strlen(w[i + 1]) >= sizeof(f->id))
				return "session: no such id";
			strcpy(f->id, w[i + 1]);
		} else
			return "unknown or repeated filter (user, server, client, state, session)";
	}
	return NULL;
}

/* Write the answer's first line and body, then close once it has gone out. */
static void
control_answer(struct control_conn *c, const char *error, struct evbuffer *body)
{
	char line[CONTROL_MAX_LINE];
	int n;

	if (c->answered)
		return;
	c->answered = 1;
	if (error != NULL)
		n = snprintf(line, sizeof(line), "error: %s\n", error);
	else
		n = snprintf(line, sizeof(line), "ok\n");
	endpoint_write(c->ep, line, n > 0 && (size_t)n < sizeof(line) ? (size_t)n : 0);
	if (body != NULL && error == NULL) {
		size_t len = evbuffer_get_length(body);
		const unsigned char *b = evbuffer_pullup(body, -1);

		if (b != NULL)
			endpoint_write(c->ep, b, len);
	}
	endpoint_flush(c->ep);
}

/* Free a job (all workers done, or never started). */
static void
control_job_free(struct control_job *j)
{
	for (unsigned i = 0; i < SERVER_MAX_WORKERS; i++)
		if (j->out[i] != NULL)
			evbuffer_free(j->out[i]);
	if (j->ev_done != NULL)
		event_free(j->ev_done);
	control_filter_clear(&j->f);
	pthread_mutex_destroy(&j->lock);
	free(j);
}

/* Every worker did its share: answer the client (if still there). */
static void
control_job_done(evutil_socket_t fd, short what, void *arg)
{
	struct control_job *j = arg;
	struct evbuffer *b = evbuffer_new();
	uint64_t total = 0;

	(void)fd;
	(void)what;
	for (unsigned i = 0; i < j->nworkers; i++)
		total += j->count[i];
	if (b != NULL && j->conn != NULL) {
		switch (j->op) {
		case CONTROL_JOB_LIST: {
			int first = 1;

			if (j->json)
				evbuffer_add_printf(b, "{\"sessions\":[");
			else
				evbuffer_add_printf(b, "%-14s %-23s %-24s %-23s %-16s %-16s %8s %8s "
				    "%10s %10s\n", "ID", "CLIENT", "USER", "SERVER", "STATE",
				    "MAILBOX", "AGE_S", "IDLE_S", "IN", "OUT");
			for (unsigned i = 0; i < j->nworkers; i++) {
				if (j->out[i] == NULL || evbuffer_get_length(j->out[i]) == 0)
					continue;
				if (j->json && !first)
					evbuffer_add(b, ",", 1);
				first = 0;
				evbuffer_add_buffer(b, j->out[i]);
			}
			if (j->json)
				evbuffer_add_printf(b, "],\"count\":%llu}\n",
				    (unsigned long long)total);
			break;
		}
		case CONTROL_JOB_COUNT:
			evbuffer_add_printf(b, j->json ? "{\"count\":%llu}\n" : "%llu\n",
			    (unsigned long long)total);
			break;
		case CONTROL_JOB_KICK:
			if (j->json)
				evbuffer_add_printf(b, "{\"kicked\":%llu,\"spread_ms\":%llu}\n",
				    (unsigned long long)total, (unsigned long long)j->spread_ms);
			else
				evbuffer_add_printf(b, "kicked %llu session(s) over %llu ms\n",
				    (unsigned long long)total, (unsigned long long)j->spread_ms);
			log_info("msg=control-kick sessions=%llu spread_ms=%llu",
			    (unsigned long long)total, (unsigned long long)j->spread_ms);
			break;
		case CONTROL_JOB_UNKICK:
			/* The answer "server S enable/disable" always gives: the servers. */
			log_info("msg=control-kick-cancelled server=%s sessions=%llu",
			    j->f.server, (unsigned long long)total);
			break;
		}
		if (j->op == CONTROL_JOB_UNKICK)
			control_servers(j->conn, j->json);
		else
			control_answer(j->conn, NULL, b);
	} else if (j->conn != NULL)
		control_answer(j->conn, "out of memory", NULL);
	if (b != NULL)
		evbuffer_free(b);
	if (control.job == j)
		control.job = NULL;
	control_job_free(j);
}

/* A worker's share of the running job (its ev_ctl event). */
void
control_worker_run(struct server *srv)
{
	struct control_job *j;
	struct session *s, *next;
	uint64_t n = 0, k = 0;
	int last;

	pthread_mutex_lock(&srv->lock);
	j = srv->ctl_job;
	srv->ctl_job = NULL;
	pthread_mutex_unlock(&srv->lock);
	if (j == NULL)
		return;
	if (j->op == CONTROL_JOB_KICK)
		for (s = TAILQ_FIRST(&srv->sessions); s != NULL; s = session_next(s))
			n += session_match(s, &j->f);
	for (s = TAILQ_FIRST(&srv->sessions); s != NULL; s = next) {
		next = session_next(s);
		if (!session_match(s, &j->f))
			continue;
		switch (j->op) {
		case CONTROL_JOB_LIST:
			if (evbuffer_get_length(j->out[srv->index]) < CONTROL_MAX_OUTPUT /
			    (j->nworkers ? j->nworkers : 1)) {
				if (j->json && j->count[srv->index] > 0)
					evbuffer_add(j->out[srv->index], ",", 1);
				session_describe(s, j->json, j->out[srv->index]);
			}
			break;
		case CONTROL_JOB_COUNT:
			break;
		case CONTROL_JOB_KICK:
			/* This worker's share, spread evenly over the window. */
			session_kick(s, n > 0 ? j->spread_ms * k++ / n : 0, j->text);
			break;
		case CONTROL_JOB_UNKICK:
			if (!session_kick_cancel(s))
				continue;	/* count only the kicks called off */
			break;
		}
		j->count[srv->index]++;
	}
	pthread_mutex_lock(&j->lock);
	last = --j->pending == 0;
	pthread_mutex_unlock(&j->lock);
	if (last)
		event_active(j->ev_done, EV_TIMEOUT, 0);
}

/* Hand a job to every worker; the answer comes from control_job_done. */
static void
control_job_start(struct control_conn *c, struct control_job *j)
{
	struct gate *g = control.g;

	if (control.job != NULL || g->stopping) {
		control_answer(c, g->stopping ? "shutting down" : "busy: another command runs, "
		    "try again", NULL);
		control_job_free(j);
		return;
	}
	j->conn = c;
	j->nworkers = g->nworkers;
	j->pending = g->nworkers;
	for (unsigned i = 0; i < g->nworkers; i++)
		if ((j->out[i] = evbuffer_new()) == NULL) {
			control_answer(c, "out of memory", NULL);
			control_job_free(j);
			return;
		}
	if ((j->ev_done = event_new(g->base, -1, 0, control_job_done, j)) == NULL) {
		control_answer(c, "out of memory", NULL);
		control_job_free(j);
		return;
	}
	control.job = j;
	for (unsigned i = 0; i < g->nworkers; i++) {
		struct server *srv = &g->workers[i];

		pthread_mutex_lock(&srv->lock);
		srv->ctl_job = j;
		pthread_mutex_unlock(&srv->lock);
		event_active(srv->ev_ctl, EV_TIMEOUT, 0);
	}
}

/* A new job with op for the command's connection. */
static struct control_job *
control_job_new(enum control_op op, int json)
{
	struct control_job *j = calloc(1, sizeof(*j));

	if (j == NULL)
		return NULL;
	j->op = op;
	j->json = json;
	j->f.state = -1;
	pthread_mutex_init(&j->lock, NULL);
	return j;
}

/*
 * Answer busy (another command's job runs) or "shutting down" if no job
 * can start now; 1 if it answered.  Asked before a command changes any
 * state, so that a refused command leaves everything as it was.
 */
static int
control_refuse_job(struct control_conn *c)
{
	if (control.job == NULL && !control.g->stopping)
		return 0;
	control_answer(c, control.g->stopping ? "shutting down" :
	    "busy: another command runs, try again", NULL);
	return 1;
}

/* A job of op for the sessions on server name; NULL after answering "out of memory". */
static struct control_job *
control_server_job(struct control_conn *c, enum control_op op, int json, const char *name)
{
	struct control_job *j = control_job_new(op, json);

	if (j == NULL || (j->f.server = strdup(name)) == NULL) {
		if (j != NULL)
			control_job_free(j);
		control_answer(c, "out of memory", NULL);
		return NULL;
	}
	return j;
}

/* "servers": every pool server with its state. */
static void
control_servers(struct control_conn *c, int json)
{
	static const char *const admin[] = { "enabled", "disabled", "draining" };
	struct pool *p = control.g->gen->pool;
	struct evbuffer *b = evbuffer_new();
	char err[128], esc[LOGESC_JSON_SIZE(128)];

	if (b == NULL) {
		control_answer(c, "out of memory", NULL);
		return;
	}
	if (json)
		evbuffer_add_printf(b, "{\"servers\":[");
	else
		evbuffer_add_printf(b, "%-28s %-6s %-9s %6s %8s %10s %10s %s\n", "SERVER", "HEALTH",
		    "ADMIN", "WEIGHT", "SESSIONS", "CONNECTS", "FAILURES", "LAST_ERROR");
	for (int i = 0; i < pool_size(p); i++) {
		pool_last_error(p, i, err, sizeof(err));
		if (json)
			evbuffer_add_printf(b, "%s{\"server\":\"%s\",\"health\":\"%s\",\"admin\":\"%s\","
			    "\"weight\":%u,\"sessions\":%u,\"connects\":%llu,\"failures\":%llu,"
			    "\"last_error\":\"%s\"}", i ? "," : "", pool_name(p, i),
			    pool_is_up(p, i) ? "up" : "down", admin[pool_admin(p, i)],
			    pool_weight_of(p, i), pool_active(p, i),
			    (unsigned long long)pool_connects(p, i),
			    (unsigned long long)pool_failures(p, i), logesc_json(err, esc, sizeof(esc)));
		else
			evbuffer_add_printf(b, "%-28s %-6s %-9s %6u %8u %10llu %10llu %s\n",
			    pool_name(p, i), pool_is_up(p, i) ? "up" : "down",
			    admin[pool_admin(p, i)], pool_weight_of(p, i), pool_active(p, i),
			    (unsigned long long)pool_connects(p, i),
			    (unsigned long long)pool_failures(p, i), err[0] ? err : "-");
	}
	if (json)
		evbuffer_add_printf(b, "]}\n");
	control_answer(c, NULL, b);
	evbuffer_free(b);
}

/* "route user U": where the lookup sends U now. */
static void
control_route(struct control_conn *c, const char *user, int json)
{
	const struct config *cf = control.g->gen->cf;
	struct pool *p = control.g->gen->pool;
	struct evbuffer *b = evbuffer_new();
	char esc[LOGESC_JSON_SIZE(IMAP_MAX_ARG)];
	const char *how = NULL, *target = NULL;

	if (b == NULL) {
		control_answer(c, "out of memory", NULL);
		return;
	}
	logesc_json(user, esc, sizeof(esc));
	if (cf->route != CONFIG_ROUTE_LOGIN)
		how = "connect";
	else if (cf->lookup == CONFIG_LOOKUP_HTTP)
		how = "http";
	else if (cf->lookup == CONFIG_LOOKUP_STATIC) {
		const struct usermap_entry *e = usermap_find(cf->usermap, user);

		if (e != NULL) {
			how = "static";
			target = e->target;
		} else
			how = cf->lookup_fallback == CONFIG_FALLBACK_HASH ? "static-fallback" :
			    "static-reject";
	} else
		how = "hash";
	if (strcmp(how, "hash") == 0 || strcmp(how, "static-fallback") == 0) {
		int order[HRW_MAX], n = pool_rank(p, user, cf->lookup_key ==
		    CONFIG_LOOKUP_KEY_DOMAIN, order);

		if (n < 0) {
			control_answer(c, cf->lookup_key == CONFIG_LOOKUP_KEY_DOMAIN ?
			    "the user name has no domain" : "cannot rank", NULL);
			evbuffer_free(b);
			return;
		}
		evbuffer_add_printf(b, json ? "{\"user\":\"%s\",\"route\":\"%s\",\"order\":[" :
		    "user \"%s\" route %s, in order:\n", esc, how);
		for (int i = 0; i < n; i++) {
			static const char *const admin[] = { "enabled", "disabled", "draining" };

			evbuffer_add_printf(b, json ? "%s{\"server\":\"%s\",\"health\":\"%s\","
			    "\"admin\":\"%s\"}" : "%s%-28s %-5s %s\n", json && i ? "," : "",
			    pool_name(p, order[i]), pool_is_up(p, order[i]) ? "up" : "down",
			    admin[pool_admin(p, order[i])]);
		}
		evbuffer_add_printf(b, json ? "]}\n" : "");
	} else
		evbuffer_add_printf(b, json ? "{\"user\":\"%s\",\"route\":\"%s\",\"server\":\"%s\"}\n" :
		    "user \"%s\" route %s server %s\n", esc, how, target != NULL ? target :
		    strcmp(how, "http") == 0 ? "(asked at each login)" :
		    strcmp(how, "connect") == 0 ? "(picked at accept)" : "(refused)");
	control_answer(c, NULL, b);
	evbuffer_free(b);
}

/*
 * "reason TEXT" at w[i]: the rest of the line; NULL, or the error.  The
 * words w[] point into base (the line strtok_r cut up); copy is the line
 * as received, so the same offset there is the text as typed.
 */
static const char *
control_reason(char **w, int n, int i, const char *base, const char *copy, char *text,
    size_t len)
{
	if (i >= n)
		return NULL;
	if (strcmp(w[i], "reason") != 0 || i + 1 >= n)
		return "expected: reason TEXT";
	/* The text as typed, spaces included: from the word after "reason" to the end. */
	snprintf(text, len, "%s", copy + (w[i + 1] - base));
	return NULL;
}

/* Parse and run one command line (NUL-terminated, no line end). */
static void
control_command(struct control_conn *c, char *line)
{
	char copy[CONTROL_MAX_LINE], *w[CONTROL_MAX_WORDS], *save = NULL, *t;
	struct control_job *j;
	struct pool *p = control.g->gen->pool;
	const char *err;
	int n = 0, json = 0, i;
	int64_t ms;

	snprintf(copy, sizeof(copy), "%s", line);
	for (t = strtok_r(line, " \t", &save); t != NULL && n < CONTROL_MAX_WORDS;
	    t = strtok_r(NULL, " \t", &save))
		w[n++] = t;
	if (n > 0 && strcmp(w[0], "json") == 0) {
		json = 1;
		memmove(w, w + 1, (size_t)--n * sizeof(w[0]));
	}
	if (n == 0) {
		control_answer(c, "empty command", NULL);
		return;
	}
	if (strcmp(w[0], "sessions") == 0) {
		int count = n > 1 && strcmp(w[1], "count") == 0;

		if ((j = control_job_new(count ? CONTROL_JOB_COUNT : CONTROL_JOB_LIST, json)) == NULL) {
			control_answer(c, "out of memory", NULL);
			return;
		}
		if ((err = control_filter_parse(w + 1 + count, n - 1 - count, &j->f)) != NULL) {
			control_answer(c, err, NULL);
			control_job_free(j);
			return;
		}
		control_job_start(c, j);
		return;
	}
	if (strcmp(w[0], "kick") == 0) {
		if ((j = control_job_new(CONTROL_JOB_KICK, json)) == NULL) {
			control_answer(c, "out of memory", NULL);
			return;
		}
		snprintf(j->text, sizeof(j->text), "%s", CONTROL_KICK_TEXT);
		i = 2;
		if (n >= 2 && strcmp(w[1], "all") == 0)
			;
		else if (n >= 3 && (strcmp(w[1], "session") == 0 || strcmp(w[1], "user") == 0 ||
		    strcmp(w[1], "server") == 0)) {
			if ((err = control_filter_parse(w + 1, 2, &j->f)) != NULL) {
				control_answer(c, err, NULL);
				control_job_free(j);
				return;
			}
			i = 3;
		} else {
			control_answer(c, "usage: kick session ID | user U | server S | all "
			    "[spread DURATION] [reason TEXT]", NULL);
			control_job_free(j);
			return;
		}
		if (i + 1 < n && strcmp(w[i], "spread") == 0) {
			if ((ms = control_duration(w[i + 1])) < 0) {
				control_answer(c, "spread: a duration (10s, 500ms, 2m) up to 1h", NULL);
				control_job_free(j);
				return;
			}
			j->spread_ms = (uint64_t)ms;
			i += 2;
		}
		if ((err = control_reason(w, n, i, line, copy, j->text, sizeof(j->text))) != NULL) {
			control_answer(c, err, NULL);
			control_job_free(j);
			return;
		}
		control_job_start(c, j);
		return;
	}
	if (strcmp(w[0], "servers") == 0 && n == 1) {
		control_servers(c, json);
		return;
	}
	if (strcmp(w[0], "server") == 0 && n >= 3) {
		int s = pool_find_name(p, w[1]);

		if (s < 0) {
			control_answer(c, "no such server (write it as in backend.servers)", NULL);
			return;
		}
		if ((strcmp(w[2], "enable") == 0 || strcmp(w[2], "disable") == 0) && n == 3) {
			int was = pool_admin(p, s);

			/*
			 * After a drain, its kicks still waiting for their turn in
			 * the spread are called off (by the workers: a job), so that
			 * "enable" or "disable" stops the kicking too.  Refused
			 * before the state changes if a job runs, as drain is.
			 */
			if (was == POOL_ADMIN_DRAINING && control_refuse_job(c))
				return;
			pool_admin_set(p, s, strcmp(w[2], "enable") == 0 ? POOL_ADMIN_ENABLED :
			    POOL_ADMIN_DISABLED);
			if (was == POOL_ADMIN_DRAINING) {
				if ((j = control_server_job(c, CONTROL_JOB_UNKICK, json, w[1])) != NULL)
					control_job_start(c, j);
				return;
			}
		} else if (strcmp(w[2], "weight") == 0 && n == 4) {
			char *end;
			unsigned long v = strtoul(w[3], &end, 10);

			if (!isdigit((unsigned char)w[3][0]) || *end != '\0' || v < 1 ||
			    v > HRW_MAX_WEIGHT) {
				control_answer(c, "weight: 1 to 1000", NULL);
				return;
			}
			pool_weight_set(p, s, (unsigned)v);
		} else if (strcmp(w[2], "drain") == 0 && (n == 3 || (n == 5 &&
		    strcmp(w[3], "spread") == 0))) {
			if ((ms = n == 5 ? control_duration(w[4]) : 0) < 0) {
				control_answer(c, "spread: a duration (10s, 500ms, 2m) up to 1h", NULL);
				return;
			}
			/*
			 * Refused before the state changes: control_job_start would
			 * answer busy after the server was already set draining, and
			 * its sessions would then never be kicked.
			 */
			if (control_refuse_job(c) ||
			    (j = control_server_job(c, CONTROL_JOB_KICK, json, w[1])) == NULL)
				return;
			j->spread_ms = (uint64_t)ms;
			snprintf(j->text, sizeof(j->text), "%s", CONTROL_DRAIN_TEXT);
			/* No new sessions first, then the existing ones leave over the window. */
			pool_admin_set(p, s, POOL_ADMIN_DRAINING);
			control_job_start(c, j);
			return;
		} else {
			control_answer(c, "usage: server S enable | disable | drain [spread DURATION] "
			    "| weight N", NULL);
			return;
		}
		control_servers(c, json);
		return;
	}
	if (strcmp(w[0], "reload") == 0 && n == 1) {
		int ok = server_reload(control.g) == 0;

		control_answer(c, ok ? NULL : "reload failed: see the log (msg=reload-failed)", NULL);
		return;
	}
	if (strcmp(w[0], "stats") == 0 && n == 1) {
		struct evbuffer *b = evbuffer_new();

		if (b == NULL) {
			control_answer(c, "out of memory", NULL);
			return;
		}
		metrics_render(control.g, b);
		control_answer(c, NULL, b);
		evbuffer_free(b);
		return;
	}
	if (strcmp(w[0], "route") == 0 && n == 3 && strcmp(w[1], "user") == 0) {
		control_route(c, w[2], json);
		return;
	}
	if (strcmp(w[0], "delay") == 0 && n == 4 && strcmp(w[1], "user") == 0) {
		if ((ms = control_duration(w[3])) < 0) {
			control_answer(c, "delay: a duration (30s, 5m) up to 1h, 0 to release", NULL);
			return;
		}
		if (strlen(w[2]) > IMAP_MAX_ARG || control_delay_set(w[2], (uint64_t)ms) != 0) {
			control_answer(c, "too many users delayed at once", NULL);
			return;
		}
		log_info("msg=control-delay user=\"%s\" delay_ms=%lld",
		    logesc_quote(w[2], copy, sizeof(copy)), (long long)ms);
		control_answer(c, NULL, NULL);
		return;
	}
	control_answer(c, "unknown command (sessions, kick, servers, server, reload, stats, "
	    "route, delay)", NULL);
}

/* Input from a control client: one line, then the answer. */
static void
control_readable(struct endpoint *ep, void *arg)
{
	struct control_conn *c = arg;
	size_t n = endpoint_input_len(ep);
	const unsigned char *b, *nl;
	char line[CONTROL_MAX_LINE];
	size_t len;

	if (c->answered) {
		endpoint_drop(ep, n);
		return;
	}
	if (n > sizeof(line))
		n = sizeof(line);
	if ((b = endpoint_pullup(ep, n)) == NULL)
		return;
	if ((nl = memchr(b, '\n', n)) == NULL) {
		if (n >= sizeof(line))
			control_answer(c, "line too long", NULL);
		return;
	}
	len = (size_t)(nl - b);
	if (len > 0 && b[len - 1] == '\r')
		len--;
	memcpy(line, b, len);
	line[len] = '\0';
	endpoint_drop(ep, endpoint_input_len(ep));
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)line[i] < 0x20 && line[i] != '\t') {
			control_answer(c, "control characters in the command", NULL);
			return;
		}
	control_command(c, line);
}

/* Nothing to do when output drains. */
static void
control_drained(struct endpoint *ep, void *arg)
{
	(void)ep;
	(void)arg;
}

/* Free a control connection (its job, if any, answers nobody). */
static void
control_conn_free(struct control_conn *c)
{
	if (control.job != NULL && control.job->conn == c)
		control.job->conn = NULL;	/* its answer has nowhere to go */
	if (c->ev_timeout != NULL)
		event_free(c->ev_timeout);
	endpoint_free(c->ep);
	free(c);
	control.nconns--;
}

/* A client that sent no line in time: closed without an answer. */
static void
control_conn_timeout(evutil_socket_t fd, short what, void *arg)
{
	struct control_conn *c = arg;

	(void)fd;
	(void)what;
	if (!c->answered || c->lingering)
		control_conn_free(c);
}

/* The client went away, or our answer has gone out: free the connection. */
static void
control_event(struct endpoint *ep, enum endpoint_event what, void *arg)
{
	struct control_conn *c = arg;

	if (what == ENDPOINT_CONNECTED)
		return;
	if (what == ENDPOINT_FLUSHED && !c->lingering) {
		/*
		 * The answer is out.  Closing now, with bytes of the client's
		 * still unread (a line over the limit), would reset the
		 * connection and could destroy the answer before it is read:
		 * half-close instead, and read to the client's EOF (bounded).
		 */
		struct timeval tv = { 2, 0 };

		c->lingering = 1;
		endpoint_shutdown_write(ep);
		if (c->ev_timeout != NULL)
			evtimer_add(c->ev_timeout, &tv);
		return;
	}
	control_conn_free(c);
}

static const struct endpoint_cbs control_cbs = {
	control_readable, control_drained, control_event,
};

/* A control client connected. */
static void
control_accept(struct evconnlistener *lev, evutil_socket_t fd, struct sockaddr *sa,
    int salen, void *arg)
{
	struct control_conn *c;

	(void)lev;
	(void)sa;
	(void)salen;
	(void)arg;
	if (control.nconns >= CONTROL_MAX_CONNS || (c = calloc(1, sizeof(*c))) == NULL) {
		close(fd);
		return;
	}
	if ((c->ep = endpoint_accept(control.g->base, fd, NULL, &control_cbs, c)) == NULL) {
		close(fd);
		free(c);
		return;
	}
	control.nconns++;
	endpoint_set_limits(c->ep, CONTROL_MAX_OUTPUT, CONTROL_MAX_LINE);
	if ((c->ev_timeout = evtimer_new(control.g->base, control_conn_timeout, c)) != NULL) {
		struct timeval tv = { CONTROL_CONN_TIMEOUT_S, 0 };

		evtimer_add(c->ev_timeout, &tv);
	}
}

/*
 * Open control.socket: a stale socket file is replaced (never any other
 * kind of file), mode 0600 (0660 with control.group), owned by the user
 * imapgate will run as.
 */
int
control_open(struct gate *g)
{
	const struct config *cf = g->gen->cf;
	struct sockaddr_un sun;
	struct stat st;
	mode_t mode = cf->control_group != NULL ? 0660 : 0600;
	uid_t uid = (uid_t)-1;
	gid_t gid = (gid_t)-1;
	int fd;

	control.g = g;
	if (cf->control_socket == NULL)
		return 0;
	if (strlen(cf->control_socket) >= sizeof(sun.sun_path)) {
		log_error("msg=control-failed socket=%s error=\"path too long\"", cf->control_socket);
		return -1;
	}
	if (lstat(cf->control_socket, &st) == 0) {
		if (!S_ISSOCK(st.st_mode)) {
			log_error("msg=control-failed socket=%s error=\"exists and is not a socket\"",
			    cf->control_socket);
			return -1;
		}
		unlink(cf->control_socket);
	}
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	strcpy(sun.sun_path, cf->control_socket);
	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0)) < 0 ||
	    bind(fd, (struct sockaddr *)&sun, sizeof(sun)) != 0 ||
	    chmod(cf->control_socket, mode) != 0) {
		log_error("msg=control-failed socket=%s error=\"%s\"", cf->control_socket,
		    strerror(errno));
		if (fd >= 0)
			close(fd);
		return -1;
	}
	if (cf->user != NULL) {
		struct passwd *pw = getpwnam(cf->user);

		if (pw != NULL)
			uid = pw->pw_uid;
	}
	if (cf->control_group != NULL) {
		struct group *gr = getgrnam(cf->control_group);

		if (gr != NULL)
			gid = gr->gr_gid;
	}
	if ((uid != (uid_t)-1 || gid != (gid_t)-1) && chown(cf->control_socket, uid, gid) != 0)
		log_warn("msg=control-chown socket=%s error=\"%s\"", cf->control_socket,
		    strerror(errno));
	control.lev = evconnlistener_new(g->base, control_accept, NULL,
	    LEV_OPT_CLOSE_ON_FREE | LEV_OPT_CLOSE_ON_EXEC, 16, fd);
	if (control.lev == NULL) {
		close(fd);
		unlink(cf->control_socket);
		log_error("msg=control-failed socket=%s error=\"listener\"", cf->control_socket);
		return -1;
	}
	control.path = strdup(cf->control_socket);
	log_info("msg=control-listening socket=%s mode=%04o", cf->control_socket, (unsigned)mode);
	return 0;
}

/* Close the socket and remove its file. */
void
control_close(struct gate *g)
{
	(void)g;
	if (control.lev != NULL)
		evconnlistener_free(control.lev);
	control.lev = NULL;
	if (control.path != NULL) {
		unlink(control.path);
		free(control.path);
	}
	control.path = NULL;
}

/* A reload: reopen when control.socket changed (the old one stays on failure). */
void
control_reload(struct gate *g)
{
	const char *want = g->gen->cf->control_socket;
	struct evconnlistener *old_lev = control.lev;
	char *old_path = control.path;

	if ((want == NULL && control.path == NULL) ||
	    (want != NULL && control.path != NULL && strcmp(want, control.path) == 0))
		return;
	if (want == NULL) {
		control_close(g);
		return;
	}
	/* The new socket first: closing the old one before would leave none. */
	control.lev = NULL;
	control.path = NULL;
	if (control_open(g) != 0) {
		control.lev = old_lev;
		control.path = old_path;
		if (old_path != NULL)
			log_warn("msg=control-kept socket=%s", old_path);
		return;
	}
	if (old_lev != NULL)
		evconnlistener_free(old_lev);
	if (old_path != NULL) {
		unlink(old_path);
		free(old_path);
	}
}

/* Print the usage of `imapgate ctl`. */
static void
control_usage(FILE *f)
{
	fprintf(f, "usage: imapgate ctl [-S SOCKET] [--json] COMMAND [ARGS...]\n"
	    "commands:\n"
	    "  sessions [count] [user U] [server S] [client CIDR] [state ST] [session ID]\n"
	    "  kick session ID | user U | server S | all [spread DURATION] [reason TEXT]\n"
	    "  servers\n"
	    "  server S enable | disable | drain [spread DURATION] | weight N\n"
	    "  reload\n"
	    "  stats\n"
	    "  route user U\n"
	    "  delay user U DURATION\n");
}

/* `imapgate ctl`: send one command, print the answer; 0 ok, 1 error, 2 no answer. */
int
control_client(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "socket", required_argument, NULL, 'S' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *path = "/run/imapgate/control.sock";
	char cmd[CONTROL_MAX_LINE], buf[65536];
	struct sockaddr_un sun;
	size_t len = 0, first = 0;
	int json = 0, ch, fd, rc = 2, got_status = 0;
	ssize_t n;

	optind = 1;
	while ((ch = getopt_long(argc, argv, "+S:jh", opts, NULL)) != -1) {
		switch (ch) {
		case 'S':
			path = optarg;
			break;
		case 'j':
			json = 1;
			break;
		case 'h':
			control_usage(stdout);
			return 0;
		default:
			control_usage(stderr);
			return 2;
		}
	}
	if (optind >= argc) {
		control_usage(stderr);
		return 2;
	}
	if (json)
		len = (size_t)snprintf(cmd, sizeof(cmd), "json");
	for (int i = optind; i < argc; i++) {
		int k;

		if (strpbrk(argv[i], "\r\n") != NULL) {
			/* The protocol is one line: a line end would cut the command short. */
			fprintf(stderr, "imapgate ctl: error: a line end in an argument\n");
			return 1;
		}
		k = snprintf(cmd + len, sizeof(cmd) - len, "%s%s", len ? " " : "", argv[i]);

		if (k < 0 || (size_t)k >= sizeof(cmd) - len - 1) {
			/* A bad command, as the daemon would say (exit 2 is "no connection"). */
			fprintf(stderr, "imapgate ctl: error: command too long (at most %d bytes)\n",
			    CONTROL_MAX_LINE - 2);
			return 1;
		}
		len += (size_t)k;
	}
	cmd[len++] = '\n';
	if (strlen(path) >= sizeof(sun.sun_path)) {
		fprintf(stderr, "imapgate ctl: %s: path too long\n", path);
		return 2;
	}
	memset(&sun, 0, sizeof(sun));
	sun.sun_family = AF_UNIX;
	strcpy(sun.sun_path, path);
	if ((fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0 ||
	    connect(fd, (struct sockaddr *)&sun, sizeof(sun)) != 0) {
		fprintf(stderr, "imapgate ctl: %s: %s\n", path, strerror(errno));
		if (fd >= 0)
			close(fd);
		return 2;
	}
	/* MSG_NOSIGNAL: a daemon that closed at accept (too many control
	 * connections) must give exit 2 and a message, not death by SIGPIPE. */
	if (send(fd, cmd, len, MSG_NOSIGNAL) != (ssize_t)len) {
		fprintf(stderr, "imapgate ctl: %s: %s\n", path, strerror(errno));
		close(fd);
		return 2;
	}
	/* The first line is the status; the body goes to stdout as it comes. */
	while ((n = read(fd, buf + first, sizeof(buf) - first)) > 0) {
		size_t have = first + (size_t)n, off = 0;

		if (!got_status) {
			char *nl = memchr(buf, '\n', have);

			if (nl == NULL && have < sizeof(buf)) {
				first = have;
				continue;
			}
			got_status = 1;
			off = nl != NULL ? (size_t)(nl - buf) + 1 : have;
			if (strncmp(buf, "ok", 2) == 0)
				rc = 0;
			else {
				fprintf(stderr, "imapgate ctl: %.*s\n", (int)(off > 0 ? off - 1 : 0), buf);
				rc = 1;
			}
			first = 0;
		}
		if (have > off)
			fwrite(buf + off, 1, have - off, stdout);
	}
	close(fd);
	if (!got_status)
		fprintf(stderr, "imapgate ctl: no answer from %s\n", path);
	return rc;
}
