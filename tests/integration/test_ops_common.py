#!/usr/bin/env python3
"""Shared pieces of the operations tests (issue 8, test_ops_*.py); not a test.

Builds on test_guard_common.GuardEnv (temp dir, imapgate instances checked
for a clean exit, backends stopped with each test) and test_tls_common
(certificates, Dovecot starter, TLS clients).  Adds: imapgate started from
a whole config text of our own (log format/level, metrics, drain), a
Prometheus text parser, and signal helpers.  Python 3 stdlib only.
"""

import os
import re
import signal
import ssl
import time
import urllib.request

import harness
from harness import Fail, check, say  # noqa: F401  (re-exported)
import test_guard_common as common
import test_tls_common as tlsc

SKIP = harness.SKIP
SCRAPE_TIMEOUT = 5.0        # seconds for one GET /metrics
EXIT_TIMEOUT = 10.0         # seconds imapgate gets to exit after SIGTERM

SAMPLE_RX = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL_RX = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def config_text(port, backend_port, cert, key, listen="", log="  level: info\n",
                extra="", drain="5s"):
    """A whole imapgate config: one implicit-TLS listener on 127.0.0.1:port
    (plus listen, 4-space indented keys), one backend, log keys (2-space
    indented), timeouts (drain) and extra top-level text."""
    return ("listen:\n"
            "  - address: 127.0.0.1:%d\n"
            "    tls: implicit\n%s"
            "tls:\n  certificates:\n    - cert: %s\n      key: %s\n"
            "backend:\n  servers:\n    - address: 127.0.0.1:%d\n"
            "log:\n%s"
            "timeouts:\n  backend_connect: 2s\n  backend_response: 5s\n  drain: %s\n%s"
            % (port, listen, cert, key, backend_port, log, drain, extra))


def gate(env, backend_port, listen="", log="  level: info\n", extra="", drain="5s",
         cert=None, key=None, penv=None, start=True):
    """An imapgate with config_text(...) as its config, registered in env
    (stopped and checked for a clean exit after the test)."""
    env.nth += 1
    g = harness.Imapgate(env.binary, env.tmp, env.cert, env.key, backend_port,
                         name="imapgate%d" % env.nth, env=penv)
    g.cert, g.key = cert or env.cert, key or env.key
    g.write = lambda text: _write(g.conf, text)
    g.text = lambda **kw: config_text(g.port, backend_port, kw.get("cert", g.cert),
                                      kw.get("key", g.key), kw.get("listen", listen),
                                      kw.get("log", log), kw.get("extra", extra),
                                      kw.get("drain", drain))
    g.write(g.text())
    if not start:
        return g
    g.start()
    env.gates.append(g)
    # The start-up probe is a session too: let it end, then mark the log.
    g.wait_log(r"msg=(session-end|proxy-)", timeout=3.0)
    g.mark = len(g.log_text())
    return g


def _write(path, text):
    """Replace path's content in one rename (a reload never sees half a file)."""
    tmp = path + ".new"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def sighup(g, pattern=r"msg=reload", timeout=5.0):
    """Send SIGHUP to g and wait for the log line after it matching pattern."""
    mark = len(g.log_text())
    os.kill(g.proc.pid, signal.SIGHUP)
    line = g.wait_log(pattern, timeout=timeout, after=mark)
    check(line is not None, "no /%s/ after SIGHUP:\n%s" % (pattern, g.log_text()[mark:][-2000:]))
    return line


def wait_exit(g, timeout=EXIT_TIMEOUT):
    """Wait for g to exit by itself; returns the exit status (Fail if it does not)."""
    try:
        return g.proc.p.wait(timeout=timeout)
    except Exception:
        raise Fail("imapgate still running %.0fs after SIGTERM" % timeout)


def forget(env, g):
    """g exited on its own: take it off the env's list (status checked by caller)."""
    if g in env.gates:
        env.gates.remove(g)
    g.proc.stop()


# ------------------------------------------------------------------ metrics

def scrape(port):
    """GET http://127.0.0.1:port/metrics: (content type, text)."""
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port,
                                timeout=SCRAPE_TIMEOUT) as r:
        check(r.status == 200, "GET /metrics -> %s" % r.status)
        return r.headers.get("Content-Type", ""), r.read().decode("utf-8")


def parse_metrics(text):
    """Parse Prometheus text format strictly: {(name, frozenset(labels)): value}.

    Fails on any line that is not HELP, TYPE or `name{labels} value`, and on
    a sample whose family has no HELP and TYPE line.
    """
    samples, helps, types = {}, set(), {}
    for n, line in enumerate(text.split("\n"), 1):
        if line == "":
            continue
        if line.startswith("# HELP "):
            helps.add(line.split(" ")[2])
            continue
        if line.startswith("# TYPE "):
            parts = line.split(" ")
            check(len(parts) == 4 and parts[3] in ("counter", "gauge", "histogram",
                                                   "summary", "untyped"),
                  "line %d: bad TYPE line %r" % (n, line))
            types[parts[2]] = parts[3]
            continue
        check(not line.startswith("#"), "line %d: unknown comment %r" % (n, line))
        m = SAMPLE_RX.match(line)
        check(m is not None, "line %d: not a sample: %r" % (n, line))
        labels = m.group(2) or ""
        pairs = LABEL_RX.findall(labels)
        check(",".join('%s="%s"' % p for p in pairs) == labels,
              "line %d: bad labels %r" % (n, labels))
        try:
            value = float(m.group(3))
        except ValueError:
            raise Fail("line %d: bad value %r" % (n, line))
        name = m.group(1)
        family = name
        for suffix in ("_bucket", "_sum", "_count"):
            if name.endswith(suffix) and types.get(name[:-len(suffix)]) == "histogram":
                family = name[:-len(suffix)]
        check(family in helps and family in types,
              "line %d: %s has no HELP/TYPE before it" % (n, name))
        key = (name, frozenset(pairs))
        check(key not in samples, "line %d: duplicate sample %r" % (n, line))
        samples[key] = value
    return samples


def value(samples, name, **labels):
    """The value of one sample (0 if absent: counters start absent or at 0)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def total(samples, name, **labels):
    """Sum of every sample of name whose labels include the given ones."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


# ------------------------------------------------------------------ clients

def client(env, g, timeout=harness.IO_TIMEOUT):
    """A TLS client through g (greeting read)."""
    return tlsc.tls_client(g.port, env.tls, timeout=timeout)


def peer_cert(port, cafile=None):
    """The DER certificate imapgate on port presents (no verification)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    s = tlsc.connect(port, 5.0)
    try:
        t = ctx.wrap_socket(s, server_hostname="localhost")
        der = t.getpeercert(binary_form=True)
        t.close()
        return der
    finally:
        s.close()


def start_idle(c):
    """Send IDLE on a logged-in client and read the continuation: the tag."""
    tag = c.next_tag()
    c.send(("%s IDLE\r\n" % tag).encode())
    line = c.readline()
    check(line.startswith(b"+"), "IDLE: no continuation, got %r" % line)
    return tag


def end_idle(c, tag):
    """DONE, then the tagged OK of the IDLE."""
    c.send(b"DONE\r\n")
    tagged, _ = c.response(tag)
    check(tagged.startswith(("%s OK" % tag).encode()), "IDLE -> %r" % tagged)


Env = common.GuardEnv
run = common.run
