#!/usr/bin/env python3
"""Functional checks of imapgate in front of a real Dovecot.

usage: test_relay.py [PATH-TO-IMAPGATE]   (or $IMAPGATE; see harness.py)
"""

import re
import socket
import sys
import time

import harness
from harness import Fail, check, say

BIG = 5 * 1024 * 1024
BACKLOG = 1000          # pipelined FETCHes in t_backlogged_replies (< STATE_MAX_INFLIGHT)
BACKLOG_GAP = 0.002     # seconds between them


def t_login_list_select_logout(env):
    """LOGIN, LIST, SELECT, LOGOUT through the proxy."""
    c = env.client()
    say("   greeting: %r" % c.greeting[:60])
    check(c.greeting.startswith(b"* OK"), "greeting is not * OK: %r" % c.greeting)
    c.login("demo", "demo")
    say("   LOGIN demo ok")
    _, items = c.cmd('LIST "" "*"')
    names = [t for t, _ in items if t.startswith(b"* LIST")]
    check(any(b"INBOX" in n for n in names), "LIST has no INBOX: %r" % names)
    say("   LIST shows INBOX")
    n = c.select("INBOX")
    check(n >= 2, "INBOX has %d messages, want >= 2" % n)
    say("   SELECT INBOX: %d messages" % n)
    c.logout()
    say("   LOGOUT: * BYE and tagged OK")


def t_bad_login(env):
    """A wrong password gets NO and the session stays usable."""
    c = env.client()
    tagged, _ = c.cmd('LOGIN "demo" "wrong"', ok=False)
    check(b" NO " in tagged, "wrong password not refused: %r" % tagged)
    c.login("demo", "demo")
    c.logout()
    say("   wrong password -> NO, then right password -> OK")


def t_fetch_5mb_identical(env):
    """FETCH of a 5 MB message is byte-identical to a direct fetch."""
    d = env.direct_client()
    d.login("demo", "demo")
    d.select("INBOX")
    uids = d.uid_search('HEADER Subject "big5"')
    check(len(uids) == 1, "expected one 'big5' message, got %r" % uids)
    direct = d.fetch_body(uids[0])
    d.logout()
    c = env.client()
    c.login("demo", "demo")
    c.select("INBOX")
    t0 = time.monotonic()
    via = c.fetch_body(uids[0])
    dt = time.monotonic() - t0
    c.logout()
    check(len(direct) >= BIG, "direct message is only %d bytes" % len(direct))
    check(via == direct, "proxy returned %d bytes, direct %d, differ at %s" % (
        len(via), len(direct),
        next((i for i, (a, b) in enumerate(zip(via, direct)) if a != b), "the end")))
    say("   %d bytes identical to direct fetch (%.2fs through proxy)" % (len(via), dt))


def t_append_5mb(env):
    """APPEND of a 5 MB literal lands intact in the mailbox."""
    msg = harness.make_message("appended5 %d" % time.time_ns(), BIG, seed=42)
    c = env.client()
    c.login("demo", "demo")
    tagged = c.append("INBOX", msg)
    say("   APPEND {%d} -> %s" % (len(msg), tagged.decode().strip()[:70]))
    c.logout()
    d = env.direct_client()
    d.login("demo", "demo")
    d.select("INBOX")
    m = re.search(rb"APPENDUID \d+ (\d+)", tagged)
    uid = int(m.group(1)) if m else d.uid_search("ALL")[-1]
    stored = d.fetch_body(uid)
    d.logout()
    check(stored == msg, "stored message (%d bytes) differs from appended (%d)" % (
        len(stored), len(msg)))
    say("   stored copy (uid %d) is byte-identical" % uid)


def t_idle_exists(env):
    """IDLE sees * N EXISTS when another connection appends."""
    c = env.client(timeout=10)
    c.login("demo", "demo")
    n = c.select("INBOX")
    tag = c.next_tag()
    c.send(("%s IDLE\r\n" % tag).encode())
    cont = c.readline()
    check(cont.startswith(b"+"), "IDLE: no continuation, got %r" % cont)
    say("   IDLE started with %d messages" % n)
    other = env.client()
    other.login("demo", "demo")
    other.append("INBOX", harness.make_message("idle-ping", 300, seed=7))
    other.logout()
    end = time.monotonic() + 8
    seen = None
    while time.monotonic() < end and seen is None:
        line = c.readline()
        m = re.match(rb"\* (\d+) EXISTS", line)
        if m:
            seen = int(m.group(1))
    check(seen is not None and seen > n, "no EXISTS within 8s (last %r)" % seen)
    say("   got * %d EXISTS while idling" % seen)
    c.send(b"DONE\r\n")
    tagged, _ = c.response(tag)
    check(tagged.startswith(("%s OK" % tag).encode()), "IDLE end -> %r" % tagged)
    c.logout()
    say("   DONE -> tagged OK")


