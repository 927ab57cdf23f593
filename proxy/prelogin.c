/*
 * prelogin: the dialog before login when backend.route is login.
 *
 * imapgate is the server here: its own greeting, its own answers (login.c
 * decides them from each complete command), the user's credentials taken
 * whole, the lookup that names the user's backend, and, once backend.c
 * has logged the user in there, the one tagged answer the client gets.
 * A failed login comes back here: the client may try again.
 *
 * Framing is the session's, as in relay: the parser finds where each
 * command ends and the lexer's verdicts (bad, strict, too long) are
 * answered before anything is parsed here.  The difference is where the
 * bytes go: into a bounded buffer of ours instead of to a backend, and a
 * synchronizing literal gets its "+" from imapgate.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <ctype.h>

#include <event2/event.h>

#include "authhttp.h"
#include "backend.h"
#include "config.h"
#include "connlimit.h"
#include "control.h"
#include "endpoint.h"
#include "imapcmd.h"
#include "log.h"
#include "logesc.h"
#include "login.h"
#include "netaddr.h"
#include "pool.h"
#include "prelogin.h"
#include "server.h"
#include "session.h"
#include "session_priv.h"
#include "usermap.h"

/* Bytes of one command (or SASL line) taken whole: the longest SASL response and a line. */
#define PRELOGIN_MAX_COMMAND	(LOGIN_MAX_SASL + 1024)
/* BAD answers before login after which the session ends (WildDuck: 50). */
#define PRELOGIN_MAX_BADS	50
/* A failed login's delay grows with the address's failures up to this. */
#define PRELOGIN_DELAY_MAX_MS	15000
/* Longest lookup key (a user name or its domain). */
#define PRELOGIN_MAX_KEY	LOGIN_MAX_USER

static void	prelogin_route(struct session *);

/* The mechanism's name for log lines. */
static const char *
prelogin_mech_name(enum login_mech m)
{
	switch (m) {
	case LOGIN_MECH_LOGIN_CMD:	return "login";
	case LOGIN_MECH_PLAIN:		return "plain";
	case LOGIN_MECH_LOGIN:		return "sasl-login";
	case LOGIN_MECH_XOAUTH2:	return "xoauth2";
	case LOGIN_MECH_OAUTHBEARER:	return "oauthbearer";
	default:			return "-";
	}
}

/* The flags login.c needs for this listener and connection. */
static unsigned
prelogin_flags(const struct session *s)
{
	unsigned f = 0;

	if (s->client_tls)
		f |= LOGIN_CTX_TLS;
	if (s->lc->tls == CONFIG_TLS_STARTTLS && !s->client_tls) {
		f |= LOGIN_CTX_STARTTLS;
		if (s->lc->require_tls)
			f |= LOGIN_CTX_LOGINDISABLED;
	}
	if (s->gen->cf->login_oauth)
		f |= LOGIN_CTX_OAUTH;
	return f;
}

/* Greet the client as the server: route: login, the client's TLS (if any) is up. */
int
prelogin_start(struct session *s)
{
	struct prelogin *pl;
	char g[LOGIN_MAX_CAPS + LOGIN_MAX_GREETING_TEXT + 32];
	int n;

	if ((pl = calloc(1, sizeof(*pl))) == NULL) {
		session_close(s, "out-of-memory");
		return -1;
	}
	s->pl = pl;
	login_ctx_init(&pl->ctx, prelogin_flags(s));
	if ((n = login_greeting(&pl->ctx, s->gen->cf->login_greeting, g, sizeof(g))) < 0) {
		session_close(s, "out-of-memory");
		return -1;
	}
	endpoint_write(s->client.ep, g, (size_t)n);
	log_debug("session=%s msg=greeted route=login", s->id);
	return 0;
}

/* Wipe the command buffer (it may hold a password) and give it back. */
static void
prelogin_buf_clear(struct prelogin *pl)
{
	if (pl->buf != NULL) {
		explicit_bzero(pl->buf, pl->len);
		free(pl->buf);
	}
	pl->buf = NULL;
	pl->len = 0;
	pl->overflow = 0;
}

/* Free the dialog's state: every credential wiped, a lookup in flight abandoned. */
void
prelogin_free(struct session *s)
{
	struct prelogin *pl = s->pl;

	if (pl == NULL)
		return;
	authhttp_cancel(pl->req);
	prelogin_buf_clear(pl);
	login_creds_wipe(&pl->creds);
	login_ctx_free(&pl->ctx);
	free(pl->postcaps);
	free(pl->ok_text);
	free(pl);
	s->pl = NULL;
}

