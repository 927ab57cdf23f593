/*
 * backend: the backend half's own dialog, before the session relays: pick a
 * server, connect (with failover), PROXY header, TLS or STARTTLS, the
 * greeting held back, ID with the client's address, and in backend.route:
 * login the user's login (CAPABILITY when the greeting did not say what
 * the server offers, the client's ID, LOGIN or AUTHENTICATE).  Nothing the
 * backend says here reaches the client but the greeting it releases, or
 * in route: login the answer to the login, under the client's tag.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "config.h"
#include "endpoint.h"
#include "guard.h"
#include "login.h"
#include "log.h"
#include "logesc.h"
#include "netaddr.h"
#include "pool.h"
#include "prelogin.h"
#include "proxyproto.h"
#include "server.h"
#include "session.h"
#include "session_priv.h"

/* Tags of the commands imapgate itself sends to the backend. */
#define BACKEND_TAG_STARTTLS	"imapgate-tls"
#define BACKEND_TAG_ID		"imapgate-id"
#define BACKEND_TAG_CAPA	"imapgate-cap"
#define BACKEND_TAG_LOGIN	"imapgate-login"
/* Room for the login command: the longest SASL response and its framing. */
#define BACKEND_LOGIN_MAX	(LOGIN_MAX_SASL + 2 * LOGIN_MAX_USER + 256)
/* Longest capability list kept from the backend after login. */
#define BACKEND_CAPS_MAX	4096
/* Longest text of the backend's login OK kept while asking CAPABILITY. */
#define BACKEND_TEXT_MAX	256

static void	backend_login_next(struct session *);
static void	backend_capa_line(struct session *, const struct imap_line *);
static void	backend_auth_line(struct session *, const struct imap_line *);

/* The backend connection's address as text (pool server or a lookup's address). */
static const char *
backend_name(const struct session *s, char *buf, size_t len)
{
	if (s->baddr.len == 0)
		return "-";
	return netaddr_str((const struct sockaddr *)&s->baddr.ss, buf, len);
}

/* Close the backend connection and forget its half (its server slot too). */
static void
backend_drop(struct session *s)
{
	session_due_off(s, SESSION_DUE_PHASE);
	if (s->bk != BACKEND_NONE)
		session_set_backend(s, BACKEND_NONE);
	endpoint_free(s->backend.ep);
	s->backend.ep = NULL;
	s->backend.pending = 0;
	s->backend.reading = 0;
	s->backend.streaming = 0;
	s->backend.eof = 0;
	imap_parse_restart(&s->backend.parser);
	free(s->greeting);
	s->greeting = NULL;
	free(s->greeting_line);
	s->greeting_line = NULL;
}

/*
 * The backend cannot be used for this session (STARTTLS refused, TLS
 * failed): BYE in route: connect; in route: login the client's login gets
 * NO [UNAVAILABLE] and it may try again.
 */
static void
backend_unavailable(struct session *s, const char *reason, const char *why)
{
	session_detail(s, "%s", why);
	if (s->pl == NULL) {
		session_bye_unavailable(s, reason);
		return;
	}
	backend_drop(s);
	if (s->server >= 0) {
		pool_release(s->gen->pool, s->server);
		s->server = -1;
	}
	prelogin_failed(s, 0, "UNAVAILABLE", why);
}

/* The capability list inside a [CAPABILITY ...] code or after "* CAPABILITY". */
static unsigned
backend_caps_of(const struct imap_line *l, const char *line, size_t len)
{
	if (l->nliterals > 0 || l->toolong)
		return 0;
	if (strcmp(l->code, "CAPABILITY") == 0 && l->code_end > l->code_off + 1 &&
	    l->code_end <= len)
		return login_backend_caps(line + l->code_off + 1, l->code_end - l->code_off - 2);
	return login_backend_caps(line, len);
}

/* Is l an untagged CAPABILITY response? */
static int
backend_is_caps(const struct imap_line *l)
{
	return l->kind == IMAP_KIND_UNTAGGED && strcmp(l->name, "CAPABILITY") == 0 &&
	    l->nliterals == 0 && !l->toolong;
}

