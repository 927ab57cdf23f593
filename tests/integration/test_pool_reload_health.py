#!/usr/bin/env python3
"""Pool state across reloads, and health checks that connect as a client
would (issue 14).

Reload (SIGHUP): a server at max_connections keeps its count and takes no
more; a down server stays down until a check says up; a server the reload
removes keeps its sessions counted, listed in imapgate_backend_sessions,
and its state comes back when a later reload names it again; counters are
not reset.  Health checks: two Dovecots with `haproxy = yes` behind
`client_ip: proxy-v2` and two WildDucks with `useProxy` behind `proxy-v1`
stay up and serve clients; Dovecot's log shows each check ending with
LOGOUT, never "Connection closed"; STARTTLS and implicit-TLS checks reach
Dovecot over TLS.

Backends: scripted fake backends (test_pool_common), Dovecot, WildDuck's
imap-core (skipped when missing).  Python 3 stdlib only.

usage: test_pool_reload_health.py [PATH-TO-IMAPGATE]   (or $IMAPGATE)
"""

import os
import re
import signal
import sys
import time

import harness
from harness import check, say
import test_guard_common as common
import test_ops_common as ops
import test_pool_common as pc
import test_tls_common as tc

FAST_HEALTH = "  health: {interval: 300ms, timeout: 300ms, rise: 2, fall: 2}\n"
# The checks that must all succeed (watch_checks): a check's connect, TLS,
# PROXY header, greeting, login and LOGOUT may take more than 300 ms on a
# busy machine (Dovecot forks and authenticates), and one late check would
# count as a failure; what those tests prove is how a check talks, not how fast.
STEADY_HEALTH = "  health: {interval: 1s, timeout: 1s, rise: 2, fall: 2}\n"
HEALTH_WAIT = 10.0          # seconds at most for a state change (2 checks)
LOG_WAIT = 5.0              # seconds at most for Dovecot's line of a finished check
METRIC_WAIT = 5.0           # seconds for a gauge to reach a value
RELOAD_WAIT = 5.0           # seconds for "reloaded" after SIGHUP
QUIET_PERIOD = 2.0          # seconds of health checks alone the protocol tests watch
CHECK_PERIOD = 3.0          # ... then seconds of checks and client sessions
PROBE_WAIT = 3.0            # seconds for the start-up probe to show in Dovecot's log
MIN_CHECKS = 3              # checks each backend must have logged in that time
MAX_OPEN = 8                # sessions a test opens to fill a server
NEW_SESSIONS = 6            # sessions opened after a reload
SERVER_NAME = "imap1.internal"


def addr(port):
    """The server label of 127.0.0.1:port."""
    return "127.0.0.1:%d" % port


def metrics_extra(mport, workers=1):
    """Top-level config: the metrics listener and the worker count."""
    return "metrics:\n  address: 127.0.0.1:%d\nworkers: %d\n" % (mport, workers)


def samples(mport):
    """The parsed /metrics of the imapgate on mport."""
    return ops.parse_metrics(ops.scrape(mport)[1])


def backend_sessions(mport):
    """{server label: imapgate_backend_sessions} (only the listed servers)."""
    return {dict(ls)["server"]: v for (n, ls), v in samples(mport).items()
            if n == "imapgate_backend_sessions"}


def wait_sessions(mport, port, want, timeout=METRIC_WAIT):
    """Wait until imapgate_backend_sessions{server=port} is want (absent = 0)."""
    end = time.monotonic() + timeout
    while True:
        got = backend_sessions(mport).get(addr(port), 0)
        if got == want or time.monotonic() >= end:
            break
        time.sleep(0.05)
    check(got == want, "imapgate_backend_sessions{server=%s} is %s, want %s"
          % (addr(port), got, want))