/* Must the client wait (a login under way, or a failure's delay)? */
int
prelogin_busy(const struct session *s)
{
	return s->pl != NULL && s->pl->busy;
}

/* The client's parsed bytes of the current command: into our buffer, bounded. */
void
prelogin_take(struct session *s)
{
	struct session_half *h = &s->client;
	struct prelogin *pl = s->pl;
	const unsigned char *b;
	size_t n = h->pending;

	if (n == 0)
		return;
	if (!pl->overflow && pl->len + n <= PRELOGIN_MAX_COMMAND) {
		if (pl->buf == NULL && (pl->buf = malloc(PRELOGIN_MAX_COMMAND)) == NULL)
			pl->overflow = 1;
		else if ((b = endpoint_pullup(h->ep, n)) == NULL)
			pl->overflow = 1;
		else {
			memcpy(pl->buf + pl->len, b, n);
			pl->len += n;
		}
	} else
		pl->overflow = 1;
	stats_add(&stats.client_in, n);
	session_drop(h);
}

/* Answer the current command ourselves: its bytes are dropped, not parsed. */
static void
prelogin_answer(struct session *s, const char *tag, const char *text)
{
	struct session_half *h = &s->client;
	struct prelogin *pl = s->pl;

	h->drop = 1;
	if (h->replied)
		return;
	h->replied = 1;
	if (strncmp(text, "BAD", 3) == 0)
		pl->ctx.bads++;
	session_inject(s, "%s %s", tag[0] != '\0' ? tag : "*", text);
}

/* The lexer's verdict on a command line: NULL to take it, else the answer. */
static const char *
prelogin_verdict(const struct imap_line *l)
{
	if (l->toolong)
		return "BAD Command line too long";
	if (l->tag[0] == '\0')
		return "BAD Invalid tag";
	if (l->kind != IMAP_KIND_COMMAND)
		return "BAD Invalid command";
	if (l->bad != NULL)
		return l->bad;
	return NULL;
}

/*
 * A literal header in a command before login.  Only LOGIN and ID take
 * literals here (a password with special characters, an ID value); the
 * whole command must fit PRELOGIN_MAX_COMMAND.  imapgate is the server:
 * it says "+" to a synchronizing literal itself.
 */
void
prelogin_literal(struct session *s, const struct imap_event *ev)
{
	struct session_half *h = &s->client;
	struct prelogin *pl = s->pl;
	const struct imap_line *l = imap_parse_current(&h->parser);
	const char *why = prelogin_verdict(l);
	char bad[160];

	if (why == NULL && strcmp(l->name, "LOGIN") != 0 && strcmp(l->name, "ID") != 0) {
		snprintf(bad, sizeof(bad), "BAD No literal allowed in %s before login", l->name);
		why = bad;
	}
	if (why == NULL && l->strict != NULL)
		why = l->strict;
	if (why == NULL && (ev->lit8 || pl->overflow ||
	    ev->lit_len > PRELOGIN_MAX_COMMAND ||
	    pl->len + h->pending + ev->lit_len > PRELOGIN_MAX_COMMAND))
		why = "BAD Command too long";
	if (why != NULL || h->drop) {
		if (why != NULL) {
			char text[200];

			snprintf(text, sizeof(text), "%s%s", strncmp(why, "BAD ", 4) == 0 ||
			    strncmp(why, "NO ", 3) == 0 ? "" : "BAD ", why);
			session_guard_event(s, l->toolong ? STATS_GUARD_LINE_TOOLONG :
			    STATS_GUARD_INVALID_COMMAND);
			prelogin_answer(s, l->tag, text);
		}
		session_drop(h);
		if (ev->lit_sync)
			session_client_cancel_literal(s, ev->lit_len);
		return;
	}
	prelogin_take(s);
	if (ev->lit_sync)
		session_inject(s, "+ Ready for literal data");
}

/* Lower-case ASCII copy of user (or its domain, backend.lookup.key) as the lookup key. */
static int
prelogin_key(struct session *s, const char *user)
{
	struct prelogin *pl = s->pl;
	const char *k = user, *at;
	size_t n;

	if (s->gen->cf->lookup_key == CONFIG_LOOKUP_KEY_DOMAIN) {
		if ((at = strrchr(user, '@')) == NULL)
			return -1;	/* no domain: nothing to route by */
		k = at + 1;
	}
	n = strlen(k);
	if (n == 0 || n >= sizeof(pl->key))
		return -1;
	for (size_t i = 0; i < n; i++)
		pl->key[i] = (char)tolower((unsigned char)k[i]);
	pl->key[n] = '\0';
	pl->keylen = n;
	return 0;
}

