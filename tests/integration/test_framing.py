#!/usr/bin/env python3
"""Session-core framing regressions (issue 13): no input crashes imapgate,
nothing slips past its framing, its own output is bounded, secrets stay
out of the log and away from the backend, SASL/IDLE are bounded by the
right timeouts, setup-phase bytes never leak, long status lines are
rewritten.  One case per item of the issue, with the issue's exact bytes
and variants (every mailbox command, two literals in one LOGIN, LITERAL+
and synchronizing, plaintext and TLS listeners, byte-at-a-time and every
split position), plus the 100k pipelined NOOPs with a client that does
not read.

Backends: one private Dovecot for the whole file (harness.Dovecot) and the
scripted fake backend (tests/backends/fake_backend.py) where a behaviour
needs scripting or the exact bytes the backend received.  Every case starts
its own imapgate (log.level debug; listeners: implicit TLS, plaintext, and
STARTTLS with require_tls) and stops it checking for exit status 0, so a
crash fails the case that caused it and no other.

usage: test_framing.py [PATH-TO-IMAPGATE]   (or $IMAPGATE)
"""

import contextlib
import os
import re
import select
import shutil
import socket
import ssl
import sys
import threading
import time

import harness
from harness import Fail, check, say
import test_abuse_common as ac
import test_guard_common as common
import test_tls_common as tc
from fake_backend import FakeBackend

IO = 5.0                    # seconds for one expected reply
SYNC_WAIT = 3.0             # seconds to wait for a sync point (z NOOP) or EOF
QUIET = 0.3                 # seconds of silence that mean "nothing more comes"
LOGIN_RX = re.compile(r"Login: user=<")
STATE_AUTH_RX = r"msg=state\b.*->(Authenticated|Selected)\b"
SELECTED_INBOX_RX = r'msg=state\b.*->Selected\b.*mailbox="INBOX"'
QUICK_HEALTH = "  health: {interval: 1h, timeout: 2s, rise: 2, fall: 2}\n"
LOGIN19 = b"b LOGIN demo demo\r\n"          # 19 bytes, the smuggled command
TAG65 = b"t" * 65                           # one byte over the 64-byte tag limit
FLOOD = 40 << 20            # bare "\n" bytes the non-reading client sends
FLOOD_TIME = 12.0           # seconds the flood may take at most
FLOOD_STALL = 2.0           # seconds without progress that end the flood
FLOOD_ABORT_KIB = 64 << 10  # growth that proves the point: stop sending early
RSS_SLACK_KIB = 6 << 10     # allocator/TLS noise over limits.buffer + max_line
PIPELINED = 100000          # NOOPs in the non-reading pipelined case
NOREAD = 3.0                # seconds that client does not read
PIPE_TIME = 40.0            # seconds for all the answers after it reads again
SMALL_LINE = 1024           # limits.max_line for the long-line cases
PASSWORD_BITS = (b"other-Pw-7", b"Pw-7", b"pass other")
DOVECOT = None              # the shared Dovecot (started in main)


class Lit(bytes):
    """An argument sent as a literal ({n} or {n+})."""


# ----------------------------------------------------------------- imapgate

def gate(env, backend_port, listeners=("tls", "plain", "starttls"), limits="",
         backend="", backend_response="5s", extra="", asan_quarantine=True,
         probe_greeting=True, level="debug"):
    """An imapgate in front of 127.0.0.1:backend_port with one listener per
    entry of listeners ("tls" implicit, "plain" tls none, "starttls" with
    require_tls), log.level debug unless level says otherwise.  g.ports maps
    kind to port, g.port is the first.  Registered in env: stopped and
    checked for exit status 0 after the case.  asan_quarantine=False turns
    ASan's quarantine off (RSS cases: freed memory is then reused, so RSS
    tracks live memory).  probe_greeting: wait for a `* OK` greeting (else
    only for the port to accept).  limits: more `limits:` lines (2-space
    indented); backend: more `backend:` lines; extra: more top-level YAML."""
    env.nth += 1
    g = harness.Imapgate(env.binary, env.tmp, env.cert, env.key, backend_port,
                         name="imapgate%d" % env.nth)
    g.ports = {}
    text = "listen:\n"
    for kind in listeners:
        port = g.port if not g.ports else harness.free_port()
        g.ports[kind] = port
        mode = {"tls": "implicit", "plain": "none", "starttls": "starttls"}[kind]
        text += "  - address: 127.0.0.1:%d\n    tls: %s\n" % (port, mode)
    text += ("tls:\n  certificates:\n    - cert: %s\n      key: %s\n" % (env.cert, env.key))
    text += "backend:\n%s%s  servers:\n    - address: 127.0.0.1:%d\n" % (
        QUICK_HEALTH, backend, backend_port)
    text += "log:\n  level: %s\n" % level
    text += "limits:\n  max_connections_per_ip: 0\n" + limits
    text += "timeouts:\n  backend_connect: 2s\n  backend_response: %s\n" % backend_response
    text += extra
    with open(g.conf, "w") as f:
        f.write(text)
    g.check_config()
    penv = None
    if not asan_quarantine:
        a = os.environ.get("ASAN_OPTIONS", "")
        penv = {"ASAN_OPTIONS": (a + ":" if a else "") + "quarantine_size_mb=0"}
    g.proc = harness.Proc("imapgate", [g.binary, "-c", g.conf], g.logfile, env=penv)
    env.gates.append(g)
    # Ready when a plaintext-greeting listener greets (the backend answers).
    probe = "plain" if "plain" in g.ports else ("starttls" if "starttls" in g.ports else None)
    if probe and probe_greeting:
        harness.wait_port(g.ports[probe], g.proc, greeting=True)
    else:
        harness.wait_port(g.port, g.proc)
    g.wait_log(r"msg=session-end", timeout=3.0)
    g.mark = len(g.log_text())
    return g


def client(env, g, kind, timeout=10.0):
    """A client on g's listener of that kind (greeting read; plaintext on
    the STARTTLS listener)."""
    if kind == "tls":
        return tc.tls_client(g.ports["tls"], env.tls, timeout=timeout)
    return tc.plain_client(g.ports[kind], timeout=timeout)


@contextlib.contextmanager
def watch(g, what):
    """Turn a failure of the body into Fail naming what was done, and say
    so when imapgate died under it (the crash class of issue 13 item 1)."""
    try:
        yield
    except (Fail, OSError, ssl.SSLError) as e:
        end = time.monotonic() + 0.5
        while g.proc.alive() and time.monotonic() < end:
            time.sleep(0.05)
        if not g.proc.alive():
            raise Fail("%s: imapgate DIED (exit status %s): %s"
                       % (what, g.proc.p.returncode, e))
        raise Fail("%s: %s" % (what, e))


def alive(env, g, what):
    """imapgate is up and serves a fresh session (LOGIN, NOOP, LOGOUT)."""
    check(g.proc.alive(), "imapgate died (exit status %s) after %s"
          % (g.proc.p.returncode, what))
    kind = "plain" if "plain" in g.ports else "tls"
    with watch(g, "fresh session after " + what):
        c = client(env, g, kind)
        c.login("demo", "demo")
        c.cmd("NOOP")
        c.logout()


def log_after(g, mark):
    """imapgate's log from offset mark on."""
    return g.log_text()[mark:]


def session_end_after(g, mark, timeout=5.0):
    """(fields, lines) of the first session that ended after log offset
    mark: the session-end fields as a dict and every log line of that session."""
    end = time.monotonic() + timeout
    while True:
        text = log_after(g, mark)
        for line in text.splitlines():
            if "msg=session-end" in line:
                f = dict(re.findall(r'(\w+)=("[^"]*"|\S+)', line))
                sid = f.get("session", "")
                mine = [x for x in text.splitlines() if ("session=%s " % sid) in x]
                return f, mine
        if time.monotonic() >= end:
            raise Fail("no msg=session-end after the case:\n%s" % text[-2000:])
        time.sleep(0.05)


