#!/usr/bin/env python3
"""Runtime control (issue 16) against real servers and real clients.

1. Two Dovecots behind imapgate (route connect, round-robin): 200 sessions
   in IDLE and 20 sessions in FETCH/APPEND loops; `server A drain spread
   10s`: A's sessions get their BYE spread over the window, at a response
   boundary; no new session lands on A; every APPEND that got OK is on its
   server, none that did not; the clients reconnect to B; `server A enable`
   brings A back.
2. WildDuck's imap-core behind imapgate: `kick user U` while U is in IDLE
   with imapflow and with imaplib: both see the BYE, reconnect, continue.
3. The control socket: mode 0600 (0660 with control.group), other users
   get EACCES, malformed commands each get `error: ...` (ctl exits 1),
   1,000 commands a second beside a FETCH loop.
4. `server A disable` survives SIGHUP (ctl servers, /metrics admin_state).
5. `ctl --json sessions` agrees with /metrics imapgate_sessions_open; a
   kicked session mid-APPEND literal or with a stalled 4 MB FETCH gets
   its whole response and tagged OK before the BYE.
6. timeouts.idle_keepalive: `* OK Still here` in IDLE after the period of
   silence, repeatedly, between responses; 0 turns it off.
7. SIGTERM with timeouts.drain_spread: the BYEs are spread, exit 0.

Python 3 stdlib only (imapflow and WildDuck through node when present).
usage: test_ops_control.py PATH-TO-IMAPGATE
"""

import collections
import grp
import imaplib
import json
import os
import pwd
import random
import re
import selectors
import shutil
import signal
import socket
import struct
import ssl
import stat
import subprocess
import sys
import threading
import time

import harness
from harness import Fail, check, say
import test_guard_common as common
import test_ops_common as ops
import test_route_common as route
import test_tls_common as tlsc

HERE = os.path.dirname(os.path.abspath(__file__))
NODE_SCRIPT = os.path.join(HERE, "node", "ctl_imapflow.js")

DRAIN_TEXT = b"* BYE [UNAVAILABLE] Server going down for maintenance, please reconnect\r\n"
SHUTDOWN_BYE = b"* BYE [UNAVAILABLE] Server shutting down\r\n"
KEEPALIVE = b"* OK Still here\r\n"

IDLE_SESSIONS = 200         # test 1: sessions in IDLE
BUSY_SESSIONS = 20          # test 1: sessions in FETCH/APPEND loops
if os.environ.get("TSAN_OPTIONS"):
    # Under ThreadSanitizer (scripts/test's build-tsan run) the point is the
    # control jobs crossing threads, not the load: fewer sessions.
    IDLE_SESSIONS, BUSY_SESSIONS = 40, 6
DRAIN_SPREAD = 10.0         # test 1: seconds of `server A drain spread`
DRAIN_LATEST = 12.0         # every BYE of the drain by then (seconds after the command)
MAX_SHARE_PER_SECOND = 0.25 # test 1: no second holds more of the BYEs
APPEND_MIN, APPEND_MAX = 20 * 1024, 100 * 1024
OPEN_BATCH = 32             # fleet: sessions being set up at once
CTL_TIMEOUT = 10.0          # seconds for one `imapgate ctl`
BUSY_RETRIES = 500          # `busy` answers retried this often at most
RATE_SECONDS = 3.0          # test 3: seconds of 1,000 commands a second
RATE_TARGET = 1000          # commands a second
FETCH_LATENCY_MAX = 2.0     # test 3: no FETCH took longer (a very loose bound)
KEEPALIVE_PERIOD = 2.0      # test 6
SIGTERM_SESSIONS = 60       # test 7
WAIT = 20.0                 # any other wait

UNTAGGED_RX = re.compile(rb"^\* (OK|NO|BAD|BYE|PREAUTH|CAPABILITY|FLAGS|LIST|LSUB|STATUS|"
                         rb"SEARCH|ESEARCH|ENABLED|NAMESPACE|ID|QUOTA|QUOTAROOT|VANISHED|"
                         rb"\d+ (EXISTS|RECENT|EXPUNGE|FETCH))( |\r\n)")
LIT_RX = re.compile(rb"\{(\d+)\+?\}\r\n$")
IDLE_PUSH_RX = re.compile(rb"^\* (\d+ (EXISTS|RECENT|EXPUNGE)\r\n|\d+ FETCH \([^\r\n]*\)\r\n)")


# ------------------------------------------------------------ IMAP stream

class Stream:
    """Incremental IMAP response parser: bytes in, whole responses out
    (text with each literal's header kept, literal bytes apart)."""

    def __init__(self):
        self.buf = bytearray()
        self.cur = b""
        self.lits = []
        self.need = None        # bytes of the literal being read, or None

    def feed(self, data):
        """Add received bytes."""
        self.buf += data

    def items(self):
        """Every response complete so far, as (text, [literals])."""
        out = []
        while True:
            if self.need is not None:
                if len(self.buf) < self.need:
                    break
                self.lits.append(bytes(self.buf[:self.need]))
                del self.buf[:self.need]
                self.need = None
                continue
            i = self.buf.find(b"\r\n")
            if i < 0:
                check(len(self.buf) <= harness.MAX_LINE, "response line too long")
                break
            line = bytes(self.buf[:i + 2])
            del self.buf[:i + 2]
            self.cur += line
            m = LIT_RX.search(line)
            if m:
                self.need = int(m.group(1))
                continue
            out.append((self.cur, self.lits))
            self.cur, self.lits = b"", []
        return out

    def at_boundary(self):
        """True when no response is partly received."""
        return not self.buf and not self.cur and self.need is None


def well_formed(text, tags):
    """True if text is a whole response: untagged, continuation, or a
    tagged status for one of tags."""
    if text.startswith(b"+ ") or text == b"+\r\n":
        return True
    if UNTAGGED_RX.match(text):
        return True
    m = re.match(rb"^(\S+) (OK|NO|BAD)[ \r]", text)
    return m is not None and m.group(1).decode() in tags


def buckets(times, t0):
    """{second after t0: how many of times fall in it}."""
    return collections.Counter(int(t - t0) for t in times)


# ------------------------------------------------------------ imapgate

def gate_config(g, servers, plain_port, metrics_port, ctl_path, timeouts="", extra="",
                log_level="info", backend="", drain="5s", control=""):
    """imapgate YAML: an implicit-TLS listener (g.port) and a plaintext one
    (plain_port) on loopback, the servers (ports), the control socket, metrics."""
    text = ("workers: 2\n"
            "listen:\n"
            "  - address: 127.0.0.1:%d\n    tls: implicit\n"
            "  - address: 127.0.0.1:%d\n    tls: none\n"
            "tls:\n  certificates:\n    - cert: %s\n      key: %s\n"
            "backend:\n  route: connect\n  balance: round-robin\n%s"
            "  health: {interval: 1h, timeout: 2s, rise: 2, fall: 2}\n  servers:\n"
            % (g.port, plain_port, g.cert, g.key, backend))
    for p in servers:
        text += "    - {address: 127.0.0.1:%d}\n" % p
    text += ("log:\n  level: %s\n"
             "limits:\n  max_connections_per_ip: 0\n"
             "timeouts:\n  backend_connect: 2s\n  drain: %s\n%s"
             "control:\n  socket: %s\n%s"
             "metrics:\n  address: 127.0.0.1:%d\n%s"
             % (log_level, drain, timeouts, ctl_path, control, metrics_port, extra))
    return text


def start_gate(env, servers, timeouts="", extra="", log_level="info", backend="", drain="5s",
               control=""):
    """An imapgate in front of servers (ports) with a control socket, metrics and
    both listeners; registered in env (stopped and checked for exit 0 after
    the test).  g.ctl: socket path, g.plain: plaintext port, g.mport: metrics,
    g.names: the server names as ctl writes them, g.rewrite(**kw): new config."""
    env.nth += 1
    g = harness.Imapgate(env.binary, env.tmp, env.cert, env.key, 1, name="imapgate%d" % env.nth)
    g.cert, g.key = env.cert, env.key
    g.plain = harness.free_port()
    g.mport = harness.free_port()
    g.ctl = os.path.join(env.tmp, "ctl%d.sock" % env.nth)
    g.names = ["127.0.0.1:%d" % p for p in servers]

    def rewrite(**kw):
        args = dict(timeouts=timeouts, extra=extra, log_level=log_level, backend=backend,
                    drain=drain, control=control)
        args.update(kw)
        ops._write(g.conf, gate_config(g, servers, g.plain, g.mport, g.ctl, **args))
    g.rewrite = rewrite
    rewrite()
    g.check_config()
    g.proc = harness.Proc("imapgate", [g.binary, "-c", g.conf], g.logfile)
    env.gates.append(g)
    started_gates.append(g)
    harness.wait_port(g.port, g.proc)
    check(g.wait_log(r"msg=control-listening", timeout=5) is not None,
          "no msg=control-listening:\n%s" % g.log_text()[-2000:])
    g.wait_log(r"msg=session-end", timeout=3.0)     # the start-up probe
    g.mark = len(g.log_text())
    return g


SANITIZER_RX = re.compile(r"ERROR: (Address|Leak|Thread|Memory)Sanitizer|runtime error:")
started_gates = []      # every imapgate started, for the sanitizer scan


def sanitizer_reports(text):
    """Lines of text that are sanitizer reports."""
    return [x for x in text.splitlines() if SANITIZER_RX.search(x)]


def checked(fn):
    """fn(env), then: every imapgate it started stopped with exit 0 and no
    sanitizer report in its log (UBSan reports do not change the exit status)."""
    def run(env):
        first = len(started_gates)
        r = fn(env)
        for g in started_gates[first:]:
            env.stop_gate(g)
        for g in started_gates[first:]:
            bad = sanitizer_reports(g.log_text())
            check(not bad, "%s: sanitizer reports: %s" % (g.logfile, bad[:5]))
        return r
    run.__doc__ = fn.__doc__
    return run


