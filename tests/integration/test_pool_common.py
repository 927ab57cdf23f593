#!/usr/bin/env python3
"""Shared pieces of the pool / failover / health / limits / timeouts / workers
tests (issue 7: test_pool_*.py, test_limits_*.py); not a test itself.

Builds on test_guard_common.GuardEnv (temp dir, imapgate instances checked
for a clean exit, backends stopped with each test) and test_tls_common
(plaintext clients, PROXY headers, log helpers).  Adds: an imapgate config
with several backend servers, fake backends that name themselves in their
greeting (so a client sees which server it got), a listening socket that
never accepts (connect timeouts), and counting of where sessions landed.
Python 3 stdlib only.
"""

import os
import re
import socket
import time

import harness
from harness import Fail, check, say
import test_guard_common as common
import test_tls_common as tc
from fake_backend import FakeBackend

SKIP = harness.SKIP
BYE_UNAVAILABLE = common.BYE_UNAVAILABLE
BYE_LIMIT_TOTAL = b"* BYE [UNAVAILABLE] Too many connections, try again later\r\n"
BYE_LIMIT_IP = b"* BYE [UNAVAILABLE] Too many connections from your address\r\n"
PROXY_LISTEN = "    proxy_protocol: true\n    trusted_proxies: [127.0.0.0/8]\n"
# Health checks far apart: tests of passive marking are not disturbed.
QUIET_HEALTH = "  health: {interval: 1h, timeout: 2s, rise: 2, fall: 2}\n"
MAX_BACKLOG_FILL = 16       # connections a never-accepting listener may absorb
GREETING_RX = re.compile(rb"^\* OK .*\bfake-(\w+) ready\r\n$")


def named_backend(env, name, script=None, port=0):
    """A FakeBackend whose greeting says `fake-NAME ready`, registered in env
    (stopped after the test).  script: extra script keys (commands, steps)."""
    s = dict(script or {})
    s.setdefault("greeting", "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN IDLE UNSELECT] "
                             "fake-%s ready\r\n" % name)
    fb = FakeBackend(s, port=port)
    fb.name = name
    fb.start()
    env.backends.append(fb)
    return fb


def dead_port():
    """A loopback port nothing listens on (connects are refused)."""
    return harness.free_port()


class Blackhole:
    """A listening socket that never accepts, its accept queue filled, so
    further connects hang (SYNs dropped): the backend_connect timeout case."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        self.port = self.sock.getsockname()[1]
        self.fill = []
        for _ in range(MAX_BACKLOG_FILL):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.settimeout(0.3)
            try:
                s.connect(("127.0.0.1", self.port))
            except (socket.timeout, OSError):
                s.close()
                return          # the queue is full: connects now hang
            self.fill.append(s)
        self.stop()
        raise Fail("listen(0) socket accepted %d connects; cannot make a "
                   "connect hang" % MAX_BACKLOG_FILL)

    def stop(self):
        """Close the filler connections and the listener."""
        for s in self.fill:
            s.close()
        self.fill = []
        self.sock.close()


def pool_config(port, servers, backend="", extra="", tls="none", listen="", certs=None):
    """imapgate YAML: one listener on 127.0.0.1:port; servers is a list of
    ports or (port, "weight: 2, max_connections: 1") pairs; backend: more
    `backend:` lines (2-space indented); extra: more top-level YAML."""
    text = ("listen:\n  - address: 127.0.0.1:%d\n    tls: %s\n%s" % (port, tls, listen))
    if certs:
        text += "tls:\n  certificates:\n"
        for c, k in certs:
            text += "    - cert: %s\n      key: %s\n" % (c, k)
    text += "backend:\n%s  servers:\n" % backend
    for s in servers:
        p, opts = (s, "") if isinstance(s, int) else s
        text += "    - {address: 127.0.0.1:%d%s}\n" % (p, ", " + opts if opts else "")
    text += "log:\n  level: info\n" + extra
    return text


def pool_gate(env, servers, backend="", extra="", tls="none", listen="", wrap=None,
              probe=True):
    """Start an imapgate with pool_config(...); registered in env (stopped and
    checked for a clean exit after the test).  wrap: argv prefix (e.g.
    prlimit).  The start-up probe's session is waited for, then the log is
    marked, so counts only see the test's own sessions."""
    env.nth += 1
    g = harness.Imapgate(env.binary, env.tmp, env.cert, env.key, 1,
                         name="imapgate%d" % env.nth)
    with open(g.conf, "w") as f:
        f.write(pool_config(g.port, servers, backend, extra, tls, listen,
                            [(env.cert, env.key)] if tls != "none" else None))
    g.check_config()
    g.proc = harness.Proc("imapgate", list(wrap or []) + [g.binary, "-c", g.conf], g.logfile)
    env.gates.append(g)
    harness.wait_port(g.port, g.proc)
    if probe:
        g.wait_log(r"msg=(session-end|proxy-)", timeout=3.0)
    g.mark = len(g.log_text())
    return g


