#!/usr/bin/env python3
"""Client-side abuse (issue 9): slow drips before TLS, in the handshake and
mid-command; a 10 MB line; 100,000 pipelined NOOPs; random bytes on the TLS
port; handshakes aborted at each step; client resets in the middle of a large
FETCH and of an APPEND.  Each case checks that imapgate stays up, that a
watcher session is untouched, that RSS stays within the documented bound and
that no tagged OK reaches a client unless the backend sent it (see
test_abuse_common.py).  Backend: the scripted fake backend.

usage: test_abuse_client.py [PATH-TO-IMAPGATE]   (or $IMAPGATE)
"""

import os
import random
import select
import socket
import re
import ssl
import sys
import time

import harness
import test_abuse_common as ac
import test_pool_common as pc
import test_tls_common as tc
from harness import Fail, check, say

SHORT = "timeouts:\n  tls_handshake: 1s\n  preauth: 1s\n"
DRIP_LIMIT = 4.0            # seconds a drip may last before imapgate must close it
LONG_LINE = 10 << 20        # bytes in the over-long command line
LONG_LINE_TIME = 10.0       # seconds for its BAD and the NOOP after it
PIPELINED = 100000          # NOOPs sent in one burst
PIPELINE_TIME = 40.0        # seconds for all their answers
RANDOM_CONNS = 20           # connections sending random bytes
RANDOM_BYTES = 64 << 10     # bytes each
ABORTS = 30                 # connections aborted at each handshake step
BIG_FETCH = 16 << 20        # literal the backend sends for the reset-mid-FETCH case
BIG_APPEND = 8 << 20        # literal the client announces in the reset-mid-APPEND case
BYE_PREAUTH = b"* BYE Autologout; login took too long\r\n"


def setup(env, script=None, extra=""):
    """A fake backend, a TLS gate in front of it, the RSS before, a watcher."""
    fb = pc.named_backend(env, "b", script)
    g = ac.gate(env, [fb.port], extra=extra)
    base = ac.rss_kib(g.proc.pid)
    w = ac.Watcher(env, g)
    return fb, g, base, w


def finish(env, fb, g, base, w, what, sessions=2):
    """The four checks every case ends with (the OK check on the watcher too)."""
    w.stop()
    ac.rss_bound(g, base, sessions, what)
    ac.fresh_session(env, g, what)


def drip(sock, data, limit):
    """Send data one byte per second until the peer closes or limit seconds
    pass; returns (bytes received, seconds, closed)."""
    got = b""
    t0 = time.monotonic()
    sock.settimeout(1.0)
    for b in data:
        if time.monotonic() - t0 > limit:
            return got, time.monotonic() - t0, False
        try:
            sock.sendall(bytes([b]))
        except OSError:
            return got, time.monotonic() - t0, True
        try:
            chunk = sock.recv(4096)
            if not chunk:
                return got, time.monotonic() - t0, True
            got += chunk
        except socket.timeout:
            pass
        except (OSError, ssl.SSLError):
            return got, time.monotonic() - t0, True
    return got, time.monotonic() - t0, False


def t_drip(env):
    """One byte per second: a ClientHello dripped is cut by
    timeouts.tls_handshake (1 s); after the handshake a LOGIN dripped is cut
    by timeouts.preauth (1 s) with the Autologout BYE; a dripped command
    after login (only timeouts.idle, >= 1m, bounds it) disturbs nobody."""
    fb, g, base, w = setup(env, extra=SHORT)
    # During the handshake (implicit TLS: "before TLS" is the handshake).
    s = socket.create_connection(("127.0.0.1", g.port), timeout=5)
    got, took, closed = drip(s, ac.client_hello(), DRIP_LIMIT)
    s.close()
    say("   ClientHello drip: closed=%s after %.1fs" % (closed, took))
    check(closed, "handshake drip still open after %.1fs (tls_handshake 1s)" % took)
    check(got == b"", "bytes to a client before TLS: %r" % got[:100])
    # Mid-command before login.
    c = ac.tls_client(env, g, login=False)
    got, took, closed = drip(c.sock, b'a1 LOGIN "demo" "demo"\r\n', DRIP_LIMIT)
    c.close()
    say("   pre-login drip: closed=%s after %.1fs, got %r" % (closed, took, got[:80]))
    check(closed, "pre-login drip still open after %.1fs (preauth 1s)" % took)
    check(got.startswith(BYE_PREAUTH) and got.endswith(b"\r\n") and got.count(b"\r\n") == 1,
          "pre-login drip got %r, want one %r... line" % (got, BYE_PREAUTH))
    # Mid-command after login: bounded only by timeouts.idle; 3 s here.
    c = ac.tls_client(env, g)
    got, took, closed = drip(c.sock, b"a2 NOOP\r\n"[:-2] + b"xxxxxxx", 3.0)
    say("   post-login drip: closed=%s after %.1fs" % (closed, took))
    c.sock.sendall(b"\r\n")
    tagged, _ = c.response("a2")
    no_ok = not tagged.startswith(b"a2 OK") or b"a2" in ac.backend_tags(fb)
    check(no_ok, "OK for a2 the backend never saw: %r" % tagged)
    c.close()
    ac.no_fake_ok(got, fb, "drip")
    finish(env, fb, g, base, w, "drip")


