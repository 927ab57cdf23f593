#!/usr/bin/env python3
"""Limits, timeouts and workers (issue 7).

In: limits.max_connections and max_connections_per_ip (on the real client
address from a PROXY header) with their exact BYEs, without touching the
sessions already open; running out of file descriptors (imapgate under
`prlimit --nofile`): accepting pauses instead of spinning, and service
comes back when descriptors free up; timeouts.tls_handshake and
timeouts.preauth at their 1s minimum with their BYE/close, other sessions
untouched; the config bounds of the client timeouts; `workers: 2` serving
100 concurrent sessions from both workers, every session logged once.

timeouts.idle cannot go below 1m, so its test (about 75 s) only runs with
IMAPGATE_TEST_SLOW=1; see docs/operations.md for how it is computed.

usage: test_limits_timeouts.py [PATH-TO-IMAPGATE]   (or $IMAPGATE)
"""

import os
import re
import select
import shutil
import socket
import sys
import threading
import time

import harness
import test_guard_common as common
import test_pool_common as pc
from harness import Fail, check, say

FD_LIMIT = 64               # RLIMIT_NOFILE imapgate runs under in the fd test
FD_CLIENTS = 80             # connections opened against it (more than fit)
CPU_BUDGET = 0.3            # CPU seconds imapgate may use in 1 s while starved
WORKER_SESSIONS = 100
KEEPALIVES = 5               # `* OK Still here` lines, 15 s apart, in the idle test
BYE_PREAUTH = b"* BYE Autologout; login took too long\r\n"
BYE_IDLE = b"* BYE Autologout; idle for too long\r\n"


def t_limit_total(env):
    """max_connections: 3: a fourth client gets the exact BYE and a close
    (a msg=refused line with reason limit-total, no session); the three open sessions go on; a slot freed is
    usable again."""
    b = pc.named_backend(env, "b")
    mport = harness.free_port()
    g = pc.pool_gate(env, [b.port], backend=pc.QUIET_HEALTH,
                     extra="limits:\n  max_connections: 3\n  max_connections_per_ip: 0\n"
                     "metrics:\n  address: 127.0.0.1:%d\n" % mport)
    held = [pc.client(g) for _ in range(3)]
    for c in held:
        pc.backend_of(c)
    pc.expect_bye(pc.client(g), pc.BYE_LIMIT_TOTAL, "fourth connection")
    # Refused before any work: one msg=refused line, no session, no backend.
    e = pc.refusals(g, 1)[-1]
    check(e["reason"] == "limit-total", "refused %s" % e)
    check(pc.count_lines(g, "msg=session-end") == 0, "a refusal made a session")
    for c in held:
        c.cmd("NOOP")
    held.pop().logout()
    pc.session_ends(g, 1)
    # The slot is released when the session is freed, just after its
    # session-end line: wait (bounded) until the gauge shows it.
    end = time.monotonic() + 5.0
    while True:
        open_now = metrics(mport).get("imapgate_connections")
        if open_now == 2 or time.monotonic() >= end:
            break
        time.sleep(0.05)
    check(open_now == 2, "imapgate_connections %s after one of 3 sessions ended" % open_now)
    c = pc.client(g)
    check(pc.backend_of(c) == "b", "after a slot freed: %r" % c.greeting)
    for c in held + [c]:
        c.logout()


def t_limit_per_ip(env):
    """max_connections_per_ip: 2 on the address from the PROXY header: a
    third session from 192.0.2.1 gets the per-address BYE; 192.0.2.2 (same
    TCP peer 127.0.0.1) is still served."""
    b = pc.named_backend(env, "b")
    g = pc.pool_gate(env, [b.port], backend=pc.QUIET_HEALTH, listen=pc.PROXY_LISTEN,
                     extra="limits:\n  max_connections_per_ip: 2\n")
    held = [pc.client(g, pc.proxy_v1("192.0.2.1", 5000 + i)) for i in range(2)]
    for c in held:
        pc.backend_of(c)
    pc.expect_bye(pc.client(g, pc.proxy_v1("192.0.2.1", 5002)), pc.BYE_LIMIT_IP,
                  "third from 192.0.2.1")
    e = pc.refusals(g, 1)[-1]
    check(e["reason"] == "limit-per-ip" and e["client"] == "192.0.2.1:5002",
          "refused %s" % e)
    other = pc.client(g, pc.proxy_v1("192.0.2.2", 5003))
    check(pc.backend_of(other) == "b", "192.0.2.2 refused: %r" % other.greeting)
    for c in held + [other]:
        c.cmd("NOOP")
        c.logout()


