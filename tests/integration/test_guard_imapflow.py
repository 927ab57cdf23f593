#!/usr/bin/env python3
"""imapflow (npm, pinned in tests/integration/node/package.json) through
imapgate in front of Dovecot: reads a message, sees the connection end with
imapgate's BYE when the session's imap process dies, reconnects and reads
again.  Skips (77) when node/npm are missing; installs imapflow with
`npm ci` when node_modules is missing.

usage: test_guard_imapflow.py [PATH-TO-IMAPGATE]   (or $IMAPGATE)
"""

import os
import select
import shutil
import signal
import subprocess
import sys
import time

import harness
from harness import Fail, check, say
from test_guard_dovecot import SUBJECTS, imap_pids, session_pid

NODE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "node")
SCRIPT = os.path.join(NODE_DIR, "guard_imapflow.js")
LINE_TIMEOUT = 20.0     # seconds for each line the script prints
NPM_TIMEOUT = 600       # seconds for npm ci


def ensure_imapflow():
    """None when imapflow is ready, else why the test must skip."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node/npm are not installed"
    if not os.path.isfile(os.path.join(NODE_DIR, "node_modules", "imapflow", "package.json")):
        say("   npm ci in %s" % NODE_DIR)
        r = subprocess.run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund",
                            "--loglevel=error"], cwd=NODE_DIR, capture_output=True,
                           timeout=NPM_TIMEOUT)
        if r.returncode != 0:
            raise Fail("npm ci failed:\n%s" % r.stderr.decode("utf-8", "replace")[-2000:])
    return None


class Script:
    """The node script as a child with line-wise, time-bounded stdout."""

    def __init__(self, port):
        self.p = subprocess.Popen(["node", SCRIPT, str(port), "demo", "demo"],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, start_new_session=True)
        self.buf = b""
        self.lines = []

    def line(self):
        """The next line it prints; Fail after LINE_TIMEOUT or at exit."""
        end = time.monotonic() + LINE_TIMEOUT
        while b"\n" not in self.buf:
            left = end - time.monotonic()
            check(left > 0, "imapflow script silent for %.0fs; so far %r" % (LINE_TIMEOUT, self.lines))
            r, _, _ = select.select([self.p.stdout], [], [], left)
            if r:
                data = os.read(self.p.stdout.fileno(), 4096)
                check(data, "imapflow script ended; so far %r" % self.lines)
                self.buf += data
        i = self.buf.index(b"\n")
        line, self.buf = self.buf[:i].decode("utf-8", "replace"), self.buf[i + 1:]
        self.lines.append(line)
        check(not line.startswith("ERROR"), "imapflow: %s" % line)
        return line

    def expect(self, prefix):
        """Skip EVENT/NOOP lines until one starting with prefix."""
        while True:
            line = self.line()
            if line.startswith(prefix):
                return line[len(prefix):].strip()
            say("   imapflow: %s" % line)

    def stop(self):
        """Kill it if it is still running."""
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.p.wait(timeout=5)
        self.p.stdout.close()
        self.p.stdin.close()


def t_imapflow_recovers(env):
    """imapflow reads, sees BYE + close when the backend dies, reconnects, reads."""
    if env.direct:
        return "skip"
    before = set(imap_pids(env))
    s = Script(env.proxy.port)
    try:
        subj = s.expect("READ ")
        check(subj == SUBJECTS[0], "subject %r" % subj)
        s.expect("KILL-NOW")
        pid = session_pid(env, before)
        os.kill(pid, signal.SIGKILL)
        s.p.stdin.write(b"KILLED\n")
        s.p.stdin.flush()
        reason = s.expect("CLOSED")
        say("   imapflow closed, byeReason %r" % reason)
        check("Backend server unavailable" in reason, "imapflow saw no BYE: %r" % reason)
        subj = s.expect("READ-AGAIN ")
        check(subj == SUBJECTS[0], "subject after reconnect %r" % subj)
        s.p.wait(timeout=LINE_TIMEOUT)
        check(s.p.returncode == 0, "script exit status %s" % s.p.returncode)
        say("   reconnected and read %r again" % subj)
    finally:
        s.stop()


def main():
    try:
        why = ensure_imapflow()
    except Fail as e:
        say("FAIL: %s" % e)
        sys.exit(1)
    if why is not None:
        say("SKIP: %s" % why)
        sys.exit(harness.SKIP)
    mail = {"demo": [harness.make_message(x, seed=i) for i, x in enumerate(SUBJECTS)]}
    env = harness.Env(sys.argv, mail=mail)
    harness.run_tests(env, [("imapflow sees the BYE, reconnects, reads mail", t_imapflow_recovers)])


if __name__ == "__main__":
    main()
