#!/usr/bin/env python3
"""Session guard against the scripted backend (tests/backends/fake_backend.py):
what no real server does on demand.  Byte-exact checks of what the client
gets through imapgate.

usage: test_guard_fake.py [PATH-TO-IMAPGATE]   (or $IMAPGATE)
"""

import base64
import re
import sys
import time

from harness import check, say
import test_guard_common as common
from test_guard_common import (BYE_DESYNC, BYE_NOT_LOGGED_IN, BYE_UNAVAILABLE,
                               no_fabricated_ok, read_to_close, session_end)

from fake_backend import FakeBackend, MESSAGE  # noqa: E402  (path set by common)

LIFETIME = 60.0     # seconds a scripted backend lives at most


def fake(env, script):
    """A running scripted backend, stopped at cleanup."""
    fb = FakeBackend(script, lifetime=LIFETIME)
    fb.start()
    env.backends.append(fb)
    return fb


def setup(env, script, extra="", backend_response="2s"):
    """(fake backend, imapgate in front of it)."""
    fb = fake(env, script)
    return fb, env.gate(fb.port, extra=extra, backend_response=backend_response)


def logged_in(env, g, select=False):
    """A client through g, logged in (and with INBOX selected)."""
    c = env.client(g)
    c.login("testuser", "pass")
    if select:
        c.select("INBOX")
    return c


def commands_seen(fb):
    """Upper-case command names the backend received, in order."""
    out = []
    for rec in fb.connections:
        for raw in rec["commands"]:
            w = raw.split(None, 2)
            out.append(w[1].decode("latin-1").upper() if len(w) > 1 else "")
    return out


# ------------------------------------------------------------ client state

def t_select_before_login(env):
    """SELECT with no LOGIN: BYE, tagged BAD, close; never forwarded."""
    fb, g = setup(env, None)
    for cmd in (b"a SELECT INBOX\r\n", b"b NAMESPACE\r\n", b"c UID FETCH 1 FLAGS\r\n",
                b"d IDLE\r\n"):
        c = env.client(g)
        c.send(cmd)
        data, how = read_to_close(c)
        tag = cmd.split()[0]
        # UID commands are named with their subcommand ("UID FETCH").
        name = b" ".join(cmd.split()[1:3]) if cmd.split()[1] == b"UID" else cmd.split()[1]
        want = BYE_NOT_LOGGED_IN + tag + b" BAD " + name + b" not allowed now\r\n"
        check(data == want, "%r -> %r (%s), want %r" % (cmd, data, how, want))
        say("   %-22r -> BYE + %r, %s" % (cmd, want.split(b"\r\n")[1], how))
    time.sleep(0.2)
    seen = commands_seen(fb)
    check(not set(seen) & {"SELECT", "NAMESPACE", "UID", "IDLE"},
          "backend received %r" % seen)
    say("   backend received none of them")
    f = session_end(g, count=4)
    check(f.get("reason") == "client-state" and f.get("last_guard") == "client_state",
          "session-end: %r" % f)


def t_pipelined_behind_login(env):
    """SELECT pipelined behind an unanswered LOGIN in one packet is forwarded."""
    fb, g = setup(env, None)
    c = env.client(g)
    c.send(b"a LOGIN testuser pass\r\nb SELECT INBOX\r\n")
    ta, _ = c.response("a")
    tb, items = c.response("b")
    check(ta == b"a OK LOGIN completed\r\n", "LOGIN -> %r" % ta)
    check(tb == b"b OK [READ-WRITE] SELECT completed\r\n", "SELECT -> %r" % tb)
    check(any(t == b"* 3 EXISTS\r\n" for t, _ in items), "no EXISTS: %r" % items)
    c.cmd("NOOP")
    c.logout()