def reload(g, servers, backend, extra, gen):
    """Write a new pool config for g and SIGHUP it; wait for generation gen."""
    text = pc.pool_config(g.port, servers, backend, extra)
    tmp = g.conf + ".new"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, g.conf)
    mark = len(g.log_text())
    os.kill(g.proc.pid, signal.SIGHUP)
    line = g.wait_log(r"msg=reload(ed|-failed)", timeout=RELOAD_WAIT, after=mark)
    check(line is not None and "generation=%d" % gen in line,
          "reload to generation %d: %r\n%s" % (gen, line, g.log_text()[mark:][-2000:]))


def open_sessions(g, count):
    """count plaintext clients through g, left open: [(client, backend name)]."""
    out = []
    for _ in range(count):
        c = pc.client(g)
        out.append((c, pc.backend_of(c)))
    return out


def close_all(held):
    """LOGOUT every held client."""
    for c, _ in held:
        c.logout()
    del held[:]


def t_max_connections(env):
    """A server at max_connections (2) with 2 sessions takes none after a
    reload (with two workers); the gauge still shows 2 and the counters go
    on; after one of them ends it takes exactly one more."""
    a = pc.named_backend(env, "a")
    b = pc.named_backend(env, "b")
    mport = harness.free_port()
    extra = metrics_extra(mport, workers=2)
    servers = [(a.port, "max_connections: 2"), b.port]
    g = pc.pool_gate(env, servers, backend=pc.QUIET_HEALTH, extra=extra)
    held = []
    try:
        for _ in range(MAX_OPEN):
            held += open_sessions(g, 1)
            if sum(1 for _, n in held if n == "a") == 2:
                break
        check(sum(1 for _, n in held if n == "a") == 2, "a never reached 2 sessions: %s"
              % [n for _, n in held])
        wait_sessions(mport, a.port, 2)
        connects = ops.value(samples(mport), "imapgate_backend_connects_total",
                             server=addr(a.port))
        c3 = pc.named_backend(env, "c")
        reload(g, servers + [c3.port], pc.QUIET_HEALTH, extra, 2)
        s = samples(mport)
        check(ops.value(s, "imapgate_backend_sessions", server=addr(a.port)) == 2,
              "after the reload a shows %s sessions, want 2 (counts reset?)"
              % ops.value(s, "imapgate_backend_sessions", server=addr(a.port)))
        check(ops.value(s, "imapgate_backend_connects_total", server=addr(a.port)) >= connects,
              "imapgate_backend_connects_total went back after the reload")
        new = open_sessions(g, NEW_SESSIONS)
        held += new
        names = [n for _, n in new]
        say("   after the reload: %s" % names)
        check("a" not in names, "a server at max_connections took sessions after the "
              "reload: %s" % names)
        wait_sessions(mport, a.port, 2)
        # One of a's sessions (of the old generation) ends: room for one.
        i = next(i for i, (_, n) in enumerate(held) if n == "a")
        held.pop(i)[0].logout()
        wait_sessions(mport, a.port, 1)
        more = open_sessions(g, NEW_SESSIONS)
        held += more
        names = [n for _, n in more]
        check(names.count("a") == 1, "after one of a's sessions ended, a took %d of %s"
              % (names.count("a"), names))
        total = sum(backend_sessions(mport).values())
        check(total == len(held), "the gauges add up to %s, %d sessions open"
              % (total, len(held)))
    finally:
        close_all(held)
    wait_sessions(mport, a.port, 0)


