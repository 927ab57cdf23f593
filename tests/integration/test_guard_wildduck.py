#!/usr/bin/env python3
"""Session guard in front of WildDuck's real IMAP engine (imap-core from npm,
tests/backends/wildduck/server.js): the resumed client, the backend cut,
reset, killed and restarted under a live session, and WildDuck's
non-standard response codes.  Skips (77) only when node/npm are missing.

usage: test_guard_wildduck.py [PATH-TO-IMAPGATE]   (or $IMAPGATE)
"""

import base64
import re
import signal
import sys
import time

import harness
from harness import Fail, check, say
import test_guard_common as common
from test_guard_common import (BYE_NOT_LOGGED_IN, BYE_UNAVAILABLE, STANDARD_CODES,
                               no_fabricated_ok, parse_status, read_to_close, session_end)

GREETING_RE = re.compile(rb"^\* OK WildDuck IMAP Server ready for requests from 127\.0\.0\.1 \S+\r\n$")
BIG = 15 * 1024 * 1024      # more than the socket buffers on the way hold (APPENDLIMIT is 16 MiB)
CUT_WAIT = 0.7              # seconds for backpressure to stall the FETCH


def wd_env(env):
    """(WildDuck, imapgate in front of it), or None when node is missing."""
    wd = common.start_wildduck(env)
    if wd is None:
        return None
    return wd, env.gate(wd.port)


def login(env, g, state):
    """A client through g in state auth, selected or idle."""
    c = env.client(g)
    check(GREETING_RE.match(c.greeting), "greeting %r" % c.greeting)
    c.login("testuser", "pass")
    if state in ("selected", "idle"):
        check(c.select("INBOX") >= 4, "INBOX too small")
    if state == "idle":
        c.send(b"i IDLE\r\n")
        check(c.readline() == b"+ idling\r\n", "IDLE not accepted")
    return c


def t_resumed_client(env):
    """Right after the greeting, SELECT / NAMESPACE: BYE, tagged BAD, close."""
    r = wd_env(env)
    if r is None:
        return "skip"
    wd, g = r
    for cmd in (b"a SELECT INBOX\r\n", b"b NAMESPACE\r\n"):
        c = env.client(g)
        check(GREETING_RE.match(c.greeting), "greeting %r" % c.greeting)
        c.send(cmd)
        data, how = read_to_close(c)
        tag, name = cmd.split()[:2]
        want = BYE_NOT_LOGGED_IN + tag + b" BAD " + name + b" not allowed now\r\n"
        check(data == want, "%r -> %r, want %r" % (cmd, data, want))
        say("   %r -> %r (%s)" % (cmd, data, how))
    f = session_end(g, count=2)
    check(f.get("reason") == "client-state", "session-end %r" % f)


def t_login_select_pipelined(env):
    """LOGIN with SELECT behind it in one packet: both answered by WildDuck."""
    r = wd_env(env)
    if r is None:
        return "skip"
    wd, g = r
    c = env.client(g)
    c.send(b"a LOGIN testuser pass\r\nb SELECT INBOX\r\n")
    ta, items = c.response("a")
    check(ta == b"a OK testuser authenticated\r\n", "LOGIN -> %r" % ta)
    tb, items = c.response("b")
    check(tb == b"b OK [READ-WRITE] SELECT completed\r\n", "SELECT -> %r" % tb)
    check((b"* 4 EXISTS\r\n", []) in items, "no EXISTS in %r" % items)
    body = c.fetch_body(45)
    check(len(body) == 89, "UID 45 is %d bytes" % len(body))
    c.logout()
    say("   LOGIN + SELECT pipelined, then UID FETCH 45: %d bytes" % len(body))


