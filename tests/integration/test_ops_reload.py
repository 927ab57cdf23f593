#!/usr/bin/env python3
"""SIGHUP reload and sd_notify (issue 8): new certificates for new
connections, a session in IDLE across the reload, a broken file changes
nothing, listeners added and removed, log level and format changed while
sessions run on both workers, READY/RELOADING/STOPPING.

Backend: tests/backends/fake_backend.py (built-in answers).  Python 3
stdlib only.  Run: test_ops_reload.py PATH-TO-IMAPGATE
"""

import json
import os
import re
import shutil
import signal
import socket
import sys
import threading
import time

import harness
import test_guard_common as common
import test_ops_common as ops
from test_ops_common import Fail, check
import test_tls_common as tlsc
from fake_backend import FakeBackend  # noqa: E402  (path set by common)

LIFETIME = 60.0         # seconds a scripted backend lives at most
NOTIFY_TIMEOUT = 5.0    # seconds to wait for one sd_notify datagram
BUSY_SESSIONS = 4       # sessions sending NOOPs across the log reloads


def fake(env):
    """A running scripted backend with built-in answers, stopped with the test."""
    fb = FakeBackend(None, lifetime=LIFETIME)
    fb.start()
    env.backends.append(fb)
    return fb


def new_cert(env, name):
    """A fresh self-signed certificate for localhost: (cert, key)."""
    return tlsc.make_leaf(env.tmp, name, None, "localhost", ["DNS:localhost", "IP:127.0.0.1"])


def generation(mport):
    """imapgate_config_generation from /metrics."""
    return ops.value(ops.parse_metrics(ops.scrape(mport)[1]), "imapgate_config_generation")


def test_new_certificate(env):
    """New connections get the new certificate; a session in IDLE across the
    reload keeps working; then the cert file rewritten in place is read too."""
    fb = fake(env)
    mport = harness.free_port()
    g = ops.gate(env, fb.port, extra="metrics:\n  address: 127.0.0.1:%d\n" % mport)
    check(ops.peer_cert(g.port) == tlsc.cert_der(env.cert), "not the first certificate")
    idle = ops.client(env, g)
    idle.login("demo", "demo")
    idle.select()
    tag = ops.start_idle(idle)

    cert2, key2 = new_cert(env, "second")
    g.write(g.text(cert=cert2, key=key2))
    ops.sighup(g, r"msg=reloaded generation=2")
    check(generation(mport) == 2, "imapgate_config_generation != 2")
    check(ops.peer_cert(g.port) == tlsc.cert_der(cert2), "new connection did not get the new cert")
    ops.end_idle(idle, tag)
    idle.cmd("NOOP")
    idle.fetch_body(1)

    # Same path, new content (certbot renewing in place).
    cert3, key3 = new_cert(env, "third")
    shutil.copy(cert3, cert2 + ".tmp")
    shutil.copy(key3, key2 + ".tmp")
    os.replace(key2 + ".tmp", key2)
    os.replace(cert2 + ".tmp", cert2)
    ops.sighup(g, r"msg=reloaded generation=3")
    check(ops.peer_cert(g.port) == tlsc.cert_der(cert3), "rewritten cert file not served")
    idle.cmd("NOOP")
    idle.logout()
    # A new session works end to end after two reloads.
    c = tlsc.tls_client(g.port, ops.ssl.create_default_context(cafile=cert2))
    c.login("demo", "demo")
    c.logout()