def DOVECOT_client():
    """A plaintext client straight to the shared Dovecot."""
    return harness.Client(DOVECOT.port, timeout=IO)


def reset_received(fb):
    """Forget what the fake backend received so far (fb.received then holds
    only what comes next)."""
    with fb._lock:
        fb._received = bytearray()


def dovecot_logins():
    """How many logins Dovecot has logged so far."""
    return len(LOGIN_RX.findall(DOVECOT.log_text()))


def new_logins(before, want, timeout=3.0):
    """Logins Dovecot logged since it had logged `before`: waits (bounded)
    until `want` are there (its log is written asynchronously), or a short
    while when want is 0, then returns the count."""
    end = time.monotonic() + (timeout if want else 0.2)
    while time.monotonic() < end and dovecot_logins() - before < want:
        time.sleep(0.05)
    if not want:
        time.sleep(max(0.0, end - time.monotonic()))
    return dovecot_logins() - before


# ------------------------------------------------------------------ reading

def gather(c, done, timeout):
    """Read into c.buf until done(bytes so far) holds, EOF, reset or timeout;
    returns (bytes so far, how).  c.buf keeps the bytes."""
    end = time.monotonic() + timeout
    while not done(bytes(c.buf)):
        left = end - time.monotonic()
        if left <= 0:
            return bytes(c.buf), "timeout"
        c.sock.settimeout(left)
        try:
            if c.fill() == 0:
                return bytes(c.buf), "eof"
        except socket.timeout:
            return bytes(c.buf), "timeout"
        except (ssl.SSLError, OSError):
            return bytes(c.buf), "reset"
    return bytes(c.buf), "done"


def tagged_rx(tag):
    """Regex for a tagged status line of tag (at a line start)."""
    return re.compile(rb"(?:^|\r\n)" + re.escape(tag) + rb" (OK|NO|BAD)\b")


def has_tagged(tag):
    """done-predicate for gather: a tagged status line of tag arrived."""
    rx = tagged_rx(tag)
    return lambda d: rx.search(d) is not None and d.endswith(b"\r\n")


def tagged_lines(data, tag):
    """Every line of data that starts with tag and a space."""
    return [x for x in data.split(b"\r\n") if x.startswith(tag + b" ")]


def status_of(data, tag):
    """The status word of tag's only tagged reply in data, or Fail."""
    lines = tagged_lines(data, tag)
    check(len(lines) == 1, "%d tagged replies for %r, want 1: %r"
          % (len(lines), tag, data[-600:]))
    return lines[0].split(b" ")[1]


def ok_tags(data):
    """Tags of tagged OK lines in data."""
    return set(re.findall(rb"(?:^|\r\n)([!-~]+) OK\b", data)) - {b"*", b"+"}


def quiet(c, seconds=QUIET):
    """Bytes that arrive within seconds (b"" when imapgate says nothing)."""
    data, how = gather(c, lambda d: False, seconds)
    c.buf.clear()
    return data


# ------------------------------------------------------------- literal commands

def parts(tag, name, args, plus):
    """The command as the chunks a client sends: with synchronizing literals
    one chunk per continuation wait, with LITERAL+ one chunk."""
    out, cur = [], tag + b" " + name
    for a in args:
        if isinstance(a, Lit):
            cur += b" {%d%s}\r\n" % (len(a), b"+" if plus else b"")
            if not plus:
                out.append(cur)
                cur = b""
            cur += bytes(a)
        else:
            cur += b" " + a
    out.append(cur + b"\r\n")
    return out


def wait_continuation(c, tag, what):
    """Read until a '+' line; Fail if tag is answered instead.  Other lines
    read on the way are kept in c.skipped (see seen())."""
    end = time.monotonic() + IO
    while True:
        check(time.monotonic() < end, "%s: no '+' within %.0fs" % (what, IO))
        c.sock.settimeout(max(0.1, end - time.monotonic()))
        line = c.readline()
        if line.startswith(b"+"):
            return line
        check(not line.startswith(tag + b" "), "%s: %r instead of '+'" % (what, line))
        if not hasattr(c, "skipped"):
            c.skipped = bytearray()
        c.skipped += line


def seen(c):
    """Every byte c received that no helper consumed: lines wait_continuation
    skipped, then the buffer."""
    return bytes(getattr(c, "skipped", b"")) + bytes(c.buf)


def literal_cmd(c, g, tag, name, args, plus, want=(b"OK",)):
    """Send a command whose arguments include literals (waiting for '+'
    after each synchronizing one) and check its tagged status is in want;
    returns (tagged line, untagged items)."""
    what = "%s %s (%s)" % (tag.decode(), name.decode(), "LITERAL+" if plus else "sync")
    chunks = parts(tag, name, args, plus)
    for p in chunks[:-1]:
        c.send(p)
        wait_continuation(c, tag, what)
    c.send(chunks[-1])
    c.sock.settimeout(IO)
    tagged, items = c.response(tag.decode())
    st = tagged.split(b" ")[1] if b" " in tagged else b""
    check(st in want, "%s -> %r" % (what, tagged))
    return tagged, items


# ======================================================= item 1: crash class

class Cases:
    """Run named variants against one imapgate; when a variant kills it (the
    crash class), note the exit status, start a new one and go on, so one
    run lists every variant that fails.  finish() fails the case if any did."""

    def __init__(self, env, start):
        self.env = env
        self.start = start
        self.g = None
        self.n = 0
        self.failed = []

    def gate(self):
        """The current imapgate, (re)started if needed."""
        if self.g is not None and not self.g.proc.alive():
            try:
                self.env.stop_gate(self.g)
            except Fail:
                pass
            self.g = None
        if self.g is None:
            self.g = self.start()
        return self.g

    def run(self, what, fn):
        """fn(gate) for one variant; a Fail is recorded, not raised."""
        self.n += 1
        g = self.gate()
        try:
            with watch(g, what):
                fn(g)
            say("   ok    %s" % what)
        except Fail as e:
            say("   FAIL  %s" % e)
            self.failed.append(what)

    def finish(self):
        """Fail if any variant failed; else check imapgate serves a fresh session."""
        check(not self.failed, "%d of %d variants failed: %s"
              % (len(self.failed), self.n, "; ".join(self.failed)))
        alive(self.env, self.g, "all variants")


def send_waiting(c, chunks, what):
    """Send chunks, waiting for a '+' after each but the last."""
    for p in chunks[:-1]:
        c.send(p)
        wait_continuation(c, p[:p.index(b" ")] if b" " in p else b"*", what)
    c.send(chunks[-1])


LOGIN_VARIANTS = [
    ("issue bytes", [b"a LOGIN {4}\r\n", b"demo demo\r\n"]),
    ("two sync literals", [b"a LOGIN {4}\r\n", b"demo {4}\r\n", b"demo\r\n"]),
    ("two LITERAL+", [b"a LOGIN {4+}\r\ndemo {4+}\r\ndemo\r\n"]),
    ("sync then LITERAL+", [b"a LOGIN {4}\r\n", b"demo {4+}\r\ndemo\r\n"]),
    ("LITERAL+ then sync", [b"a LOGIN {4+}\r\ndemo {4}\r\n", b"demo\r\n"]),
    ("quoted then sync", [b'a LOGIN "demo" {4}\r\n', b"demo\r\n"]),
]


