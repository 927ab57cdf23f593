#!/usr/bin/env python3
"""Self-test of the scripted backend with a plain socket client.

Run: python3 tests/backends/test_fake_backend.py   (stdlib unittest only)
"""

import os
import socket
import struct
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from fake_backend import FakeBackend, GREETING  # noqa: E402

GREET = GREETING.encode()
READ_TIMEOUT = 3.0


class Client:
    """Minimal line-oriented client with bounded reads."""

    # Connect, optionally sending a PROXY header first.
    def __init__(self, port, first=b""):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=READ_TIMEOUT)
        self.buf = b""
        if first:
            self.sock.sendall(first)

    # Read until the buffer holds `marker`; return everything up to it.
    def until(self, marker, timeout=READ_TIMEOUT):
        end = time.monotonic() + timeout
        while marker not in self.buf:
            left = end - time.monotonic()
            if left <= 0:
                raise TimeoutError("no %r in %r" % (marker, self.buf))
            self.sock.settimeout(left)
            data = self.sock.recv(65536)
            if not data:
                raise EOFError(self.buf)
            self.buf += data
        i = self.buf.index(marker) + len(marker)
        out, self.buf = self.buf[:i], self.buf[i:]
        return out

    # Read until EOF or reset; return (bytes, how) with how "eof"/"reset".
    def drain(self, timeout=READ_TIMEOUT):
        end = time.monotonic() + timeout
        out = self.buf
        self.buf = b""
        while time.monotonic() < end:
            self.sock.settimeout(max(0.01, end - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except ConnectionResetError:
                return out, "reset"
            except socket.timeout:
                return out, "timeout"
            if not data:
                return out, "eof"
            out += data
        return out, "timeout"

    def send(self, data):
        self.sock.sendall(data)

    def close(self):
        self.sock.close()


class FakeBackendTest(unittest.TestCase):

    def backend(self, script=None, **kw):
        fb = FakeBackend(script, lifetime=30, **kw)
        port = fb.start()
        self.addCleanup(fb.stop)
        return fb, port

    def test_default_session(self):
        fb, port = self.backend()
        c = Client(port)
        self.addCleanup(c.close)
        self.assertEqual(c.until(b"\r\n"), GREET)
        c.send(b"a LOGIN testuser pass\r\nb SELECT INBOX\r\n")
        self.assertEqual(c.until(b"a OK LOGIN completed\r\n"), b"a OK LOGIN completed\r\n")
        sel = c.until(b"b OK [READ-WRITE] SELECT completed\r\n")
        self.assertIn(b"* 3 EXISTS\r\n", sel)
        self.assertIn(b"* FLAGS (", sel)
        c.send(b"c FETCH 1 BODY[]\r\n")
        fetch = c.until(b"c OK FETCH completed\r\n")
        self.assertTrue(fetch.startswith(b"* 1 FETCH (UID 1 BODY[] {"))
        c.send(b"d IDLE\r\n")
        self.assertEqual(c.until(b"\r\n"), b"+ idling\r\n")
        c.send(b"DONE\r\n")
        self.assertEqual(c.until(b"\r\n"), b"d OK IDLE terminated\r\n")
        c.send(b"e APPEND INBOX {5}\r\n")
        self.assertTrue(c.until(b"\r\n").startswith(b"+ "))
        c.send(b"hello\r\n")
        self.assertIn(b"e OK [APPENDUID", c.until(b"\r\n"))
        c.send(b"f LOGOUT\r\n")
        out, how = c.drain()
        self.assertEqual(out, b"* BYE Logging out\r\nf OK LOGOUT completed\r\n")
        self.assertEqual(how, "eof")
        self.assertIn(b"a LOGIN testuser pass\r\n", fb.received)
        self.assertIn(b"hello", fb.received)

    def test_second_greeting(self):
        _, port = self.backend("second_greeting")
        c = Client(port)
        self.addCleanup(c.close)
        c.until(b"\r\n")
        c.send(b"a LOGIN u p\r\n")
        self.assertEqual(c.until(b"ready\r\n"), b"a OK LOGIN completed\r\n" + GREET)
        # one-shot: a second LOGIN gets the plain answer
        c.send(b"b LOGIN u p\r\nc NOOP\r\n")
        self.assertEqual(c.until(b"c OK NOOP completed\r\n"),
                         b"b OK LOGIN completed\r\nc OK NOOP completed\r\n")

    def test_status_scenarios(self):
        for name, want in (("tagged_maybe", b"t MAYBE NOOP completed\r\n"),
                           ("x_foo_code", b"* OK [X-FOO] untagged note\r\nt OK [X-FOO] NOOP completed\r\n"),
                           ("bracket_later", b"t NO text [with brackets]\r\n")):
            with self.subTest(name):
                _, port = self.backend(name)
                c = Client(port)
                c.until(b"\r\n")
                c.send(b"t NOOP\r\n")
                self.assertEqual(c.until(want), want)
                c.close()

    def test_auth_database_error(self):
        _, port = self.backend("auth_database_error")
        c = Client(port)
        self.addCleanup(c.close)
        c.until(b"\r\n")
        c.send(b"a AUTHENTICATE PLAIN AHUAcA==\r\n")
        self.assertEqual(c.until(b"\r\n"), b"a BAD Database error\r\n")

    def test_reset_mid_fetch(self):
        _, port = self.backend("reset_mid_fetch")
        c = Client(port)
        self.addCleanup(c.close)
        c.until(b"\r\n")
        c.send(b"a FETCH 1 BODY[]\r\n")
        out, how = c.drain()
        self.assertEqual(how, "reset")
        self.assertTrue(out.startswith(b"* 1 FETCH (UID 1 BODY[] {1000}\r\n"))
        self.assertEqual(len(out), 32 + 300)

    def test_close_after_ok(self):
        _, port = self.backend("close_after_ok")
        c = Client(port)
        self.addCleanup(c.close)
        c.until(b"\r\n")
        c.send(b"a LOGIN u p\r\n")
        self.assertEqual(c.drain(), (b"a OK LOGIN completed\r\n", "eof"))

    def test_never_and_slow_greet(self):
        _, port = self.backend("never_greet")
        c = Client(port)
        self.addCleanup(c.close)
        self.assertEqual(c.drain(timeout=0.5), (b"", "timeout"))
        _, port = self.backend("slow_greet")
        c2 = Client(port)
        self.addCleanup(c2.close)
        t0 = time.monotonic()
        self.assertEqual(c2.until(b"\r\n", timeout=6), GREET)
        self.assertGreaterEqual(time.monotonic() - t0, 2.5)

    def test_reset_mid_append(self):
        _, port = self.backend("reset_mid_append")
        c = Client(port)
        self.addCleanup(c.close)
        c.until(b"\r\n")
        c.send(b"a APPEND INBOX {10}\r\n")
        self.assertEqual(c.drain(), (b"", "reset"))

    def test_proxy_headers(self):
        fb, port = self.backend(proxy="require")
        v1 = b"PROXY TCP4 192.0.2.1 127.0.0.1 4000 993\r\n"
        c = Client(port, v1)
        self.assertEqual(c.until(b"\r\n"), GREET)
        c.close()
        v2 = (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11" + struct.pack("!H", 12)
              + socket.inet_aton("192.0.2.2") + socket.inet_aton("127.0.0.1")
              + struct.pack("!HH", 4001, 993))
        c = Client(port, v2 + b"a NOOP\r\n")
        self.assertEqual(c.until(b"a OK NOOP completed\r\n"), GREET + b"a OK NOOP completed\r\n")
        c.close()
        c = Client(port, b"a NOOP\r\n")
        self.assertEqual(c.drain(), (b"* BAD Invalid PROXY header\r\n", "eof"))
        c.close()
        self.assertEqual(fb.connections[0]["proxy"], v1)
        self.assertEqual(fb.connections[1]["proxy"], v2)
        self.assertIsNone(fb.connections[2]["proxy"])

    def test_per_connection_scripts(self):
        _, port = self.backend({"connections": [{"greeting": [{"close": True}]}, {}]})
        c = Client(port)
        self.assertEqual(c.drain(), (b"", "eof"))
        c.close()
        c = Client(port)
        self.addCleanup(c.close)
        self.assertEqual(c.until(b"\r\n"), GREET)

    def test_cli_ready_and_lifetime(self):
        here = os.path.dirname(os.path.abspath(__file__))
        p = subprocess.Popen([sys.executable, os.path.join(here, "fake_backend.py"), "0",
                              "--scenario", "tagged_maybe", "--lifetime", "3"],
                             stdout=subprocess.PIPE, text=True)
        try:
            line = p.stdout.readline()
            self.assertTrue(line.startswith("READY "), line)
            c = Client(int(line.split()[1]))
            c.until(b"\r\n")
            c.send(b"x NOOP\r\n")
            self.assertEqual(c.until(b"\r\n"), b"x MAYBE NOOP completed\r\n")
            c.close()
            self.assertEqual(p.wait(timeout=10), 0)   # lifetime ends it
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=5)
            p.stdout.close()


if __name__ == "__main__":
    unittest.main(verbosity=2)