/* Log a login that failed, once, with what fail2ban needs. */
static void
prelogin_log_failed(struct session *s, const char *why, unsigned fails, uint64_t delay_ms)
{
	char user[LOGESC_SIZE(LOGIN_MAX_USER)], esc[LOGESC_SIZE(SESSION_DETAIL_MAX)];
	char ip[INET6_ADDRSTRLEN];
	unsigned port;

	netaddr_ip((const struct sockaddr *)&s->client_ss, ip, sizeof(ip), &port);
	log_info("session=%s msg=login-failed client_ip=%s user=\"%s\" route=%s reason=\"%s\" "
	    "failures=%u delay_ms=%llu", s->id, ip,
	    logesc_quote(s->pl->creds.user != NULL ? s->pl->creds.user : "", user, sizeof(user)),
	    s->route != NULL ? s->route : "-", logesc_quote(why, esc, sizeof(esc)), fails,
	    (unsigned long long)delay_ms);
}

/*
 * The login did not happen.  auth: the credentials were refused (the
 * lookup or the backend said so): counted against the client's address
 * and answered after a delay that grows with its failures; otherwise
 * (no server, lookup broken) at once.  The client may try again.
 */
void
prelogin_failed(struct session *s, int auth, const char *code, const char *why)
{
	struct prelogin *pl = s->pl;
	const struct config *cf = s->gen->cf;
	uint64_t delay = 0;
	unsigned fails = 0;
	int n;

	if (s->life == SESSION_SETUP)
		session_set_life(s, SESSION_LOGIN);
	stats_name_add(&stats.logins, auth ? "failed" : "unavailable");
	if (auth) {
		fails = connlimit_login_failed(s->srv->gate->limits,
		    (const struct sockaddr *)&s->client_ss);
		delay = cf->login_failure_delay_ms * (fails < 8 ? fails : 8);
		if (delay > PRELOGIN_DELAY_MAX_MS)
			delay = PRELOGIN_DELAY_MAX_MS;
		if (pl->wait_s > 0)	/* the http lookup's Auth-Wait */
			delay = (uint64_t)pl->wait_s * 1000;
	}
	prelogin_log_failed(s, why, fails, delay);
	login_creds_wipe(&pl->creds);
	pl->wait_s = 0;
	n = snprintf(pl->delayed, sizeof(pl->delayed), "%s NO [%s] %s\r\n", pl->tag, code,
	    strcmp(code, "AUTHENTICATIONFAILED") == 0 ? "Authentication failed" :
	    strcmp(code, "UNAVAILABLE") == 0 ? "Backend server unavailable, try again later" :
	    "Login refused");
	pl->ndelayed = n > 0 && (size_t)n < sizeof(pl->delayed) ? (size_t)n : 0;
	pl->busy = 1;
	if (delay > 0) {
		session_due(s, SESSION_DUE_PHASE, delay);
		return;
	}
	prelogin_timeout(s);
}

/* The failure's delay is over (or there was none): the client gets its NO. */
void
prelogin_timeout(struct session *s)
{
	struct prelogin *pl = s->pl;

	if (pl == NULL || !pl->busy || s->life != SESSION_LOGIN)
		return;
	if (pl->held) {
		/* "delay user" is over (or still on: wait again). */
		pl->held = 0;
		if ((pl->held_ms = control_login_delay(pl->creds.user)) > 0) {
			pl->held = 1;
			session_due(s, SESSION_DUE_PHASE, pl->held_ms);
			return;
		}
		prelogin_route(s);
		return;
	}
	pl->busy = 0;
	if (pl->ndelayed > 0)
		session_inject_raw(s, pl->delayed, pl->ndelayed);
	pl->ndelayed = 0;
}

