/* session: both halves of a proxied IMAP connection, from accept to close. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <netinet/in.h>
#include <sys/queue.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "config.h"
#include "endpoint.h"
#include "log.h"
#include "netaddr.h"
#include "server.h"
#include "guard.h"
#include "connlimit.h"
#include "pool.h"
#include "proxyproto.h"
#include "session.h"
#include "stats.h"
#include "state.h"

/* How long a closing session may take to hand its last bytes to the client. */
#define SESSION_FLUSH_TIMEOUT_MS	5000
/* Our own replies waiting for the backend to reach a response boundary. */
#define SESSION_MAX_INJECT		(16 * 1024)

struct session_half {
	struct session		*s;
	struct endpoint		*ep;
	struct session_half	*peer;
	const char		*name;		/* "client" or "backend" */
	int			 paused;	/* reading stopped (peer's output full, or too many in flight) */
	struct imap_parser	 parser;	/* frames what this side sends */
	size_t			 pending;	/* input bytes parsed but not yet moved */
	int			 dropping;	/* the current command is answered by us, not forwarded */
	int			 streaming;	/* over-long line: move bytes as they are parsed */
	int			 sync_wait;	/* client: sent "{n}", no literal byte moved yet */
	int			 relaying;	/* session_relay calls of this half on the stack */
};

/*
 * Before the client sees the backend, imapgate may talk to the backend
 * itself: TLS, STARTTLS, an ID with the client's address.  The greeting is
 * held until that is done.
 */
enum session_phase {
	SESSION_CONNECTING,	/* TCP connect to the backend */
	SESSION_BACKEND_TLS,	/* implicit TLS handshake with the backend */
	SESSION_GREETING,	/* waiting for the backend's greeting */
	SESSION_BACKEND_STARTTLS,	/* sent STARTTLS, waiting for its OK */
	SESSION_BACKEND_UPGRADE,	/* TLS handshake after STARTTLS */
	SESSION_BACKEND_ID,	/* sent ID with the client's address, waiting for its OK */
	SESSION_RELAY,		/* the client and the backend talk */
};

/* Tags of the commands imapgate itself sends to the backend. */
#define SESSION_DETAIL_MAX	192	/* longest error text in the summary line */
#define SESSION_TAG_STARTTLS	"imapgate-tls"
#define SESSION_TAG_ID		"imapgate-id"

/* An IPv4 or IPv6 address: listeners and PROXY headers carry nothing else. */
union session_addr {
	struct sockaddr		 sa;
	struct sockaddr_in	 sin;
	struct sockaddr_in6	 sin6;
};

/* The stats tables are indexed by these enums. */
_Static_assert(STATE_CMD_UNKNOWN + 1 == STATS_CMD_CLASSES, "STATS_CMD_CLASSES");
_Static_assert(STATE_LOGOUT + 1 == STATS_STATES, "STATS_STATES");

/* The session's deadlines (see struct session's due[]). */
enum session_due {
	SESSION_DUE_PHASE,	/* backend connect/greeting, then the final flush */
	SESSION_DUE_RESPONSE,	/* timeouts.backend_response */
	SESSION_DUE_GUARD,	/* tls_handshake, preauth and idle checks */
	SESSION_NDUE
};

struct session {
	TAILQ_ENTRY(session)	 entry;
	struct server		*srv;
	const struct config_listen *lc;
	char			 id[20];
	char			 client_addr[NETADDR_STRLEN];
	struct generation	*gen;		/* the configuration this session started with */
	int			 server;	/* pool index of the backend, -1 before one is chosen */
	uint64_t		 tried;		/* servers tried for this session (bit per pool index) */
	int			 limited;	/* holds a slot in the connection limits */
	struct timeval		 last_activity;	/* last byte either way (timeouts.idle) */
	struct timeval		 tls_started;	/* accept (implicit TLS) or STARTTLS answered */
	struct session_half	 client, backend;
	struct timeval		 start;
	/*
	 * One timer serves every deadline of the session: it is set for the
	 * earliest of due[] (a later one may fire it early; it then re-arms).
	 * Pushing a deadline back, as every backend read does for
	 * backend_response, costs no timer operation at all.
	 */
	struct event		*ev_timer;
	uint64_t		 due[SESSION_NDUE];	/* session_now_us() deadlines, 0 = off */
	uint64_t		 armed;		/* when ev_timer fires, 0 = not set */
	unsigned		 nrewrites;	/* responses rewritten */
	unsigned		 nguard;	/* guard events */
	const char		*last_guard;	/* kind of the last guard event */
	unsigned char		 guards[STATS_GUARD_MAX];	/* guard events by kind (saturating) */
	const char		*bye;		/* why imapgate sent BYE, if it did */
	char			 rewritten[64];	/* original codes rewritten, comma-separated */
	struct state		 st;
	char			*inject;	/* our own replies, waiting for a response boundary */
	size_t			 ninject;
	enum session_phase	 phase;
	int			 client_tls;	/* the client speaks TLS (implicit, or after STARTTLS) */
	int			 client_upgrading;	/* STARTTLS answered, handshake running */
	int			 starttls_now;	/* switch the client to TLS after this line */
	char			*greeting;	/* held while imapgate sets the backend up */
	size_t			 greeting_len;
	struct imap_line	*greeting_line;	/* what the parser said of it (held with it) */
	union session_addr	 client_ss;	/* the real client (after any PROXY header) */
	union session_addr	 local_ss;	/* the address the client connected to */
	int			 backend_gone;	/* EOF or error: drain its input, whatever the client's pace */
	int			 client_gone;	/* client half-closed: answer what is in flight, then close */
	int			 draining;	/* shutting down: BYE at the next quiet point */
	int			 finishing;	/* flushing the client before close */
	int			 closed;
	const char		*reason;
	char			*detail;	/* what went wrong, for the summary (NULL: nothing) */
};

static void session_relay(struct session_half *);
static void session_due(struct session *, enum session_due, uint64_t);
static void session_due_off(struct session *, enum session_due);
static void session_guard_check(struct session *);
static void session_backend_setup_line(struct session *);
static void session_backend_failover(struct session *, const char *);
static void session_response_timer(struct session *, int);
static void session_readable(struct endpoint *, void *);
static void session_drained(struct endpoint *, void *);
static void session_event(struct endpoint *, enum endpoint_event, void *);

static const struct endpoint_cbs session_cbs = {
	session_readable, session_drained, session_event,
};

/* Now in microseconds, from the loop's cached clock. */
static uint64_t
session_now_us(const struct session *s)
{
	struct timeval tv;

	event_base_gettimeofday_cached(s->srv->base, &tv);
	return (uint64_t)tv.tv_sec * 1000000 + (uint64_t)tv.tv_usec;
}

/* The half that owns endpoint ep. */
static struct session_half *
session_half_of(struct session *s, struct endpoint *ep)
{
	return ep == s->client.ep ? &s->client : &s->backend;
}

/* Milliseconds since the session began. */
static long long
session_age_ms(const struct session *s)
{
	struct timeval now, d;

	gettimeofday(&now, NULL);
	timersub(&now, &s->start, &d);
	return (long long)d.tv_sec * 1000 + d.tv_usec / 1000;
}