def t_long_line(env):
    """A 10 MB command line: tagged BAD (or a clean end), RSS bounded, no OK."""
    fb, g, base, w = setup(env)
    c = ac.tls_client(env, g)
    line = memoryview(b"L1 NOOP " + b"x" * LONG_LINE + b"\r\nL2 NOOP\r\n")
    data, how, sent = ac.exchange(c.sock, line, lambda d: b"L2 " in d, LONG_LINE_TIME)
    c.close()
    say("   got %r ... (%d bytes, %s; %d of %d bytes sent)"
        % (data[:120], len(data), how, sent, len(line)))
    check(data.startswith(b"L1 BAD") or data.startswith(b"* BYE") or how in ("eof", "reset"),
          "10 MB line: %r (%s)" % (data[:200], how))
    check(how in ("eof", "reset") or b"L2 OK" in data,
          "after the BAD the session neither ended nor went on (%s): %r" % (how, data[-200:]))
    check(not data.startswith(b"L1 OK"), "tagged OK for the 10 MB line")
    seen = sum(len(r) for rec in fb.connections for r in rec["commands"])
    say("   backend received %d command bytes" % seen)
    ac.no_fake_ok(data, fb, "long line")
    finish(env, fb, g, base, w, "10 MB line")


def t_pipelined(env):
    """100,000 NOOPs in one burst: all answered, in order, RSS bounded.

    One thread sends and reads through a non-blocking TLS socket: an SSL
    object must not be used from two threads at once (OpenSSL's rule), and
    sending the whole burst before reading would deadlock on the buffers."""
    fb, g, base, w = setup(env)
    c = ac.tls_client(env, g, timeout=10.0)
    burst = memoryview(b"".join(b"p%d NOOP\r\n" % i for i in range(PIPELINED)))
    sock = c.sock
    sock.setblocking(False)
    t0 = time.monotonic()
    peak = 0
    n = 0
    sent = 0
    buf = bytes(c.buf)
    end = t0 + PIPELINE_TIME
    while n < PIPELINED:
        check(time.monotonic() < end, "%d of %d NOOPs answered in %.0fs"
              % (n, PIPELINED, PIPELINE_TIME))
        want_w = [sock] if sent < len(burst) else []
        r, wr, _ = select.select([sock], want_w, [], 1.0)
        if wr:
            try:
                sent += sock.send(burst[sent:sent + 16384])
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                pass
        while True:
            try:
                data = sock.recv(65536)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                break
            if not data:
                raise Fail("DAEMON BUG: the pipeline stalls after %d answers: "
                           "connection closed" % n)
            buf += data
        while b"\r\n" in buf:
            line, buf = buf.split(b"\r\n", 1)
            want = b"p%d OK" % n
            check(line.startswith(want), "answer %d: %r, want %r..." % (n, line, want))
            n += 1
            if n % 10000 == 0:
                peak = max(peak, ac.rss_kib(g.proc.pid))
    sock.setblocking(True)
    sock.settimeout(10.0)
    c.buf = bytearray(buf)
    say("   %d NOOPs answered in order in %.1fs, peak RSS %d KiB"
        % (n, time.monotonic() - t0, peak))
    c.logout()
    check(peak - base <= (2 * ac.SESSION_BOUND_KIB + ac.RSS_SLACK_KIB)
          * (ac.ASAN_RSS_FACTOR if ac.asan(g.proc.pid) else 1),
          "peak RSS %d KiB over %d" % (peak, base))
    finish(env, fb, g, base, w, "100k NOOPs")


def t_random_bytes(env):
    """Random bytes on the TLS port: each connection is closed, nothing leaks."""
    fb, g, base, w = setup(env)
    rnd = random.Random(9)
    for i in range(RANDOM_CONNS):
        s = socket.create_connection(("127.0.0.1", g.port), timeout=5)
        payload = rnd.randbytes(RANDOM_BYTES)
        if i % 2:
            payload = b"\x16\x03\x01" + payload     # looks like a TLS record at first
        try:
            s.sendall(payload)
        except OSError:
            pass
        data, how, took = ac.drain(s, 5.0)
        s.close()
        check(how in ("eof", "reset"), "random bytes: connection %s after %.1fs" % (how, took))
        check(b"OK" not in data, "random bytes answered with %r" % data[:100])
    finish(env, fb, g, base, w, "random bytes")


