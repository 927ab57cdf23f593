/*
 * test_state: unit tests for the per-session protocol state (proxy/state.c).
 *
 * Every command and response is real bytes fed through the tokenizer
 * (proxy/imap.c), one parser per direction, and the resulting imap_line
 * handed to the state model the way session.c does it: client commands to
 * state_client_command(), server responses to state_server_response(), and
 * the client parser's mode reset when a LOGIN/AUTHENTICATE or IDLE ends.
 * The debug log (state_set's "old->new" lines) goes to a temporary file so
 * the transitions and the absence of passwords can be checked there too.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "imap.h"
#include "log.h"
#include "state.h"
#include "check.h"

/* The secret used in every login; it must never reach state or log. */
#define SECRET		"s3cretPw"
/* "\0demo\0s3cretPw" in base64: AUTHENTICATE PLAIN's initial response. */
#define PLAIN_B64	"AGRlbW8AczNjcmV0UHc="
/* Bound on the log file read back for checks. */
#define LOG_MAX		(1 << 20)


/* One session's worth of parsers and state. */
struct sess {
	struct imap_parser	cp, sp;
	struct state		st;
	struct state_result	last;	/* result of the last server response */
	int			nresp;	/* server responses applied */
	int			rc;	/* last state_client_command() result */
};

/* Fresh parsers and state for a test. */
static void
sess_init(struct sess *s)
{
	memset(s, 0, sizeof(*s));
	imap_parse_init(&s->cp, IMAP_DIR_CLIENT, 0);
	imap_parse_init(&s->sp, IMAP_DIR_SERVER, 0);
	state_init(&s->st, "test");
}

/* Free what sess_init set up. */
static void
sess_free(struct sess *s)
{
	state_free(&s->st);
	imap_parse_free(&s->cp);
	imap_parse_free(&s->sp);
}

/* Feed client bytes; every complete command goes to the state model. */
static void
client(struct sess *s, const char *bytes)
{
	size_t len = strlen(bytes), off = 0, n;
	struct imap_event ev;
	int guard = 0;

	s->rc = 0;
	while (off < len && guard++ < 100000) {
		n = imap_parse_feed(&s->cp, bytes + off, len - off, &ev);
		off += n;
		if (ev.type == IMAP_EV_ERROR) {
			CHECK(0, "client parser error on %s: %s", bytes, s->cp.error);
			return;
		}
		/*
		 * Every line, not only commands: the SASL line of an
		 * AUTHENTICATE without SASL-IR carries the user name.
		 */
		if (ev.type == IMAP_EV_LINE)
			s->rc = state_client_command(&s->st, imap_parse_line(&s->cp));
		if (n == 0 && ev.type == IMAP_EV_NONE)
			break;
	}
}

/* Feed server bytes; every complete response goes to the state model. */
static void
server(struct sess *s, const char *bytes)
{
	size_t len = strlen(bytes), off = 0, n;
	struct imap_event ev;
	int guard = 0;

	while (off < len && guard++ < 100000) {
		n = imap_parse_feed(&s->sp, bytes + off, len - off, &ev);
		off += n;
		if (ev.type == IMAP_EV_ERROR) {
			CHECK(0, "server parser error on %s: %s", bytes, s->sp.error);
			return;
		}
		if (ev.type == IMAP_EV_LINE) {
			state_server_response(&s->st, imap_parse_line(&s->sp), &s->last);
			s->nresp++;
			/* As session.c does: the state model ends SASL and IDLE. */
			if (s->last.completed && (s->last.kind == IMAPCMD_LOGIN ||
			    s->last.kind == IMAPCMD_IDLE))
				imap_parse_set_mode(&s->cp, IMAP_MODE_COMMAND);
		}
		if (n == 0 && ev.type == IMAP_EV_NONE)
			break;
	}
}