/* Send ID with the client's address (backend.client_ip: id); its reply is swallowed. */
static void
backend_send_id(struct session *s)
{
	char cip[INET6_ADDRSTRLEN], lip[INET6_ADDRSTRLEN], line[512];
	unsigned cport, lport;
	int n;

	netaddr_ip((const struct sockaddr *)&s->client_ss, cip, sizeof(cip), &cport);
	netaddr_ip((const struct sockaddr *)&s->local_ss, lip, sizeof(lip), &lport);
	n = snprintf(line, sizeof(line), BACKEND_TAG_ID " ID (\"x-originating-ip\" \"%s\" "
	    "\"x-originating-port\" \"%u\" \"x-connected-ip\" \"%s\" "
	    "\"x-connected-port\" \"%u\" \"x-session-id\" \"%s\")\r\n",
	    cip, cport, lip, lport, s->id);
	endpoint_write(s->backend.ep, line, (size_t)n);
	session_set_backend(s, BACKEND_ID);
}

/* The backend is set up: let the client see the greeting and start relaying. */
static void
backend_release_greeting(struct session *s)
{
	const struct imap_line *l = s->greeting_line;
	struct state_result res;
	struct guard_out out;
	int r;

	session_set_backend(s, BACKEND_READY);
	session_set_life(s, SESSION_RELAY);
	session_due_off(s, SESSION_DUE_PHASE);
	log_debug("session=%s msg=backend-ready tls=%s", s->id,
	    endpoint_tls_version(s->backend.ep));
	if (s->greeting != NULL) {
		state_server_response(&s->st, l, &res);
		session_note_caps(s, l, s->greeting, s->greeting_len);
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
}

/* The backend accepted the login: the secret is not needed any more (the user is). */
static void
backend_wipe_secret(struct login_creds *c)
{
	if (c->secret != NULL) {
		explicit_bzero(c->secret, c->secretlen);
		free(c->secret);
		c->secret = NULL;
		c->secretlen = 0;
	}
	if (c->raw != NULL) {
		explicit_bzero(c->raw, c->rawlen);
		free(c->raw);
		c->raw = NULL;
		c->rawlen = 0;
	}
}

/* Send a command of ours to the backend. */
static void
backend_send(struct session *s, const char *cmd)
{
	endpoint_write(s->backend.ep, cmd, strlen(cmd));
}

/* route: login: the backend greeted; note what it offers, then STARTTLS or the login. */
static void
backend_login_greeting(struct session *s, const struct imap_line *l)
{
	struct session_half *h = &s->backend;
	struct prelogin *pl = s->pl;
	const char *bytes;

	if (l->status == IMAP_STATUS_PREAUTH) {
		/* Logged in as somebody already: it cannot log our user in. */
		session_drop(h);
		backend_unavailable(s, "backend-preauth", "backend greeted with PREAUTH");
		return;
	}
	pl->bcaps_known = 0;
	if (strcmp(l->code, "CAPABILITY") == 0 &&
	    (bytes = (const char *)endpoint_pullup(h->ep, h->pending)) != NULL) {
		pl->bcaps = backend_caps_of(l, bytes, h->pending);
		pl->bcaps_known = l->nliterals == 0 && !l->toolong;
	}
	/* The backend's greeting is never the client's: imapgate greeted it already. */
	session_drop(h);
	if (s->gen->cf->backend_tls == CONFIG_TLS_STARTTLS) {
		backend_send(s, BACKEND_TAG_STARTTLS " STARTTLS\r\n");
		session_set_backend(s, BACKEND_STARTTLS);
		return;
	}
	backend_login_next(s);
}

/* route: login: the ID for the backend: the client's, with its address when client_ip: id. */
static void
backend_login_id(struct session *s)
{
	char cip[INET6_ADDRSTRLEN], lip[INET6_ADDRSTRLEN], cport[8], lport[8];
	char line[LOGIN_ID_MAX_PAIRS * (2 * LOGIN_ID_MAX_VALUE + 8) + 64];
	const char *extra[10];
	unsigned cp, lp;
	size_t nextra = 0;
	int n;

	if (s->gen->cf->client_ip == CONFIG_CLIENT_IP_ID) {
		netaddr_ip((const struct sockaddr *)&s->client_ss, cip, sizeof(cip), &cp);
		netaddr_ip((const struct sockaddr *)&s->local_ss, lip, sizeof(lip), &lp);
		snprintf(cport, sizeof(cport), "%u", cp);
		snprintf(lport, sizeof(lport), "%u", lp);
		extra[0] = "x-originating-ip";		extra[1] = cip;
		extra[2] = "x-originating-port";	extra[3] = cport;
		extra[4] = "x-connected-ip";		extra[5] = lip;
		extra[6] = "x-connected-port";		extra[7] = lport;
		extra[8] = "x-session-id";		extra[9] = s->id;
		nextra = 5;
	}
	n = login_id_build(&s->pl->ctx, BACKEND_TAG_ID, extra, nextra, line, sizeof(line));
	s->pl->id_sent = 1;
	if (n <= 0) {
		backend_login_next(s);
		return;
	}
	endpoint_write(s->backend.ep, line, (size_t)n);
	session_set_backend(s, BACKEND_ID);
}

/*
 * route: login: the next step towards the user's login: the server's
 * capabilities if unknown (they choose the command), the ID if there is
 * one to pass on, then LOGIN or AUTHENTICATE with the user's credentials
 * (or the master user's).  The command holds a secret: wiped once queued.
 */
static void
backend_login_next(struct session *s)
{
	struct prelogin *pl = s->pl;
	const struct config *cf = s->gen->cf;
	int master = cf->credentials == CONFIG_CREDENTIALS_MASTER;
	char *cmd;
	int n, cont = 0;

	if (!pl->bcaps_known) {
		backend_send(s, BACKEND_TAG_CAPA " CAPABILITY\r\n");
		session_set_backend(s, BACKEND_CAPA);
		return;
	}
	if (!pl->id_sent && (cf->client_ip == CONFIG_CLIENT_IP_ID || pl->ctx.nid > 0)) {
		backend_login_id(s);
		return;
	}
	if ((cmd = malloc(BACKEND_LOGIN_MAX)) == NULL) {
		backend_unavailable(s, "out-of-memory", "out of memory");
		return;
	}
	n = login_backend_auth(&pl->creds, BACKEND_TAG_LOGIN, pl->bcaps,
	    master ? cf->master_user : NULL, master ? cf->master_password : NULL,
	    cf->master_separator, cmd, BACKEND_LOGIN_MAX, &cont);
	if (n <= 0) {
		free(cmd);
		backend_unavailable(s, "backend-no-login", "the backend offers no way to log in "
		    "with these credentials");
		return;
	}
	endpoint_write(s->backend.ep, cmd, (size_t)n);
	explicit_bzero(cmd, (size_t)n);
	free(cmd);
	pl->cont = cont;
	session_set_backend(s, BACKEND_AUTH);
	/* A login may take the backend's own failure delay: the response timeout bounds it. */
	session_due(s, SESSION_DUE_PHASE, cf->backend_response_ms);
}

/*
 * route: login: the client's answer: its tag in front of the backend's
 * OK, with the capability list after login (the OK's own, or the one the
 * backend sent), filtered as any capability list is.
 */
static void
backend_login_done(struct session *s, const char *ok, size_t oklen)
{
	struct prelogin *pl = s->pl;
	struct imap_parser p;
	struct imap_event ev;
	struct guard_out out;
	const struct imap_line *l = NULL;
	char *reply;
	size_t n, cap = BACKEND_CAPS_MAX + BACKEND_TEXT_MAX + IMAP_MAX_TAG + 64;
	int r;

	if ((reply = malloc(cap)) == NULL) {
		session_close(s, "out-of-memory");
		return;
	}
	if (ok != NULL) {
		/* "imapgate-login OK ..." -> "TAG OK ...": only the tag changes. */
		n = (size_t)snprintf(reply, cap, "%s", pl->tag);
		if (n + oklen - strlen(BACKEND_TAG_LOGIN) >= cap) {
			free(reply);
			session_close(s, "out-of-memory");
			return;
		}
		memcpy(reply + n, ok + strlen(BACKEND_TAG_LOGIN), oklen - strlen(BACKEND_TAG_LOGIN));
		n += oklen - strlen(BACKEND_TAG_LOGIN);
	} else
		n = (size_t)snprintf(reply, cap, "%s OK [CAPABILITY %s] %s\r\n", pl->tag,
		    pl->postcaps != NULL ? pl->postcaps : "IMAP4rev1",
		    pl->ok_text != NULL && pl->ok_text[0] != '\0' ? pl->ok_text : "Logged in");
	imap_parse_init(&p, IMAP_DIR_SERVER, s->gen->cf->max_line);
	p.seen_greeting = 1;
	if (imap_parse_feed(&p, reply, n, &ev) == n && ev.type == IMAP_EV_LINE)
		l = imap_parse_line(&p);
	if (l != NULL) {
		session_note_caps(s, l, reply, n);
		/* After login: imapgate's own COMPRESS=DEFLATE when the listener offers it. */
		r = guard_rewrite(s->gen->cf, l, reply, n,
		    s->lc->compress ? GUARD_CAP_COMPRESS : 0, &out);
		if (r == 1) {
			free(reply);
			reply = out.buf;
			n = out.len;
		}
	}
	imap_parse_free(&p);
	if (s->server >= 0)
		pool_login(s->gen->pool, s->server, 1);
	prelogin_succeeded(s, reply, n);
	free(reply);
}

/* The text of a status line (after its code), bounded, for the client's OK. */
static char *
backend_text(const struct imap_line *l, const char *line, size_t len)
{
	size_t a = l->text_off, b = len;

	if (l->nliterals > 0 || l->toolong || a >= len)
		return strdup("");
	while (b > a && (line[b - 1] == '\n' || line[b - 1] == '\r'))
		b--;
	if (b - a > BACKEND_TEXT_MAX)
		b = a + BACKEND_TEXT_MAX;
	return strndup(line + a, b - a);
}

/* Keep the capability list of an untagged CAPABILITY seen during the login. */
static void
backend_keep_postcaps(struct session *s, const struct imap_line *l, const char *line, size_t len)
{
	size_t a = strlen("* CAPABILITY "), b = len;

	if (len <= a || !backend_is_caps(l))
		return;
	while (b > a && (line[b - 1] == '\n' || line[b - 1] == '\r'))
		b--;
	if (b - a > BACKEND_CAPS_MAX)
		return;
	free(s->pl->postcaps);
	s->pl->postcaps = strndup(line + a, b - a);
}

/* route: login: a line while CAPABILITY is under way (before or after the login). */
static void
backend_capa_line(struct session *s, const struct imap_line *l)
{
	struct session_half *h = &s->backend;
	struct prelogin *pl = s->pl;
	const char *bytes = (const char *)endpoint_pullup(h->ep, h->pending);
	size_t len = h->pending;

	if (bytes != NULL && backend_is_caps(l)) {
		if (pl->authed)
			backend_keep_postcaps(s, l, bytes, len);
		else
			pl->bcaps = backend_caps_of(l, bytes, len);
	}
	if (l->kind != IMAP_KIND_TAGGED || strcmp(l->tag, BACKEND_TAG_CAPA) != 0) {
		session_drop(h);
		return;
	}
	session_drop(h);
	pl->bcaps_known = 1;	/* a refused CAPABILITY: the LOGIN command, plainly */
	if (pl->authed)
		backend_login_done(s, NULL, 0);
	else
		backend_login_next(s);
}

/* route: login: the backend refused the login; the client may try again. */
static void
backend_login_refused(struct session *s, const struct imap_line *l, const char *line,
    size_t len)
{
	char *text = line != NULL ? backend_text(l, line, len) : NULL;
	const char *code = l->code[0] != '\0' ? l->code : NULL;
	char why[SESSION_DETAIL_MAX];
	int auth;

	/* A NO refuses the credentials; BAD or UNAVAILABLE is the server's trouble. */
	auth = l->status == IMAP_STATUS_NO && (code == NULL || strcmp(code, "UNAVAILABLE") != 0);
	snprintf(why, sizeof(why), "backend: %s%s%s%s%s", l->status_word, code ? " [" : "",
	    code ? code : "", code ? "] " : " ", text != NULL ? text : "");
	free(text);
	if (s->server >= 0) {
		pool_login(s->gen->pool, s->server, 0);
		pool_release(s->gen->pool, s->server);
		s->server = -1;
	}
	backend_drop(s);
	prelogin_failed(s, auth, auth ? (code != NULL && (strcmp(code, "AUTHORIZATIONFAILED") == 0 ||
	    strcmp(code, "EXPIRED") == 0 || strcmp(code, "CONTACTADMIN") == 0 ||
	    strcmp(code, "PRIVACYREQUIRED") == 0 || strcmp(code, "LIMIT") == 0) ? code :
	    "AUTHENTICATIONFAILED") : "UNAVAILABLE", why);
}

/* route: login: a line while the login command is under way. */
static void
backend_auth_line(struct session *s, const struct imap_line *l)
{
	struct session_half *h = &s->backend;
	struct prelogin *pl = s->pl;
	const struct config *cf = s->gen->cf;
	const char *bytes = (const char *)endpoint_pullup(h->ep, h->pending);
	size_t len = h->pending;
	char *ok;

	if (l->kind == IMAP_KIND_CONTINUATION) {
		session_drop(h);
		if (pl->cont) {
			int master = cf->credentials == CONFIG_CREDENTIALS_MASTER;
			char *line = malloc(BACKEND_LOGIN_MAX);
			int n = line == NULL ? -1 : login_backend_continuation(&pl->creds, pl->bcaps,
			    master ? cf->master_user : NULL, master ? cf->master_password : NULL,
			    line, BACKEND_LOGIN_MAX);

			pl->cont = 0;
			if (n > 0)
				endpoint_write(h->ep, line, (size_t)n);
			else
				backend_send(s, "*\r\n");
			if (line != NULL) {
				explicit_bzero(line, BACKEND_LOGIN_MAX);
				free(line);
			}
		} else
			/*
			 * A challenge after the response: the OAuth mechanisms' error
			 * report.  The client's part is an empty response (XOAUTH2)
			 * or "\x01" (OAUTHBEARER, RFC 7628 3.2.3); the NO follows.
			 */
			backend_send(s, pl->creds.mech == LOGIN_MECH_OAUTHBEARER ? "AQ==\r\n" :
			    pl->creds.mech == LOGIN_MECH_XOAUTH2 ? "\r\n" : "*\r\n");
		return;
	}
	if (l->kind != IMAP_KIND_TAGGED || strcmp(l->tag, BACKEND_TAG_LOGIN) != 0) {
		if (bytes != NULL)
			backend_keep_postcaps(s, l, bytes, len);
		session_drop(h);
		return;
	}
	if (l->status != IMAP_STATUS_OK || bytes == NULL) {
		backend_login_refused(s, l, bytes, len);
		return;
	}
	pl->authed = 1;
	backend_wipe_secret(&pl->creds);
	if (strcmp(l->code, "CAPABILITY") == 0 || pl->postcaps != NULL) {
		if (strcmp(l->code, "CAPABILITY") == 0 && l->nliterals == 0 && !l->toolong &&
		    (ok = malloc(len)) != NULL) {
			memcpy(ok, bytes, len);
			session_drop(h);
			backend_login_done(s, ok, len);
			free(ok);
			return;
		}
		free(pl->ok_text);
		pl->ok_text = backend_text(l, bytes, len);
		session_drop(h);
		backend_login_done(s, NULL, 0);
		return;
	}
	/* No capability list yet: ask, and answer the client with it. */
	free(pl->ok_text);
	pl->ok_text = backend_text(l, bytes, len);
	session_drop(h);
	backend_send(s, BACKEND_TAG_CAPA " CAPABILITY\r\n");
	session_set_backend(s, BACKEND_CAPA);
}

/* A backend line while imapgate is still setting the backend up: never for the client. */
void
backend_setup_line(struct session *s)
{
	struct session_half *h = &s->backend;
	const struct imap_line *l = imap_parse_line(&h->parser);
	const struct config *cf = s->gen->cf;
	const char *bytes;

	switch (s->bk) {
	case BACKEND_GREETING:
		if (l->kind != IMAP_KIND_GREETING ||
		    (l->status != IMAP_STATUS_OK && l->status != IMAP_STATUS_PREAUTH)) {
			/* A BYE or a garbled greeting: this server cannot take us. */
			session_drop(h);
			backend_failover(s, l->status == IMAP_STATUS_BYE ?
			    "greeted with BYE" : "bad greeting");
			return;
		}
		pool_report(s->gen->pool, s->server, 1, NULL);
		if (s->pl != NULL) {
			backend_login_greeting(s, l);
			return;
		}
		if (cf->backend_tls != CONFIG_TLS_STARTTLS && cf->client_ip != CONFIG_CLIENT_IP_ID) {
			/* Nothing to do first: relay from here. */
			session_set_backend(s, BACKEND_READY);
			session_set_life(s, SESSION_RELAY);
			session_due_off(s, SESSION_DUE_PHASE);
			session_backend_line(s);
			return;
		}
		if (h->pending > cf->max_line || l->nliterals > 0 ||
		    (bytes = (const char *)endpoint_pullup(h->ep, h->pending)) == NULL ||
		    (s->greeting = malloc(h->pending)) == NULL ||
		    (s->greeting_line = malloc(sizeof(*s->greeting_line))) == NULL) {
			session_close(s, "out-of-memory");
			return;
		}
		memcpy(s->greeting, bytes, h->pending);
		s->greeting_len = h->pending;
		*s->greeting_line = *l;
		session_drop(h);
		if (cf->backend_tls == CONFIG_TLS_STARTTLS) {
			static const char cmd[] = BACKEND_TAG_STARTTLS " STARTTLS\r\n";
			endpoint_write(h->ep, cmd, sizeof(cmd) - 1);
			session_set_backend(s, BACKEND_STARTTLS);
		} else
			backend_send_id(s);
		return;
	case BACKEND_STARTTLS:
		session_drop(h);
		if (l->kind != IMAP_KIND_TAGGED || strcmp(l->tag, BACKEND_TAG_STARTTLS) != 0)
			return;
		if (l->status != IMAP_STATUS_OK) {
			backend_unavailable(s, "backend-starttls-refused", "backend refused STARTTLS");
			return;
		}
		session_set_backend(s, BACKEND_UPGRADE);
		imap_parse_restart(&h->parser);
		h->parser.seen_greeting = 1;
		if (endpoint_start_tls(h->ep, s->gen->btls) != 0)
			backend_unavailable(s, "backend-tls-failed", "backend TLS setup failed");
		return;
	case BACKEND_ID:
		session_drop(h);
		if (l->kind != IMAP_KIND_TAGGED || strcmp(l->tag, BACKEND_TAG_ID) != 0)
			return;
		if (s->pl != NULL)
			backend_login_next(s);
		else
			backend_release_greeting(s);
		return;
	case BACKEND_CAPA:
		backend_capa_line(s, l);
		return;
	case BACKEND_AUTH:
		backend_auth_line(s, l);
		return;
	default:
		session_drop(h);
		return;
	}
}

/* The backend is connected (TCP, or a TLS handshake finished): next setup step. */
void
backend_up(struct session *s)
{
	const struct config *cf = s->gen->cf;

	switch (s->bk) {
	case BACKEND_CONNECTING: {
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
			session_set_backend(s, BACKEND_TLS);
			if (endpoint_start_tls(s->backend.ep, s->gen->btls) != 0)
				backend_unavailable(s, "backend-tls-failed", "backend TLS setup failed");
			return;
		}
		session_set_backend(s, BACKEND_GREETING);
		return;
	}
	case BACKEND_TLS:
		session_set_backend(s, BACKEND_GREETING);
		return;
	case BACKEND_UPGRADE:
		if (s->pl != NULL) {
			/* What the server offered in plaintext may change under TLS: ask again. */
			s->pl->bcaps_known = 0;
			backend_login_next(s);
		} else if (cf->client_ip == CONFIG_CLIENT_IP_ID)
			backend_send_id(s);
		else
			backend_release_greeting(s);
		return;
	default:
		return;
	}
}

