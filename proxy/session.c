/* session: both halves of a proxied IMAP connection, from accept to close. */
#include <assert.h>
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

#include <event2/buffer.h>
#include <event2/event.h>

#include "config.h"
#include "endpoint.h"
#include "log.h"
#include "logesc.h"
#include "netaddr.h"
#include "server.h"
#include "guard.h"
#include "connlimit.h"
#include "imapcmd.h"
#include "pool.h"
#include "proxyproto.h"
#include "ratelog.h"
#include "session.h"
#include "session_priv.h"
#include "backend.h"
#include "prelogin.h"
#include "control.h"
#include "stats.h"
#include "state.h"

/*
 * Refusals (a connection limit said no) on implicit-TLS listeners: a TLS
 * handshake to say BYE costs about a millisecond of CPU, so only this many
 * a second get one, at most REFUSE_HELD at a time, each for at most
 * REFUSE_MS; the others are closed at accept.  Plaintext and STARTTLS
 * listeners always get the BYE (one send, no session).
 */
#define SESSION_REFUSE_TLS_PER_SEC	20
#define SESSION_REFUSE_HELD		64
#define SESSION_REFUSE_MS		1000
/* Our own replies waiting for the backend to reach a response boundary. */
#define SESSION_MAX_INJECT		(16 * 1024)
/* The largest non-synchronizing literal LITERAL- allows (RFC 7888 section 5). */
#define SESSION_LITERAL_MINUS_MAX	4096
/* A compressed session idle this long gives its deflater back. */
#define SESSION_DEFLATE_IDLE_MS		2000
/* Past this much queued of our own replies the client is not read. */
#define SESSION_INJECT_HIGH		(SESSION_MAX_INJECT / 2)

static const char *const session_life_names[] = {
	"login", "setup", "relay", "finishing", "closed",
};
static const char *const session_client_names[] = {
	"command", "wait-literal", "wait-sasl", "sasl", "wait-idle", "idle", "stale", "tls",
};
static const char *const session_backend_names[] = {
	"none", "connecting", "tls", "greeting", "starttls", "upgrade", "id", "capa", "auth",
	"ready",
};

#define B(x)	(1u << (x))
/* Allowed transitions: bit n of [old] set if old -> n is legal. */
static const unsigned session_life_next[SESSION_NLIFE] = {
	[SESSION_LOGIN] = B(SESSION_SETUP) | B(SESSION_FINISHING) | B(SESSION_CLOSED),
	[SESSION_SETUP] = B(SESSION_LOGIN) | B(SESSION_RELAY) | B(SESSION_FINISHING) |
	    B(SESSION_CLOSED),
	[SESSION_RELAY] = B(SESSION_FINISHING) | B(SESSION_CLOSED),
	[SESSION_FINISHING] = B(SESSION_CLOSED),
	[SESSION_CLOSED] = 0,
};
static const unsigned session_client_next[SESSION_NCLIENT] = {
	/* COMMAND -> SASL: imapgate itself asked for a SASL response (prelogin.c). */
	[CLIENT_COMMAND] = B(CLIENT_WAIT_LITERAL) | B(CLIENT_WAIT_SASL) | B(CLIENT_WAIT_IDLE) |
	    B(CLIENT_TLS) | B(CLIENT_SASL),
	[CLIENT_WAIT_LITERAL] = B(CLIENT_COMMAND),
	[CLIENT_WAIT_SASL] = B(CLIENT_SASL) | B(CLIENT_COMMAND),
	[CLIENT_SASL] = B(CLIENT_WAIT_SASL) | B(CLIENT_COMMAND) | B(CLIENT_STALE),
	[CLIENT_WAIT_IDLE] = B(CLIENT_IDLE) | B(CLIENT_COMMAND),
	[CLIENT_IDLE] = B(CLIENT_COMMAND) | B(CLIENT_STALE),
	[CLIENT_STALE] = B(CLIENT_COMMAND),
	[CLIENT_TLS] = B(CLIENT_COMMAND),
};
#define SETUP_FAIL	B(BACKEND_NONE)
static const unsigned session_backend_next[SESSION_NBACKEND] = {
	[BACKEND_NONE] = B(BACKEND_CONNECTING),
	[BACKEND_CONNECTING] = B(BACKEND_TLS) | B(BACKEND_GREETING) | SETUP_FAIL,
	[BACKEND_TLS] = B(BACKEND_GREETING) | SETUP_FAIL,
	[BACKEND_GREETING] = B(BACKEND_STARTTLS) | B(BACKEND_ID) | B(BACKEND_CAPA) |
	    B(BACKEND_AUTH) | B(BACKEND_READY) | SETUP_FAIL,
	[BACKEND_STARTTLS] = B(BACKEND_UPGRADE) | SETUP_FAIL,
	[BACKEND_UPGRADE] = B(BACKEND_ID) | B(BACKEND_CAPA) | B(BACKEND_AUTH) | B(BACKEND_READY) |
	    SETUP_FAIL,
	[BACKEND_ID] = B(BACKEND_CAPA) | B(BACKEND_AUTH) | B(BACKEND_READY) | SETUP_FAIL,
	/* CAPA -> READY: the capability list asked for after a login OK without one. */
	[BACKEND_CAPA] = B(BACKEND_ID) | B(BACKEND_AUTH) | B(BACKEND_READY) | SETUP_FAIL,
	[BACKEND_AUTH] = B(BACKEND_CAPA) | B(BACKEND_READY) | SETUP_FAIL,
	[BACKEND_READY] = 0,
};
#undef B

_Static_assert(sizeof(session_life_names) / sizeof(session_life_names[0]) == SESSION_NLIFE,
    "session_life_names");
_Static_assert(sizeof(session_client_names) / sizeof(session_client_names[0]) == SESSION_NCLIENT,
    "session_client_names");
_Static_assert(sizeof(session_backend_names) / sizeof(session_backend_names[0]) ==
    SESSION_NBACKEND, "session_backend_names");

/* The stats tables are indexed by these enums. */
_Static_assert(IMAPCMD_UNKNOWN + 1 == STATS_CMD_CLASSES, "STATS_CMD_CLASSES");
_Static_assert(STATE_LOGOUT + 1 == STATS_STATES, "STATS_STATES");

/* Refusal sessions alive now (all workers), and the TLS refusal budget's second and count. */
static unsigned session_refusing;
static uint64_t session_refuse_slot;	/* second << 20 | refusals in it */

static void session_trace_client(struct session *, const struct imap_line *, const char *,
    uint64_t, int);
static void session_guard_check(struct session *);
static void session_drain_bye(struct session *, const char *, size_t);
static void session_response_timer(struct session *, int);
static void session_readable(struct endpoint *, void *);
static void session_drained(struct endpoint *, void *);
static void session_event(struct endpoint *, enum endpoint_event, void *);

const struct endpoint_cbs session_cbs = {
	session_readable, session_drained, session_event,
};

/* Now in microseconds, from the loop's cached clock. */
uint64_t
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

/* Report an illegal lifecycle transition: a bug, logged in every build. */
static void
session_bad_transition(const struct session *s, const char *what, const char *from,
    const char *to)
{
	log_error("session=%s msg=illegal-transition what=%s transition=%s->%s", s->id,
	    what, from, to);
	assert(!"illegal lifecycle transition");
}

/* The one place the session's lifecycle changes. */
void
session_set_life(struct session *s, enum session_life to)
{
	if (!(session_life_next[s->life] & (1u << to))) {
		session_bad_transition(s, "session", session_life_names[s->life],
		    session_life_names[to]);
		return;
	}
	log_debug("session=%s msg=lifecycle what=session transition=%s->%s", s->id,
	    session_life_names[s->life], session_life_names[to]);
	s->life = to;
}

/* The one place the client half's lifecycle changes. */
void
session_set_client(struct session *s, enum session_client to)
{
	if (s->cl == to)
		return;
	if (!(session_client_next[s->cl] & (1u << to))) {
		session_bad_transition(s, "client", session_client_names[s->cl],
		    session_client_names[to]);
		return;
	}
	log_debug("session=%s msg=lifecycle what=client transition=%s->%s", s->id,
	    session_client_names[s->cl], session_client_names[to]);
	s->cl = to;
	s->rerun = 1;
	if (to == CLIENT_IDLE && s->gen->cf->idle_keepalive_ms > 0) {
		/* IDLE began: the keepalive's clock starts now, and is looked at in time. */
		uint64_t at = session_now_us(s) + s->gen->cf->idle_keepalive_ms * 1000 / 4;

		s->ka_bytes = endpoint_bytes_out(s->client.ep);
		s->ka_since = session_now_us(s);
		if (s->due[SESSION_DUE_GUARD] == 0 || s->due[SESSION_DUE_GUARD] > at)
			session_due(s, SESSION_DUE_GUARD, s->gen->cf->idle_keepalive_ms / 4);
	}
}

/* The one place the backend half's lifecycle changes. */
void
session_set_backend(struct session *s, enum session_backend to)
{
	if (!(session_backend_next[s->bk] & (1u << to))) {
		session_bad_transition(s, "backend", session_backend_names[s->bk],
		    session_backend_names[to]);
		return;
	}
	log_debug("session=%s msg=lifecycle what=backend transition=%s->%s", s->id,
	    session_backend_names[s->bk], session_backend_names[to]);
	s->bk = to;
	s->rerun = 1;
}

/*
 * Is the session still reading and relaying (not finishing or closed)?
 * LOGIN is live too: imapgate talks to the client itself then, and the
 * timeouts, backpressure, drain and session_finish must apply to it.
 */
int
session_live(const struct session *s)
{
	return s->life == SESSION_LOGIN || s->life == SESSION_SETUP ||
	    s->life == SESSION_RELAY;
}

/* Note what went wrong, for the summary line (the last note wins). */
void
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
	free(s->kick_text);
	prelogin_free(s);
	if (s->ev_timer != NULL)
		event_free(s->ev_timer);
	if (s->server >= 0)
		pool_release(s->gen->pool, s->server);
	if (s->limited)
		connlimit_release(s->srv->gate->limits, (const struct sockaddr *)&s->client_ss);
	if (s->refusal)
		__atomic_fetch_sub(&session_refusing, 1, __ATOMIC_RELAXED);
	generation_unref(s->gen);
	free(s);
}