def t_failed_login_then_select(env):
    """LOGIN refused, SELECT pipelined behind it: the backend's NO decides, then BYE."""
    fb, g = setup(env, {"commands": {"LOGIN": [{"send": "{tag} NO [AUTHENTICATIONFAILED] nope\r\n"}],
                                     "SELECT": [{"send": "{tag} BAD SELECT not allowed now\r\n"}]}})
    c = env.client(g)
    c.send(b"a LOGIN testuser wrong\r\nb SELECT INBOX\r\n")
    ta, _ = c.response("a")
    check(ta == b"a NO [AUTHENTICATIONFAILED] nope\r\n", "LOGIN -> %r" % ta)
    # The SELECT was legal when sent: forwarded, answered by the backend.
    tb, _ = c.response("b")
    check(tb == b"b BAD SELECT not allowed now\r\n", "SELECT -> %r" % tb)
    # Now the session is known to be Not Authenticated: the guard acts.
    c.send(b"c SELECT INBOX\r\n")
    data, _ = read_to_close(c)
    check(data == BYE_NOT_LOGGED_IN + b"c BAD SELECT not allowed now\r\n", "got %r" % data)


def t_client_state_pass(env):
    """guard.client_state: pass forwards the command; the backend answers."""
    fb, g = setup(env, {"commands": {"SELECT": [{"send": "{tag} BAD SELECT not allowed now\r\n"}]}},
                  extra="guard:\n  client_state: pass\n")
    c = env.client(g)
    t, _ = c.cmd("SELECT INBOX", ok=False)
    check(t == b"T1 BAD SELECT not allowed now\r\n", "got %r" % t)
    c.cmd("NOOP")
    c.logout()
    check("SELECT" in commands_seen(fb), "SELECT not forwarded")


# ------------------------------------------------------------------ desync

def t_second_greeting(env):
    """The backend greets again after LOGIN: the greeting is dropped, BYE, close."""
    # The scripted greeting text is not a real server's: name it.
    fb, g = setup(env, "second_greeting",
                  extra="guard:\n  greeting_patterns: ['^Fake IMAP server ready$']\n")
    c = env.client(g)
    c.send(b"a LOGIN testuser pass\r\n")
    data, how = read_to_close(c)
    check(data == b"a OK LOGIN completed\r\n" + BYE_DESYNC, "got %r (%s)" % (data, how))
    f = session_end(g)
    check(f.get("reason") == "backend-greeted-again", "session-end: %r" % f)
    check(f.get("last_guard") == "desync_greeting", "last_guard: %r" % f.get("last_guard"))
    say("   %r" % data)


def t_default_greeting_patterns(env):
    """The default guard.greeting_patterns know WildDuck's and Dovecot's greetings."""
    for text in ("* OK WildDuck IMAP Server ready for requests from 127.0.0.1 abcdefghijklmnop\r\n",
                 "* OK [CAPABILITY IMAP4rev1 IDLE] Dovecot (Debian) ready.\r\n",
                 "* OK [CAPABILITY IMAP4rev1 IDLE] Dovecot ready.\r\n"):
        fb, g = setup(env, {"steps": [{"command": "LOGIN", "actions": [
            {"builtin": True}, {"send": text}]}]})
        c = env.client(g)
        c.send(b"a LOGIN testuser pass\r\n")
        data, _ = read_to_close(c)
        check(data == b"a OK LOGIN completed\r\n" + BYE_DESYNC, "%r: got %r" % (text, data))
        say("   %r -> BYE" % text[:50])
        env.stop_gate(g)
    # An untagged OK that only mentions "ready" is not a greeting.
    fb, g = setup(env, {"commands": {"NOOP": [{"send": "* OK Backup ready\r\n"},
                                              {"send": "{tag} OK NOOP completed\r\n"}]}})
    c = logged_in(env, g)
    t, items = c.cmd("NOOP")
    check([x for x, _ in items] == [b"* OK Backup ready\r\n"], "untagged %r" % items)
    c.logout()


def t_untagged_preauth(env):
    """An untagged PREAUTH mid-session is a desync."""
    fb, g = setup(env, {"commands": {"NOOP": [{"send": "* PREAUTH [CAPABILITY IMAP4rev1] hi\r\n"},
                                              {"send": "{tag} OK NOOP completed\r\n"}]}})
    c = logged_in(env, g)
    c.send(b"n NOOP\r\n")
    data, _ = read_to_close(c)
    check(data == BYE_DESYNC, "got %r" % data)


