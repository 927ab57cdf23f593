#!/usr/bin/env python3
"""Soak (issue 9): SESSIONS concurrent TLS sessions through imapgate to a
private Dovecot for SECONDS.  The sessions are driven by the C load
generator tests/bench/imapbench --scenario soak (one libevent loop: a Python
thread per session saturated a core at 5000 sessions): each session slot
connects, logs in, runs 3..25 operations picked at random (SELECT/EXAMINE,
NOOP, FETCH FLAGS, [UID] FETCH BODY.PEEK[], IDLE held 0.2-2 s then DONE)
with a random think time between them, logs out and reconnects, until the
end.  imapbench samples imapgate's RSS and CPU every second.

The run fails if any tagged reply is not OK or a session is closed or times
out (imapbench errors), if imapgate dies or does not exit 0 on SIGTERM, if
fewer than 95% of the sessions were ever open at once, if the driver itself
used most of a core (the result would measure the driver), or if RSS grows
after warm-up: the mean of the last third of the run must be within 10%
(plus 2 MiB) of the mean of the middle third.

usage: test_abuse_soak.py PATH-TO-IMAPGATE PATH-TO-IMAPBENCH [SECONDS [SESSIONS]]
       (meson runs 30 s x 200; scripts/soak defaults to 300 s x 5000)
"""

import os
import re
import resource
import subprocess
import sys
import threading
import time

import harness
from harness import Fail, check, say

GROWTH = 0.10               # allowed RSS growth, last third vs middle third
GROWTH_SLACK_KIB = 2048     # ... plus this (allocator noise on small runs)
MESSAGES = 10               # messages in the INBOX (UIDs 1..MESSAGES)
SEED = 1                    # imapbench --seed: the same choices every run
LIVE_MIN = 0.95             # share of the sessions that must be open at once
DRIVER_CPU_MAX = 0.9        # imapbench CPU per wall second: beyond, inconclusive
GRACE = 120.0               # seconds imapbench may run past SECONDS
# Dovecot serves DOVECOT_CLIENTS_PER_PROCESS sessions per imap process
# (service imap { service_count = 0; client_limit = N }; Dovecot 2.3 does
# honour client_limit > 1 for imap, though its docs recommend 1 because mail
# processes do blocking disk I/O, which does not matter for this small
# maildir).  Measured on Dovecot 2.3.19, 1000 sessions: one process per
# session costs ~0.72 MiB PSS per process, ~0.85 MiB of MemAvailable per
# session (the "5 MB each" once written here was VmRSS, which counts shared
# pages), so even 5000 sessions (~4.5 GB) would fit in 24 GB; ten sessions
# per process cost ~0.4 MiB per session.  Memory is not why: at 5000
# sessions, with ~100 logins/s from reconnects, forking, exec-ing and
# configuring an imap process per login took all of 2 cores (54% system
# time), Dovecot's listen queue filled and sessions timed out waiting for
# the greeting; reused processes take that cost away.
DOVECOT_CLIENTS_PER_PROCESS = 10


def raise_nofile(want):
    """Raise this process's RLIMIT_NOFILE to at least want (up to the hard
    limit); imapgate and imapbench inherit it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < new:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))


def dovecot_for(base, sessions, mail):
    """A private Dovecot whose process, client and per-user limits fit
    `sessions` (see DOVECOT_CLIENTS_PER_PROCESS for the memory it needs)."""
    d = harness.Dovecot(base, mail)
    with open(d.conf) as f:
        text = f.read()
    n = max(1000, sessions * 2 + 100)
    text = text.replace("default_process_limit = 1000", "default_process_limit = %d" % n)
    text = text.replace("default_client_limit = 4000", "default_client_limit = %d" % (n * 2))
    text = text.replace("mail_max_userip_connections = 2000",
                        "mail_max_userip_connections = %d" % n)
    per = DOVECOT_CLIENTS_PER_PROCESS
    procs = (sessions + per - 1) // per + 100
    if per == 1:
        text += "\nservice imap {\n  process_limit = %d\n}\n" % procs
    else:
        text += ("\nservice imap {\n  service_count = 0\n  client_limit = %d\n"
                 "  process_limit = %d\n}\n" % (per, procs))
    with open(d.conf, "w") as f:
        f.write(text)
    return d.start()


def parse_kv(line):
    """The key=value pairs of one imapbench line as a dict of strings."""
    return dict(m.groups() for m in re.finditer(r"(\w+)=(\S+)", line))


def run_driver(argv, gate, limit):
    """Run imapbench, echoing its lines; stop it if imapgate dies or it
    overruns limit seconds.  Returns (exit status, output lines)."""
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, text=True,
                         preexec_fn=harness._die_with_parent)
    lines = []

    def reader():
        """Collect and echo imapbench's output."""
        for line in p.stdout:
            lines.append(line.rstrip("\n"))
            say("  " + lines[-1])

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    end = time.monotonic() + limit
    try:
        while p.poll() is None:
            if not gate.proc.alive():
                raise Fail("imapgate died:\n%s" % gate.log_text()[-3000:])
            if time.monotonic() > end:
                raise Fail("imapbench still running %.0f s after its start" % limit)
            time.sleep(1.0)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        t.join(5.0)
    return p.returncode, lines