def ctl(g, *args, js=False, ok=True, busy_retry=True):
    """Run `imapgate ctl -S SOCKET [--json] ARGS`; retries `busy` answers.
    Returns (exit status, stdout, stderr) as text; with ok, exit 0 is checked."""
    argv = [g.binary, "ctl", "-S", g.ctl] + (["--json"] if js else []) + list(args)
    for _ in range(BUSY_RETRIES):
        r = subprocess.run(argv, capture_output=True, timeout=CTL_TIMEOUT)
        out, err = r.stdout.decode("utf-8", "replace"), r.stderr.decode("utf-8", "replace")
        bad = sanitizer_reports(err)
        check(not bad, "imapgate ctl: sanitizer reports: %s" % bad[:5])
        if busy_retry and r.returncode == 1 and "busy" in err:
            time.sleep(0.01)
            continue
        break
    if ok:
        check(r.returncode == 0, "ctl %s -> exit %s: %s%s" % (" ".join(args), r.returncode,
                                                            out, err))
    return r.returncode, out, err


def ctl_json(g, *args):
    """`imapgate ctl --json ARGS`, parsed."""
    _, out, _ = ctl(g, *args, js=True)
    try:
        return json.loads(out)
    except ValueError as e:
        raise Fail("ctl --json %s: not JSON (%s): %r" % (" ".join(args), e, out[:500]))


def ctl_raw(path, data, timeout=5.0):
    """Send data on a fresh connection to the control socket; everything
    read until it closes."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
        s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk
    finally:
        s.close()


def server_admin(g):
    """{server name: admin state} from `ctl --json servers`."""
    return {x["server"]: x["admin"] for x in ctl_json(g, "servers")["servers"]}


def metrics(g):
    """Parsed /metrics of g."""
    return ops.parse_metrics(ops.scrape(g.mport)[1])


def log_errors(g):
    """level=error lines of g's log after g.mark."""
    return [x for x in g.log_text()[g.mark:].splitlines() if "level=error" in x]


# ------------------------------------------------------------ Dovecot

def dovecots(env, names, users):
    """RouteDovecots (users' INBOX: one message `Subject: server=NAME user=U`),
    stopped with the test."""
    ds = route.start_dovecots(os.path.join(env.tmp, "dc%d" % (env.nth + 1)),
                              [(n, users) for n in names])
    env.backends.extend(ds)
    return ds


def direct_ids(d, user, pw):
    """Message-IDs in user's INBOX on Dovecot d (straight to it)."""
    c = harness.Client(d.port)
    c.login(user, pw)
    n = c.select()
    ids = []
    if n:
        _, items = c.cmd("UID FETCH 1:* (BODY.PEEK[HEADER.FIELDS (MESSAGE-ID)])")
        for text, lits in items:
            for lit in lits:
                m = re.search(rb"(?i)Message-ID: *(<[^>]+>)", lit)
                if m:
                    ids.append(m.group(1).decode())
    c.logout()
    return ids