def t_backlogged_replies(env):
    """A thousand small FETCH replies to a client that does not read at
    first: imapgate writes each reply with one direct SSL_write while
    nothing is queued, and must fall back to libevent's queue, bytes in
    order, once the socket is full (the write OpenSSL wants retried)."""
    d = env.direct_client()
    d.login("demo", "demo")
    d.select("INBOX")
    small = d.uid_search('HEADER Subject "hello"') + d.uid_search('HEADER Subject "second"')
    check(len(small) == 2, "expected the 'hello' and 'second' messages, got %r" % small)
    ref = {u: d.fetch_body(u) for u in small}
    d.logout()
    c = env.client(rcvbuf=8192)
    c.login("demo", "demo")
    c.select("INBOX")
    tags = [c.next_tag() for _ in range(BACKLOG)]
    # One command at a time, each reply alone: every reply finds imapgate's
    # queue empty and goes out with a direct write, until the socket (about
    # 4 MB of send buffer on loopback) is full; the replies total 6 MB.
    for t in tags:
        c.send(("%s UID FETCH %d,%d BODY.PEEK[]\r\n" % (t, small[0], small[1])).encode())
        time.sleep(BACKLOG_GAP)
    bodies = 0
    for t in tags:
        # Dovecot runs pipelined FETCHes together: untagged replies need not
        # come before their own tag, only in the stream's order.
        tagged, items = c.response(t)
        check(tagged.startswith(("%s OK" % t).encode()), "%s -> %r" % (t, tagged))
        for text, lits in items:
            m = re.search(rb"UID (\d+)", text)
            if b"FETCH" in text and lits and m:
                check(lits[-1] == ref.get(int(m.group(1))),
                      "%s: FETCH body of UID %s differs" % (t, m.group(1).decode()))
                bodies += 1
    check(bodies == 2 * BACKLOG, "%d FETCH bodies for %d commands" % (bodies, BACKLOG))
    c.logout()
    say("   %d replies of 2 messages each, in order and byte-identical" % BACKLOG)


def t_session_log(env):
    """A finished session leaves one summary log line with a reason."""
    if env.direct:
        return "skip"
    c = env.client()
    me = "client=127.0.0.1:%d " % c.sock.getsockname()[1]
    c.login("other", harness.USERS["other"])
    c.logout()
    line = env.proxy.wait_log(re.escape(me) + r".*reason=", timeout=5)
    check(line is not None, "no log line with %sand reason= within 5s after LOGOUT" % me)
    say("   %s" % line.strip()[:200])
    for key in ("bytes", "reason="):
        check(key in line, "summary line lacks %r" % key)
    # Passwords must never reach the log.
    check(harness.USERS["other"] not in env.proxy.log_text(), "a password is in the log")
    say("   no password in the log")


def t_backend_down(env):
    """Backend refusing connections: client gets * BYE, then the close."""
    if env.direct:
        return "skip"
    dead = harness.free_port()  # nothing listens here
    proxy = env.start_proxy(dead, "imapgate-dead")
    try:
        tls = env.tls
        raw = socket.create_connection(("127.0.0.1", proxy.port), timeout=10)
        me = "client=127.0.0.1:%d " % raw.getsockname()[1]
        s = tls.wrap_socket(raw, server_hostname="localhost")
        s.settimeout(10)
        data = b""
        end = time.monotonic() + 10
        closed = False
        while time.monotonic() < end:
            try:
                chunk = s.recv(4096)
            except (ssl_errors()) as e:
                say("   (recv ended with %s)" % type(e).__name__)
                closed = True
                break
            if not chunk:
                closed = True
                break
            data += chunk
        say("   got %r" % data[:100])
        check(data.startswith(b"* BYE"), "expected * BYE, got %r" % data[:200])
        check(b"[UNAVAILABLE]" in data, "BYE lacks [UNAVAILABLE]: %r" % data[:200])
        check(closed, "connection not closed within 10s after BYE")
        say("   * BYE [UNAVAILABLE] then close")
        s.close()
        line = proxy.wait_log(re.escape(me) + r".*reason=", timeout=5)
        check(line is not None, "no session summary for the failed backend")
        say("   %s" % line.strip()[:200])
    finally:
        rc = proxy.stop()
        say("   second imapgate stopped (status %s)" % rc)
    check(rc == 0, "second imapgate exited with status %s" % rc)


def ssl_errors():
    """Exceptions that count as 'the peer closed' on a TLS socket."""
    import ssl
    return (ssl.SSLError, ConnectionResetError, BrokenPipeError)


def t_clean_shutdown(env):
    """SIGTERM stops imapgate promptly with status 0."""
    if env.direct:
        return "skip"
    t0 = time.monotonic()
    rc = env.proxy.stop()
    dt = time.monotonic() - t0
    check(dt < harness.STOP_TIMEOUT, "imapgate needed SIGKILL (%.1fs)" % dt)
    check(rc == 0, "imapgate exited with status %s after SIGTERM" % rc)
    say("   exited %s in %.2fs" % (rc, dt))


def main():
    mail = {"demo": [harness.make_message("hello", 2000, seed=1),
                     harness.make_message("second", 4000, seed=2),
                     harness.make_message("big5", BIG, seed=3)],
            "other": [harness.make_message("other-hello", 1000, seed=4)]}
    env = harness.Env(sys.argv, mail)
    harness.run_tests(env, [
        ("LOGIN, LIST, SELECT, LOGOUT", t_login_list_select_logout),
        ("wrong password", t_bad_login),
        ("FETCH 5 MB byte-identical to direct", t_fetch_5mb_identical),
        ("APPEND 5 MB literal", t_append_5mb),
        ("IDLE receives EXISTS", t_idle_exists),
        ("backlogged small replies", t_backlogged_replies),
        ("session summary log line", t_session_log),
        ("backend down at connect", t_backend_down),
        ("clean shutdown on SIGTERM", t_clean_shutdown),
    ])


if __name__ == "__main__":
    try:
        main()
    except Fail as e:
        say("FAIL: %s" % e)
        sys.exit(1)
