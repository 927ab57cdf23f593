/*
 * backend: the backend half's own dialog, before the session relays: pick a
 * server, connect (with failover), PROXY header, TLS or STARTTLS, the
 * greeting held back, ID with the client's address.  Nothing the backend
 * says here reaches the client but the greeting it releases.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "config.h"
#include "endpoint.h"
#include "guard.h"
#include "log.h"
#include "logesc.h"
#include "netaddr.h"
#include "pool.h"
#include "proxyproto.h"
#include "server.h"
#include "session.h"
#include "session_priv.h"

/* Tags of the commands imapgate itself sends to the backend. */
#define BACKEND_TAG_STARTTLS	"imapgate-tls"
#define BACKEND_TAG_ID		"imapgate-id"

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
			session_detail(s, "backend refused STARTTLS");
			session_bye_unavailable(s, "backend-starttls-refused");
			return;
		}
		session_set_backend(s, BACKEND_UPGRADE);
		imap_parse_restart(&h->parser);
		h->parser.seen_greeting = 1;
		if (endpoint_start_tls(h->ep, s->gen->btls) != 0)
			session_bye_unavailable(s, "backend-tls-failed");
		return;
	case BACKEND_ID:
		session_drop(h);
		if (l->kind == IMAP_KIND_TAGGED && strcmp(l->tag, BACKEND_TAG_ID) == 0)
			backend_release_greeting(s);
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
				session_bye_unavailable(s, "backend-tls-failed");
			return;
		}
		session_set_backend(s, BACKEND_GREETING);
		return;
	}
	case BACKEND_TLS:
		session_set_backend(s, BACKEND_GREETING);
		return;
	case BACKEND_UPGRADE:
		if (cf->client_ip == CONFIG_CLIENT_IP_ID)
			backend_send_id(s);
		else
			backend_release_greeting(s);
		return;
	default:
		return;
	}
}

/*
 * Choose a backend (not one tried already) and start connecting; with none
 * left, the client gets BYE.  The client has seen nothing from the backend
 * before the greeting is released, so moving on is invisible to it.
 */
void
backend_connect(struct session *s)
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
	char esc[LOGESC_SIZE(SESSION_DETAIL_MAX)];

	log_info("session=%s msg=backend-failed server=%s error=\"%s\"", s->id,
	    pool_name(s->gen->pool, s->server), logesc_quote(why, esc, sizeof(esc)));
	session_detail(s, "%s: %s", pool_name(s->gen->pool, s->server), why);
	pool_report(s->gen->pool, s->server, 0, why);
	session_due_off(s, SESSION_DUE_PHASE);
	session_set_backend(s, BACKEND_NONE);
	endpoint_free(s->backend.ep);
	s->backend.ep = NULL;
	s->backend.pending = 0;
	s->backend.reading = 0;
	s->backend.streaming = 0;
	imap_parse_restart(&s->backend.parser);
	free(s->greeting);
	s->greeting = NULL;
	free(s->greeting_line);
	s->greeting_line = NULL;
	backend_connect(s);
}

