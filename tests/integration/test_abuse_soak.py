#!/usr/bin/env python3
"""Soak (issue 9): SESSIONS concurrent TLS sessions through imapgate to a
private Dovecot for SECONDS, each doing a random mix of NOOP, SELECT, FETCH,
IDLE/DONE, LOGOUT and reconnects.  imapgate's RSS and CPU are sampled every
second; the run fails on any session error, if imapgate dies, or if RSS
grows after warm-up: the mean of the last third of the run must be within
10% (plus 2 MiB) of the mean of the middle third.

usage: test_abuse_soak.py PATH-TO-IMAPGATE [SECONDS [SESSIONS]]
       (meson runs 30 s x 200; scripts/soak defaults to 300 s x 5000)
"""

import os
import re
import random
import resource
import ssl
import sys
import threading
import time

import harness
from harness import Fail, check, say

GROWTH = 0.10               # allowed RSS growth, last third vs middle third
GROWTH_SLACK_KIB = 2048     # ... plus this (allocator noise on small runs)
RAMP = 0.15                 # fraction of the run over which sessions start
THINK = (0.1, 1.0)          # seconds between commands of one session
OPS_PER_CONN = (3, 25)      # commands before a session logs out and reconnects
DRIVER_SESSIONS = 1000      # sessions this driver runs at full THINK rate
MESSAGES = 10               # messages in the INBOX
IO = 30.0                   # socket timeout of one operation


def raise_nofile(want):
    """Raise this process's RLIMIT_NOFILE to at least want (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < new:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


def dovecot_for(base, sessions, mail):
    """A private Dovecot whose limits fit `sessions` (one imap process per
    session: 5000 sessions need about 25 GB, more than a 24 GB machine)."""
    d = harness.Dovecot(base, mail)
    with open(d.conf) as f:
        text = f.read()
    n = max(1000, sessions * 2 + 100)
    text = text.replace("default_process_limit = 1000", "default_process_limit = %d" % n)
    text = text.replace("default_client_limit = 4000", "default_client_limit = %d" % (n * 2))
    text = text.replace("mail_max_userip_connections = 2000",
                        "mail_max_userip_connections = %d" % n)
    # Dovecot's imap process serves one client (client_limit above 1 is not
    # honoured for imap): one process per session, about 5 MB each.
    text += ("\nservice imap {\n  process_limit = %d\n}\n" % (sessions + 100))
    with open(d.conf, "w") as f:
        f.write(text)
    return d.start()


class Stats:
    """Counters shared by the session threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.ops = 0
        self.connects = 0
        self.errors = []

    def add(self, ops=0, connects=0, error=None):
        """Count operations, connects and errors."""
        with self.lock:
            self.ops += ops
            self.connects += connects
            if error is not None and len(self.errors) < 20:
                self.errors.append(error)


def session_loop(n, port, tls, deadline, start_at, stats, think=THINK):
    """One session slot: connect, log in, random commands, reconnect; until deadline."""
    rnd = random.Random(n)
    time.sleep(max(0.0, start_at - time.monotonic()))
    while time.monotonic() < deadline:
        try:
            c = harness.Client(port, tls, timeout=IO)
            stats.add(connects=1)
            c.login("demo", "demo")
            selected = False
            for _ in range(rnd.randint(*OPS_PER_CONN)):
                if time.monotonic() >= deadline:
                    break
                op = rnd.random()
                if op < 0.3 or not selected:
                    if rnd.random() < 0.5 or not selected:
                        c.select()
                        selected = True
                    else:
                        c.cmd("NOOP")
                elif op < 0.6:
                    c.cmd("FETCH %d (FLAGS UID)" % rnd.randint(1, MESSAGES))
                elif op < 0.8:
                    c.fetch_body(rnd.randint(1, MESSAGES))
                else:
                    tag = c.next_tag()
                    c.send(("%s IDLE\r\n" % tag).encode())
                    line = c.readline()
                    check(line.startswith(b"+"), "IDLE -> %r" % line)
                    time.sleep(rnd.uniform(0.2, 2.0))
                    c.send(b"DONE\r\n")
                    tagged, _ = c.response(tag)
                    check(tagged.startswith(("%s OK" % tag).encode()), "DONE -> %r" % tagged)
                stats.add(ops=1)
                time.sleep(rnd.uniform(*think))
            c.logout()
        except Exception as e:      # counted; the run fails at the end
            stats.add(error="session %d: %s" % (n, e))
            try:
                c.close()
            except Exception:
                pass
            time.sleep(0.5)