def t_literal_plus_not_offered(env):
    """WildDuck offers no LITERAL+ and reads "{n+}" as a line end (BAD), so
    the literal's bytes would be commands to it (issue 13): imapgate refuses
    a LITERAL+ command itself and skips its literal; the DELETE inside it
    never runs, and synchronizing literals still work."""
    r = wd_env(env)
    if r is None:
        return "skip"
    wd, g = r
    c = login(env, g, "auth")
    check(b" OK " in c.cmd("CREATE Smuggled")[0], "CREATE Smuggled failed")
    inner = b"b DELETE Smuggled\r\n"
    c.send(b"a SELECT {%d+}\r\n" % len(inner) + inner + b"\r\n")
    ta, _ = c.response("a")
    check(ta.startswith(b"a BAD "), "LITERAL+ SELECT -> %r" % ta)
    c.send(b"n NOOP\r\n")
    tn, _ = c.response("n")
    check(tn.startswith(b"n OK"), "NOOP after -> %r" % tn)
    check(b"b " not in bytes(c.buf), "a reply tagged b: %r" % bytes(c.buf))
    _, items = c.cmd('LIST "" "Smuggled"')
    check(any(b"Smuggled" in t for t, _ in items), "Smuggled was deleted: %r" % items)
    c.send(b"s SELECT {5}\r\n")
    check(c.readline().startswith(b"+"), "no + for a synchronizing literal")
    c.send(b"INBOX\r\n")
    ts, _ = c.response("s")
    check(ts.startswith(b"s OK"), "SELECT {5} INBOX -> %r" % ts)
    c.logout()
    say("   {n+} refused with %r; synchronizing literal selected INBOX" % ta.strip())


def loss_case(env, wd, g, state, how):
    """One backend loss under a client in state; the client must see only BYE."""
    c = login(env, g, state)
    if how == "cut":
        wd.signal(signal.SIGUSR2)
    elif how == "reset":
        wd.signal(signal.SIGHUP)
    else:
        wd.kill()
    data, closed = read_to_close(c)
    check(data == BYE_UNAVAILABLE, "%s/%s: got %r" % (state, how, data))
    if how == "kill":
        wd.start()
    return closed


def t_backend_loss(env):
    """Cut (no BYE), RST, and SIGKILL+restart in Authenticated, Selected, IDLE."""
    r = wd_env(env)
    if r is None:
        return "skip"
    wd, g = r
    for how in ("cut", "reset", "kill"):
        for state in ("auth", "selected", "idle"):
            closed = loss_case(env, wd, g, state, how)
            say("   %-8s %-5s -> * BYE [UNAVAILABLE], %s" % (state, how, closed))
    f = session_end(g, count=9)
    check(f.get("last_guard") == "backend_lost", "session-end %r" % f)
    # After the restart the same gate serves a fresh session.
    c = login(env, g, "selected")
    check(len(c.fetch_body(49)) == 20432, "UID 49 after restart")
    c.logout()
    say("   after restart: LOGIN, SELECT, FETCH ok")


def t_mid_fetch_literal(env):
    """SIGKILL while a 15 MiB FETCH literal is half delivered: close, no line added."""
    r = wd_env(env)
    if r is None:
        return "skip"
    wd, g0 = r
    # Small buffers everywhere imapgate and the client control them, so the
    # response cannot all sit in buffers when WildDuck dies.
    g = env.gate(wd.port, extra="limits:\n  buffer: 16KiB\n")
    c = login(env, g, "auth")
    msg = harness.make_message("big for the cut", BIG, seed=7)
    tagged = c.append("INBOX", msg)
    uid = int(re.search(rb"APPENDUID \d+ (\d+)", tagged).group(1))
    c.close()
    c = env.small_client(g, 32 * 1024)
    c.login("testuser", "pass")
    c.select("INBOX")
    c.send(b"f UID FETCH %d BODY.PEEK[]\r\n" % uid)
    time.sleep(CUT_WAIT)            # the client reads nothing: imapgate stalls
    wd.kill()
    data, how = read_to_close(c, timeout=20)
    no_fabricated_ok(data, ["f"])
    m = re.search(rb"BODY\[\] \{(\d+)\}\r\n", data)
    check(m is not None, "no FETCH literal header in %r" % data[:200])
    got = len(data) - m.end()
    check(got < int(m.group(1)), "the whole literal arrived: the cut missed")
    check(not data.endswith(b"\r\n* BYE [UNAVAILABLE] Backend server unavailable\r\n"),
          "a BYE was put into the literal")
    say("   %d of %s literal bytes, then close (%s)" % (got, m.group(1).decode(), how))
    f = session_end(g, count=2)
    check(f.get("last_guard") == "backend_lost_mid_response" and
          f.get("reason") == "backend-eof-mid-response", "session-end %r" % f)


def t_mid_append_literal(env):
    """SIGKILL while the client sends an APPEND literal: BYE (WildDuck's `+` was
    complete) or a close; never the APPEND's OK."""
    r = wd_env(env)
    if r is None:
        return "skip"
    wd, g = r
    c = login(env, g, "selected")
    c.send(b"p APPEND INBOX {200000}\r\n")
    check(c.readline() == b"+ Go ahead\r\n", "no continuation")
    c.send(b"x" * 1000)
    time.sleep(0.2)
    wd.kill()
    try:
        c.send(b"y" * 1000)
    except OSError:
        pass
    data, how = read_to_close(c)
    no_fabricated_ok(data, ["p"])
    check(data in (BYE_UNAVAILABLE, b""), "got %r" % data)
    say("   got %r, %s" % (data, how))


