#!/usr/bin/env python3
"""Refusals cost nothing (issue 14): a connection over a limit gets no
backend connection and, past a small budget, no TLS handshake; refusals and
client-triggered events are logged at a bounded rate while the metrics
count every one.  Fake backends count their connections.  127.0.0.1 and
127.0.0.2 only; every loop bounded in count and time.  Python 3 stdlib.
"""
import os
import resource
import socket
import subprocess
import sys
import time

import harness
from harness import check, say
import test_guard_common as common
import test_ops_common as ops
import test_pool_common as pc

SILENT = 5000            # silent connections from one address
FLOOD_RATE = 1000        # refused reconnects per second ...
FLOOD_SECONDS = 20       # ... for this long
FD_SLACK = 40            # listeners, backend, log, metrics, epoll, eventfds, ...
REFUSE_HELD = 64         # SESSION_REFUSE_HELD in proxy/session.c
RSS_GROWTH_KIB = 10 * 1024


def fds(pid):
    """Descriptors pid holds now."""
    return len(os.listdir("/proc/%d/fd" % pid))


def t_silent_flood(env):
    """5,000 silent TCP connections from 127.0.0.1 to an implicit-TLS
    listener with the default limits (50 per address): after 2 s imapgate
    holds at most limit + refusal bound descriptors (plus its own), its RSS
    grew by less than 10 MB, no backend connection was opened for them, and
    a client from 127.0.0.2 was served throughout."""
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < SILENT + 500:
        return "skip"
    b = pc.named_backend(env, "b")
    g = pc.pool_gate(env, [b.port], backend=pc.QUIET_HEALTH, tls="implicit")
    pid = g.proc.p.pid
    base_fds, base_rss = fds(pid), g.proc.rss_kib()
    base_conns = len(b.connections)
    served = 0
    # The silent sockets live in a child process: this one runs the fake
    # backend, whose select() must not see descriptors past FD_SETSIZE.
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(g.port), str(SILENT)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        t0 = time.monotonic()
        for _ in range(SILENT // 1000):
            line = holder.stdout.readline()
            check(line.startswith("opened"), "holder: %r" % line)
            # A normal client from another address is served meanwhile.
            tls_session_from(g.port, "127.0.0.2")
            served += 1
        say("   %d silent connections opened in %.1fs" % (SILENT, time.monotonic() - t0))
        time.sleep(2.0)
        held, rss = fds(pid), g.proc.rss_kib()
        say("   after 2 s: imapgate holds %d descriptors (%d before), RSS +%d KiB"
            % (held, base_fds, rss - base_rss))
        check(held - base_fds <= 50 + REFUSE_HELD + FD_SLACK,
              "imapgate holds %d descriptors (%d before)" % (held, base_fds))
        check(rss - base_rss < RSS_GROWTH_KIB, "RSS grew by %d KiB" % (rss - base_rss))
        tls_session_from(g.port, "127.0.0.2")
        served += 1
        check(len(b.connections) - base_conns == served,
              "%d backend connections for %d served clients"
              % (len(b.connections) - base_conns, served))
    finally:
        holder.stdin.close()
        try:
            holder.wait(timeout=10)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait()


# Opens N silent connections to 127.0.0.1:PORT, saying "opened" every 1,000;
# holds them until its stdin closes (bounded: 60 s).
HOLDER = """
import resource, select, socket, sys
port, n = int(sys.argv[1]), int(sys.argv[2])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(n + 500, hard), hard))
socks = []
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setblocking(False)
    s.connect_ex(("127.0.0.1", port))
    socks.append(s)
    if i % 1000 == 999:
        print("opened", i + 1, flush=True)
select.select([sys.stdin], [], [], 60)
"""


def tls_session_from(port, source):
    """A whole TLS session from source (another loopback address): greeting,
    NOOP, LOGOUT, each answered."""
    import ssl
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    raw = socket.create_connection(("127.0.0.1", port), timeout=10,
                                   source_address=(source, 0))
    with ctx.wrap_socket(raw, server_hostname="localhost") as s:
        s.settimeout(10)
        data = b""
        for cmd, want in ((None, b"* OK"), (b"a NOOP\r\n", b"a OK"),
                          (b"b LOGOUT\r\n", b"b OK")):
            if cmd:
                s.sendall(cmd)
            end = time.monotonic() + 10
            while want not in data and time.monotonic() < end:
                got = s.recv(4096)
                if not got:
                    break
                data += got
            check(want in data, "from %s: no %r in %r" % (source, want, data[-200:]))


def t_refusal_flood(env):
    """1,000 refused reconnects a second for 20 s on a plaintext listener
    (max_connections: 1, held by one session): every one gets the BYE,
    the log stays under 100 lines, the metrics count all of them, and the
    backend sees no connection for them; imapgate's CPU is reported."""
    b = pc.named_backend(env, "b")
    mport = harness.free_port()
    g = pc.pool_gate(env, [b.port], backend=pc.QUIET_HEALTH,
                     extra="limits:\n  max_connections: 1\n  max_connections_per_ip: 0\n"
                           "metrics:\n  address: 127.0.0.1:%d\n" % mport)
    held = pc.client(g)
    pc.backend_of(held)
    base_conns = len(b.connections)
    before = ops.parse_metrics(ops.scrape(mport)[1])
    lines_before = len(g.log_text().splitlines())
    cpu0 = pc.cpu_seconds(g.proc.p.pid)
    n = byes = 0
    start = time.monotonic()
    while time.monotonic() - start < FLOOD_SECONDS:
        target = int((time.monotonic() - start) * FLOOD_RATE)
        while n < target:
            s = socket.create_connection(("127.0.0.1", g.port), timeout=5)
            data = b""
            while not data.endswith(b"\r\n"):
                got = s.recv(256)
                if not got:
                    break
                data += got
            byes += data == pc.BYE_LIMIT_TOTAL
            s.close()
            n += 1
        time.sleep(0.001)
    took = time.monotonic() - start
    cpu = pc.cpu_seconds(g.proc.p.pid) - cpu0
    time.sleep(1.2)       # the last second's summary line
    lines = g.log_text().splitlines()[lines_before:]
    after = ops.parse_metrics(ops.scrape(mport)[1])
    counted = ops.total(after, "imapgate_sessions_ended_total", reason="limit-total") - \
        ops.total(before, "imapgate_sessions_ended_total", reason="limit-total")
    say("   %d refused connections in %.1fs (%d/s), %d got the BYE; imapgate CPU %.2fs (%.0f%%)"
        % (n, took, n / took, byes, cpu, 100 * cpu / took))
    say("   log lines: %d; metrics counted %d" % (len(lines), counted))
    check(byes == n, "%d of %d refused connections got the BYE" % (byes, n))
    check(len(lines) < 100, "%d log lines for %d refusals" % (len(lines), n))
    check(counted == n, "metrics counted %d of %d refusals" % (counted, n))
    check(len(b.connections) == base_conns, "the backend saw %d connections"
          % (len(b.connections) - base_conns))
    held.logout()


def main():
    env = pc.Env(sys.argv)
    tests = [
        ("5,000 silent connections from one address", t_silent_flood),
        ("1,000 refused reconnects a second for 20 s", t_refusal_flood),
    ]
    only = os.environ.get("IMAPGATE_TEST_ONLY")
    pc.run(env, [t for t in tests if only is None or only in t[0]])


if __name__ == "__main__":
    main()
