#!/usr/bin/env python3
"""SIGTERM drain, privilege drop and HAProxy in front of two instances
(issue 8).

- a client in IDLE, and one between commands, get
  `* BYE [UNAVAILABLE] Server shutting down`; a client in the middle of an
  APPEND literal finishes it and gets its tagged OK before the BYE; new
  connections are refused while the drain runs; imapgate exits 0;
- timeouts.drain bounds the wait for a session stuck mid-command; a second
  SIGTERM stops at once;
- `user: nobody` / `group: nogroup`: the process runs as them after start,
  sessions work, a reload reads the key file as that user;
- HAProxy (send-proxy-v2, health checks) in front of two imapgate instances
  in front of Dovecot: sessions go through both; SIGTERM on one moves new
  sessions to the other without an error.

Python 3 stdlib only.  Run: test_ops_drain.py PATH-TO-IMAPGATE
"""

import os
import pwd
import grp
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import harness
import test_ops_common as ops
from test_ops_common import Fail, check, say
import test_guard_common as common
import test_tls_common as tlsc
from fake_backend import FakeBackend  # noqa: E402  (path set by common)

LIFETIME = 60.0         # seconds a scripted backend lives at most
BYE = b"* BYE [UNAVAILABLE] Server shutting down\r\n"
HAPROXY_SESSIONS = 4    # sessions opened through HAProxy per phase


def fake(env, script=None):
    """A running scripted backend, stopped with the test."""
    fb = FakeBackend(script, lifetime=LIFETIME)
    fb.start()
    env.backends.append(fb)
    return fb


def logged_in(env, g, select=True):
    """A TLS client through g, logged in (INBOX selected)."""
    c = ops.client(env, g)
    c.login("demo", "demo")
    if select:
        c.select()
    return c


def accepts(port, timeout=1.0):
    """True if a TCP connect to 127.0.0.1:port succeeds and the TLS server
    speaks within timeout (a socket left listening but never accepted on
    completes the TCP handshake but never answers)."""
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    except OSError:
        return False
    try:
        s.settimeout(timeout)
        # A TLS ClientHello would be answered; an unread backlog stays silent.
        s.sendall(b"\x16\x03\x01\x00\x05\x01\x00\x00\x01\x00")
        return s.recv(1) != b""
    except (socket.timeout, OSError):
        return False
    finally:
        s.close()


def test_drain(env):
    """IDLE and quiet clients get the BYE at once; the APPEND in a literal
    finishes first; new connections are not served; exit 0."""
    fb = fake(env)
    g = ops.gate(env, fb.port, drain="10s")
    idle = logged_in(env, g)
    itag = ops.start_idle(idle)
    quiet = logged_in(env, g)
    app = logged_in(env, g)
    msg = harness.make_message("drain append", size=4000)
    atag = app.next_tag()
    app.send(('%s APPEND INBOX {%d}\r\n' % (atag, len(msg))).encode())
    check(app.readline().startswith(b"+"), "APPEND: no continuation")
    half = len(msg) // 2
    app.send(msg[:half])
    time.sleep(0.2)
    t0 = time.monotonic()
    os.kill(g.proc.pid, signal.SIGTERM)
    data, how = common.read_to_close(idle, timeout=5)
    check(data == BYE, "IDLE client got %r (%s)" % (data, how))
    data, how = common.read_to_close(quiet, timeout=5)
    check(data == BYE, "quiet client got %r (%s)" % (data, how))
    check(time.monotonic() - t0 < 3, "BYE to idle clients took %.1fs" % (time.monotonic() - t0))
    # The APPEND client is inside its literal: nothing for it yet.
    app.sock.settimeout(0.5)
    try:
        early = app.sock.recv(100)
    except (socket.timeout, TimeoutError):
        early = b""
    check(early == b"", "APPEND client got %r inside its literal" % early)
    check(g.proc.alive(), "imapgate exited with an APPEND half sent")
    check(not accepts(g.port), "a new connection is served while draining")
    app.send(msg[half:] + b"\r\n")
    app.sock.settimeout(10)
    data, how = common.read_to_close(app, timeout=5)
    check(re.match(rb"^%s OK [^\r\n]*\r\n%s$" % (atag.encode(), re.escape(BYE)), data)
          is not None, "APPEND client got %r (%s)" % (data, how))
    check(itag, "no IDLE tag")
    rc = ops.wait_exit(g, timeout=5)
    ops.forget(env, g)
    check(rc == 0, "exit status %s" % rc)
    check(g.wait_log(r"msg=stopped", after=g.mark) is not None, "no msg=stopped")