/* The http lookup answered (or failed). */
static void
prelogin_http_done(const struct authhttp_answer *a, void *arg)
{
	struct session *s = arg;
	struct prelogin *pl = s->pl;
	char name[32];

	pl->req = NULL;
	if (s->life != SESSION_LOGIN)
		return;	/* the session ended (or is ending) while the lookup ran */
	snprintf(name, sizeof(name), "http:%s", a->outcome == AUTHHTTP_OK ? "ok" :
	    a->outcome == AUTHHTTP_DENIED ? "denied" : a->outcome == AUTHHTTP_RETRY ? "retry" :
	    authhttp_error_name(a->error));
	stats_name_add(&stats.lookups, name);
	stats_lookup_time(CONFIG_LOOKUP_HTTP, session_now_us(s) - pl->lookup_started);
	stats_add(&stats.lookup_http_reused, (uint64_t)(a->reused != 0));
	switch (a->outcome) {
	case AUTHHTTP_OK:
		memcpy(&pl->addr.ss, &a->server, a->serverlen);
		pl->addr.len = a->serverlen;
		pl->fixed = 1;
		if (a->user != NULL) {
			char *u = strdup(a->user);

			if (u == NULL) {
				prelogin_failed(s, 0, "UNAVAILABLE", "out of memory");
				break;
			}
			free(pl->creds.user);
			pl->creds.user = u;
		}
		if (a->pass != NULL) {
			char *p = malloc(a->passlen + 1);

			if (p == NULL) {
				prelogin_failed(s, 0, "UNAVAILABLE", "out of memory");
				break;
			}
			memcpy(p, a->pass, a->passlen);
			p[a->passlen] = '\0';
			if (pl->creds.secret != NULL) {
				explicit_bzero(pl->creds.secret, pl->creds.secretlen);
				free(pl->creds.secret);
			}
			pl->creds.secret = p;
			pl->creds.secretlen = a->passlen;
			/* The override is a password: the backend gets a plain login. */
			if (pl->creds.mech == LOGIN_MECH_XOAUTH2 ||
			    pl->creds.mech == LOGIN_MECH_OAUTHBEARER)
				pl->creds.mech = LOGIN_MECH_PLAIN;
		}
		/*
		 * An override is the service's credential (often a master
		 * user's): the backend login is exactly Auth-User and
		 * Auth-Pass, as in nginx.  The client's authorization
		 * identity must not ride on it, or a client could name any
		 * user as authzid and be logged in as them with the
		 * override's rights.
		 */
		if ((a->user != NULL || a->pass != NULL) && pl->creds.authz != NULL) {
			free(pl->creds.authz);
			pl->creds.authz = NULL;
		}
		s->route = "http";
		session_set_life(s, SESSION_SETUP);
		backend_connect(s);
		break;
	case AUTHHTTP_DENIED:
		pl->wait_s = a->has_wait ? a->wait_s : 0;
		prelogin_failed(s, 1, "AUTHENTICATIONFAILED", a->status);
		break;
	case AUTHHTTP_RETRY:
	case AUTHHTTP_ERROR:
		prelogin_failed(s, 0, "UNAVAILABLE", a->reason);
		break;
	}
	session_run(s);
}

/* Ask the http lookup (nginx auth_http) where the user goes. */
static void
prelogin_http(struct session *s)
{
	struct prelogin *pl = s->pl;
	const struct config *cf = s->gen->cf;
	struct authhttp_conf c = { 0 };
	struct authhttp_query q = { 0 };
	char ip[INET6_ADDRSTRLEN], lip[INET6_ADDRSTRLEN];
	unsigned port, lport;

	netaddr_ip((const struct sockaddr *)&s->client_ss, ip, sizeof(ip), &port);
	c.url = cf->lookup_http;
	c.timeout_ms = cf->lookup_timeout_ms;
	c.pool = s->srv->auth_pool;
	c.keepalive = cf->lookup_keepalive;
	q.method = pl->creds.mech == LOGIN_MECH_XOAUTH2 || pl->creds.mech == LOGIN_MECH_OAUTHBEARER ?
	    AUTHHTTP_METHOD_OAUTH : AUTHHTTP_METHOD_PLAIN;
	q.user = pl->creds.user;
	q.pass = pl->creds.secret != NULL ? pl->creds.secret : "";
	q.passlen = pl->creds.secret != NULL ? pl->creds.secretlen : 0;
	q.attempt = pl->ctx.attempts > 0 ? pl->ctx.attempts : 1;
	q.client_ip = ip;
	q.ssl = s->client_tls;
	if (s->client_tls) {
		q.ssl_protocol = endpoint_tls_version(s->client.ep);
		q.ssl_cipher = endpoint_tls_cipher(s->client.ep);
	}
	if (s->lc->proxy_protocol) {
		/* The addresses came in a PROXY header: nginx passes them on as Proxy-Protocol-*. */
		netaddr_ip((const struct sockaddr *)&s->local_ss, lip, sizeof(lip), &lport);
		q.pp_addr = ip;
		q.pp_port = port;
		q.pp_server_addr = lip;
		q.pp_server_port = lport;
	}
	pl->lookup_started = session_now_us(s);
	s->route = "http";
	if ((pl->req = authhttp_start(s->srv->base, &c, &q, prelogin_http_done, s)) == NULL)
		prelogin_failed(s, 0, "UNAVAILABLE", "out of memory");
}

