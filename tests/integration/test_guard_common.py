#!/usr/bin/env python3
"""Shared pieces of the session-guard tests (test_guard_*.py); not a test.

GuardEnv: a temp dir, a certificate and any number of imapgate instances in
front of any backend (WildDuck, the scripted fake backend, Dovecot), each
stopped and checked for a clean exit.  WildDuck: tests/backends/wildduck/
server.js as a child process that can be cut (SIGUSR2), reset (SIGHUP),
killed (SIGKILL) and restarted on the same port.  Python 3 stdlib only.
"""

import atexit
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time

import harness
from harness import Fail, check, say

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
BACKENDS = os.path.join(ROOT, "tests", "backends")
WILDDUCK_DIR = os.path.join(BACKENDS, "wildduck")
PRESET = os.path.join(ROOT, "config", "presets", "wildduck.yaml")
sys.path.insert(0, BACKENDS)

SKIP = harness.SKIP
CLOSE_TIMEOUT = 10.0        # seconds a test waits for imapgate to close a client
READY_TIMEOUT = 15.0        # seconds for server.js to print READY
MAX_DRAIN = 64 << 20        # bytes read_to_close accepts before giving up

BYE_UNAVAILABLE = b"* BYE [UNAVAILABLE] Backend server unavailable\r\n"
BYE_DESYNC = b"* BYE [UNAVAILABLE] The server lost this session, please reconnect\r\n"
BYE_NOT_LOGGED_IN = b"* BYE Not logged in: please reconnect and log in\r\n"

# The IANA registry (IMAP-FACTS.md) plus CAPABILITY.
STANDARD_CODES = set("""NEWNAME REFERRAL ALERT BADCHARSET PARSE PERMANENTFLAGS
READ-ONLY READ-WRITE TRYCREATE UIDNEXT UIDVALIDITY UNSEEN UNKNOWN-CTE UIDNOTSTICKY
APPENDUID COPYUID URLMECH TOOBIG BADURL HIGHESTMODSEQ NOMODSEQ MODIFIED
COMPRESSIONACTIVE CLOSED NOTSAVED BADCOMPARATOR ANNOTATE ANNOTATIONS TEMPFAIL
MAXCONVERTMESSAGES MAXCONVERTPARTS NOUPDATE NOTIFICATIONOVERFLOW BADEVENT
UNDEFINED-FILTER METADATA UNAVAILABLE AUTHENTICATIONFAILED AUTHORIZATIONFAILED
EXPIRED PRIVACYREQUIRED CONTACTADMIN NOPERM INUSE EXPUNGEISSUED CORRUPTION
SERVERBUG CLIENTBUG CANNOT LIMIT OVERQUOTA ALREADYEXISTS NONEXISTENT USEATTR
DOWNGRADED HASCHILDREN MAILBOXID INPROGRESS UIDREQUIRED CAPABILITY""".split())


def guard_config(backend_response="2s", extra=""):
    """Config text for the guard keys the tests rely on, plus extra."""
    return ("timeouts:\n"
            "  backend_connect: 2s\n"
            "  backend_response: %s\n%s" % (backend_response, extra))


def preset_rewrite_block():
    """The top-level `rewrite:` block of config/presets/wildduck.yaml, verbatim.

    None when the preset (or the block) does not exist.  Text is copied, not
    re-serialized, so the test runs exactly what we ship.
    """
    try:
        with open(PRESET) as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    out, inside = [], False
    for line in lines:
        if re.match(r"^rewrite\s*:", line):
            inside = True
        elif inside and line and not line[0].isspace() and not line.startswith("#"):
            break
        if inside:
            out.append(line)
    return "\n".join(out) + "\n" if out else None


def preset_rules():
    """The preset's rewrite.rules as Python data (needs PyYAML), or None."""
    try:
        import yaml
    except ImportError:
        return None
    try:
        with open(PRESET) as f:
            doc = yaml.safe_load(f) or {}
    except OSError:
        return None
    return ((doc.get("rewrite") or {}).get("rules")) or []


def expected_by_rules(rules, status, code, text):
    """(status, code) the first matching preset rule sets, or None if none matches.

    code None means "no code"; the returned code "none" means "removed",
    None means "kept".
    """
    for r in rules:
        m = r.get("match") or {}
        st = str(m.get("status", "any")).upper()
        if st != "ANY" and st != status.upper():
            continue
        if "code" in m:
            mc = str(m["code"])
            if mc.lower() == "none" and code is not None:
                continue
            if mc.lower() != "none" and (code is None or mc.upper() != code.upper()):
                continue
        if "text" in m and not re.search(str(m["text"]), text, re.I):
            continue
        s = r.get("set") or {}
        return (str(s.get("status", "keep")).upper(),
                None if "code" not in s else str(s["code"]))
    return None