def main(argv):
    """Run the soak; exit 0 when it held, 1 otherwise, 77 without Dovecot."""
    binary = harness.imapgate_binary(argv)
    if len(argv) < 3:
        say("usage: test_abuse_soak.py IMAPGATE IMAPBENCH [SECONDS [SESSIONS]]")
        return 2
    bench = os.path.abspath(argv[2])
    seconds = int(argv[3]) if len(argv) > 3 else 30
    sessions = int(argv[4]) if len(argv) > 4 else 200
    if not (os.path.isfile(bench) and os.access(bench, os.X_OK)):
        # Not a skip: the soak cannot be judged without its driver.
        say("FAIL: imapbench not found or not executable: %s "
            "(build it: ninja -C BUILD tests/bench/imapbench)" % bench)
        return 1
    if not harness.shutil.which("dovecot"):
        say("SKIP: dovecot is not installed")
        return harness.SKIP
    raise_nofile(sessions * 3 + 1000)
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
        rc, lines = run_driver(
            [bench, "--scenario", "soak", "--conns", str(sessions),
             "--seconds", str(seconds), "--seed", str(SEED),
             "--interval", str(max(1, seconds // 30)), "--uids", "1-%d" % MESSAGES,
             "--target", "imapgate", "--pid", str(gate.proc.pid),
             "127.0.0.1:%d" % gate.port],
            gate, seconds + GRACE)
        result = [parse_kv(l) for l in lines if l.startswith("scenario=soak ")]
        check(result, "imapbench printed no result line (exit status %s)" % rc)
        r = result[-1]
        errors, ops = int(r["errors"]), int(r["ops"])
        m_mid, m_last = int(r["rss_mid_kib"]), int(r["rss_last_kib"])
        driver = float(r["client_cpu"])
        say("soak: %d sessions (at most %s open at once), %ds: %d ops, %s connects, "
            "%d errors; RSS middle %d KiB, last %d KiB (%+.1f%%); imapgate CPU %ss "
            "(%s%% of one core); driver %.0f%% of one core"
            % (sessions, r["live_max"], seconds, ops, r["connects"], errors, m_mid,
               m_last, 100.0 * (m_last - m_mid) / max(m_mid, 1), r["proxy_cpu"],
               r["proxy_cpu_pct"], 100 * driver))
        check(gate.proc.alive(), "imapgate died:\n%s" % gate.log_text()[-3000:])
        check(errors == 0, "%d session errors (first ones above)" % errors)
        check(rc == 0, "imapbench exited with status %s" % rc)
        check(ops > sessions, "only %d operations" % ops)
        check(int(r["live_max"]) >= LIVE_MIN * sessions,
              "at most %s of %d sessions were open at once" % (r["live_max"], sessions))
        check(driver < DRIVER_CPU_MAX, "imapbench used %.0f%% of a core: the driver, not "
              "imapgate, limited the run" % (100 * driver))
        check(m_mid > 0 and m_last > 0, "no RSS samples of imapgate")
        check(m_last <= m_mid * (1 + GROWTH) + GROWTH_SLACK_KIB,
              "RSS grew after warm-up: %d -> %d KiB" % (m_mid, m_last))
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