/* Find the user's backend by the configured lookup, then connect (backend.c). */
static void
prelogin_route(struct session *s)
{
	struct prelogin *pl = s->pl;
	const struct config *cf = s->gen->cf;
	const struct usermap_entry *e;

	/* A new attempt starts from nothing the last one learnt. */
	pl->fixed = 0;
	pl->fixed_tries = 0;
	pl->bcaps_known = pl->bcaps = 0;
	pl->id_sent = pl->cont = pl->authed = 0;
	free(pl->postcaps);
	pl->postcaps = NULL;
	free(pl->ok_text);
	pl->ok_text = NULL;
	free(s->detail);	/* an earlier attempt's failure is not this one's */
	s->detail = NULL;
	s->tried = 0;
	if (cf->lookup == CONFIG_LOOKUP_HTTP) {
		prelogin_http(s);
		return;
	}
	if (cf->lookup == CONFIG_LOOKUP_STATIC) {
		uint64_t t0 = session_now_us(s);

		e = usermap_find(cf->usermap, pl->creds.user);
		stats_lookup_time(CONFIG_LOOKUP_STATIC, session_now_us(s) - t0);
		if (e != NULL) {
			stats_name_add(&stats.lookups, "static:ok");
			memcpy(&pl->addr, e->addr, sizeof(pl->addr));
			pl->fixed = 1;
			s->route = "static";
		} else if (cf->lookup_fallback == CONFIG_FALLBACK_REJECT) {
			stats_name_add(&stats.lookups, "static:unmatched");
			s->route = "static";
			prelogin_failed(s, 1, "AUTHENTICATIONFAILED", "user not in the map");
			return;
		} else {
			stats_name_add(&stats.lookups, "static:fallback");
			s->route = "static-fallback";
		}
	} else {
		stats_name_add(&stats.lookups, "hash:ok");
		s->route = "hash";
	}
	if (!pl->fixed && prelogin_key(s, pl->creds.user) != 0) {
		prelogin_failed(s, 1, "AUTHENTICATIONFAILED", "no domain in the user name");
		return;
	}
	session_set_life(s, SESSION_SETUP);
	backend_connect(s);
}

/* The client gave credentials: route them, unless its address failed too often. */
static void
prelogin_auth(struct session *s, struct login_result *r)
{
	struct prelogin *pl = s->pl;
	const struct config *cf = s->gen->cf;

	login_creds_wipe(&pl->creds);
	pl->creds = r->creds;
	memset(&r->creds, 0, sizeof(r->creds));
	memcpy(pl->tag, r->tag, sizeof(pl->tag));
	pl->busy = 1;
	if (cf->login_failures_per_ip > 0 &&
	    connlimit_login_failures(s->srv->gate->limits,
	    (const struct sockaddr *)&s->client_ss) >= cf->login_failures_per_ip) {
		/* No lookup, no backend: the address is refused until its failures age out. */
		stats_name_add(&stats.logins, "refused");
		login_creds_wipe(&pl->creds);
		pl->busy = 0;
		session_inject(s, "%s NO [UNAVAILABLE] Too many failed logins from your address, "
		    "try again later", pl->tag);
		return;
	}
	if ((pl->held_ms = control_login_delay(pl->creds.user)) > 0) {
		/*
		 * The operator holds this user's logins (a mailbox being moved):
		 * wait, then look up afresh, rather than fail the login.
		 */
		pl->held = 1;
		session_due(s, SESSION_DUE_PHASE, pl->held_ms);
		return;
	}
	prelogin_route(s);
}