def t_login_literal(env):
    """`a LOGIN {4}\\r\\n`, wait '+', `demo demo\\r\\n` (the issue's bytes) ->
    tagged OK and imapgate alive; variants: two literals in one LOGIN
    (synchronizing, LITERAL+, mixed), on the plaintext and TLS listeners;
    each session then does NOOP and LOGOUT."""
    cases = Cases(env, lambda: gate(env, DOVECOT.port))
    for kind in ("plain", "tls"):
        for name, chunks in LOGIN_VARIANTS:
            def one(g, kind=kind, chunks=chunks, what="%s, %s" % (kind, name)):
                c = client(env, g, kind)
                send_waiting(c, chunks, what)
                data, how = gather(c, has_tagged(b"a"), IO)
                check(status_of(data, b"a") == b"OK", "LOGIN -> %r (%s)" % (data, how))
                c.buf.clear()
                c.cmd("NOOP")
                c.logout()
            cases.run("%s, LOGIN %s" % (kind, name), one)
    cases.finish()


def t_noop_empty_literal(env):
    """`a NOOP {0}\\r\\n\\r\\n` in one write (the issue's bytes), with a wait for
    '+' (imapgate may refuse the literal itself with a tagged BAD instead:
    NOOP takes no argument; then the client sends nothing more), and as
    LITERAL+: exactly one tagged reply (OK or BAD), then the session logs
    in and goes on; imapgate stays up."""
    cases = Cases(env, lambda: gate(env, DOVECOT.port))
    for kind in ("plain", "tls"):
        for name, chunks in (("one write (issue bytes)", [b"a NOOP {0}\r\n\r\n"]),
                             ("wait for +", [b"a NOOP {0}\r\n", b"\r\n"]),
                             ("LITERAL+", [b"a NOOP {0+}\r\n\r\n"])):
            def one(g, kind=kind, chunks=chunks, what=name):
                c = client(env, g, kind)
                c.send(chunks[0])
                if len(chunks) > 1:
                    # '+' or the tagged refusal, whichever comes.
                    rx = tagged_rx(b"a")
                    data, how = gather(c, lambda d: rx.search(d) is not None or
                                       re.search(rb"(?:^|\r\n)\+[^\r\n]*\r\n", d)
                                       is not None, IO)
                    if not rx.search(data):
                        check(how == "done", "neither '+' nor a tagged reply: %r (%s)"
                              % (data, how))
                        c.send(chunks[1])
                data, how = gather(c, has_tagged(b"a"), IO)
                check(status_of(data, b"a") in (b"OK", b"BAD"), "NOOP {0} -> %r" % data)
                c.buf.clear()
                c.login("demo", "demo")
                c.cmd("NOOP")
                c.logout()
            cases.run("%s, NOOP {0} %s" % (kind, name), one)
    cases.finish()


def quoted(name):
    """name as an IMAP quoted string."""
    return b'"' + name.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def t_mailbox_literals(env):
    """After login, every command imapgate reads a mailbox from, with the
    mailbox as a literal (synchronizing and LITERAL+, plaintext and TLS),
    each in its own session: CREATE, DELETE, RENAME (two literals),
    SUBSCRIBE, UNSUBSCRIBE, STATUS (`STATUS {5}\\r\\nINBOX (MESSAGES)`),
    APPEND (mailbox and message literals), EXAMINE, SELECT, and
    GETQUOTAROOT / MYRIGHTS when Dovecot offers QUOTA / ACL.  Each gets
    Dovecot's tagged OK and the session goes on (NOOP); after EXAMINE and
    SELECT the debug log shows the change to Selected with mailbox="INBOX"."""
    msg = harness.make_message("framing literal append", 300, seed=13)
    c = DOVECOT_client()
    c.login("demo", "demo")
    caps = tc.capabilities(c)
    c.logout()
    names = ["CREATE", "DELETE", "RENAME", "SUBSCRIBE", "UNSUBSCRIBE", "STATUS",
             "APPEND", "EXAMINE", "SELECT"]
    for cap, name in (("QUOTA", "GETQUOTAROOT"), ("ACL", "MYRIGHTS")):
        if cap.encode() in caps:
            names.append(name)
        else:
            say("   Dovecot offers no %s: %s not tried" % (cap, name))
    cases = Cases(env, lambda: gate(env, DOVECOT.port))
    inbox = Lit(b"INBOX")
    for kind in ("plain", "tls"):
        for plus in (False, True):
            mode = "LITERAL+" if plus else "sync"
            for name in names:
                box = ('Fr "q" &AOk- %s %s %s' % (kind, mode, name)).encode()
                box2 = box + b" renamed"

                def one(g, kind=kind, plus=plus, name=name, box=box, box2=box2):
                    c = client(env, g, kind)
                    c.login("demo", "demo")
                    setup, cleanup, args = [], [], [Lit(box)]
                    if name == "CREATE":
                        cleanup = ["DELETE " + quoted(box).decode()]
                    elif name == "DELETE":
                        setup = ["CREATE " + quoted(box).decode()]
                    elif name == "RENAME":
                        setup = ["CREATE " + quoted(box).decode()]
                        cleanup = ["DELETE " + quoted(box2).decode()]
                        args = [Lit(box), Lit(box2)]
                    elif name == "UNSUBSCRIBE":
                        setup = ["CREATE " + quoted(box).decode(),
                                 "SUBSCRIBE " + quoted(box).decode()]
                        cleanup = ["DELETE " + quoted(box).decode()]
                    elif name == "SUBSCRIBE":
                        setup = ["CREATE " + quoted(box).decode()]
                        cleanup = ["UNSUBSCRIBE " + quoted(box).decode(),
                                   "DELETE " + quoted(box).decode()]
                    elif name == "STATUS":
                        args = [inbox, b"(MESSAGES)"]
                    elif name == "APPEND":
                        args = [inbox, Lit(msg)]
                    else:
                        args = [inbox]
                    for x in setup:
                        c.cmd(x)
                    mark = len(g.log_text())
                    tagged, items = literal_cmd(c, g, b"m1", name.encode(), args, plus)
                    if name == "STATUS":
                        check(any(t.startswith(b"* STATUS") for t, _ in items),
                              "no * STATUS in %r" % items)
                    if name in ("SELECT", "EXAMINE"):
                        line = g.wait_log(SELECTED_INBOX_RX, timeout=3.0, after=mark)
                        check(line is not None, "no state change to Selected "
                              "mailbox=\"INBOX\" after %s {5}:\n%s"
                              % (name, log_after(g, mark)[-1500:]))
                    c.cmd("NOOP")
                    for x in cleanup:
                        c.cmd(x)
                    c.logout()
                cases.run("%s, %s, %s" % (kind, mode, name), one)
    cases.finish()


SESSION_SYNC = [b"a LOGIN {4}\r\n", b"demo {4}\r\n", b"demo\r\n",
                b"b SELECT {5}\r\n", b"INBOX\r\n", b"c LOGOUT\r\n"]
SESSION_PLUS = b"a LOGIN {4+}\r\ndemo {4+}\r\ndemo\r\nb SELECT {5+}\r\nINBOX\r\nc LOGOUT\r\n"


def check_session_replies(data, what):
    """a (LOGIN), b (SELECT) and c (LOGOUT) each got exactly one tagged OK."""
    for t in (b"a", b"b", b"c"):
        check(status_of(data, t) == b"OK", "%s: %r -> %r" % (what, t, data[-400:]))