def landed(c):
    """(server, user) a logged-in harness.Client is on, from INBOX message 1."""
    c.select()
    _, items = c.cmd("UID FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    for text, lits in items:
        if lits:
            return route.parse_subject(lits[0])
    raise Fail("no Subject literal in %r" % items)


def probe(g, user, pw, tls=True):
    """A new session through g: the server it lands on (then LOGOUT)."""
    c = tlsc.tls_client(g.port, common_ctx[0], timeout=10) if tls else \
        tlsc.plain_client(g.plain, timeout=10)
    c.login(user, pw)
    server, who = landed(c)
    check(who == user, "landed in %r's mailbox, want %r" % (who, user))
    c.logout()
    return server


common_ctx = [None]     # the env's TLS client context (set in main)


# ------------------------------------------------------------ IDLE fleet

class IdleConn:
    """One plaintext session driven by the Fleet: LOGIN, SELECT, read the
    seeded Subject (which server), IDLE; then records what comes."""

    SCRIPT = [("a", "LOGIN %s %s"), ("b", "SELECT INBOX"),
              ("c", "UID FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])"), ("d", "IDLE")]
    TAGS = {"a", "b", "c", "d"}

    def __init__(self, port, user, pw, parent=None):
        self.user, self.pw, self.parent = user, pw, parent
        self.child = None
        self.opened = time.monotonic()
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.sock.setblocking(False)
        self.local = self.sock.getsockname()[1]
        self.stream = Stream()
        self.step = -1
        self.server = None
        self.idle_at = None
        self.pushed = []        # (time, text) received in IDLE
        self.bye = self.bye_at = None
        self.eof_at = None
        self.how = None
        self.error = None

    def fail(self, what):
        """Record the first problem of this connection."""
        if self.error is None:
            self.error = "%s (port %d, server %s): %s" % (self.user, self.local, self.server, what)

    def send(self, text):
        try:
            self.sock.sendall(text.encode())
        except OSError as e:
            self.fail("send: %s" % e)

    def on_data(self, data, now):
        self.stream.feed(data)
        try:
            items = self.stream.items()
        except Fail as e:
            self.fail(str(e))
            return
        for text, lits in items:
            self.on_item(text, lits, now)

    def on_item(self, text, lits, now):
        if self.bye is not None:
            self.fail("a response after the BYE: %r" % text[:200])
            return
        if not well_formed(text, self.TAGS):
            self.fail("not a response: %r" % text[:200])
            return
        if text.startswith(b"* BYE"):
            self.bye, self.bye_at = text, now
            if lits:
                self.fail("BYE with a literal: %r" % text)
            return
        if self.step == -1:
            if not text.startswith(b"* OK"):
                self.fail("greeting %r" % text)
                return
            self.step = 0
            self.send("a LOGIN %s %s\r\n" % (self.user, self.pw))
            return
        tag = self.SCRIPT[self.step][0]
        if tag == "c" and text.startswith(b"* 1 FETCH") and lits:
            self.server = route.parse_subject(lits[0])[0]
            return
        if tag == "d":
            if self.idle_at is None and text.startswith(b"+"):
                self.idle_at = now
                return
            if self.idle_at is not None and not text.startswith(b"d "):
                self.pushed.append((now, text))
                return
        if text.startswith(tag.encode() + b" "):
            if not text.startswith(tag.encode() + b" OK"):
                self.fail("%s -> %r" % (self.SCRIPT[self.step][1].split()[0], text))
                return
            self.step += 1
            if self.step < len(self.SCRIPT):
                t, cmd = self.SCRIPT[self.step]
                self.send("%s %s\r\n" % (t, cmd % (self.user, self.pw) if "%" in cmd else cmd))

    def on_eof(self, now, how):
        self.eof_at, self.how = now, how
        if not self.stream.at_boundary():
            self.fail("closed inside a response: %r" % bytes(self.stream.buf[:200]))


class Fleet(threading.Thread):
    """Many IdleConns on one selector thread; reconnects those closed
    after a BYE when reconnect is set."""

    def __init__(self, port, users, reconnect=False):
        super().__init__(daemon=True)
        self.port = port
        self.users = users          # [(user, password)]
        self.reconnect = reconnect
        self.sel = selectors.DefaultSelector()
        self.conns = []
        self.pending = collections.deque()
        self.lock = threading.Lock()
        self.halt = False
        self.errors = []

    def add(self, n):
        """Open n more sessions (users in turn)."""
        with self.lock:
            for i in range(n):
                u, p = self.users[(len(self.conns) + len(self.pending)) % len(self.users)]
                self.pending.append((u, p, None))

    def _open(self, user, pw, parent):
        try:
            c = IdleConn(self.port, user, pw, parent)
        except OSError as e:
            self.errors.append("connect for %s: %s" % (user, e))
            return
        if parent is not None:
            parent.child = c
        self.sel.register(c.sock, selectors.EVENT_READ, c)
        with self.lock:
            self.conns.append(c)

    def run(self):
        while not self.halt:
            with self.lock:
                setting_up = sum(1 for c in self.conns if c.idle_at is None and c.eof_at is None)
            while self.pending and setting_up < OPEN_BATCH:
                with self.lock:
                    u, p, parent = self.pending.popleft()
                self._open(u, p, parent)
                setting_up += 1
            for key, _ in self.sel.select(0.02):
                c = key.data
                how = None
                try:
                    data = c.sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError as e:
                    data, how = b"", "error %s" % e
                now = time.monotonic()
                if data:
                    c.on_data(data, now)
                    continue
                c.on_eof(now, how or "eof")
                self.sel.unregister(c.sock)
                c.sock.close()
                if self.reconnect and c.bye is not None and not self.halt:
                    with self.lock:
                        self.pending.append((c.user, c.pw, c))

    def snapshot(self):
        with self.lock:
            return list(self.conns)

    def wait(self, pred, timeout, what):
        """Wait until pred(snapshot) holds; Fail with what after timeout."""
        end = time.monotonic() + timeout
        while True:
            conns = self.snapshot()
            if pred(conns):
                return conns
            bad = [c.error for c in conns if c.error] + self.errors
            check(not bad, "%s: %d sessions failed, first: %s" % (what, len(bad), bad[:3]))
            check(time.monotonic() < end, "%s: not after %.0fs" % (what, timeout))
            time.sleep(0.05)

    def close(self):
        """Stop the thread and close every connection."""
        self.halt = True
        if self.is_alive():
            self.join(timeout=10)
        for c in self.snapshot():
            if c.eof_at is None:
                try:
                    c.sock.close()
                except OSError:
                    pass


def all_idle(n):
    """Predicate: n sessions (first generation) in IDLE."""
    return lambda conns: sum(1 for c in conns if c.parent is None and c.idle_at) >= n


# ------------------------------------------------------------ busy clients

class Kicked(Exception):
    """The session got a BYE."""


def clean_message(mid, user, size, rnd):
    """A message of about size bytes made of whole CRLF lines (so Dovecot
    stores it byte for byte) with Message-ID mid."""
    head = ("From: Ctl <ctl@example.org>\r\nTo: %s <%s@example.org>\r\nSubject: append %s\r\n"
            "Date: Mon, 01 Jan 2024 12:00:00 +0000\r\nMessage-ID: %s\r\n\r\n"
            % (user, user, mid, mid)).encode()
    table = bytes(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[i & 63]
                  for i in range(256))
    lines = max(1, (size - len(head)) // 78)
    raw = rnd.randbytes(lines * 76).translate(table)
    return head + b"".join(raw[i * 76:(i + 1) * 76] + b"\r\n" for i in range(lines))


class Busy(threading.Thread):
    """One user's FETCH/APPEND loop over TLS through imapgate, reconnecting
    after a BYE.  Checks every response it reads: well-formed, literals
    exact, a BYE only as the first response to a command (no command in
    flight), nothing after it."""

    def __init__(self, g, user, pw, seed):
        super().__init__(daemon=True)
        self.g, self.user, self.pw = g, user, pw
        self.rnd = random.Random(seed)
        self.halt = threading.Event()
        self.sessions = []      # {"server", "start", "bye", "bye_at"}
        self.acked = []         # (server, Message-ID)
        self.unacked = []       # (server, Message-ID): APPEND answered by a BYE
        self.mine = collections.defaultdict(list)   # server -> [(uid, bytes)]
        self.errors = []
        self.ops = 0
        self.n = 0
        self.doing = "connect"
        self.send_failures = []

    def run(self):
        while not self.halt.is_set():
            try:
                self.session()
            except Kicked:
                pass
            except Exception as e:  # recorded; the test fails on any
                sess = self.sessions[-1] if self.sessions else {}
                self.errors.append("%s: %s: %s (during %s, server %s, %.3fs into the session, "
                                   "at %.3f)" % (self.user, type(e).__name__, e, self.doing,
                                                 sess.get("server"),
                                                 time.monotonic() - sess.get("start", 0),
                                                 time.monotonic()))
                time.sleep(0.2)

    def read(self, c, sess, tag, first):
        """One response to the command tagged tag; first: nothing of its
        answer came yet.  A BYE raises Kicked after checking the close."""
        text, lits = c.read_item()
        if text.startswith(b"* BYE"):
            sess["bye"], sess["bye_at"] = text, time.monotonic()
            if not first:
                self.errors.append("%s: BYE inside the answer to %s: %r" % (self.user, tag, text))
            rest, how = common.read_to_close(c, timeout=5)
            if rest:
                self.errors.append("%s: %r after the BYE (%s)" % (self.user, rest[:200], how))
            raise Kicked()
        if not well_formed(text, {tag}):
            raise Fail("not a response: %r" % text[:200])
        return text, lits

    def send(self, c, sess, tag, data):
        """Send data; if the connection is gone (the BYE came and imapgate
        closed while we were sending), the BYE must still be readable."""
        try:
            c.send(data)
        except (OSError, ssl.SSLError) as e:
            self.send_failures.append(repr(e))
            try:
                self.read(c, sess, tag, True)
            except Kicked:
                raise
            except Exception as e2:     # the BYE was lost
                raise Fail("send failed (%r), then no BYE to read: %s: %s"
                           % (e, type(e2).__name__, e2))
            raise Fail("send failed (%r), yet the session answers" % e)

    def command(self, c, sess, line):
        """Send line, read to its tagged OK; returns (tagged, items)."""
        tag = c.next_tag()
        self.doing = line
        self.send(c, sess, tag, ("%s %s\r\n" % (tag, line)).encode())
        items, first = [], True
        while True:
            text, lits = self.read(c, sess, tag, first)
            first = False
            if text.startswith(tag.encode() + b" "):
                check(text.startswith(tag.encode() + b" OK"), "%s -> %r" % (line.split()[0], text))
                return text, items
            items.append((text, lits))

    def append(self, c, sess, sync):
        self.n += 1
        mid = "<ctl.%s.%d.%d@imapgate.test>" % (self.user, self.n, self.rnd.randrange(1 << 30))
        msg = clean_message(mid, self.user, self.rnd.randrange(APPEND_MIN, APPEND_MAX), self.rnd)
        server = sess["server"]
        tag = c.next_tag()
        head = ("%s APPEND INBOX {%d%s}\r\n" % (tag, len(msg), "" if sync else "+")).encode()
        self.doing = head.decode().strip()
        try:
            if sync:
                self.send(c, sess, tag, head)
                text, _ = self.read(c, sess, tag, True)
                check(text.startswith(b"+"), "APPEND: no continuation, got %r" % text)
                c.send(msg + b"\r\n")
            else:
                self.send(c, sess, tag, head + msg + b"\r\n")
            first = not sync
            while True:
                text, _ = self.read(c, sess, tag, first)
                first = False
                if text.startswith(tag.encode() + b" "):
                    break
        except Kicked:
            self.unacked.append((server, mid))
            raise
        check(text.startswith(tag.encode() + b" OK"), "APPEND -> %r" % text)
        m = re.search(rb"\[APPENDUID \d+ (\d+)\]", text)
        check(m is not None, "APPEND OK without APPENDUID: %r" % text)
        self.acked.append((server, mid))
        self.mine[server].append((int(m.group(1)), msg))

    def fetch(self, c, sess):
        server = sess["server"]
        if self.mine[server] and self.rnd.random() < 0.8:
            uid, want = self.rnd.choice(self.mine[server])
            _, items = self.command(c, sess, "UID FETCH %d BODY.PEEK[]" % uid)
            got = [lits[-1] for text, lits in items if b"FETCH" in text and lits]
            check(got == [want], "UID FETCH %d: %s bytes, want exactly the %d appended"
                  % (uid, [len(x) for x in got], len(want)))
        else:
            _, items = self.command(c, sess, "FETCH 1:* (UID FLAGS RFC822.SIZE)")
            check(len(items) >= 1 + len(self.mine[server]), "FETCH 1:*: %d responses" % len(items))

    def session(self):
        sess = {"server": None, "start": time.monotonic(), "bye": None, "bye_at": None}
        self.sessions.append(sess)
        c = tlsc.tls_client(self.g.port, common_ctx[0], timeout=15)
        try:
            self.command(c, sess, "LOGIN %s %s" % (self.user, self.pw))
            self.command(c, sess, "SELECT INBOX")
            _, items = self.command(c, sess, "UID FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
            lits = [x for _, ls in items for x in ls]
            check(lits, "no Subject literal")
            sess["server"], who = route.parse_subject(lits[0])
            check(who == self.user, "landed in %s's mailbox" % who)
            while not self.halt.is_set():
                r = self.rnd.random()
                if r < 0.5:
                    self.fetch(c, sess)
                else:
                    self.append(c, sess, sync=r < 0.75)
                self.ops += 1
                time.sleep(self.rnd.uniform(0.0, 0.04))
        finally:
            c.close()


# ------------------------------------------------------------ 1. drain

def t_drain_server(env):
    """server A drain spread 10s under 200 IDLE and 20 busy sessions."""
    idle_users = [("i%02d" % i, "pw-i%02d" % i) for i in range(10)]
    busy_users = [("b%02d" % i, "pw-b%02d" % i) for i in range(BUSY_SESSIONS)]
    users = dict(idle_users + busy_users + [("probe", "pw-probe")])
    A, B = dovecots(env, ["A", "B"], users)
    g = start_gate(env, [A.port, B.port])
    name = {"A": g.names[0], "B": g.names[1]}
    fleet = Fleet(g.plain, idle_users, reconnect=True)
    busy = [Busy(g, u, p, seed=i) for i, (u, p) in enumerate(busy_users)]
    try:
        t_setup = time.monotonic()
        fleet.start()
        fleet.add(IDLE_SESSIONS)
        fleet.wait(all_idle(IDLE_SESSIONS), 60, "%d sessions in IDLE" % IDLE_SESSIONS)
        for b in busy:
            b.start()
        end = time.monotonic() + WAIT
        while any(b.ops < 3 for b in busy) and time.monotonic() < end:
            check(not any(b.errors for b in busy), "busy: %s" % [b.errors for b in busy if b.errors][:2])
            time.sleep(0.1)
        check(all(b.ops >= 3 for b in busy), "busy clients did not get going")
        conns = fleet.snapshot()
        on = collections.Counter(c.server for c in conns)
        busy_on = collections.Counter(b.sessions[-1]["server"] for b in busy)
        say("   set up in %.1fs: IDLE sessions %s, busy sessions %s"
            % (time.monotonic() - t_setup, dict(on), dict(busy_on)))
        check(on["A"] > 0 and on["B"] > 0 and busy_on["A"] > 0,
              "round-robin put nothing on one server: %s %s" % (on, busy_on))
        # What the control socket says agrees with where the clients landed.
        listed = ctl_json(g, "sessions", "server", name["A"])
        check(listed["count"] == len(listed["sessions"]), "count %s != %d listed"
              % (listed["count"], len(listed["sessions"])))
        want_ports = {c.local for c in conns if c.server == "A"}
        got_ports = {int(s["client"].rsplit(":", 1)[1]) for s in listed["sessions"]
                     if s["client"].rsplit(":", 1)[1].isdigit()}
        check(want_ports <= got_ports, "IDLE sessions on A not listed: %d of %d"
              % (len(want_ports - got_ports), len(want_ports)))
        check(listed["count"] == on["A"] + busy_on["A"], "ctl lists %d on A, clients say %d"
              % (listed["count"], on["A"] + busy_on["A"]))
        check(all(s["server"] == name["A"] and s["state"] == "Selected" for s in listed["sessions"]),
              "a listed session is not Selected on A: %r" % listed["sessions"][:2])
        ids_a = {s["id"] for s in listed["sessions"]}

        t0 = time.monotonic()
        say("   drain at %.3f" % t0)
        _, out, _ = ctl(g, "server", name["A"], "drain", "spread", "10s")
        m = re.search(r"kicked (\d+) session\(s\) over 10000 ms", out)
        check(m is not None, "drain answer %r" % out)
        kicked = int(m.group(1))
        check(kicked == len(ids_a), "drain kicked %d, %d were on A" % (kicked, len(ids_a)))
        check(server_admin(g)[name["A"]] == "draining", "A is not draining")
        # Meanwhile: new sessions all go to B; A's list only shrinks.
        series, probes = [], collections.Counter()
        a_conns = [c for c in conns if c.server == "A"]
        while time.monotonic() - t0 < DRAIN_LATEST + 3:
            probes[probe(g, "probe", users["probe"], tls=len(series) % 2 == 0)] += 1
            now = ctl_json(g, "sessions", "server", name["A"])
            series.append((round(time.monotonic() - t0, 1), now["count"]))
            new = {s["id"] for s in now["sessions"]} - ids_a
            check(not new, "new sessions on A while it drains: %s" % sorted(new))
            busy_a_left = [b for b in busy for s in b.sessions
                           if s["server"] == "A" and s["bye"] is None and s["start"] < t0]
            if now["count"] == 0 and all(c.bye for c in a_conns) and not busy_a_left:
                break
            time.sleep(0.3)
        say("   sessions on A over time (s, count): %s" % series)
        check(series[-1][1] == 0, "sessions still on A: %s" % series[-1:])
        check(set(probes) == {"B"}, "new sessions during the drain landed on %s" % dict(probes))

        errors = [e for b in busy for e in b.errors] + [c.error for c in fleet.snapshot() if c.error]
        check(not errors, "%d client errors, first: %s" % (len(errors), errors[:3]))
        # The BYEs: every session of A, spread over the window, at a boundary.
        byes = []
        for c in a_conns:
            check(c.bye == DRAIN_TEXT, "IDLE session on A got %r" % c.bye)
            byes.append(c.bye_at)
        for b in busy:
            for s in b.sessions:
                if s["server"] == "A" and s["start"] < t0:
                    check(s["bye"] == DRAIN_TEXT, "busy %s on A got %r" % (b.user, s["bye"]))
                    byes.append(s["bye_at"])
        for c in conns:
            if c.server == "B":
                check(c.bye is None, "IDLE session on B got %r" % c.bye)
        check(len(byes) == kicked, "%d BYEs for %d kicked" % (len(byes), kicked))
        per = buckets(byes, t0)
        rel = sorted(t - t0 for t in byes)
        say("   %d BYEs from %.2fs to %.2fs; per second: %s"
            % (len(byes), rel[0], rel[-1], [per.get(i, 0) for i in range(int(rel[-1]) + 1)]))
        check(rel[-1] <= DRAIN_LATEST, "last BYE %.2fs after the command" % rel[-1])
        check(rel[-1] >= DRAIN_SPREAD * 0.7, "all BYEs within %.2fs: not spread" % rel[-1])
        check(max(per.values()) <= MAX_SHARE_PER_SECOND * len(byes),
              "%d of %d BYEs in one second" % (max(per.values()), len(byes)))

        # Every client of A came back, on B.
        fleet.wait(lambda cs: all(c.child is not None and c.child.idle_at for c in a_conns),
                   WAIT, "IDLE clients reconnected")
        back = collections.Counter(c.child.server for c in a_conns)
        check(set(back) == {"B"}, "reconnected IDLE clients landed on %s" % dict(back))
        end = time.monotonic() + WAIT
        while time.monotonic() < end:
            late = [s["server"] for b in busy for s in b.sessions if s["start"] > t0]
            if len(late) >= busy_on["A"] and None not in late:
                break
            time.sleep(0.1)
        check(set(late) == {"B"} and len(late) >= busy_on["A"],
              "busy clients after the drain landed on %s" % late)
        say("   %d IDLE and %d busy clients reconnected, all on B; probes %s; sends that "
            "met the close: %s" % (sum(back.values()), len(late), dict(probes),
                                   [x for b in busy for x in b.send_failures]))

        # A comes back.
        _, out, _ = ctl(g, "server", name["A"], "enable")
        check(re.search(r"%s +up +enabled" % re.escape(name["A"]), out), "enable answer %r" % out)
        again = collections.Counter(probe(g, "probe", users["probe"]) for _ in range(6))
        check(again["A"] >= 1, "after enable no new session reached A: %s" % dict(again))
        say("   after `server A enable`: probes %s" % dict(again))
    finally:
        for b in busy:
            b.halt.set()
        for b in busy:
            b.join(timeout=20)
        fleet.close()

    # Every APPEND that got OK is on its server (and only there); none that
    # got the BYE instead is anywhere.
    errors = [e for b in busy for e in b.errors] + [c.error for c in fleet.snapshot() if c.error]
    check(not errors, "%d client errors, first: %s" % (len(errors), errors[:3]))
    servers = {"A": A, "B": B}
    acked = unacked = 0
    for b in busy:
        have = {s: set(direct_ids(d, b.user, b.pw)) for s, d in servers.items()}
        for server, mid in b.acked:
            check(mid in have[server], "%s: APPEND %s got OK on %s but is not there"
                  % (b.user, mid, server))
            for other in servers:
                if other != server:
                    check(mid not in have[other], "%s: APPEND %s is on %s too" % (b.user, mid, other))
        for server, mid in b.unacked:
            check(all(mid not in ids for ids in have.values()),
                  "%s: APPEND %s got a BYE, not an OK, but is stored" % (b.user, mid))
        acked += len(b.acked)
        unacked += len(b.unacked)
    say("   %d APPENDs with OK all stored on their server; %d answered by the BYE, none stored; "
        "%d busy operations" % (acked, unacked, sum(b.ops for b in busy)))
    check(not log_errors(g), "imapgate logged errors: %s" % log_errors(g)[:3])


# ------------------------------------------------------------ 2. kick (WildDuck)

class NodeScript:
    """node ctl_imapflow.js as a child; its lines with a deadline."""

    def __init__(self, port, user, pw):
        self.p = subprocess.Popen(["node", NODE_SCRIPT, str(port), user, pw],
                                  stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        self.buf = b""
        self.lines = []

    def expect(self, prefix, timeout=20.0):
        """The text after prefix of the next line starting with it."""
        import select as sel
        end = time.monotonic() + timeout
        while True:
            while b"\n" not in self.buf:
                left = end - time.monotonic()
                check(left > 0, "imapflow silent; so far %r" % self.lines)
                r, _, _ = sel.select([self.p.stdout], [], [], left)
                if r:
                    data = os.read(self.p.stdout.fileno(), 4096)
                    check(data, "imapflow script ended; so far %r" % self.lines)
                    self.buf += data
            i = self.buf.index(b"\n")
            line, self.buf = self.buf[:i].decode("utf-8", "replace"), self.buf[i + 1:]
            self.lines.append(line)
            check(not line.startswith("ERROR"), "imapflow: %s" % line)
            if line.startswith(prefix):
                return line[len(prefix):].strip()

    def stop(self):
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.p.wait(timeout=5)
        self.p.stdout.close()


def t_kick_wildduck(env):
    """kick user testuser: imapflow and imaplib in IDLE see the BYE,
    reconnect, and go on."""
    try:
        import test_guard_imapflow as gif
        why = gif.ensure_imapflow()
    except Fail as e:
        raise Fail("imapflow: %s" % e)
    if why:
        say("   SKIP: %s" % why)
        return "skip"
    wd = common.start_wildduck(env)
    if wd is None:
        return "skip"
    g = start_gate(env, [wd.port], log_level="debug")
    mark = len(g.log_text())
    node = NodeScript(g.port, "testuser", "pass")
    try:
        exists = node.expect("OPEN ")
        node.expect("IDLING")
        conn = imaplib.IMAP4_SSL("127.0.0.1", g.port, ssl_context=common_ctx[0], timeout=15)
        conn.login("testuser", "pass")
        typ, _ = conn.select("INBOX")
        check(typ == "OK", "imaplib SELECT %s" % typ)
        tag = conn._new_tag()
        conn.send(tag + b" IDLE\r\n")
        line = conn.readline()
        check(line.startswith(b"+"), "imaplib IDLE -> %r" % line)
        # Both in IDLE as imapgate sees it.
        end = time.monotonic() + 10
        while len(re.findall(r"msg=lifecycle what=client transition=\S+->idle",
                             g.log_text()[mark:])) < 2:
            check(time.monotonic() < end, "two sessions did not enter IDLE")
            time.sleep(0.05)
        listed = ctl_json(g, "sessions", "user", "testuser")
        check(listed["count"] == 2, "sessions user testuser: %r" % listed)
        _, out, _ = ctl(g, "kick", "user", "nobody-here")
        check("kicked 0 session(s)" in out, "kick of an absent user: %r" % out)
        _, out, _ = ctl(g, "kick", "user", "testuser", "reason", "Maintenance window 42")
        check("kicked 2 session(s) over 0 ms" in out, "kick answer %r" % out)
        bye = conn.readline()
        check(bye == b"* BYE [UNAVAILABLE] Maintenance window 42\r\n", "imaplib got %r" % bye)
        rest = conn.readline()
        check(rest == b"", "imaplib got %r after the BYE" % rest)
        conn.shutdown()
        conn = imaplib.IMAP4_SSL("127.0.0.1", g.port, ssl_context=common_ctx[0], timeout=15)
        conn.login("testuser", "pass")
        typ, data = conn.select("INBOX")
        check(typ == "OK", "imaplib SELECT after reconnect: %s %r" % (typ, data))
        typ, _ = conn.noop()
        check(typ == "OK", "imaplib NOOP after reconnect: %s" % typ)
        conn.logout()
        say("   imaplib: %r, then reconnected: SELECT (%s messages), NOOP ok"
            % (bye.strip(), data[0].decode()))
        idle_result = node.expect("IDLE-RESULT ")
        reason = node.expect("CLOSED ")
        check("Maintenance window 42" in reason, "imapflow byeReason %r" % reason)
        again = node.expect("AGAIN ")
        check(again == exists, "imapflow: %s messages after reconnect, %s before" % (again, exists))
        node.p.wait(timeout=15)
        check(node.p.returncode == 0, "imapflow script exit %s: %r" % (node.p.returncode, node.lines))
        say("   imapflow: IDLE %s, byeReason %r, reconnected: SELECT (%s), NOOP ok"
            % (idle_result, reason, again))
    finally:
        node.stop()
    ends = [x for x in g.log_text()[mark:].splitlines()
            if "msg=session-end" in x and 'user="testuser"' in x and "reason=kicked" in x]
    check(len(ends) == 2, "%d session-end reason=kicked lines for testuser" % len(ends))
    check(all("bye=kick" in x for x in ends), "session-end without bye=kick: %s" % ends)


# ------------------------------------------------------------ 3. socket

def as_user(user, argv):
    """Run argv as user (runuser); (exit status, output)."""
    r = subprocess.run(["runuser", "-u", user, "--"] + argv, capture_output=True, timeout=20)
    return r.returncode, (r.stdout + r.stderr).decode("utf-8", "replace")


def connect_as(user, path):
    """Connect to the Unix socket path as user (a forked child drops to its
    uid, gid and groups): 0 when it connects, else the errno."""
    pw = pwd.getpwnam(user)
    pid = os.fork()
    if pid == 0:
        code = 100
        try:
            os.initgroups(user, pw.pw_gid)
            os.setgid(pw.pw_gid)
            os.setuid(pw.pw_uid)
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
                code = 0
            except OSError as e:
                code = e.errno
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


MALFORMED = [
    (b"\n", "empty command"),
    (b"json\n", "empty command"),
    (b"frobnicate\n", "unknown command"),
    (b"sessions user\n", "needs a value"),
    (b"sessions state sleepy\n", "state:"),
    (b"sessions client 300.1.2.3\n", "client:"),
    (b"sessions user a user b\n", "unknown or repeated filter"),
    (b"kick\n", "usage: kick"),
    (b"kick user\n", "usage: kick"),
    (b"kick all spread forever\n", "spread:"),
    (b"kick all spread 2h\n", "spread:"),
    (b"kick all because\n", "reason"),
    (b"server 127.0.0.1:1 enable\n", "no such server"),
    (b"server A enable\n", "no such server"),
    (b"x" * 5000 + b"\n", "line too long"),
    (b"x" * 4096 + b"\n", "line too long"),
    (b"x" * 4095 + b"\n", "unknown command"),     # the longest line read whole
    (b"servers\x01\n", "control characters"),
    (b"ses\x00sions\n", "control characters"),
    (b"servers \x1b[2J\n", "control characters"),
    (b"delay user u forever\n", "delay:"),
]


def drain_when_busy(g, tries=3000):
    """`server S drain` while other connections keep the session job busy,
    until one drain is answered `busy`: S's admin state right after that
    answer, or None if no drain was ever answered busy."""
    name = g.names[0].encode()
    stop = threading.Event()

    def lister():
        while not stop.is_set():
            ctl_raw(g.ctl, b"sessions\n")
    ls = [threading.Thread(target=lister, daemon=True) for _ in range(3)]
    for t in ls:
        t.start()
    state = None
    try:
        for _ in range(tries):
            a = ctl_raw(g.ctl, b"server %s drain spread 1s\n" % name)
            if a.startswith(b"error: busy"):
                state = json.loads(ctl_raw(g.ctl, b"json servers\n")[3:])["servers"][0]["admin"]
                break
            check(a.startswith(b"ok\n"), "drain -> %r" % a)
            # enable after a drain calls its kicks off (a job): busy too, then retried.
            for _ in range(BUSY_RETRIES):
                e = ctl_raw(g.ctl, b"server %s enable\n" % name)
                if not e.startswith(b"error: busy"):
                    break
                time.sleep(0.01)
            check(e.startswith(b"ok\n"), "enable -> %r" % e)
    finally:
        stop.set()
        for t in ls:
            t.join(timeout=10)
    ctl(g, "server", g.names[0], "enable")
    return state


def session_of(g, c):
    """The control socket's id of the session of client c."""
    port = c.sock.getsockname()[1]
    for x in ctl_json(g, "sessions")["sessions"]:
        if x["client"].endswith(":%d" % port):
            return x["id"]
    raise Fail("no session for client port %d" % port)


def t_control_socket(env):
    """Mode, other users, malformed commands, 1,000 commands a second."""
    users = {"demo": "demo", "reason": "pw-reason"}
    (d,) = dovecots(env, ["S"], users)
    g = start_gate(env, [d.port])
    problems = []       # daemon bugs: reported together at the end
    st = os.lstat(g.ctl)
    check(stat.S_ISSOCK(st.st_mode), "%s is not a socket" % g.ctl)
    check(stat.S_IMODE(st.st_mode) == 0o600, "mode %04o, want 0600" % stat.S_IMODE(st.st_mode))
    check(st.st_uid == os.geteuid(), "owner %d" % st.st_uid)
    root = os.geteuid() == 0 and shutil.which("runuser") is not None
    if root:
        e = connect_as("nobody", g.ctl)
        check(e == 13, "nobody connecting: %s, want EACCES" % (os.strerror(e) if e else "connected"))
        rc, out = as_user("nobody", [g.binary, "ctl", "-S", g.ctl, "servers"])
        check(rc == 2 and "Permission denied" in out, "ctl as nobody: exit %s %r" % (rc, out))
        say("   mode 0600: nobody gets EACCES (ctl exits 2)")
    else:
        say("   (not root: the other-user checks are skipped)")

    # An error answer must change nothing: a drain answered `busy` must not
    # leave the server draining (no new sessions, and its sessions never kicked).
    state = drain_when_busy(g)
    if state is None:
        say("   (no drain was answered busy: not checked)")
    elif state != "enabled":
        problems.append("`server %s drain spread 1s` answered `error: busy: another command "
                        "runs, try again`, yet `servers` then shows it %r (its sessions are "
                        "not kicked, new sessions do not come)" % (g.names[0], state))
    else:
        say("   a drain answered busy left the server enabled")

    # Every control connection taken by silent clients: ctl must fail cleanly
    # (exit 2 with a message), not die of SIGPIPE.
    held = []
    for _ in range(64):
        h = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        h.connect(g.ctl)
        held.append(h)
    time.sleep(0.2)
    outcomes = collections.Counter()
    for _ in range(20):
        rc, out, err = ctl(g, "servers", ok=False, busy_retry=False)
        outcomes[(rc, err.strip()[:60])] += 1
    for h in held:
        h.close()
    say("   ctl with 64 silent control connections open: %s"
        % ", ".join("exit %s %r x%d" % (k[0], k[1], v) for k, v in outcomes.items()))
    bad = {k: v for k, v in outcomes.items() if k[0] != 2 or not k[1].startswith("imapgate ctl:")}
    if bad:
        problems.append("with 64 silent connections holding the control socket, `imapgate ctl "
                        "servers` ended %s (want exit 2 and a message; -13 is death by SIGPIPE)"
                        % ", ".join("exit %s %r x%d" % (k[0], k[1], v) for k, v in bad.items()))
    end = time.monotonic() + 5
    while ctl(g, "servers", ok=False)[0] != 0 and time.monotonic() < end:
        time.sleep(0.05)
    ctl(g, "servers")

    # A session that must outlive every malformed command (kick ones included).
    keep = tlsc.tls_client(g.port, common_ctx[0])
    keep.login("demo", "demo")
    keep.select()
    for line, want in MALFORMED:
        ans = ctl_raw(g.ctl, line).decode("utf-8", "replace")
        check(ans.startswith("error: ") and want in ans.split("\n")[0] and
              ans.count("\n") == 1 and ans.endswith("\n"),
              "%r -> %r, want one line `error: ...%s...`" % (line[:40], ans[:200], want))
    # Only the first line of a connection is a command.
    ans = ctl_raw(g.ctl, b"servers\nkick all\n").decode()
    check(ans.startswith("ok\n") and "SERVER" in ans, "servers + kick: %r" % ans)
    argvs = [([""], "empty command"), (["frobnicate"], "unknown command"),
             (["sessions", "user"], "needs a value"), (["kick"], "usage: kick"),
             (["server", "127.0.0.9:9", "enable"], "no such server"),
             (["servers\x01"], "control characters"), (["servers", "\x1b[2J"], "control characters"),
             (["x" * 5000], "too long"), (["x" * 4094], "unknown command"),
             (["servers\nkick all"], "a line end in an argument")]
    for argv, want in argvs:
        rc, out, err = ctl(g, *argv, ok=False, busy_retry=False)
        if want is None:
            # One command per connection: the text after the newline never runs.
            if rc != 0 or "SERVER" not in out:
                problems.append("ctl %r: exit %s, %r %r" % (argv, rc, out, err))
            continue
        if rc != 1 or not err.startswith("imapgate ctl: error: ") or want not in err:
            problems.append("ctl %r: exit %s, stderr %r (want exit 1, `imapgate ctl: error: ...%s`)"
                         % ([a[:20] for a in argv], rc, err.strip()[:120], want))
    keep.cmd("NOOP")
    check(ctl(g, "sessions", "count")[1].strip() == "1", "the session did not survive")
    say("   %d malformed lines each got one `error: ...` line; the session survived"
        % len(MALFORMED))

    # control.group: 0660, that group can connect, others cannot.
    if root:
        ng = grp.getgrgid(pwd.getpwnam("nobody").pw_gid)
        g2 = start_gate(env, [d.port], control="  group: %s\n" % ng.gr_name)
        check(g2.wait_log(r"msg=control-listening.*mode=0660", timeout=5) is not None,
              "no control-listening mode=0660")
        st = os.lstat(g2.ctl)
        check(stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == ng.gr_gid,
              "with control.group: mode %04o gid %d" % (stat.S_IMODE(st.st_mode), st.st_gid))
        rc, out = as_user("nobody", [g2.binary, "ctl", "-S", g2.ctl, "servers"])
        check(rc == 0 and "SERVER" in out, "nobody (group %s): exit %s %r" % (ng.gr_name, rc, out))
        e = connect_as("nobody", g2.ctl)
        check(e == 0, "nobody (group %s) connecting: %s" % (ng.gr_name, os.strerror(e)))
        e = connect_as("daemon", g2.ctl)
        check(e == 13, "daemon connecting: %s, want EACCES" % (os.strerror(e) if e else "connected"))
        env.stop_gate(g2)
        say("   control.group %s: mode 0660, nobody connects, daemon gets EACCES" % ng.gr_name)

    # 1,000 commands a second beside a FETCH loop.
    direct = harness.Client(d.port)
    direct.login("demo", "demo")
    direct.select()
    want = direct.fetch_body(1)
    direct.logout()
    lat, stop, ferr = [], threading.Event(), []

    def fetch_loop():
        try:
            while not stop.is_set():
                t = time.monotonic()
                got = keep.fetch_body(1)
                lat.append((t, time.monotonic() - t))
                if got != want:
                    ferr.append("FETCH body differs (%d bytes)" % len(got))
        except Exception as e:      # recorded, checked below
            ferr.append("%s: %s" % (type(e).__name__, e))

    answers = collections.Counter()
    bad = []
    fds0 = len(os.listdir("/proc/%d/fd" % g.proc.pid))

    def hammer(k, t_start, t_end):
        n = 0
        cmds = [b"servers\n", b"sessions count\n", b"json sessions count\n", b"json servers\n"]
        while time.monotonic() < t_end:
            due = t_start + n / (RATE_TARGET / 2.0)
            if due > time.monotonic():
                time.sleep(due - time.monotonic())
            cmd = cmds[(n + k) % len(cmds)]
            try:
                ans = ctl_raw(g.ctl, cmd)
            except OSError as e:
                bad.append("%r: %s" % (cmd, e))
                n += 1
                continue
            if ans.startswith(b"error: busy"):
                answers["busy"] += 1
                continue
            n += 1
            good = {b"servers\n": lambda a: a.startswith(b"ok\nSERVER") and a.count(b"\n") == 3,
                    b"sessions count\n": lambda a: a == b"ok\n1\n",
                    b"json sessions count\n": lambda a: a == b'ok\n{"count":1}\n',
                    b"json servers\n": lambda a: a.startswith(b"ok\n") and
                    len(json.loads(a[3:])["servers"]) == 1}[cmd]
            try:
                fine = good(ans)
            except ValueError:
                fine = False
            answers["ok" if fine else "wrong"] += 1
            if not fine:
                bad.append("%r -> %r" % (cmd, ans[:200]))

    ft = threading.Thread(target=fetch_loop, daemon=True)
    ft.start()
    time.sleep(1.0)
    base_n = len(lat)
    t_start = time.monotonic()
    t_end = t_start + RATE_SECONDS
    hs = [threading.Thread(target=hammer, args=(k, t_start, t_end), daemon=True) for k in range(2)]
    for h in hs:
        h.start()
    for h in hs:
        h.join(timeout=RATE_SECONDS + 20)
    took = time.monotonic() - t_start
    time.sleep(0.3)
    stop.set()
    ft.join(timeout=10)
    check(not ferr, "FETCH loop: %s" % ferr[:3])
    during = sorted(x for t, x in lat if t_start <= t < t_end)
    before = sorted(x for t, x in lat[:base_n])
    done = answers["ok"] + answers["wrong"]
    say("   ctl: %d commands in %.2fs (%.0f/s), %d busy answers retried; FETCH 1 (%d bytes): "
        "%d before (%.0f/s, median %.1f ms), %d during (%.0f/s, median %.1f ms, max %.1f ms)"
        % (done, took, done / took, answers["busy"], len(want), len(before), len(before) / 1.0,
           1000 * before[len(before) // 2] if before else 0, len(during),
           len(during) / RATE_SECONDS, 1000 * during[len(during) // 2] if during else 0,
           1000 * during[-1] if during else 0))
    check(not bad, "%d bad control answers, first: %s" % (len(bad), bad[:3]))
    check(done >= 0.5 * RATE_TARGET * RATE_SECONDS, "only %d commands in %.1fs" % (done, took))
    check(during and during[-1] < FETCH_LATENCY_MAX, "a FETCH took %.2fs" % (during[-1] if during else -1))
    fds1 = len(os.listdir("/proc/%d/fd" % g.proc.pid))
    check(fds1 <= fds0 + 2, "imapgate holds %d descriptors, %d before" % (fds1, fds0))
    keep.logout()
    check(not log_errors(g), "imapgate logged errors: %s" % log_errors(g)[:3])

    # kick ... reason TEXT: the BYE carries the text after the keyword, as
    # typed, with bytes outside printable ASCII as `?`, however the words
    # are separated.  The tab-separated case last: it used to crash imapgate.
    cases = [(b"kick session %s reason Back at ten", "demo", b"Back at ten"),
             (b"kick user reason reason Back at eleven", "reason", b"Back at eleven"),
             (b"kick session %s reason Caf\xc3\xa9 \x7f end", "demo", b"Caf?? ? end"),
             (b"kick session %s  reason  Back at noon", "demo", b"Back at noon"),
             (b"json kick session %s\treason\tBack at one", "demo", b"Back at one")]
    for line, user, want in cases:
        c = tlsc.tls_client(g.port, common_ctx[0])
        c.login(user, users[user])
        c.select()
        if b"%s" in line:
            line = line % session_of(g, c).encode()
        try:
            ans = ctl_raw(g.ctl, line + b"\n")
        except OSError as e:
            ans = ("(%s)" % e).encode()
        if not g.proc.alive():
            time.sleep(0.2)
            problems.append("%r crashed imapgate (status %s); log tail: %s"
                            % (line, g.proc.p.poll(), g.log_text()[-300:].strip().splitlines()[-1:]))
            env.gates.remove(g)
            g.proc.stop()
            break
        check(re.match(rb"^ok\n(kicked 1 session\(s\) over 0 ms|\{\"kicked\":1,\"spread_ms\":0\})\n$",
                       ans), "%r -> %r" % (line, ans))
        data, how = common.read_to_close(c, timeout=5)
        got = b"* BYE [UNAVAILABLE] " + want + b"\r\n"
        if data != got:
            problems.append("%r: the client got %r, want %r" % (line, data, got))
    else:
        say("   kick reasons: spaces, tabs, a user named `reason`, non-ASCII bytes: all right")
    check(not problems, "daemon bugs:\n     " + "\n     ".join(problems))


# ------------------------------------------------------------ 4. SIGHUP

def t_disable_reload(env):
    """server A disable survives SIGHUP (ctl servers, /metrics)."""
    users = {"demo": "demo"}
    A, B = dovecots(env, ["A", "B"], users)
    g = start_gate(env, [A.port, B.port])
    a, b = g.names
    # One session on A first: disable leaves it alone.
    on_a = None
    for _ in range(4):
        c = tlsc.tls_client(g.port, common_ctx[0])
        c.login("demo", "demo")
        if landed(c)[0] == "A":
            on_a = c
            break
        c.logout()
    check(on_a is not None, "no session landed on A")
    _, out, _ = ctl(g, "server", a, "disable")
    check(re.search(r"%s +up +disabled" % re.escape(a), out), "disable answer %r" % out)
    check(ops.value(metrics(g), "imapgate_backend_admin_state", server=a) == 1, "metric before SIGHUP")
    ops.sighup(g, r"msg=reloaded")
    check(server_admin(g) == {a: "disabled", b: "enabled"}, "after SIGHUP: %r" % server_admin(g))
    s = metrics(g)
    check(ops.value(s, "imapgate_backend_admin_state", server=a) == 1 and
          ("imapgate_backend_admin_state", frozenset({("server", b)})) in s and
          ops.value(s, "imapgate_backend_admin_state", server=b) == 0,
          "admin_state after SIGHUP: A %s B %s" % (ops.value(s, "imapgate_backend_admin_state", server=a),
                                                   ops.value(s, "imapgate_backend_admin_state", server=b)))
    got = collections.Counter(probe(g, "demo", "demo") for _ in range(4))
    check(set(got) == {"B"}, "new sessions with A disabled after SIGHUP: %s" % dict(got))
    # A changed config (B weighs 3) reloads too; A stays disabled.
    text = open(g.conf).read().replace("{address: %s}" % b, "{address: %s, weight: 3}" % b)
    ops._write(g.conf, text)
    ops.sighup(g, r"msg=reloaded")
    servers = {x["server"]: x for x in ctl_json(g, "servers")["servers"]}
    check(servers[a]["admin"] == "disabled" and servers[b]["weight"] == 3,
          "after a changed config: %r" % servers)
    check(ops.value(metrics(g), "imapgate_backend_admin_state", server=a) == 1, "metric after 2nd SIGHUP")
    # control.socket moved by a reload: to a directory that does not exist
    # (the old socket must stay), then to a good path (it moves).
    problems = []
    good = open(g.conf).read()
    bad_path = os.path.join(env.tmp, "no-such-dir", "ctl.sock")
    ops._write(g.conf, good.replace("socket: %s\n" % g.ctl, "socket: %s\n" % bad_path))
    ops.sighup(g, r"msg=reload(ed|-failed)")
    if not os.path.exists(g.ctl) or ctl(g, "servers", ok=False)[0] != 0:
        problems.append("a reload that moved control.socket to %s (no such directory) removed "
                        "the old socket %s: no control socket at all until the next good "
                        "reload; log: %s" % (bad_path, g.ctl, [x for x in g.log_text()[g.mark:]
                                                              .splitlines() if "control" in x][-2:]))
    moved = os.path.join(env.tmp, "ctl-moved.sock")
    ops._write(g.conf, good.replace("socket: %s\n" % g.ctl, "socket: %s\n" % moved))
    ops.sighup(g, r"msg=reloaded")
    old, g.ctl = g.ctl, moved
    check(ctl(g, "servers", ok=False)[0] == 0, "no control socket at %s after the reload" % moved)
    check(not os.path.exists(old), "the old socket %s is still there" % old)
    check(server_admin(g)[a] == "disabled", "A not disabled after the socket moved")
    on_a.cmd("NOOP")
    check(landed(on_a)[0] == "A", "the session on A moved")
    on_a.logout()
    ctl(g, "server", a, "enable")
    check(ops.value(metrics(g), "imapgate_backend_admin_state", server=a) == 0, "metric after enable")
    got = collections.Counter(probe(g, "demo", "demo") for _ in range(8))
    check(got["A"] >= 1, "after enable nothing reached A: %s" % dict(got))
    say("   disabled across four reloads (admin_state 1), the session on A kept; enable: %s"
        % dict(got))
    check(not problems, "daemon bugs:\n     " + "\n     ".join(problems))


# ------------------------------------------------------------ 5. sessions vs metrics

def t_sessions_metrics(env):
    """ctl --json sessions parses and agrees with /metrics at a quiet moment."""
    users = {"demo": "demo", "other": "other-pw"}
    (d,) = dovecots(env, ["S"], users)
    g = start_gate(env, [d.port])
    cs = []
    for state in ["notauth", "notauth", "auth", "auth", "selected", "selected", "selected", "idle"]:
        c = tlsc.tls_client(g.port, common_ctx[0]) if len(cs) % 2 else tlsc.plain_client(g.plain)
        if state != "notauth":
            c.login("demo" if len(cs) % 3 else "other", users["demo" if len(cs) % 3 else "other"])
        if state in ("selected", "idle"):
            c.select()
        if state == "idle":
            ops.start_idle(c)
        cs.append(c)
    time.sleep(0.3)
    r = ctl_json(g, "sessions")
    check(r["count"] == len(r["sessions"]) == len(cs), "count %s, %d listed, %d open"
          % (r["count"], len(r["sessions"]), len(cs)))
    s = metrics(g)
    check(ops.total(s, "imapgate_sessions_open") == r["count"],
          "sessions_open %s, ctl %s" % (ops.total(s, "imapgate_sessions_open"), r["count"]))
    names = {"NotAuthenticated": "not_authenticated", "Authenticated": "authenticated",
             "Selected": "selected", "Logout": "logout"}
    per = collections.Counter(names[x["state"]] for x in r["sessions"])
    for st in names.values():
        check(ops.total(s, "imapgate_sessions_open", state=st) == per[st],
              "state %s: metric %s, ctl %d" % (st, ops.total(s, "imapgate_sessions_open", state=st),
                                                per[st]))
    check(per == {"not_authenticated": 2, "authenticated": 2, "selected": 4}, "states %s" % per)
    ports = {c.sock.getsockname()[1] for c in cs}
    check({int(x["client"].rsplit(":", 1)[1]) for x in r["sessions"]} == ports,
          "client addresses %s" % [x["client"] for x in r["sessions"]])
    for x in r["sessions"]:
        check(set(x) >= {"id", "client", "user", "server", "state", "mailbox", "age_ms",
                         "idle_ms", "bytes_in", "bytes_out", "route"}, "fields %s" % sorted(x))
        check((x["user"] == "") == (x["state"] == "NotAuthenticated"), "user %r in %s"
              % (x["user"], x["state"]))
        check((x["mailbox"] == "INBOX") == (x["state"] == "Selected"), "mailbox %r" % x["mailbox"])
    # Filters count what they should.
    for args, n in [(["state", "selected"], 4), (["user", "demo"], sum(1 for x in r["sessions"]
                                                                       if x["user"] == "demo")),
                    (["client", "127.0.0.0/8"], 8), (["client", "10.0.0.0/8"], 0),
                    (["server", g.names[0]], 8), (["session", r["sessions"][3]["id"]], 1)]:
        got = ctl_json(g, "sessions", "count", *args)["count"]
        check(got == n, "sessions count %s: %s, want %d" % (" ".join(args), got, n))
    _, out, _ = ctl(g, "sessions")
    check(len(out.strip().split("\n")) == 1 + len(cs), "table %r" % out)
    check(ctl(g, "sessions", "count")[1] == "%d\n" % len(cs), "plain count")
    say("   %d sessions: ctl and /metrics agree (%s)" % (len(cs), dict(per)))
    for c in cs:
        c.close()
    end = time.monotonic() + 5
    while ctl_json(g, "sessions", "count")["count"] and time.monotonic() < end:
        time.sleep(0.05)
    check(ctl_json(g, "sessions", "count")["count"] == 0 and
          ops.total(metrics(g), "imapgate_sessions_open") == 0, "sessions left after close")


# ------------------------------------------------------------ 5b. quiet points

def t_kick_quiet_point(env):
    """kick session waits for a quiet point: an APPEND literal half sent
    finishes and gets its OK first; a FETCH of 4 MB stalled by a client
    that does not read comes whole, with its OK, before the BYE."""
    users = {"demo": "demo"}
    (d,) = dovecots(env, ["S"], users)
    g = start_gate(env, [d.port])
    kicked = b"* BYE [UNAVAILABLE] Please reconnect\r\n"
    c = tlsc.tls_client(g.port, common_ctx[0])
    c.login("demo", "demo")
    c.select()
    mid = "<quiet.%d@imapgate.test>" % os.getpid()
    msg = clean_message(mid, "demo", 300 * 1024, random.Random(5))
    c.send(b"a APPEND INBOX {%d}\r\n" % len(msg))
    check(c.readline().startswith(b"+"), "APPEND: no continuation")
    c.send(msg[:len(msg) // 2])
    time.sleep(0.2)
    sid = session_of(g, c)
    _, out, _ = ctl(g, "kick", "session", sid)
    check("kicked 1 session(s)" in out, "kick answer %r" % out)
    c.sock.settimeout(0.7)
    try:
        early = c.sock.recv(100)
    except (socket.timeout, TimeoutError):
        early = b""
    c.sock.settimeout(harness.IO_TIMEOUT)
    check(early == b"", "inside the APPEND literal the client got %r" % early)
    check(ctl_json(g, "sessions", "count", "session", sid)["count"] == 1, "session gone mid-APPEND")
    c.send(msg[len(msg) // 2:] + b"\r\n")
    data, how = common.read_to_close(c, timeout=5)
    check(re.match(rb"^(\* \d+ (EXISTS|RECENT)\r\n)*a OK [^\r\n]*\r\n" + re.escape(kicked) + rb"$",
                   data) is not None,
          "after the literal: %r (%s)" % (data, how))
    check(mid in direct_ids(d, "demo", "demo"), "the APPEND finished by the kicked session is missing")

    # A stalled FETCH: the BYE comes after the whole response.
    direct = harness.Client(d.port)
    direct.login("demo", "demo")
    direct.select()
    big = clean_message("<quiet-big.%d@imapgate.test>" % os.getpid(), "demo", 4 << 20,
                        random.Random(6))
    uid = int(re.search(rb"APPENDUID \d+ (\d+)", direct.append("INBOX", big)).group(1))
    want = direct.fetch_body(uid)
    direct.logout()
    c = env.small_client(g, 32 * 1024)
    c.login("demo", "demo")
    c.select()
    sid = session_of(g, c)
    c.send(b"f UID FETCH %d BODY.PEEK[]\r\n" % uid)
    time.sleep(0.5)                 # the client reads nothing: imapgate holds the rest
    _, out, _ = ctl(g, "kick", "session", sid)
    check("kicked 1 session(s)" in out, "kick answer %r" % out)
    time.sleep(0.3)
    data, how = common.read_to_close(c, timeout=20)
    st = Stream()
    st.feed(data)
    items = st.items()
    check(st.at_boundary(), "the stream ends inside a response")
    texts = [t for t, _ in items]
    check(len(items) == 3 and texts[0].startswith(b"* ") and b"FETCH" in texts[0] and
          texts[1].startswith(b"f OK") and texts[2] == kicked,
          "stalled FETCH then kick: %r" % [t[:80] for t in texts])
    check(items[0][1] == [want], "the FETCH literal differs (%s bytes, want %d)"
          % ([len(x) for x in items[0][1]], len(want)))
    say("   mid-APPEND: OK then BYE, stored; stalled %d-byte FETCH: whole, OK, then BYE (%s)"
        % (len(want), how))


# ------------------------------------------------------------ 6. keepalive

# Linux's SO_TIMESTAMPNS (asm-generic/socket.h); Python's socket module lacks it.
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


class Recorder(threading.Thread):
    """Reads a Client's socket with timestamps into (time, response) items."""

    def __init__(self, c):
        super().__init__(daemon=True)
        self.c = c
        self.stream = Stream()
        self.stream.feed(bytes(c.buf))
        c.buf.clear()
        self.items = []
        self.halt = False
        self.error = None

    def run(self):
        """On a plain socket each chunk is stamped with the kernel's receive
        time (SO_TIMESTAMPNS), not when this thread got to read it: a thread
        held back a second by the GIL on a loaded machine would otherwise
        make two lines a second apart look a second closer."""
        plain = not hasattr(self.c.sock, "cipher")
        if plain:
            self.c.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        offset = time.time() - time.monotonic()
        self.c.sock.settimeout(0.05)
        while not self.halt:
            stamp = None
            try:
                if plain:
                    data, anc, _, _ = self.c.sock.recvmsg(65536, socket.CMSG_SPACE(16))
                    for level, kind, raw in anc:
                        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                            sec, nsec = struct.unpack("qq", raw[:16])
                            stamp = sec + nsec / 1e9 - offset
                else:
                    data = self.c.sock.recv(65536)
            except (socket.timeout, TimeoutError):
                continue
            except OSError as e:
                self.error = "recv: %s" % e
                return
            if not data:
                self.error = "closed"
                return
            now = stamp if stamp is not None else time.monotonic()
            self.stream.feed(data)
            for text, lits in self.stream.items():
                self.items.append((now, text, lits))

    def stop(self):
        self.halt = True
        self.join(timeout=5)
        self.c.sock.settimeout(harness.IO_TIMEOUT)


def t_idle_keepalive(env):
    """idle_keepalive 2s: `* OK Still here` after >= 2 s without output, in
    IDLE only, between the EXISTS the backend pushes; 0: nothing."""
    users = {"demo": "demo", "other": "other-pw"}
    (d,) = dovecots(env, ["S"], users)
    g = start_gate(env, [d.port], timeouts="  idle_keepalive: 2s\n")
    g0 = start_gate(env, [d.port], timeouts="  idle_keepalive: 0\n")
    # Plaintext: the recorder stamps lines with the kernel's arrival time.
    c = harness.Client(g.plain)
    c.login("demo", "demo")
    c.select()
    off = tlsc.tls_client(g0.port, common_ctx[0])
    off.login("other", "other-pw")
    off.select()
    otag = ops.start_idle(off)
    roff = Recorder(off)
    roff.start()
    itag = c.next_tag()
    c.send(("%s IDLE\r\n" % itag).encode())
    rec = Recorder(c)
    rec.start()
    t_begin = time.monotonic()
    time.sleep(5.2)                 # quiet: two keepalives
    quiet_end = time.monotonic()
    # Pushes from another connection at random moments around the period.
    pusher = harness.Client(d.port)
    pusher.login("demo", "demo")
    pusher.select()
    rnd = random.Random(6)
    pushes = 0
    while time.monotonic() - quiet_end < 6.0:
        time.sleep(rnd.uniform(0.3, 2.8))
        if rnd.random() < 0.6:
            pusher.append("INBOX", harness.make_message("push %d" % pushes, size=500, seed=pushes))
        else:
            pusher.cmd("STORE 1 %sFLAGS (\\Flagged)" % "+-"[pushes % 2])
        pushes += 1
    time.sleep(2.6)
    rec.stop()
    check(rec.error is None, "IDLE client: %s" % rec.error)
    items = rec.items
    check(items and items[0][1].startswith(b"+"), "no IDLE continuation: %r" % items[:1])
    prev = items[0][0]
    gaps, kinds = [], collections.Counter()
    for t, text, lits in items[1:]:
        check(not lits and (text == KEEPALIVE or IDLE_PUSH_RX.match(text)),
              "in IDLE: %r" % text[:200])
        if text == KEEPALIVE:
            gaps.append(round(t - prev, 3))
            check(t - prev >= KEEPALIVE_PERIOD, "keepalive %.3fs after the last output (%s)"
                  % (t - prev, [(round(x - t_begin, 3), y[:40]) for x, y, _ in items]))
            check(t - prev <= 2 * KEEPALIVE_PERIOD, "keepalive only %.3fs after the last output"
                  % (t - prev))
        kinds[text.split(b" ")[2 if text[2:3].isdigit() else 1].strip().decode()] += 1
        prev = t
    quiet_ka = [t for t, text, _ in items if text == KEEPALIVE and t <= quiet_end]
    check(len(quiet_ka) >= 2, "%d keepalives in 5.2 quiet seconds" % len(quiet_ka))
    check(kinds["EXISTS"] >= 1, "no EXISTS pushed: %s" % kinds)
    check(rec.stream.at_boundary(), "stream ends inside a response")
    say("   keepalive gaps after the last output (s): %s; in IDLE: %s; %d pushes"
        % (gaps, dict(kinds), pushes))
    # After DONE: no keepalive outside IDLE.
    c.buf += bytes(rec.stream.buf)
    ops.end_idle(c, itag)
    c.cmd("NOOP")
    c.sock.settimeout(2.5)
    try:
        extra = c.sock.recv(100)
    except (socket.timeout, TimeoutError):
        extra = b""
    check(extra == b"", "out of IDLE, silence got %r" % extra)
    c.sock.settimeout(harness.IO_TIMEOUT)
    c.logout()
    pusher.logout()
    roff.stop()
    check(roff.error is None, "keepalive 0 client: %s" % roff.error)
    check(roff.items == [], "idle_keepalive 0: %.0fs of IDLE got %r"
          % (time.monotonic() - t_begin, roff.items[:3]))
    off.buf += bytes(roff.stream.buf)
    ops.end_idle(off, otag)
    off.logout()
    say("   idle_keepalive 0: nothing in %.0fs of IDLE" % (time.monotonic() - t_begin))


# ------------------------------------------------------------ 7. SIGTERM spread

def t_sigterm_spread(env):
    """60 sessions, drain_spread 3s: the BYEs are spread; exit 0."""
    users = [("i%02d" % i, "pw-i%02d" % i) for i in range(6)]
    (d,) = dovecots(env, ["S"], dict(users))
    g = start_gate(env, [d.port], timeouts="  drain_spread: 3s\n", drain="20s")
    fleet = Fleet(g.plain, users)
    fleet.start()
    try:
        fleet.add(SIGTERM_SESSIONS)
        fleet.wait(all_idle(SIGTERM_SESSIONS), 30, "60 sessions in IDLE")
        t0 = time.monotonic()
        os.kill(g.proc.pid, signal.SIGTERM)
        conns = fleet.wait(lambda cs: all(c.eof_at for c in cs), 15, "60 BYEs")
        rc = ops.wait_exit(g, timeout=10)
        t_exit = time.monotonic() - t0
        ops.forget(env, g)
    finally:
        fleet.close()
    check(rc == 0, "exit status %s" % rc)
    errs = [c.error for c in conns if c.error]
    check(not errs, "clients: %s" % errs[:3])
    check(all(c.bye == SHUTDOWN_BYE for c in conns), "BYEs: %s"
          % collections.Counter(c.bye for c in conns))
    rel = sorted(c.bye_at - t0 for c in conns)
    per = buckets([c.bye_at for c in conns], t0)
    say("   60 BYEs from %.2fs to %.2fs, per second %s; exit 0 after %.2fs"
        % (rel[0], rel[-1], [per.get(i, 0) for i in range(int(rel[-1]) + 1)], t_exit))
    check(rel[-1] - rel[0] >= 1.5, "BYEs only %.2fs apart" % (rel[-1] - rel[0]))
    check(max(per.values()) <= 0.6 * len(conns), "%d of 60 BYEs in one second" % max(per.values()))
    check(rel[-1] <= 6.0, "last BYE %.2fs after SIGTERM (spread 3s)" % rel[-1])


def t_drain_called_off(env):
    """server A drain spread 3s, then at once server A enable: the kicks of
    the spread's first turn (due at once) happen, the others are called
    off (msg=control-kick-cancelled) and those sessions live on past the
    window; the same with disable."""
    users = {"demo": "demo"}
    A, B = dovecots(env, ["A", "B"], users)
    g = start_gate(env, [A.port, B.port])
    a = g.names[0]
    for word, want in (("enable", "enabled"), ("disable", "disabled")):
        on_a, others = [], []
        for _ in range(40):
            if len(on_a) == 5:
                break
            c = tlsc.tls_client(g.port, common_ctx[0])
            c.login("demo", "demo")
            (on_a if landed(c)[0] == "A" else others).append(c)
        check(len(on_a) == 5, "only %d sessions landed on A" % len(on_a))
        for c in others:
            c.logout()
        mark = len(g.log_text())
        _, out, _ = ctl(g, "server", a, "drain", "spread", "3s")
        check("kicked 5 session(s) over 3000 ms" in out, "drain answer %r" % out)
        _, out, _ = ctl(g, "server", a, word)
        check(re.search(r"%s +up +%s" % (re.escape(a), want), out), "%s answer %r" % (word, out))
        line = g.wait_log(r"msg=control-kick-cancelled server=%s sessions=\d+" % re.escape(a),
                          after=mark)
        check(line is not None, "no msg=control-kick-cancelled line")
        m = re.search(r"sessions=(\d+)", line)
        cancelled = int(m.group(1))
        time.sleep(3.5)     # past the whole spread
        alive, byes = 0, 0
        for c in on_a:
            try:
                tagged, items = c.cmd("NOOP", ok=False)
                bye = any(t.startswith(b"* BYE") for t, _ in items)
            except (OSError, Fail):
                bye = True
            if bye:
                byes += 1
            else:
                alive += 1
                c.logout()
        say("   %s: %d pending kicks called off, %d sessions alive after the window, %d BYE"
            % (word, cancelled, alive, byes))
        # Each worker's first of the five was due at once (kicked before
        # the command could take it back: two workers, so one or two); the
        # others were waiting and live on.
        check(3 <= cancelled <= 4 and alive == cancelled and byes == 5 - cancelled,
              "%s after drain: %d called off, %d alive, %d BYE" % (word, cancelled, alive, byes))
        ctl(g, "server", a, "enable")


def main():
    env = common.GuardEnv(sys.argv)
    if shutil.which("dovecot") is None:
        say("SKIP: dovecot is not installed (apt-get install dovecot-imapd)")
        sys.exit(harness.SKIP)
    common_ctx[0] = env.tls
    tests = [
        ("server A drain spread 10s: 200 IDLE + 20 busy sessions, two Dovecots", t_drain_server),
        ("kick user: imapflow and imaplib in IDLE (WildDuck)", t_kick_wildduck),
        ("control socket: mode, other users, malformed commands, 1,000/s", t_control_socket),
        ("server disable survives SIGHUP (ctl, /metrics)", t_disable_reload),
        ("ctl --json sessions agrees with /metrics", t_sessions_metrics),
        ("kick waits for a quiet point: mid-APPEND, stalled FETCH", t_kick_quiet_point),
        ("IDLE keepalive 2s, and 0", t_idle_keepalive),
        ("SIGTERM with drain_spread: BYEs spread, exit 0", t_sigterm_spread),
        ("server drain taken back by enable/disable: pending kicks called off",
         t_drain_called_off),
    ]
    only = os.environ.get("IMAPGATE_TEST_ONLY")     # e.g. "1,3": run only those checks
    if only:
        tests = [t for i, t in enumerate(tests, 1) if str(i) in only.split(",")]
    common.run(env, [(name, checked(fn)) for name, fn in tests])


if __name__ == "__main__":
    main()
