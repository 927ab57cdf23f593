#!/usr/bin/env python3
"""Shared pieces of the fault and abuse tests (test_abuse_*.py,
test_faults_*.py); not a test.  Python 3 stdlib only.

Every case checks four things (issue 9):
  - imapgate stays up: a fresh TLS session logs in and does NOOP afterwards;
  - other sessions are untouched: a Watcher session does a NOOP every 50 ms
    through the whole abuse and must see every answer, in order, in time;
  - memory stays within the bound documented in docs/security.md: VmRSS of
    imapgate grows by at most RSS_BOUND_KIB over the value before the case
    (ASan builds get ASAN_RSS_FACTOR times that: shadow memory and the
    quarantine of freed blocks);
  - no client gets a tagged OK the backend did not send: the tags of the
    tagged OKs a client saw must be tags the backend received and answered.
"""

import os
import re
import select
import socket
import ssl
import struct
import threading
import time

import harness
import test_pool_common as pc
from harness import Fail, check, say

# Per-session bound (docs/security.md): 2 x (limits.buffer 256 KiB +
# limits.max_line 64 KiB) + parser/state + TLS, about 1 MiB; the slack covers
# allocator arenas of the worker threads and libevent/OpenSSL caches.
SESSION_BOUND_KIB = 1024
RSS_SLACK_KIB = 12 * 1024
ASAN_RSS_FACTOR = 6
WATCH_PERIOD = 0.05         # seconds between the watcher's NOOPs
WATCH_MAX_LATENCY = 2.0     # longest a watcher NOOP may take
TAGGED_OK_RX = re.compile(rb"(?:^|\r\n)([!-~]+) OK\b")

QUICK = "  health: {interval: 1h, timeout: 2s, rise: 2, fall: 2}\n"
NO_PER_IP = "limits:\n  max_connections_per_ip: 0\n"


def asan(pid):
    """True if the process runs with AddressSanitizer (it maps libasan)."""
    try:
        with open("/proc/%d/maps" % pid) as f:
            maps = f.read()
    except OSError:
        return False
    return "libasan" in maps or "libclang_rt.asan" in maps


def rss_kib(pid):
    """VmRSS of pid in KiB."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise Fail("no VmRSS for pid %d" % pid)


def rss_bound(g, base, sessions=2, what=""):
    """Check imapgate's RSS is within the bound for `sessions` abusive
    sessions over base (KiB); returns the growth."""
    check(g.proc.alive(), "imapgate died (%s)" % what)
    now = rss_kib(g.proc.pid)
    bound = sessions * SESSION_BOUND_KIB + RSS_SLACK_KIB
    if asan(g.proc.pid):
        bound *= ASAN_RSS_FACTOR
    grew = now - base
    say("   RSS %d KiB -> %d KiB (+%d, bound +%d) %s" % (base, now, grew, bound, what))
    check(grew <= bound, "RSS grew by %d KiB (bound %d KiB) %s" % (grew, bound, what))
    return grew


def ok_tags(data):
    """Tags of the tagged OK responses in data (bytes the client saw)."""
    return set(m.group(1) for m in TAGGED_OK_RX.finditer(data)) - {b"*", b"+"}


def backend_tags(fb):
    """Tags of every command the fake backend received, over all connections."""
    tags = set()
    for rec in fb.connections:
        for raw in rec["commands"]:
            w = raw.split(None, 1)
            if w:
                tags.add(w[0])
    return tags


def no_fake_ok(seen, fb, what=""):
    """Every tagged OK the client saw is for a command the backend received.
    Commands a fake backend answers OK are the ones it received (built-in
    behaviour); a tag it never received cannot have a genuine OK."""
    bad = ok_tags(seen) - backend_tags(fb)
    check(not bad, "tagged OK the backend never sent (%s): %r" % (what, sorted(bad)[:5]))


def gate(env, fb_ports, extra="", wrap=None, backend=QUICK):
    """imapgate with an implicit-TLS listener in front of the given ports."""
    return pc.pool_gate(env, list(fb_ports), backend=backend, tls="implicit",
                        extra=NO_PER_IP + extra, wrap=wrap)


def tls_client(env, g, timeout=10.0, login=True):
    """A TLS client through g, logged in (any LOGIN works on the fake)."""
    c = harness.Client(g.port, env.tls, timeout=timeout)
    if login:
        c.login("demo", "demo")
    return c


def fresh_session(env, g, what=""):
    """imapgate is up: a new TLS session logs in, does NOOP and LOGOUT."""
    check(g.proc.alive(), "imapgate died (%s)" % what)
    try:
        c = tls_client(env, g)
        c.cmd("NOOP")
        c.logout()
    except (OSError, ssl.SSLError) as e:
        raise Fail("fresh session after %s failed: %s" % (what, e))


class Watcher:
    """A second session doing NOOPs through the abuse; stop() checks that
    every NOOP got its own tagged OK in order and none took too long."""

    def __init__(self, env, g):
        self.c = tls_client(env, g)
        self.count = 0
        self.error = None
        self.worst = 0.0
        self.stopping = threading.Event()
        self.t = threading.Thread(target=self._run, daemon=True)
        self.t.start()

    def _run(self):
        """Thread body: NOOP, wait, repeat."""
        try:
            while not self.stopping.is_set():
                t0 = time.monotonic()
                tagged, _ = self.c.cmd("NOOP")
                self.worst = max(self.worst, time.monotonic() - t0)
                self.count += 1
                self.stopping.wait(WATCH_PERIOD)
        except Exception as e:      # reported by stop()
            self.error = e

    def stop(self):
        """End the watcher and check it was never disturbed."""
        self.stopping.set()
        self.t.join(harness.IO_TIMEOUT)
        check(not self.t.is_alive(), "watcher session hangs")
        check(self.error is None, "watcher session disturbed: %s" % self.error)
        check(self.count > 0, "watcher made no NOOP")
        check(self.worst <= WATCH_MAX_LATENCY, "watcher NOOP took %.2fs" % self.worst)
        self.c.logout()
        return self.count


def reset_close(sock):
    """Close a socket with a TCP reset (SO_LINGER 0)."""
    try:
        raw = sock
        if isinstance(sock, ssl.SSLSocket):
            raw = socket.socket(fileno=os.dup(sock.fileno()))
            sock.close()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        raw.close()
    except OSError:
        pass


def client_hello():
    """The bytes of a TLS ClientHello as Python's ssl would send it."""
    ctx = ssl.create_default_context()
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