/*
 * The next server for this session, or -1 with none left.  route: connect
 * picks from the pool by the balance; route: login follows the lookup:
 * hash walks the user's rendezvous order, static and http name one address
 * (a pool server's counts and health apply when it is one), tried up to
 * connect_tries times.
 */
static int
backend_pick(struct session *s, struct netaddr *addr)
{
	struct prelogin *pl = s->pl;
	struct pool *p = s->gen->pool;
	unsigned tries = (unsigned)__builtin_popcountll(s->tried);
	int i;

	if (pl != NULL && pl->fixed) {
		if (pl->fixed_tries >= s->gen->cf->connect_tries)
			return -1;
		pl->fixed_tries++;
		if ((i = pool_find(p, (const struct sockaddr *)&pl->addr.ss, pl->addr.len)) >= 0 &&
		    (s->server = pool_take(p, i, 0)) < 0)
			return -1;	/* down, or at its max_connections */
		*addr = pl->addr;
		return 0;
	}
	if (tries >= s->gen->cf->connect_tries)
		return -1;
	s->server = pl != NULL ? pool_pick_hash(p, pl->key, pl->keylen, s->tried) :
	    pool_pick(p, (const struct sockaddr *)&s->client_ss, s->tried);
	if (s->server < 0)
		return -1;
	s->tried |= (uint64_t)1 << s->server;
	*addr = pool_server(p, s->server)->addr;
	return 0;
}

