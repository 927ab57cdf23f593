#!/usr/bin/env python3
"""Backend failover and health (issue 7).

Scripted backends name themselves in their greeting; dead ports refuse; a
listening socket whose accept queue is full makes connects hang.
In: failover on a refused connect, a connect timeout, a backend that never
greets, a BYE or garbled greeting, the connect_tries bound; passive marking
(`fall` failures -> down, logged once); active checks taking a stopped
server down and a restarted one up (`rise`), no session failing meanwhile
and none sent to a down server; every server down -> exact BYE and close.

usage: test_pool_failover.py [PATH-TO-IMAPGATE]   (or $IMAPGATE)
"""

import collections
import re
import sys
import time

import test_pool_common as pc
from harness import check, say

SESSIONS = 6                # sessions per failover case
FAST_HEALTH = "  health: {interval: 200ms, timeout: 200ms, rise: 2, fall: 2}\n"
HEALTH_WAIT = 3.0           # seconds for a state change with FAST_HEALTH
CONNECT_TIMEOUT = "timeouts:\n  backend_connect: 300ms\n  preauth: 10s\n"
FAILOVER_BOUND = 3.0        # seconds a session may take to reach a good server
ALL_DOWN_TRIES = 20         # sessions before the servers must be known down (0.1 s apart)


def timed_session(g):
    """One session: (backend name, seconds until the greeting)."""
    t0 = time.monotonic()
    c = pc.client(g, timeout=FAILOVER_BOUND + 10)
    took = time.monotonic() - t0
    name = pc.backend_of(c)
    c.logout()
    return name, took


def failed_lines(g, port, error=None):
    """backend-failed log lines (since the mark) for 127.0.0.1:port."""
    rx = r"msg=backend-failed server=127\.0\.0\.1:%d\b" % port
    if error:
        rx += r'.*error="%s"' % re.escape(error)
    return pc.count_lines(g, rx)


def all_to(g, name, n=SESSIONS):
    """n sessions, each must reach backend name within FAILOVER_BOUND."""
    for i in range(n):
        got, took = timed_session(g)
        check(got == name, "session %d went to %s, want %s" % (i, got, name))
        check(took < FAILOVER_BOUND, "session %d took %.2fs to be greeted" % (i, took))


def t_refused(env):
    """A refused connect moves the session on; after `fall` (2) of them the
    server is down (logged once) and no longer tried."""
    dead = pc.dead_port()
    ok = pc.named_backend(env, "ok")
    g = pc.pool_gate(env, [dead, ok.port], backend=pc.QUIET_HEALTH)
    g.mark = 0      # the start-up probe may have been the first failure
    all_to(g, "ok")
    pc.wait_log(g, r"msg=backend-down server=127\.0\.0\.1:%d\b" % dead)
    check(pc.count_lines(g, r"msg=backend-down server=127\.0\.0\.1:%d\b" % dead) == 1,
          "backend-down logged more than once")
    n = failed_lines(g, dead)
    check(1 <= n <= 2, "%d failed connects to the dead server (fall is 2)" % n)
    all_to(g, "ok")
    check(failed_lines(g, dead) == n, "a down server was tried again")


def t_connect_timeout(env):
    """A connect that hangs is given up after timeouts.backend_connect
    (300ms) and the session moves on."""
    bh = pc.Blackhole()
    env.backends.append(bh)
    ok = pc.named_backend(env, "ok")
    # Passive failures (fall = 2) ask for an active check at once; its
    # failure (health.timeout 300ms here) takes the server down.
    g = pc.pool_gate(env, [bh.port, ok.port],
                     backend="  health: {interval: 1h, timeout: 300ms, rise: 2, fall: 2}\n",
                     extra=CONNECT_TIMEOUT)
    g.mark = 0
    slow = 0
    for i in range(SESSIONS):
        got, took = timed_session(g)
        check(got == "ok", "session %d went to %s" % (i, got))
        check(took < 1.5, "session %d took %.2fs (connect timeout is 300ms)" % (i, took))
        slow += took >= 0.25
    check(failed_lines(g, bh.port, "connect timeout") >= 1,
          "no backend-failed ... connect timeout line:\n%s" % pc.log_since(g)[-2000:])
    check(slow <= 4, "%d sessions waited for the connect timeout (fall is 2, then one "
          "300ms check)" % slow)