def exchange(sock, payload, done, timeout):
    """Send payload while reading, in one thread (an SSL object must not be
    used from two threads at once), until done(received) is true, EOF,
    reset or timeout; returns (bytes, how, bytes sent)."""
    sock.setblocking(False)
    data, sent, how = bytearray(), 0, "timeout"
    end = time.monotonic() + timeout
    try:
        while time.monotonic() < end and not done(data):
            want_w = [sock] if sent < len(payload) else []
            r, w, _ = select.select([sock], want_w, [], 0.2)
            if w:
                try:
                    sent += sock.send(payload[sent:sent + 65536])
                except (ssl.SSLWantWriteError, ssl.SSLWantReadError):
                    pass
                except OSError:
                    sent = len(payload)     # the peer is gone: read what is left
            while True:
                try:
                    chunk = sock.recv(65536)
                except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
                    break
                except OSError:
                    return bytes(data), "reset", sent
                if not chunk:
                    return bytes(data), "eof", sent
                data += chunk
        if done(data):
            how = "done"
    finally:
        try:
            sock.setblocking(True)
        except OSError:
            pass
    return bytes(data), how, sent


def drain(sock, timeout):
    """Read until EOF, reset or timeout; returns (bytes, how, seconds)."""
    t0 = time.monotonic()
    data, how = pc.tc.read_all(sock, timeout=timeout, limit=64 << 20)
    return data, how, time.monotonic() - t0


class RawBackend:
    """A one-thread-per-connection backend whose behaviour after LOGIN is a
    Python function handler(conn, sent) -- for the faults the scripted
    backend cannot make (endless lines, huge literals).  Every byte sent is
    counted in self.sent; self.tags are the tags of commands received."""

    def __init__(self, env, handler, greeting=b"* OK [CAPABILITY IMAP4rev1] raw ready\r\n",
                 lifetime=60.0):
        self.handler = handler
        self.greeting = greeting
        self.sent = 0
        self.sent_text = bytearray()     # the first 64 KiB of lines sent
        self.tags = set()
        self.ended = []
        self.stopping = threading.Event()
        self.deadline = time.monotonic() + lifetime
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
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

    def send(self, c, data):
        """Send all of data (counted); raises OSError when the peer is gone."""
        if len(self.sent_text) < 65536:
            self.sent_text += data[:1024]
        c.sendall(data)
        self.sent += len(data)

    def _serve(self, c):
        """Greeting, then LOGIN/NOOP/LOGOUT built in, anything else to handler."""
        c.settimeout(1.0)
        buf = b""
        try:
            self.send(c, self.greeting)
            while not self.stopping.is_set() and time.monotonic() < self.deadline:
                try:
                    data = c.recv(65536)
                except socket.timeout:
                    continue
                if not data:
                    break
                buf += data
                while b"\r\n" in buf:
                    line, buf = buf.split(b"\r\n", 1)
                    w = line.split(None, 2)
                    if len(w) < 2:
                        continue
                    tag, name = w[0], w[1].upper()
                    self.tags.add(tag)
                    if name in (b"LOGIN", b"NOOP", b"CAPABILITY"):
                        self.send(c, tag + b" OK " + name + b" completed\r\n")
                    elif name == b"LOGOUT":
                        self.send(c, b"* BYE bye\r\n" + tag + b" OK LOGOUT completed\r\n")
                        raise EOFError
                    else:
                        self.handler(self, c, tag, line)
        except (OSError, EOFError):
            pass
        finally:
            self.ended.append(time.monotonic())
            c.close()

    def stop(self):
        """Stop accepting and serving; join the threads (bounded)."""
        self.stopping.set()
        end = time.monotonic() + 5.0
        for t in self.threads:
            t.join(max(0.0, end - time.monotonic()))
        self.sock.close()


def run(argv, tests):
    """Run the cases with the guard runner (each gate checked for a clean exit)."""
    pc.run(pc.Env(argv), tests)
