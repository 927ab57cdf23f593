/* state: per-session IMAP protocol state from both directions of traffic. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "log.h"
#include "logesc.h"
#include "state.h"

static const char *const state_names[] = {
	"NotAuthenticated", "Authenticated", "Selected", "Logout",
};

/* Printable state name. */
const char *
state_name(enum state_proto proto)
{
	return state_names[proto];
}

/* Start in Not Authenticated, before the greeting. */
void
state_init(struct state *st, const char *sid)
{
	memset(st, 0, sizeof(*st));
	st->sid = sid;
	st->proto = STATE_NOT_AUTH;
}

/* Free one in-flight entry's strings. */
static void
state_cmd_clear(struct state_cmd *c)
{
	free(c->mailbox);
	free(c->user);
	c->mailbox = c->user = NULL;
}

/* Count this session in gauge (NULL: in none) instead of the gauge it was in. */
void
state_set_gauge(struct state *st, uint64_t *gauge)
{
	if (st->gauge != NULL)
		__atomic_fetch_sub(&st->gauge[st->proto], 1, __ATOMIC_RELAXED);
	st->gauge = gauge;
	if (gauge != NULL)
		__atomic_fetch_add(&gauge[st->proto], 1, __ATOMIC_RELAXED);
}

/* Record when the newest command in flight was sent. */
void
state_stamp_last(struct state *st, uint64_t us)
{
	if (st->ninflight > 0)
		st->inflight[st->ninflight - 1].started_us = us;
}

const char *
state_user(const struct state *st)
{
	return st->user != NULL ? st->user : "";
}

const char *
state_mailbox(const struct state *st)
{
	return st->mailbox != NULL ? st->mailbox : "";
}

/*
 * imapgate logged user in at the backend itself (backend.route: login):
 * the greeting was its own, the login answered; from here the backend's
 * responses are read as in any session.
 */
int
state_login(struct state *st, const char *user)
{
	char *u = strdup(user);

	if (u == NULL)
		return -1;
	free(st->user);
	st->user = u;
	st->greeted = 1;
	state_set(st, STATE_AUTH, "login");
	return 0;
}

/* Release the in-flight table and the strings (and leave the gauge). */
void
state_free(struct state *st)
{
	free(st->user);
	free(st->mailbox);
	st->user = st->mailbox = NULL;
	if (st->gauge != NULL) {
		__atomic_fetch_sub(&st->gauge[st->proto], 1, __ATOMIC_RELAXED);
		st->gauge = NULL;
	}
	for (size_t i = 0; i < st->ninflight; i++)
		state_cmd_clear(&st->inflight[i]);
	free(st->inflight);
	st->inflight = NULL;
	st->ninflight = 0;
	st->cap = 0;
}

/* The one place the protocol state changes. */
void
state_set(struct state *st, enum state_proto proto, const char *why)
{
	enum state_proto old = st->proto;

	if (proto != STATE_SELECTED) {
		free(st->mailbox);
		st->mailbox = NULL;
		st->readonly = 0;
	}
	st->proto = proto;
	if (st->gauge != NULL && old != proto) {
		__atomic_fetch_sub(&st->gauge[old], 1, __ATOMIC_RELAXED);
		__atomic_fetch_add(&st->gauge[proto], 1, __ATOMIC_RELAXED);
	}
	if (old == proto && proto != STATE_SELECTED)
		return;
	if (proto == STATE_SELECTED) {
		char mbox[LOGESC_SIZE(IMAP_MAX_ARG)];
		/* The client names the mailbox: quoted and escaped like every peer value. */
		log_debug("session=%s msg=state state=%s->%s mailbox=\"%s\" readonly=%d why=%s",
		    st->sid, state_names[old], state_names[proto],
		    logesc_quote(state_mailbox(st), mbox, sizeof(mbox)), st->readonly, why);
	} else
		log_debug("session=%s msg=state state=%s->%s why=%s", st->sid,
		    state_names[old], state_names[proto], why);
}