/* Note what went wrong, for the summary line (the last note wins). */
static void __attribute__((format(printf, 2, 3)))
session_detail(struct session *s, const char *fmt, ...)
{
	char buf[SESSION_DETAIL_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	free(s->detail);
	s->detail = strdup(buf);
}

/* Free everything; runs from the reap event, outside any endpoint callback. */
static void
session_free(struct session *s)
{
	endpoint_free(s->client.ep);
	endpoint_free(s->backend.ep);
	state_free(&s->st);
	imap_parse_free(&s->client.parser);
	imap_parse_free(&s->backend.parser);
	free(s->inject);
	free(s->greeting);
	free(s->greeting_line);
	free(s->detail);
	if (s->ev_timer != NULL)
		event_free(s->ev_timer);
	if (s->server >= 0)
		pool_release(s->gen->pool, s->server);
	if (s->limited)
		connlimit_release(s->srv->gate->limits, (const struct sockaddr *)&s->client_ss);
	generation_unref(s->gen);
	free(s);
}

/* End the session: one summary line, both sides stopped, free scheduled. */
void
session_close(struct session *s, const char *reason)
{
	char bk[NETADDR_STRLEN], guards[256] = "";
	size_t gl = 0;

	if (s->closed)
		return;
	s->closed = 1;
	for (int g = 0; g < STATS_GUARD_MAX; g++)
		if (s->guards[g] > 0 && gl + 40 < sizeof(guards))
			gl += (size_t)snprintf(guards + gl, sizeof(guards) - gl, "%s%s:%u",
			    gl ? "," : "", stats_guard_name(g), s->guards[g]);
	if (s->reason == NULL)
		s->reason = reason;
	stats_name_add(&stats.ended, s->reason);
	stats_add(&stats.sessions_ended, 1);
	TAILQ_REMOVE(&s->srv->sessions, s, entry);
	TAILQ_INSERT_TAIL(&s->srv->closed, s, entry);
	s->srv->nsessions--;
	server_session_gone(s->srv);
	evtimer_del(s->ev_timer);
	s->armed = 0;
	if (s->client.ep != NULL)
		endpoint_read_enable(s->client.ep, 0);
	if (s->backend.ep != NULL)
		endpoint_read_enable(s->backend.ep, 0);

	log_info("session=%s msg=session-end client=%s backend=%s tls=%s cipher=%s sni=%s "
	    "bytes_in=%llu bytes_out=%llu backend_in=%llu backend_out=%llu "
	    "duration_ms=%lld user=\"%s\" state=%s rewrites=%u guard_events=%u "
	    "last_guard=%s guards=%s bye=%s rewritten=%s reason=%s%s%s%s",
	    s->id, s->client_addr,
	    s->server >= 0 ? netaddr_str((const struct sockaddr *)
	    &pool_server(s->gen->pool, s->server)->addr.ss, bk, sizeof(bk)) : "-",
	    s->client.ep && s->client_tls ? endpoint_tls_version(s->client.ep) : "-",
	    s->client.ep && s->client_tls ? endpoint_tls_cipher(s->client.ep) : "-",
	    s->client.ep && endpoint_sni(s->client.ep) ? endpoint_sni(s->client.ep) : "-",
	    (unsigned long long)(s->client.ep ? endpoint_bytes_in(s->client.ep) : 0),
	    (unsigned long long)(s->client.ep ? endpoint_bytes_out(s->client.ep) : 0),
	    (unsigned long long)(s->backend.ep ? endpoint_bytes_in(s->backend.ep) : 0),
	    (unsigned long long)(s->backend.ep ? endpoint_bytes_out(s->backend.ep) : 0),
	    session_age_ms(s), state_user(&s->st), state_name(s->st.proto), s->nrewrites,
	    s->nguard, s->last_guard ? s->last_guard : "-", guards[0] ? guards : "-",
	    s->bye ? s->bye : "-", s->rewritten[0] ? s->rewritten : "-", s->reason,
	    s->detail ? " error=\"" : "", s->detail ? s->detail : "", s->detail ? "\"" : "");
	event_active(s->srv->ev_reap, EV_TIMEOUT, 0);
}

void
session_reap(struct server *srv)
{
	struct session *s;

	while ((s = TAILQ_FIRST(&srv->closed)) != NULL) {
		TAILQ_REMOVE(&srv->closed, s, entry);
		session_free(s);
	}
}

/* Count a BYE of ours for this session (summary line) and the process. */
static void
session_bye_count(struct session *s, enum stats_bye b)
{
	stats_add(&stats.bye[b], 1);
	s->bye = stats_bye_name(b);
}

/* Count a guard event for this session and the process. */
static void
session_guard_event(struct session *s, enum stats_guard g)
{
	stats_add(&stats.guard[g], 1);
	s->nguard++;
	s->last_guard = stats_guard_name(g);
	if (s->guards[g] < 255)
		s->guards[g]++;
	log_info("session=%s msg=guard event=%s state=%s", s->id, stats_guard_name(g),
	    state_name(s->st.proto));
}

/*
 * Finish the session: stop reading both sides, let the client read what is
 * already queued for it (a BYE, the backend's last bytes), then close.
 */
static void
session_finish(struct session *s, const char *reason)
{
	if (s->finishing || s->closed)
		return;
	s->finishing = 1;
	s->reason = reason;
	if (s->backend.ep != NULL)
		endpoint_read_enable(s->backend.ep, 0);
	session_due(s, SESSION_DUE_PHASE, SESSION_FLUSH_TIMEOUT_MS);
	endpoint_flush(s->client.ep);
}

/* Tell the client the backend is gone, then finish. */
static void
session_bye_unavailable(struct session *s, const char *reason)
{
	static const char bye[] = "* BYE [UNAVAILABLE] Backend server unavailable\r\n";

	endpoint_write(s->client.ep, bye, sizeof(bye) - 1);
	session_bye_count(s, STATS_BYE_UNAVAILABLE);
	session_finish(s, reason);
}

/* Is the backend between two responses, so that a line of ours fits in? */
static int
session_backend_at_boundary(const struct session *s)
{
	return s->backend.pending == 0 && imap_parse_at_boundary(&s->backend.parser);
}

/* Write our queued replies to the client if the backend stream allows it now. */
static void
session_inject_flush(struct session *s)
{
	if (s->ninject == 0 || !session_backend_at_boundary(s))
		return;
	endpoint_write(s->client.ep, s->inject, s->ninject);
	s->ninject = 0;
}

/*
 * Queue one reply line of ours for the client.  It goes out at once if the
 * backend is between responses, else after the response in progress: a line
 * dropped into the middle of a response would corrupt the client's view.
 */
static int
session_inject(struct session *s, const char *fmt, ...)
{
	char line[IMAP_MAX_TAG + 256];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line) - 2, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof(line) - 2)
		return -1;
	memcpy(line + n, "\r\n", 2);
	n += 2;
	if (s->ninject + (size_t)n > SESSION_MAX_INJECT) {
		session_finish(s, "too-many-errors");
		return -1;
	}
	if (s->inject == NULL && (s->inject = malloc(SESSION_MAX_INJECT)) == NULL) {
		session_close(s, "out-of-memory");
		return -1;
	}
	memcpy(s->inject + s->ninject, line, (size_t)n);
	s->ninject += (size_t)n;
	session_inject_flush(s);
	return 0;
}