def parse_status(line):
    """(tag, status, code or None, text) of a status response line."""
    m = re.match(rb"^(\S+) (\S+)(?: \[([^\] ]+)(?: [^\]]*)?\])?(?: (.*))?\r\n$", line)
    check(m is not None, "not a status response: %r" % line)
    code = m.group(3).decode() if m.group(3) else None
    return (m.group(1).decode(), m.group(2).decode(), code,
            (m.group(4) or b"").decode("latin-1"))


# ------------------------------------------------------------------- client

def read_to_close(c, timeout=CLOSE_TIMEOUT):
    """Everything the client gets until imapgate closes; (bytes, how).

    how is "eof" (orderly close), "reset" or "tls-eof" (TLS ended without
    close_notify).  Fails if the connection is still open after timeout.
    """
    end = time.monotonic() + timeout
    how = None
    while how is None:
        left = end - time.monotonic()
        if left <= 0:
            raise Fail("connection still open after %.0fs; got %r"
                       % (timeout, bytes(c.buf[-300:])))
        check(len(c.buf) <= MAX_DRAIN, "more than %d bytes before close" % MAX_DRAIN)
        c.sock.settimeout(left)
        try:
            if c.fill() == 0:
                how = "eof"
        except socket.timeout:
            continue
        except ssl.SSLEOFError:
            how = "tls-eof"
        except ssl.SSLError as e:
            how = "tls-error %s" % e.reason
        except ConnectionResetError:
            how = "reset"
    data = bytes(c.buf)
    c.buf.clear()
    c.close()
    return data, how


def no_fabricated_ok(data, tags):
    """Fail if data holds a tagged OK for any of tags (one the backend never sent)."""
    for t in tags:
        check(not re.search(rb"(^|\r\n)" + re.escape(t.encode()) + rb" OK", data),
              "tagged OK for %s reached the client: %r" % (t, data[-300:]))


def session_end(gate, count=1, timeout=5.0):
    """The last msg=session-end log line as a dict of its key=value fields.

    Only sessions after gate.mark count (not the start-up probe); waits
    until count of them have ended.
    """
    end = time.monotonic() + timeout
    while True:
        lines = [x for x in gate.log_text()[getattr(gate, "mark", 0):].splitlines()
                 if "msg=session-end" in x]
        if len(lines) >= count:
            return dict(re.findall(r'(\w+)=("[^"]*"|\S+)', lines[-1]))
        if time.monotonic() >= end:
            raise Fail("%d msg=session-end lines in imapgate's log, want %d"
                       % (len(lines), count))
        time.sleep(0.05)


# -------------------------------------------------------------- environment