def t_not_allowed_now_desync(env):
    """Logged in, SELECT answered `BAD SELECT not allowed now`: BYE, not the BAD."""
    fb, g = setup(env, "not_allowed_now")
    c = logged_in(env, g)
    c.send(b"s SELECT INBOX\r\n")
    data, _ = read_to_close(c)
    check(data == BYE_DESYNC, "got %r" % data)
    f = session_end(g)
    check(f.get("reason") == "backend-desync" and f.get("last_guard") == "desync_state",
          "session-end: %r" % f)


def t_desync_patterns_config(env):
    """guard.desync_patterns replaces the defaults; guard.desync: pass only counts."""
    script = {"commands": {"LIST": [{"send": "{tag} NO [CLIENTBUG] Please login first\r\n"}]}}
    fb, g = setup(env, script, extra="guard:\n  desync_patterns: ['login first']\n")
    c = logged_in(env, g)
    c.send(b"l LIST \"\" *\r\n")
    data, _ = read_to_close(c)
    check(data == BYE_DESYNC, "custom pattern: got %r" % data)
    fb, g = setup(env, script, extra="guard:\n  desync: pass\n  desync_patterns: ['login first']\n")
    c = logged_in(env, g)
    t, _ = c.cmd('LIST "" *', ok=False)
    check(t == b"T2 NO [CLIENTBUG] Please login first\r\n", "desync: pass: got %r" % t)
    c.logout()


# ------------------------------------------------------------ normalization

def t_tagged_maybe(env):
    """A tagged MAYBE becomes NO; the rest of the line is kept."""
    fb, g = setup(env, "tagged_maybe")
    c = logged_in(env, g)
    t, _ = c.cmd("NOOP", ok=False)
    check(t == b"T2 NO NOOP completed\r\n", "got %r" % t)
    c.logout()


def t_unknown_code_stripped(env):
    """[X-FOO] is dropped from failures (NO, BAD), where clients act on
    codes, and kept on OK, where RFC 3501 has clients ignore codes they do
    not know (issue 17: Courier's [MYRIGHTS ...] on SELECT)."""
    fb, g = setup(env, "x_foo_code")
    c = logged_in(env, g)
    t, items = c.cmd("NOOP")
    check(t == b"T2 OK [X-FOO] NOOP completed\r\n", "tagged: %r" % t)
    check([x for x, _ in items] == [b"* OK [X-FOO] untagged note\r\n"], "untagged: %r" % items)
    c.logout()
    f = session_end(g)
    check(f.get("rewrites") == "0", "rewrites=%r, want 0" % f.get("rewrites"))
    fb, g = setup(env, {"commands": {"NOOP": [{"send": "* BAD [X-FOO] untagged note\r\n"},
                                              {"send": "{tag} NO [X-FOO] NOOP failed\r\n"}]}})
    c = logged_in(env, g)
    t, items = c.cmd("NOOP", ok=False)
    check(t == b"T2 NO NOOP failed\r\n", "tagged NO: %r" % t)
    check([x for x, _ in items] == [b"* BAD untagged note\r\n"], "untagged BAD: %r" % items)
    c.logout()
    f = session_end(g)
    check(f.get("rewrites") == "2", "rewrites=%r, want 2" % f.get("rewrites"))


def t_unknown_code_keep_and_allow(env):
    """rewrite.unknown_codes: keep, and rewrite.allow_codes, let [X-FOO] through."""
    for extra in ("rewrite:\n  unknown_codes: keep\n",
                  "rewrite:\n  allow_codes: [X-FOO]\n"):
        fb, g = setup(env, "x_foo_code", extra=extra)
        c = logged_in(env, g)
        t, items = c.cmd("NOOP")
        check(t == b"T2 OK [X-FOO] NOOP completed\r\n", "%s: tagged %r" % (extra.strip(), t))
        check([x for x, _ in items] == [b"* OK [X-FOO] untagged note\r\n"], "untagged: %r" % items)
        c.logout()