def t_never_greets(env):
    """A backend that accepts and never greets is given up after a short
    bound (backend_connect, 300ms) and the session moves on, long before the
    client's own preauth timeout (4s)."""
    ng = pc.named_backend(env, "ng", {"greeting": [{"hang": True}]})
    ok = pc.named_backend(env, "ok")
    g = pc.pool_gate(env, [ng.port, ok.port], backend=pc.QUIET_HEALTH,
                     extra="timeouts:\n  backend_connect: 300ms\n  preauth: 4s\n")
    for i in range(SESSIONS // 2):
        t0 = time.monotonic()
        c = pc.client(g, timeout=15)
        took = time.monotonic() - t0
        check(c.greeting != b"" and not c.greeting.startswith(b"* BYE Autologout"),
              "DAEMON BUG: session %d on a never-greeting backend got %r after %.1fs "
              "(held until timeouts.preauth, no failover)" % (i, c.greeting, took))
        check(pc.backend_of(c) == "ok", "session %d got %r" % (i, c.greeting))
        check(took < FAILOVER_BOUND, "DAEMON BUG: a never-greeting backend held session %d "
              "for %.1fs" % (i, took))
        c.logout()


def t_bad_greeting(env):
    """A `* BYE` greeting and a garbled one both move the session on, with
    the reason logged; the client only sees the good server's greeting."""
    bye = pc.named_backend(env, "bye", {"greeting": "* BYE [UNAVAILABLE] Too busy\r\n"})
    junk = pc.named_backend(env, "junk", {"greeting": "HELLO THERE\r\n"})
    ok = pc.named_backend(env, "ok")
    g = pc.pool_gate(env, [bye.port, junk.port, ok.port], backend=pc.QUIET_HEALTH)
    g.mark = 0
    all_to(g, "ok")
    check(failed_lines(g, bye.port, "greeted with BYE") >= 1, "no 'greeted with BYE' line")
    check(failed_lines(g, junk.port, "bad greeting") >= 1, "no 'bad greeting' line")
    for p in (bye.port, junk.port):
        # The passive failures start an active check on the main thread:
        # the down line may come a moment after the sessions.
        down_rx = r"msg=backend-down server=127\.0\.0\.1:%d\b" % p
        pc.wait_log(g, down_rx, timeout=HEALTH_WAIT)
    time.sleep(0.3)     # and only once
    for p in (bye.port, junk.port):
        check(pc.count_lines(g, r"msg=backend-down server=127\.0\.0\.1:%d\b" % p) == 1,
              "server %d not marked down exactly once" % p)


def t_connect_tries(env):
    """connect_tries: 2 bounds the servers one session tries; a session that
    runs out gets BYE [UNAVAILABLE] (reason backend-connect-failed)."""
    dead = [pc.dead_port() for _ in range(3)]
    ok = pc.named_backend(env, "ok")
    g = pc.pool_gate(env, dead + [ok.port], backend="  connect_tries: 2\n  health: "
                     "{interval: 1h, timeout: 2s, rise: 2, fall: 100}\n")
    results = collections.Counter()
    for _ in range(8):
        c = pc.client(g)
        if c.greeting == pc.BYE_UNAVAILABLE:
            pc.expect_bye(c, pc.BYE_UNAVAILABLE, "out of tries")
            results["bye"] += 1
        else:
            results[pc.backend_of(c)] += 1
            c.logout()
    say("   %s" % dict(results))
    check(results["bye"] >= 1 and results["ok"] >= 1, "8 sessions gave %s" % dict(results))
    ends = pc.session_ends(g, 8)
    per = collections.Counter(m.group(1) for m in re.finditer(
        r"session=(\w+) msg=backend-failed", pc.log_since(g)))
    check(max(per.values()) <= 2, "a session tried %d servers" % max(per.values()))
    for e in ends:
        if e["backend"] != "127.0.0.1:%d" % ok.port:
            check(e["reason"] == "backend-connect-failed", "reason=%s" % e["reason"])


def t_health_down_up(env):
    """Active checks: a stopped server is marked down within fall x interval
    (logged once), no session fails meanwhile, none is sent to it while
    down; started again it is up after rise checks (logged once) and takes
    sessions again."""
    a = pc.named_backend(env, "a")
    b = pc.named_backend(env, "b")
    port = a.port
    g = pc.pool_gate(env, [a.port, b.port], backend=FAST_HEALTH)
    time.sleep(0.5)
    check(pc.count_lines(g, r"msg=backend-down") == 0, "a server went down while healthy")
    down_rx = r"msg=backend-down server=127\.0\.0\.1:%d\b" % port
    a.stop()
    t0 = time.monotonic()
    n = 0
    while pc.count_lines(g, down_rx) == 0:
        check(time.monotonic() - t0 < HEALTH_WAIT, "no backend-down after %.0fs" % HEALTH_WAIT)
        got, _ = timed_session(g)       # every session still succeeds
        check(got == "b", "session went to %s while a is stopped" % got)
        n += 1
    say("   down after %.2fs, %d sessions meanwhile, all served" % (time.monotonic() - t0, n))
    g.mark = len(g.log_text())
    all_to(g, "b", 10)
    check(failed_lines(g, port) == 0, "a down server was given sessions")
    time.sleep(0.6)     # three more failed checks: still one down line in all
    g2mark, g.mark = g.mark, 0
    check(pc.count_lines(g, down_rx) == 1, "backend-down logged %d times"
          % pc.count_lines(g, down_rx))
    g.mark = g2mark
    pc.named_backend(env, "a", port=port)
    up_rx = r"msg=backend-up server=127\.0\.0\.1:%d\b" % port
    pc.wait_log(g, up_rx, timeout=HEALTH_WAIT)
    seen = collections.Counter(timed_session(g)[0] for _ in range(10))
    check(seen["a"] >= 3, "after backend-up, 10 sessions went %s" % dict(seen))
    time.sleep(0.5)
    check(pc.count_lines(g, up_rx) == 1, "backend-up logged more than once")


def t_all_down(env):
    """Every server down: the client gets exactly `* BYE [UNAVAILABLE]
    Backend server unavailable` and a close, first after trying them
    (backend-connect-failed), then at once (no-backend)."""
    dead = [pc.dead_port(), pc.dead_port()]
    g = pc.pool_gate(env, dead, backend=pc.QUIET_HEALTH)
    reasons = []
    for _ in range(ALL_DOWN_TRIES):
        c = pc.client(g)
        pc.expect_bye(c, pc.BYE_UNAVAILABLE, "all servers down")
        reasons.append(pc.session_ends(g, len(reasons) + 1)[-1]["reason"])
        if reasons[-1] == "no-backend":
            break
        # The down marks come from active checks on the main thread, which
        # a fast client can outrun: give them a moment.
        time.sleep(0.1)
    say("   reasons %s" % reasons)
    check(reasons[-1] == "no-backend", "never no-backend: %s" % reasons)
    check(set(reasons[:-1]) <= {"backend-connect-failed"}, "reasons %s" % reasons)


TESTS = [
    ("failover on a refused connect; down after fall, logged once", t_refused),
    ("failover on a connect timeout (backend_connect 300ms)", t_connect_timeout),
    ("failover from a backend that never greets", t_never_greets),
    ("failover on a BYE or garbled greeting", t_bad_greeting),
    ("connect_tries bounds the servers a session tries", t_connect_tries),
    ("health checks: down on stop, up on restart, no session lost", t_health_down_up),
    ("all servers down -> BYE [UNAVAILABLE] and close", t_all_down),
]

if __name__ == "__main__":
    pc.run(pc.Env(sys.argv), TESTS)
