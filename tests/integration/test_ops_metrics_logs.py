#!/usr/bin/env python3
"""Metrics and logs (issue 8): /metrics after a scripted session, JSON log
lines, and a debug protocol trace without passwords or SASL payloads.

The backend is tests/backends/fake_backend.py, scripted to put a non-standard
code [X-FOO] in its answers to NOOP (rewritten by imapgate).  Python 3
stdlib only.  Run: test_ops_metrics_logs.py PATH-TO-IMAPGATE
"""

import base64
import json
import os
import re
import socket
import sys
import time
import urllib.error
import urllib.request

import test_ops_common as ops
from test_ops_common import Fail, check, say
import test_guard_common as common
from fake_backend import FakeBackend, MESSAGE  # noqa: E402  (path set by common)

LIFETIME = 60.0         # seconds a scripted backend lives at most
PASSWORD = "s3cret-PW"
SCRIPT = {"commands": {"NOOP": [{"send": "* NO [X-FOO] untagged note\r\n"},
                                {"send": "{tag} NO [X-FOO] NOOP failed\r\n"}]}}


def fake(env, script=None):
    """A running scripted backend, stopped with the test."""
    fb = FakeBackend(script, lifetime=LIFETIME)
    fb.start()
    env.backends.append(fb)
    return fb


def wait_metric(port, name, want, timeout=5.0, **labels):
    """Scrape until sample name{labels} reaches want; returns the samples."""
    end = time.monotonic() + timeout
    while True:
        s = ops.parse_metrics(ops.scrape(port)[1])
        if ops.total(s, name, **labels) >= want or time.monotonic() >= end:
            return s
        time.sleep(0.05)