/* A session greeted with * OK and logged in as demo. */
static void
sess_login(struct sess *s)
{
	sess_init(s);
	server(s, "* OK IMAP4rev1 ready\r\n");
	client(s, "a1 LOGIN demo " SECRET "\r\n");
	server(s, "a1 OK [CAPABILITY IMAP4rev1] Logged in\r\n");
}

/* ... and with INBOX selected. */
static void
sess_selected(struct sess *s)
{
	sess_login(s);
	client(s, "a2 SELECT INBOX\r\n");
	server(s, "* 3 EXISTS\r\n* OK [UIDVALIDITY 1] UIDs valid\r\n"
	    "a2 OK [READ-WRITE] Select completed\r\n");
}

/* Does the secret appear anywhere in the state or what it points to? */
static int
state_holds_secret(const struct state *st)
{
	if (memmem(st, sizeof(*st), SECRET, strlen(SECRET)) != NULL)
		return 1;
	for (size_t i = 0; i < st->ninflight; i++) {
		const struct state_cmd *c = &st->inflight[i];

		if (memmem(c, sizeof(*c), SECRET, strlen(SECRET)) != NULL ||
		    (c->user && strstr(c->user, SECRET)) ||
		    (c->mailbox && strstr(c->mailbox, SECRET)))
			return 1;
	}
	return 0;
}

/* Greeting OK, PREAUTH and BYE. */
static void
test_greeting(void)
{
	struct sess s;

	sess_init(&s);
	server(&s, "* OK [CAPABILITY IMAP4rev1 IDLE] Dovecot ready.\r\n");
	CHECK(s.last.greeting == 1, "greeting flag %d", s.last.greeting);
	CHECK(s.st.greeted == 1, "greeted %d", s.st.greeted);
	CHECK(s.st.proto == STATE_NOT_AUTH, "OK greeting -> %s", state_name(s.st.proto));
	sess_free(&s);

	sess_init(&s);
	server(&s, "* PREAUTH [CAPABILITY IMAP4rev1] Logged in as demo\r\n");
	CHECK(s.last.greeting == 1, "PREAUTH greeting flag");
	CHECK(s.st.proto == STATE_AUTH, "PREAUTH -> %s", state_name(s.st.proto));
	sess_free(&s);

	sess_init(&s);
	server(&s, "* BYE Too many connections\r\n");
	CHECK(s.last.greeting == 1, "BYE greeting flag");
	CHECK(s.st.proto == STATE_LOGOUT, "BYE greeting -> %s", state_name(s.st.proto));
	CHECK(s.st.bye == 1, "bye flag %d", s.st.bye);
	sess_free(&s);

	/* A second "* OK" is not a greeting for the state model. */
	sess_init(&s);
	server(&s, "* OK ready\r\n* OK still here\r\n");
	CHECK(s.nresp == 2 && s.last.greeting == 0, "second OK seen as greeting");
	sess_free(&s);
}