def t_down_stays_down(env):
    """A server the checks took down is still down right after a reload
    (gauge 0, no session tries it, no second backend-down line) and comes
    up only when checks succeed again."""
    dead = pc.dead_port()
    ok = pc.named_backend(env, "ok")
    mport = harness.free_port()
    extra = metrics_extra(mport)
    g = pc.pool_gate(env, [dead, ok.port], backend=FAST_HEALTH, extra=extra)
    g.mark = 0
    down_rx = r"msg=backend-down server=127\.0\.0\.1:%d\b" % dead
    pc.wait_log(g, down_rx, timeout=HEALTH_WAIT)
    check(ops.value(samples(mport), "imapgate_backend_up", server=addr(dead)) == 0,
          "down server shows up before the reload")
    g.mark = len(g.log_text())
    # A slower interval after the reload: a fresh "up" would last long enough to be seen.
    slow = "  health: {interval: 1s, timeout: 300ms, rise: 2, fall: 2}\n"
    reload(g, [dead, ok.port], slow, extra, 2)
    s = samples(mport)
    check(ops.value(s, "imapgate_backend_up", server=addr(dead)) == 0,
          "a down server is up again right after the reload")
    check(ops.value(s, "imapgate_backend_failures_total", server=addr(dead)) >= 2,
          "imapgate_backend_failures_total reset by the reload")
    for _ in range(NEW_SESSIONS):
        check(pc.one_session(g) == "ok", "a session went elsewhere than ok")
    check(pc.count_lines(g, r"msg=backend-failed server=127\.0\.0\.1:%d\b" % dead) == 0,
          "sessions tried the down server after the reload:\n%s" % pc.log_since(g)[-1500:])
    check(pc.count_lines(g, r"msg=backend-(up|down) server=127\.0\.0\.1:%d\b" % dead) == 0,
          "the down server changed state across the reload:\n%s" % pc.log_since(g)[-1500:])
    # It comes back: up after `rise` good checks, then it takes sessions.
    pc.named_backend(env, "back", port=dead)
    t0 = time.monotonic()
    pc.wait_log(g, r"msg=backend-up server=127\.0\.0\.1:%d\b" % dead, timeout=HEALTH_WAIT)
    say("   up %.1fs after it came back (interval 1s, rise 2)" % (time.monotonic() - t0))
    seen = [pc.one_session(g) for _ in range(NEW_SESSIONS)]
    check("back" in seen, "the server that came back got no session: %s" % seen)


def t_removed_server(env):
    """A server the reload removes keeps its running sessions, counted and
    listed in imapgate_backend_sessions until they end; named again by a
    later reload, its count is carried (max_connections holds)."""
    a = pc.named_backend(env, "a")
    b = pc.named_backend(env, "b")
    c = pc.named_backend(env, "c")
    mport = harness.free_port()
    extra = metrics_extra(mport, workers=2)
    g = pc.pool_gate(env, [a.port, b.port], backend=pc.QUIET_HEALTH, extra=extra)
    held = []
    try:
        held += open_sessions(g, 4)
        on_a = [x for x in held if x[1] == "a"]
        check(len(on_a) == 2, "round robin gave %s" % [n for _, n in held])
        reload(g, [b.port, c.port], pc.QUIET_HEALTH, extra, 2)
        got = backend_sessions(mport)
        say("   after removing a: %s" % got)
        check(got.get(addr(a.port)) == 2, "removed server a listed with %s sessions, want 2"
              % got.get(addr(a.port)))
        check(got.get(addr(b.port)) == 2, "b shows %s, want 2" % got.get(addr(b.port)))
        new = open_sessions(g, 4)
        held += new
        check(all(n in ("b", "c") for _, n in new), "new sessions: %s" % [n for _, n in new])
        got = backend_sessions(mport)
        check(sum(got.values()) == len(held), "gauges %s add up to %d, %d sessions open"
              % (got, sum(got.values()), len(held)))
        for x, _ in on_a:       # the old generation's sessions on a still work
            x.cmd("NOOP")
        # One ends; a's state comes back with a reload that names a again.
        on_a[0][0].logout()
        held.remove(on_a[0])
        wait_sessions(mport, a.port, 1)
        reload(g, [(a.port, "max_connections: 1"), b.port, c.port], pc.QUIET_HEALTH, extra, 3)
        wait_sessions(mport, a.port, 1)
        new = open_sessions(g, NEW_SESSIONS)
        held += new
        check(all(n != "a" for _, n in new), "a (max_connections 1, one session of the "
              "first generation) took more: %s" % [n for _, n in new])
        on_a[1][0].logout()
        held.remove(on_a[1])
        wait_sessions(mport, a.port, 0)
        new = open_sessions(g, 3)
        held += new
        check([n for _, n in new].count("a") == 1, "a took %s" % [n for _, n in new])
        # Once removed again and idle, it leaves the metrics.
        close_all(held)
        reload(g, [b.port, c.port], pc.QUIET_HEALTH, extra, 4)
        check(addr(a.port) not in backend_sessions(mport),
              "an idle removed server is still listed")
    finally:
        close_all(held)