/*
 * Choose a backend (not one tried already) and start connecting; with none
 * left, the client gets BYE (route: login: its login gets NO [UNAVAILABLE]).
 * The client has seen nothing from the backend before the greeting is
 * released, so moving on is invisible to it.
 */
void
backend_connect(struct session *s)
{
	const struct config *cf = s->gen->cf;
	char name[NETADDR_STRLEN];
	struct netaddr a;

	for (;;) {
		if (s->server >= 0) {
			pool_release(s->gen->pool, s->server);
			s->server = -1;
		}
		if (backend_pick(s, &a) < 0) {
			int none = s->tried == 0 && (s->pl == NULL || s->pl->fixed_tries <= 1);

			if (s->detail == NULL)
				session_detail(s, "no backend server available");
			if (s->pl != NULL)
				prelogin_failed(s, 0, "UNAVAILABLE", s->detail);
			else
				session_bye_unavailable(s, none ? "no-backend" :
				    "backend-connect-failed");
			return;
		}
		s->baddr = a;
		s->backend.ep = endpoint_connect(s->srv->base, &a, &session_cbs, s);
		if (s->backend.ep != NULL)
			break;
		session_detail(s, "connect to %s failed", backend_name(s, name, sizeof(name)));
		pool_report(s->gen->pool, s->server, 0, "connect failed");
	}
	session_set_backend(s, BACKEND_CONNECTING);
	s->backend.reading = 1;
	endpoint_set_limits(s->backend.ep, cf->buffer, cf->buffer + cf->max_line);
	session_due(s, SESSION_DUE_PHASE, cf->backend_connect_ms);
}