def t_fd_exhaustion(env):
    """Under RLIMIT_NOFILE 64, 80 clients: the ones that fit are served,
    accept failures are logged, imapgate does not spin (CPU over 1 s under
    budget), and when the clients leave a new client is served again."""
    if shutil.which("prlimit") is None:
        say("   SKIP: prlimit (util-linux) is not installed")
        return "skip"
    b = pc.named_backend(env, "b")
    g = pc.pool_gate(env, [b.port], backend=pc.QUIET_HEALTH,
                     extra="workers: 1\nlimits:\n  max_connections_per_ip: 0\n",
                     wrap=["prlimit", "--nofile=%d:%d" % (FD_LIMIT, FD_LIMIT)])
    socks, greeted, refused = [], 0, 0
    try:
        for _ in range(FD_CLIENTS):
            s = socket.create_connection(("127.0.0.1", g.port), timeout=5)
            socks.append(s)
        # Collect greetings for 1.5 s in all: the ones that fit arrive at once.
        waiting, end = list(socks), time.monotonic() + 1.5
        while waiting and time.monotonic() < end:
            ready, _, _ = select.select(waiting, [], [], max(0.0, end - time.monotonic()))
            for s in ready:
                waiting.remove(s)
                data = s.recv(200)
                if b"fake-b ready" in data:
                    greeted += 1
                elif data.startswith(b"* BYE"):
                    refused += 1
        say("   %d greeted, %d BYE, %d waiting" % (greeted, refused,
                                                   FD_CLIENTS - greeted - refused))
        check(greeted >= 5, "only %d sessions served under the fd limit" % greeted)
        check(greeted + refused < FD_CLIENTS, "all %d clients handled under %d fds"
              % (FD_CLIENTS, FD_LIMIT))
        pc.wait_log(g, r"msg=accept-failed .*error=\"Too many open files\"")
        c0 = pc.cpu_seconds(g.proc.pid)
        time.sleep(1.0)
        used = pc.cpu_seconds(g.proc.pid) - c0
        say("   CPU while out of descriptors: %.2fs in 1s" % used)
        check(used < CPU_BUDGET, "imapgate used %.2fs CPU in 1s while out of fds" % used)
    finally:
        for s in socks:
            s.close()
    # Recovery: the backlog drains (those sessions end at once), then new ones work.
    deadline = time.monotonic() + 5.0
    while True:
        try:
            c = pc.client(g, timeout=3)
            name = pc.backend_of(c)
            c.logout()
            break
        except (Fail, OSError) as e:
            if time.monotonic() > deadline:
                raise Fail("no service 5s after the clients left: %s" % e)
            time.sleep(0.2)
    check(name == "b", "after recovery: %s" % name)
    check(g.proc.alive(), "imapgate died")
    down = pc.count_lines(g, r"msg=backend-down")
    check(down == 0, "DAEMON BUG: running out of local descriptors marked the backend "
          "down (%d backend-down lines)" % down)


def t_tls_handshake(env):
    """timeouts.tls_handshake: 1s: a TCP client that never starts TLS is
    closed after about 1 s (reason tls-handshake-timeout); a TLS client
    connected at the same time is not touched."""
    b = pc.named_backend(env, "b")
    g = pc.pool_gate(env, [b.port], backend=pc.QUIET_HEALTH, tls="implicit",
                     extra="timeouts:\n  tls_handshake: 1s\n")
    raw = socket.create_connection(("127.0.0.1", g.port), timeout=5)
    good = harness.Client(g.port, env.tls, timeout=5)
    t0 = time.monotonic()
    data, how = pc.tc.read_all(raw, timeout=5.0)
    took = time.monotonic() - t0
    raw.close()
    check(how in ("eof", "reset"), "silent TLS client not closed (%s)" % how)
    check(data == b"", "bytes to a client with no TLS: %r" % data)
    check(0.7 <= took <= 2.5, "closed after %.2fs, timeout is 1s" % took)
    e = pc.session_ends(g, 1)[-1]
    check(e["reason"] == "tls-handshake-timeout", "reason=%s" % e["reason"])
    good.cmd("NOOP")
    good.logout()