/* Hand the parsed-but-held bytes of h on to the peer, or drop them. */
static void
session_pass(struct session_half *h)
{
	if (h->pending == 0)
		return;
	if (h->dropping)
		endpoint_drop(h->ep, h->pending);
	else {
		endpoint_move(h->ep, h->peer->ep, h->pending);
		if (h == &h->s->client) {
			stats_add(&stats.client_in, h->pending);
			stats_add(&stats.backend_out, h->pending);
		} else {
			stats_add(&stats.backend_in, h->pending);
			stats_add(&stats.client_out, h->pending);
		}
	}
	h->pending = 0;
}

/*
 * Draining: is this a quiet point?  No command in flight (or only IDLE,
 * accepted by the server), and neither side inside a line or a literal.
 */
static void
session_drain_check(struct session *s)
{
	static const char bye[] = "* BYE [UNAVAILABLE] Server shutting down\r\n";

	if (!s->draining || s->finishing || s->closed)
		return;
	if (s->phase != SESSION_RELAY) {
		/* The client has seen nothing yet: a BYE greeting is all it gets. */
		endpoint_write(s->client.ep, bye, sizeof(bye) - 1);
		session_bye_count(s, STATS_BYE_SHUTDOWN);
		session_finish(s, "shutdown");
		return;
	}
	if (!(s->st.ninflight == 0 || (s->st.ninflight == 1 && s->st.idling)))
		return;
	if (s->client.pending > 0 || !imap_parse_at_boundary(&s->client.parser) ||
	    !session_backend_at_boundary(s) || s->ninject > 0)
		return;
	session_bye_count(s, STATS_BYE_SHUTDOWN);
	endpoint_write(s->client.ep, bye, sizeof(bye) - 1);
	session_finish(s, "shutdown");
}

/* Start draining s. */
void
session_drain(struct session *s)
{
	s->draining = 1;
	session_drain_check(s);
}

/* The next session of the same worker. */
struct session *
session_next(struct session *s)
{
	return TAILQ_NEXT(s, entry);
}

/* Capabilities this session adds: STARTTLS (and LOGINDISABLED) before TLS. */
static unsigned
session_caps(const struct session *s)
{
	if (s->lc->tls != CONFIG_TLS_STARTTLS || s->client_tls)
		return 0;
	return GUARD_CAP_STARTTLS | (s->lc->require_tls ? GUARD_CAP_LOGINDISABLED : 0);
}

/*
 * The first part of a client command is known (at a literal header or the
 * line end): decide whether it goes to the backend or we answer it.
 */
static void
session_client_decide(struct session *s, const struct imap_line *l)
{
	struct session_half *h = &s->client;
	enum state_cmd_kind kind;

	h->dropping = 0;
	if (l->kind != IMAP_KIND_COMMAND)
		return;
	kind = state_classify(l);
	if (kind == STATE_CMD_STARTTLS && s->lc->tls == CONFIG_TLS_STARTTLS && !s->client_tls) {
		h->dropping = 1;
		if (l->nliterals > 0 || s->st.ninflight > 0 || s->ninject > 0 ||
		    !session_backend_at_boundary(s)) {
			session_inject(s, "%s BAD STARTTLS must be sent alone", l->tag);
			return;
		}
		/*
		 * imapgate answers STARTTLS itself; the backend never sees it.
		 * Whatever the client pipelined behind it in plaintext is
		 * discarded when TLS starts (RFC 9051 6.2.1).
		 */
		session_inject(s, "%s OK Begin TLS negotiation now", l->tag);
		s->starttls_now = 1;
		return;
	}
	if (kind == STATE_CMD_LOGIN && s->lc->tls == CONFIG_TLS_STARTTLS && !s->client_tls &&
	    s->lc->require_tls) {
		/* RFC 9051 6.2.3: no credentials in cleartext. */
		h->dropping = 1;
		session_inject(s, "%s NO [PRIVACYREQUIRED] Use STARTTLS first", l->tag);
		return;
	}
	if (kind == STATE_CMD_STARTTLS || kind == STATE_CMD_COMPRESS) {
		/*
		 * Either would change the byte stream under the parser; neither
		 * is offered on this listener (the capability filter removes them).
		 */
		h->dropping = 1;
		session_guard_event(s, kind == STATE_CMD_STARTTLS ?
		    STATS_GUARD_STARTTLS_REFUSED : STATS_GUARD_COMPRESS_REFUSED);
		session_inject(s, "%s NO %s is not available here", l->tag, l->name);
		return;
	}
	if (s->gen->cf->guard_client_state == CONFIG_GUARD_BYE &&
	    state_needs_login(kind) && state_expected(&s->st) == STATE_NOT_AUTH) {
		/*
		 * The client believes it is logged in (a resumed TLS session, a
		 * backend that restarted under it).  An error answer would make
		 * it retry forever; BYE makes it reconnect and log in.
		 */
		h->dropping = 1;
		session_guard_event(s, STATS_GUARD_CLIENT_STATE);
		session_bye_count(s, STATS_BYE_CLIENT_STATE);
		session_inject(s, "* BYE Not logged in: please reconnect and log in");
		session_inject(s, "%s BAD %s%s%s not allowed now", l->tag, l->name,
		    l->subname[0] ? " " : "", l->subname);
		session_finish(s, "client-state");
	}
}

/* Longest line shown whole in the debug protocol trace. */
#define SESSION_TRACE_MAX	200

/*
 * Debug protocol trace of one complete line of h.  Passwords and
 * AUTHENTICATE payloads never appear: LOGIN is rebuilt from its tag and
 * user, SASL lines and the server's SASL challenges become a marker.
 */
static void
session_trace(struct session_half *h)
{
	const struct imap_line *l = imap_parse_line(&h->parser);
	const struct session *s = h->s;
	const char *dir = h == &s->client ? "c2s" : "s2c";
	const unsigned char *b;
	size_t n;

	if (!log_enabled(CONFIG_LOG_DEBUG))
		return;
	if (h == &s->client) {
		if (l->kind == IMAP_KIND_SASL || l->kind == IMAP_KIND_SASL_CANCEL) {
			log_debug("session=%s msg=trace trace=%s line=\"<sasl redacted>\"", s->id, dir);
			return;
		}
		if (l->kind == IMAP_KIND_COMMAND && strcmp(l->name, "LOGIN") == 0) {
			log_debug("session=%s msg=trace trace=%s line=\"%s LOGIN %s <password redacted>\"",
			    s->id, dir, l->tag, l->user);
			return;
		}
		if (l->kind == IMAP_KIND_COMMAND && strcmp(l->name, "AUTHENTICATE") == 0) {
			log_debug("session=%s msg=trace trace=%s line=\"%s AUTHENTICATE %s%s\"", s->id, dir,
			    l->tag, l->arg, l->sasl_ir ? " <sasl redacted>" : "");
			return;
		}
	} else if (l->kind == IMAP_KIND_CONTINUATION && s->st.authenticating) {
		log_debug("session=%s msg=trace trace=%s line=\"+ <sasl redacted>\"", s->id, dir);
		return;
	}
	if (l->nliterals > 0 || l->toolong || h->pending == 0) {
		log_debug("session=%s msg=trace trace=%s tag=\"%s\" name=%s bytes=%llu literals=%u",
		    s->id, dir, l->tag, l->name[0] ? l->name : l->status_word,
		    (unsigned long long)l->len, l->nliterals);
		return;
	}
	n = h->pending < SESSION_TRACE_MAX ? h->pending : SESSION_TRACE_MAX;
	if ((b = endpoint_pullup(h->ep, n)) == NULL)
		return;
	while (n > 0 && (b[n - 1] == '\n' || b[n - 1] == '\r'))
		n--;
	{
		/* Quotes and backslashes escaped, so the line stays one value. */
		char esc[SESSION_TRACE_MAX * 2 + 1];
		size_t o = 0;

		for (size_t i = 0; i < n; i++) {
			if (b[i] == '"' || b[i] == '\\')
				esc[o++] = '\\';
			esc[o++] = (char)b[i];
		}
		esc[o] = '\0';
		log_debug("session=%s msg=trace trace=%s line=\"%s%s\"", s->id, dir, esc,
		    h->pending > SESSION_TRACE_MAX ? "..." : "");
	}
}

