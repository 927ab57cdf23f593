#!/usr/bin/env python3
"""200 concurrent sessions through imapgate, all at once.

Every session logs in, waits until all sessions are logged in (so they are
really concurrent), selects INBOX, fetches a message, compares it with the
direct copy and logs out.

usage: test_concurrency.py [PATH-TO-IMAPGATE]   (or $IMAPGATE; see harness.py)
"""

import sys
import threading
import time

import harness
from harness import Fail, check, say

SESSIONS = 200
PHASE_TIMEOUT = 60.0   # seconds for all sessions to log in / to finish


def t_concurrent(env):
    """SESSIONS sessions in parallel, each LOGIN/SELECT/FETCH/LOGOUT."""
    d = env.direct_client()
    d.login("demo", "demo")
    d.select("INBOX")
    want = {"demo": d.fetch_body(1)}
    d.logout()
    d = env.direct_client()
    d.login("other", harness.USERS["other"])
    d.select("INBOX")
    want["other"] = d.fetch_body(1)
    d.logout()

    barrier = threading.Barrier(SESSIONS, timeout=PHASE_TIMEOUT)
    errors = []
    done = []
    lock = threading.Lock()

    def session(i):
        user = "demo" if i % 2 == 0 else "other"
        c = None
        try:
            c = env.client(timeout=PHASE_TIMEOUT)
            check(c.greeting.startswith(b"* OK"), "greeting %r" % c.greeting)
            c.login(user, harness.USERS[user])
            barrier.wait()
            c.select("INBOX")
            body = c.fetch_body(1)
            check(body == want[user], "FETCH body differs (%d vs %d bytes)" % (
                len(body), len(want[user])))
            c.logout()
            with lock:
                done.append(i)
        except Exception as e:  # collected and reported below
            barrier.abort()
            with lock:
                errors.append("session %d: %s: %s" % (i, type(e).__name__, e))
            if c:
                c.close()

    t0 = time.monotonic()
    threads = [threading.Thread(target=session, args=(i,), daemon=True)
               for i in range(SESSIONS)]
    for t in threads:
        t.start()
    end = time.monotonic() + 2 * PHASE_TIMEOUT
    for t in threads:
        t.join(max(0.0, end - time.monotonic()))
    dt = time.monotonic() - t0
    hung = sum(1 for t in threads if t.is_alive())
    # A broken barrier makes every waiting session fail; show the first cause.
    real = [e for e in errors if "BrokenBarrierError" not in e]
    for e in (real or errors)[:5]:
        say("   " + e)
    check(hung == 0, "%d sessions still running after %.0fs" % (hung, dt))
    check(not errors, "%d of %d sessions failed" % (len(errors), SESSIONS))
    check(len(done) == SESSIONS, "only %d sessions finished" % len(done))
    say("   %d concurrent sessions (half demo, half other) all succeeded in %.2fs"
        % (SESSIONS, dt))
    if env.proxy:
        check(env.proxy.proc.alive(), "imapgate died")
        say("   imapgate RSS after the run: %d KiB" % env.proxy.proc.rss_kib())


def main():
    mail = {"demo": [harness.make_message("hello", 20000, seed=1)],
            "other": [harness.make_message("other-hello", 3000, seed=4)]}
    # All sessions come from 127.0.0.1: lift the per-address limit (default 50).
    env = harness.Env(sys.argv, mail, proxy_extra="limits:\n  max_connections_per_ip: 0\n")
    harness.run_tests(env, [("%d concurrent sessions" % SESSIONS, t_concurrent)])


if __name__ == "__main__":
    try:
        main()
    except Fail as e:
        say("FAIL: %s" % e)
        sys.exit(1)