def t_empty_text_gets_code_name(env):
    """A code dropped from a line with no text leaves its name as the text."""
    fb, g = setup(env, {"commands": {"NOOP": [{"send": "* NO [X-QUOTA-WARN]\r\n"},
                                              {"send": "{tag} NO [X-FOO]\r\n"}]}})
    c = logged_in(env, g)
    t, items = c.cmd("NOOP", ok=False)
    check(t == b"T2 NO X-FOO\r\n", "tagged: %r" % t)
    check([x for x, _ in items] == [b"* NO X-QUOTA-WARN\r\n"], "untagged: %r" % items)
    c.logout()


def t_bracket_later_untouched(env):
    """A bracket later in the text is text, not a code."""
    fb, g = setup(env, "bracket_later")
    c = logged_in(env, g)
    t, _ = c.cmd("NOOP", ok=False)
    check(t == b"T2 NO text [with brackets]\r\n", "got %r" % t)
    c.logout()
    fb, g = setup(env, {"commands": {"NOOP": [
        {"send": '{tag} BAD Unexpected char at position 27 [E16: "\\r"]\r\n'}]}})
    c = logged_in(env, g)
    t, _ = c.cmd("NOOP", ok=False)
    check(t == b'T2 BAD Unexpected char at position 27 [E16: "\\r"]\r\n', "got %r" % t)
    c.logout()
    f = session_end(g)
    check(f.get("rewrites") == "0", "rewrites=%r, want 0" % f.get("rewrites"))


def t_standard_codes_and_data_untouched(env):
    """Standard codes and data responses (even ones that look like status) pass as sent."""
    lines = ["* OK [ALERT] mind the gap\r\n",
             "* 2 FETCH (FLAGS (\\Seen) X-NOTE \"OK [X-FOO] MAYBE\")\r\n",
             "* SEARCH 1 2\r\n"]
    acts = [{"send": x} for x in lines]
    acts.append({"send": "{tag} OK [UIDNEXT 4] NOOP completed\r\n"})
    fb, g = setup(env, {"commands": {"NOOP": acts}})
    c = logged_in(env, g)
    t, items = c.cmd("NOOP")
    check(t == b"T2 OK [UIDNEXT 4] NOOP completed\r\n", "tagged: %r" % t)
    check([x for x, _ in items] == [x.encode() for x in lines], "untagged: %r" % items)
    c.logout()


def t_rewrite_rules(env):
    """rewrite.rules: first match wins; status and code are set, text kept."""
    extra = ("rewrite:\n"
             "  rules:\n"
             "    - match: {status: bad, text: '^Database error'}\n"
             "      set: {status: no, code: UNAVAILABLE}\n"
             "    - match: {code: X-FOO}\n"
             "      set: {code: none}\n"
             "    - match: {code: X-FOO}\n"
             "      set: {code: ALERT}\n")
    fb, g = setup(env, {"commands": {
        "AUTHENTICATE": [{"send": "{tag} BAD Database error\r\n"}],
        "NOOP": [{"send": "{tag} OK [X-FOO] NOOP completed\r\n"}]}}, extra=extra)
    c = env.client(g)
    ir = base64.b64encode(b"\0testuser\0pass").decode()
    t, _ = c.cmd("AUTHENTICATE PLAIN " + ir, ok=False)
    check(t == b"T1 NO [UNAVAILABLE] Database error\r\n", "AUTHENTICATE -> %r" % t)
    t, _ = c.cmd("NOOP")
    check(t == b"T2 OK NOOP completed\r\n", "NOOP -> %r" % t)
    c.logout()


# ------------------------------------------------------------ capabilities