/* LOGIN OK and NO, with atoms, quoted strings and literals. */
static void
test_login(void)
{
	struct sess s;

	sess_login(&s);
	CHECK(s.last.completed && s.last.kind == IMAPCMD_LOGIN, "LOGIN not completed");
	CHECK(s.st.proto == STATE_AUTH, "LOGIN OK -> %s", state_name(s.st.proto));
	CHECK(strcmp(state_user(&s.st), "demo") == 0, "user [%s]", state_user(&s.st));
	CHECK(s.st.ninflight == 0, "ninflight %zu", s.st.ninflight);
	CHECK(!state_holds_secret(&s.st), "password kept in state");
	sess_free(&s);

	sess_init(&s);
	server(&s, "* OK ready\r\n");
	client(&s, "a1 LOGIN \"demo\" \"wrong " SECRET "\"\r\n");
	CHECK(!state_holds_secret(&s.st), "password kept in in-flight entry");
	server(&s, "a1 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n");
	CHECK(s.last.completed && s.last.status == IMAP_STATUS_NO, "LOGIN NO result");
	CHECK(s.st.proto == STATE_NOT_AUTH, "LOGIN NO -> %s", state_name(s.st.proto));
	CHECK(state_user(&s.st)[0] == '\0', "user after NO [%s]", state_user(&s.st));
	/* ... and a second, right attempt works. */
	client(&s, "a2 LOGIN {4}\r\ndemo {8}\r\n" SECRET "\r\n");
	CHECK(!state_holds_secret(&s.st), "literal password kept in state");
	server(&s, "a2 OK Logged in\r\n");
	CHECK(s.st.proto == STATE_AUTH, "LOGIN with literals -> %s", state_name(s.st.proto));
	CHECK(strcmp(state_user(&s.st), "demo") == 0, "literal user [%s]", state_user(&s.st));
	CHECK(!state_holds_secret(&s.st), "password kept in state");
	sess_free(&s);

	/* LOGIN BAD stays too. */
	sess_init(&s);
	server(&s, "* OK ready\r\n");
	client(&s, "a1 LOGIN demo\r\n");
	server(&s, "a1 BAD Missing arguments\r\n");
	CHECK(s.st.proto == STATE_NOT_AUTH, "LOGIN BAD -> %s", state_name(s.st.proto));
	sess_free(&s);
}

/* AUTHENTICATE PLAIN with SASL-IR and without. */
static void
test_authenticate(void)
{
	struct sess s;

	sess_init(&s);
	server(&s, "* OK ready\r\n");
	client(&s, "a1 AUTHENTICATE PLAIN " PLAIN_B64 "\r\n");
	CHECK(s.st.authenticating == 1, "authenticating %d", s.st.authenticating);
	CHECK(state_expected(&s.st) == STATE_AUTH, "expected %s",
	    state_name(state_expected(&s.st)));
	server(&s, "a1 OK Logged in\r\n");
	CHECK(s.st.authenticating == 0, "authenticating after OK %d", s.st.authenticating);
	CHECK(s.st.proto == STATE_AUTH, "AUTHENTICATE OK -> %s", state_name(s.st.proto));
	CHECK(strcmp(state_user(&s.st), "demo") == 0, "SASL-IR user [%s]", state_user(&s.st));
	CHECK(!state_holds_secret(&s.st), "password kept in state");
	/* The client parser is back in command mode. */
	client(&s, "a2 SELECT INBOX\r\n");
	CHECK(s.st.ninflight == 1, "SELECT after AUTHENTICATE not recorded (%zu)",
	    s.st.ninflight);
	sess_free(&s);

	/* Without SASL-IR: "+" then the base64 line, which is not a command. */
	sess_init(&s);
	server(&s, "* OK ready\r\n");
	client(&s, "a1 AUTHENTICATE PLAIN\r\n");
	server(&s, "+ \r\n");
	CHECK(s.st.idling == 0, "AUTHENTICATE '+' taken for IDLE");
	client(&s, PLAIN_B64 "\r\n");
	CHECK(s.st.ninflight == 1, "SASL line recorded as a command (%zu)", s.st.ninflight);
	server(&s, "a1 OK Logged in\r\n");
	CHECK(s.st.proto == STATE_AUTH, "AUTHENTICATE (no IR) -> %s", state_name(s.st.proto));
	CHECK(strcmp(state_user(&s.st), "demo") == 0,
	    "user from the SASL line (no SASL-IR) [%s]", state_user(&s.st));
	CHECK(!state_holds_secret(&s.st), "password kept in state");
	sess_free(&s);

	/* Cancelled with "*": stays Not Authenticated. */
	sess_init(&s);
	server(&s, "* OK ready\r\n");
	client(&s, "a1 AUTHENTICATE PLAIN\r\n");
	server(&s, "+ \r\n");
	client(&s, "*\r\n");
	server(&s, "a1 BAD Authentication aborted\r\n");
	CHECK(s.st.proto == STATE_NOT_AUTH, "cancelled AUTHENTICATE -> %s",
	    state_name(s.st.proto));
	CHECK(s.st.authenticating == 0, "authenticating after cancel");
	sess_free(&s);
}