/* A complete client command (or SASL line, or DONE) has been parsed. */
static void
session_client_line(struct session *s)
{
	struct session_half *h = &s->client;
	const struct imap_line *l = imap_parse_line(&h->parser);

	if (l->toolong) {
		h->dropping = 1;
		session_pass(h);
		h->dropping = 0;
		if (l->tag[0] != '\0')
			session_inject(s, "%s BAD Command line too long", l->tag);
		else
			session_inject(s, "* BAD Command line too long");
		return;
	}
	if (l->kind == IMAP_KIND_INVALID) {
		h->dropping = 1;
		session_pass(h);
		h->dropping = 0;
		if (l->tag[0] != '\0')
			session_inject(s, "%s BAD Invalid command", l->tag);
		else
			session_inject(s, "* BAD Invalid command line");
		return;
	}
	session_trace(h);
	if (l->nliterals == 0)
		session_client_decide(s, l);
	if (!h->dropping && state_client_command(&s->st, l) != 0) {
		/* Cannot happen while reading pauses at the limit; be safe anyway. */
		session_close(s, "too-many-in-flight");
		return;
	}
	if (!h->dropping && l->kind == IMAP_KIND_COMMAND)
		state_stamp_last(&s->st, session_now_us(s));
	if (h->dropping && strcmp(l->name, "AUTHENTICATE") == 0)
		imap_parse_set_mode(&h->parser, IMAP_MODE_COMMAND);
	session_pass(h);
	h->dropping = 0;
	if (s->starttls_now) {
		s->starttls_now = 0;
		s->client_upgrading = 1;
		event_base_gettimeofday_cached(s->srv->base, &s->tls_started);
		session_due(s, SESSION_DUE_GUARD, s->gen->cf->tls_handshake_ms);
		imap_parse_restart(&h->parser);
		if (endpoint_start_tls(h->ep, s->gen->tls) != 0)
			session_close(s, "client-tls-failed");
		return;
	}
	session_response_timer(s, 0);
	session_drain_check(s);
}

/*
 * Arm, re-arm (reset) or stop the backend response timer: it runs while a
 * command waits for its answer, except in IDLE, where silence is normal.
 */
static void
session_response_timer(struct session *s, int activity)
{
	uint64_t ms = s->gen->cf->backend_response_ms;

	if (s->closed || s->finishing || ms == 0)
		return;
	if (s->st.ninflight == 0 || s->st.idling) {
		session_due_off(s, SESSION_DUE_RESPONSE);
		return;
	}
	if (activity || s->due[SESSION_DUE_RESPONSE] == 0)
		session_due(s, SESSION_DUE_RESPONSE, ms);
}

/*
 * The backend is gone (closed, reset, TLS failure, or silent too long).
 * Deliver what it sent; then, if the client still thinks it has a session
 * and the stream is between responses, say so with a BYE (RFC 3501 7.1.5:
 * commands in flight are answered by it) rather than a bare close.  Inside
 * a response an injected line would corrupt what the client reads, so the
 * connection just closes.
 */
static void
session_backend_lost(struct session *s, const char *reason)
{
	s->backend_gone = 1;
	endpoint_read_enable(s->backend.ep, 0);
	session_relay(&s->backend);
	if (s->finishing || s->closed)
		return;
	if (!session_backend_at_boundary(s) || endpoint_input_len(s->backend.ep) > 0) {
		session_guard_event(s, STATS_GUARD_BACKEND_LOST_MID);
		s->reason = NULL;
		session_finish(s, strcmp(reason, "backend-eof") == 0 ?
		    "backend-eof-mid-response" : strcmp(reason, "backend-timeout") == 0 ?
		    "backend-timeout-mid-response" : "backend-error-mid-response");
		return;
	}
	session_inject_flush(s);
	if (s->st.bye || s->st.proto == STATE_LOGOUT) {
		/* The backend said goodbye itself; add nothing. */
		session_finish(s, reason);
		return;
	}
	session_guard_event(s, strcmp(reason, "backend-timeout") == 0 ?
	    STATS_GUARD_BACKEND_TIMEOUT : STATS_GUARD_BACKEND_LOST);
	session_bye_unavailable(s, reason);
}

/* No answer from the backend for timeouts.backend_response. */
static void
session_response_timeout(struct session *s)
{
	session_detail(s, "no answer for %llu ms",
	    (unsigned long long)s->gen->cf->backend_response_ms);
	session_backend_lost(s, "backend-timeout");
}

/*
 * Is the backend out of step with the session?  It greeted again (a
 * restart behind a balancer), or it answered a command that is valid in
 * the tracked state with a wrong-state error (WildDuck's "not allowed
 * now" after losing the login).  Then the client gets BYE, not the error.
 */
static int
session_backend_desync(struct session *s, const struct imap_line *l,
    const char *line, size_t len)
{
	const struct config *cf = s->gen->cf;
	enum state_cmd_kind kind;
	enum stats_guard g;

	if (l->kind == IMAP_KIND_UNTAGGED && s->st.greeted &&
	    guard_is_greeting(cf, l, line, len))
		g = STATS_GUARD_DESYNC_GREETING;
	else if (l->kind == IMAP_KIND_TAGGED && state_lookup(&s->st, l->tag, &kind) &&
	    state_needs_login(kind) &&
	    (s->st.proto == STATE_SELECTED ||
	    (s->st.proto == STATE_AUTH && !state_needs_selected(kind))) &&
	    guard_is_wrong_state(cf, l, line, len))
		g = STATS_GUARD_DESYNC_STATE;
	else
		return 0;
	session_guard_event(s, g);
	if (cf->guard_desync != CONFIG_GUARD_BYE)
		return 0;
	endpoint_drop(s->backend.ep, s->backend.pending);
	s->backend.pending = 0;
	session_bye_count(s, STATS_BYE_DESYNC);
	session_inject(s, "* BYE [UNAVAILABLE] The server lost this session, please reconnect");
	session_finish(s, g == STATS_GUARD_DESYNC_GREETING ? "backend-greeted-again" :
	    "backend-desync");
	return 1;
}

