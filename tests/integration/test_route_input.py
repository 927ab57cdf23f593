#!/usr/bin/env python3
"""Bad and unusual client input before login (`backend.route: login`),
against one real Dovecot, byte-exact:

- LOGIN with missing or extra arguments: tagged BAD; an 8-bit user name
  in a literal (UTF-8 and not) and a 1 KiB user name: a tagged NO/BAD and
  the session goes on; the password as a synchronizing literal (imapgate
  says "+") and as LITERAL+; a quoted password with `"` and `\\`.
- AUTHENTICATE PLAIN with broken base64 (initial response and
  continuation): BAD; `*` cancels with BAD; PLAIN without SASL-IR and
  AUTHENTICATE LOGIN log in.
- A STARTTLS listener with require_tls: LOGIN and AUTHENTICATE before
  STARTTLS get NO [PRIVACYREQUIRED]; after STARTTLS LOGIN works.
- 1,000 failed logins from one address over 4 connections with
  limits.login_failures_per_ip: 50: after 50, `NO [UNAVAILABLE] Too many
  failed logins` with no backend connection (Dovecot sees exactly 50 auth
  attempts), RSS flat, and no password ever appears in the debug log.
- LOGOUT before login closes the connection; 50 BADs end it with BYE.
- LOGIN, SELECT, LOGOUT pipelined in one write: three answers in order; a
  client sending one byte at a time logs in; a client that sends
  CAPABILITY commands and never reads is bounded (imapgate stops reading
  it, memory stays flat, it serves others).

usage: test_route_input.py [PATH-TO-IMAPGATE]   (or $IMAPGATE)
Skips (77) unless dovecot is installed.
"""

import base64
import os
import re
import socket
import ssl
import sys
import time

import harness
from harness import Fail, check, say
import test_abuse_common as ac
import test_guard_common as common
import test_route_common as rc
import test_tls_common as tc

ALICE = ("alice", "alice-Pw-1")
QUOTE = ("quote", 'q"uo\\te {3} x')    # `"`, `\`, a brace and spaces
LIT = ("lit", "lit-Pw-5 {5+}")
FLOOD_SRC = "127.0.0.9"           # the address of the 1,000 failures
FLOOD_LIMIT = 50                  # limits.login_failures_per_ip in that test
FLOOD_TRIES = 1000
FLOOD_CONNS = 4
RSS_GROWTH_KIB = 10 * 1024        # "flat": less than 10 MB more
NEVER_READ_CAP = 64 << 20         # bytes a never-reading client may push before Fail
NO_QUARANTINE = {"ASAN_OPTIONS": (os.environ.get("ASAN_OPTIONS", "") + ":"
                                  if os.environ.get("ASAN_OPTIONS") else "")
                 + "quarantine_size_mb=0"}

# Every secret a client sends anywhere in this file; none may be logged.
SECRETS = [ALICE[1], QUOTE[1], LIT[1]]


def b64(s):
    """base64 of s (str or bytes) as str."""
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


def plain_blob(user, pw, authz=""):
    """An AUTHENTICATE PLAIN response, base64."""
    blob = b64("%s\0%s\0%s" % (authz, user, pw))
    SECRETS.append(blob)
    return blob


def setup(env):
    """One Dovecot (alice, quote, lit), the main gate (hash, debug log)."""
    d = rc.RouteDovecot(os.path.join(env.tmp, "a"), "a",
                        {ALICE[0]: ALICE[1], QUOTE[0]: "placeholder-1", LIT[0]: LIT[1]})
    # RouteDovecot keeps characters other configs cannot quote out of
    # passwords; the passwd file takes them as they are.
    path = os.path.join(d.base, "passwd")
    with open(path) as f:
        text = f.read()
    with open(path, "w") as f:
        f.write(text.replace("{PLAIN}placeholder-1:", "{PLAIN}%s:" % QUOTE[1]))
    env.backends.append(d)
    d.start()
    env.d = d
    env.g = rc.login_gate(env, [d.port], "{type: hash}", level="debug",
                          extra="timeouts:\n  login_failure: 0s\n", name="imapgate-main")
    say("setup: Dovecot %d, imapgate %d" % (d.port, env.g.port))