CAPS_SCRIPT = {
    "greeting": "* OK [CAPABILITY IMAP4rev1 STARTTLS COMPRESS=DEFLATE AUTH=PLAIN IDLE] ready\r\n",
    "commands": {"CAPABILITY": [
        {"send": "* CAPABILITY IMAP4rev1 COMPRESS=DEFLATE IDLE STARTTLS X-SECRET\r\n"},
        {"send": "{tag} OK [CAPABILITY IMAP4rev1 COMPRESS=DEFLATE IDLE] done\r\n"}]},
}


def t_capabilities_filtered(env):
    """COMPRESS=* and STARTTLS leave every capability list."""
    fb, g = setup(env, CAPS_SCRIPT)
    c = env.client(g)
    check(c.greeting == b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN IDLE] ready\r\n",
          "greeting %r" % c.greeting)
    t, items = c.cmd("CAPABILITY")
    check([x for x, _ in items] == [b"* CAPABILITY IMAP4rev1 IDLE X-SECRET\r\n"],
          "untagged %r" % items)
    check(t == b"T1 OK [CAPABILITY IMAP4rev1 IDLE] done\r\n", "tagged %r" % t)
    c.logout()


def t_capabilities_add_remove(env):
    """capabilities.remove / capabilities.add change every list."""
    fb, g = setup(env, CAPS_SCRIPT,
                  extra="capabilities:\n  remove: [X-SECRET, AUTH=]\n  add: [ID, IDLE]\n")
    c = env.client(g)
    check(c.greeting == b"* OK [CAPABILITY IMAP4rev1 IDLE ID] ready\r\n",
          "greeting %r" % c.greeting)
    t, items = c.cmd("CAPABILITY")
    check([x for x, _ in items] == [b"* CAPABILITY IMAP4rev1 IDLE ID\r\n"], "untagged %r" % items)
    check(t == b"T1 OK [CAPABILITY IMAP4rev1 IDLE ID] done\r\n", "tagged %r" % t)
    c.logout()


def t_compress_refused(env):
    """COMPRESS and STARTTLS from the client: tagged NO, not forwarded, stream intact."""
    fb, g = setup(env, None)
    c = logged_in(env, g)
    c.send(b"z COMPRESS DEFLATE\r\n")
    check(c.readline() == b"z NO COMPRESS is not available here\r\n", "COMPRESS answer")
    c.cmd("NOOP")
    c.send(b"y STARTTLS\r\n")
    check(c.readline() == b"y NO STARTTLS is not available here\r\n", "STARTTLS answer")
    # Pipelined right behind it: still read as plain IMAP.
    c.send(b"x COMPRESS DEFLATE\r\nw NOOP\r\n")
    check(c.readline() == b"x NO COMPRESS is not available here\r\n", "pipelined COMPRESS")
    check(c.readline() == b"w OK NOOP completed\r\n", "NOOP after COMPRESS")
    c.logout()
    seen = commands_seen(fb)
    check("COMPRESS" not in seen and "STARTTLS" not in seen, "forwarded: %r" % seen)


# ------------------------------------------------------------ backend loss

def t_bye_from_backend_not_doubled(env):
    """The backend's own BYE then close: passed on, nothing added."""
    fb, g = setup(env, "bye_on_noop")
    c = logged_in(env, g)
    c.send(b"n NOOP\r\n")
    data, _ = read_to_close(c)
    check(data == b"* BYE Server shutting down\r\n", "got %r" % data)


def t_close_at_boundary(env):
    """Backend closes after the LOGIN OK (Authenticated, idle): one BYE [UNAVAILABLE]."""
    fb, g = setup(env, "close_after_ok")
    c = env.client(g)
    c.send(b"a LOGIN testuser pass\r\n")
    data, _ = read_to_close(c)
    check(data == b"a OK LOGIN completed\r\n" + BYE_UNAVAILABLE, "got %r" % data)
    f = session_end(g)
    check(f.get("last_guard") == "backend_lost" and f.get("reason") == "backend-eof",
          "session-end %r" % f)


