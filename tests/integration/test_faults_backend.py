#!/usr/bin/env python3
"""Backend faults and resource exhaustion (issue 9): a backend that never
greets, greets slowly, sends an endless line (50 MB without CRLF), sends a
2 GB literal to a client reading at 64 KiB/s, resets in the middle of an
APPEND; file descriptors exhausted, then released.  Each case checks that
imapgate stays up, a watcher session (on a healthy backend) is untouched,
RSS stays within the documented bound and no client gets a tagged OK the
backend did not send (see test_abuse_common.py).

usage: test_faults_backend.py [PATH-TO-IMAPGATE]   (or $IMAPGATE)
"""

import socket
import sys
import time

import harness
import test_abuse_common as ac
import test_pool_common as pc
from fake_backend import SCENARIOS
from harness import Fail, check, say

GREETING_BOUND = 2.5        # seconds a client may wait for a greeting or BYE
ENDLESS = 50 << 20          # bytes of the line without CRLF
HUGE = 2147483648           # the announced literal (never sent in full)
SLOW_RATE = 64 << 10        # bytes/s the slow client reads
SLOW_SECONDS = 4.0          # how long the slow read lasts
FD_LIMIT = 64               # RLIMIT_NOFILE of imapgate in the fd case
FD_CLIENTS = 80             # TCP connections opened against it
CPU_BUDGET = 0.3            # CPU seconds imapgate may use in 1 s while starved


def setup(env, bad_port, timeouts="", wrap=None, workers=""):
    """One gate in front of the faulty backend, and its RSS.  The watcher
    goes through the same gate (same workers, same event loops) and its
    backend connection is made before the faulty one."""
    extra = "timeouts:\n  drain: 1s\n" + timeouts + workers
    g = ac.gate(env, [bad_port], extra=extra, wrap=wrap)
    base = ac.rss_kib(g.proc.pid)
    return g, base


def backend_closed(rb, what, timeout=5.0):
    """imapgate closes the backend connection soon after the client went."""
    end = time.monotonic() + timeout
    while not rb.ended and time.monotonic() < end:
        time.sleep(0.05)
    check(rb.ended, "DAEMON BUG: backend connection still open %.0fs after %s"
          % (timeout, what))


def t_never_greets(env):
    """A backend that accepts and never greets: the client gets
    `* BYE [UNAVAILABLE]` within backend_connect + a margin (the session
    does not hang), and imapgate serves others meanwhile."""
    # The start-up probe ends before a TLS handshake, so (implicit TLS: the
    # backend is connected after the client's handshake) it opens no
    # backend connection: the watcher's is the first.
    fb = pc.named_backend(env, "b", {"connections": [
        {"greeting": "* OK fake-b ready\r\n"},          # the watcher
        {"greeting": [{"hang": True}]}]})
    g, base = setup(env, fb.port, "  backend_connect: 1s\n  preauth: 4s\n")
    w = ac.Watcher(env, g)
    t0 = time.monotonic()
    try:
        c = harness.Client(g.port, env.tls, timeout=8)
        greeting = c.greeting
        c.close()
    except (Fail, OSError) as e:
        greeting = repr(e)
    took = time.monotonic() - t0
    say("   never-greeting backend: client got %r after %.1fs" % (greeting, took))
    check(took <= GREETING_BOUND, "DAEMON BUG: no BYE [UNAVAILABLE] within %.1fs "
          "(backend_connect 1s) from a backend that never greets: the greeting "
          "wait is bounded by timeouts.preauth, not backend_connect" % took)
    check(greeting.startswith(b"* BYE") if isinstance(greeting, bytes) else False,
          "never-greeting backend: %r" % greeting)
    w.stop()
    ac.rss_bound(g, base, 2, "never greets")