def test_broken_config(env):
    """A broken file (syntax, then a key that does not match its cert) on
    SIGHUP: reload-failed with the position, old certificate still served."""
    fb = fake(env)
    mport = harness.free_port()
    g = ops.gate(env, fb.port, extra="metrics:\n  address: 127.0.0.1:%d\n" % mport)
    good = g.text()
    cert2, key2 = new_cert(env, "unused")
    # An unknown key: a parse error with its position.
    g.write(g.text(cert=cert2, key=key2) + "no_such_key: 1\n")
    line = ops.sighup(g, r"msg=reload(-failed|ed)")
    check("reload-failed" in line, "broken file was accepted: %r" % line)
    rx = r'error="%s:(\d+):(\d+): ' % re.escape(g.conf)
    m = re.search(rx, line)
    check(m is not None, "reload-failed without FILE:LINE:COL: %r" % line)
    nlines = (g.text() + "no_such_key: 1\n").count("\n")
    check(int(m.group(1)) == nlines, "error at line %s, want %d" % (m.group(1), nlines))
    check(ops.peer_cert(g.port) == tlsc.cert_der(env.cert), "certificate changed")
    check(generation(mport) == 1, "generation changed after a failed reload")
    # A key that does not belong to the certificate: found while building.
    _, other_key = new_cert(env, "otherkey")
    g.write(g.text(cert=cert2, key=other_key))
    line = ops.sighup(g, r"msg=reload(-failed|ed)")
    check("reload-failed" in line, "mismatched key was accepted: %r" % line)
    check(ops.peer_cert(g.port) == tlsc.cert_der(env.cert), "certificate changed")
    check(generation(mport) == 1, "generation changed after a failed reload")
    c = ops.client(env, g)
    c.login("demo", "demo")
    c.logout()
    # The good file again: accepted as generation 2.
    g.write(good)
    ops.sighup(g, r"msg=reloaded generation=2")