def t_byte_at_a_time(env):
    """A whole LOGIN + SELECT + LOGOUT session sent one byte per write
    (synchronizing literals, waiting for each '+'; LITERAL+; plaintext and
    TLS, where every byte is its own TLS record), and the LITERAL+ session
    split in two writes at every position (plaintext and TLS)."""
    cases = Cases(env, lambda: gate(env, DOVECOT.port))
    for kind in ("plain", "tls"):
        for mode, chunks in (("sync", SESSION_SYNC), ("LITERAL+", [SESSION_PLUS])):
            def one(g, kind=kind, chunks=chunks, what="%s %s" % (kind, mode)):
                c = client(env, g, kind)
                if kind == "plain":
                    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                for chunk in chunks:
                    for b in chunk:
                        c.send(bytes([b]))
                        time.sleep(0.001)
                    if chunk.endswith(b"}\r\n"):
                        wait_continuation(c, chunk[:1], what)
                gather(c, has_tagged(b"c"), IO)
                check_session_replies(seen(c), what)
            cases.run("%s, %s session one byte per write" % (kind, mode), one)
    total = len(SESSION_PLUS)
    for kind in ("plain", "tls"):
        def splits(g, kind=kind):
            for k in range(1, total):
                what = "split at byte %d of %d" % (k, total)
                c = client(env, g, kind, timeout=IO)
                if kind == "plain":
                    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                c.send(SESSION_PLUS[:k])
                time.sleep(0.005)
                c.send(SESSION_PLUS[k:])
                data, how = gather(c, has_tagged(b"c"), IO)
                check_session_replies(data, what)
                c.close()
        cases.run("%s, LITERAL+ session split in two writes at each of %d positions"
                  % (kind, total - 1), splits)
    cases.finish()


# =================================================== item 2: smuggling vectors

SMUGGLE = [
    # (name, bytes) sent in one write on the STARTTLS listener before TLS.
    ("issue: quoted string ending in {19+}", b'a NOOP "x{19+}\r\n' + LOGIN19 + b"\r\n"),
    ("issue: invalid tag with {19}", b"a% X {19}\r\n" + LOGIN19 + b"\r\n"),
    ("issue: AUTHENTICATE refused, lines pipelined",
     b"a AUTHENTICATE XNOSUCH\r\nb LOGIN demo demo\r\nc SELECT INBOX\r\n"),
    ("issue: 65-byte tag with {19+}", TAG65 + b" NOOP {19+}\r\n" + LOGIN19 + b"\r\n"),
    ("65-byte tag with {19}", TAG65 + b" NOOP {19}\r\n" + LOGIN19 + b"\r\n"),
    ("quoted string ending in {19}", b'a NOOP "x{19}\r\n' + LOGIN19 + b"\r\n"),
    ("escaped quote, then {19+}", b'a NOOP "x\\"{19+}\r\n' + LOGIN19 + b"\r\n"),
    ("invalid tag with {19+}", b"a% X {19+}\r\n" + LOGIN19 + b"\r\n"),
    ("literal marker glued to an atom", b"a NOOP x{19+}\r\n" + LOGIN19 + b"\r\n"),
    ("no command name, {19+}", b"a {19+}\r\n" + LOGIN19 + b"\r\n"),
    ("AUTHENTICATE PLAIN, lines pipelined",
     b"a AUTHENTICATE PLAIN\r\nb LOGIN demo demo\r\nc SELECT INBOX\r\n"),
]
FOLLOW = b"n1 NOOP\r\nn2 NOOP\r\nn3 CAPABILITY\r\n"


def smuggle_one(env, g, data, what, fb=None):
    """Send data in one write on g's STARTTLS listener (plaintext,
    require_tls), then n1..n3 and read until n3 is answered or the session
    ends.  Checks: no LOGIN succeeded (no b/c OK, no tagged OK for a tag the
    client did not send as a valid command), n1..n3 each got exactly one
    tagged reply when the session went on, session-end user="" and no
    change to Authenticated/Selected in the session's log."""
    mark = len(g.log_text())
    logins = dovecot_logins() if fb is None else 0
    with watch(g, what):
        c = client(env, g, "starttls")
        c.send(data)
        time.sleep(0.05)
        try:
            c.send(FOLLOW)
        except OSError:
            pass
        got, how = gather(c, has_tagged(b"n3"), SYNC_WAIT)
        c.close()
    say("   %-40s -> %s" % (what, b" | ".join(
        x[:60] for x in got.split(b"\r\n") if x and not x.startswith(b"* CAPABILITY")).decode(
            "latin-1")))
    for t in (b"b", b"c"):
        check(not re.search(rb"(?:^|\r\n)" + t + rb" OK", got),
              "%s: smuggled command %r succeeded: %r" % (what, t, got))
    stray = ok_tags(got) - {b"n1", b"n2", b"n3"}
    check(not stray, "%s: tagged OK for %r" % (what, sorted(stray)))
    if how == "done":
        for t in (b"n1", b"n2", b"n3"):
            check(len(tagged_lines(got, t)) == 1, "%s: %r got %d tagged replies "
                  "(tags off by one?): %r" % (what, t, len(tagged_lines(got, t)), got))
    check(not tagged_lines(got, TAG65) or TAG65 not in data,
          "%s: the 65-byte tag was answered as a tag: %r" % (what, got))
    f, lines = session_end_after(g, mark)
    check(f.get("user") == '""', "%s: session-end user=%s" % (what, f.get("user")))
    bad = [x for x in lines if re.search(STATE_AUTH_RX, x)]
    check(not bad, "%s: the session reached %r" % (what, bad[:2]))
    if fb is not None:
        raw = fb.received
        for needle in (b"LOGIN", b"AUTHENTICATE", b"a% X", b'"x{19', b'"x\\"{19', TAG65,
                       b"x{19+}", b"a {19+}"):
            check(needle not in raw, "%s: the backend received %r: %r"
                  % (what, needle, raw[-300:]))
    else:
        n = new_logins(logins, 0)
        check(n == 0, "%s: Dovecot logged %d login(s)" % (what, n))
    check(g.proc.alive(), "%s: imapgate died" % what)


def t_smuggle_dovecot(env):
    """Issue 13 item 2 against Dovecot on a require_tls STARTTLS listener in
    plaintext: each vector (and variants) -> no LOGIN succeeds, user="",
    never Authenticated, Dovecot logs no login; after the 65-byte tag every
    later command gets exactly one tagged reply with its own tag."""
    g = gate(env, DOVECOT.port)
    failed = []
    for what, data in SMUGGLE:
        try:
            smuggle_one(env, g, data, what)
        except Fail as e:
            failed.append(str(e))
            if not g.proc.alive():
                break
    check(not failed, "%d vector(s) got through:\n     %s"
          % (len(failed), "\n     ".join(failed)))
    alive(env, g, "smuggling vectors")


def t_smuggle_fake(env):
    """The same vectors with the fake backend, which records every byte it
    receives: none of LOGIN, AUTHENTICATE, a line imapgate cannot frame
    (invalid tag, unterminated quoted string, 65-byte tag, a misplaced
    literal marker) or its literal ever reaches the backend."""
    fb = FakeBackend(None)
    fb.start()
    env.backends.append(fb)
    g = gate(env, fb.port)
    failed = []
    for what, data in SMUGGLE:
        reset_received(fb)                  # only this vector's bytes count
        try:
            smuggle_one(env, g, data, what, fb=fb)
        except Fail as e:
            failed.append(str(e))
            if not g.proc.alive():
                break
    check(not failed, "%d vector(s) got through:\n     %s"
          % (len(failed), "\n     ".join(failed)))