def t_slow_greet(env):
    """A backend greeting after 3 s, with backend_connect 5s: the client gets
    that greeting (not a BYE) and the session works; with backend_connect 1s
    it gets `* BYE [UNAVAILABLE]` at about 1 s."""
    fb = pc.named_backend(env, "b", {"greeting": [
        {"sleep": 3.0}, {"send": "* OK fake-b ready\r\n"}]})
    g, base = setup(env, fb.port, "  backend_connect: 5s\n")
    t0 = time.monotonic()
    c = harness.Client(g.port, env.tls, timeout=15)
    took = time.monotonic() - t0
    say("   slow greeting %r after %.1fs" % (c.greeting, took))
    check(c.greeting == b"* OK fake-b ready\r\n", "slow greeting: %r" % c.greeting)
    c.login("demo", "demo")
    c.cmd("NOOP")
    c.logout()
    g2, _ = setup(env, fb.port, "  backend_connect: 1s\n  preauth: 10s\n")
    t0 = time.monotonic()
    c = harness.Client(g2.port, env.tls, timeout=15)
    took = time.monotonic() - t0
    say("   backend_connect 1s: %r after %.1fs" % (c.greeting, took))
    check(c.greeting.startswith(b"* BYE [UNAVAILABLE]"), "DAEMON BUG: backend_connect 1s "
          "does not bound the greeting wait: greeting %r after %.1fs" % (c.greeting, took))
    check(took <= GREETING_BOUND, "BYE after %.1fs" % took)
    c.close()
    ac.rss_bound(g, base, 2, "slow greet")


