#!/usr/bin/env python3
"""Valgrind leak check (issue 9): imapgate runs under
`valgrind --leak-check=full --error-exitcode=1` in front of the scripted fake
backend while a fixed set of sessions goes through it (login, SELECT, FETCH,
IDLE/DONE, APPEND, LOGOUT; a client that drops mid-command; aborted TLS
handshakes; random bytes; an over-long line; ...);
then SIGTERM, and the exit status must be 0 (valgrind's 1 means a memory
error or a definite/possible leak).  About 20 s.

usage: valgrind_sessions.py PATH-TO-IMAPGATE
"""

import os
import random
import shutil
import signal
import socket
import ssl
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "integration"))
sys.path.insert(0, os.path.join(HERE, "..", "backends"))

import harness                                  # noqa: E402
from fake_backend import FakeBackend               # noqa: E402
from harness import Fail, check, say            # noqa: E402

START_TIMEOUT = 30.0        # valgrind starts slowly
EXIT_TIMEOUT = 30.0         # SIGTERM to exit, leak check included
IO = 20.0                   # socket timeout under valgrind


def sessions(port, tls):
    """The scripted sessions; each must end the way it is expected to."""
    c = harness.Client(port, tls, timeout=IO)
    c.login("demo", "demo")
    c.select()
    c.fetch_body(1)
    c.send(b"i1 IDLE\r\n")
    check(c.readline().startswith(b"+"), "IDLE not accepted")
    c.send(b"DONE\r\n")
    c.response("i1")
    c.append("INBOX", b"Subject: x\r\n\r\nhello\r\n")
    c.cmd("NOOP")
    c.logout()
    # Dropped in the middle of a command.
    c = harness.Client(port, tls, timeout=IO)
    c.login("demo", "demo")
    c.send(b"a1 APPEND INBOX {100}\r\n")
    c.readline()
    c.send(b"x" * 50)
    c.close()
    # An over-long line, then a normal command.
    c = harness.Client(port, tls, timeout=IO)
    c.login("demo", "demo")
    c.send(b"l1 NOOP " + b"x" * (200 << 10) + b"\r\nl2 NOOP\r\n")
    c.response("l2")
    c.logout()
    # Aborted handshakes and random bytes.
    rnd = random.Random(3)
    for i in range(3):
        s = socket.create_connection(("127.0.0.1", port), timeout=IO)
        if i:
            s.sendall(rnd.randbytes(4096) if i == 2 else b"\x16\x03\x01\x00\x05hello")
        s.close()
    c = harness.Client(port, tls, timeout=IO)
    c.close()


def main(argv):
    """Run the sessions under valgrind; exit 0 on a clean run, 77 to skip."""
    if len(argv) < 2:
        say("usage: valgrind_sessions.py PATH-TO-IMAPGATE")
        return 2
    if shutil.which("valgrind") is None:
        say("SKIP: valgrind is not installed (apt-get install valgrind)")
        return harness.SKIP
    binary = os.path.abspath(argv[1])
    if "libasan" in open("/proc/self/maps").read() or b"__asan_init" in open(binary, "rb").read():
        say("SKIP: imapgate is built with AddressSanitizer; valgrind cannot run it")
        return harness.SKIP
    tmp = tempfile.mkdtemp(prefix="imapgate-vg-")
    fb = FakeBackend({})
    gate = None
    try:
        cert, key = harness.make_cert(tmp)
        port = harness.free_port()
        bport = fb.start()
        conf = os.path.join(tmp, "imapgate.yaml")
        with open(conf, "w") as f:
            f.write(harness.imapgate_config(port, cert, key, bport,
                    "workers: 1\nlimits:\n  max_line: 64KiB\n  max_connections_per_ip: 0\n"
                    "timeouts:\n  drain: 2s\n"))
        vlog = os.path.join(tmp, "valgrind.log")
        gate = harness.Proc("valgrind", ["valgrind", "--leak-check=full", "--error-exitcode=1",
                                         "--errors-for-leak-kinds=definite,possible",
                                         "--log-file=" + vlog, binary, "-c", conf],
                            os.path.join(tmp, "imapgate.log"))
        harness.wait_port(port, gate, timeout=START_TIMEOUT)
        tls = ssl.create_default_context(cafile=cert)
        t0 = time.monotonic()
        sessions(port, tls)
        say("sessions done in %.1fs" % (time.monotonic() - t0))
        time.sleep(0.5)
        os.kill(gate.pid, signal.SIGTERM)
        try:
            rc = gate.p.wait(timeout=EXIT_TIMEOUT)
        except Exception:
            rc = None
        gate.stop()
        with open(vlog) as f:
            report = f.read()
        summary = [x for x in report.splitlines() if "ERROR SUMMARY" in x or "lost:" in x]
        say("\n".join(summary))
        if rc != 0:
            say(report[-6000:])
            say("FAIL: imapgate under valgrind exited with %s" % rc)
            return 1
        say("valgrind: no errors, no leaks")
        return 0
    except Fail as e:
        say("FAIL: %s" % e)
        if gate is not None:
            say(gate.log_text()[-3000:])
        return 1
    finally:
        if gate is not None:
            gate.stop()
        fb.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