/*
 * The backend failed before the client saw anything of it (connect error
 * or timeout, TLS failure, a bad greeting): count it against the server
 * and try the next one.
 */
void
backend_failover(struct session *s, const char *why)
{
	char esc[LOGESC_SIZE(SESSION_DETAIL_MAX)], whybuf[SESSION_DETAIL_MAX];
	char name[NETADDR_STRLEN];

	/* why may be the endpoint's error text: backend_drop frees it. */
	snprintf(whybuf, sizeof(whybuf), "%s", why);
	why = whybuf;
	backend_name(s, name, sizeof(name));
	log_info("session=%s msg=backend-failed server=%s error=\"%s\"", s->id, name,
	    logesc_quote(why, esc, sizeof(esc)));
	session_detail(s, "%s: %s", name, why);
	pool_report(s->gen->pool, s->server, 0, why);
	backend_drop(s);
	if (s->pl != NULL && s->pl->authed) {
		/* Lost after the login said OK: do not log in elsewhere behind its back. */
		backend_unavailable(s, "backend-lost", why);
		return;
	}
	if (s->pl != NULL) {
		/* A fresh connection: whatever the last one learnt is not this one's. */
		s->pl->bcaps_known = 0;
		s->pl->id_sent = 0;
		s->pl->cont = 0;
		free(s->pl->postcaps);
		s->pl->postcaps = NULL;
	}
	backend_connect(s);
}