def session(env, src=None):
    """A raw plaintext connection to the main gate (greeting read)."""
    c = rc.Raw(env.g.port, src=src)
    check(c.greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 "), "greeting %r" % c.greeting)
    return c


def usable(c, what):
    """The session still answers: NOOP OK, then alice logs in and LOGOUT."""
    data = c.cmd("n", "NOOP")
    check(data == b"n OK NOOP completed\r\n", "%s: NOOP after -> %r" % (what, data))
    data = c.cmd("g", 'LOGIN "%s" "%s"' % ALICE)
    check(rc.tagged_line(data, "g").startswith(b"g OK [CAPABILITY "),
          "%s: good LOGIN after -> %r" % (what, data))
    data = c.cmd("z", "LOGOUT")
    check(b"* BYE" in data and rc.tagged_line(data, "z").startswith(b"z OK"),
          "%s: LOGOUT -> %r" % (what, data))
    c.close()


def t_login_arguments(env):
    """LOGIN with missing or extra arguments, or none: tagged BAD; the
    connection goes on."""
    c = session(env)
    for n, line in enumerate([b"LOGIN", b"LOGIN alice", b'LOGIN "alice"',
                              b"LOGIN alice pw extra", b'LOGIN "alice" "pw" "x"',
                              b"LOGIN alice pw ", b"AUTHENTICATE"]):
        tag = b"b%d" % n
        c.send(tag + b" " + line + b"\r\n")
        data = c.until(tag)
        check(data.startswith(tag + b" BAD ") and data.count(b"\r\n") == 1,
              "%r -> %r" % (line, data))
        say("   %-26r -> %r" % (line, data.strip()))
    usable(c, "after the BADs")


def t_user_names(env):
    """8-bit user names in a literal (valid UTF-8 and not) and a 1 KiB user
    name: a tagged NO or BAD each, and the session goes on."""
    cases = [("UTF-8 user in a literal", "üser@x.test".encode()),
             ("invalid UTF-8 user in a literal", b"\xff\xfe\x80user"),
             ("1 KiB user (literal)", b"u" * 1024),
             ("1 KiB user (quoted)", None)]
    for what, user in cases:
        c = session(env)
        if user is None:
            c.send(b'q LOGIN "' + b"v" * 1024 + b'" "pw"\r\n')
        else:
            c.send(b"q LOGIN {%d}\r\n" % len(user))
            cont = c.line()
            check(cont.startswith(b"+"), "%s: no continuation: %r" % (what, cont))
            c.send(user + b' "pw"\r\n')
        data = c.until("q")
        check(re.match(rb"^q (NO|BAD) ", data) and data.count(b"\r\n") == 1,
              "%s -> %r" % (what, data))
        say("   %-32s -> %r" % (what, data.strip()))
        usable(c, what)


def t_password_forms(env):
    """The password as a synchronizing literal (imapgate sends "+"), as
    LITERAL+ (no "+"), and a quoted password with `"` and `\\`."""
    user, pw = QUOTE
    raw = pw.encode()
    # Synchronizing literal.
    c = session(env)
    c.send(b'a LOGIN "%s" {%d}\r\n' % (user.encode(), len(raw)))
    cont = c.line()
    check(cont.startswith(b"+ "), "no + for a synchronizing literal: %r" % cont)
    c.send(raw + b"\r\n")
    data = c.until("a")
    check(data.startswith(b"a OK [CAPABILITY "), "literal password -> %r" % data)
    c.close()
    say("   {%d} -> %r, then %r" % (len(raw), cont.strip(), data[:30]))
    # LITERAL+: everything in one write, no "+".
    for u, p in (QUOTE, LIT):
        c = session(env)
        c.send(b"a LOGIN {%d+}\r\n%s {%d+}\r\n%s\r\n" % (len(u), u.encode(), len(p.encode()),
                                                         p.encode()))
        data = c.until("a")
        check(data.startswith(b"a OK [CAPABILITY ") and b"\r\n+" not in b"\r\n" + data,
              "LITERAL+ %s -> %r" % (u, data))
        c.close()
    # Quoted with escapes.
    c = session(env)
    quoted = '"%s"' % pw.replace("\\", "\\\\").replace('"', '\\"')
    data = c.cmd("a", "LOGIN %s %s" % (user, quoted))
    check(data.startswith(b"a OK [CAPABILITY "), "quoted %s -> %r" % (quoted, data))
    c.send(rc.LANDED_TAIL)
    check(rc.parse_subject(c.until("x3")) == ("a", user), "quoted login landed elsewhere")
    c.close()
    say("   quoted %s -> OK" % quoted)


def t_authenticate(env):
    """AUTHENTICATE PLAIN: broken base64 -> BAD (initial response and after
    "+"), "*" -> BAD, then PLAIN without SASL-IR logs in; AUTHENTICATE LOGIN
    logs in."""
    c = session(env)
    for ir in ("@@@@", "YWJj=ZGVm", "YWJjZA"):
        data = c.cmd("p", "AUTHENTICATE PLAIN %s" % ir)
        check(data.startswith(b"p BAD ") and data.count(b"\r\n") == 1,
              "PLAIN %r -> %r" % (ir, data))
        say("   PLAIN %-10s -> %r" % (ir, data.strip()))
    c.send(b"q AUTHENTICATE PLAIN\r\n")
    check(c.line() == b"+ \r\n", "no empty continuation")
    c.send(b"!!not base64!!\r\n")
    data = c.until("q")
    check(data.startswith(b"q BAD "), "broken continuation -> %r" % data)
    c.send(b"r AUTHENTICATE PLAIN\r\n")
    check(c.line() == b"+ \r\n", "no empty continuation")
    c.send(b"*\r\n")
    data = c.until("r")
    check(data.startswith(b"r BAD "), "cancel -> %r" % data)
    say("   * -> %r" % data.strip())
    check(c.cmd("n", "NOOP") == b"n OK NOOP completed\r\n", "NOOP after the cancel")
    # PLAIN without SASL-IR.
    c.send(b"s AUTHENTICATE PLAIN\r\n")
    check(c.line() == b"+ \r\n", "no empty continuation")
    c.send(plain_blob(*ALICE).encode() + b"\r\n")
    data = c.until("s")
    check(data.startswith(b"s OK [CAPABILITY "), "PLAIN after + -> %r" % data)
    c.close()
    # AUTHENTICATE LOGIN.
    c = session(env)
    c.send(b"l AUTHENTICATE LOGIN\r\n")
    check(c.line() == b"+ VXNlcm5hbWU6\r\n", "no Username: challenge")
    c.send(b64(ALICE[0]).encode() + b"\r\n")
    check(c.line() == b"+ UGFzc3dvcmQ6\r\n", "no Password: challenge")
    SECRETS.append(b64(ALICE[1]))
    c.send(b64(ALICE[1]).encode() + b"\r\n")
    data = c.until("l")
    check(data.startswith(b"l OK [CAPABILITY "), "AUTHENTICATE LOGIN -> %r" % data)
    c.close()


def t_starttls_required(env):
    """require_tls on a STARTTLS listener: no AUTH= and LOGINDISABLED before
    TLS, LOGIN/AUTHENTICATE -> NO [PRIVACYREQUIRED]; after STARTTLS, LOGIN."""
    g = rc.login_gate(env, [env.d.port], "{type: hash}", tls="starttls",
                      listen="    require_tls: true\n")
    c = tc.plain_client(g.port, timeout=rc.CLIENT_TIMEOUT)
    caps = c.greeting.split(b"]")[0].split()
    check(b"STARTTLS" in caps and b"LOGINDISABLED" in caps and
          not any(x.startswith(b"AUTH=") for x in caps), "greeting %r" % c.greeting)
    for cmd in ('LOGIN "%s" "%s"' % ALICE, "AUTHENTICATE PLAIN " + plain_blob(*ALICE)):
        t, _ = c.cmd(cmd, ok=False)
        check(re.match(rb"^T\d+ NO \[PRIVACYREQUIRED\] ", t), "%s before STARTTLS -> %r"
              % (cmd.split()[0], t))
        say("   %s before STARTTLS -> %r" % (cmd.split()[0], t.strip()))
    tc.starttls(c, env.tls)
    after = tc.capabilities(c)
    check(b"LOGINDISABLED" not in after and b"STARTTLS" not in after and
          b"AUTH=PLAIN" in after, "capabilities after STARTTLS %r" % after)
    t, _ = c.login(*ALICE)
    check(t.startswith(b"T") and b" OK [CAPABILITY " in t, "LOGIN after STARTTLS -> %r" % t)
    c.select("INBOX")
    c.logout()
    check(any(x == "alice" for x in env.d.logins()), "no alice login at Dovecot")


def dovecot_auth_attempts(d):
    """Authentication attempts Dovecot's login process reported."""
    n = 0
    for m in re.finditer(r"\((?:auth failed|[^()]*?), (\d+) attempts in ", d.log_text()):
        n += int(m.group(1))
    return n


def t_failure_flood(env):
    """1,000 failed logins from one address over 4 connections, limit 50:
    50 reach Dovecot, the rest get NO [UNAVAILABLE] Too many failed logins
    with no backend connection; RSS stays flat; then even the right
    password is refused from there but not from another address."""
    g = rc.login_gate(env, [env.d.port], "{type: hash}", level="debug", proc_env=NO_QUARANTINE,
                      extra="timeouts:\n  login_failure: 0s\n"
                            "limits:\n  login_failures_per_ip: %d\n" % FLOOD_LIMIT)
    env.flood_gate = g
    time.sleep(0.3)             # earlier tests' disconnect lines are in
    base_attempts = dovecot_auth_attempts(env.d)
    conns = [rc.Raw(g.port, src=FLOOD_SRC) for _ in range(FLOOD_CONNS)]
    replies, rss0 = {}, None
    t0 = time.monotonic()
    for i in range(FLOOD_TRIES):
        pw = "Flood-%04d-pw" % i
        SECRETS.append(pw)
        c = conns[i % FLOOD_CONNS]
        data = c.cmd("f%d" % i, 'LOGIN "%s" "%s"' % (ALICE[0], pw))
        key = re.sub(rb"^f\d+ ", b"", data)
        replies[key] = replies.get(key, 0) + 1
        if i == 2 * FLOOD_LIMIT:
            rss0 = ac.rss_kib(g.proc.pid)
    secs = time.monotonic() - t0
    for k, v in sorted(replies.items(), key=lambda kv: -kv[1]):
        say("   %4d x %r" % (v, k.strip()))
    check(replies.get(b"NO [AUTHENTICATIONFAILED] Authentication failed\r\n") == FLOOD_LIMIT,
          "want exactly %d AUTHENTICATIONFAILED: %r" % (FLOOD_LIMIT, replies))
    refused = [k for k in replies if k.startswith(b"NO [UNAVAILABLE] Too many failed logins")]
    check(len(refused) == 1 and replies[refused[0]] == FLOOD_TRIES - FLOOD_LIMIT,
          "want %d refusals: %r" % (FLOOD_TRIES - FLOOD_LIMIT, replies))
    # Dovecot saw exactly the first 50 (its log lines come at each disconnect).
    end = time.monotonic() + 5
    while dovecot_auth_attempts(env.d) - base_attempts < FLOOD_LIMIT and time.monotonic() < end:
        time.sleep(0.05)
    time.sleep(0.3)
    seen = dovecot_auth_attempts(env.d) - base_attempts
    check(seen == FLOOD_LIMIT, "Dovecot logged %d auth attempts, want %d" % (seen, FLOOD_LIMIT))
    rss1 = ac.rss_kib(g.proc.pid)
    say("   %d attempts in %.2fs; Dovecot saw %d; RSS %d -> %d KiB"
        % (FLOOD_TRIES, secs, seen, rss0, rss1))
    check(rss1 - rss0 < RSS_GROWTH_KIB, "RSS grew %d KiB over %d refused logins"
          % (rss1 - rss0, FLOOD_TRIES - 2 * FLOOD_LIMIT))
    # The right password is refused too from there, not from elsewhere.
    data = conns[0].cmd("ok1", 'LOGIN "%s" "%s"' % ALICE)
    check(data.startswith(b"ok1 NO [UNAVAILABLE] Too many failed logins"),
          "right password from the flooding address -> %r" % data)
    for c in conns:
        c.close()
    line, where = rc.quick_login(g.port, *ALICE, src="127.0.0.10")
    check(where == ("a", "alice"), "another address: %r" % line)
    f = rc.log_fields(rc.wait_lines(g, r"msg=login-failed client_ip=%s " % re.escape(FLOOD_SRC),
                                    FLOOD_LIMIT)[-1])
    check(f.get("failures") == str(FLOOD_LIMIT), "last login-failed line %r" % f)


def t_logout_and_bads(env):
    """Before login, LOGOUT ends the connection (BYE, OK, close), and a
    client looping on errors is cut off after 50 BADs."""
    c = session(env)
    c.send(b"z LOGOUT\r\n")
    data, how = tc.read_all(c.sock, timeout=5.0)
    check(data == b"* BYE Logging out\r\nz OK Logout completed\r\n" and how == "eof",
          "LOGOUT before login -> %r, then %s" % (data, how))
    c = session(env)
    c.send(b"".join(b"e%d SELECT INBOX\r\n" % i for i in range(60)))
    data, how = tc.read_all(c.sock, timeout=5.0)
    bads = re.findall(rb"(?:^|\r\n)e\d+ BAD ", data)
    say("   60 SELECTs before login: %d BAD, then %r, %s"
        % (len(bads), data.split(b"\r\n")[-2][:60], how))
    check(how == "eof" and len(bads) == 50 and data.endswith(b"\r\n* BYE Too many invalid "
                                                             b"commands\r\n"),
          "50 BADs then BYE and close: got %d BADs, %s, tail %r" % (len(bads), how, data[-80:]))


def t_pipelined(env):
    """LOGIN, SELECT, LOGOUT in one write: a's OK, b's SELECT (run after the
    login), c's BYE and OK, in that order."""
    c = session(env)
    c.send(b'a LOGIN "%s" "%s"\r\nb SELECT INBOX\r\nc LOGOUT\r\n'
           % (ALICE[0].encode(), ALICE[1].encode()))
    data = c.until("c")
    c.close()
    tags = re.findall(rb"(?:^|\r\n)([abc]) (OK|NO|BAD)", data)
    check(tags == [(b"a", b"OK"), (b"b", b"OK"), (b"c", b"OK")], "tagged replies %r in %r"
          % (tags, data[-400:]))
    ia, ib = data.index(b"\r\nb OK"), data.index(b"* 1 EXISTS")
    check(data.index(b"a OK") < ib < ia and data.index(b"* BYE") > ia,
          "out of order: %r" % data)
    say("   %s" % " | ".join(x.decode()[:40] for x in data.split(b"\r\n") if x[:2] in
                           (b"a ", b"b ", b"c ", b"* ")))


def t_byte_at_a_time(env):
    """A client sending one byte per segment logs in and selects."""
    c = session(env)
    c.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    for b in b'a LOGIN "%s" {%d}\r\n' % (ALICE[0].encode(), len(ALICE[1])):
        c.send(bytes([b]))
        time.sleep(0.001)
    check(c.line().startswith(b"+ "), "no + for the literal")
    for b in ALICE[1].encode() + b"\r\nb SELECT INBOX\r\n":
        c.send(bytes([b]))
        time.sleep(0.001)
    data = c.until("b")
    check(rc.tagged_line(data, "a").startswith(b"a OK [CAPABILITY ") and
          rc.tagged_line(data, "b").startswith(b"b OK"), "byte at a time -> %r" % data)
    c.close()


def t_never_reads(env):
    """A client that sends CAPABILITY after CAPABILITY and never reads:
    imapgate stops reading it (the client's sends block) or closes it;
    either way its memory stays flat and it serves the next client."""
    # The flood test's gate runs without ASan's quarantine (RSS is meaningful).
    g = getattr(env, "flood_gate", None)
    if g is None or not g.proc.alive():
        g = env.g
    rss0 = ac.rss_kib(g.proc.pid)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((rc.HOST, g.port))
    s.settimeout(2.0)
    chunk = b"x CAPABILITY\r\n" * 4096
    sent, how = 0, None
    while sent < NEVER_READ_CAP:
        try:
            n = s.send(chunk)
        except socket.timeout:
            how = "blocked"
            break
        except (ConnectionResetError, BrokenPipeError):
            how = "closed"
            break
        sent += n
    rss1 = ac.rss_kib(g.proc.pid)
    s.close()
    say("   sent %d KiB before the client was %s; RSS %d -> %d KiB"
        % (sent // 1024, how, rss0, rss1))
    check(how is not None, "imapgate took %d MiB from a client that never reads"
          % (sent >> 20))
    check(rss1 - rss0 < RSS_GROWTH_KIB, "RSS grew %d KiB" % (rss1 - rss0))
    check(g.proc.alive(), "imapgate died")
    line, where = rc.quick_login(g.port, *ALICE, src="127.0.0.11")
    check(where == ("a", "alice"), "next client: %r" % line)


def t_no_secrets_logged(env):
    """At log level debug no line of any gate's log holds a password or a
    SASL response (searched for each string)."""
    logs = {g.logfile: g.log_text() for g in env.gates}
    for path in os.listdir(env.tmp):
        if path.endswith(".log") and os.path.join(env.tmp, path) not in logs:
            with open(os.path.join(env.tmp, path), "rb") as f:
                logs[os.path.join(env.tmp, path)] = f.read().decode("utf-8", "replace")
    found = []
    for path, text in logs.items():
        for secret in set(SECRETS):
            forms = {secret, secret.replace("\\", "\\\\").replace('"', '\\"')}
            if any(x in text for x in forms):
                found.append("%s in %s" % (secret, os.path.basename(path)))
    say("   %d secrets searched in %d logs (%d KiB)" % (len(set(SECRETS)), len(logs),
                                                        sum(map(len, logs.values())) // 1024))
    check(not found, "secrets in the logs: %s" % found[:10])


def t_stop_clean(env):
    """The gates still running exit with status 0 on SIGTERM."""
    for g in list(env.gates):
        env.stop_gate(g)


def main():
    missing = rc.missing_tools("dovecot")
    if missing:
        say("SKIP: " + "; ".join(missing))
        return harness.SKIP
    env = common.GuardEnv(sys.argv)
    try:
        setup(env)
    except Exception:
        env.cleanup()
        raise
    keep = []

    def keep_gates(fn):
        """Run fn, then keep the gates it started (for the log search)."""
        def run(e):
            n = len(e.gates)
            r = fn(e)
            keep.extend(e.gates[n:])
            del e.gates[n:]
            return r
        return run

    def final_checks(e):
        e.gates.extend(keep)
        t_no_secrets_logged(e)

    common.run(env, [
        ("LOGIN with missing or extra arguments", t_login_arguments),
        ("8-bit and 1 KiB user names", t_user_names),
        ("password as literal, LITERAL+, quoted with escapes", t_password_forms),
        ("AUTHENTICATE: broken base64, cancel, no SASL-IR, LOGIN", t_authenticate),
        ("require_tls: PRIVACYREQUIRED before STARTTLS", keep_gates(t_starttls_required)),
        ("1,000 failed logins from one address", keep_gates(t_failure_flood)),
        ("LOGOUT and 50 BADs before login end the connection", t_logout_and_bads),
        ("LOGIN + SELECT + LOGOUT in one write", t_pipelined),
        ("one byte at a time", t_byte_at_a_time),
        ("a client that never reads", t_never_reads),
        ("no password in the debug logs", final_checks),
        ("gates stop cleanly", t_stop_clean),
    ])


if __name__ == "__main__":
    sys.exit(main())