def endless(rb, c, tag, line):
    """Handler: answer anything with an untagged line that never ends."""
    rb.send(c, b"* OK ")
    chunk = b"y" * 65536
    for _ in range(ENDLESS // len(chunk)):
        rb.send(c, chunk)


def t_endless_line(env):
    """The backend answers with a 50 MB line without CRLF: imapgate streams
    or cuts it, RSS stays bounded, no tagged OK reaches the client."""
    rb = ac.RawBackend(env, endless)
    g, base = setup(env, rb.port)
    w = ac.Watcher(env, g)
    c = ac.tls_client(env, g)
    c.send(b"e1 STATUS INBOX (MESSAGES)\r\n")
    got, peak, how = 0, 0, "timeout"
    tail = b""
    end = time.monotonic() + 20.0
    c.sock.settimeout(1.0)
    while time.monotonic() < end:
        try:
            data = c.sock.recv(1 << 20)
        except socket.timeout:
            if rb.sent >= ENDLESS:
                break
            continue
        except OSError:
            how = "reset"
            break
        if not data:
            how = "eof"
            break
        got += len(data)
        tail = (tail + data)[-4096:]
        peak = max(peak, ac.rss_kib(g.proc.pid))
    c.close()
    say("   backend sent %d, client got %d bytes (%s), peak RSS %d KiB"
        % (rb.sent, got, how, peak))
    backend_closed(rb, "the client closed during an endless line")
    check(b"e1 OK" not in tail, "tagged OK for e1 the backend never sent")
    w.stop()
    ac.rss_bound(g, base, 2, "endless line")
    ac.fresh_session(env, g, "endless line")


def huge_literal(rb, c, tag, line):
    """Handler: announce a 2 GB literal and stream it until the peer goes."""
    rb.send(c, b"* 1 FETCH (UID 1 BODY[] {%d}\r\n" % HUGE)
    chunk = b"z" * 65536
    c.settimeout(10.0)
    while not rb.stopping.is_set():
        rb.send(c, chunk)


def t_huge_literal(env):
    """A backend sends a 2 GB literal to a client reading at 64 KiB/s for a
    few seconds: backpressure stops the backend (it sends little more than
    what the client read plus buffers), RSS stays bounded."""
    rb = ac.RawBackend(env, huge_literal)
    g, base = setup(env, rb.port)
    w = ac.Watcher(env, g)
    small = env.small_client(g, 64 << 10, timeout=10)
    small.login("demo", "demo")
    small.send(b"h1 SELECT INBOX\r\n")
    small.send(b"h2 FETCH 1 BODY[]\r\n")
    read, t0 = 0, time.monotonic()
    peak = 0
    while time.monotonic() - t0 < SLOW_SECONDS:
        read += small.fill(SLOW_RATE // 4)
        peak = max(peak, ac.rss_kib(g.proc.pid))
        time.sleep(0.25)
    sent = rb.sent
    say("   client read %d bytes in %.0fs, backend sent %d, peak RSS %d KiB"
        % (read, SLOW_SECONDS, sent, peak))
    # Socket buffers (a few MB on loopback) plus limits.buffer on each side.
    check(sent - read < 24 << 20, "no backpressure: backend sent %d bytes, client read %d"
          % (sent, read))
    time.sleep(1.0)
    check(rb.sent - sent < 1 << 20, "backend still sending: %d bytes in 1 s"
          % (rb.sent - sent))
    small.close()
    backend_closed(rb, "the slow client closed during a 2 GB literal")
    check(peak - base <= (2 * ac.SESSION_BOUND_KIB + ac.RSS_SLACK_KIB)
          * (ac.ASAN_RSS_FACTOR if ac.asan(g.proc.pid) else 1),
          "peak RSS %d KiB over base %d" % (peak, base))
    w.stop()
    ac.rss_bound(g, base, 2, "2 GB literal")
    ac.fresh_session(env, g, "2 GB literal")


def t_reset_mid_append(env):
    """The backend resets when the client announces an APPEND literal: the
    client gets no tagged OK for it, the session ends with a BYE or a close,
    and others go on."""
    fb = pc.named_backend(env, "b", SCENARIOS["reset_mid_append"][1])
    g, base = setup(env, fb.port)
    w = ac.Watcher(env, g)
    c = ac.tls_client(env, g)
    c.send(b"a1 APPEND INBOX {100}\r\n")
    data, how, took = ac.drain(c.sock, 5.0)
    c.close()
    say("   client got %r (%s after %.1fs)" % (data[:120], how, took))
    check(how in ("eof", "reset"), "session not ended after the backend reset (%s)" % how)
    check(b"a1 OK" not in data, "tagged OK for an APPEND the backend reset")
    ac.no_fake_ok(data, fb, "reset mid-APPEND")
    w.stop()
    ac.rss_bound(g, base, 2, "backend reset mid-APPEND")
    ac.fresh_session(env, g, "backend reset mid-APPEND")


def t_fds(env):
    """RLIMIT_NOFILE 64 and 80 TLS-port connections: imapgate does not spin
    (CPU over 1 s under budget), the watcher session opened before goes on,
    and once the connections are gone a fresh session works."""
    fb = pc.named_backend(env, "b")
    g, base = setup(env, fb.port, workers="workers: 1\n",
                    wrap=["prlimit", "--nofile=%d:%d" % (FD_LIMIT, FD_LIMIT)])
    w = ac.Watcher(env, g)
    socks = []
    try:
        for _ in range(FD_CLIENTS):
            socks.append(socket.create_connection(("127.0.0.1", g.port), timeout=5))
        time.sleep(0.5)
        c0 = pc.cpu_seconds(g.proc.pid)
        time.sleep(1.0)
        used = pc.cpu_seconds(g.proc.pid) - c0
        say("   CPU while out of descriptors: %.2fs in 1s" % used)
        check(used < CPU_BUDGET, "imapgate spins: %.2fs CPU in 1s out of fds" % used)
    finally:
        for s in socks:
            s.close()
    w.stop()
    deadline = time.monotonic() + 5.0
    while True:
        try:
            ac.fresh_session(env, g, "fd exhaustion")
            break
        except Fail:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    ac.rss_bound(g, base, FD_CLIENTS // 8, "fd exhaustion")


TESTS = [
    ("backend never greets", t_never_greets),
    ("backend greets slowly", t_slow_greet),
    ("backend sends a 50 MB line without CRLF", t_endless_line),
    ("backend sends a 2 GB literal to a slow client", t_huge_literal),
    ("backend resets in the middle of an APPEND", t_reset_mid_append),
    ("file descriptors exhausted, then released", t_fds),
]

if __name__ == "__main__":
    ac.run(sys.argv, TESTS)
