#!/usr/bin/env python3
"""Check the WildDuck backend (wildduck/server.js) still sends the bytes that
tests/backends/README.md records. Needs `sh tests/backends/wildduck/setup.sh`
first; skips when node_modules is missing.

Run: python3 tests/backends/test_wildduck_backend.py
"""

import base64
import os
import re
import signal
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from test_fake_backend import Client  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
WD = os.path.join(HERE, "wildduck")
GREETING_RE = re.compile(rb"\* OK WildDuck IMAP Server ready for requests from 127\.0\.0\.1 [a-z0-9]{16}\r\n$")


def start_wildduck(env_extra=None):
    """Start server.js on a free port; return (process, port)."""
    env = dict(os.environ, **(env_extra or {}))
    p = subprocess.Popen(["node", os.path.join(WD, "server.js"), "0"], cwd=WD, env=env,
                         stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline()      # bounded: server.js exits on listen errors
    if not line.startswith("READY "):
        p.kill()
        p.wait(timeout=5)
        raise RuntimeError("server.js did not start: %r" % line)
    return p, int(line.split()[1])


@unittest.skipUnless(os.path.isdir(os.path.join(WD, "node_modules", "wildduck")),
                     "run tests/backends/wildduck/setup.sh first")
class WildDuckBackendTest(unittest.TestCase):

    def setUp(self):
        self.proc, self.port = start_wildduck()
        self.addCleanup(self.stop)   # runs after the clients' cleanups

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc.stdout.close()

    def client(self):
        c = Client(self.port)
        self.addCleanup(c.close)
        self.assertRegex(c.until(b"\r\n"), GREETING_RE)
        return c

    def test_resumed_client_gets_bad_and_stays_open(self):
        c = self.client()
        c.send(b"a SELECT INBOX\r\n")
        self.assertEqual(c.until(b"\r\n"), b"a BAD SELECT not allowed now\r\n")
        c.send(b"b NAMESPACE\r\n")
        self.assertEqual(c.until(b"\r\n"), b"b BAD NAMESPACE not allowed now\r\n")
        c.send(b"c NOOP\r\n")
        self.assertEqual(c.until(b"\r\n"), b"c OK Nothing done\r\n")

    def test_login_select_fetch_idle_append_logout(self):
        c = self.client()
        c.send(b"a LOGIN testuser pass\r\nb SELECT INBOX\r\n")
        self.assertEqual(c.until(b"a OK testuser authenticated\r\n")[:13], b"* CAPABILITY ")
        self.assertIn(b"* 4 EXISTS\r\n", c.until(b"b OK [READ-WRITE] SELECT completed\r\n"))
        c.send(b"c FETCH 1 (UID BODY.PEEK[])\r\n")
        self.assertTrue(c.until(b"c OK FETCH completed\r\n").startswith(b"* 1 FETCH (UID 45 BODY[] {89}\r\n"))
        c.send(b"d IDLE\r\n")
        self.assertEqual(c.until(b"\r\n"), b"+ idling\r\n")
        c.send(b"DONE\r\n")
        self.assertEqual(c.until(b"\r\n"), b"d OK IDLE terminated\r\n")
        c.send(b"e APPEND INBOX {8}\r\n")
        self.assertEqual(c.until(b"\r\n"), b"+ Go ahead\r\n")
        c.send(b"a: b\r\n\r\n\r\n")
        self.assertEqual(c.until(b"\r\n"), b"e OK [APPENDUID 123 70] APPEND completed\r\n")
        # The EXISTS comes through the notifier, asynchronously: poll.
        seen = b""
        for _ in range(20):
            c.send(b"g NOOP\r\n")
            seen = c.until(b"g OK Nothing done\r\n")
            if seen != b"g OK Nothing done\r\n":
                break
            time.sleep(0.05)
        self.assertEqual(seen, b"* 5 EXISTS\r\ng OK Nothing done\r\n")
        c.send(b"f LOGOUT\r\n")
        out, how = c.drain()
        self.assertTrue(out.startswith(b"* BYE Logout requested\r\nf OK "), out)
        self.assertEqual(how, "eof")

    def test_nonstandard_login_codes(self):
        c = self.client()
        for user, want in ((b"ratelimited", b"NO [RateLimitedError] Authentication was rate limited"),
                           (b"badscope", b"NO [InvalidAuthScope] Access to requested service disabled"),
                           (b"tempfail", b"NO [TEMPFAIL] LOGIN completed"),
                           (b"nobody", b"NO [AUTHENTICATIONFAILED] Invalid credentials")):
            c.send(b"t LOGIN " + user + b" pass\r\n")
            self.assertEqual(c.until(b"\r\n"), b"t " + want + b"\r\n")
        ir = base64.b64encode(b"\0tempfail\0pass")
        c.send(b"u AUTHENTICATE PLAIN " + ir + b"\r\n")
        self.assertEqual(c.until(b"\r\n"), b"u BAD Database error\r\n")


if __name__ == "__main__":
    unittest.main(verbosity=2)