/* A complete server response has been parsed. */
static void
session_backend_line(struct session *s)
{
	struct session_half *h = &s->backend;
	struct imap_parser *cp = &s->client.parser;
	const struct imap_line *l = imap_parse_line(&h->parser);
	const char *line = NULL;
	struct state_result res;
	struct guard_out out;

	if (l->nliterals == 0 && !l->toolong && h->pending > 0 &&
	    (l->status != IMAP_STATUS_NONE || strcasecmp(l->name, "CAPABILITY") == 0))
		line = (const char *)endpoint_pullup(h->ep, h->pending);
	session_trace(h);
	if (line != NULL && session_backend_desync(s, l, line, h->pending))
		return;

	state_server_response(&s->st, l, &res);
	if (res.completed && res.started_us > 0) {
		uint64_t now = session_now_us(s);
		stats_rtt(res.kind, now > res.started_us ? now - res.started_us : 0);
	}
	if (res.completed && (res.kind == STATE_CMD_LOGIN || res.kind == STATE_CMD_IDLE))
		imap_parse_set_mode(cp, IMAP_MODE_COMMAND);
	if (l->kind == IMAP_KIND_TAGGED && s->client.sync_wait &&
	    strcmp(l->tag, imap_parse_current(cp)->tag) == 0) {
		/* The server refused a synchronizing literal: it will not come. */
		imap_parse_literal_cancel(cp);
		s->client.sync_wait = 0;
	}
	if (line != NULL && guard_rewrite(s->gen->cf, l, line, h->pending, session_caps(s), &out) == 1) {
		log_debug("session=%s msg=rewrite original=%s status=%d code=%d caps=%d",
		    s->id, out.original, out.status_changed, out.code_changed,
		    out.caps_changed);
		stats_rewrite(out.original);
		s->nrewrites++;
		if (strstr(s->rewritten, out.original) == NULL &&
		    strlen(s->rewritten) + strlen(out.original) + 2 < sizeof(s->rewritten))
			snprintf(s->rewritten + strlen(s->rewritten),
			    sizeof(s->rewritten) - strlen(s->rewritten), "%s%s",
			    s->rewritten[0] ? "," : "", out.original);
		endpoint_drop(h->ep, h->pending);
		h->pending = 0;
		endpoint_write(s->client.ep, out.buf, out.len);
		free(out.buf);
	} else
		session_pass(h);
	session_inject_flush(s);
	if (s->client_gone && s->st.ninflight == 0) {
		session_finish(s, "client-eof");
		return;
	}
	session_response_timer(s, 1);
	if (s->client.paused && !state_inflight_full(&s->st) &&
	    !endpoint_output_full(s->backend.ep)) {
		s->client.paused = 0;
		endpoint_read_enable(s->client.ep, 1);
		/* Commands already read wait in the input: no new byte will wake them. */
		session_relay(&s->client);
		if (s->finishing || s->closed)
			return;
	}
	session_drain_check(s);
}

/* Send ID with the client's address (backend.client_ip: id); its reply is swallowed. */
static void
session_send_id(struct session *s)
{
	char cip[INET6_ADDRSTRLEN], lip[INET6_ADDRSTRLEN], line[512];
	unsigned cport, lport;
	int n;

	netaddr_ip((const struct sockaddr *)&s->client_ss, cip, sizeof(cip), &cport);
	netaddr_ip((const struct sockaddr *)&s->local_ss, lip, sizeof(lip), &lport);
	n = snprintf(line, sizeof(line), SESSION_TAG_ID " ID (\"x-originating-ip\" \"%s\" "
	    "\"x-originating-port\" \"%u\" \"x-connected-ip\" \"%s\" "
	    "\"x-connected-port\" \"%u\" \"x-session-id\" \"%s\")\r\n",
	    cip, cport, lip, lport, s->id);
	endpoint_write(s->backend.ep, line, (size_t)n);
	s->phase = SESSION_BACKEND_ID;
}

/* The backend is set up: let the client see the greeting and start relaying. */
static void
session_release_greeting(struct session *s)
{
	const struct imap_line *l = s->greeting_line;
	struct state_result res;
	struct guard_out out;
	int r;

	s->phase = SESSION_RELAY;
	session_due_off(s, SESSION_DUE_PHASE);
	log_debug("session=%s msg=backend-ready tls=%s", s->id,
	    endpoint_tls_version(s->backend.ep));
	if (s->greeting != NULL) {
		state_server_response(&s->st, l, &res);
		/*
		 * After STARTTLS the greeting's capability list is stale (it
		 * was the plaintext one); drop it and let the client ask.
		 */
		if (s->gen->cf->backend_tls == CONFIG_TLS_STARTTLS &&
		    strcmp(l->code, "CAPABILITY") == 0)
			r = guard_drop_code(l, s->greeting, s->greeting_len, &out);
		else
			r = guard_rewrite(s->gen->cf, l, s->greeting, s->greeting_len,
			    session_caps(s), &out);
		if (r == 1) {
			endpoint_write(s->client.ep, out.buf, out.len);
			free(out.buf);
		} else
			endpoint_write(s->client.ep, s->greeting, s->greeting_len);
		free(s->greeting);
		s->greeting = NULL;
		free(s->greeting_line);
		s->greeting_line = NULL;
	}
	session_relay(&s->client);
	session_relay(&s->backend);
}

/* A backend line while imapgate is still setting the backend up. */
static void
session_backend_setup_line(struct session *s)
{
	struct session_half *h = &s->backend;
	const struct imap_line *l = imap_parse_line(&h->parser);
	const struct config *cf = s->gen->cf;
	const char *bytes;

	switch (s->phase) {
	case SESSION_GREETING:
		if (l->kind != IMAP_KIND_GREETING ||
		    (l->status != IMAP_STATUS_OK && l->status != IMAP_STATUS_PREAUTH)) {
			/* A BYE or a garbled greeting: this server cannot take us. */
			endpoint_drop(h->ep, h->pending);
			h->pending = 0;
			session_backend_failover(s, l->status == IMAP_STATUS_BYE ?
			    "greeted with BYE" : "bad greeting");
			return;
		}
		pool_report(s->gen->pool, s->server, 1, NULL);
		if (cf->backend_tls != CONFIG_TLS_STARTTLS && cf->client_ip != CONFIG_CLIENT_IP_ID) {
			/* Nothing to do first: relay from here. */
			s->phase = SESSION_RELAY;
			session_due_off(s, SESSION_DUE_PHASE);
			session_backend_line(s);
			return;
		}
		if (h->pending > cf->max_line ||
		    (bytes = (const char *)endpoint_pullup(h->ep, h->pending)) == NULL ||
		    (s->greeting = malloc(h->pending)) == NULL ||
		    (s->greeting_line = malloc(sizeof(*s->greeting_line))) == NULL) {
			session_close(s, "out-of-memory");
			return;
		}
		memcpy(s->greeting, bytes, h->pending);
		s->greeting_len = h->pending;
		*s->greeting_line = *l;
		endpoint_drop(h->ep, h->pending);
		h->pending = 0;
		if (cf->backend_tls == CONFIG_TLS_STARTTLS) {
			static const char cmd[] = SESSION_TAG_STARTTLS " STARTTLS\r\n";
			endpoint_write(h->ep, cmd, sizeof(cmd) - 1);
			s->phase = SESSION_BACKEND_STARTTLS;
		} else
			session_send_id(s);
		return;
	case SESSION_BACKEND_STARTTLS:
		endpoint_drop(h->ep, h->pending);
		h->pending = 0;
		if (l->kind != IMAP_KIND_TAGGED || strcmp(l->tag, SESSION_TAG_STARTTLS) != 0)
			return;
		if (l->status != IMAP_STATUS_OK) {
			session_detail(s, "backend refused STARTTLS");
			session_bye_unavailable(s, "backend-starttls-refused");
			return;
		}
		s->phase = SESSION_BACKEND_UPGRADE;
		imap_parse_restart(&h->parser);
		h->parser.seen_greeting = 1;
		if (endpoint_start_tls(h->ep, s->gen->btls) != 0)
			session_bye_unavailable(s, "backend-tls-failed");
		return;
	case SESSION_BACKEND_ID:
		endpoint_drop(h->ep, h->pending);
		h->pending = 0;
		if (l->kind == IMAP_KIND_TAGGED && strcmp(l->tag, SESSION_TAG_ID) == 0)
			session_release_greeting(s);
		return;
	default:
		endpoint_drop(h->ep, h->pending);
		h->pending = 0;
		return;
	}
}