/* SELECT, EXAMINE, READ-ONLY and the failures. */
static void
test_select(void)
{
	struct sess s;

	sess_selected(&s);
	CHECK(s.st.proto == STATE_SELECTED, "SELECT OK -> %s", state_name(s.st.proto));
	CHECK(strcmp(state_mailbox(&s.st), "INBOX") == 0, "mailbox [%s]", state_mailbox(&s.st));
	CHECK(s.st.readonly == 0, "readonly %d", s.st.readonly);

	client(&s, "a3 EXAMINE \"Sent Items\"\r\n");
	server(&s, "a3 OK [READ-ONLY] Examine completed\r\n");
	CHECK(s.st.proto == STATE_SELECTED, "EXAMINE -> %s", state_name(s.st.proto));
	CHECK(strcmp(state_mailbox(&s.st), "Sent Items") == 0, "mailbox [%s]", state_mailbox(&s.st));
	CHECK(s.st.readonly == 1, "EXAMINE readonly %d", s.st.readonly);

	/* A SELECT the server opens read-only. */
	client(&s, "a4 SELECT Shared\r\n");
	server(&s, "a4 OK [READ-ONLY] Select completed\r\n");
	CHECK(s.st.proto == STATE_SELECTED && s.st.readonly == 1,
	    "SELECT [READ-ONLY] -> %s readonly %d", state_name(s.st.proto), s.st.readonly);
	CHECK(strcmp(state_mailbox(&s.st), "Shared") == 0, "mailbox [%s]", state_mailbox(&s.st));

	/* A plain SELECT OK after that is read-write again. */
	client(&s, "a5 SELECT INBOX\r\n");
	server(&s, "a5 OK [READ-WRITE] Select completed\r\n");
	CHECK(s.st.readonly == 0, "readonly not reset %d", s.st.readonly);

	/*
	 * BAD means the command was not processed at all (RFC 3501 7.1.3: a
	 * protocol-level error in the client's command), so the mailbox that
	 * was selected stays selected.  Only NO is a SELECT that ran and
	 * failed, which closes the old mailbox (RFC 3501 6.3.1).
	 */
	client(&s, "a6 SELECT\r\n");
	server(&s, "a6 BAD Missing mailbox\r\n");
	CHECK(s.st.proto == STATE_SELECTED, "SELECT BAD while Selected -> %s",
	    state_name(s.st.proto));
	CHECK(strcmp(state_mailbox(&s.st), "INBOX") == 0, "mailbox after BAD [%s]", state_mailbox(&s.st));

	client(&s, "a7 SELECT Nonexistent\r\n");
	server(&s, "a7 NO [NONEXISTENT] Mailbox doesn't exist: Nonexistent\r\n");
	CHECK(s.st.proto == STATE_AUTH, "SELECT NO while Selected -> %s",
	    state_name(s.st.proto));
	CHECK(state_mailbox(&s.st)[0] == '\0', "mailbox after NO [%s]", state_mailbox(&s.st));

	/* SELECT NO while Authenticated stays Authenticated. */
	client(&s, "a8 SELECT Nonexistent\r\n");
	server(&s, "a8 NO [NONEXISTENT] Mailbox doesn't exist\r\n");
	CHECK(s.st.proto == STATE_AUTH, "SELECT NO while Auth -> %s", state_name(s.st.proto));
	sess_free(&s);

	/* A SELECT answered OK before login is not a selection. */
	sess_init(&s);
	server(&s, "* OK ready\r\n");
	client(&s, "a1 SELECT INBOX\r\n");
	server(&s, "a1 OK weird server\r\n");
	CHECK(s.st.proto == STATE_NOT_AUTH, "SELECT OK while Not Auth -> %s",
	    state_name(s.st.proto));
	sess_free(&s);
}

