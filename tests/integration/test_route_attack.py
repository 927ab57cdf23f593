#!/usr/bin/env python3
"""backend.route: login under attack: a hostile client before login, a
hostile or broken backend during the login, and a hostile lookup.

Each check starts its own imapgate (route: login, plaintext listener) in
front of a real Dovecot (test_route_common.RouteDovecot) or a scripted
backend (FakeBackend) or lookup (FakeLookup), and every imapgate must
exit 0 on SIGTERM with no sanitizer report and no illegal lifecycle
transition in its log (run it with an ASan/UBSan build).

usage: test_route_attack.py PATH-TO-IMAPGATE
Skips (77) without dovecot.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import harness
from harness import Fail, check, say
import test_route_common as rc

HOST = "127.0.0.1"
USERS = {"alice": "alice-Pw-1", "bob": "bob-Pw-2"}
IO = 5.0                   # seconds any single wait may take
BIN = None


class Gate:
    """One imapgate with backend.route: login on a plaintext listener."""

    def __init__(self, env, name, servers, lookup="  lookup:\n    type: hash\n", extra="",
                 listen_extra="", backend_extra="", level="debug"):
        self.port = harness.free_port()
        d = env.dir(name)
        self.conf = os.path.join(d, "imapgate.yaml")
        self.logfile = os.path.join(d, "imapgate.log")
        self.name = name
        text = ("listen:\n  - address: %s:%d\n    tls: none\n%s"
                "backend:\n  servers:\n%s  route: login\n%s%s"
                "log:\n  level: %s\n%s"
                % (HOST, self.port, listen_extra,
                   "".join("    - address: %s:%d\n" % (HOST, p) for p in servers),
                   lookup, backend_extra, level, extra))
        with open(self.conf, "w") as f:
            f.write(text)
        r = subprocess.run([BIN, "-t", "-c", self.conf], capture_output=True,
                           timeout=harness.START_TIMEOUT)
        if r.returncode != 0:
            raise Fail("imapgate -t rejected %s:\n%s%s" % (
                self.conf, r.stdout.decode(), r.stderr.decode()))
        self.proc = harness.Proc(name, [BIN, "-c", self.conf], self.logfile)
        harness.wait_port(self.port, self.proc)
        env.add(self)

    def log_text(self):
        return self.proc.log_text()

    def wait_log(self, pattern, timeout=IO):
        rx = re.compile(pattern)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            m = rx.search(self.log_text())
            if m:
                return m
            time.sleep(0.05)
        return None

    def stop(self):
        """SIGTERM; Fail unless it exited 0 with a clean log."""
        if self.proc.stopped:
            return
        status = self.proc.stop()
        text = self.log_text()
        for bad in ("AddressSanitizer", "LeakSanitizer", "runtime error:",
                    "illegal-transition"):
            check(bad not in text, "%s: %s in its log:\n%s" % (self.name, bad, text[-3000:]))
        check(status == 0, "%s exited with status %s:\n%s" % (self.name, status, text[-3000:]))


class Conn:
    """A byte-exact client connection."""

    def __init__(self, port, greet=True):
        self.s = socket.create_connection((HOST, port), timeout=IO)
        self.buf = b""
        self.eof = False
        if greet:
            g = self.until(rb"\r\n")
            check(g is not None and g.startswith(b"* OK "), "greeting: %r" % g)

    def send(self, data):
        self.s.sendall(data.encode() if isinstance(data, str) else data)

    def _fill(self, deadline):
        self.s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            d = self.s.recv(65536)
        except socket.timeout:
            return None
        except ConnectionResetError:
            d = b""
        if not d:
            self.eof = True
            return False
        self.buf += d
        return True

    def until(self, rx, timeout=IO):
        """Everything up to and including the first match of rx, or None."""
        rx = re.compile(rx if isinstance(rx, bytes) else rx.encode())
        end = time.monotonic() + timeout
        while True:
            m = rx.search(self.buf)
            if m:
                out, self.buf = self.buf[:m.end()], self.buf[m.end():]
                return out
            if self.eof or time.monotonic() >= end or not self._fill(end):
                return None

    def tagged(self, tag, timeout=IO):
        """Everything up to and including tag's tagged reply; Fail without one."""
        out = self.until(rb"(?:^|\r\n)" + re.escape(tag.encode()) + rb" [^\r\n]*\r\n", timeout)
        check(out is not None, "no tagged reply for %s (have %r, eof=%s)"
              % (tag, self.buf[:300], self.eof))
        return out

    def rest(self, timeout=0.5):
        """What arrives within timeout (stops at EOF)."""
        end = time.monotonic() + timeout
        while not self.eof and time.monotonic() < end:
            if self._fill(end) is None:
                break
        out, self.buf = self.buf, b""
        return out

    def closed(self, timeout=IO):
        """True once the server closed the connection within timeout."""
        end = time.monotonic() + timeout
        while not self.eof and time.monotonic() < end:
            self._fill(end)
        return self.eof

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