/* The backend is connected (TCP, or a TLS handshake finished): next setup step. */
static void
session_backend_up(struct session *s)
{
	const struct config *cf = s->gen->cf;

	switch (s->phase) {
	case SESSION_CONNECTING: {
		/*
		 * The same bound covers what follows the TCP connect: a TLS
		 * handshake and the greeting.  A server that accepts and then
		 * says nothing is failed over like one that refuses.
		 */
		session_due(s, SESSION_DUE_PHASE, cf->backend_connect_ms);
		log_debug("session=%s msg=backend-connected", s->id);
		if (cf->client_ip == CONFIG_CLIENT_IP_PROXY_V1) {
			char hdr[PROXYPROTO_V1_MAX + 1];
			size_t n = proxyproto_build_v1((const struct sockaddr *)&s->client_ss,
			    (const struct sockaddr *)&s->local_ss, hdr, sizeof(hdr));
			endpoint_write(s->backend.ep, hdr, n);
		} else if (cf->client_ip == CONFIG_CLIENT_IP_PROXY_V2) {
			unsigned char hdr[64];
			size_t n = proxyproto_build_v2((const struct sockaddr *)&s->client_ss,
			    (const struct sockaddr *)&s->local_ss, hdr, sizeof(hdr));
			endpoint_write(s->backend.ep, hdr, n);
		}
		if (cf->backend_tls == CONFIG_TLS_IMPLICIT) {
			s->phase = SESSION_BACKEND_TLS;
			if (endpoint_start_tls(s->backend.ep, s->gen->btls) != 0)
				session_bye_unavailable(s, "backend-tls-failed");
			return;
		}
		s->phase = SESSION_GREETING;
		session_relay(&s->backend);
		return;
	}
	case SESSION_BACKEND_TLS:
		s->phase = SESSION_GREETING;
		session_relay(&s->backend);
		return;
	case SESSION_BACKEND_UPGRADE:
		if (cf->client_ip == CONFIG_CLIENT_IP_ID)
			session_send_id(s);
		else
			session_release_greeting(s);
		return;
	default:
		return;
	}
}

/* The parser lost the stream: nothing after this point can be trusted. */
static void
session_parse_error(struct session_half *h)
{
	struct session *s = h->s;

	session_detail(s, "%s: %s", h->name, h->parser.error);
	if (h == &s->client) {
		session_bye_count(s, STATS_BYE_PROTOCOL);
		session_inject(s, "* BYE Unreadable command stream");
		session_finish(s, "client-protocol-error");
	} else
		session_close(s, "backend-protocol-error");
}

/* Stop reading h: its peer's output is full, or too many commands are in flight. */
static int
session_must_pause(struct session_half *h)
{
	if (h == &h->s->client && h->s->client_gone)
		return 0;
	if (h == &h->s->backend && h->s->backend_gone)
		return 0;
	if (endpoint_output_full(h->peer->ep) ||
	    (h == &h->s->client && state_inflight_full(&h->s->st))) {
		if (!h->paused) {
			h->paused = 1;
			endpoint_read_enable(h->ep, 0);
		}
		return 1;
	}
	return 0;
}

/*
 * Parse what h has read and move it to the peer.  Lines are parsed in
 * place and moved whole once framed; literal bytes are moved by count,
 * without being looked at.
 */
static void
session_relay_run(struct session_half *h)
{
	struct session *s = h->s;
	struct imap_parser *p = &h->parser;
	struct imap_event ev;
	const unsigned char *buf;
	size_t avail, len, used;
	uint64_t left;

	while (!s->finishing && !s->closed &&
	    (h == &s->client ? s->phase == SESSION_RELAY && !s->client_upgrading :
	    s->phase >= SESSION_GREETING && s->phase != SESSION_BACKEND_UPGRADE &&
	    !s->client_upgrading)) {
		if (session_must_pause(h))
			return;
		avail = endpoint_input_len(h->ep);
		left = imap_parse_literal_left(p);
		if (left > 0 && h->pending == 0 && !imap_parse_literal_wanted(p)) {
			if (avail == 0)
				return;
			len = left < avail ? (size_t)left : avail;
			h->pending = len;
			h->sync_wait = 0;
			session_pass(h);
			imap_parse_skip(p, len);
			continue;
		}
		if (avail <= h->pending)
			return;
		buf = endpoint_peek(h->ep, h->pending, &len);
		if (buf == NULL)
			len = 0;
		used = imap_parse_feed(p, buf, len, &ev);
		h->pending += used;
		switch (ev.type) {
		case IMAP_EV_NONE:
			if (h->streaming)
				session_pass(h);
			if (used == 0)
				return;
			break;
		case IMAP_EV_TOOLONG:
			h->streaming = 1;
			if (h == &s->client)
				h->dropping = 1;
			session_pass(h);
			break;
		case IMAP_EV_LITERAL_HEAD:
			if (h == &s->client) {
				if (imap_parse_current(p)->nliterals <= 1 && !h->streaming)
					session_client_decide(s, imap_parse_current(p));
				h->sync_wait = ev.lit_sync;
				if (h->dropping && ev.lit_sync) {
					/* We answered it: the client will not send the literal. */
					imap_parse_literal_cancel(p);
					h->sync_wait = 0;
					session_pass(h);
					h->dropping = 0;
					break;
				}
			}
			session_pass(h);
			break;
		case IMAP_EV_LITERAL_DONE:
			session_pass(h);
			break;
		case IMAP_EV_LINE:
			h->streaming = 0;
			if (h == &s->client)
				session_client_line(s);
			else if (s->phase != SESSION_RELAY)
				session_backend_setup_line(s);
			else
				session_backend_line(s);
			break;
		case IMAP_EV_ERROR:
			session_parse_error(h);
			return;
		}
	}
}

/*
 * Relay what one side has buffered.  Relaying one side can relay the other
 * (a reply makes room, a command is answered), so calls nest; the parser's
 * working buffers go back only when the outermost call for this side
 * returns at a line boundary, never under a line handler still using them.
 * Idle sessions then hold no parser buffers at all.
 */
static void
session_relay(struct session_half *h)
{
	h->relaying++;
	session_relay_run(h);
	if (--h->relaying == 0)
		imap_parse_release(&h->parser);
}

/* New input on one side. */
static void
session_readable(struct endpoint *ep, void *arg)
{
	struct session *s = arg;
	struct session_half *h = session_half_of(s, ep);

	event_base_gettimeofday_cached(s->srv->base, &s->last_activity);
	if (h == &s->backend && s->due[SESSION_DUE_RESPONSE] != 0)
		session_response_timer(s, 1);
	session_relay(h);
}