def config_rejected(env, text):
    """True if `imapgate -t` rejects the config text (with a message)."""
    import subprocess
    env.nth += 1
    path = os.path.join(env.tmp, "check%d.yaml" % env.nth)
    with open(path, "w") as f:
        f.write(text)
    r = subprocess.run([env.binary, "-t", "-c", path], capture_output=True,
                       timeout=harness.START_TIMEOUT)
    return r.returncode != 0, (r.stdout + r.stderr).decode("utf-8", "replace")


def client(g, header=b"", timeout=10.0):
    """A plaintext client through g (optionally after a PROXY header)."""
    return tc.plain_client(g.port, timeout=timeout, header=header)


def backend_of(c):
    """The fake backend name in a client's greeting (fake-NAME), or Fail."""
    m = GREETING_RX.match(c.greeting)
    check(m is not None, "not a named fake backend's greeting: %r" % c.greeting)
    return m.group(1).decode()


def one_session(g, header=b""):
    """Connect, read the greeting, LOGOUT; returns the backend's name."""
    c = client(g, header)
    name = backend_of(c)
    c.logout()
    return name


def session_ends(g, count, timeout=5.0):
    """The msg=session-end lines after g.mark as dicts, once count are there."""
    end = time.monotonic() + timeout
    while True:
        lines = [x for x in tc.log_since(g).splitlines() if "msg=session-end" in x]
        if len(lines) >= count or time.monotonic() >= end:
            break
        time.sleep(0.05)
    check(len(lines) >= count, "%d session-end lines, want %d:\n%s"
          % (len(lines), count, tc.log_since(g)[-2000:]))
    return [dict(re.findall(r'(\w+)=("[^"]*"|\S+)', x)) for x in lines]


def refusals(g, count, timeout=5.0):
    """The msg=refused lines (a limit said no before any session) after g.mark as dicts."""
    end = time.monotonic() + timeout
    while True:
        lines = [x for x in tc.log_since(g).splitlines() if "msg=refused" in x]
        if len(lines) >= count or time.monotonic() >= end:
            break
        time.sleep(0.05)
    check(len(lines) >= count, "%d refused lines, want %d:\n%s"
          % (len(lines), count, tc.log_since(g)[-2000:]))
    return [dict(re.findall(r'(\w+)=("[^"]*"|\S+)', x)) for x in lines]


def count_lines(g, pattern):
    """How many log lines after g.mark match pattern."""
    rx = re.compile(pattern)
    return sum(1 for x in tc.log_since(g).splitlines() if rx.search(x))


def expect_bye(c, bye, what):
    """The client's greeting is exactly bye and the connection then closes."""
    check(c.greeting == bye, "%s: greeting %r, want %r" % (what, c.greeting, bye))
    data, how = common.read_to_close(c, timeout=5.0)
    check(data == b"", "%s: bytes after the BYE: %r" % (what, data))
    check(how in ("eof", "reset"), "%s: closed by %s" % (what, how))


def cpu_seconds(pid):
    """utime + stime of pid (all threads) in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


Env = common.GuardEnv
run = common.run
wait_log = tc.wait_log
log_since = tc.log_since
proxy_v1 = tc.proxy_v1
say = say