def test_drain_timeout(env):
    """timeouts.drain 1s: a session stuck on a command is closed when the
    drain ends; a second SIGTERM stops a 30s drain at once."""
    fb = fake(env, {"commands": {"NOOP": [{"hang": True}]}})
    g = ops.gate(env, fb.port, drain="1s")
    c = logged_in(env, g, select=False)
    c.send(b"X1 NOOP\r\n")
    time.sleep(0.2)
    t0 = time.monotonic()
    os.kill(g.proc.pid, signal.SIGTERM)
    data, how = common.read_to_close(c, timeout=6)
    took = time.monotonic() - t0
    check(0.8 <= took <= 4.0, "stuck session closed after %.2fs, want about 1s" % took)
    check(b"X1 OK" not in data, "fabricated OK: %r" % data)
    rc = ops.wait_exit(g, timeout=5)
    ops.forget(env, g)
    check(rc == 0, "exit status %s after the drain timeout" % rc)

    g = ops.gate(env, fb.port, drain="30s")
    c = logged_in(env, g, select=False)
    c.send(b"X1 NOOP\r\n")
    time.sleep(0.2)
    t0 = time.monotonic()
    os.kill(g.proc.pid, signal.SIGTERM)
    time.sleep(0.3)
    check(g.proc.alive(), "exited before the drain ended")
    os.kill(g.proc.pid, signal.SIGTERM)
    rc = ops.wait_exit(g, timeout=5)
    ops.forget(env, g)
    check(time.monotonic() - t0 < 3, "second SIGTERM took %.1fs" % (time.monotonic() - t0))
    check(rc == 0, "exit status %s after a second SIGTERM" % rc)
    c.close()


def proc_ids(pid):
    """(uids, gids, groups) from /proc/PID/status."""
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            out[k] = v.split()
    return out["Uid"], out["Gid"], out.get("Groups", [])


def test_privileges(env):
    """user: nobody, group: nogroup: ids after start, sessions work, a reload
    reads the key as nobody (fails on a 0600 root key, works once readable)."""
    if os.geteuid() != 0:
        say("   SKIP: needs root")
        return "skip"
    try:
        uid = pwd.getpwnam("nobody").pw_uid
        gid = grp.getgrnam("nogroup").gr_gid
    except KeyError:
        say("   SKIP: no nobody/nogroup")
        return "skip"
    fb = fake(env)
    # A root-only key of our own (the env's is shared with other tests).
    cert, key = tlsc.make_leaf(env.tmp, "rootonly", None, "localhost",
                               ["DNS:localhost", "IP:127.0.0.1"])
    os.chmod(key, 0o600)
    ctx = ops.ssl.create_default_context(cafile=cert)
    g = ops.gate(env, fb.port, cert=cert, key=key, extra="user: nobody\ngroup: nogroup\n")
    uids, gids, groups = proc_ids(g.proc.pid)
    check(uids == [str(uid)] * 4, "Uid: %s" % uids)
    check(gids == [str(gid)] * 4, "Gid: %s" % gids)
    check(groups in ([], [str(gid)]), "Groups: %s" % groups)
    c = tlsc.tls_client(g.port, ctx)
    c.login("demo", "demo")
    c.select()
    c.logout()
    line = ops.sighup(g, r"msg=reload(-failed|ed)")
    check("reload-failed" in line, "reload read a 0600 root key as nobody: %r" % line)
    os.chmod(key, 0o640)
    os.chown(key, 0, gid)
    line = ops.sighup(g, r"msg=reload(-failed|ed)")
    check("msg=reloaded" in line, "reload with a group-readable key: %r" % line)
    c = tlsc.tls_client(g.port, ctx)
    c.login("demo", "demo")
    c.logout()