/* One side's output drained to the low mark: let its peer read again. */
static void
session_drained(struct endpoint *ep, void *arg)
{
	struct session *s = arg;
	struct session_half *h = session_half_of(s, ep);
	struct session_half *src = h->peer;

	if (s->finishing || s->closed || !src->paused)
		return;
	if (src == &s->client && state_inflight_full(&s->st))
		return;
	src->paused = 0;
	endpoint_read_enable(src->ep, 1);
	session_relay(src);
}

/* Connection events from either side. */
static void
session_event(struct endpoint *ep, enum endpoint_event what, void *arg)
{
	struct session *s = arg;
	struct session_half *h = session_half_of(s, ep);

	if (s->closed)
		return;
	if (what == ENDPOINT_FLUSHED) {
		if (h == &s->client)
			session_close(s, s->reason);
		return;
	}
	if (h == &s->backend && what == ENDPOINT_CONNECTED) {
		session_backend_up(s);
		return;
	}
	if (h == &s->client && what == ENDPOINT_CONNECTED) {
		const char *sni = endpoint_sni(ep);

		s->client_tls = 1;
		stats_add(&stats.tls_handshakes, 1);
		log_debug("session=%s msg=tls-established tls=%s cipher=%s sni=%s", s->id,
		    endpoint_tls_version(ep), endpoint_tls_cipher(ep), sni ? sni : "-");
		if (s->client_upgrading) {
			s->client_upgrading = 0;
			session_relay(&s->backend);
			session_relay(&s->client);
		}
		return;
	}
	if (what == ENDPOINT_ERROR)
		session_detail(s, "%s", endpoint_error(ep));
	if (h == &s->client) {
		if (what == ENDPOINT_ERROR && !s->client_tls && endpoint_is_tls(ep))
			stats_name_add(&stats.tls_failures,
			    strncmp(endpoint_error(ep), "tls: ", 5) == 0 ?
			    endpoint_error(ep) + 5 : endpoint_error(ep));
		if (what == ENDPOINT_ERROR || s->phase != SESSION_RELAY) {
			session_close(s, "client-error");
			return;
		}
		/*
		 * A half-close: what the client sent still goes through the
		 * parser and the guard, and the answers to commands in flight
		 * (a pipelined LOGOUT, say) still reach it, for a bounded
		 * time.  Over TLS the end of the client's stream ends the
		 * connection (libevent stops writing too), so only what it
		 * sent is passed on.
		 */
		s->client_gone = 1;
		session_relay(&s->client);
		endpoint_read_enable(s->client.ep, 0);
		if (s->closed || s->finishing)
			return;
		if (s->st.ninflight == 0 || endpoint_is_tls(s->client.ep)) {
			session_close(s, "client-eof");
			return;
		}
		session_due(s, SESSION_DUE_PHASE, SESSION_FLUSH_TIMEOUT_MS);
		return;
	}
	if (s->finishing)
		return;
	if (s->phase < SESSION_RELAY) {
		session_backend_failover(s, what == ENDPOINT_EOF ? "closed before the greeting" :
		    endpoint_error(ep));
		return;
	}
	session_backend_lost(s, what == ENDPOINT_EOF ? "backend-eof" : "backend-error");
}

/*
 * Choose a backend (not one tried already) and start connecting; with none
 * left, the client gets BYE.  The client has seen nothing from the backend
 * before the greeting is released, so moving on is invisible to it.
 */
static void
session_connect_backend(struct session *s)
{
	const struct config *cf = s->gen->cf;
	const struct config_server *sv;
	unsigned tries;

	for (;;) {
		if (s->server >= 0) {
			pool_release(s->gen->pool, s->server);
			s->server = -1;
		}
		tries = (unsigned)__builtin_popcountll(s->tried);
		if (tries >= cf->connect_tries ||
		    (s->server = pool_pick(s->gen->pool, (const struct sockaddr *)&s->client_ss,
		    s->tried)) < 0) {
			if (s->detail == NULL)
				session_detail(s, "no backend server available");
			session_bye_unavailable(s, tries == 0 ? "no-backend" :
			    "backend-connect-failed");
			return;
		}
		s->tried |= (uint64_t)1 << s->server;
		sv = pool_server(s->gen->pool, s->server);
		s->backend.ep = endpoint_connect(s->srv->base, &sv->addr, &session_cbs, s);
		if (s->backend.ep != NULL)
			break;
		session_detail(s, "connect to %s failed", sv->address);
		pool_report(s->gen->pool, s->server, 0, "connect failed");
	}
	s->phase = SESSION_CONNECTING;
	endpoint_set_limits(s->backend.ep, cf->buffer, cf->buffer + cf->max_line);
	session_due(s, SESSION_DUE_PHASE, cf->backend_connect_ms);
}

/*
 * The backend failed before the client saw anything of it (connect error
 * or timeout, TLS failure, a bad greeting): count it against the server
 * and try the next one.
 */
static void
session_backend_failover(struct session *s, const char *why)
{
	log_info("session=%s msg=backend-failed server=%s error=\"%s\"", s->id,
	    pool_name(s->gen->pool, s->server), why);
	session_detail(s, "%s: %s", pool_name(s->gen->pool, s->server), why);
	pool_report(s->gen->pool, s->server, 0, why);
	session_due_off(s, SESSION_DUE_PHASE);
	endpoint_free(s->backend.ep);
	s->backend.ep = NULL;
	s->backend.pending = 0;
	s->backend.paused = 0;
	s->backend.streaming = 0;
	imap_parse_restart(&s->backend.parser);
	free(s->greeting);
	s->greeting = NULL;
	free(s->greeting_line);
	s->greeting_line = NULL;
	session_connect_backend(s);
}

/* Connect timeout (before the backend is up) or flush timeout (while finishing). */
static void
session_phase_timeout(struct session *s)
{
	if (s->finishing) {
		session_close(s, s->reason);
		return;
	}
	if (s->client_gone) {
		session_close(s, "client-eof");
		return;
	}
	if (s->phase < SESSION_RELAY)
		session_backend_failover(s, "connect timeout");
}

/* Set ev_timer for the earliest deadline, unless it already fires before that. */
static void
session_timer_arm(struct session *s)
{
	uint64_t min = 0, now;
	struct timeval tv;

	for (int d = 0; d < SESSION_NDUE; d++)
		if (s->due[d] != 0 && (min == 0 || s->due[d] < min))
			min = s->due[d];
	if (s->closed || min == 0 || (s->armed != 0 && s->armed <= min))
		return;
	now = session_now_us(s);
	tv.tv_sec = min > now ? (time_t)((min - now) / 1000000) : 0;
	tv.tv_usec = min > now ? (suseconds_t)((min - now) % 1000000) : 0;
	evtimer_add(s->ev_timer, &tv);
	s->armed = min;
}

/* Set deadline d to ms from now. */
static void
session_due(struct session *s, enum session_due d, uint64_t ms)
{
	s->due[d] = session_now_us(s) + ms * 1000;
	session_timer_arm(s);
}

/*
 * Clear deadline d.  The timer stays set: it fires once for nothing and
 * re-arms for what is left, cheaper than a timer operation per command.
 */
static void
session_due_off(struct session *s, enum session_due d)
{
	s->due[d] = 0;
}