def t_preauth(env):
    """timeouts.preauth: 1s: a client that does not log in gets the exact
    Autologout BYE and a close (reason preauth-timeout); one that logged in
    at once is not touched."""
    b = pc.named_backend(env, "b")
    g = pc.pool_gate(env, [b.port], backend=pc.QUIET_HEALTH,
                     extra="timeouts:\n  preauth: 1s\n")
    lazy = pc.client(g)
    quick = pc.client(g)
    quick.login("demo", "demo")
    t0 = time.monotonic()
    data, how = common.read_to_close(lazy, timeout=5.0)
    took = time.monotonic() - t0
    check(data == BYE_PREAUTH, "lazy client got %r, want %r" % (data, BYE_PREAUTH))
    check(how in ("eof", "reset"), "closed by %s" % how)
    check(took <= 2.0, "BYE after %.2fs" % took)
    e = pc.session_ends(g, 1)[-1]
    check(e["reason"] == "preauth-timeout", "reason=%s" % e["reason"])
    time.sleep(0.5)
    quick.cmd("NOOP")
    quick.logout()


def t_timeout_bounds(env):
    """The client timeouts' minimums (tls_handshake 1s, preauth 1s, idle 1m)
    are accepted; anything lower is rejected by `imapgate -t`."""
    base = pc.pool_config(1, [2], tls="none")
    for key, ok, bad in (("tls_handshake", "1s", "999ms"), ("preauth", "1s", "500ms"),
                         ("idle", "1m", "59s")):
        rej, out = pc.config_rejected(env, base + "timeouts:\n  %s: %s\n" % (key, ok))
        check(not rej, "timeouts.%s: %s rejected:\n%s" % (key, ok, out))
        rej, out = pc.config_rejected(env, base + "timeouts:\n  %s: %s\n" % (key, bad))
        check(rej and ("timeouts.%s" % key) in out,
              "timeouts.%s: %s accepted (or no message naming the key):\n%s" % (key, bad, out))


def t_idle(env):
    """timeouts.idle: 1m (slow, IMAPGATE_TEST_SLOW=1): a silent logged-in
    session gets the idle BYE after ~60 s; a session in IDLE whose backend
    sends `* OK Still here` every 15 s is kept past it (75 s)."""
    if os.environ.get("IMAPGATE_TEST_SLOW") != "1":
        say("   SKIP: needs 75 s; set IMAPGATE_TEST_SLOW=1")
        return "skip"
    keep = [{"send": "+ idling\r\n"}]
    for _ in range(KEEPALIVES):
        keep += [{"sleep": 15}, {"send": "* OK Still here\r\n"}]
    b = pc.named_backend(env, "b", {
        "connections": [
            {"greeting": "* OK fake-b ready\r\n",
             "steps": [{"command": "LOGIN", "actions": [{"builtin": True}, {"sleep": 100}]}]},
            {"greeting": "* OK fake-b ready\r\n", "commands": {"IDLE": keep}}]})
    g = pc.pool_gate(env, [b.port], backend="  health: {interval: 1h, timeout: 2s}\n",
                     extra="timeouts:\n  idle: 1m\n", probe=False)
    time.sleep(0.3)
    b.connections.clear()   # the start-up probe took no script (closed at once)
    silent = pc.client(g, timeout=90)
    silent.login("demo", "demo")
    idler = pc.client(g, timeout=90)
    idler.login("demo", "demo")
    idler.send(b"I1 IDLE\r\n")
    check(idler.readline() == b"+ idling\r\n", "IDLE not accepted")
    t0 = time.monotonic()
    out = {}

    def watch():
        out["silent"] = common.read_to_close(silent, timeout=75.0)
    t = threading.Thread(target=watch, daemon=True)
    t.start()
    for _ in range(KEEPALIVES):
        line = idler.readline()
        check(line == b"* OK Still here\r\n", "idler got %r" % line)
    took = time.monotonic() - t0
    t.join(20)
    check("silent" in out, "silent session still open after %.0fs" % took)
    check(out["silent"][0] == BYE_IDLE, "silent session got %r" % (out["silent"][0],))
    check(took > 61, "idler checked for only %.0fs" % took)
    idler.send(b"DONE\r\n")
    idler.close()