def test_privileges_kept(env):
    """Started as nobody:nogroup (User= in the unit) with user: nobody and
    group: nogroup: nothing to drop (privileges-kept), sessions work; with
    another user in the file the start fails (no identity change possible)."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        say("   SKIP: needs root and setpriv")
        return "skip"
    try:
        gid = grp.getgrnam("nogroup").gr_gid
        pwd.getpwnam("nobody")
    except KeyError:
        say("   SKIP: no nobody/nogroup")
        return "skip"
    fb = fake(env)
    cert, key = tlsc.make_leaf(env.tmp, "nobodykey", None, "localhost",
                               ["DNS:localhost", "IP:127.0.0.1"])
    os.chmod(key, 0o640)
    os.chown(key, 0, gid)
    wrapper = os.path.join(env.tmp, "as-nobody")
    with open(wrapper, "w") as f:
        f.write('#!/bin/sh\nexec setpriv --reuid=nobody --regid=nogroup --clear-groups %s "$@"\n'
                % env.binary)
    os.chmod(wrapper, 0o755)
    ctx = ops.ssl.create_default_context(cafile=cert)
    g = ops.gate(env, fb.port, cert=cert, key=key, start=False,
                 extra="user: nobody\ngroup: nogroup\n")
    os.chmod(g.conf, 0o644)
    g.binary = wrapper
    g.start()
    env.gates.append(g)
    line = g.wait_log(r"msg=privileges-(kept|dropped)|msg=\"cannot", timeout=5.0)
    check(line is not None and "privileges-kept" in line, "as nobody: %r\n%s" % (line, g.log_text()[-1500:]))
    c = tlsc.tls_client(g.port, ctx)
    c.login("demo", "demo")
    c.logout()
    line = ops.sighup(g, r"msg=reload(-failed|ed)")
    check("msg=reloaded" in line, "reload as nobody: %r" % line)
    g2 = ops.gate(env, fb.port, cert=cert, key=key, start=False, extra="user: root\n")
    os.chmod(g2.conf, 0o644)
    r = subprocess.run([wrapper, "-c", g2.conf], capture_output=True, text=True, timeout=10)
    check(r.returncode != 0 and "cannot drop privileges" in r.stderr,
          "as nobody with user: root: exit %d %r" % (r.returncode, r.stderr[-500:]))


def haproxy_config(port, gates, base):
    """HAProxy in TCP mode, PROXY v2 to both gates, fast health checks."""
    servers = "".join("  server g%d 127.0.0.1:%d send-proxy-v2 check check-send-proxy check-ssl verify none "
                      "inter 200ms fall 1 rise 2\n" % (i + 1, g.port)
                      for i, g in enumerate(gates))
    return ("global\n  maxconn 200\n  pidfile %s/haproxy.pid\n"
            "defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 30s\n"
            "  timeout server 30s\n  timeout check 1s\n  retries 3\n  option redispatch\n"
            "frontend imap\n  bind 127.0.0.1:%d\n  default_backend gates\n"
            "backend gates\n  balance roundrobin\n%s" % (base, port, servers))


def test_haproxy(env):
    """Sessions reach Dovecot through both instances; SIGTERM on one moves
    new sessions to the other while its own session drains."""
    why = tlsc.need("haproxy") or tlsc.need("dovecot")
    if why:
        say("   SKIP: %s" % why)
        return "skip"
    d = tlsc.start_dovecot(env)
    pp = "    proxy_protocol: true\n    trusted_proxies: [127.0.0.0/8]\n"
    m1 = harness.free_port()
    g1 = ops.gate(env, d.port, listen=pp, drain="20s",
                  extra="metrics:\n  address: 127.0.0.1:%d\n" % m1)
    g1.mport = m1
    g2 = ops.gate(env, d.port, listen=pp, drain="20s")
    hport = harness.free_port()
    cfg = os.path.join(env.tmp, "haproxy.cfg")
    with open(cfg, "w") as f:
        f.write(haproxy_config(hport, [g1, g2], env.tmp))
    r = subprocess.run(["haproxy", "-c", "-f", cfg], capture_output=True, timeout=10)
    check(r.returncode == 0, "haproxy -c: %s" % r.stdout.decode() + r.stderr.decode())
    hp = harness.Proc("haproxy", ["haproxy", "-db", "-f", cfg],
                      os.path.join(env.tmp, "haproxy.log"))
    env.backends.append(hp)
    harness.wait_port(hport, hp)
    time.sleep(0.6)         # both servers seen up by the checks
    marks = [len(g.log_text()) for g in (g1, g2)]
    for _ in range(HAPROXY_SESSIONS):
        c = tlsc.tls_client(hport, env.tls)
        c.login("demo", "demo")
        check(c.select() == 2, "INBOX through HAProxy")
        c.logout()
    for g, m in zip((g1, g2), marks):
        n = len([x for x in g.log_text()[m:].splitlines()
                 if "msg=session-end" in x and "user=\"demo\"" in x])
        check(n >= 1, "no session through %s" % g.conf)
    # Open sessions one by one until one lands on g1; that one stays
    # inside an APPEND literal, so g1 keeps draining while new sessions come.
    others, on_g1 = [], None
    for _ in range(4):
        c = tlsc.tls_client(hport, env.tls)
        c.login("demo", "demo")
        s1 = ops.parse_metrics(ops.scrape(g1.mport)[1])
        if ops.total(s1, "imapgate_sessions_open") >= 1:
            on_g1 = c
            break
        others.append(c)
    check(on_g1 is not None, "no session landed on g1")
    msg = harness.make_message("haproxy drain", size=2000)
    atag = on_g1.next_tag()
    on_g1.send(('%s APPEND INBOX {%d}\r\n' % (atag, len(msg))).encode())
    check(on_g1.readline().startswith(b"+"), "APPEND: no continuation")
    on_g1.send(msg[:1000])
    os.kill(g1.proc.pid, signal.SIGTERM)
    t0 = time.monotonic()
    errors = []
    for i in range(HAPROXY_SESSIONS):
        try:
            c = tlsc.tls_client(hport, env.tls, timeout=4)
            c.login("demo", "demo")
            c.select()
            c.logout()
        except (Fail, OSError) as e:
            errors.append("session %d: %s" % (i, e))
    check(not errors, "sessions through HAProxy failed after SIGTERM on one "
          "instance: %s" % "; ".join(errors))
    on_g1.send(msg[1000:] + b"\r\n")
    data, how = common.read_to_close(on_g1, timeout=5)
    check(re.match(rb"^%s OK [^\r\n]*\r\n%s$" % (atag.encode(), re.escape(BYE)), data)
          is not None, "APPEND on g1 got %r (%s)" % (data, how))
    for c in others:
        c.logout()
    rc = ops.wait_exit(g1, timeout=5)
    ops.forget(env, g1)
    check(rc == 0, "exit status %s" % rc)
    say("   %d sessions after SIGTERM in %.1fs" % (HAPROXY_SESSIONS, time.monotonic() - t0))


def main():
    """Run every check."""
    env = ops.Env(sys.argv)
    ops.run(env, [
        ("SIGTERM drain: IDLE, quiet, APPEND mid-literal", test_drain),
        ("SIGTERM drain: timeouts.drain and a second SIGTERM", test_drain_timeout),
        ("user/group: privileges dropped", test_privileges),
        ("user/group: already that user (User= in the unit)", test_privileges_kept),
        ("HAProxy in front of two instances", test_haproxy),
    ])


if __name__ == "__main__":
    main()