/* CLOSE, UNSELECT and the [CLOSED] code. */
static void
test_close(void)
{
	struct sess s;

	sess_selected(&s);
	client(&s, "a3 CLOSE\r\n");
	server(&s, "a3 OK Close completed\r\n");
	CHECK(s.st.proto == STATE_AUTH, "CLOSE -> %s", state_name(s.st.proto));
	CHECK(state_mailbox(&s.st)[0] == '\0', "mailbox after CLOSE [%s]", state_mailbox(&s.st));
	sess_free(&s);

	sess_selected(&s);
	client(&s, "a3 UNSELECT\r\n");
	server(&s, "a3 OK Unselect completed\r\n");
	CHECK(s.st.proto == STATE_AUTH, "UNSELECT -> %s", state_name(s.st.proto));
	sess_free(&s);

	/* CLOSE NO leaves the mailbox selected. */
	sess_selected(&s);
	client(&s, "a3 CLOSE\r\n");
	server(&s, "a3 NO Cannot close\r\n");
	CHECK(s.st.proto == STATE_SELECTED, "CLOSE NO -> %s", state_name(s.st.proto));
	sess_free(&s);

	/* QRESYNC: SELECT while Selected sends [CLOSED] then the new mailbox. */
	sess_selected(&s);
	client(&s, "a3 SELECT Archive\r\n");
	server(&s, "* OK [CLOSED] Previous mailbox closed\r\n");
	CHECK(s.st.proto == STATE_AUTH, "[CLOSED] -> %s", state_name(s.st.proto));
	server(&s, "* 2 EXISTS\r\na3 OK [READ-WRITE] Select completed\r\n");
	CHECK(s.st.proto == STATE_SELECTED && strcmp(state_mailbox(&s.st), "Archive") == 0,
	    "after [CLOSED] + OK -> %s [%s]", state_name(s.st.proto), state_mailbox(&s.st));
	sess_free(&s);

	/* [CLOSED] in a tagged response or a NO does nothing special. */
	sess_selected(&s);
	server(&s, "* NO [CLOSED] odd\r\n");
	CHECK(s.st.proto == STATE_SELECTED, "* NO [CLOSED] -> %s", state_name(s.st.proto));
	server(&s, "* OK [CLOSEDX] odd\r\n");
	CHECK(s.st.proto == STATE_SELECTED, "* OK [CLOSEDX] -> %s", state_name(s.st.proto));
	sess_free(&s);
}

/* LOGOUT and untagged BYE. */
static void
test_logout(void)
{
	struct sess s;

	sess_selected(&s);
	client(&s, "a3 LOGOUT\r\n");
	CHECK(state_expected(&s.st) == STATE_LOGOUT, "expected after LOGOUT %s",
	    state_name(state_expected(&s.st)));
	server(&s, "* BYE Logging out\r\n");
	CHECK(s.st.proto == STATE_LOGOUT && s.st.bye, "* BYE -> %s", state_name(s.st.proto));
	server(&s, "a3 OK Logout completed.\r\n");
	CHECK(s.last.completed && s.last.kind == IMAPCMD_LOGOUT, "LOGOUT completion");
	CHECK(s.st.proto == STATE_LOGOUT, "LOGOUT -> %s", state_name(s.st.proto));
	CHECK(s.st.ninflight == 0, "ninflight %zu", s.st.ninflight);
	/* The user stays for the summary line. */
	CHECK(strcmp(state_user(&s.st), "demo") == 0, "user after LOGOUT [%s]", state_user(&s.st));
	sess_free(&s);

	/* An unsolicited BYE (server shutdown) while Authenticated. */
	sess_login(&s);
	server(&s, "* BYE Server shutting down.\r\n");
	CHECK(s.st.proto == STATE_LOGOUT && s.st.bye == 1, "untagged BYE -> %s",
	    state_name(s.st.proto));
	sess_free(&s);
}