def t_long_tag_tls(env):
    """On the TLS listener (login allowed): a 65-byte tag with a LITERAL+
    LOGIN, then n1 NOOP, n2 LOGIN, n3 SELECT: the long tag is never
    answered OK nor forwarded, each later command gets exactly one tagged
    reply with its own tag, and the user is the one n2 logged in."""
    g = gate(env, DOVECOT.port)
    mark = len(g.log_text())
    logins = dovecot_logins()
    with watch(g, "65-byte tag on TLS"):
        c = client(env, g, "tls")
        c.send(TAG65 + b" LOGIN {5+}\r\nother other-Pw-7f3a\r\n")
        time.sleep(0.05)
        c.send(b"n1 NOOP\r\nn2 LOGIN demo demo\r\nn3 SELECT INBOX\r\n")
        got, how = gather(c, has_tagged(b"n3"), IO)
        c.close()
    check(TAG65 + b" OK" not in got, "the 65-byte tag got an OK: %r" % got[-300:])
    for t in (b"n1", b"n2", b"n3"):
        check(len(tagged_lines(got, t)) == 1, "%r got %d tagged replies: %r"
              % (t, len(tagged_lines(got, t)), got[-500:]))
    check(status_of(got, b"n2") == b"OK" and status_of(got, b"n3") == b"OK",
          "n2/n3: %r" % got[-400:])
    f, lines = session_end_after(g, mark)
    check(f.get("user") == '"demo"', "session-end user=%s" % f.get("user"))
    n = new_logins(logins, 1)
    check(n == 1, "Dovecot logged %d logins, want 1" % n)


def t_authenticate_pipelined_tls(env):
    """On the TLS (and the plaintext) listener, `a AUTHENTICATE XNOSUCH\\r\\nb
    LOGIN demo demo\\r\\nc SELECT INBOX\\r\\n` in one write: Dovecot refuses a,
    b logs in, c selects; imapgate's session-end says user="demo" (what the
    backend ran: Dovecot logs exactly one login) and its state went to
    Selected mailbox="INBOX"."""
    g = gate(env, DOVECOT.port)
    for kind in ("tls", "plain"):
        mark = len(g.log_text())
        logins = dovecot_logins()
        with watch(g, "%s, AUTHENTICATE XNOSUCH pipelined" % kind):
            c = client(env, g, kind)
            c.send(b"a AUTHENTICATE XNOSUCH\r\nb LOGIN demo demo\r\nc SELECT INBOX\r\n")
            got, how = gather(c, lambda d: all(has_tagged(t)(d) for t in (b"a", b"b", b"c")),
                              IO)
            c.close()
        say("   %s: %s" % (kind, ", ".join(
            (tagged_lines(got, t) or [b"-"])[0][:45].decode("latin-1")
            for t in (b"a", b"b", b"c"))))
        check(status_of(got, b"a") in (b"NO", b"BAD"), "%s: AUTHENTICATE XNOSUCH: %r"
              % (kind, got[-300:]))
        check(status_of(got, b"b") == b"OK", "%s: LOGIN after it: %r" % (kind, got[-300:]))
        check(status_of(got, b"c") == b"OK", "%s: SELECT after it: %r" % (kind, got[-300:]))
        f, lines = session_end_after(g, mark)
        check(f.get("user") == '"demo"', "%s: session-end user=%s, but the backend logged "
              "in demo" % (kind, f.get("user")))
        check(any(re.search(SELECTED_INBOX_RX, x) for x in lines),
              "%s: no state change to Selected INBOX in the session's log" % kind)
        n = new_logins(logins, 1)
        check(n == 1, "%s: Dovecot logged %d logins, want 1" % (kind, n))


# ================================================ item 3: own output bounded

def flood(sock, unit, data_len, rss, budget):
    """Send data_len bytes of unit repeated without ever reading, until all
    is sent, FLOOD_STALL seconds pass without progress, FLOOD_TIME passes,
    or rss() - base exceeds budget; returns (sent, peak growth, why)."""
    chunk = unit * (65536 // len(unit))
    sock.setblocking(False)
    base = rss()
    peak = 0
    sent = 0
    t0 = last = time.monotonic()
    why = "all sent"
    off = 0
    while sent < data_len:
        now = time.monotonic()
        if now - t0 > FLOOD_TIME:
            why = "time"
            break
        if now - last > FLOOD_STALL:
            why = "stalled %.0fs: imapgate stopped reading" % FLOOD_STALL
            break
        _, w, _ = select.select([], [sock], [], 0.1)
        if w:
            try:
                n = sock.send(chunk[off:])
            except (BlockingIOError, InterruptedError):
                n = 0
            except OSError:
                why = "connection closed"
                break
            if n:
                sent += n
                off = (off + n) % len(chunk)
                last = time.monotonic()
        peak = max(peak, rss() - base)
        if peak > budget:
            why = "RSS over %d MiB: stopped early" % (budget >> 10)
            break
    time.sleep(0.5)
    peak = max(peak, rss() - base)
    return sent, peak, why


FLOODS = [
    ("issue: bare \\n on the plaintext listener", "plain", b"\n"),
    ("LOGIN on STARTTLS before TLS (NO [PRIVACYREQUIRED] each)", "starttls",
     b"a LOGIN x y\r\n"),
]


def t_own_output_bounded(env):
    """A plaintext client that never reads sends 40 MiB of bare "\\n"
    (the issue's case: one BAD from imapgate each), and another sends LOGINs
    on the STARTTLS listener before TLS (one NO [PRIVACYREQUIRED] each):
    imapgate's RSS grows by less than limits.buffer + max_line + a few MiB
    (it must stop reading such a client), a TLS session is served all along
    (NOOP every 50 ms, none slower than 2 s), and imapgate is fine after."""
    # log.level info: at debug every refused line is a log line too, and the
    # floods are millions of lines.
    g = gate(env, DOVECOT.port, listeners=("tls", "plain", "starttls"),
             asan_quarantine=False, level="info")
    buf_kib, line_kib = 256, 64                       # the defaults
    bound = buf_kib + line_kib + RSS_SLACK_KIB
    if ac.asan(g.proc.pid):
        bound *= ac.ASAN_RSS_FACTOR
    failed = []
    for what, kind, unit in FLOODS:
        w = ac.Watcher(env, g)
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.settimeout(IO)
        raw.connect(("127.0.0.1", g.ports[kind]))
        greeting = raw.recv(4096)
        check(greeting.startswith(b"* OK"), "greeting %r" % greeting)
        time.sleep(0.2)
        t0 = time.monotonic()
        sent, peak, why = flood(raw, unit, FLOOD, lambda: ac.rss_kib(g.proc.pid),
                                bound + FLOOD_ABORT_KIB)
        say("   %s: sent %d KiB in %.1fs (%s); RSS growth %d KiB, bound %d KiB"
            % (what, sent >> 10, time.monotonic() - t0, why, peak, bound))
        try:
            w.stop()
            say("   watcher: %d NOOPs, worst %.3fs" % (w.count, w.worst))
        except Fail as e:
            failed.append("%s: %s" % (what, e))
        finally:
            ac.reset_close(raw)
        if peak > bound:
            failed.append("%s: RSS grew by %d KiB for one client that does not read "
                          "(bound limits.buffer + max_line + %d MiB = %d KiB): imapgate's "
                          "own replies are not bounded" % (what, peak, RSS_SLACK_KIB >> 10,
                                                           bound))
        if not g.proc.alive():
            break
        time.sleep(0.3)
    check(not failed, "; ".join(failed))
    alive(env, g, "the floods")


def t_pipelined_noread(env):
    """100,000 pipelined NOOPs (TLS, Dovecot) from a client that does not
    read for NOREAD seconds: imapgate's RSS stays bounded meanwhile (it stops
    reading that client once its output is full), then the client reads
    and every NOOP gets exactly one tagged OK."""
    g = gate(env, DOVECOT.port, listeners=("tls", "plain"), asan_quarantine=False)
    bound = 2 * (256 + 64) + RSS_SLACK_KIB
    if ac.asan(g.proc.pid):
        bound *= ac.ASAN_RSS_FACTOR
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16384)
    raw.settimeout(IO)
    raw.connect(("127.0.0.1", g.ports["tls"]))
    c = harness.Client.__new__(harness.Client)
    c.tagn, c.buf = 0, bytearray()
    c.sock = env.tls.wrap_socket(raw, server_hostname="localhost")
    c.sock.settimeout(IO)
    c.greeting = c.readline()
    with watch(g, "login"):
        c.login("demo", "demo")
        c.select("INBOX")
    base = ac.rss_kib(g.proc.pid)
    burst = memoryview(b"".join(b"p%d NOOP\r\n" % i for i in range(PIPELINED)))
    sock = c.sock
    sock.setblocking(False)
    sent, peak = 0, 0
    t0 = time.monotonic()
    while time.monotonic() - t0 < NOREAD and sent < len(burst):
        _, wr, _ = select.select([], [sock], [], 0.1)
        if wr:
            try:
                sent += sock.send(burst[sent:sent + 16384])
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                pass
        peak = max(peak, ac.rss_kib(g.proc.pid) - base)
    while time.monotonic() - t0 < NOREAD:
        time.sleep(0.1)
        peak = max(peak, ac.rss_kib(g.proc.pid) - base)
    say("   not reading for %.0fs: sent %d of %d KiB, RSS growth %d KiB (bound %d)"
        % (NOREAD, sent >> 10, len(burst) >> 10, peak, bound))
    check(g.proc.alive(), "imapgate died")
    check(peak <= bound, "RSS grew by %d KiB while the client did not read (bound %d KiB)"
          % (peak, bound))
    seen = bytearray(PIPELINED)
    n = 0
    buf = bytes(c.buf)
    end = time.monotonic() + PIPE_TIME
    while n < PIPELINED:
        check(time.monotonic() < end, "%d of %d NOOPs answered %.0fs after reading again"
              % (n, PIPELINED, PIPE_TIME))
        want_w = [sock] if sent < len(burst) else []
        r, wr, _ = select.select([sock], want_w, [], 1.0)
        if wr:
            try:
                sent += sock.send(burst[sent:sent + 16384])
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                pass
        while True:
            try:
                data = sock.recv(65536)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                break
            check(data != b"", "connection closed after %d answers" % n)
            buf += data
        lines = buf.split(b"\r\n")
        buf = lines.pop()
        for line in lines:
            m = re.match(rb"p(\d+) (\S+)", line)
            if not m:
                continue
            i = int(m.group(1))
            check(m.group(2) == b"OK", "p%d -> %r" % (i, line))
            check(i < PIPELINED and not seen[i], "p%d answered twice or unknown" % i)
            seen[i] = 1
            n += 1
    sock.setblocking(True)
    sock.settimeout(IO)
    c.buf = bytearray(buf)
    say("   all %d NOOPs answered once each in %.1fs" % (n, time.monotonic() - t0))
    c.logout()
    alive(env, g, "100k NOOPs unread")