def refused(port):
    """True if 127.0.0.1:port refuses connections."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return False
    except ConnectionRefusedError:
        return True


def test_listeners(env):
    """A reload that adds a listener starts accepting on it; removing it
    stops it; a session on the removed listener keeps working."""
    fb = fake(env)
    g = ops.gate(env, fb.port)
    p2 = harness.free_port()
    check(refused(p2), "port %d busy before the test" % p2)
    g.write(g.text(listen="  - address: 127.0.0.1:%d\n    tls: implicit\n" % p2))
    ops.sighup(g, r"msg=reloaded generation=2")
    # The workers open the new socket just after the main thread logs
    # "reloaded": give them a moment.
    end = time.monotonic() + 2
    while refused(p2) and time.monotonic() < end:
        time.sleep(0.02)
    c = tlsc.tls_client(p2, env.tls)
    check(c.greeting.startswith(b"* OK"), "no greeting on the new listener: %r" % c.greeting)
    c.login("demo", "demo")
    g.write(g.text())
    ops.sighup(g, r"msg=reloaded generation=3")
    end = time.monotonic() + 3
    while not refused(p2) and time.monotonic() < end:
        time.sleep(0.05)
    check(refused(p2), "removed listener still accepts")
    c.cmd("NOOP")
    c.logout()
    c = ops.client(env, g)
    c.login("demo", "demo")
    c.logout()
    # A new listener on an address that cannot be bound: nothing changes.
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen(1)
    busy = blocker.getsockname()[1]
    try:
        g.write(g.text(listen="  - address: 127.0.0.1:%d\n    tls: implicit\n" % busy))
        line = ops.sighup(g, r"msg=reload(-failed|ed)")
        check("reload-failed" in line and str(busy) in line,
              "busy listen address accepted: %r" % line)
    finally:
        blocker.close()
    c = ops.client(env, g)
    c.login("demo", "demo")
    c.logout()


def json_lines(text):
    """The log lines in text that are whole JSON objects."""
    for x in text.splitlines():
        if x.startswith("{"):
            try:
                o = json.loads(x)
            except ValueError:  # a line still being written
                continue
            if isinstance(o, dict):
                yield o


def test_log_settings(env):
    """A reload switches log level and format (info/text -> debug/json ->
    info/text) while sessions on both workers keep sending NOOPs: the
    workers' lines follow each change.  The main thread writes the log
    settings while the workers read them, which is what the ThreadSanitizer
    run (scripts/test, build-tsan) checks for data races."""
    fb = fake(env)
    g = ops.gate(env, fb.port, extra="workers: 2\n")
    stop = threading.Event()
    errors = []

    def busy():
        try:
            c = ops.client(env, g)
            c.login("demo", "demo")
            while not stop.is_set():
                c.cmd("NOOP")
                time.sleep(0.002)
            c.logout()
        except Exception as e:  # reported below
            errors.append("%s: %s" % (type(e).__name__, e))

    threads = [threading.Thread(target=busy, daemon=True) for _ in range(BUSY_SESSIONS)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.2)
        g.write(g.text(log="  level: debug\n  format: json\n"))
        ops.sighup(g, r'"msg":"reloaded","generation":"2"')
        mark = len(g.log_text())
        end = time.monotonic() + 5
        traced = False
        while not traced and time.monotonic() < end:
            time.sleep(0.05)
            traced = any(o.get("level") == "debug" and "NOOP" in "".join(map(str, o.values()))
                         for o in json_lines(g.log_text()[mark:]))
        check(traced, "no JSON debug trace of a NOOP after the reload:\n%s"
              % g.log_text()[mark:][-1500:])
        g.write(g.text())
        ops.sighup(g, r"msg=reloaded generation=3")
    finally:
        stop.set()
        for t in threads:
            t.join(10)
    check(not errors, "busy sessions failed: %s" % errors[:3])
    # The busy sessions' last lines are out; a new session logs in text at info.
    common.session_end(g, count=BUSY_SESSIONS)
    mark = len(g.log_text())
    c = ops.client(env, g)
    c.login("demo", "demo")
    c.cmd("NOOP")
    c.logout()
    end = time.monotonic() + 5
    while "msg=session-end" not in g.log_text()[mark:] and time.monotonic() < end:
        time.sleep(0.05)
    after = [x for x in g.log_text()[mark:].splitlines() if x]
    check(any("msg=session-end" in x for x in after), "no text session-end after the reload back")
    bad = [x for x in after if x.startswith("{") or "level=debug" in x]
    check(not bad, "JSON or debug lines after the reload back to info/text: %r" % bad[:3])


def recv_notify(sock, want, timeout=NOTIFY_TIMEOUT):
    """Datagrams until one contains the line want; returns all received."""
    got = []
    end = time.monotonic() + timeout
    while True:
        left = end - time.monotonic()
        if left <= 0:
            raise Fail("no %s from sd_notify; got %r" % (want, got))
        sock.settimeout(left)
        try:
            msg = sock.recv(4096).decode()
        except socket.timeout:
            continue
        got.append(msg)
        if want in msg.split("\n"):
            return got


def test_sd_notify(env):
    """NOTIFY_SOCKET: READY=1 at start, RELOADING=1 then READY=1 on SIGHUP,
    STOPPING=1 on SIGTERM."""
    fb = fake(env)
    path = os.path.join(env.tmp, "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    try:
        g = ops.gate(env, fb.port, penv={"NOTIFY_SOCKET": path}, start=False)
        g.start()
        env.gates.append(g)
        recv_notify(sock, "READY=1")
        os.kill(g.proc.pid, signal.SIGHUP)
        got = recv_notify(sock, "RELOADING=1")
        check(any(x.startswith("MONOTONIC_USEC=") for m in got for x in m.split("\n")),
              "RELOADING=1 without MONOTONIC_USEC: %r" % got)
        recv_notify(sock, "READY=1")
        os.kill(g.proc.pid, signal.SIGTERM)
        recv_notify(sock, "STOPPING=1")
        rc = ops.wait_exit(g)
        ops.forget(env, g)
        check(rc == 0, "exit status %s after SIGTERM" % rc)
    finally:
        sock.close()


def main():
    """Run every check."""
    env = ops.Env(sys.argv)
    ops.run(env, [
        ("SIGHUP: new certificate, IDLE across the reload", test_new_certificate),
        ("SIGHUP: broken config changes nothing", test_broken_config),
        ("SIGHUP: listeners added and removed", test_listeners),
        ("SIGHUP: log level and format while sessions run", test_log_settings),
        ("sd_notify READY/RELOADING/STOPPING", test_sd_notify),
    ])


if __name__ == "__main__":
    main()