/*
 * The state the pipeline leads to.  RFC 3501 5.5 lets a client send a
 * command that depends on an earlier one before the answer: a SELECT
 * behind a LOGIN is judged as if the LOGIN had succeeded.
 */
enum state_proto
state_expected(const struct state *st)
{
	enum state_proto p = st->proto;

	for (size_t i = 0; i < st->ninflight; i++) {
		switch (st->inflight[i].kind) {
		case IMAPCMD_LOGIN:
			if (p == STATE_NOT_AUTH)
				p = STATE_AUTH;
			break;
		case IMAPCMD_SELECT:
			if (p != STATE_NOT_AUTH && p != STATE_LOGOUT)
				p = STATE_SELECTED;
			break;
		case IMAPCMD_CLOSE:
			if (p == STATE_SELECTED)
				p = STATE_AUTH;
			break;
		case IMAPCMD_LOGOUT:
			p = STATE_LOGOUT;
			break;
		default:
			break;
		}
	}
	return p;
}

/* Find the kind of the command in flight under tag. */
int
state_lookup(const struct state *st, const char *tag, enum imapcmd_class *kind)
{
	for (size_t i = 0; i < st->ninflight; i++)
		if (strcmp(st->inflight[i].tag, tag) == 0) {
			*kind = st->inflight[i].kind;
			return 1;
		}
	return 0;
}

/* Is there no room for another command in flight? */
int
state_inflight_full(const struct state *st)
{
	return st->ninflight >= STATE_MAX_INFLIGHT;
}

/* Record a client command as in flight. */
int
state_client_command(struct state *st, const struct imap_line *l)
{
	struct state_cmd *c;

	if (l->kind == IMAP_KIND_SASL && l->user[0] != '\0') {
		/* AUTHENTICATE PLAIN without SASL-IR: the name comes in the SASL line. */
		for (size_t i = st->ninflight; i > 0; i--) {
			c = &st->inflight[i - 1];
			if (c->kind == IMAPCMD_LOGIN && c->user != NULL && c->user[0] == '\0') {
				free(c->user);
				c->user = strdup(l->user);
				break;
			}
		}
		return 0;
	}
	if (l->kind != IMAP_KIND_COMMAND)
		return 0;
	if (state_inflight_full(st))
		return -1;
	if (st->ninflight == st->cap) {
		size_t cap = st->cap ? st->cap * 2 : STATE_INFLIGHT_MIN;
		struct state_cmd *v;

		if (cap > STATE_MAX_INFLIGHT)
			cap = STATE_MAX_INFLIGHT;
		if ((v = realloc(st->inflight, cap * sizeof(*v))) == NULL)
			return -1;
		st->inflight = v;
		st->cap = cap;
	}
	c = &st->inflight[st->ninflight++];
	memset(c, 0, sizeof(*c));
	memcpy(c->tag, l->tag, sizeof(c->tag));
	memcpy(c->name, l->name, sizeof(c->name));
	c->kind = l->command != NULL ? l->command->cls : IMAPCMD_UNKNOWN;
	switch (c->kind) {
	case IMAPCMD_SELECT:
		c->examine = strcmp(l->name, "EXAMINE") == 0;
		c->mailbox = strdup(l->arg);
		break;
	case IMAPCMD_LOGIN:
		c->user = strdup(l->user);
		if (strcmp(l->name, "AUTHENTICATE") == 0)
			st->authenticating = 1;
		break;
	default:
		break;
	}
	return 0;
}

/* Remove in-flight entry i. */
static void
state_inflight_remove(struct state *st, size_t i)
{
	state_cmd_clear(&st->inflight[i]);
	memmove(&st->inflight[i], &st->inflight[i + 1],
	    (st->ninflight - i - 1) * sizeof(st->inflight[0]));
	st->ninflight--;
	if (st->ninflight == 0 && st->cap > STATE_INFLIGHT_MIN) {
		/* A burst of pipelining is over: idle sessions keep a small table. */
		free(st->inflight);
		st->inflight = NULL;
		st->cap = 0;
	}
}