def cpu_seconds(pid):
    """utime + stime of pid in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main(argv):
    """Run the soak; exit 0 when it held, 1 otherwise, 77 without Dovecot."""
    binary = harness.imapgate_binary(argv)
    seconds = int(argv[2]) if len(argv) > 2 else 30
    sessions = int(argv[3]) if len(argv) > 3 else 200
    if not harness.shutil.which("dovecot"):
        say("SKIP: dovecot is not installed")
        return harness.SKIP
    raise_nofile(sessions * 2 + 1000)
    threading.stack_size(256 << 10)
    tmp = harness.tempfile.mkdtemp(prefix="imapgate-soak-")
    os.chmod(tmp, 0o755)
    gate = dove = None
    try:
        cert, key = harness.make_cert(tmp)
        mail = {"demo": [harness.make_message("soak %d" % i, size=2000 + 3000 * i, seed=i)
                         for i in range(MESSAGES)]}
        dove = dovecot_for(os.path.join(tmp, "dovecot"), sessions, mail)
        gate = harness.Imapgate(binary, tmp, cert, key, dove.port, extra=(
            "limits:\n  max_connections_per_ip: 0\n  max_connections: %d\n"
            % (sessions * 2 + 100)))
        gate.start()
        tls = ssl.create_default_context(cafile=cert)
        t0 = time.monotonic()
        deadline = t0 + seconds
        stats = Stats()
        threads = []
        # One Python process drives every session: past ~1000 sessions the
        # think time grows with the count, so the driver (not imapgate)
        # does not become the bottleneck; the session count is what a soak
        # tests, and the command rate stays near that of 1000 sessions.
        scale = max(1.0, sessions / DRIVER_SESSIONS)
        think = (THINK[0] * scale, THINK[1] * scale)
        for n in range(sessions):
            t = threading.Thread(target=session_loop, daemon=True, args=(
                n, gate.port, tls, deadline, t0 + RAMP * seconds * n / sessions, stats,
                think))
            t.start()
            threads.append(t)
        pid = gate.proc.pid
        samples = []    # (second, rss KiB, cpu seconds)
        while time.monotonic() < deadline:
            check(gate.proc.alive(), "imapgate died:\n%s" % gate.log_text()[-3000:])
            sec = time.monotonic() - t0
            samples.append((sec, harness.Proc.rss_kib(gate.proc), cpu_seconds(pid)))
            if len(samples) % max(1, seconds // 30) == 0:
                s = samples[-1]
                say("t=%4.0fs rss=%6d KiB cpu=%6.1fs ops=%d connects=%d errors=%d"
                    % (s[0], s[1], s[2], stats.ops, stats.connects, len(stats.errors)))
            time.sleep(1.0)
        for t in threads:
            t.join(max(0.1, IO + 5 - (time.monotonic() - deadline)))
        hung = sum(1 for t in threads if t.is_alive())
        third = seconds / 3.0
        mid = [r for s, r, _ in samples if third <= s < 2 * third]
        last = [r for s, r, _ in samples if s >= 2 * third]
        check(mid and last, "too few samples")
        m_mid, m_last = sum(mid) / len(mid), sum(last) / len(last)
        cpu = samples[-1][2] - samples[0][2]
        say("soak: %d sessions, %ds: %d ops, %d connects, %d errors; RSS middle %.0f KiB, "
            "last %.0f KiB (%+.1f%%); imapgate CPU %.1fs (%.0f%% of one core)"
            % (sessions, seconds, stats.ops, stats.connects, len(stats.errors), m_mid,
               m_last, 100.0 * (m_last - m_mid) / m_mid, cpu, 100.0 * cpu / seconds))
        for e in stats.errors[:10]:
            say("  error: %s" % e)
        check(hung == 0, "%d session threads still running after the deadline" % hung)
        check(not stats.errors, "%d session errors" % len(stats.errors))
        check(stats.ops > sessions, "only %d operations" % stats.ops)
        check(m_last <= m_mid * (1 + GROWTH) + GROWTH_SLACK_KIB,
              "RSS grew after warm-up: %.0f -> %.0f KiB" % (m_mid, m_last))
        rc = gate.stop()
        check(rc == 0, "imapgate exited with status %s" % rc)
        say("soak passed")
        return 0
    except Fail as e:
        say("FAIL: %s" % e)
        if gate:
            text = gate.log_text()
            reasons = {}
            for m in re.finditer(r"reason=(\S+)", text):
                reasons[m.group(1)] = reasons.get(m.group(1), 0) + 1
            say("session end reasons: %s" % reasons)
            say("\n".join(l for l in text.splitlines()
                          if "reason=" in l and "reason=backend-eof" not in l
                          and "reason=client-eof" not in l)[-3000:])
        return 1
    finally:
        if gate:
            gate.stop()
        if dove:
            dove.stop()
        if os.environ.get("IMAPGATE_TEST_KEEP") != "1":
            harness.shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