/* End the session: one summary line, both sides stopped, free scheduled. */
void
session_close(struct session *s, const char *reason)
{
	char bk[NETADDR_STRLEN], guards[256] = "", user[4 * IMAP_MAX_ARG + 8];
	char sni[4 * 256 + 8], det[4 * SESSION_DETAIL_MAX + 8];
	size_t gl = 0;

	if (s->life == SESSION_CLOSED)
		return;
	if (s->client.forwarded && s->client.parser.w != NULL)
		/* A command the backend got only part of: its bytes are in the trace too. */
		session_trace_client(s, imap_parse_current(&s->client.parser), "partial",
		    s->client.fwd_bytes, 0);
	session_set_life(s, SESSION_CLOSED);
	for (int g = 0; g < STATS_GUARD_MAX; g++)
		if (s->guards[g] > 0 && gl + 40 < sizeof(guards))
			gl += (size_t)snprintf(guards + gl, sizeof(guards) - gl, "%s%s:%u",
			    gl ? "," : "", stats_guard_name(g), s->guards[g]);
	if (s->reason == NULL)
		s->reason = reason;
	state_set_gauge(&s->st, NULL);	/* no longer open, before it counts as ended */
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

	/*
	 * A refusal, or a connection that never finished its TLS handshake,
	 * is something a client can cause at will, as fast as it connects:
	 * its line is rate-limited (the metrics count every one).
	 */
	if (s->refusal ? ratelog_allow(RATELOG_REFUSAL) :
	    s->lc->tls == CONFIG_TLS_IMPLICIT && !s->client_tls ?
	    ratelog_allow(RATELOG_HANDSHAKE) : 1) {
		log_info("session=%s msg=session-end client=%s backend=%s tls=%s cipher=%s sni=%s%s%s "
		    "bytes_in=%llu bytes_out=%llu backend_in=%llu backend_out=%llu "
		    "duration_ms=%lld user=\"%s\" state=%s rewrites=%u guard_events=%u "
		    "last_guard=%s guards=%s bye=%s rewritten=%s route=%s reason=%s%s%s%s",
		    s->id, s->client_addr,
		    s->baddr.len > 0 ? netaddr_str((const struct sockaddr *)&s->baddr.ss, bk,
		    sizeof(bk)) : "-",
		    s->client.ep && s->client_tls ? endpoint_tls_version(s->client.ep) : "-",
		    s->client.ep && s->client_tls ? endpoint_tls_cipher(s->client.ep) : "-",
		    s->client.ep && endpoint_sni(s->client.ep) ? "\"" : "-",
		    s->client.ep && endpoint_sni(s->client.ep) ?
		    logesc_quote(endpoint_sni(s->client.ep), sni, sizeof(sni)) : "",
		    s->client.ep && endpoint_sni(s->client.ep) ? "\"" : "",
		    (unsigned long long)(s->client.ep ? endpoint_bytes_in(s->client.ep) : 0),
		    (unsigned long long)(s->client.ep ? endpoint_bytes_out(s->client.ep) : 0),
		    (unsigned long long)(s->backend.ep ? endpoint_bytes_in(s->backend.ep) : 0),
		    (unsigned long long)(s->backend.ep ? endpoint_bytes_out(s->backend.ep) : 0),
		    session_age_ms(s), logesc_quote(state_user(&s->st), user, sizeof(user)),
		    state_name(s->st.proto), s->nrewrites,
		    s->nguard, s->last_guard ? s->last_guard : "-", guards[0] ? guards : "-",
		    s->bye ? s->bye : "-", s->rewritten[0] ? s->rewritten : "-",
		    s->route != NULL ? s->route : "-", s->reason,
		    s->detail ? " error=\"" : "",
		    s->detail ? logesc_quote(s->detail, det, sizeof(det)) : "",
		    s->detail ? "\"" : "");
	}
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
void
session_bye_count(struct session *s, enum stats_bye b)
{
	stats_add(&stats.bye[b], 1);
	s->bye = stats_bye_name(b);
}

/* Count a guard event for this session and the process. */
void
session_guard_event(struct session *s, enum stats_guard g)
{
	stats_add(&stats.guard[g], 1);
	s->nguard++;
	s->last_guard = stats_guard_name(g);
	if (s->guards[g] < 255)
		s->guards[g]++;
	if (ratelog_allow(RATELOG_GUARD))
		log_info("session=%s msg=guard event=%s state=%s", s->id, stats_guard_name(g),
		    state_name(s->st.proto));
}

/*
 * Finish the session: stop reading both sides, let the client read what is
 * already queued for it (a BYE, the backend's last bytes), then close.
 * ENDPOINT_FLUSHED arrives from the loop, never from inside this call.
 */
void
session_finish(struct session *s, const char *reason)
{
	if (!session_live(s))
		return;
	session_set_life(s, SESSION_FINISHING);
	s->reason = reason;
	/*
	 * The client stays readable (a TLS handshake still running needs
	 * it), but nothing it sends is parsed any more.
	 */
	if (s->backend.ep != NULL)
		endpoint_read_enable(s->backend.ep, 0);
	s->backend.reading = 0;
	session_due(s, SESSION_DUE_PHASE, SESSION_FLUSH_TIMEOUT_MS);
	endpoint_flush(s->client.ep);
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
	if (s->ninject == 0 || (s->bk == BACKEND_READY && !session_backend_at_boundary(s)))
		return;
	endpoint_write(s->client.ep, s->inject, s->ninject);
	s->ninject = 0;
	s->rerun = 1;
}

/*
 * Queue one reply line of ours for the client.  It goes out at once if the
 * backend is between responses, else after the response in progress: a line
 * dropped into the middle of a response would corrupt the client's view.
 * It counts against the client's output limit like relayed bytes: the
 * client is not read while its output is full (session_client_blocked).
 */
int
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
	return session_inject_raw(s, line, (size_t)n);
}

/* Queue complete lines of ours (CRLF included) as session_inject does. */
int
session_inject_raw(struct session *s, const char *line, size_t n)
{
	if (s->ninject + n > SESSION_MAX_INJECT) {
		session_finish(s, "too-many-errors");
		return -1;
	}
	if (s->inject == NULL && (s->inject = malloc(SESSION_MAX_INJECT)) == NULL) {
		session_close(s, "out-of-memory");
		return -1;
	}
	memcpy(s->inject + s->ninject, line, n);
	s->ninject += n;
	session_inject_flush(s);
	return 0;
}

/* Tell the client the backend is gone, then finish. */
void
session_bye_unavailable(struct session *s, const char *reason)
{
	static const char bye[] = "* BYE [UNAVAILABLE] Backend server unavailable\r\n";

	endpoint_write(s->client.ep, bye, sizeof(bye) - 1);
	session_bye_count(s, STATS_BYE_UNAVAILABLE);
	session_finish(s, reason);
}

/* Drop the parsed-but-held bytes of h. */
void
session_drop(struct session_half *h)
{
	if (h->pending == 0)
		return;
	endpoint_drop(h->ep, h->pending);
	h->pending = 0;
}