/* Find the in-flight command with this tag (normally the oldest). */
static struct state_cmd *
state_find(struct state *st, const char *tag, size_t *idx)
{
	for (size_t i = 0; i < st->ninflight; i++)
		if (strcmp(st->inflight[i].tag, tag) == 0) {
			*idx = i;
			return &st->inflight[i];
		}
	return NULL;
}

/* A tagged response ended command c: apply what it means. */
static void
state_complete(struct state *st, struct state_cmd *c, const struct imap_line *l)
{
	int ok = l->status == IMAP_STATUS_OK;

	switch (c->kind) {
	case IMAPCMD_LOGIN:
		st->authenticating = 0;
		if (ok && st->proto == STATE_NOT_AUTH) {
			if (c->user != NULL) {
				/* The entry's copy becomes the session's. */
				free(st->user);
				st->user = c->user;
				c->user = NULL;
			}
			state_set(st, STATE_AUTH, c->name);
		}
		break;
	case IMAPCMD_SELECT:
		if (ok && st->proto != STATE_NOT_AUTH && st->proto != STATE_LOGOUT) {
			free(st->mailbox);
			st->mailbox = c->mailbox;
			c->mailbox = NULL;
			st->readonly = c->examine || strcmp(l->code, "READ-ONLY") == 0;
			state_set(st, STATE_SELECTED, c->name);
		} else if (l->status == IMAP_STATUS_NO && st->proto == STATE_SELECTED) {
			/* RFC 3501 6.3.1: a failed SELECT leaves no mailbox selected. */
			state_set(st, STATE_AUTH, "select-failed");
		}
		break;
	case IMAPCMD_CLOSE:
		if (ok && st->proto == STATE_SELECTED)
			state_set(st, STATE_AUTH, c->name);
		break;
	case IMAPCMD_LOGOUT:
		if (ok)
			state_set(st, STATE_LOGOUT, "LOGOUT");
		break;
	case IMAPCMD_IDLE:
		st->idling = 0;
		break;
	default:
		break;
	}
}

/* Apply one complete server response to the state. */
void
state_server_response(struct state *st, const struct imap_line *l,
    struct state_result *res)
{
	struct state_cmd *c;
	size_t i;

	memset(res, 0, sizeof(*res));
	res->status = l->status;
	switch (l->kind) {
	case IMAP_KIND_GREETING:
		res->greeting = 1;
		st->greeted = 1;
		if (l->status == IMAP_STATUS_PREAUTH)
			state_set(st, STATE_AUTH, "PREAUTH");
		else if (l->status == IMAP_STATUS_BYE) {
			st->bye = 1;
			state_set(st, STATE_LOGOUT, "BYE-greeting");
		}
		break;
	case IMAP_KIND_UNTAGGED:
		if (l->status == IMAP_STATUS_BYE) {
			st->bye = 1;
			state_set(st, STATE_LOGOUT, "BYE");
		} else if (l->status == IMAP_STATUS_OK && strcmp(l->code, "CLOSED") == 0 &&
		    st->proto == STATE_SELECTED) {
			/* RFC 7162 3.2.11: the previous mailbox is closed. */
			state_set(st, STATE_AUTH, "CLOSED");
		}
		break;
	case IMAP_KIND_CONTINUATION:
		if (st->ninflight > 0 && st->inflight[st->ninflight - 1].kind == IMAPCMD_IDLE &&
		    !st->idling) {
			st->idling = 1;
			log_debug("session=%s msg=idle-start", st->sid);
		}
		break;
	case IMAP_KIND_TAGGED:
		if ((c = state_find(st, l->tag, &i)) == NULL) {
			char tag[LOGESC_SIZE(IMAP_MAX_TAG)];
			log_debug("session=%s msg=unknown-tag tag=\"%s\"", st->sid,
			    logesc_quote(l->tag, tag, sizeof(tag)));
			break;
		}
		res->completed = 1;
		res->kind = c->kind;
		res->started_us = c->started_us;
		state_complete(st, c, l);
		state_inflight_remove(st, i);
		break;
	default:
		break;
	}
}