def test_metrics(env):
    """The values move as a scripted session says; the exposition parses."""
    fb = fake(env, SCRIPT)
    mport = ops.harness.free_port()
    g = ops.gate(env, fb.port, extra="metrics:\n  address: 127.0.0.1:%d\n" % mport)
    ctype, text = ops.scrape(mport)
    check(ctype.startswith("text/plain"), "Content-Type %r" % ctype)
    before = ops.parse_metrics(text)
    for name in ("imapgate_build_info", "imapgate_config_generation", "imapgate_workers",
                 "imapgate_connections", "imapgate_sessions_started_total",
                 "imapgate_backend_up", "imapgate_tls_handshakes_total"):
        check(any(n == name for n, _ in before), "no %s in /metrics" % name)
    check(ops.value(before, "imapgate_config_generation") == 1, "generation != 1 at start")
    server = "127.0.0.1:%d" % fb.port
    try:
        urllib.request.urlopen("http://127.0.0.1:%d/other" % mport, timeout=5)
        raise Fail("GET /other did not fail")
    except urllib.error.HTTPError as e:
        check(e.code == 404, "GET /other -> %s" % e.code)

    c = ops.client(env, g)
    c.login("demo", PASSWORD)
    c.select()
    body = c.fetch_body(1)
    check(body == MESSAGE, "FETCH body differs")
    tagged, items = c.cmd("NOOP", ok=False)
    check(b"X-FOO" not in tagged and all(b"X-FOO" not in t for t, _ in items),
          "[X-FOO] reached the client: %r %r" % (tagged, items))
    tagged, _ = c.cmd("COMPRESS DEFLATE", ok=False)
    check(re.match(rb"T\d+ NO ", tagged) is not None, "COMPRESS -> %r" % tagged)
    during = ops.parse_metrics(ops.scrape(mport)[1])
    lname = "127.0.0.1:%d" % g.port
    check(ops.value(during, "imapgate_sessions_open", listener=lname, state="selected") == 1,
          "sessions_open{selected} != 1 during the session")
    check(ops.value(during, "imapgate_backend_sessions", server=server) == 1,
          "backend_sessions != 1 during the session")
    c.logout()
    after = wait_metric(mport, "imapgate_sessions_ended_total",
                        ops.total(before, "imapgate_sessions_ended_total") + 1)
    # The counters are separate relaxed atomics, and the worker bumps
    # ended_total a moment before it takes the session off the open gauge:
    # a scrape can fall in between (often under ThreadSanitizer). Wait for
    # the gauge too; the checks below then see one settled state.
    end = time.monotonic() + 5.0
    while ops.total(after, "imapgate_sessions_open") != 0 and time.monotonic() < end:
        time.sleep(0.05)
        after = ops.parse_metrics(ops.scrape(mport)[1])

    def delta(name, **labels):
        return ops.total(after, name, **labels) - ops.total(before, name, **labels)

    check(delta("imapgate_sessions_started_total") == 1,
          "sessions_started moved by %s" % delta("imapgate_sessions_started_total"))
    check(delta("imapgate_sessions_ended_total") == 1,
          "sessions_ended moved by %s" % delta("imapgate_sessions_ended_total"))
    check(ops.total(after, "imapgate_sessions_open") == 0, "sessions still open after LOGOUT")
    check(delta("imapgate_tls_handshakes_total") == 1, "TLS handshakes moved by %s"
          % delta("imapgate_tls_handshakes_total"))
    check(delta("imapgate_client_sent_bytes_total") >= len(MESSAGE),
          "client_sent_bytes moved by %s" % delta("imapgate_client_sent_bytes_total"))
    check(delta("imapgate_backend_received_bytes_total") >= len(MESSAGE),
          "backend_received_bytes moved by %s" % delta("imapgate_backend_received_bytes_total"))
    check(delta("imapgate_client_received_bytes_total") >= 40,
          "client_received_bytes moved by %s" % delta("imapgate_client_received_bytes_total"))
    check(delta("imapgate_backend_sent_bytes_total") >= 40,
          "backend_sent_bytes moved by %s" % delta("imapgate_backend_sent_bytes_total"))
    check(delta("imapgate_guard_events_total", kind="compress_refused") == 1,
          "guard_events{compress_refused} moved by %s"
          % delta("imapgate_guard_events_total", kind="compress_refused"))
    check(delta("imapgate_responses_rewritten_total", code="X-FOO") == 2,
          "responses_rewritten{X-FOO} moved by %s"
          % delta("imapgate_responses_rewritten_total", code="X-FOO"))
    check(delta("imapgate_backend_connects_total", server=server) == 1,
          "backend_connects moved by %s" % delta("imapgate_backend_connects_total", server=server))
    check(ops.value(after, "imapgate_backend_up", server=server) == 1, "backend_up != 1")
    # LOGIN, SELECT, FETCH, NOOP, LOGOUT went to the backend (COMPRESS did not).
    n = delta("imapgate_command_duration_seconds_count")
    check(n >= 5, "command_duration count moved by %s, want >= 5" % n)
    inf = sum(v for (name, ls), v in after.items()
              if name == "imapgate_command_duration_seconds_bucket" and ("le", "+Inf") in ls)
    check(inf == ops.total(after, "imapgate_command_duration_seconds_count"),
          "+Inf buckets != count")
    for cls in ("login", "select", "selected"):
        check(delta("imapgate_command_duration_seconds_count", **{"class": cls}) >= 1,
              "no command_duration sample for class %s" % cls)
    f = common.session_end(g)
    check(f.get("rewrites") == "2", "session-end rewrites=%r, want 2" % f.get("rewrites"))


def test_json_log(env):
    """log.format json: every line imapgate writes is a JSON object with
    ts/level/msg, including debug trace lines with quotes and backslashes."""
    fb = fake(env, SCRIPT)
    g = ops.gate(env, fb.port, log="  level: debug\n  format: json\n")
    c = ops.client(env, g)
    c.login("demo", PASSWORD)
    c.cmd('LIST "" "a\\"b\\\\c*"')
    c.cmd("NOOP", ok=False)
    c.logout()
    end = time.monotonic() + 5
    while time.monotonic() < end and '"session-end"' not in g.log_text()[g.mark:]:
        time.sleep(0.05)
    lines = [x for x in g.log_text().splitlines() if x]
    check(len(lines) >= 5, "only %d log lines" % len(lines))
    msgs = []
    for x in lines:
        try:
            obj = json.loads(x)
        except ValueError as e:
            raise Fail("log line is not JSON (%s): %r" % (e, x))
        check(isinstance(obj, dict), "log line is not an object: %r" % x)
        for k in ("ts", "level"):
            check(k in obj, "no %s in %r" % (k, x))
        # Every line at info and above names its event in msg; debug
        # trace and state-change lines are keyed by trace= / state=.
        if obj["level"] != "debug" or not ("trace" in obj or "state" in obj):
            check("msg" in obj, "no msg in %r" % x)
        msgs.append(obj)
    check(any(o.get("msg") == "session-end" for o in msgs), "no session-end object")
    check(any(o.get("trace") == "c2s" and o.get("line", "").endswith('LIST "" "a\\"b\\\\c*"') for o in msgs),
          "no c2s trace object carrying the quoted LIST argument")
    check(PASSWORD not in g.log_text(), "password in the JSON log")