/* Pipelining: state_expected, out-of-order completion, unknown tags. */
static void
test_pipeline(void)
{
	struct sess s;
	enum imapcmd_class k;

	sess_init(&s);
	server(&s, "* OK ready\r\n");
	client(&s, "a1 LOGIN demo " SECRET "\r\na2 SELECT INBOX\r\n");
	CHECK(s.st.ninflight == 2, "ninflight %zu", s.st.ninflight);
	CHECK(s.st.proto == STATE_NOT_AUTH, "proto before answers %s", state_name(s.st.proto));
	CHECK(state_expected(&s.st) == STATE_SELECTED, "expected %s",
	    state_name(state_expected(&s.st)));
	CHECK(state_lookup(&s.st, "a2", &k) == 1 && k == IMAPCMD_SELECT, "lookup a2");
	CHECK(state_lookup(&s.st, "a9", &k) == 0, "lookup a9");
	server(&s, "a1 OK Logged in\r\n* 0 EXISTS\r\na2 OK [READ-WRITE] Selected\r\n");
	CHECK(s.st.proto == STATE_SELECTED, "pipelined -> %s", state_name(s.st.proto));
	CHECK(s.st.ninflight == 0, "ninflight %zu", s.st.ninflight);
	sess_free(&s);

	/* LOGIN that fails: the pipelined SELECT is not a selection. */
	sess_init(&s);
	server(&s, "* OK ready\r\n");
	client(&s, "a1 LOGIN demo wrong\r\na2 SELECT INBOX\r\n");
	server(&s, "a1 NO [AUTHENTICATIONFAILED] failed\r\n"
	    "a2 BAD Command not allowed now\r\n");
	CHECK(s.st.proto == STATE_NOT_AUTH, "failed pipeline -> %s", state_name(s.st.proto));
	sess_free(&s);

	/* state_expected walks SELECT, CLOSE and LOGOUT too. */
	sess_selected(&s);
	client(&s, "b1 CLOSE\r\n");
	CHECK(state_expected(&s.st) == STATE_AUTH, "expected after CLOSE %s",
	    state_name(state_expected(&s.st)));
	client(&s, "b2 EXAMINE INBOX\r\n");
	CHECK(state_expected(&s.st) == STATE_SELECTED, "expected after EXAMINE %s",
	    state_name(state_expected(&s.st)));
	client(&s, "b3 LOGOUT\r\n");
	CHECK(state_expected(&s.st) == STATE_LOGOUT, "expected after LOGOUT %s",
	    state_name(state_expected(&s.st)));
	CHECK(s.st.proto == STATE_SELECTED, "proto moved before answers");
	sess_free(&s);

	/* Tags completed out of order. */
	sess_login(&s);
	client(&s, "t1 NOOP\r\nt2 SELECT INBOX\r\nt3 CAPABILITY\r\n");
	CHECK(s.st.ninflight == 3, "ninflight %zu", s.st.ninflight);
	server(&s, "* CAPABILITY IMAP4rev1\r\nt3 OK done\r\n");
	CHECK(s.last.completed && s.last.kind == IMAPCMD_ANY, "t3 completion");
	CHECK(s.st.ninflight == 2 && state_lookup(&s.st, "t3", &k) == 0, "t3 still in flight");
	CHECK(state_lookup(&s.st, "t1", &k) == 1 && state_lookup(&s.st, "t2", &k) == 1,
	    "t1/t2 lost");
	server(&s, "t2 OK [READ-WRITE] selected\r\n");
	CHECK(s.st.proto == STATE_SELECTED, "t2 -> %s", state_name(s.st.proto));
	CHECK(s.st.ninflight == 1 && state_lookup(&s.st, "t1", &k) == 1 &&
	    k == IMAPCMD_ANY, "t1 after t2");
	server(&s, "t1 OK done\r\n");
	CHECK(s.st.ninflight == 0, "ninflight %zu", s.st.ninflight);

	/* An unknown tag is ignored: no completion, no state change. */
	server(&s, "zz NO [CLOSED] who?\r\n");
	CHECK(s.last.completed == 0, "unknown tag completed something");
	CHECK(s.st.proto == STATE_SELECTED, "unknown tag -> %s", state_name(s.st.proto));
	client(&s, "t4 CLOSE\r\n");
	server(&s, "zz OK [CLOSED]\r\n");
	CHECK(s.st.ninflight == 1 && s.st.proto == STATE_SELECTED,
	    "unknown tag completed t4");
	server(&s, "t4 OK closed\r\n");
	CHECK(s.st.proto == STATE_AUTH, "t4 -> %s", state_name(s.st.proto));
	sess_free(&s);
}