def t_close_in_idle(env):
    """Backend closes during IDLE: BYE, never `OK IDLE terminated`."""
    fb, g = setup(env, "close_on_idle")
    c = logged_in(env, g, select=True)
    c.send(b"i IDLE\r\n")
    check(c.readline() == b"+ idling\r\n", "no continuation")
    data, _ = read_to_close(c)
    check(data == BYE_UNAVAILABLE, "got %r" % data)


def t_reset_mid_fetch(env):
    """RST 300 bytes into a 1000-byte literal: close, no BYE, no OK."""
    fb, g = setup(env, "reset_mid_fetch")
    c = logged_in(env, g, select=True)
    c.send(b"f FETCH 1 BODY[]\r\n")
    data, how = read_to_close(c)
    no_fabricated_ok(data, ["f"])
    head = b"* 1 FETCH (UID 1 BODY[] {1000}\r\n"
    if data:
        # Some literal bytes arrived: a line now would be read as literal data.
        check(data.startswith(head) and len(data) <= len(head) + 300 and b"BYE" not in data,
              "got %d bytes: %r" % (len(data), data[:80] + b"..." + data[-60:]))
        say("   %d of 1000 literal bytes, then close (%s)" % (len(data) - len(head), how))
    else:
        # The RST overtook the data: nothing was relayed, the stream is at a boundary.
        check(data == BYE_UNAVAILABLE, "got %r" % data)


def t_close_mid_literal(env):
    """FIN 100 bytes into a literal (deterministic): close without any line."""
    fb, g = setup(env, {"commands": {"FETCH": [
        {"cut_after": 132, "how": "close"},
        {"literal": 1000, "prefix": "* 1 FETCH (UID 1 BODY[] ", "suffix": ")\r\n"},
        {"send": "{tag} OK FETCH completed\r\n"}]}})
    c = logged_in(env, g, select=True)
    c.send(b"f FETCH 1 BODY[]\r\n")
    data, how = read_to_close(c)
    want = b"* 1 FETCH (UID 1 BODY[] {1000}\r\n" + b"x" * 100
    check(data == want, "got %d bytes: %r" % (len(data), data[-80:]))
    f = session_end(g)
    check(f.get("reason") == "backend-eof-mid-response" and
          f.get("last_guard") == "backend_lost_mid_response", "session-end %r" % f)
    say("   100 literal bytes then close (%s); reason %s" % (how, f.get("reason")))


def t_close_mid_line(env):
    """FIN in the middle of a response line: the partial line is not passed, no BYE."""
    fb, g = setup(env, {"commands": {"NOOP": [
        {"cut_after": 9, "how": "close"}, {"send": "* OK [ALERT] half a line\r\n"}]}})
    c = logged_in(env, g)
    c.send(b"n NOOP\r\n")
    data, _ = read_to_close(c)
    no_fabricated_ok(data, ["n"])
    check(b"BYE" not in data and len(data) <= 9, "got %r" % data)
    say("   got %r then close" % data)


def t_reset_mid_append(env):
    """RST instead of the APPEND continuation: BYE at the boundary, no OK."""
    fb, g = setup(env, "reset_mid_append")
    c = logged_in(env, g)
    c.send(b"p APPEND INBOX {%d}\r\n" % len(MESSAGE))
    data, _ = read_to_close(c)
    check(data == BYE_UNAVAILABLE, "got %r" % data)


def t_close_inside_append_literal(env):
    """The backend closes while the client sends the APPEND literal: BYE, no OK."""
    fb, g = setup(env, {"steps": [{"command": "APPEND", "at": "literal", "actions": [
        {"send": "+ go\r\n"}, {"sleep": 0.3}, {"close": True}]}]})
    c = logged_in(env, g)
    c.send(b"p APPEND INBOX {1000}\r\n")
    check(c.readline() == b"+ go\r\n", "no continuation")
    c.send(b"y" * 100)
    data, _ = read_to_close(c)
    check(data == BYE_UNAVAILABLE, "got %r" % data)


