#!/usr/bin/env python3
"""Session guard in front of a real Dovecot (harness.py): the session's imap
process killed under a Selected client, Dovecot's own BYE passed on alone,
Dovecot's wrong-state answers in states where they are legitimate, and
Python's imaplib seeing the BYE, reconnecting and reading mail again.

usage: test_guard_dovecot.py [PATH-TO-IMAPGATE]   (or $IMAPGATE)
"""

import imaplib
import os
import signal
import ssl
import sys
import time

import harness
from harness import Fail, check, say
from test_guard_common import BYE_UNAVAILABLE, no_fabricated_ok, read_to_close

PROC_WAIT = 5.0     # seconds to wait for the session's imap process
SUBJECTS = ["guard one", "guard two", "guard three"]


def imap_pids(env):
    """Pids of the Dovecot `imap` processes (one per logged-in session)."""
    master = env.dovecot.proc.pid
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                stat = f.read()
        except OSError:
            continue
        # pid (comm) state ppid ...: comm may hold spaces, split after ")".
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
        if ppid == master and comm == "imap":
            out.append(int(d))
    return out


def session_pid(env, before):
    """The imap process that appeared since the set before was taken."""
    end = time.monotonic() + PROC_WAIT
    while time.monotonic() < end:
        new = [p for p in imap_pids(env) if p not in before]
        if len(new) == 1:
            return new[0]
        check(len(new) < 2, "more than one new imap process: %r" % new)
        time.sleep(0.05)
    raise Fail("no imap process for the session after %.0fs" % PROC_WAIT)


def selected_client(env):
    """(client logged in as demo with INBOX selected, its imap pid)."""
    before = set(imap_pids(env))
    c = env.client()
    c.login("demo", "demo")
    check(c.select("INBOX") == len(SUBJECTS), "INBOX count")
    return c, session_pid(env, before)


def t_kill_imap_selected(env):
    """SIGKILL of the session's imap process while Selected: one BYE [UNAVAILABLE]."""
    if env.direct:
        return "skip"
    c, pid = selected_client(env)
    os.kill(pid, signal.SIGKILL)
    data, how = read_to_close(c)
    check(data == BYE_UNAVAILABLE, "got %r" % data)
    say("   imap pid %d killed -> %r, %s" % (pid, data, how))


def t_kill_imap_in_fetch_loop(env):
    """SIGKILL while commands are in flight: BYE or close, never their OK."""
    if env.direct:
        return "skip"
    c, pid = selected_client(env)
    c.send(b"".join(b"f%d UID FETCH 1:* (FLAGS BODY.PEEK[])\r\n" % i for i in range(20)))
    os.kill(pid, signal.SIGKILL)
    data, how = read_to_close(c)
    # Dovecot answered some before it died: only those may be OK.
    done = [i for i in range(20) if (b"f%d OK" % i) in data]
    no_fabricated_ok(data, ["f%d" % i for i in range(20) if i not in done])
    check(done == list(range(len(done))), "OK out of order: %r" % done)
    check(data.count(b"* BYE") <= 1, "more than one BYE")
    say("   %d of 20 FETCHes answered before the kill, then %s (%s)"
        % (len(done), "BYE" if b"* BYE" in data else "close", how))


def t_dovecot_own_bye(env):
    """SIGTERM: Dovecot says BYE itself; the client gets that one BYE only."""
    if env.direct:
        return "skip"
    c, pid = selected_client(env)
    os.kill(pid, signal.SIGTERM)
    data, how = read_to_close(c)
    byes = [x for x in data.split(b"\r\n") if x.startswith(b"* BYE")]
    check(len(byes) == 1, "BYE lines: %r" % byes)
    check(byes[0] != BYE_UNAVAILABLE.rstrip(b"\r\n"), "imapgate's BYE instead of Dovecot's: %r" % data)
    say("   %r (%s)" % (data, how))


def t_wrong_state_answers_pass(env):
    """Dovecot's `No mailbox selected` after a failed SELECT is an answer, not a desync."""
    c = env.client()
    c.login("demo", "demo")
    t, _ = c.cmd("SELECT Nope", ok=False)
    check(b" NO " in t, "SELECT Nope -> %r" % t)
    t, _ = c.cmd("FETCH 1 FLAGS", ok=False)
    check(b" BAD " in t and b"No mailbox selected" in t, "FETCH -> %r" % t)
    # Selected, then a failed SELECT: Dovecot has closed the mailbox.
    c.select("INBOX")
    t, _ = c.cmd("SELECT Nope", ok=False)
    check(b" NO " in t, "second SELECT Nope -> %r" % t)
    t, _ = c.cmd("FETCH 1 FLAGS", ok=False)
    check(b" BAD " in t and b"No mailbox selected" in t, "FETCH after failed SELECT -> %r" % t)
    c.cmd("NOOP")
    c.logout()
    say("   failed SELECT, FETCH -> %r; session goes on" % t)


def imaplib_session(env):
    """imaplib over TLS through imapgate, logged in, INBOX selected."""
    ctx = ssl.create_default_context(cafile=env.cert)
    m = imaplib.IMAP4_SSL("127.0.0.1", env.proxy.port, ssl_context=ctx, timeout=harness.IO_TIMEOUT)
    m.login("demo", "demo")
    typ, data = m.select("INBOX")
    check(typ == "OK" and int(data[0]) == len(SUBJECTS), "select %r %r" % (typ, data))
    return m


def subjects(m):
    """Subjects of every message in the selected mailbox."""
    typ, data = m.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    check(typ == "OK", "fetch %r" % typ)
    return [part[1].decode().strip().split(": ", 1)[1] for part in data if isinstance(part, tuple)]


def t_imaplib_recovers(env):
    """imaplib sees the BYE when the backend dies, reconnects, logs in, reads mail."""
    if env.direct:
        return "skip"
    before = set(imap_pids(env))
    m = imaplib_session(env)
    check(subjects(m) == SUBJECTS, "subjects before")
    pid = session_pid(env, before)
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.3)
    try:
        m.noop()
        raise Fail("NOOP succeeded on a dead session")
    except (imaplib.IMAP4.abort, OSError) as e:
        bye = m.untagged_responses.get("BYE", [])
        say("   imaplib: %s: %r; BYE %r" % (type(e).__name__, str(e)[:60], bye))
        check(bye == [b"[UNAVAILABLE] Backend server unavailable"] or
              "Backend server unavailable" in str(e), "imaplib did not see the BYE")
    try:
        m.shutdown()
    except OSError:
        pass
    m = imaplib_session(env)
    check(subjects(m) == SUBJECTS, "subjects after reconnect")
    m.logout()
    say("   reconnected through imapgate, read %d messages" % len(SUBJECTS))


def main():
    mail = {"demo": [harness.make_message(s, seed=i) for i, s in enumerate(SUBJECTS)]}
    env = harness.Env(sys.argv, mail=mail)
    harness.run_tests(env, [
        ("Dovecot imap process killed while Selected: BYE", t_kill_imap_selected),
        ("killed with 20 FETCHes in flight: no fabricated OK", t_kill_imap_in_fetch_loop),
        ("Dovecot's own BYE passed alone", t_dovecot_own_bye),
        ("`No mailbox selected` when not Selected passes", t_wrong_state_answers_pass),
        ("imaplib sees BYE, reconnects, reads mail", t_imaplib_recovers),
    ])


if __name__ == "__main__":
    main()