# ================================================= item 4: password in the log

PASSWORD_VECTORS = [
    ("issue: LOGIN other {15} + 15 bytes in one write",
     b"a LOGIN other {15}\r\npass other-Pw-7\r\n"),
    ("the real password as a sync literal", b"a LOGIN other {13}\r\nother-Pw-7f3a\r\n"),
    ("LITERAL+", b"a LOGIN other {15+}\r\npass other-Pw-7\r\n"),
    ("user and password as sync literals", b"a LOGIN {5}\r\nother {13}\r\nother-Pw-7f3a\r\n"),
    ("quoted user, sync literal", b'a LOGIN "other" {15}\r\npass other-Pw-7\r\n'),
]


def t_password_not_leaked(env):
    """STARTTLS listener before TLS, a client that does not wait for '+':
    `a LOGIN other {15}\\r\\npass other-Pw-7\\r\\n` in one write (and
    variants): `a NO [PRIVACYREQUIRED]`, the literal is never parsed as a
    command (no `pass ...` reply), the password never reaches the debug log
    nor the backend (fake backend, raw bytes), the session goes on."""
    fb = FakeBackend(None)
    fb.start()
    env.backends.append(fb)
    g = gate(env, fb.port, listeners=("starttls", "tls"), backend_response="2s")
    failed = []
    for what, data in PASSWORD_VECTORS:
        mark = len(g.log_text())
        reset_received(fb)                  # only this vector's bytes count
        problems = []
        got = b""
        try:
            with watch(g, what):
                c = client(env, g, "starttls")
                c.send(data)
                got, how = gather(c, has_tagged(b"a"), IO)
                lines = tagged_lines(got, b"a")
                if not lines or not lines[0].startswith(b"a NO [PRIVACYREQUIRED]"):
                    problems.append("LOGIN -> %r" % lines)
                time.sleep(0.1)
                c.send(b"z NOOP\r\n")
                got, how = gather(c, has_tagged(b"z"), IO)
                if len(tagged_lines(got, b"z")) != 1 or status_of(got, b"z") != b"OK":
                    problems.append("the session did not go on: %r" % got[-200:])
                c.close()
        except Fail as e:
            problems.append(str(e))
        for lead in (b"pass", b"other-Pw-7f3a", b"other"):
            if tagged_lines(got, lead):
                problems.append("the literal was parsed as a command: %r"
                                % tagged_lines(got, lead))
        try:
            session_end_after(g, mark)
        except Fail as e:
            problems.append(str(e))
        text = log_after(g, mark).encode("utf-8", "replace")
        for bit in PASSWORD_BITS:
            if bit in text:
                problems.append("the password (%r) is in the debug log: %r"
                                % (bit, [x for x in text.split(b"\n") if bit in x][:1]))
                break
        for bit in PASSWORD_BITS:
            if bit in fb.received:
                problems.append("the password (%r) reached the backend: %r"
                                % (bit, fb.received[-120:]))
                break
        say("   %-45s %s" % (what, "ok" if not problems else "FAIL"))
        for p in problems:
            say("        %s" % p)
        if problems:
            failed.append(what)
        if not g.proc.alive():
            break
    check(not failed, "%d vector(s) leaked: %s" % (len(failed), "; ".join(failed)))


# ========================================== item 5: SASL line, DONE timeout

def t_sasl_line_too_long(env):
    """limits.max_line 1024, AUTHENTICATE PLAIN, '+', then a 4000-byte SASL
    line: the client gets the AUTHENTICATE's own tagged reply from the
    backend (Dovecot: BAD/NO, the exchange cancelled), no BYE, the session
    goes on (NOOP, then LOGIN works) and does not end with
    reason=backend-timeout.  Variant: the SASL-IR form (a command line over
    max_line): tagged BAD, no BYE, session goes on.  TLS and plaintext."""
    cases = Cases(env, lambda: gate(env, DOVECOT.port, listeners=("tls", "plain"),
                                    backend_response="2s",
                                    limits="  max_line: %d\n" % SMALL_LINE))
    for kind in ("tls", "plain"):
        def sasl(g, kind=kind):
            mark = len(g.log_text())
            c = client(env, g, kind)
            c.send(b"a AUTHENTICATE PLAIN\r\n")
            wait_continuation(c, b"a", "AUTHENTICATE PLAIN")
            c.send(b"A" * 4000 + b"\r\n")
            got, how = gather(c, has_tagged(b"a"), 2 * IO)
            check(b"* BYE" not in got, "BYE: %r" % got)
            check(how == "done", "no tagged reply to AUTHENTICATE (%s): %r" % (how, got[-300:]))
            check(status_of(got, b"a") in (b"NO", b"BAD"), "AUTHENTICATE -> %r" % got)
            c.buf.clear()
            c.cmd("NOOP")
            c.login("demo", "demo")
            c.logout()
            f, _ = session_end_after(g, mark)
            check(f.get("reason") != "backend-timeout", "reason=backend-timeout")
        cases.run("%s, SASL line of 4000 bytes (max_line %d)" % (kind, SMALL_LINE), sasl)

        def sasl_ir(g, kind=kind):
            c = client(env, g, kind)
            c.send(b"a AUTHENTICATE PLAIN " + b"A" * 4000 + b"\r\n")
            got, how = gather(c, lambda d: has_tagged(b"a")(d) or b"* BAD" in d, IO)
            check(b"* BYE" not in got, "BYE: %r" % got)
            lines = tagged_lines(got, b"a")
            check((len(lines) == 1 and lines[0].startswith(b"a BAD")) or
                  (not lines and b"* BAD" in got), "AUTHENTICATE -> %r" % got)
            c.buf.clear()
            c.cmd("NOOP")
            c.logout()
        cases.run("%s, SASL-IR command line of 4000 bytes" % kind, sasl_ir)
    cases.finish()