def t_backend_response_timeout(env):
    """A command unanswered for timeouts.backend_response: BYE; IDLE silence is fine."""
    fb, g = setup(env, {"commands": {"NOOP": [{"hang": True}]}}, backend_response="1s")
    c = logged_in(env, g, select=True)
    # IDLE: silence is normal, no timeout.
    c.send(b"i IDLE\r\n")
    check(c.readline() == b"+ idling\r\n", "no continuation")
    time.sleep(1.5)
    c.send(b"DONE\r\n")
    check(c.readline() == b"i OK IDLE terminated\r\n", "IDLE")
    t0 = time.monotonic()
    c.send(b"n NOOP\r\n")
    data, _ = read_to_close(c)
    dt = time.monotonic() - t0
    check(data == BYE_UNAVAILABLE, "got %r" % data)
    check(0.8 <= dt <= 4.0, "BYE after %.2fs, want about 1s" % dt)
    f = session_end(g)
    check(f.get("reason") == "backend-timeout" and f.get("last_guard") == "backend_timeout",
          "session-end %r" % f)
    say("   BYE after %.2fs" % dt)


def t_session_end_counters(env):
    """The session-end line counts rewrites and guard events."""
    fb, g = setup(env, {"commands": {"NOOP": [{"send": "{tag} MAYBE [X-FOO] hm\r\n"}]}})
    c = logged_in(env, g)
    c.cmd("NOOP", ok=False)
    c.cmd("NOOP", ok=False)
    c.send(b"z COMPRESS DEFLATE\r\n")
    c.readline()
    c.logout()
    f = session_end(g)
    check(f.get("rewrites") == "2" and f.get("guard_events") == "1" and
          f.get("last_guard") == "compress_refused", "session-end %r" % f)
    check(re.search(r"msg=guard event=compress_refused", g.log_text()), "no guard event line")


def main():
    env = common.GuardEnv(sys.argv)
    common.run(env, [
        ("SELECT/NAMESPACE/UID FETCH/IDLE before login: BYE, BAD, close", t_select_before_login),
        ("SELECT pipelined behind LOGIN is forwarded", t_pipelined_behind_login),
        ("failed LOGIN: the backend decides, then the guard", t_failed_login_then_select),
        ("guard.client_state: pass", t_client_state_pass),
        ("second greeting: BYE", t_second_greeting),
        ("default greeting patterns: WildDuck, Dovecot", t_default_greeting_patterns),
        ("untagged PREAUTH mid-session: BYE", t_untagged_preauth),
        ("`not allowed now` while logged in: BYE", t_not_allowed_now_desync),
        ("guard.desync_patterns and guard.desync: pass", t_desync_patterns_config),
        ("tagged MAYBE -> NO", t_tagged_maybe),
        ("[X-FOO] stripped", t_unknown_code_stripped),
        ("unknown_codes: keep / allow_codes", t_unknown_code_keep_and_allow),
        ("empty text after stripping: code name", t_empty_text_gets_code_name),
        ("bracket later in the text untouched", t_bracket_later_untouched),
        ("standard codes and data responses untouched", t_standard_codes_and_data_untouched),
        ("rewrite.rules", t_rewrite_rules),
        ("capability lists filtered", t_capabilities_filtered),
        ("capabilities.remove / add", t_capabilities_add_remove),
        ("COMPRESS/STARTTLS refused, stream intact", t_compress_refused),
        ("backend BYE not doubled", t_bye_from_backend_not_doubled),
        ("backend close at a boundary: BYE", t_close_at_boundary),
        ("backend close in IDLE: BYE", t_close_in_idle),
        ("backend RST mid FETCH literal", t_reset_mid_fetch),
        ("backend FIN mid FETCH literal: plain close", t_close_mid_literal),
        ("backend FIN mid line: plain close", t_close_mid_line),
        ("backend RST at APPEND literal", t_reset_mid_append),
        ("backend close inside APPEND literal", t_close_inside_append_literal),
        ("timeouts.backend_response", t_backend_response_timeout),
        ("session-end counters", t_session_end_counters),
    ])


if __name__ == "__main__":
    main()