def dovecot_checks(d, mark, end=None):
    """Dovecot's imap-login lines from mark to end for connections that never
    logged in: the health checks (every client session of these tests logs
    in, and a login is logged as such, not as a disconnect)."""
    return [x for x in d.log_text()[mark:end].splitlines()
            if "imap-login:" in x and "Disconnected" in x and "user=<>" in x]


def after_probe(ds, marks):
    """Dovecot log offsets past the start-up probe: imapgate's own probe
    session (harness.wait_port connects and closes) reaches a Dovecot and
    ends there without a login.  Waits (bounded) for the first disconnect
    line after marks, which comes before any check (they start one
    interval later), and returns the offsets after it."""
    end = time.monotonic() + PROBE_WAIT
    while time.monotonic() < end:
        if any("Disconnected" in d.log_text()[m:] for d, m in zip(ds, marks)):
            break
        time.sleep(0.05)
    time.sleep(0.1)
    return [len(d.log_text()) for d in ds]


def watch_checks(g, mport, servers, client_fn):
    """QUIET_PERIOD seconds of health checks alone, then CHECK_PERIOD with a
    client session (client_fn) each round: every server up in /metrics all
    along, no backend-down line, no failure counted (a session's good
    greeting resets a server's failure run, so the counter is what shows
    failing checks under load).  Returns the client rounds."""
    rounds = 0
    for period, fn in ((QUIET_PERIOD, None), (CHECK_PERIOD, client_fn)):
        end = time.monotonic() + period
        while time.monotonic() < end:
            s = samples(mport)
            for p in servers:
                check(ops.value(s, "imapgate_backend_up", server=addr(p)) == 1,
                      "server %s is down:\n%s" % (addr(p), pc.log_since(g)[-1500:]))
            if fn is not None:
                fn()
                rounds += 1
            time.sleep(0.2)
    check(pc.count_lines(g, r"msg=backend-down") == 0,
          "a server went down:\n%s" % pc.log_since(g)[-1500:])
    s = samples(mport)
    for p in servers:
        check(ops.value(s, "imapgate_backend_failures_total", server=addr(p)) == 0,
              "failures counted on %s:\n%s" % (addr(p), pc.log_since(g)[-1500:]))
        check(ops.value(s, "imapgate_backend_connects_total", server=addr(p)) >= 1,
              "no session reached %s" % addr(p))
    return rounds


def health_login_lines(d, mark, user):
    """Dovecot's lines after mark about the health check user's sessions."""
    return [x for x in d.log_text()[mark:].splitlines()
            if "user=<%s>" % user in x or "imap(%s)" % user in x]