def test_trace_redacted(env):
    """log.level debug: the trace shows commands but never the password nor
    the SASL payload, in any of the ways a client can send them."""
    fb = fake(env, SCRIPT)
    g = ops.gate(env, fb.port, log="  level: debug\n")
    ir = base64.b64encode(b"\0demo\0" + PASSWORD.encode()).decode()
    pw_b64 = base64.b64encode(PASSWORD.encode()).decode()
    # LOGIN with quoted strings, lower case.
    c = ops.client(env, g)
    c.cmd('login "demo" "%s"' % PASSWORD)
    c.cmd("NOOP", ok=False)
    c.logout()
    # LOGIN with an atom password.
    c = ops.client(env, g)
    c.cmd("LOGIN demo %s" % PASSWORD)
    c.logout()
    # LOGIN with the password as a synchronizing literal.
    c = ops.client(env, g)
    tag = c.next_tag()
    c.send(("%s LOGIN demo {%d}\r\n" % (tag, len(PASSWORD))).encode())
    line = c.readline()
    check(line.startswith(b"+"), "LOGIN literal: %r" % line)
    c.send(PASSWORD.encode() + b"\r\n")
    tagged, _ = c.response(tag)
    check(tagged.startswith(tag.encode() + b" OK"), "LOGIN literal -> %r" % tagged)
    c.logout()
    # AUTHENTICATE PLAIN with SASL-IR.
    c = ops.client(env, g)
    c.cmd("AUTHENTICATE PLAIN %s" % ir)
    c.logout()
    # AUTHENTICATE PLAIN with the payload after the continuation.
    c = ops.client(env, g)
    tag = c.next_tag()
    c.send(("%s authenticate plain\r\n" % tag).encode())
    line = c.readline()
    check(line.startswith(b"+"), "AUTHENTICATE: %r" % line)
    c.send(ir.encode() + b"\r\n")
    tagged, _ = c.response(tag)
    check(tagged.startswith(tag.encode() + b" OK"), "AUTHENTICATE -> %r" % tagged)
    c.logout()
    common.session_end(g, count=5)
    text = g.log_text()
    for secret in (PASSWORD, ir, pw_b64, ir[:12]):
        check(secret not in text, "%r appears in the debug log:\n%s" % (secret, text[-2500:]))
    check(re.search(r'trace=c2s kind=command tag="T\d+" name=LOGIN bytes=\d+ literals=0 '
                    r'user="demo"', text) is not None, "no LOGIN trace with its user")
    check("trace=c2s kind=sasl bytes=" in text, "no SASL line trace (size only)")
    check("<sasl redacted>" in text, "no <sasl redacted> marker")
    check(re.search(r"trace=c2s kind=command tag=\"T\d+\" name=NOOP bytes=\d+ literals=0 "
                    r"line=\"T\d+ NOOP\"", text) is not None,
          "the trace does not show an ordinary command (NOOP)")
    check(re.search(r"trace=s2c ", text) is not None, "no s2c trace lines")


def test_syslog(env):
    """log.output syslog: lines reach /dev/log (a datagram socket the test
    binds in a private mount namespace is not available: needs /dev/log)."""
    if not os.path.exists("/dev/log"):
        say("   SKIP: no /dev/log syslog socket on this machine")
        return "skip"
    fb = fake(env)
    g = ops.gate(env, fb.port, log="  level: info\n  output: syslog\n")
    c = ops.client(env, g)
    c.login("demo", PASSWORD)
    c.logout()
    time.sleep(0.3)
    check("session-end" not in g.log_text()[g.mark:],
          "log.output syslog still writes session lines to stderr")
    return None


def main():
    """Run every check."""
    env = ops.Env(sys.argv)
    ops.run(env, [
        ("metrics after a scripted session", test_metrics),
        ("log.format json", test_json_log),
        ("debug trace has no passwords", test_trace_redacted),
        ("log.output syslog", test_syslog),
    ])


if __name__ == "__main__":
    socket.setdefaulttimeout(30)
    main()