class FakeLookup:
    """An nginx auth_http endpoint that sends every user to server_port
    (Auth-Status OK) after delay seconds, or (delay None) once go is set;
    n counts the requests."""

    def __init__(self, server_port, delay=0.0, status="OK"):
        self.server_port = server_port
        self.delay = delay
        self.go = threading.Event()
        self.status = status
        self.n = 0
        self._stop = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((HOST, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.name = "fake-lookup"
        self.threads = [threading.Thread(target=self._loop, daemon=True)]
        self.threads[0].start()

    @property
    def url(self):
        return "http://%s:%d/auth" % (HOST, self.port)

    def _loop(self):
        while not self._stop.is_set():
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            t = threading.Thread(target=self._serve, args=(c,), daemon=True)
            t.start()
            self.threads.append(t)

    def _serve(self, c):
        try:
            c.settimeout(IO)
            data = b""
            while b"\r\n\r\n" not in data:
                d = c.recv(4096)
                if not d:
                    return
                data += d
            self.n += 1
            if self.delay is None:
                while not self.go.wait(0.05):
                    if self._stop.is_set():
                        return
            elif self._stop.wait(self.delay):
                return
            if self.status == "OK":
                c.sendall(b"HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Server: 127.0.0.1\r\n"
                          b"Auth-Port: %d\r\n\r\n" % self.server_port)
            else:
                c.sendall(b"HTTP/1.0 200 OK\r\nAuth-Status: %s\r\nAuth-Wait: 0\r\n\r\n"
                          % self.status.encode())
        except OSError:
            pass
        finally:
            c.close()

    def stop(self):
        self._stop.set()
        self.sock.close()
        for t in self.threads:
            t.join(timeout=2.0)


class FakeBackend:
    """A scripted IMAP backend: script(conn, n) runs for the n-th
    connection (0-based) in a thread; conn is a BackendConn."""

    def __init__(self, script):
        self.script = script
        self.conns = []
        self.errors = []
        self._stop = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((HOST, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.name = "fake-backend"
        self.threads = [threading.Thread(target=self._loop, daemon=True)]
        self.threads[0].start()

    def _loop(self):
        while not self._stop.is_set():
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            bc = BackendConn(c, self._stop)
            self.conns.append(bc)
            t = threading.Thread(target=self._serve, args=(bc, len(self.conns) - 1),
                                 daemon=True)
            t.start()
            self.threads.append(t)

    def _serve(self, bc, n):
        try:
            self.script(bc, n)
        except Exception as e:      # the script's own failure, reported by the test
            self.errors.append("connection %d: %r" % (n, e))
        finally:
            bc.close()

    def stop(self):
        self._stop.set()
        self.sock.close()
        for c in self.conns:
            c.close()
        for t in self.threads:
            t.join(timeout=2.0)


class BackendConn:
    """The backend's side of one connection: line reads, raw sends, RST."""

    def __init__(self, s, stop):
        self.s = s
        self.stop_ev = stop
        self.s.settimeout(IO)
        self.buf = b""
        self.received = b""

    def line(self):
        """The next line from imapgate (CRLF included); Fail at EOF."""
        while b"\n" not in self.buf:
            d = self.s.recv(65536)
            if not d:
                raise Fail("imapgate closed (have %r)" % self.buf)
            self.buf += d
            self.received += d
        i = self.buf.index(b"\n") + 1
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    def send(self, data):
        self.s.sendall(data)

    def wait(self, secs):
        self.stop_ev.wait(secs)

    def reset(self):
        """Close with RST."""
        self.s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
        self.close()

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


def tag_of(line):
    return line.split(b" ", 1)[0]


GREET_CAPS = b"* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ AUTH=PLAIN] fake ready\r\n"


def http_lookup(url, timeout="5s"):
    return "  lookup:\n    type: http\n    url: %s\n    timeout: %s\n" % (url, timeout)


def status_of(reply, tag):
    m = re.search(rb"(?:^|\r\n)" + re.escape(tag.encode()) + rb" (OK|NO|BAD)\b", reply)
    return m.group(1).decode() if m else None


def fast(extra=""):
    """timeouts that keep the checks quick."""
    return "timeouts:\n  login_failure: 0s\n" + extra


# ------------------------------------------------------- session lifecycle

def t_retry_after_failed_login(env):
    """A wrong password, then the right one on the same connection: the
    failed login (which reached the backend) must not leave the client
    unread, and pipelined commands run after the NO, in order."""
    g = Gate(env, "retry", [env.dv.port], extra="timeouts:\n  login_failure: 200ms\n")
    c = Conn(g.port)
    c.send("a LOGIN alice wrong\r\nb CAPABILITY\r\nc NOOP\r\n")
    out = c.tagged("c")
    check(status_of(out, "a") == "NO" and status_of(out, "b") == "OK" and
          status_of(out, "c") == "OK", "pipelined after a failed login: %r" % out)
    check(out.index(b"a NO") < out.index(b"b OK") < out.index(b"c OK"), "order: %r" % out)
    c.send("d LOGIN alice %s\r\ne SELECT INBOX\r\n" % USERS["alice"])
    out = c.tagged("e")
    check(status_of(out, "d") == "OK" and status_of(out, "e") == "OK", "retry: %r" % out)
    c.close()
    g.stop()


def t_preauth_timeout_before_login(env):
    """timeouts.preauth holds before login too: a silent client is closed."""
    g = Gate(env, "preauth", [env.dv.port], extra=fast("  preauth: 1s\n"))
    c = Conn(g.port)
    out = c.until(rb"\* BYE [^\r\n]*\r\n", timeout=IO)
    check(out is not None and c.closed(), "no BYE/close for a silent client: %r" % c.buf)
    c.close()
    g.stop()


def t_logout_and_bad_limit(env):
    """LOGOUT before login ends the connection; so do 50 BAD commands."""
    g = Gate(env, "logout", [env.dv.port], extra=fast())
    c = Conn(g.port)
    c.send("a LOGOUT\r\n")
    out = c.tagged("a")
    check(b"* BYE" in out and c.closed(), "LOGOUT did not close: %r" % out)
    c.close()
    c = Conn(g.port)
    c.send("".join("x%d FROB\r\n" % i for i in range(60)))
    check(c.closed(), "60 BAD commands: still open")
    c.close()
    g.stop()


def t_drain_before_login(env):
    """SIGTERM: a session before login gets BYE and imapgate exits well
    before timeouts.drain."""
    g = Gate(env, "drain", [env.dv.port], extra=fast("  drain: 60s\n"))
    c = Conn(g.port)
    c2 = Conn(g.port)
    c2.send("a LOGIN alice wrong\r\n")
    c2.tagged("a")
    os.kill(g.proc.pid, signal.SIGTERM)
    out = c.until(rb"\* BYE [^\r\n]*\r\n")
    check(out is not None, "no BYE on drain: %r" % c.buf)
    check(c2.until(rb"\* BYE [^\r\n]*\r\n") is not None, "no BYE on drain after a failure")
    try:
        g.proc.p.wait(timeout=IO * 2)
    except subprocess.TimeoutExpired:
        raise Fail("imapgate still running %.0fs after SIGTERM with only pre-login "
                   "sessions" % (IO * 2))
    c.close()
    c2.close()
    g.stop()


def t_lookup_answers_after_session_end(env):
    """An http lookup whose answer is read in the same loop round as the
    preauth timeout ends the session must not revive it (it asserted:
    illegal transition finishing->setup).  imapgate is stopped (SIGSTOP)
    while the lookup answers and the timeout passes, so both are ready
    together when it goes on."""
    lk = env.add(FakeLookup(env.dv.port, delay=None))
    g = Gate(env, "late-lookup", [env.dv.port], lookup=http_lookup(lk.url),
             extra=fast("  preauth: 1s\n"))
    for i in range(2):
        lk.go.clear()
        t0 = time.monotonic()
        c = Conn(g.port)
        c.send("a LOGIN alice %s\r\n" % USERS["alice"])
        end = time.monotonic() + IO
        while lk.n < i + 1 and time.monotonic() < end:
            time.sleep(0.01)
        check(lk.n == i + 1, "the lookup was not asked")
        os.kill(g.proc.pid, signal.SIGSTOP)
        try:
            lk.go.set()
            time.sleep(max(0.2, 1.2 - (time.monotonic() - t0)))
        finally:
            os.kill(g.proc.pid, signal.SIGCONT)
        c.closed()
        c.close()
        check(g.proc.alive(), "imapgate died on a lookup answer for an ended session:\n%s"
              % g.log_text()[-3000:])
    g.stop()


# ------------------------------------------------- hostile or broken backend

def t_backend_reset_after_login_ok(env):
    """The backend says OK to the login (no capability list), then resets
    the connection during the CAPABILITY imapgate asks: the client gets
    NO [UNAVAILABLE] (the error text was read after its endpoint was
    freed: heap-use-after-free)."""
    def script(b, n):
        b.send(GREET_CAPS)
        tag = tag_of(b.line())
        b.send(tag + b" OK Logged in\r\n")
        b.line()                        # imapgate-cap CAPABILITY
        b.send(b"* CAPABILITY IMAP4rev1 " + b"X" * 70000)   # unread: the close is a RST
        b.reset()
    fb = env.add(FakeBackend(script))
    g = Gate(env, "reset-after-ok", [fb.port], extra=fast())
    c = Conn(g.port)
    c.send("a LOGIN alice pw\r\n")
    out = c.tagged("a")
    check(out.startswith(b"a NO [UNAVAILABLE]"), "reply: %r" % out)
    c.close()
    g.stop()


def t_login_ok_without_capability(env):
    """A login OK without a capability list: imapgate asks CAPABILITY and
    answers the client with it and the OK's text (which leaked)."""
    def script(b, n):
        b.send(GREET_CAPS)
        tag = tag_of(b.line())
        b.send(tag + b" OK Welcome aboard\r\n")
        tag = tag_of(b.line())
        b.send(b"* CAPABILITY IMAP4rev1 IDLE FAKECAP\r\n" + tag + b" OK done\r\n")
        tag = tag_of(b.line())
        b.send(b"* BYE bye\r\n" + tag + b" OK LOGOUT done\r\n")
    fb = env.add(FakeBackend(script))
    g = Gate(env, "ok-no-caps", [fb.port], extra=fast())
    c = Conn(g.port)
    c.send("a LOGIN alice pw\r\nb LOGOUT\r\n")
    out = c.tagged("b")
    check(re.match(rb"a OK \[CAPABILITY IMAP4rev1 IDLE FAKECAP\] Welcome aboard\r\n", out)
          is not None, "reply: %r" % out)
    c.close()
    g.stop()


def t_no_stale_login_state(env):
    """A login whose backend died after its OK leaves nothing behind for the
    client's next attempt: the next backend must get the new login (a
    stale 'authed' flag made imapgate answer OK after only a CAPABILITY,
    without logging in), and a static route must not run out of tries
    after connect_tries failed logins."""
    def script(b, n):
        if n == 0:
            b.send(GREET_CAPS)
            tag = tag_of(b.line())
            b.send(tag + b" OK Logged in\r\n")
            b.line()                    # imapgate-cap CAPABILITY: no answer, close
            return
        b.send(b"* OK no capabilities here\r\n")
        line = b.line()
        if b"CAPABILITY" in line:
            b.send(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR\r\n" + tag_of(line) + b" OK\r\n")
            line = b.line()
        b.send(tag_of(line) + b" NO [AUTHENTICATIONFAILED] wrong\r\n")
    fb = env.add(FakeBackend(script))
    g = Gate(env, "stale", [fb.port], extra=fast())
    c = Conn(g.port)
    c.send("a LOGIN alice pw\r\n")
    out = c.tagged("a")
    check(out.startswith(b"a NO [UNAVAILABLE]"), "first login: %r" % out)
    c.send("b LOGIN alice wrong\r\n")
    out = c.tagged("b")
    check(out.startswith(b"b NO [AUTHENTICATIONFAILED]"), "second login: %r" % out)
    check(len(fb.conns) == 2 and b"AUTHENTICATE PLAIN" in fb.conns[1].received,
          "the second backend connection got no login: %r"
          % [x.received for x in fb.conns])
    c.close()
    g.stop()

    mapfile = os.path.join(env.dir("stale-static"), "users.map")
    with open(mapfile, "w") as f:
        f.write("alice 127.0.0.1:%d\n" % env.dv.port)
    g = Gate(env, "stale-static", [env.dv.port],
             lookup="  lookup:\n    type: static\n    file: %s\n" % mapfile, extra=fast())
    c = Conn(g.port)
    for i in range(5):
        c.send("w%d LOGIN alice wrong%d\r\n" % (i, i))
        out = c.tagged("w%d" % i)
        check(out.startswith(b"w%d NO [AUTHENTICATIONFAILED]" % i),
              "static route, failed login %d: %r" % (i + 1, out))
    c.send("ok LOGIN alice %s\r\n" % USERS["alice"])
    out = c.tagged("ok")
    check(out.startswith(b"ok OK"), "static route, the right password at last: %r" % out)
    c.close()
    g.stop()


def t_no_secrets_in_debug_log(env):
    """log.level debug: no password or SASL payload of any login mechanism
    (LOGIN with literals, AUTHENTICATE PLAIN/LOGIN) reaches the log; user
    names with quotes, backslashes and 8-bit bytes are escaped."""
    import base64
    g = Gate(env, "secrets", [env.dv.port], extra=fast())
    pw = USERS["alice"]
    plain = base64.b64encode(b"\0alice\0" + pw.encode())
    sessions = [
        b"a LOGIN alice {%d}\r\n%s\r\n" % (len(pw), pw.encode()),
        b"a LOGIN alice {%d+}\r\n%s\r\n" % (len(pw), pw.encode()),
        b"a LOGIN alice \"%s-x\"\r\n" % pw.encode(),
        b"a AUTHENTICATE PLAIN %s\r\n" % plain,
        b"a AUTHENTICATE PLAIN\r\n%s\r\n" % plain,
        b"a AUTHENTICATE LOGIN\r\n%s\r\n%s\r\n" % (base64.b64encode(b"alice"),
                                                  base64.b64encode(pw.encode())),
        b"a LOGIN \"q\\\"u\\\\ote\xc3\xa9 msg=x\" \"%s\"\r\n" % pw.encode(),
    ]
    for data in sessions:
        c = Conn(g.port)
        c.send(data + b"b LOGOUT\r\n")
        c.tagged("b")
        c.close()
    check(g.wait_log(r'user="q\\"u\\\\ote\\xc3\\xa9 msg=x"') is not None,
          "the odd user name is not logged escaped")
    text = g.log_text()
    for secret in (pw, plain.decode(), base64.b64encode(pw.encode()).decode()):
        check(secret not in text, "a secret (%r) is in the debug log" % secret)
    g.stop()


# ------------------------------------------------------------ random clients

def _fuzz_string(rng, value):
    """value as an atom, quoted string, synchronizing literal or LITERAL+."""
    k = rng.randrange(4)
    if k == 0 and re.match(r"^[A-Za-z0-9._-]+$", value):
        return value.encode()
    if k <= 1:
        return b'"' + value.replace("\\", "\\\\").replace('"', '\\"').encode() + b'"'
    return b"{%d%s}\r\n" % (len(value), b"+" if k == 3 else b"") + value.encode()


def _fuzz_plan(rng):
    """[(tag, bytes, expected status or None)] for one random session."""
    import base64
    out = []
    logged_in = False
    for i in range(rng.randrange(1, 12)):
        tag = "t%d" % i
        k = rng.randrange(10)
        if logged_in:
            out.append((tag, b"%s %s\r\n" % (tag.encode(), rng.choice([b"NOOP", b"CAPABILITY"])),
                        "OK"))
            continue
        if k == 0:
            out.append((tag, b"%s %s\r\n" % (tag.encode(), rng.choice([b"NOOP", b"CAPABILITY"])),
                        "OK"))
        elif k == 1:
            out.append((tag, b"%s ID (\"name\" %s \"version\" NIL)\r\n"
                        % (tag.encode(), _fuzz_string(rng, "fuzz client")), "OK"))
        elif k == 2:
            out.append((tag, rng.choice([b"%s FROB\r\n", b"%s NOOP {3}\r\nabc\r\n",
                                         b"%s SELECT INBOX\r\n", b"%s LOGIN\r\n",
                                         b"%s LOGIN a b c\r\n"]) % tag.encode(), None))
        elif k in (3, 4, 5, 6):
            user = rng.choice(["alice", "bob", "nobody"])
            right = rng.random() < 0.4 and user != "nobody"
            pw = USERS[user] if right else "wrong-%d" % rng.randrange(100)
            out.append((tag, b"%s LOGIN %s %s\r\n" % (tag.encode(), _fuzz_string(rng, user),
                                                       _fuzz_string(rng, pw)),
                        "OK" if right else "NO"))
            logged_in = right
        else:
            user = rng.choice(["alice", "bob"])
            right = rng.random() < 0.4
            pw = USERS[user] if right else "nope"
            blob = base64.b64encode(b"\0" + user.encode() + b"\0" + pw.encode())
            if k == 7:
                data = b"%s AUTHENTICATE PLAIN %s\r\n" % (tag.encode(), blob)
            elif k == 8:
                data = b"%s AUTHENTICATE PLAIN\r\n%s\r\n" % (tag.encode(), blob)
            else:
                data = b"%s AUTHENTICATE LOGIN\r\n%s\r\n%s\r\n" % (
                    tag.encode(), base64.b64encode(user.encode()),
                    base64.b64encode(pw.encode()))
            out.append((tag, data, "OK" if right else "NO"))
            logged_in = right
    out.append(("z", b"z LOGOUT\r\n", "OK"))
    return out


def t_random_clients(env):
    """Random pre-login sessions (every LOGIN/ID argument as atom, quoted,
    literal or LITERAL+; AUTHENTICATE with and without SASL-IR; garbage),
    pipelined in random chunks down to single bytes, sometimes cut short:
    every tag is answered at most once, in the order sent, with the
    expected status, and a session that ran to LOGOUT got every answer.
    IMAPGATE_FUZZ_SECONDS (default 6) and IMAPGATE_FUZZ_SEED apply."""
    import random
    seed = int(os.environ.get("IMAPGATE_FUZZ_SEED") or random.SystemRandom().randrange(1 << 32))
    seconds = float(os.environ.get("IMAPGATE_FUZZ_SECONDS") or 6)
    say("   seed %d (IMAPGATE_FUZZ_SEED=%d IMAPGATE_TEST_ONLY=random to replay)" % (seed, seed))
    g = Gate(env, "fuzz", [env.dv.port], level="info",
             extra=fast("  preauth: 30s\nlimits:\n  login_failures_per_ip: 0\n"))
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end and n < 2000:
        rng = random.Random("%d:%d" % (seed, n))
        plan = _fuzz_plan(rng)
        data = b"".join(x[1] for x in plan)
        cut = len(data) if rng.random() < 0.8 else rng.randrange(len(data))
        chunk = rng.choice([1, 3, 7, 64, 1 << 16])
        where = "seed %d session %d" % (seed, n)
        c = Conn(g.port)
        try:
            for i in range(0, cut, chunk):
                c.send(data[i:min(cut, i + chunk)])
            if cut < len(data):
                c.close()
            else:
                c.closed(timeout=IO)
                got = c.buf
                tags = [m.group(1).decode() for m in
                        re.finditer(rb"(?:^|\n)(t\d+|z) (?:OK|NO|BAD)\b", got)]
                order = [t for t, _, _ in plan]
                check(len(tags) == len(set(tags)), "%s: a tag answered twice: %r" % (where, got))
                check(tags == [t for t in order if t in tags],
                      "%s: answers out of order %r: %r" % (where, tags, got))
                bye = re.search(rb"\* BYE (?!Logging out|IMAP)", got)
                if not bye:
                    check(tags == order, "%s: missing answers %r of %r:\n%r\nsent %r"
                          % (where, tags, order, got, data))
                for t, _, want in plan:
                    st = status_of(got, t)
                    check(want is None or st is None or st == want,
                          "%s: %s got %s, want %s:\n%r\nsent %r"
                          % (where, t, st, want, got, data))
        finally:
            c.close()
        check(g.proc.alive(), "%s: imapgate died:\n%s" % (where, g.log_text()[-3000:]))
        n += 1
    say("   %d sessions" % n)
    g.stop()


TESTS = [
    ("retry after a failed login, pipelined commands in order", t_retry_after_failed_login),
    ("preauth timeout before login", t_preauth_timeout_before_login),
    ("LOGOUT and the BAD limit before login", t_logout_and_bad_limit),
    ("drain with sessions before login", t_drain_before_login),
    ("a lookup answer after the session ended", t_lookup_answers_after_session_end),
    ("backend resets after the login's OK", t_backend_reset_after_login_ok),
    ("login OK without a capability list", t_login_ok_without_capability),
    ("no state of a failed login carries over", t_no_stale_login_state),
    ("no secrets in the debug log", t_no_secrets_in_debug_log),
    ("random clients before login", t_random_clients),
]


def main(argv):
    global BIN
    BIN = harness.imapgate_binary(argv)
    if shutil.which("dovecot") is None:
        say("SKIP: dovecot is not installed")
        sys.exit(harness.SKIP)
    if not BIN or not os.access(BIN, os.X_OK):
        say("FAIL: imapgate binary not given or not executable: %r" % BIN)
        sys.exit(1)
    t0 = time.monotonic()
    env = rc.RouteEnv(prefix="imapgate-route-attack-")
    (env.dv,) = rc.start_dovecots(env.tmp, [("one", USERS)])
    env.add(env.dv)
    only = os.environ.get("IMAPGATE_TEST_ONLY")
    tests = [t for t in TESTS if not only or only in t[0]]
    rc.run(env, tests, started=t0)


if __name__ == "__main__":
    main(sys.argv)