def t_dovecot_proxy_v2(env):
    """Two Dovecots with haproxy = yes, client_ip: proxy-v2 and a health
    user (backend.health.user / password_file): the checks send a LOCAL
    header, log in and out, both servers stay up, clients are served, and
    Dovecot's log has no "no auth attempts" line at all: neither
    "Connection closed" nor "Aborted login" (which Dovecot 2.3 writes for
    any LOGOUT without a login, hence the health user)."""
    ds = []
    for _ in range(2):
        d = tc.start_dovecot(env, haproxy=True)
        if d is None:
            say("   SKIP: dovecot is not installed")
            return "skip"
        ds.append(d)
    mport = harness.free_port()
    ports = [d.port for d in ds]
    marks = [len(d.log_text()) for d in ds]
    pwfile = os.path.join(env.tmp, "health.pw")
    with open(pwfile, "w") as f:
        f.write(harness.USERS["other"] + "\n")
    health = STEADY_HEALTH.replace("}", ", user: other, password_file: %s}" % pwfile)
    g = pc.pool_gate(env, ports, backend="  client_ip: proxy-v2\n" + health,
                     extra=metrics_extra(mport))
    marks = after_probe(ds, marks)
    g.mark = len(g.log_text())

    def session():
        c = pc.client(g)
        check(c.greeting.startswith(b"* OK") and b"Dovecot" in c.greeting,
              "greeting %r" % c.greeting)
        c.login("demo", "demo")
        c.logout()

    rounds = watch_checks(g, mport, ports, session)
    for d, mark in zip(ds, marks):
        # Dovecot writes its lines as the connections end: wait (bounded)
        # until every check login but one (in flight) has its "Logged out".
        end = time.monotonic() + LOG_WAIT
        while True:
            lines = health_login_lines(d, mark, "other")
            n_in = sum(1 for x in lines if "Login: user=<other>" in x)
            n_out = sum(1 for x in lines if "Logged out" in x)
            if n_out >= n_in - 1 or time.monotonic() >= end:
                break
            time.sleep(0.05)
        text = d.log_text()[mark:]
        logins = [x for x in text.splitlines() if "Login: user=<demo>" in x]
        check(logins, "no client logged in through imapgate:\n%s" % text[-1500:])
        checks = [x for x in health_login_lines(d, mark, "other") if "Login: user=<other>" in x]
        check(len(checks) >= MIN_CHECKS, "%d health check logins in Dovecot's log in %.0fs:\n%s"
              % (len(checks), QUIET_PERIOD + CHECK_PERIOD, text[-1500:]))
        outs = [x for x in health_login_lines(d, mark, "other") if "Logged out" in x]
        check(len(outs) >= len(checks) - 1, "%d check logins but %d 'Logged out' lines"
              % (len(checks), len(outs)))
        noauth = [x for x in text.splitlines() if "no auth attempts" in x]
        check(not noauth, "'no auth attempts' lines in Dovecot's log: %s" % noauth[:3])
        say("   dovecot %d: %d logins, %d checks, e.g. %s" % (
            d.port, len(logins), len(checks), checks[0].split("imap-login: ")[-1][:90]))
    say("   %d client rounds, both servers up throughout" % rounds)


def t_wildduck_proxy_v1(env):
    """Two WildDucks with useProxy, client_ip: proxy-v1: the checks send
    `PROXY UNKNOWN`, both servers stay up, clients are served and WildDuck
    greets them with the address of the header imapgate sent."""
    why = common.wildduck_available()
    if why is not None:
        say("   SKIP: %s" % why)
        return "skip"
    wds = []
    for _ in range(2):
        wd = common.WildDuck(env.tmp, env={"WD_PROXY": "1"}).start()
        env.backends.append(wd)
        wds.append(wd)
    mport = harness.free_port()
    ports = [wd.port for wd in wds]
    g = pc.pool_gate(env, ports, backend="  client_ip: proxy-v1\n" + STEADY_HEALTH,
                     extra=metrics_extra(mport))
    g.mark = len(g.log_text())
    want = re.compile(rb"^\* OK WildDuck IMAP Server ready for requests from "
                      rb"127\.0\.0\.1 \S+\r\n$")

    def session():
        c = pc.client(g)
        check(want.match(c.greeting), "greeting %r" % c.greeting)
        c.login("testuser", "pass")
        c.logout()

    rounds = watch_checks(g, mport, ports, session)
    say("   %d client rounds, both servers up throughout" % rounds)