def t_aborted_handshakes(env):
    """Handshakes aborted at each step: TCP connect then close, ClientHello
    then close (and reset), after the handshake before any command, and in
    the middle of a command."""
    fb, g, base, w = setup(env)
    hello = ac.client_hello()
    for _ in range(ABORTS):
        s = socket.create_connection(("127.0.0.1", g.port), timeout=5)
        s.close()
        s = socket.create_connection(("127.0.0.1", g.port), timeout=5)
        s.sendall(hello)
        s.close()
        s = socket.create_connection(("127.0.0.1", g.port), timeout=5)
        s.sendall(hello)
        ac.reset_close(s)
        c = harness.Client(g.port, env.tls, timeout=5)
        c.close()
        c = harness.Client(g.port, env.tls, timeout=5)
        c.send(b"h1 LOGIN \"demo\" {4}\r\n")
        ac.reset_close(c.sock)
    # Every session ends.  Those that never finished their TLS handshake
    # are logged at most 5 a second (the rest in msg=rate-limited lines).
    end = time.monotonic() + 10.0
    while True:
        text = tc.log_since(g)
        ends = [x for x in text.splitlines() if "msg=session-end" in x]
        done = sum(1 for x in ends if " tls=TLS" in x)
        unfinished = sum(1 for x in ends if " tls=- " in x)
        skipped = sum(int(n) for n in re.findall(
            r"msg=rate-limited kind=handshake events=\d+ not_logged=(\d+)", text))
        if (done >= 2 * ABORTS and unfinished + skipped >= 3 * ABORTS) or \
                time.monotonic() >= end:
            break
        time.sleep(0.1)
    say("   %d sessions after a handshake, %d before (%d of them logged)"
        % (done, unfinished + skipped, unfinished))
    check(done == 2 * ABORTS, "%d sessions ended after a handshake, want %d"
          % (done, 2 * ABORTS))
    check(unfinished + skipped == 3 * ABORTS, "%d unfinished handshakes counted, want %d"
          % (unfinished + skipped, 3 * ABORTS))
    finish(env, fb, g, base, w, "aborted handshakes")


def t_reset_mid_fetch(env):
    """A client resets while a 16 MB FETCH literal streams to it: the backend
    connection is closed too and nothing else is disturbed."""
    script = {"commands": {"FETCH": [
        {"literal": BIG_FETCH, "prefix": "* 1 FETCH (UID 1 BODY[] ", "suffix": ")\r\n"},
        {"send": "{tag} OK FETCH completed\r\n"}]}}
    fb, g, base, w = setup(env, script)
    c = ac.tls_client(env, g)
    c.select()
    c.send(b"f1 FETCH 1 BODY[]\r\n")
    got = 0
    while got < (1 << 20):
        got += c.fill()
        got = len(c.buf)
    ac.reset_close(c.sock)
    end = time.monotonic() + 5.0
    rec = fb.connections[-1]
    while rec["ended_by"] is None and time.monotonic() < end:
        time.sleep(0.05)
    say("   backend connection ended_by=%s" % rec["ended_by"])
    check(rec["ended_by"] is not None, "DAEMON BUG: a TLS client's reset during a "
          "backpressured FETCH is not noticed: session and backend connection still "
          "open 5 s later")
    finish(env, fb, g, base, w, "reset mid-FETCH")


def t_reset_mid_append(env):
    """A client announces an 8 MB APPEND, sends 1 MB of it and resets: the
    backend never gets a complete APPEND (so cannot store half a message)
    and its connection is closed."""
    fb, g, base, w = setup(env)
    c = ac.tls_client(env, g)
    c.send(b"a1 APPEND INBOX {%d}\r\n" % BIG_APPEND)
    line = c.readline()
    check(line.startswith(b"+"), "APPEND: no continuation: %r" % line)
    c.send(b"x" * (1 << 20))
    time.sleep(0.3)
    ac.reset_close(c.sock)
    rec = fb.connections[-1]
    end = time.monotonic() + 5.0
    while rec["ended_by"] is None and time.monotonic() < end:
        time.sleep(0.05)
    check(rec["ended_by"] is not None, "backend connection still open 5 s after the reset")
    check(not any(r.split(None, 2)[1:2] == [b"APPEND"] for r in rec["commands"]),
          "the backend got a complete APPEND from a client that reset mid-literal")
    finish(env, fb, g, base, w, "reset mid-APPEND")


TESTS = [
    ("one byte per second: handshake, pre-login, mid-command", t_drip),
    ("a 10 MB command line", t_long_line),
    ("100,000 pipelined NOOPs", t_pipelined),
    ("random bytes on the TLS port", t_random_bytes),
    ("handshakes aborted at each step", t_aborted_handshakes),
    ("client reset in the middle of a 16 MB FETCH", t_reset_mid_fetch),
    ("client reset in the middle of an APPEND", t_reset_mid_append),
]

if __name__ == "__main__":
    ac.run(sys.argv, TESTS)