/* IDLE: "+" sets idling, the tagged OK clears it. */
static void
test_idle(void)
{
	struct sess s;

	sess_selected(&s);
	client(&s, "i1 IDLE\r\n");
	CHECK(s.st.idling == 0, "idling before '+'");
	server(&s, "+ idling\r\n");
	CHECK(s.st.idling == 1, "idling after '+' %d", s.st.idling);
	server(&s, "* 4 EXISTS\r\n* OK Still here\r\n");
	CHECK(s.st.idling == 1 && s.st.proto == STATE_SELECTED, "idle untagged");
	client(&s, "DONE\r\n");
	CHECK(s.st.ninflight == 1, "DONE recorded as a command (%zu)", s.st.ninflight);
	server(&s, "i1 OK Idle completed\r\n");
	CHECK(s.st.idling == 0, "idling after OK %d", s.st.idling);
	CHECK(s.last.completed && s.last.kind == IMAPCMD_IDLE, "IDLE completion");
	CHECK(s.st.proto == STATE_SELECTED, "after IDLE -> %s", state_name(s.st.proto));
	/* Back in command mode. */
	client(&s, "i2 NOOP\r\n");
	CHECK(s.st.ninflight == 1, "NOOP after IDLE not recorded");
	server(&s, "i2 OK\r\n");

	/* A "+" for an APPEND literal is not IDLE. */
	client(&s, "i3 APPEND INBOX {3}\r\n");
	server(&s, "+ OK\r\n");
	CHECK(s.st.idling == 0, "APPEND '+' set idling");
	client(&s, "abc\r\n");
	server(&s, "i3 OK [APPENDUID 1 5] Append completed\r\n");
	CHECK(s.st.ninflight == 0, "ninflight %zu", s.st.ninflight);
	sess_free(&s);
}

/* STATE_MAX_INFLIGHT commands, then -1. */
static void
test_inflight_limit(void)
{
	struct sess s;
	char cmd[64];
	int bad = 0;

	sess_login(&s);
	for (int i = 0; i < STATE_MAX_INFLIGHT; i++) {
		snprintf(cmd, sizeof(cmd), "n%d NOOP\r\n", i);
		client(&s, cmd);
		if (s.rc != 0)
			bad++;
	}
	CHECK(bad == 0, "%d commands refused below the limit", bad);
	CHECK(s.st.ninflight == STATE_MAX_INFLIGHT, "ninflight %zu", s.st.ninflight);
	CHECK(state_inflight_full(&s.st), "not full at the limit");
	client(&s, "over NOOP\r\n");
	CHECK(s.rc == -1, "command past the limit returned %d", s.rc);
	CHECK(s.st.ninflight == STATE_MAX_INFLIGHT, "ninflight past limit %zu", s.st.ninflight);
	/* Answering one makes room again. */
	server(&s, "n0 OK done\r\n");
	CHECK(!state_inflight_full(&s.st), "full after one answer");
	client(&s, "again NOOP\r\n");
	CHECK(s.rc == 0, "command after room returned %d", s.rc);
	sess_free(&s);
}