def t_tls_checks(env):
    """backend.tls starttls and implicit: the checks reach Dovecot over TLS
    (its log line says TLS) and end with LOGOUT; the servers stay up."""
    if tc.need("dovecot"):
        say("   SKIP: dovecot is not installed")
        return "skip"
    ca = tc.make_ca(env.tmp, "hc")
    leaf = tc.make_leaf(env.tmp, "hc-leaf", ca, SERVER_NAME, ["DNS:" + SERVER_NAME])
    tls_keys = "  ca_file: %s\n  server_name: %s\n" % (ca[0], SERVER_NAME)
    for mode in ("starttls", "implicit"):
        # A Dovecot per mode: a check cut by the stop of the first gate
        # logs its disconnect whenever Dovecot gets to it, and must not be
        # taken for the second gate's probe or checks.
        d = tc.start_dovecot(env, tls_cert=leaf)
        port = d.port if mode == "starttls" else d.tls_port
        mport = harness.free_port()
        mark = len(d.log_text())
        g = pc.pool_gate(env, [port], backend="  tls: %s\n" % mode + tls_keys + STEADY_HEALTH,
                         extra=metrics_extra(mport))
        mark = after_probe([d], [mark])[0]
        g.mark = len(g.log_text())

        def session():
            c = pc.client(g)
            check(c.greeting.startswith(b"* OK"), "greeting %r" % c.greeting)
            c.login("demo", "demo")
            c.logout()

        watch_checks(g, mport, [port], session)
        # The checks that ended before the stop (whole lines); one under
        # way is cut by the stop, and ends without LOGOUT.
        text = d.log_text()
        end = text.rfind("\n") + 1
        env.stop_gate(g)
        checks = dovecot_checks(d, mark, end)
        check(len(checks) >= MIN_CHECKS, "%s: %d checks in Dovecot's log" % (mode, len(checks)))
        bad = [x for x in checks if "Aborted login by logging out" not in x or "TLS" not in x]
        check(not bad, "%s: checks not over TLS or not ended by LOGOUT: %s" % (mode, bad[:3]))
        say("   %s: %d checks, e.g. %s" % (mode, len(checks),
                                          checks[0].split("imap-login: ")[-1][:100]))


def t_health_login_refused(env):
    """A health user the server refuses (wrong password) is a failed check:
    the server goes down with error="health check login refused", and the
    password appears in no log line."""
    if tc.need("dovecot"):
        say("   SKIP: dovecot is not installed")
        return "skip"
    d = tc.start_dovecot(env)
    secret = "Wrong-Secret-93x"
    pwfile = os.path.join(env.tmp, "bad-health.pw")
    with open(pwfile, "w") as f:
        f.write(secret + "\n")
    # Dovecot answers a failed LOGIN after 0.5 s even with auth_failure_delay
    # = 0: a 300 ms check timeout would end every check first ("health check
    # timeout"), and the refusal would never be seen.
    health = ("  health: {interval: 2s, timeout: 2s, rise: 2, fall: 2, user: other, "
              "password_file: %s}\n" % pwfile)
    g = pc.pool_gate(env, [d.port], backend=health)
    pc.wait_log(g, r'msg=backend-down server=127\.0\.0\.1:%d error="health check login '
                r'refused"' % d.port, timeout=HEALTH_WAIT)
    check(secret not in g.log_text(), "the health password is in imapgate's log")
    end = time.monotonic() + LOG_WAIT
    while True:
        fails = [x for x in d.log_text().splitlines()
                 if "user=<other>" in x and "auth failed" in x]
        if fails or time.monotonic() >= end:
            break
        time.sleep(0.05)
    check(fails, "Dovecot saw no failed login of the health user")
    say("   down after %d refused check logins" % len(fails))


TESTS = [
    ("reload: max_connections count carried, metrics show all sessions", t_max_connections),
    ("reload: a down server stays down until a check says up", t_down_stays_down),
    ("reload: a removed server keeps its sessions counted and listed", t_removed_server),
    ("health: proxy-v2 to Dovecot (haproxy = yes), login and LOGOUT", t_dovecot_proxy_v2),
    ("health: a refused health login takes the server down", t_health_login_refused),
    ("health: proxy-v1 to WildDuck (useProxy)", t_wildduck_proxy_v1),
    ("health: STARTTLS and implicit TLS to Dovecot", t_tls_checks),
]

if __name__ == "__main__":
    pc.run(pc.Env(sys.argv), TESTS)