def t_done_timeout(env):
    """A backend that never answers DONE (fake backend: IDLE -> '+ idling',
    then silence): in IDLE nothing times out (1.5 s > backend_response 1 s),
    after DONE the client gets `* BYE [UNAVAILABLE]` within backend_response
    (plus slack) and the session ends with reason=backend-timeout."""
    fb = FakeBackend({"commands": {"IDLE": [{"send": "+ idling\r\n"}, {"hang": True}]}})
    fb.start()
    env.backends.append(fb)
    g = gate(env, fb.port, listeners=("tls", "plain"), backend_response="1s")
    mark = len(g.log_text())
    with watch(g, "IDLE, DONE unanswered"):
        c = client(env, g, "tls")
        c.login("demo", "demo")
        c.send(b"i IDLE\r\n")
        wait_continuation(c, b"i", "IDLE")
        early = quiet(c, 1.5)
        check(early == b"", "bytes during IDLE before DONE: %r" % early)
        c.send(b"DONE\r\n")
        t0 = time.monotonic()
        got, how = gather(c, lambda d: b"* BYE" in d and d.endswith(b"\r\n"), 4.0)
        took = time.monotonic() - t0
    say("   after DONE: %r in %.1fs (%s)" % (got[:80], took, how))
    check(b"* BYE [UNAVAILABLE]" in got, "no BYE [UNAVAILABLE] %.1fs after an unanswered "
          "DONE (backend_response 1s): %r (%s)" % (took, got, how))
    c.close()
    f, _ = session_end_after(g, mark)
    check(f.get("reason") == "backend-timeout", "session-end reason=%s" % f.get("reason"))


# ======================================= item 6: setup phase (client_ip: id)

ID_SCRIPTS = [
    ("issue: literal in the ID answer",
     [{"send": '* ID ("name" {5}\r\nhello)\r\n'}, {"send": "{tag} OK ID completed\r\n"}]),
    ("a status line inside the literal",
     [{"send": '* ID ("name" {24}\r\n* OK [ALERT] smuggled\r\n)\r\n'},
      {"send": "{tag} OK ID completed\r\n"}]),
    ("answer in pieces, literal split",
     [{"send": '* ID ("name" {12}\r\nhel'}, {"sleep": 0.1}, {"send": "lo\r\nworld)\r\n"},
      {"sleep": 0.1}, {"send": "{tag} OK ID completed\r\n"}]),
]


def t_id_literal(env):
    """backend.client_ip: id, and the backend answers imapgate's own ID with
    a literal (`* ID ("name" {5}\\r\\nhello)` then tagged OK, and variants):
    the client's first bytes are exactly one clean greeting line, nothing
    of the ID answer ever follows, and the first command's reply is the
    next line (plaintext and TLS listeners)."""
    failed = []
    for what, acts in ID_SCRIPTS:
        fb = FakeBackend({"commands": {"ID": acts}})
        fb.start()
        env.backends.append(fb)
        g = gate(env, fb.port, listeners=("tls", "plain"), backend="  client_ip: id\n",
                 probe_greeting=False)
        try:
            for kind in ("plain", "tls"):
                with watch(g, "%s, %s" % (kind, what)):
                    c = client(env, g, kind)
                    gr = c.greeting
                    check(re.match(rb"^\* OK [^\r\n]*Fake IMAP server ready\r\n$", gr)
                          is not None, "greeting %r" % gr)
                    extra = quiet(c)
                    check(extra == b"", "bytes after the greeting: %r" % extra)
                    c.send(b"n NOOP\r\n")
                    line = c.readline()
                    check(line == b"n OK NOOP completed\r\n", "NOOP -> %r" % line)
                    c.logout()
            check(any(rec["commands"] and rec["commands"][0].split(b" ")[1:2] == [b"ID"]
                      for rec in fb.connections), "imapgate sent no ID")
            say("   %-40s ok" % what)
        except Fail as e:
            say("   %-40s FAIL" % what)
            failed.append("%s: %s" % (what, e))
    check(not failed, "%d case(s) leaked:\n     %s" % (len(failed), "\n     ".join(failed)))