def t_workers(env):
    """workers: 2: 100 concurrent sessions all succeed, both workers serve
    some (the session id's first 6 hex digits name the worker), and the log
    has exactly one session-end line per session made."""
    bs = [pc.named_backend(env, n) for n in ("a", "b")]
    mport = harness.free_port()
    g = pc.pool_gate(env, [b.port for b in bs], backend=pc.QUIET_HEALTH,
                     extra="workers: 2\nlimits:\n  max_connections_per_ip: 0\n"
                     "metrics:\n  address: 127.0.0.1:%d\n" % mport)
    before = metrics(mport)
    check("workers=2" in g.log_text(), "no `workers=2` in the listening line")
    clients = []
    try:
        for _ in range(WORKER_SESSIONS):
            clients.append(pc.client(g))
        for c in clients:
            c.cmd("NOOP")
    finally:
        for c in clients:
            c.logout()
    ends = pc.session_ends(g, WORKER_SESSIONS)
    check(len(ends) == WORKER_SESSIONS, "%d session-end lines for %d sessions"
          % (len(ends), WORKER_SESSIONS))
    ids = re.findall(r"session=(\w+) msg=session-end", pc.log_since(g))
    check(len(set(ids)) == WORKER_SESSIONS, "%d distinct session ids" % len(set(ids)))
    workers = {}
    for i in ids:
        workers[i[:6]] = workers.get(i[:6], 0) + 1
    say("   sessions per worker: %s" % workers)
    check(len(workers) == 2, "sessions served by %d worker(s): %s" % (len(workers), workers))
    per_backend = {}
    for e in ends:
        per_backend[e["backend"]] = per_backend.get(e["backend"], 0) + 1
    check(sum(per_backend.values()) == WORKER_SESSIONS and len(per_backend) == 2,
          "backends: %s" % per_backend)
    check(all(e["reason"] in ("client-eof", "backend-eof", "logout") for e in ends),
          "reasons: %s" % sorted(set(e["reason"] for e in ends)))
    # The process-wide counters (summed over both workers) agree with the log.
    time.sleep(0.2)
    after = metrics(mport)
    started = after["imapgate_sessions_started_total"] - before["imapgate_sessions_started_total"]
    ended = sum(v for k, v in after.items() if k.startswith("imapgate_sessions_ended_total")) \
        - sum(v for k, v in before.items() if k.startswith("imapgate_sessions_ended_total"))
    connects = sum(v for k, v in after.items() if k.startswith("imapgate_backend_connects_total")) \
        - sum(v for k, v in before.items() if k.startswith("imapgate_backend_connects_total"))
    say("   metrics: started %d, ended %d, backend connects %d, open %d"
        % (started, ended, connects, after.get("imapgate_connections", -1)))
    check(started == ended == connects == WORKER_SESSIONS,
          "metrics started %d / ended %d / connects %d, want %d each"
          % (started, ended, connects, WORKER_SESSIONS))
    check(after.get("imapgate_connections") == 0, "imapgate_connections %s after all closed"
          % after.get("imapgate_connections"))


def metrics(port):
    """The Prometheus text of 127.0.0.1:port/metrics as {series: value}."""
    import urllib.request
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            k, _, v = line.rpartition(" ")
            out[k] = float(v)
    return out


TESTS = [
    ("limits.max_connections: BYE, others untouched", t_limit_total),
    ("limits.max_connections_per_ip on the PROXY address", t_limit_per_ip),
    ("out of file descriptors: pause, no spin, recovery", t_fd_exhaustion),
    ("timeouts.tls_handshake 1s", t_tls_handshake),
    ("timeouts.preauth 1s: Autologout BYE", t_preauth),
    ("client timeout bounds in -t", t_timeout_bounds),
    ("timeouts.idle 1m (slow)", t_idle),
    ("workers: 2 serve 100 concurrent sessions", t_workers),
]

if __name__ == "__main__":
    pc.run(pc.Env(sys.argv), TESTS)