/* Hand the parsed-but-held bytes of h on to the peer. */
static void
session_pass(struct session_half *h)
{
	if (h->pending == 0)
		return;
	endpoint_move(h->ep, h->peer->ep, h->pending);
	if (h == &h->s->client) {
		h->fwd_bytes += h->pending;
		stats_add(&stats.client_in, h->pending);
		stats_add(&stats.backend_out, h->pending);
	} else {
		stats_add(&stats.backend_in, h->pending);
		stats_add(&stats.client_out, h->pending);
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
	enum stats_bye kind = s->kick_text != NULL ? STATS_BYE_KICK : STATS_BYE_SHUTDOWN;
	const char *reason = s->kick_text != NULL ? "kicked" : "shutdown";

	if (!s->draining || !session_live(s))
		return;
	if (s->life == SESSION_SETUP && s->pl == NULL) {
		/* The client has seen nothing yet: a BYE greeting is all it gets. */
		session_drain_bye(s, bye, sizeof(bye) - 1);
		session_bye_count(s, kind);
		session_finish(s, reason);
		return;
	}
	if (s->life == SESSION_SETUP && s->pl != NULL)
		return;	/* a login under way: its answer first */
	if (!(s->st.ninflight == 0 || (s->st.ninflight == 1 && s->cl == CLIENT_IDLE)))
		return;
	if ((s->cl != CLIENT_COMMAND && s->cl != CLIENT_IDLE) || s->client.pending > 0 ||
	    !imap_parse_at_boundary(&s->client.parser) ||
	    !session_backend_at_boundary(s) || s->ninject > 0 || prelogin_busy(s))
		return;
	session_bye_count(s, kind);
	session_drain_bye(s, bye, sizeof(bye) - 1);
	session_finish(s, reason);
}

/* The drain's or the kick's BYE, written straight to the client (a quiet point). */
static void
session_drain_bye(struct session *s, const char *dflt, size_t n)
{
	char line[SESSION_KICK_TEXT_MAX + 64];
	int len;

	if (s->kick_text == NULL) {
		endpoint_write(s->client.ep, dflt, n);
		return;
	}
	len = snprintf(line, sizeof(line), "* BYE [UNAVAILABLE] %s\r\n", s->kick_text);
	if (len > 0 && (size_t)len < sizeof(line))
		endpoint_write(s->client.ep, line, (size_t)len);
}

/* Start draining s now. */
void
session_drain(struct session *s)
{
	s->draining = 1;
	session_run(s);
}

/*
 * Drain s (text NULL: shutting down) or kick it (text: the BYE's text)
 * after delay_ms, so that many sessions leave spread over a window
 * instead of all reconnecting in the same millisecond.
 */
void
session_kick(struct session *s, uint64_t delay_ms, const char *text)
{
	if (!session_live(s) || s->draining)
		return;
	if (text != NULL && s->kick_text == NULL) {
		size_t n = strnlen(text, SESSION_KICK_TEXT_MAX);

		if ((s->kick_text = malloc(n + 1)) != NULL) {
			/* Printable ASCII only: it goes into the client's stream. */
			for (size_t i = 0; i < n; i++)
				s->kick_text[i] = text[i] >= 0x20 && text[i] < 0x7f ? text[i] : '?';
			s->kick_text[n] = '\0';
		}
	}
	if (delay_ms == 0) {
		session_drain(s);
		return;
	}
	session_due(s, SESSION_DUE_DRAIN, delay_ms);
}

/* Call off a kick still waiting for its delay (a server drain taken back). */
int
session_kick_cancel(struct session *s)
{
	if (!session_live(s) || s->draining || s->kick_text == NULL ||
	    s->due[SESSION_DUE_DRAIN] == 0)
		return 0;
	s->due[SESSION_DUE_DRAIN] = 0;	/* the timer finds nothing due */
	free(s->kick_text);
	s->kick_text = NULL;
	return 1;
}

/* The next session of the same worker. */
struct session *
session_next(struct session *s)
{
	return TAILQ_NEXT(s, entry);
}

/* Is a LOGIN or AUTHENTICATE waiting for its answer? */
static int
session_login_inflight(const struct session *s)
{
	for (size_t i = 0; i < s->st.ninflight; i++)
		if (s->st.inflight[i].kind == IMAPCMD_LOGIN)
			return 1;
	return 0;
}

/* Capabilities this session adds: STARTTLS (and LOGINDISABLED) before TLS. */
unsigned
session_caps(const struct session *s)
{
	unsigned caps = 0;

	/*
	 * COMPRESS=DEFLATE after login (RFC 4978 allows it only then), until
	 * it is on.  The answer to LOGIN or AUTHENTICATE counts as after
	 * login: a backend's untagged CAPABILITY sent before that tagged OK
	 * (Dovecot does so for a client that asked CAPABILITY before) is the
	 * list the client keeps.
	 */
	if (s->lc->compress && (s->st.proto != STATE_NOT_AUTH || session_login_inflight(s)) &&
	    s->client.ep != NULL && !endpoint_is_deflate(s->client.ep))
		caps |= GUARD_CAP_COMPRESS;
	if (s->lc->tls != CONFIG_TLS_STARTTLS || s->client_tls)
		return caps;
	return caps | GUARD_CAP_STARTTLS | (s->lc->require_tls ? GUARD_CAP_LOGINDISABLED : 0);
}

/* Longest line shown whole in the debug protocol trace. */
#define SESSION_TRACE_MAX	200

/*
 * Debug trace of one client command (or SASL line, or DONE) that went to
 * the backend, with the exact number of bytes it took there.  Passwords
 * and AUTHENTICATE payloads never appear: LOGIN shows only its user, SASL
 * lines only their size; literal content is never shown.
 */
static void
session_trace_client(struct session *s, const struct imap_line *l, const char *kind,
    uint64_t bytes, int own)
{
	char tag[4 * IMAP_MAX_TAG + 8], user[4 * IMAP_MAX_ARG + 8], esc[SESSION_TRACE_MAX * 4 + 8];
	char text[SESSION_TRACE_MAX + 1];
	const unsigned char *b;
	size_t n;

	if (!log_enabled(CONFIG_LOG_DEBUG))
		return;
	if (strcmp(kind, "partial") == 0) {
		/* The session ended with only part of this command sent. */
		log_debug("session=%s msg=trace trace=c2s kind=command tag=\"%s\" name=%s "
		    "bytes=%llu literals=%u partial=1", s->id,
		    logesc_quote(l->tag, tag, sizeof(tag)), l->name,
		    (unsigned long long)bytes, l->nliterals);
		return;
	}
	if (strcmp(kind, "command") != 0) {
		log_debug("session=%s msg=trace trace=c2s kind=%s bytes=%llu%s", s->id, kind,
		    (unsigned long long)bytes, own ? " own=1" : "");
		return;
	}
	logesc_quote(l->tag, tag, sizeof(tag));
	if (strcmp(l->name, "LOGIN") == 0) {
		log_debug("session=%s msg=trace trace=c2s kind=command tag=\"%s\" name=%s "
		    "bytes=%llu literals=%u user=\"%s\"", s->id, tag, l->name,
		    (unsigned long long)bytes, l->nliterals,
		    logesc_quote(l->user, user, sizeof(user)));
		return;
	}
	text[0] = '\0';
	if (l->nliterals == 0 && !l->toolong && strcmp(l->name, "AUTHENTICATE") != 0 &&
	    s->client.pending > 0) {
		n = s->client.pending < SESSION_TRACE_MAX ? s->client.pending : SESSION_TRACE_MAX;
		if ((b = endpoint_pullup(s->client.ep, n)) != NULL) {
			while (n > 0 && (b[n - 1] == '\n' || b[n - 1] == '\r'))
				n--;
			memcpy(text, b, n);
			text[n] = '\0';
		}
	}
	log_debug("session=%s msg=trace trace=c2s kind=command tag=\"%s\" name=%s bytes=%llu "
	    "literals=%u%s%s%s", s->id, tag, l->name, (unsigned long long)bytes, l->nliterals,
	    text[0] ? " line=\"" : "", text[0] ? logesc_quote(text, esc, sizeof(esc)) : "",
	    text[0] ? "\"" : "");
}

/* Debug trace of one complete backend response. */
static void
session_trace_backend(struct session *s)
{
	struct session_half *h = &s->backend;
	const struct imap_line *l = imap_parse_line(&h->parser);
	char tag[LOGESC_SIZE(IMAP_MAX_TAG)], esc[LOGESC_SIZE(SESSION_TRACE_MAX)];
	char name[LOGESC_SIZE(IMAP_MAX_ATOM)], text[SESSION_TRACE_MAX + 1];
	const unsigned char *b;
	size_t n;

	if (!log_enabled(CONFIG_LOG_DEBUG))
		return;
	if (l->kind == IMAP_KIND_CONTINUATION && s->st.authenticating) {
		log_debug("session=%s msg=trace trace=s2c line=\"+ <sasl redacted>\"", s->id);
		return;
	}
	if (l->nliterals > 0 || l->toolong || h->pending == 0) {
		log_debug("session=%s msg=trace trace=s2c tag=\"%s\" name=\"%s\" bytes=%llu "
		    "literals=%u", s->id, logesc_quote(l->tag, tag, sizeof(tag)),
		    logesc_quote(l->name[0] ? l->name : l->status_word, name, sizeof(name)),
		    (unsigned long long)l->len, l->nliterals);
		return;
	}
	n = h->pending < SESSION_TRACE_MAX ? h->pending : SESSION_TRACE_MAX;
	if ((b = endpoint_pullup(h->ep, n)) == NULL)
		return;
	while (n > 0 && (b[n - 1] == '\n' || b[n - 1] == '\r'))
		n--;
	memcpy(text, b, n);
	text[n] = '\0';
	log_debug("session=%s msg=trace trace=s2c line=\"%s%s\"", s->id,
	    logesc_quote(text, esc, sizeof(esc)), h->pending > SESSION_TRACE_MAX ? "..." : "");
}

/* Forget the client command just handled (forwarded, answered or dropped). */
void
session_client_reset(struct session_half *h)
{
	h->drop = h->replied = h->forwarded = h->streaming = h->starttls = h->compress = 0;
	h->fwd_bytes = 0;
}

/* imapgate answers the current client command itself: queue the reply, drop its bytes. */
static void __attribute__((format(printf, 2, 3)))
session_client_answer(struct session *s, const char *fmt, ...)
{
	char line[IMAP_MAX_TAG + 200];
	va_list ap;

	s->client.drop = 1;
	if (s->client.replied)
		return;
	s->client.replied = 1;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	session_inject(s, "%s", line);
}

/*
 * May a non-synchronizing literal of len bytes go to the backend?  Only
 * if it offered LITERAL+ (or LITERAL- and the literal is small): a server
 * without them reads "{n+}" as the end of a line (WildDuck answers BAD)
 * and the literal's bytes as commands.
 */
static int
session_nonsync_ok(const struct session *s, uint64_t len)
{
	return s->nonsync == 2 || (s->nonsync == 1 && len <= SESSION_LITERAL_MINUS_MAX);
}

/* Is the capability cap (upper case) a word of line[0..len)? */
static int
session_has_cap(const char *line, size_t len, const char *cap)
{
	size_t n = strlen(cap);

	for (size_t i = 1; i + n <= len; i++)
		if ((line[i - 1] == ' ' || line[i - 1] == '[') &&
		    strncasecmp(line + i, cap, n) == 0 &&
		    (i + n == len || line[i + n] == ' ' || line[i + n] == ']' ||
		    line[i + n] == '\r' || line[i + n] == '\n'))
			return 1;
	return 0;
}

/* A capability list from the backend (data or [CAPABILITY] code): note LITERAL+/-. */
void
session_note_caps(struct session *s, const struct imap_line *l, const char *line, size_t len)
{
	if ((l->code[0] != 'C' || strcmp(l->code, "CAPABILITY") != 0) &&
	    !(l->kind == IMAP_KIND_UNTAGGED && (l->name[0] == 'C' || l->name[0] == 'c') &&
	    strcasecmp(l->name, "CAPABILITY") == 0))
		return;
	s->nonsync = session_has_cap(line, len, "LITERAL+") ? 2 :
	    session_has_cap(line, len, "LITERAL-") ? 1 : 0;
}

/* The command table entry that says whether l may carry literals. */
static int
session_literals_allowed(const struct imap_line *l)
{
	const struct imapcmd *c = l->command;

	if (c != NULL && c->args == IMAPCMD_ARGS_SUBCMD)
		c = imapcmd_find(l->subname);
	return c != NULL && c->literals;
}

/*
 * The first part of a client command is complete (at its first literal
 * header, or at the line end when it has none): decide whether it goes
 * to the backend or imapgate answers it.  Returns 1 to forward.
 * lit: the part ends with a literal header of len bytes; sync: "{n}",
 * which waits for an answer.
 */
static int
session_client_decide(struct session *s, const struct imap_line *l, int lit, int sync,
    uint64_t len)
{
	const struct imapcmd *c;
	enum imapcmd_class kind;

	if (s->client.replied)
		return 0;
	if (l->toolong) {
		session_guard_event(s, STATS_GUARD_LINE_TOOLONG);
		session_client_answer(s, "%s BAD Command line too long",
		    l->tag[0] != '\0' ? l->tag : "*");
		return 0;
	}
	if (l->tag[0] == '\0' || l->kind != IMAP_KIND_COMMAND || l->bad != NULL ||
	    (lit && (!session_literals_allowed(l) || l->strict != NULL)))
		session_guard_event(s, STATS_GUARD_INVALID_COMMAND);
	if (l->tag[0] == '\0') {
		session_client_answer(s, "* BAD Invalid tag");
		return 0;
	}
	if (l->kind != IMAP_KIND_COMMAND) {
		session_client_answer(s, "%s BAD Invalid command", l->tag);
		return 0;
	}
	if (l->bad != NULL) {
		/* No server can be trusted to frame it as we do: never forwarded. */
		session_client_answer(s, "%s BAD %s", l->tag, l->bad);
		return 0;
	}
	if (lit && !session_literals_allowed(l)) {
		session_client_answer(s, "%s BAD No literal allowed in %s", l->tag, l->name);
		return 0;
	}
	if (lit && l->strict != NULL) {
		/* A server stopping at this error would not read the literal. */
		session_client_answer(s, "%s BAD %s", l->tag, l->strict);
		return 0;
	}
	c = l->command;
	kind = c != NULL ? c->cls : IMAPCMD_UNKNOWN;
	if ((sync || (c != NULL && (c->starts == IMAPCMD_STARTS_SASL ||
	    c->starts == IMAPCMD_STARTS_IDLE))) && state_lookup(&s->st, l->tag, &kind)) {
		/* Its tagged answer would be taken for the one in flight. */
		session_client_answer(s, "%s BAD Tag already in use", l->tag);
		return 0;
	}
	kind = c != NULL ? c->cls : IMAPCMD_UNKNOWN;
	if (kind == IMAPCMD_STARTTLS && s->lc->tls == CONFIG_TLS_STARTTLS && !s->client_tls) {
		if (lit || s->st.ninflight > 0 || s->ninject > 0 ||
		    !session_backend_at_boundary(s)) {
			session_client_answer(s, "%s BAD STARTTLS must be sent alone", l->tag);
			return 0;
		}
		/*
		 * imapgate answers STARTTLS itself; the backend never sees it.
		 * Whatever the client pipelined behind it in plaintext is
		 * discarded when TLS starts (RFC 9051 6.2.1).
		 */
		session_client_answer(s, "%s OK Begin TLS negotiation now", l->tag);
		s->client.starttls = 1;
		return 0;
	}
	if (kind == IMAPCMD_LOGIN && s->lc->tls == CONFIG_TLS_STARTTLS && !s->client_tls &&
	    s->lc->require_tls) {
		/* RFC 9051 6.2.3: no credentials in cleartext. */
		session_client_answer(s, "%s NO [PRIVACYREQUIRED] Use STARTTLS first", l->tag);
		return 0;
	}
	if (kind == IMAPCMD_COMPRESS && s->lc->compress && s->st.proto != STATE_NOT_AUTH) {
		/*
		 * COMPRESS=DEFLATE is imapgate's (RFC 4978): answered here, never
		 * forwarded; the client leg is compressed from the byte after our
		 * OK, the backend leg stays plain.  Like STARTTLS, only alone: a
		 * response still coming would straddle the switch.
		 */
		if (endpoint_is_deflate(s->client.ep)) {
			session_client_answer(s, "%s NO [COMPRESSIONACTIVE] DEFLATE is active already",
			    l->tag);
			return 0;
		}
		if (lit || strcasecmp(l->arg, "DEFLATE") != 0) {
			session_client_answer(s, "%s BAD Only COMPRESS DEFLATE is known", l->tag);
			return 0;
		}
		if (s->st.ninflight > 0 || s->ninject > 0 || !session_backend_at_boundary(s) ||
		    s->cl != CLIENT_COMMAND) {
			session_client_answer(s, "%s BAD COMPRESS must be sent alone", l->tag);
			return 0;
		}
		session_client_answer(s, "%s OK DEFLATE active", l->tag);
		s->client.compress = 1;
		return 0;
	}
	if (kind == IMAPCMD_STARTTLS || kind == IMAPCMD_COMPRESS) {
		/*
		 * Either would change the byte stream under the parser; neither
		 * is offered on this listener (the capability filter removes them).
		 */
		session_guard_event(s, kind == IMAPCMD_STARTTLS ?
		    STATS_GUARD_STARTTLS_REFUSED : STATS_GUARD_COMPRESS_REFUSED);
		session_client_answer(s, "%s NO %s is not available here", l->tag, l->name);
		return 0;
	}
	if (s->gen->cf->guard_client_state == CONFIG_GUARD_BYE && c != NULL &&
	    c->needs >= IMAPCMD_NEEDS_AUTH &&
	    state_expected(&s->st) == STATE_NOT_AUTH) {
		/*
		 * The client believes it is logged in (a resumed TLS session, a
		 * backend that restarted under it).  An error answer would make
		 * it retry forever; BYE makes it reconnect and log in.
		 */
		session_guard_event(s, STATS_GUARD_CLIENT_STATE);
		session_bye_count(s, STATS_BYE_CLIENT_STATE);
		session_inject(s, "* BYE Not logged in: please reconnect and log in");
		session_client_answer(s, "%s BAD %s%s%s not allowed now", l->tag, l->name,
		    l->subname[0] ? " " : "", l->subname);
		session_finish(s, "client-state");
		return 0;
	}
	if (lit && !sync && !session_nonsync_ok(s, len)) {
		/* The backend would take the literal's bytes for commands. */
		session_client_answer(s, "%s BAD This server does not offer LITERAL+", l->tag);
		return 0;
	}
	return 1;
}

/* The client sent something imapgate cannot frame inside a command it already forwarded. */
static void
session_client_unframeable(struct session *s, const char *why)
{
	session_detail(s, "client: %s", why);
	session_bye_count(s, STATS_BYE_PROTOCOL);
	session_inject(s, "* BYE Unreadable command stream");
	session_finish(s, "client-protocol-error");
}

/*
 * A synchronizing literal will not be sent: imapgate or the backend
 * refused its command.  Bytes the client already sent behind the header
 * without waiting for "+" were meant as literal data: they are discarded
 * (up to the literal's length), never parsed as commands.
 */
void
session_client_cancel_literal(struct session *s, uint64_t len)
{
	struct session_half *h = &s->client;
	size_t have;

	imap_parse_literal_cancel(&h->parser);
	session_drop(h);
	have = endpoint_input_len(h->ep);
	if ((uint64_t)have > len)
		have = (size_t)len;
	if (have > 0) {
		log_debug("session=%s msg=literal-discarded bytes=%zu", s->id, have);
		endpoint_drop(h->ep, have);
	}
	session_client_reset(h);
}

/* Start the TLS handshake imapgate accepted with its STARTTLS answer. */
void
session_client_starttls(struct session *s)
{
	struct session_half *h = &s->client;

	session_set_client(s, CLIENT_TLS);
	event_base_gettimeofday_cached(s->srv->base, &s->tls_started);
	session_due(s, SESSION_DUE_GUARD, s->gen->cf->tls_handshake_ms);
	imap_parse_restart(&h->parser);
	if (endpoint_start_tls(h->ep, s->gen->tls) != 0)
		session_close(s, "client-tls-failed");
}

static void	session_client_event(struct session *, enum endpoint_event);

/* Switch the client leg to DEFLATE once our OK to COMPRESS has been queued. */
static void
session_client_compress(struct session *s)
{
	/* Our OK must go out uncompressed: it is written before the switch. */
	session_inject_flush(s);
	if (s->ninject > 0 || endpoint_start_deflate(s->client.ep) != 0) {
		if (s->ninject == 0 && endpoint_is_deflate(s->client.ep) &&
		    strncmp(endpoint_error(s->client.ep), "compress:", 9) == 0) {
			/*
			 * What the client sent behind COMPRESS is not deflate: our
			 * OK is out, so the compressed BYE of a broken stream.
			 */
			session_client_event(s, ENDPOINT_ERROR);
			return;
		}
		session_detail(s, "cannot start compression");
		session_close(s, "compress-failed");
		return;
	}
	log_debug("session=%s msg=compress-active", s->id);
}

/* A client line part ended with a literal header. */
static void
session_client_literal(struct session *s, const struct imap_event *ev)
{
	struct session_half *h = &s->client;
	const struct imap_line *l = imap_parse_current(&h->parser);

	if (h->forwarded) {
		if (l->bad != NULL || l->strict != NULL) {
			session_client_unframeable(s, l->bad != NULL ? l->bad : l->strict);
			return;
		}
		if (!ev->lit_sync && !session_nonsync_ok(s, ev->lit_len)) {
			session_client_unframeable(s, "LITERAL+ not offered by the server");
			return;
		}
	} else if (!session_client_decide(s, l, 1, ev->lit_sync, ev->lit_len) &&
	    s->life != SESSION_RELAY)
		return;		/* finishing */
	if (h->drop) {
		session_drop(h);
		if (ev->lit_sync)	/* no "+" from us: the literal is not coming */
			session_client_cancel_literal(s, ev->lit_len);
		return;		/* "{n+}": its bytes are dropped by count */
	}
	h->forwarded = 1;
	session_pass(h);
	if (ev->lit_sync) {
		memcpy(s->wait_tag, l->tag, sizeof(s->wait_tag));
		s->wait_len = ev->lit_len;
		session_set_client(s, CLIENT_WAIT_LITERAL);
		session_response_timer(s, 0);
	}
}

/* A complete SASL response line from the client (CLIENT_SASL). */
static void
session_client_sasl_line(struct session *s, const struct imap_line *l)
{
	static const char cancel[] = "*\r\n";
	struct session_half *h = &s->client;

	if (h->drop || l->toolong || l->bad != NULL) {
		/*
		 * Not something to forward (too long, not base64): cancel the
		 * exchange instead, so the AUTHENTICATE ends with the backend's
		 * own tagged answer.
		 */
		session_drop(h);
		session_guard_event(s, l->toolong || h->drop ? STATS_GUARD_LINE_TOOLONG :
		    STATS_GUARD_INVALID_COMMAND);
		endpoint_write(s->backend.ep, cancel, sizeof(cancel) - 1);
		session_trace_client(s, l, "sasl-cancel", sizeof(cancel) - 1, 1);
	} else {
		uint64_t n = h->pending;

		session_pass(h);
		session_trace_client(s, l, l->kind == IMAP_KIND_SASL_CANCEL ? "sasl-cancel" :
		    "sasl", n, 0);
		state_client_command(&s->st, l);
	}
	session_client_reset(h);
	session_set_client(s, CLIENT_WAIT_SASL);
	session_response_timer(s, 1);
}

/* A complete line from the client in IDLE: DONE goes on, anything else is answered. */
static void
session_client_idle_line(struct session *s, const struct imap_line *l)
{
	struct session_half *h = &s->client;

	if (l->kind == IMAP_KIND_DONE && !l->toolong && !h->drop) {
		uint64_t n = h->pending;

		session_pass(h);
		session_trace_client(s, l, "done", n, 0);
		session_client_reset(h);
		session_set_client(s, CLIENT_COMMAND);
		/* The backend owes the IDLE's tagged answer now. */
		session_response_timer(s, 1);
		return;
	}
	session_drop(h);
	session_client_reset(h);
	session_guard_event(s, l->toolong ? STATS_GUARD_LINE_TOOLONG : STATS_GUARD_INVALID_COMMAND);
	session_inject(s, "* BAD Expected DONE");
}

/* A complete client command line (CLIENT_COMMAND). */
static void
session_client_command_line(struct session *s, const struct imap_line *l)
{
	struct session_half *h = &s->client;
	const struct imapcmd *c;

	if (h->forwarded) {
		if (l->bad != NULL || l->strict != NULL || l->toolong) {
			session_client_unframeable(s, l->toolong ? "command line too long" :
			    l->bad != NULL ? l->bad : l->strict);
			return;
		}
	} else if (!session_client_decide(s, l, 0, 0, 0) || h->drop) {
		session_drop(h);
		/* The mode the parser entered for it never starts. */
		imap_parse_set_mode(&h->parser, IMAP_MODE_COMMAND);
		if (h->starttls) {
			session_client_reset(h);
			session_client_starttls(s);
			return;
		}
		if (h->compress) {
			session_client_reset(h);
			session_client_compress(s);
			return;
		}
		session_client_reset(h);
		return;
	}
	session_trace_client(s, l, "command", h->fwd_bytes + h->pending, 0);
	session_pass(h);
	if (state_client_command(&s->st, l) != 0) {
		/* Cannot happen while reading pauses at the limit; be safe anyway. */
		session_close(s, "too-many-in-flight");
		return;
	}
	state_stamp_last(&s->st, session_now_us(s));
	session_client_reset(h);
	c = l->command;
	if (c != NULL && (c->starts == IMAPCMD_STARTS_SASL || c->starts == IMAPCMD_STARTS_IDLE)) {
		memcpy(s->wait_tag, l->tag, sizeof(s->wait_tag));
		session_set_client(s, c->starts == IMAPCMD_STARTS_SASL ? CLIENT_WAIT_SASL :
		    CLIENT_WAIT_IDLE);
	}
	session_response_timer(s, 0);
}

/* A complete line from the client, in whatever mode the client half is. */
static void
session_client_line(struct session *s)
{
	struct session_half *h = &s->client;
	const struct imap_line *l = imap_parse_line(&h->parser);

	h->streaming = 0;
	switch (s->cl) {
	case CLIENT_SASL:
		session_client_sasl_line(s, l);
		break;
	case CLIENT_IDLE:
		session_client_idle_line(s, l);
		break;
	case CLIENT_STALE:
		/* Begun in a mode the backend has left: not a command, not for it. */
		session_drop(h);
		session_client_reset(h);
		imap_parse_set_mode(&h->parser, IMAP_MODE_COMMAND);
		session_set_client(s, CLIENT_COMMAND);
		break;
	default:
		session_client_command_line(s, l);
		break;
	}
}

/* The current client line passed max_line. */
static void
session_client_toolong(struct session *s)
{
	struct session_half *h = &s->client;

	if (s->cl == CLIENT_COMMAND && h->forwarded) {
		session_client_unframeable(s, "command line too long");
		return;
	}
	/* Never forwarded: dropped as it streams in, answered at its end. */
	h->drop = 1;
	h->streaming = 1;
	session_drop(h);
}

/*
 * One step of reading h: literal bytes the parser need not see are moved
 * on (keep) or dropped by count; anything else is fed to the parser.
 * Returns -1 when nothing can be done until more input comes, 0 after
 * moving literal bytes, 1 with *ev to act on.
 */
static int
session_step(struct session_half *h, int keep, struct imap_event *ev)
{
	struct imap_parser *p = &h->parser;
	size_t avail = endpoint_input_len(h->ep), len, used;
	uint64_t left = imap_parse_literal_left(p);
	const unsigned char *buf;

	if (left > 0 && h->pending == 0 && !imap_parse_literal_wanted(p)) {
		if (avail == 0)
			return -1;
		h->pending = left < avail ? (size_t)left : avail;
		len = h->pending;
		if (!keep)
			session_drop(h);
		else if (h == &h->s->client && h->s->life == SESSION_LOGIN)
			prelogin_take(h->s);	/* a LOGIN literal: imapgate reads it */
		else
			session_pass(h);
		imap_parse_skip(p, len);
		return 0;
	}
	if (avail <= h->pending)
		return -1;
	if ((buf = endpoint_peek(h->ep, h->pending, &len)) == NULL)
		len = 0;
	used = imap_parse_feed(p, buf, len, ev);
	h->pending += used;
	return used == 0 && ev->type == IMAP_EV_NONE ? -1 : 1;
}

/* Must the client not be read now?  Output full either way, too many commands, our replies queued. */
static int
session_client_blocked(const struct session *s)
{
	if (s->client.eof)
		return 0;	/* what it sent before closing is read regardless */
	return endpoint_output_full(s->client.ep) ||
	    (s->backend.ep != NULL && endpoint_output_full(s->backend.ep)) ||
	    state_inflight_full(&s->st) || s->ninject > SESSION_INJECT_HIGH || prelogin_busy(s);
}

/*
 * Parse what the client sent and act on it: forward, answer, or hold.
 * Lines are parsed in place and moved whole once judged; literal bytes
 * are moved by count, without being looked at.
 */
static void
session_client_run(struct session *s)
{
	struct session_half *h = &s->client;
	struct imap_event ev;
	int r;

	while (s->life == SESSION_RELAY || s->life == SESSION_LOGIN) {
		if (s->cl != CLIENT_COMMAND && s->cl != CLIENT_SASL && s->cl != CLIENT_IDLE &&
		    s->cl != CLIENT_STALE)
			return;	/* held until the backend answers */
		if (session_client_blocked(s))
			return;
		if ((r = session_step(h, !h->drop, &ev)) < 0)
			return;
		if (r == 0)
			continue;
		switch (ev.type) {
		case IMAP_EV_NONE:
			if (h->streaming)
				session_drop(h);
			break;
		case IMAP_EV_TOOLONG:
			session_client_toolong(s);
			break;
		case IMAP_EV_LITERAL_HEAD:
			if (s->life == SESSION_LOGIN)
				prelogin_literal(s, &ev);
			else
				session_client_literal(s, &ev);
			break;
		case IMAP_EV_LITERAL_DONE:
			if (h->drop)
				session_drop(h);
			else if (s->life == SESSION_LOGIN)
				prelogin_take(s);
			else
				session_pass(h);
			break;
		case IMAP_EV_LINE:
			if (s->life == SESSION_LOGIN)
				prelogin_line(s);
			else
				session_client_line(s);
			break;
		case IMAP_EV_ERROR:
			session_client_unframeable(s, h->parser.error);
			return;
		}
	}
}

/*
 * Arm, re-arm (reset) or stop the backend response timer: it runs while
 * the backend owes an answer (a command in flight, a literal or SASL
 * continuation asked for), except while the client holds the floor: in
 * IDLE before DONE, or after a "+" for a SASL response.
 */
static void
session_response_timer(struct session *s, int activity)
{
	uint64_t ms = s->gen->cf->backend_response_ms;
	int owed;

	if (!session_live(s) || ms == 0)
		return;
	owed = s->cl == CLIENT_WAIT_LITERAL || s->cl == CLIENT_WAIT_SASL ||
	    s->cl == CLIENT_WAIT_IDLE ||
	    (s->st.ninflight > 0 && s->cl != CLIENT_IDLE && s->cl != CLIENT_SASL);
	if (!owed) {
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
	s->backend.eof = 1;
	endpoint_read_enable(s->backend.ep, 0);
	s->backend.reading = 0;
	session_run(s);
	if (!session_live(s))
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
	enum imapcmd_class kind;
	enum stats_guard g;

	if (l->kind == IMAP_KIND_UNTAGGED && s->st.greeted &&
	    guard_is_greeting(cf, l, line, len))
		g = STATS_GUARD_DESYNC_GREETING;
	else if (l->kind == IMAP_KIND_TAGGED && state_lookup(&s->st, l->tag, &kind) &&
	    imapcmd_needs_login(kind) &&
	    (s->st.proto == STATE_SELECTED ||
	    (s->st.proto == STATE_AUTH && !imapcmd_needs_selected(kind))) &&
	    guard_is_wrong_state(cf, l, line, len))
		g = STATS_GUARD_DESYNC_STATE;
	else
		return 0;
	session_guard_event(s, g);
	if (cf->guard_desync != CONFIG_GUARD_BYE)
		return 0;
	session_drop(&s->backend);
	session_bye_count(s, STATS_BYE_DESYNC);
	session_inject(s, "* BYE [UNAVAILABLE] The server lost this session, please reconnect");
	session_finish(s, g == STATS_GUARD_DESYNC_GREETING ? "backend-greeted-again" :
	    "backend-desync");
	return 1;
}

/*
 * The client half waits for the backend's word: a "+" or the tagged
 * answer of the waiting command decides how its next bytes are framed.
 */
static void
session_client_decided(struct session *s, const struct imap_line *l)
{
	struct imap_parser *cp = &s->client.parser;

	if (s->cl == CLIENT_COMMAND || s->cl == CLIENT_TLS || s->cl == CLIENT_STALE)
		return;		/* nothing waits for the backend's word */
	if (l->kind == IMAP_KIND_CONTINUATION) {
		switch (s->cl) {
		case CLIENT_WAIT_LITERAL:
			session_set_client(s, CLIENT_COMMAND);	/* the literal follows */
			break;
		case CLIENT_WAIT_SASL:
			imap_parse_set_mode(cp, IMAP_MODE_SASL);
			session_set_client(s, CLIENT_SASL);
			break;
		case CLIENT_WAIT_IDLE:
			imap_parse_set_mode(cp, IMAP_MODE_IDLE);
			session_set_client(s, CLIENT_IDLE);
			break;
		default:
			break;
		}
		return;
	}
	if (l->kind != IMAP_KIND_TAGGED || strcmp(l->tag, s->wait_tag) != 0)
		return;
	switch (s->cl) {
	case CLIENT_WAIT_LITERAL:
		/* Refused instead of "+": the literal will not come, the command ends here. */
		session_trace_client(s, imap_parse_current(cp), "command", s->client.fwd_bytes, 0);
		session_client_cancel_literal(s, s->wait_len);
		session_set_client(s, CLIENT_COMMAND);
		break;
	case CLIENT_WAIT_SASL:
	case CLIENT_WAIT_IDLE:
		imap_parse_set_mode(cp, IMAP_MODE_COMMAND);
		session_set_client(s, CLIENT_COMMAND);
		break;
	case CLIENT_SASL:
	case CLIENT_IDLE:
		/* The backend ended the exchange on its own. */
		if (imap_parse_at_boundary(cp) && s->client.pending == 0) {
			imap_parse_set_mode(cp, IMAP_MODE_COMMAND);
			session_set_client(s, CLIENT_COMMAND);
		} else
			session_set_client(s, CLIENT_STALE);
		break;
	default:
		break;
	}
}

/* A complete server response has been parsed (BACKEND_READY). */
void
session_backend_line(struct session *s)
{
	struct session_half *h = &s->backend;
	const struct imap_line *l = imap_parse_line(&h->parser);
	const char *line = NULL;
	struct state_result res;
	struct guard_out out;

	if (l->nliterals == 0 && !l->toolong && h->pending > 0 &&
	    (l->status != IMAP_STATUS_NONE || strcasecmp(l->name, "CAPABILITY") == 0))
		line = (const char *)endpoint_pullup(h->ep, h->pending);
	session_trace_backend(s);
	if (line != NULL && session_backend_desync(s, l, line, h->pending))
		return;
	if (line != NULL)
		session_note_caps(s, l, line, h->pending);

	if (state_inflight_full(&s->st))
		s->rerun = 1;	/* this answer frees a slot: the client may be read again */
	state_server_response(&s->st, l, &res);
	if (res.completed && res.started_us > 0) {
		uint64_t now = session_now_us(s);
		stats_rtt(res.kind, now > res.started_us ? now - res.started_us : 0);
	}
	session_client_decided(s, l);
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
		session_drop(h);
		endpoint_write(s->client.ep, out.buf, out.len);
		free(out.buf);
	} else
		session_pass(h);
	session_inject_flush(s);
	if (s->client.eof && s->st.ninflight == 0) {
		session_finish(s, "client-eof");
		return;
	}
	session_response_timer(s, 1);
}

/*
 * A backend status line passed max_line.  Its head (tag, status word,
 * code) was read: rewrite that part as a short line would be rewritten,
 * and let the rest (its text) stream on unchanged.
 */
static void
session_backend_toolong(struct session *s)
{
	struct session_half *h = &s->backend;
	const struct imap_line *l = imap_parse_current(&h->parser);
	struct imap_line head;
	struct guard_out out;
	const unsigned char *b;
	size_t cut;
	char *line;

	h->streaming = 1;
	if (l->status == IMAP_STATUS_NONE || l->kind == IMAP_KIND_CONTINUATION) {
		session_pass(h);
		return;
	}
	/* Where the head ends: after a closed code, or before an unclosed one. */
	cut = l->code_off > 0 && l->code_end == 0 ? l->code_off :
	    l->text_off > 0 ? l->text_off : l->status_off;
	if (cut == 0 || cut > h->pending || (b = endpoint_pullup(h->ep, cut)) == NULL ||
	    (line = malloc(cut + 3)) == NULL) {
		session_pass(h);
		return;
	}
	/* The head with a one-byte stand-in for the text, which streams on. */
	memcpy(line, b, cut);
	memcpy(line + cut, "x\r\n", 3);
	head = *l;
	head.toolong = 0;
	if (l->code_off > 0 && l->code_end == 0)
		head.code[0] = '\0', head.code_off = head.code_end = 0;
	head.text_off = cut;
	if (guard_rewrite(s->gen->cf, &head, line, cut + 3, session_caps(s), &out) == 1 &&
	    out.len >= 3 && memcmp(out.buf + out.len - 3, "x\r\n", 3) == 0) {
		stats_rewrite(out.original);
		s->nrewrites++;
		endpoint_drop(h->ep, cut);
		h->pending -= cut;
		endpoint_write(s->client.ep, out.buf, out.len - 3);
	}
	if (out.buf != NULL)
		free(out.buf);
	free(line);
	session_pass(h);
}

/* Does the backend half parse its input now (greeting, setup answers, relay)? */
static int
session_backend_parsing(const struct session *s)
{
	return session_live(s) && (s->bk == BACKEND_GREETING || s->bk == BACKEND_STARTTLS ||
	    s->bk == BACKEND_ID || s->bk == BACKEND_CAPA || s->bk == BACKEND_AUTH ||
	    s->bk == BACKEND_READY);
}

/*
 * Parse what the backend sent and relay it, or, while imapgate sets the
 * backend up, read it itself: nothing of it reaches the client then but
 * the greeting it holds.
 */
static void
session_backend_run(struct session *s)
{
	struct session_half *h = &s->backend;
	struct imap_event ev;
	int relay, r;

	while (session_backend_parsing(s)) {
		relay = s->bk == BACKEND_READY;
		if (relay && endpoint_output_full(s->client.ep) && !h->eof)
			return;
		if ((r = session_step(h, relay, &ev)) < 0)
			return;
		if (r == 0)
			continue;
		switch (ev.type) {
		case IMAP_EV_NONE:
			if (h->streaming)
				relay ? session_pass(h) : session_drop(h);
			break;
		case IMAP_EV_TOOLONG:
			if (relay)
				session_backend_toolong(s);
			else {
				h->streaming = 1;
				session_drop(h);
			}
			break;
		case IMAP_EV_LITERAL_HEAD:
		case IMAP_EV_LITERAL_DONE:
			relay ? session_pass(h) : session_drop(h);
			break;
		case IMAP_EV_LINE:
			h->streaming = 0;
			if (relay)
				session_backend_line(s);
			else
				backend_setup_line(s);
			break;
		case IMAP_EV_ERROR:
			session_detail(s, "backend: %s", h->parser.error);
			session_close(s, "backend-protocol-error");
			return;
		}
	}
}

/* Turn reading of h on or off, through the endpoint only when it changes. */
static void
session_read(struct session_half *h, int on)
{
	if (h->ep == NULL || h->reading == on || h->eof)
		return;
	h->reading = on;
	endpoint_read_enable(h->ep, on);
}

/*
 * Backpressure: read a side only while what it would produce has room.
 * The client is not read while its own output is full (imapgate's
 * replies go there too), the backend's output is full, too many commands
 * are in flight, or the client waits for the backend's word (its
 * buffered input is bounded by the endpoint's read limit).  The backend
 * is not read while the client's output is full.
 */
static void
session_flow(struct session *s)
{
	if (!session_live(s))
		return;
	/* Reading stays on in CLIENT_TLS: the handshake needs it (nothing is parsed then). */
	/*
	 * While a login is looked up or answered (route: login), the client is
	 * not parsed but still read, up to the input limit: a client that
	 * leaves is noticed at once and its lookup abandoned.
	 */
	session_read(&s->client, !session_client_blocked(s) || prelogin_busy(s));
	if (s->backend.ep != NULL)
		session_read(&s->backend, s->bk != BACKEND_READY ||
		    !endpoint_output_full(s->client.ep));
}

/*
 * Run the session until neither side can make progress: the backend
 * first (its answers decide how the client's bytes are framed), then
 * the client.  Endpoint callbacks and timers only call this; it never
 * re-enters itself, so no handler runs under another.
 */
void
session_run(struct session *s)
{
	if (s->running) {
		s->rerun = 1;
		return;
	}
	s->running = 1;
	/*
	 * Each side is read until it blocks; another round is needed only
	 * when one side's work may have unblocked the other (rerun: a
	 * lifecycle change, our replies written, room in the in-flight table).
	 */
	do {
		s->rerun = 0;
		if (session_backend_parsing(s))
			session_backend_run(s);
		if (s->life == SESSION_RELAY || s->life == SESSION_LOGIN)
			session_client_run(s);
		session_drain_check(s);
	} while (s->rerun && session_live(s));
	session_flow(s);
	s->running = 0;
	/* Idle sessions hold no parser buffers. */
	if (s->backend.pending == 0)
		imap_parse_release(&s->backend.parser);
	if (s->client.pending == 0)
		imap_parse_release(&s->client.parser);
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
	session_run(s);
}

/* One side's output drained to the low mark: whatever waited for room goes on. */
static void
session_drained(struct endpoint *ep, void *arg)
{
	struct session *s = arg;

	(void)ep;
	if (!session_live(s))
		return;
	session_run(s);
}

/* The client's end of the stream, or an error on it. */
static void
session_client_event(struct session *s, enum endpoint_event what)
{
	struct endpoint *ep = s->client.ep;

	if (what == ENDPOINT_ERROR && !s->client_tls && endpoint_is_tls(ep))
		stats_name_add(&stats.tls_failures,
		    strncmp(endpoint_error(ep), "tls: ", 5) == 0 ?
		    endpoint_error(ep) + 5 : endpoint_error(ep));
	if (what == ENDPOINT_ERROR && endpoint_is_deflate(ep) &&
	    strncmp(endpoint_error(ep), "compress:", 9) == 0 && session_live(s)) {
		/* A broken deflate stream: nothing more can be read; say so, then close. */
		session_detail(s, "%s", endpoint_error(ep));
		session_bye_count(s, STATS_BYE_PROTOCOL);
		endpoint_write(ep, "* BYE Compression error\r\n", 25);
		session_finish(s, "client-compress-error");
		return;
	}
	if (what == ENDPOINT_EOF && (s->life == SESSION_LOGIN ||
	    (s->life == SESSION_SETUP && s->pl != NULL))) {
		session_close(s, "client-eof");
		return;
	}
	if (what == ENDPOINT_ERROR || s->life != SESSION_RELAY) {
		session_close(s, "client-error");
		return;
	}
	/*
	 * A half-close: what the client sent still goes through the parser
	 * and the guard, and the answers to commands in flight (a pipelined
	 * LOGOUT, say) still reach it, for a bounded time.  Over TLS the end
	 * of the client's stream ends the connection (libevent stops writing
	 * too), so only what it sent is passed on.
	 */
	s->client.eof = 1;
	s->client.reading = 0;
	session_run(s);
	endpoint_read_enable(ep, 0);
	if (!session_live(s))
		return;
	if (s->st.ninflight == 0 || endpoint_is_tls(ep)) {
		session_close(s, "client-eof");
		return;
	}
	session_due(s, SESSION_DUE_PHASE, SESSION_FLUSH_TIMEOUT_MS);
}

/* Connection events from either side. */
static void
session_event(struct endpoint *ep, enum endpoint_event what, void *arg)
{
	struct session *s = arg;
	struct session_half *h = session_half_of(s, ep);

	if (s->life == SESSION_CLOSED)
		return;
	if (what == ENDPOINT_FLUSHED) {
		if (h == &s->client)
			session_close(s, s->reason);
		return;
	}
	if (h == &s->backend && what == ENDPOINT_CONNECTED) {
		backend_up(s);
		session_run(s);
		return;
	}
	if (h == &s->client && what == ENDPOINT_CONNECTED) {
		const char *sni = endpoint_sni(ep);
		char esc[4 * 256 + 8];

		s->client_tls = 1;
		stats_add(&stats.tls_handshakes, 1);
		log_debug("session=%s msg=tls-established tls=%s cipher=%s sni=\"%s\"", s->id,
		    endpoint_tls_version(ep), endpoint_tls_cipher(ep),
		    sni ? logesc_quote(sni, esc, sizeof(esc)) : "");
		if (s->cl == CLIENT_TLS) {
			session_set_client(s, CLIENT_COMMAND);
			prelogin_tls_started(s);
		} else if (s->life == SESSION_LOGIN && s->pl == NULL && !s->refusal)
			/* route: login on implicit TLS: greet once the handshake is done. */
			prelogin_start(s);
		else if (s->life == SESSION_SETUP && s->bk == BACKEND_NONE && !s->refusal)
			/* Implicit TLS: the backend only for a client that finished its handshake. */
			backend_connect(s);
		session_run(s);
		return;
	}
	if (what == ENDPOINT_ERROR)
		session_detail(s, "%s", endpoint_error(ep));
	if (h == &s->client) {
		session_client_event(s, what);
		return;
	}
	if (s->life == SESSION_FINISHING)
		return;
	if (s->life == SESSION_SETUP) {
		backend_failover(s, what == ENDPOINT_EOF ? "closed before the greeting" :
		    endpoint_error(ep));
		session_run(s);
		return;
	}
	session_backend_lost(s, what == ENDPOINT_EOF ? "backend-eof" : "backend-error");
}

/* Connect timeout (before the backend is up) or flush timeout (while finishing). */
static void
session_phase_timeout(struct session *s)
{
	if (s->life == SESSION_FINISHING) {
		session_close(s, s->reason);
		return;
	}
	if (s->life == SESSION_LOGIN) {
		prelogin_timeout(s);	/* a failed login's delay is over */
		return;
	}
	if (s->client.eof) {
		session_close(s, "client-eof");
		return;
	}
	if (s->life == SESSION_SETUP)
		backend_failover(s, "connect timeout");
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
	if (s->life == SESSION_CLOSED || min == 0 || (s->armed != 0 && s->armed <= min))
		return;
	now = session_now_us(s);
	tv.tv_sec = min > now ? (time_t)((min - now) / 1000000) : 0;
	tv.tv_usec = min > now ? (suseconds_t)((min - now) % 1000000) : 0;
	evtimer_add(s->ev_timer, &tv);
	s->armed = min;
}

/* Set deadline d to ms from now. */
void
session_due(struct session *s, enum session_due d, uint64_t ms)
{
	s->due[d] = session_now_us(s) + ms * 1000;
	session_timer_arm(s);
}

/*
 * Clear deadline d.  The timer stays set: it fires once for nothing and
 * re-arms for what is left, cheaper than a timer operation per command.
 */
void
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
	if (s->life != SESSION_CLOSED && s->due[SESSION_DUE_RESPONSE] != 0 &&
	    s->due[SESSION_DUE_RESPONSE] <= now) {
		s->due[SESSION_DUE_RESPONSE] = 0;
		session_response_timeout(s);
	}
	if (s->life != SESSION_CLOSED && s->due[SESSION_DUE_GUARD] != 0 &&
	    s->due[SESSION_DUE_GUARD] <= now) {
		s->due[SESSION_DUE_GUARD] = 0;
		session_guard_check(s);
	}
	if (s->life != SESSION_CLOSED && s->due[SESSION_DUE_DRAIN] != 0 &&
	    s->due[SESSION_DUE_DRAIN] <= now) {
		s->due[SESSION_DUE_DRAIN] = 0;
		s->draining = 1;
	}
	if (session_live(s))
		session_run(s);
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

	if (!session_live(s))
		return;
	event_base_gettimeofday_cached(s->srv->base, &now);
	timersub(&now, &s->start, &age);
	timersub(&now, &s->last_activity, &idle);
	age_ms = (uint64_t)age.tv_sec * 1000 + (uint64_t)age.tv_usec / 1000;
	idle_ms = (uint64_t)idle.tv_sec * 1000 + (uint64_t)idle.tv_usec / 1000;

	if ((s->lc->tls == CONFIG_TLS_IMPLICIT && !s->client_tls) || s->cl == CLIENT_TLS) {
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
	if (cf->idle_keepalive_ms > 0 && s->life == SESSION_RELAY) {
		/*
		 * IDLE keepalive: nothing went to the client for idle_keepalive,
		 * so NAT boxes and mobile networks may forget the connection.
		 * An untagged OK at a response boundary (session_inject waits for
		 * one) keeps it alive; RFC 2177 lets the server send any
		 * untagged response during IDLE.
		 */
		uint64_t out = endpoint_bytes_out(s->client.ep), now_us = session_now_us(s);
		uint64_t quiet;

		if (out != s->ka_bytes || s->ka_since == 0) {
			s->ka_bytes = out;
			s->ka_since = now_us;
		}
		quiet = (now_us - s->ka_since) / 1000;
		if (s->cl == CLIENT_IDLE && quiet >= cf->idle_keepalive_ms) {
			session_inject(s, "* OK Still here");
			s->ka_since = now_us;
		}
		/*
		 * Looked at four times per period: the client's output is only
		 * sampled here, so a keepalive comes 1 to 1.25 periods after
		 * the last byte, whenever IDLE began.
		 */
		if (cf->idle_keepalive_ms / 4 + 1 < next)
			next = cf->idle_keepalive_ms / 4 + 1;
	}
	if (idle_ms >= SESSION_DEFLATE_IDLE_MS && s->client.ep != NULL)
		endpoint_deflate_idle(s->client.ep);	/* an idle compressed session keeps less */
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

/*
 * May one more refused client get a TLS handshake to read its BYE?  Within
 * SESSION_REFUSE_TLS_PER_SEC a second and SESSION_REFUSE_HELD at a time;
 * approximate across workers (a race lets a few more through), never
 * unbounded.
 */
static int
session_refuse_budget(void)
{
	struct timespec ts;
	uint64_t now, cur, next;

	if (__atomic_load_n(&session_refusing, __ATOMIC_RELAXED) >= SESSION_REFUSE_HELD)
		return 0;
	clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
	now = (uint64_t)ts.tv_sec;
	cur = __atomic_load_n(&session_refuse_slot, __ATOMIC_RELAXED);
	next = (cur >> 20) == now ? cur + 1 : now << 20 | 1;
	if ((next & 0xfffff) > SESSION_REFUSE_TLS_PER_SEC)
		return 0;
	return __atomic_compare_exchange_n(&session_refuse_slot, &cur, next, 0,
	    __ATOMIC_RELAXED, __ATOMIC_RELAXED);
}

/*
 * A limit said no, before any work for this client: no backend connection,
 * no session on plaintext and STARTTLS listeners (the BYE goes out with
 * one send), a TLS handshake within the refusal budget on implicit-TLS
 * listeners, and a close at accept past it.  Returns 1 if fd was handled.
 */
static int
session_refuse(struct server *srv, const struct config_listen *lc, int fd,
    const struct sockaddr *sa, enum connlimit_verdict v)
{
	static const char total[] = "* BYE [UNAVAILABLE] Too many connections, try again later\r\n";
	static const char perip[] = "* BYE [UNAVAILABLE] Too many connections from your address\r\n";
	const char *bye = v == CONNLIMIT_TOTAL ? total : perip;
	const char *reason = v == CONNLIMIT_TOTAL ? "limit-total" : "limit-per-ip";
	char addr[NETADDR_STRLEN];

	(void)srv;
	if (lc->tls == CONFIG_TLS_IMPLICIT && session_refuse_budget())
		return 0;	/* a refusal session: handshake, BYE, close */
	stats_add(&stats.sessions_total, 1);
	stats_add(&stats.sessions_ended, 1);
	if (lc->tls != CONFIG_TLS_IMPLICIT) {
		/* A fresh socket's buffer takes one line: nothing waits, nothing is held. */
		(void)send(fd, bye, strlen(bye), MSG_DONTWAIT | MSG_NOSIGNAL);
		stats_add(&stats.bye[STATS_BYE_LIMIT], 1);
		stats_name_add(&stats.ended, reason);
	} else
		stats_name_add(&stats.ended, v == CONNLIMIT_TOTAL ? "limit-total-closed" :
		    "limit-per-ip-closed");
	close(fd);
	if (ratelog_allow(RATELOG_REFUSAL))
		log_info("msg=refused client=%s listen=%s reason=%s%s", netaddr_str(sa, addr,
		    sizeof(addr)), lc->address, reason,
		    lc->tls == CONFIG_TLS_IMPLICIT ? " closed=1" : "");
	return 1;
}

/* Start a session that only says BYE (a limit said no) and closes within SESSION_REFUSE_MS. */
static void
session_reject(struct session *s, const char *text, const char *reason)
{
	s->refusal = 1;
	__atomic_fetch_add(&session_refusing, 1, __ATOMIC_RELAXED);
	endpoint_write(s->client.ep, text, strlen(text));
	session_bye_count(s, STATS_BYE_LIMIT);
	session_finish(s, reason);
	session_due(s, SESSION_DUE_PHASE, SESSION_REFUSE_MS);
	session_due(s, SESSION_DUE_GUARD, SESSION_REFUSE_MS);
}

/* Accept: apply the limits first, wrap the client socket, and start the backend connection. */
void
session_start(struct server *srv, const struct config_listen *lc, int fd,
    const struct sockaddr *sa, socklen_t salen, const struct sockaddr *local,
    socklen_t locallen)
{
	struct generation *gen = srv->gen;
	const struct config *cf = gen->cf;
	enum connlimit_verdict v;
	struct session *s;

	v = connlimit_acquire(srv->gate->limits, sa);
	if (v != CONNLIMIT_OK && session_refuse(srv, lc, fd, sa, v))
		return;
	if ((s = calloc(1, sizeof(*s))) == NULL) {
		if (v == CONNLIMIT_OK)
			connlimit_release(srv->gate->limits, sa);
		close(fd);
		return;
	}
	s->limited = v == CONNLIMIT_OK;
	s->srv = srv;
	s->gen = generation_ref(gen);
	s->lc = lc;
	s->server = -1;
	s->life = cf->route == CONFIG_ROUTE_LOGIN ? SESSION_LOGIN : SESSION_SETUP;
	s->route = cf->route == CONFIG_ROUTE_LOGIN ? NULL : "connect";
	s->cl = CLIENT_COMMAND;
	s->bk = BACKEND_NONE;
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
	s->client.reading = 1;
	endpoint_set_limits(s->client.ep, cf->buffer, cf->buffer + cf->max_line);
	log_debug("session=%s msg=accepted client=%s listen=%s", s->id,
	    s->client_addr, lc->address);
	session_due(s, SESSION_DUE_GUARD,
	    lc->tls == CONFIG_TLS_IMPLICIT && cf->tls_handshake_ms < cf->preauth_ms ?
	    cf->tls_handshake_ms : cf->preauth_ms);

	switch (v) {
	case CONNLIMIT_TOTAL:
		session_reject(s, "* BYE [UNAVAILABLE] Too many connections, try again later\r\n",
		    "limit-total");
		return;
	case CONNLIMIT_PER_IP:
		session_reject(s, "* BYE [UNAVAILABLE] Too many connections from your address\r\n",
		    "limit-per-ip");
		return;
	case CONNLIMIT_OK:
		break;
	}
	/*
	 * Plaintext and STARTTLS clients see the greeting at once; an
	 * implicit-TLS client gets a backend once its handshake is done, so
	 * a flood of silent connections opens none.
	 */
	if (lc->tls == CONFIG_TLS_IMPLICIT)
		return;
	if (cf->route == CONFIG_ROUTE_LOGIN)
		prelogin_start(s);	/* imapgate greets; the login picks the backend */
	else
		backend_connect(s);
}

/* Is the client address a inside network c? */
static int
session_in_cidr(const union session_addr *a, const struct config_cidr *c)
{
	const unsigned char *b;
	unsigned char v4[16];
	unsigned bits = c->prefix;

	if (a->sa.sa_family == AF_INET) {
		if (c->family == AF_INET)
			b = (const unsigned char *)&a->sin.sin_addr;
		else {
			/* A v4 client matches a v4-mapped v6 network too. */
			memset(v4, 0, 10);
			v4[10] = v4[11] = 0xff;
			memcpy(v4 + 12, &a->sin.sin_addr, 4);
			b = v4;
		}
	} else if (a->sa.sa_family == AF_INET6 && c->family == AF_INET6)
		b = (const unsigned char *)&a->sin6.sin6_addr;
	else
		return 0;
	for (unsigned i = 0; bits > 0; i++, bits = bits >= 8 ? bits - 8 : 0) {
		unsigned char m = bits >= 8 ? 0xff : (unsigned char)(0xff << (8 - bits));

		if ((b[i] & m) != (c->addr[i] & m))
			return 0;
	}
	return 1;
}

/* Does s match the control socket's filter? */
int
session_match(const struct session *s, const struct control_filter *f)
{
	char bk[NETADDR_STRLEN];

	if (s->life == SESSION_CLOSED)
		return 0;
	if (f->id[0] != '\0' && strcmp(f->id, s->id) != 0)
		return 0;
	if (f->user != NULL && strcasecmp(f->user, state_user(&s->st)) != 0)
		return 0;
	if (f->state >= 0 && (int)s->st.proto != f->state)
		return 0;
	if (f->server != NULL) {
		const char *name = s->server >= 0 ? pool_name(s->gen->pool, s->server) :
		    s->baddr.len > 0 ? netaddr_str((const struct sockaddr *)&s->baddr.ss, bk,
		    sizeof(bk)) : "";

		if (strcmp(f->server, name) != 0)
			return 0;
	}
	if (f->has_cidr && !session_in_cidr(&s->client_ss, &f->cidr))
		return 0;
	return 1;
}

/* Append one line (a table row, or a JSON object) describing s to out. */
void
session_describe(const struct session *s, int json, struct evbuffer *out)
{
	char bk[NETADDR_STRLEN], user[LOGESC_JSON_SIZE(IMAP_MAX_ARG)];
	char mbox[LOGESC_JSON_SIZE(IMAP_MAX_ARG)];
	uint64_t now = session_now_us(s), start, last;
	const char *server = s->server >= 0 ? pool_name(s->gen->pool, s->server) :
	    s->baddr.len > 0 ? netaddr_str((const struct sockaddr *)&s->baddr.ss, bk,
	    sizeof(bk)) : "-";

	start = (uint64_t)s->start.tv_sec * 1000000 + (uint64_t)s->start.tv_usec;
	last = (uint64_t)s->last_activity.tv_sec * 1000000 + (uint64_t)s->last_activity.tv_usec;
	/* Peer-controlled values are escaped: logesc quotes for the table, JSON rules in JSON. */
	if (json) {
		logesc_json(state_user(&s->st), user, sizeof(user));
		logesc_json(state_mailbox(&s->st), mbox, sizeof(mbox));
	} else {
		logesc_quote(state_user(&s->st), user, sizeof(user));
		logesc_quote(state_mailbox(&s->st), mbox, sizeof(mbox));
	}
	if (json)
		evbuffer_add_printf(out, "{\"id\":\"%s\",\"client\":\"%s\",\"user\":\"%s\","
		    "\"server\":\"%s\",\"state\":\"%s\",\"mailbox\":\"%s\",\"age_ms\":%llu,"
		    "\"idle_ms\":%llu,\"bytes_in\":%llu,\"bytes_out\":%llu,\"route\":\"%s\"}",
		    s->id, s->client_addr, user, server, state_name(s->st.proto), mbox,
		    (unsigned long long)(now > start ? (now - start) / 1000 : 0),
		    (unsigned long long)(now > last ? (now - last) / 1000 : 0),
		    (unsigned long long)(s->client.ep ? endpoint_bytes_in(s->client.ep) : 0),
		    (unsigned long long)(s->client.ep ? endpoint_bytes_out(s->client.ep) : 0),
		    s->route != NULL ? s->route : "-");
	else
		evbuffer_add_printf(out, "%-14s %-23s %-24s %-23s %-16s %-16s %8llu %8llu %10llu "
		    "%10llu\n", s->id, s->client_addr, user[0] ? user : "-", server,
		    state_name(s->st.proto), mbox[0] ? mbox : "-",
		    (unsigned long long)(now > start ? (now - start) / 1000000 : 0),
		    (unsigned long long)(now > last ? (now - last) / 1000000 : 0),
		    (unsigned long long)(s->client.ep ? endpoint_bytes_in(s->client.ep) : 0),
		    (unsigned long long)(s->client.ep ? endpoint_bytes_out(s->client.ep) : 0));
}