/* Act on what login.c made of a command or SASL line. */
static void
prelogin_act(struct session *s, struct login_result *r)
{
	struct session_half *h = &s->client;

	imap_parse_set_mode(&h->parser, r->act == LOGIN_ACT_CONTINUE ? IMAP_MODE_SASL :
	    IMAP_MODE_COMMAND);
	if (s->cl == CLIENT_SASL && r->act != LOGIN_ACT_CONTINUE)
		session_set_client(s, CLIENT_COMMAND);
	switch (r->act) {
	case LOGIN_ACT_REPLY:
		session_inject_raw(s, r->reply, r->replylen);
		break;
	case LOGIN_ACT_CONTINUE:
		session_inject_raw(s, r->reply, r->replylen);
		if (s->cl != CLIENT_SASL)
			session_set_client(s, CLIENT_SASL);
		break;
	case LOGIN_ACT_STARTTLS:
		session_inject_raw(s, r->reply, r->replylen);
		session_client_starttls(s);
		break;
	case LOGIN_ACT_LOGOUT:
		session_inject_raw(s, r->reply, r->replylen);
		session_finish(s, "logout");
		break;
	case LOGIN_ACT_AUTH:
		prelogin_auth(s, r);
		break;
	}
	login_creds_wipe(&r->creds);
	if (s->pl != NULL && s->pl->ctx.bads >= PRELOGIN_MAX_BADS && session_live(s)) {
		session_bye_count(s, STATS_BYE_PROTOCOL);
		session_inject(s, "* BYE Too many invalid commands");
		session_finish(s, "too-many-errors");
	}
}

/* A complete client line before login: a command, or a SASL response we asked for. */
void
prelogin_line(struct session *s)
{
	struct session_half *h = &s->client;
	struct prelogin *pl = s->pl;
	const struct imap_line *l = imap_parse_line(&h->parser);
	struct login_result r;
	const char *why;
	int sasl = s->cl == CLIENT_SASL;

	memset(&r, 0, sizeof(r));
	h->streaming = 0;
	why = sasl ? NULL : prelogin_verdict(l);
	if (!sasl && (h->drop || why != NULL)) {
		if (why != NULL && !h->replied) {
			char text[200];

			session_guard_event(s, l->toolong ? STATS_GUARD_LINE_TOOLONG :
			    STATS_GUARD_INVALID_COMMAND);
			snprintf(text, sizeof(text), "%s%s", strncmp(why, "BAD ", 4) == 0 ? "" :
			    "BAD ", why);
			prelogin_answer(s, l->tag, text);
		}
		session_drop(h);
		prelogin_buf_clear(pl);
		session_client_reset(h);
		imap_parse_set_mode(&h->parser, IMAP_MODE_COMMAND);
		return;
	}
	prelogin_take(s);
	if (pl->overflow || (sasl && (h->drop || l->toolong))) {
		/* Too long to be a login we could replay: cancel it. */
		prelogin_buf_clear(pl);
		if (sasl)
			login_sasl_line(&pl->ctx, "*\r\n", 3, &r);
		else {
			snprintf(r.reply, sizeof(r.reply), "%s BAD Command too long\r\n",
			    l->tag[0] != '\0' ? l->tag : "*");
			r.replylen = strlen(r.reply);
			r.act = LOGIN_ACT_REPLY;
		}
	} else if (sasl)
		login_sasl_line(&pl->ctx, pl->buf, pl->len, &r);
	else
		login_command(&pl->ctx, pl->buf, pl->len, &r);
	prelogin_buf_clear(pl);
	session_client_reset(h);
	prelogin_act(s, &r);
}

/* The client's TLS is up after STARTTLS. */
void
prelogin_tls_started(struct session *s)
{
	if (s->pl != NULL)
		login_tls_started(&s->pl->ctx);
}

/*
 * The backend logged the user in: the client gets reply (its tag, the
 * backend's OK with the capability list) and the session relays from now.
 */
void
prelogin_succeeded(struct session *s, const char *reply, size_t len)
{
	struct prelogin *pl = s->pl;
	char user[LOGESC_SIZE(LOGIN_MAX_USER)], bk[NETADDR_STRLEN];

	endpoint_write(s->client.ep, reply, len);
	stats_add(&stats.client_out, len);
	stats_name_add(&stats.logins, "ok");
	if (state_login(&s->st, pl->creds.user) != 0) {
		session_close(s, "out-of-memory");
		return;
	}
	log_info("session=%s msg=login user=\"%s\" backend=%s route=%s mech=%s", s->id,
	    logesc_quote(pl->creds.user, user, sizeof(user)),
	    netaddr_str((const struct sockaddr *)&s->baddr.ss, bk, sizeof(bk)),
	    s->route != NULL ? s->route : "-", prelogin_mech_name(pl->creds.mech));
	prelogin_free(s);
	session_set_backend(s, BACKEND_READY);
	session_set_life(s, SESSION_RELAY);
	session_due_off(s, SESSION_DUE_PHASE);
}