/* Classification and the state a command needs. */
static void
test_classify(void)
{
	static const struct {
		const char	*line;
		int		 login, selected;
	} cases[] = {
		{ "a CAPABILITY\r\n", 0, 0 },
		{ "a NOOP\r\n", 0, 0 },
		{ "a LOGOUT\r\n", 0, 0 },
		{ "a ID NIL\r\n", 0, 0 },
		{ "a LOGIN u p\r\n", 0, 0 },
		{ "a STARTTLS\r\n", 0, 0 },
		{ "a SELECT INBOX\r\n", 1, 0 },
		{ "a EXAMINE INBOX\r\n", 1, 0 },
		{ "a LIST \"\" *\r\n", 1, 0 },
		{ "a NAMESPACE\r\n", 1, 0 },
		{ "a STATUS INBOX (MESSAGES)\r\n", 1, 0 },
		{ "a IDLE\r\n", 1, 0 },
		{ "a FETCH 1 FLAGS\r\n", 1, 1 },
		{ "a UID FETCH 1:* FLAGS\r\n", 1, 1 },
		{ "a uid search all\r\n", 1, 1 },
		{ "a CLOSE\r\n", 1, 1 },
		{ "a UNSELECT\r\n", 1, 1 },
		{ "a EXPUNGE\r\n", 1, 1 },
		{ "a XYZZY\r\n", 0, 0 },
	};
	struct imap_parser p;
	struct imap_event ev;

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		size_t len = strlen(cases[i].line);
		enum imapcmd_class k;

		imap_parse_init(&p, IMAP_DIR_CLIENT, 0);
		CHECK(imap_parse_feed(&p, cases[i].line, len, &ev) == len &&
		    ev.type == IMAP_EV_LINE, "%s not one line", cases[i].line);
		k = imap_parse_line(&p)->command != NULL ?
		    imap_parse_line(&p)->command->cls : IMAPCMD_UNKNOWN;
		CHECK(imapcmd_needs_login(k) == cases[i].login, "needs_login(%s) = %d",
		    cases[i].line, imapcmd_needs_login(k));
		CHECK(imapcmd_needs_selected(k) == cases[i].selected,
		    "needs_selected(%s) = %d", cases[i].line, imapcmd_needs_selected(k));
		imap_parse_free(&p);
	}
}

/* Read the captured log back (NUL-terminated, malloc'd). */
static char *
read_log(FILE *f)
{
	char *buf = malloc(LOG_MAX + 1);
	size_t n;

	if (buf == NULL)
		abort();
	fflush(stderr);
	rewind(f);
	n = fread(buf, 1, LOG_MAX, f);
	buf[n] = '\0';
	return buf;
}

int
main(void)
{
	FILE *logf = tmpfile();
	int saved = dup(2);
	char *log;

	setvbuf(stdout, NULL, _IONBF, 0);
	if (logf == NULL || saved < 0 || dup2(fileno(logf), 2) < 0) {
		printf("FAIL: cannot capture stderr\n");
		return 1;
	}
	log_set_level(CONFIG_LOG_DEBUG);

	test_greeting();
	test_login();
	test_authenticate();
	test_select();
	test_close();
	test_logout();
	test_pipeline();
	test_idle();
	test_inflight_limit();
	test_classify();

	log = read_log(logf);
	dup2(saved, 2);
	close(saved);
	CHECK(strstr(log, "state=NotAuthenticated->Authenticated") != NULL,
	    "no Not Authenticated->Authenticated log line");
	CHECK(strstr(log, "state=Authenticated->Selected mailbox=\"INBOX\"") != NULL,
	    "no Authenticated->Selected mailbox=\"INBOX\" log line");
	CHECK(strstr(log, "state=Selected->Authenticated") != NULL,
	    "no Selected->Authenticated log line");
	CHECK(strstr(log, "state=Selected->Logout") != NULL, "no ->Logout log line");
	CHECK(strstr(log, SECRET) == NULL, "the password is in the log");
	CHECK(strstr(log, PLAIN_B64) == NULL, "the SASL response is in the log");
	free(log);
	fclose(logf);

	printf("%d checks, %d failures\n", checks, failures);
	return failures ? 1 : 0;
}