def login_answers(env, g):
    """Tagged answers of LOGIN for the special users, and AUTHENTICATE tempfail."""
    out = {}
    for user in ("ratelimited", "badscope", "tempfail"):
        c = env.client(g)
        t, _ = c.cmd("LOGIN %s pass" % user, ok=False)
        out[user] = t
        c.close()
    c = env.client(g)
    ir = base64.b64encode(b"\0tempfail\0pass").decode()
    t, _ = c.cmd("AUTHENTICATE PLAIN " + ir, ok=False)
    out["authenticate-tempfail"] = t
    c.close()
    return out


def t_codes_default(env):
    """Default config: RateLimitedError / InvalidAuthScope stripped, TEMPFAIL kept."""
    r = wd_env(env)
    if r is None:
        return "skip"
    wd, g = r
    got = login_answers(env, g)
    want = {"ratelimited": b"T1 NO Authentication was rate limited\r\n",
            "badscope": b"T1 NO Access to requested service disabled\r\n",
            "tempfail": b"T1 NO [TEMPFAIL] LOGIN completed\r\n",
            "authenticate-tempfail": b"T1 BAD Database error\r\n"}
    for k, v in want.items():
        check(got[k] == v, "%s: got %r, want %r" % (k, got[k], v))
        say("   %-22s %r" % (k, got[k]))


def t_codes_preset(env):
    """With the shipped preset's rewrite: block, the answers carry standard codes."""
    block = common.preset_rewrite_block()
    if block is None:
        say("   SKIP: %s has no rewrite: block yet" % common.PRESET)
        return "skip"
    wd = common.start_wildduck(env)
    if wd is None:
        return "skip"
    g = env.gate(wd.port, extra=block)
    got = login_answers(env, g)
    rules = common.preset_rules()
    originals = {"ratelimited": ("NO", "RateLimitedError", "Authentication was rate limited"),
                 "badscope": ("NO", "InvalidAuthScope", "Access to requested service disabled"),
                 "tempfail": ("NO", "TEMPFAIL", "LOGIN completed"),
                 "authenticate-tempfail": ("BAD", None, "Database error")}
    for k, (st0, code0, text0) in originals.items():
        tag, st, code, text = parse_status(got[k])
        say("   %-22s %r" % (k, got[k]))
        check(st in ("NO", "BAD"), "%s: status %s" % (k, st))
        check(code is None or code.upper() in STANDARD_CODES, "%s: code %s left" % (k, code))
        check(text == text0, "%s: text changed to %r" % (k, text))
        if k != "tempfail":
            check(code is not None, "%s: the preset gives no standard code" % k)
        if k == "authenticate-tempfail":
            check(st == "NO", "BAD Database error still BAD: %r" % got[k])
        if rules is not None:
            exp = common.expected_by_rules(rules, st0, code0, text0)
            if exp is not None:
                est, ecode = exp
                if est != "KEEP":
                    check(st == est, "%s: status %s, preset says %s" % (k, st, est))
                if ecode is not None:
                    check((code or "none").upper() == ecode.upper(),
                          "%s: code %s, preset says %s" % (k, code, ecode))


def main():
    env = common.GuardEnv(sys.argv)
    try:
        why = common.wildduck_available()
    except Fail as e:
        say("FAIL: %s" % e)
        sys.exit(1)
    if why is not None:
        say("SKIP: %s" % why)
        sys.exit(common.SKIP)
    common.run(env, [
        ("resumed client: SELECT/NAMESPACE before LOGIN", t_resumed_client),
        ("LOGIN + SELECT pipelined in one packet", t_login_select_pipelined),
        ("LITERAL+ to a server without it: refused, nothing smuggled", t_literal_plus_not_offered),
        ("backend cut/reset/killed: Authenticated, Selected, IDLE", t_backend_loss),
        ("backend killed mid FETCH literal", t_mid_fetch_literal),
        ("backend killed mid APPEND literal", t_mid_append_literal),
        ("WildDuck codes, default config", t_codes_default),
        ("WildDuck codes, preset rewrite rules", t_codes_preset),
    ])


if __name__ == "__main__":
    main()