class StartTLSBackend:
    """A backend that offers STARTTLS and answers imapgate's STARTTLS with
    `before` ahead of the tagged OK ("{tag}" in it is the STARTTLS tag, "{L}"
    the length of the line that follows it: a literal holding that line), then
    speaks TLS (the test certificate): NOOP, LOGIN, ID, CAPABILITY, LOGOUT.
    One thread per connection, every wait bounded by the lifetime."""

    GREETING = b"* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED] raw-tls ready\r\n"

    def __init__(self, env, before, lifetime=60.0):
        self.before = before
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(env.cert, env.key)
        self.deadline = time.monotonic() + lifetime
        self.stopping = threading.Event()
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.starttls = 0
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()
        env.backends.append(self)

    def _accept(self):
        """Accept loop, bounded by the lifetime."""
        while not self.stopping.is_set() and time.monotonic() < self.deadline:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            t = threading.Thread(target=self._serve, args=(c,), daemon=True)
            t.start()
            self.threads.append(t)

    def _lines(self, c):
        """Yield CRLF lines from c until EOF, stop or the lifetime ends."""
        buf = b""
        while not self.stopping.is_set() and time.monotonic() < self.deadline:
            while b"\r\n" in buf:
                line, buf = buf.split(b"\r\n", 1)
                yield line
            try:
                data = c.recv(4096)
            except socket.timeout:
                continue
            if not data:
                return
            buf += data

    def _serve(self, c):
        """Greeting, STARTTLS with the scripted answer, then TLS."""
        c.settimeout(0.5)
        try:
            c.sendall(self.GREETING)
            first = next(self._lines(c), None)
            if first is None or b" " not in first:
                return
            tag = first.split(b" ")[0]
            if first.split(b" ")[1].upper() != b"STARTTLS":
                c.sendall(tag + b" BAD STARTTLS first\r\n")
                return
            self.starttls += 1
            pre = self.before.replace(b"{tag}", tag)
            if b"{L}" in pre:
                inner = pre.split(b"{L}\r\n", 1)[1].split(b"\r\n", 1)[0] + b"\r\n"
                pre = pre.replace(b"{L}", b"%d" % len(inner))
            c.sendall(pre + tag + b" OK Begin TLS negotiation now\r\n")
            c.settimeout(5.0)
            c = self.ctx.wrap_socket(c, server_side=True)
            c.settimeout(0.5)
            for line in self._lines(c):
                w = line.split(b" ")
                t, name = w[0], (w[1].upper() if len(w) > 1 else b"")
                if name == b"CAPABILITY":
                    c.sendall(b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n" + t + b" OK done\r\n")
                elif name == b"ID":
                    c.sendall(b"* ID NIL\r\n" + t + b" OK ID completed\r\n")
                elif name in (b"NOOP", b"LOGIN"):
                    c.sendall(t + b" OK " + name + b" completed\r\n")
                elif name == b"LOGOUT":
                    c.sendall(b"* BYE bye\r\n" + t + b" OK LOGOUT completed\r\n")
                    return
                else:
                    c.sendall(t + b" BAD unknown\r\n")
        except (OSError, ssl.SSLError, StopIteration):
            pass
        finally:
            c.close()

    def stop(self):
        """Stop accepting and serving; join the threads (bounded)."""
        self.stopping.set()
        end = time.monotonic() + 5.0
        for t in self.threads:
            t.join(max(0.0, end - time.monotonic()))
        self.sock.close()


STARTTLS_BEFORE = [
    ("literal before the STARTTLS OK", b'* ID ("name" {5}\r\nhello)\r\n'),
    ("a fake STARTTLS OK inside a literal",
     b'* ID ("name" {L}\r\n{tag} OK Begin TLS negotiation now\r\n)\r\n'),
    ("an untagged line", b"* OK [ALERT] setup noise\r\n"),
]


def t_backend_starttls_leak(env):
    """backend.tls: starttls, and the backend puts untagged data (a literal,
    a fake tagged OK inside a literal, a plain untagged line) before its
    STARTTLS OK: the client's first bytes are exactly one clean greeting
    line and nothing of the setup follows."""
    failed = []
    for what, before in STARTTLS_BEFORE:
        be = StartTLSBackend(env, before)
        g = gate(env, be.port, listeners=("plain",), probe_greeting=False,
                 backend="  tls: starttls\n  verify: false\n")
        try:
            with watch(g, what):
                c = client(env, g, "plain")
                gr = c.greeting
                check(re.match(rb"^\* OK [^\r\n]*raw-tls ready\r\n$", gr) is not None,
                      "greeting %r" % gr)
                extra = quiet(c)
                check(extra == b"", "bytes after the greeting: %r" % extra)
                c.send(b"n NOOP\r\n")
                line = c.readline()
                check(line == b"n OK NOOP completed\r\n", "NOOP -> %r" % line)
                c.logout()
            check(be.starttls > 0, "imapgate sent no STARTTLS")
            say("   %-40s ok" % what)
        except Fail as e:
            say("   %-40s FAIL: %s" % (what, e))
            failed.append(what)
    check(not failed, "%d case(s) leaked: %s" % (len(failed), "; ".join(failed)))


# ================================ item 7: status lines longer than max_line

LONG_STATUS = [
    ("long MAYBE", "{tag} MAYBE " + "x" * 3000 + "\r\n"),
    ("long NO [XFOO]", "{tag} NO [XFOO] " + "y" * 3000 + "\r\n"),
    ("long BAD [XFOO]", "{tag} BAD [XFOO] " + "z" * 3000 + "\r\n"),
    ("short MAYBE", "{tag} MAYBE short\r\n"),
    ("short NO [XFOO]", "{tag} NO [XFOO] short\r\n"),
]


def t_long_status(env):
    """limits.max_line 1024; the fake backend answers NOOPs with tagged
    status lines of 3000 bytes: status MAYBE, NO [XFOO], BAD [XFOO] (and
    short controls): the client sees NO or BAD, never MAYBE, no [XFOO],
    one tagged reply each (no stray tagged line), and the session goes on."""
    steps = [{"command": "NOOP", "actions": [{"send": s}]} for _, s in LONG_STATUS]
    fb = FakeBackend({"steps": steps})
    fb.start()
    env.backends.append(fb)
    g = gate(env, fb.port, listeners=("tls", "plain"),
             limits="  max_line: %d\n" % SMALL_LINE)
    failed = []
    with watch(g, "long status lines"):
        c = client(env, g, "tls")
        c.login("demo", "demo")
        for i, (what, _) in enumerate(LONG_STATUS):
            tag = "s%d" % i
            c.send(("%s NOOP\r\n" % tag).encode())
            c.sock.settimeout(IO)
            tagged, items = c.response(tag)
            stray = [x for x, _ in items if not x.startswith(b"* ")]
            if stray:
                failed.append("%s: stray lines %r" % (what, stray))
            st = tagged.split(b" ")[1]
            m = re.match(rb"^\S+ \S+ \[([^\] ]+)", tagged)
            code = m.group(1).decode() if m else None
            say("   %-16s -> %s%s (%d bytes)" % (what, st.decode("latin-1"),
                                                 " [%s]" % code if code else "", len(tagged)))
            if st not in (b"NO", b"BAD"):
                failed.append("%s: status %r" % (what, st))
            if code is not None and code.upper() not in common.STANDARD_CODES:
                failed.append("%s: unknown code [%s] reached the client" % (what, code))
            if b"XFOO" in tagged:
                failed.append("%s: XFOO in %r" % (what, tagged[:80]))
        c.cmd("NOOP")
        c.logout()
    check(not failed, "; ".join(failed))


TESTS = [
    ("1 crash: LOGIN with literals (issue bytes, two literals, sync/LITERAL+)",
     t_login_literal),
    ("1 crash: NOOP {0}", t_noop_empty_literal),
    ("1 crash: every mailbox command with a literal mailbox", t_mailbox_literals),
    ("1 crash: byte-at-a-time and every split position", t_byte_at_a_time),
    ("2 smuggling on STARTTLS require_tls (Dovecot)", t_smuggle_dovecot),
    ("2 smuggling on STARTTLS require_tls (fake backend, raw bytes)", t_smuggle_fake),
    ("2 65-byte tag on TLS: one tagged reply per command", t_long_tag_tls),
    ("2 AUTHENTICATE XNOSUCH pipelined on TLS: log equals backend", t_authenticate_pipelined_tls),
    ("3 own output bounded: 40 MiB of \\n from a non-reader", t_own_output_bounded),
    ("3 100k pipelined NOOPs from a client that does not read", t_pipelined_noread),
    ("4 password literal before TLS: not logged, not forwarded", t_password_not_leaked),
    ("5 SASL line over max_line: backend's tagged reply, no BYE", t_sasl_line_too_long),
    ("5 unanswered DONE: BYE within backend_response", t_done_timeout),
    ("6 client_ip id: literal in the ID answer never leaks", t_id_literal),
    ("6 backend STARTTLS: nothing before its OK leaks", t_backend_starttls_leak),
    ("7 status lines over max_line are rewritten", t_long_status),
]


def timed(fn):
    """fn, saying how long it took even when it fails (the runner says so
    only for passing cases)."""
    def run(env):
        t0 = time.monotonic()
        try:
            return fn(env)
        finally:
            say("   (%.2fs)" % (time.monotonic() - t0))
    run.__name__ = fn.__name__
    return run


def main():
    global DOVECOT
    if shutil.which("dovecot") is None:
        say("SKIP: dovecot is not installed")
        sys.exit(harness.SKIP)
    env = common.GuardEnv(sys.argv)
    DOVECOT = harness.Dovecot(os.path.join(env.tmp, "dovecot"))
    env.backends.append(DOVECOT)
    DOVECOT.start()
    only = os.environ.get("FRAMING_ONLY")
    tests = [(name, timed(fn)) for name, fn in TESTS
             if not only or re.search(only, fn.__name__)]
    common.run(env, tests)


if __name__ == "__main__":
    try:
        main()
    except Fail as e:
        say("FAIL: %s" % e)
        sys.exit(1)