/* The session timer: run whichever deadlines have passed, then re-arm. */
static void
session_timer_cb(evutil_socket_t fd, short what, void *arg)
{
	struct session *s = arg;
	uint64_t now = session_now_us(s);

	(void)fd;
	(void)what;
	s->armed = 0;
	if (s->due[SESSION_DUE_PHASE] != 0 && s->due[SESSION_DUE_PHASE] <= now) {
		s->due[SESSION_DUE_PHASE] = 0;
		session_phase_timeout(s);
	}
	if (!s->closed && s->due[SESSION_DUE_RESPONSE] != 0 &&
	    s->due[SESSION_DUE_RESPONSE] <= now) {
		s->due[SESSION_DUE_RESPONSE] = 0;
		session_response_timeout(s);
	}
	if (!s->closed && s->due[SESSION_DUE_GUARD] != 0 && s->due[SESSION_DUE_GUARD] <= now) {
		s->due[SESSION_DUE_GUARD] = 0;
		session_guard_check(s);
	}
	session_timer_arm(s);
}

/*
 * The timeouts a client is held to: the TLS handshake, login, and silence.
 * Activity only stamps last_activity; the timer re-arms itself for what is
 * left when it fires early, so the relay path never touches the timer heap.
 */
static void
session_guard_check(struct session *s)
{
	const struct config *cf = s->gen->cf;
	struct timeval now, age, idle;
	uint64_t age_ms, idle_ms, next = UINT64_MAX;

	if (s->finishing || s->closed)
		return;
	event_base_gettimeofday_cached(s->srv->base, &now);
	timersub(&now, &s->start, &age);
	timersub(&now, &s->last_activity, &idle);
	age_ms = (uint64_t)age.tv_sec * 1000 + (uint64_t)age.tv_usec / 1000;
	idle_ms = (uint64_t)idle.tv_sec * 1000 + (uint64_t)idle.tv_usec / 1000;

	if ((s->lc->tls == CONFIG_TLS_IMPLICIT && !s->client_tls) || s->client_upgrading) {
		struct timeval hs;
		uint64_t hs_ms;

		timersub(&now, &s->tls_started, &hs);
		hs_ms = (uint64_t)hs.tv_sec * 1000 + (uint64_t)hs.tv_usec / 1000;
		if (hs_ms >= cf->tls_handshake_ms) {
			session_detail(s, "no TLS handshake in %llu ms",
			    (unsigned long long)cf->tls_handshake_ms);
			stats_name_add(&stats.tls_failures, "timeout");
			session_close(s, "tls-handshake-timeout");
			return;
		}
		next = cf->tls_handshake_ms - hs_ms;
	}
	if (s->st.proto == STATE_NOT_AUTH) {
		if (age_ms >= cf->preauth_ms) {
			session_bye_count(s, STATS_BYE_TIMEOUT);
			session_inject(s, "* BYE Autologout; login took too long");
			session_finish(s, "preauth-timeout");
			return;
		}
		if (cf->preauth_ms - age_ms < next)
			next = cf->preauth_ms - age_ms;
	}
	if (idle_ms >= cf->idle_ms) {
		session_bye_count(s, STATS_BYE_TIMEOUT);
		session_inject(s, "* BYE Autologout; idle for too long");
		session_finish(s, "idle-timeout");
		return;
	}
	if (cf->idle_ms - idle_ms < next)
		next = cf->idle_ms - idle_ms;
	session_due(s, SESSION_DUE_GUARD, next + 1);
}

/* Start a session that only says BYE (a limit said no) and closes. */
static void
session_reject(struct session *s, const char *text, const char *reason)
{
	endpoint_write(s->client.ep, text, strlen(text));
	session_bye_count(s, STATS_BYE_LIMIT);
	session_finish(s, reason);
}

/* Accept: wrap the client socket, apply limits, and start the backend connection at once. */
void
session_start(struct server *srv, const struct config_listen *lc, int fd,
    const struct sockaddr *sa, socklen_t salen, const struct sockaddr *local,
    socklen_t locallen)
{
	struct generation *gen = srv->gen;
	const struct config *cf = gen->cf;
	struct session *s;

	if ((s = calloc(1, sizeof(*s))) == NULL) {
		close(fd);
		return;
	}
	s->srv = srv;
	s->gen = generation_ref(gen);
	s->lc = lc;
	s->server = -1;
	gettimeofday(&s->start, NULL);
	s->last_activity = s->start;
	s->tls_started = s->start;
	snprintf(s->id, sizeof(s->id), "%06x%06llx", srv->id_prefix & 0xffffff,
	    (unsigned long long)(++srv->next_id & 0xffffff));
	netaddr_str(sa, s->client_addr, sizeof(s->client_addr));
	memcpy(&s->client_ss, sa, salen < sizeof(s->client_ss) ? salen : sizeof(s->client_ss));
	memcpy(&s->local_ss, local, locallen < sizeof(s->local_ss) ? locallen : sizeof(s->local_ss));
	s->client_tls = 0;
	s->client.s = s->backend.s = s;
	s->client.peer = &s->backend;
	s->backend.peer = &s->client;
	s->client.name = "client";
	s->backend.name = "backend";
	imap_parse_init(&s->client.parser, IMAP_DIR_CLIENT, cf->max_line);
	imap_parse_init(&s->backend.parser, IMAP_DIR_SERVER, cf->max_line);
	state_init(&s->st, s->id);
	if ((size_t)(lc - cf->listen) < STATS_MAX_LISTENERS)
		state_set_gauge(&s->st, stats.open[lc - cf->listen]);
	s->ev_timer = evtimer_new(srv->base, session_timer_cb, s);
	if (s->ev_timer == NULL) {
		/* Not in the list yet: nothing else refers to s. */
		log_error("session=%s msg=\"out of memory\" client=%s", s->id, s->client_addr);
		close(fd);
		session_free(s);
		return;
	}
	TAILQ_INSERT_TAIL(&srv->sessions, s, entry);
	srv->nsessions++;
	stats_add(&stats.sessions_total, 1);

	s->client.ep = endpoint_accept(srv->base, fd,
	    lc->tls == CONFIG_TLS_IMPLICIT ? gen->tls : NULL, &session_cbs, s);
	if (s->client.ep == NULL) {
		close(fd);
		session_detail(s, "out of memory");
		session_close(s, "client-setup-failed");
		return;
	}
	endpoint_set_limits(s->client.ep, cf->buffer, cf->buffer + cf->max_line);
	log_debug("session=%s msg=accepted client=%s listen=%s", s->id,
	    s->client_addr, lc->address);
	session_due(s, SESSION_DUE_GUARD,
	    lc->tls == CONFIG_TLS_IMPLICIT && cf->tls_handshake_ms < cf->preauth_ms ?
	    cf->tls_handshake_ms : cf->preauth_ms);

	switch (connlimit_acquire(srv->gate->limits, sa)) {
	case CONNLIMIT_TOTAL:
		session_reject(s, "* BYE [UNAVAILABLE] Too many connections, try again later\r\n",
		    "limit-total");
		return;
	case CONNLIMIT_PER_IP:
		session_reject(s, "* BYE [UNAVAILABLE] Too many connections from your address\r\n",
		    "limit-per-ip");
		return;
	case CONNLIMIT_OK:
		s->limited = 1;
		break;
	}
	session_connect_backend(s);
}