class GuardEnv:
    """Temp dir, certificate, and the imapgate instances of one test file."""

    def __init__(self, argv):
        self.binary = harness.imapgate_binary(argv)
        if not self.binary or not os.access(self.binary, os.X_OK):
            say("FAIL: imapgate binary not given or not executable: %r" % self.binary)
            sys.exit(1)
        self.tmp = tempfile.mkdtemp(prefix="imapgate-guard-")
        os.chmod(self.tmp, 0o755)
        self.cleaned = False
        self.gates = []
        self.backends = []      # objects with stop()
        self.exit_problems = []
        self.proxy = None       # harness compatibility
        atexit.register(self.cleanup)
        self.cert, self.key = harness.make_cert(self.tmp)
        self.tls = ssl.create_default_context(cafile=self.cert)
        self.nth = 0

    def gate(self, backend_port, extra="", backend_response="2s"):
        """Start an imapgate in front of 127.0.0.1:backend_port."""
        self.nth += 1
        g = harness.Imapgate(self.binary, self.tmp, self.cert, self.key, backend_port,
                             name="imapgate%d" % self.nth,
                             extra=guard_config(backend_response, extra))
        g.start()
        self.gates.append(g)
        # wait_port's probe is a session too: let it end, then mark the log.
        g.wait_log(r"msg=session-end", timeout=2.0)
        g.mark = len(g.log_text())
        return g

    def client(self, gate, timeout=harness.IO_TIMEOUT):
        """A TLS client connection through gate (greeting already read)."""
        return harness.Client(gate.port, self.tls, timeout=timeout)

    def small_client(self, gate, rcvbuf, timeout=harness.IO_TIMEOUT):
        """Like client(), with a small fixed receive buffer (no autotuning),
        so a response the client does not read stalls inside imapgate."""
        c = harness.Client.__new__(harness.Client)
        c.tagn, c.buf = 0, bytearray()
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        raw.settimeout(timeout)
        raw.connect(("127.0.0.1", gate.port))
        c.sock = self.tls.wrap_socket(raw, server_hostname="localhost")
        c.sock.settimeout(timeout)
        c.greeting = c.readline()
        return c

    def stop_gate(self, g):
        """Stop g and check it exits with status 0 (no crash, no sanitizer report)."""
        if g not in self.gates:
            return
        self.gates.remove(g)
        rc = g.stop()
        if rc != 0:
            self.exit_problems.append("%s exited with status %s:\n%s"
                                      % (g.conf, rc, g.log_text()[-3000:]))
            raise Fail("imapgate exited with status %s" % rc)

    def dump_logs(self):
        """Tails of the logs of every imapgate still known."""
        for g in self.gates:
            say("---- %s (tail) ----\n%s" % (g.logfile, g.log_text()[-3000:]))

    def cleanup(self):
        """Stop every process started here; remove the temp dir (once)."""
        if self.cleaned:
            return
        self.cleaned = True
        for g in list(self.gates):
            g.stop()
        for b in list(self.backends):
            try:
                b.stop()
            except Exception:       # best effort at exit
                pass
        if os.environ.get("IMAPGATE_TEST_KEEP") == "1":
            say("kept %s" % self.tmp)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def run(env, tests):
    """Run (name, fn) pairs, each fn(env) with its own gates; exit 0/1/77."""
    failed, skipped = [], 0
    for name, fn in tests:
        mark = len(env.gates)
        bmark = len(env.backends)

        def stop_gates(mark=mark):
            """Every gate the test started must stop cleanly."""
            for g in list(env.gates[mark:]):
                env.stop_gate(g)
        r = harness.run_one(env, name, fn, after=stop_gates)
        skipped += r == "skip"
        if r == "fail":
            failed.append(name)
            env.dump_logs()
            for g in list(env.gates[mark:]):
                try:
                    env.stop_gate(g)
                except Fail:
                    pass
        # The test's backends stop with it.
        for b in env.backends[bmark:]:
            try:
                b.stop()
            except Exception:   # best effort; cleanup tries again
                pass
        del env.backends[bmark:]
    if failed:
        say("FAILED: %s" % ", ".join(failed))
    else:
        say("all %d checks passed%s" % (len(tests) - skipped,
                                         ", %d skipped" % skipped if skipped else ""))
    env.cleanup()
    sys.exit(1 if failed else (SKIP if skipped == len(tests) else 0))


# ----------------------------------------------------------------- WildDuck

def wildduck_available():
    """None if WildDuck can run; else why not (node/npm missing or setup failed)."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node/npm are not installed"
    if not os.path.isfile(os.path.join(WILDDUCK_DIR, "node_modules", "wildduck",
                                       "imap-core", "test", "test-server.js")):
        r = subprocess.run(["sh", os.path.join(WILDDUCK_DIR, "setup.sh")],
                           capture_output=True, timeout=600)
        if r.returncode != 0:
            raise Fail("tests/backends/wildduck/setup.sh failed:\n%s"
                       % r.stderr.decode("utf-8", "replace")[-2000:])
    return None


class WildDuck:
    """server.js on 127.0.0.1: cut, reset, kill and restart on the same port."""

    starts = 0      # processes started by this test run

    def __init__(self, base, env=None):
        self.base = base
        self.env = env or {}
        self.port = 0
        self.proc = None
        self.runs = 0

    def start(self):
        """Start server.js (on the previous port after a kill); wait for READY."""
        self.runs += 1
        WildDuck.starts += 1
        # A fresh file per start: READY is looked for in it.
        log = os.path.join(self.base, "wildduck%d.log" % WildDuck.starts)
        self.proc = harness.Proc("wildduck", ["node", os.path.join(WILDDUCK_DIR, "server.js"),
                                              str(self.port)], log, env=self.env)
        end = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < end:
            m = re.search(r"READY (\d+)", self.proc.log_text())
            if m:
                self.port = int(m.group(1))
                return self
            if not self.proc.alive():
                break
            time.sleep(0.05)
        text = self.proc.log_text()
        self.proc.stop()
        raise Fail("server.js did not print READY:\n%s" % text[-2000:])

    def signal(self, sig):
        """Send sig to server.js."""
        os.kill(self.proc.pid, sig)

    def kill(self):
        """SIGKILL (the crash case) and reap it."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.p.wait(timeout=5)
        self.proc.stop()

    def restart(self):
        """Kill, then start again on the same port."""
        self.kill()
        return self.start()

    def stop(self):
        """SIGTERM, SIGKILL after a while."""
        if self.proc is not None:
            self.proc.stop()


def start_wildduck(env):
    """A running WildDuck registered for cleanup, or None when unavailable."""
    why = wildduck_available()
    if why is not None:
        say("   SKIP: %s" % why)
        return None
    wd = WildDuck(env.tmp).start()
    env.backends.append(wd)
    return wd
