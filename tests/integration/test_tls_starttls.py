#!/usr/bin/env python3
"""STARTTLS on imapgate's client listener (issue 6): capabilities before and
after TLS, LOGIN/AUTHENTICATE refused in plaintext, the pipelined-injection
case, STARTTLS where it is not offered, and real clients (Python imaplib,
curl) logging in and reading mail from Dovecot over STARTTLS.

usage: test_tls_starttls.py [PATH-TO-IMAPGATE]   (or $IMAPGATE)
"""

import imaplib
import ssl
import subprocess
import sys

import harness
from harness import check, say
import test_tls_common as tc
from fake_backend import FakeBackend

LISTEN_REQUIRE = ""                         # require_tls defaults to true
LISTEN_OPTIONAL = "    require_tls: false\n"
CURL_TIMEOUT = 30


def no_verify():
    """A client TLS context that accepts the test's self-signed certificate."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def fake(env, script=None):
    """A scripted backend registered for the test's cleanup."""
    fb = FakeBackend(script)
    fb.start()
    env.backends.append(fb)
    return fb


def t_capabilities(env):
    """STARTTLS and LOGINDISABLED before TLS (greeting code and CAPABILITY),
    gone after; the backend never sees STARTTLS."""
    fb = fake(env)
    g = tc.gate(env, fb.port, listen=LISTEN_REQUIRE, tls="starttls")
    c = tc.plain_client(g.port)
    say("   greeting %r" % c.greeting)
    check(c.greeting.startswith(b"* OK [CAPABILITY "), "greeting %r" % c.greeting)
    code = c.greeting.split(b"]")[0].upper().split()
    check(b"STARTTLS" in code and b"LOGINDISABLED" in code, "greeting code %r" % code)
    caps = tc.capabilities(c)
    say("   before TLS: %s" % b" ".join(caps).decode())
    check(b"STARTTLS" in caps and b"LOGINDISABLED" in caps, "caps before TLS %r" % caps)
    check(b"IMAP4REV1" in caps, "backend caps lost: %r" % caps)
    tc.starttls(c, no_verify())
    caps = tc.capabilities(c)
    say("   after TLS:  %s" % b" ".join(caps).decode())
    check(b"STARTTLS" not in caps and b"LOGINDISABLED" not in caps, "caps after TLS %r" % caps)
    check(b"IMAP4REV1" in caps, "backend caps lost after TLS: %r" % caps)
    c.login("demo", "demo")
    c.logout()
    check(b"STARTTLS" not in fb.received.upper(), "STARTTLS reached the backend: %r"
          % fb.received)
    f = tc.session_end(g)
    check(f.get("tls", "-").startswith("TLSv1."), "session-end tls=%r" % f.get("tls"))
    check(f.get("user") == '"demo"', "session-end user=%r" % f.get("user"))


def t_login_refused_before_tls(env):
    """LOGIN and AUTHENTICATE in plaintext: NO [PRIVACYREQUIRED], never forwarded;
    the session continues and works after STARTTLS."""
    fb = fake(env)
    g = tc.gate(env, fb.port, listen=LISTEN_REQUIRE, tls="starttls")
    c = tc.plain_client(g.port)
    t, _ = c.cmd('LOGIN "demo" "demo"', ok=False)
    check(t == b"T1 NO [PRIVACYREQUIRED] Use STARTTLS first\r\n", "LOGIN -> %r" % t)
    t, _ = c.cmd("AUTHENTICATE PLAIN AGRlbW8AZGVtbw==", ok=False)
    check(t == b"T2 NO [PRIVACYREQUIRED] Use STARTTLS first\r\n", "AUTHENTICATE -> %r" % t)
    # AUTHENTICATE without SASL-IR: no continuation, the next line is a command.
    t, _ = c.cmd("AUTHENTICATE PLAIN", ok=False)
    check(t == b"T3 NO [PRIVACYREQUIRED] Use STARTTLS first\r\n", "AUTHENTICATE -> %r" % t)
    c.cmd("NOOP")
    check(b"LOGIN" not in fb.received.upper() and b"AUTHENTICATE" not in fb.received.upper()
          and b"AGRlbW8" not in fb.received, "credentials reached the backend: %r"
          % fb.received)
    tc.starttls(c, no_verify())
    c.login("demo", "demo")
    check(c.select("INBOX") == 3, "SELECT after STARTTLS")
    c.logout()


def t_pipelined_injection(env):
    """`a STARTTLS\\r\\nb LOGIN demo demo\\r\\n` in one packet: the LOGIN is
    discarded (never reaches the backend, never answered) and after TLS the
    session is still Not Authenticated."""
    fb = fake(env)
    g = tc.gate(env, fb.port, listen=LISTEN_REQUIRE, tls="starttls")
    c = tc.plain_client(g.port)
    c.send(b"a STARTTLS\r\nb LOGIN demo demo\r\n")
    t = c.readline()
    check(t == b"a OK Begin TLS negotiation now\r\n", "STARTTLS -> %r" % t)
    check(not c.buf, "plaintext after the STARTTLS OK: %r" % bytes(c.buf))
    c.sock = no_verify().wrap_socket(c.sock, server_hostname="localhost")
    c.send(b"c NOOP\r\n")
    t, items = c.response("c")
    check(t.startswith(b"c OK"), "NOOP -> %r" % t)
    check(not any(x.startswith(b"b ") for x, _ in items), "LOGIN was answered: %r" % items)
    check(b"LOGIN" not in fb.received.upper(), "backend saw the injected LOGIN: %r"
          % fb.received)
    # Still Not Authenticated: a command that needs login meets the guard.
    c.send(b"d SELECT INBOX\r\n")
    data, how = tc.read_all(c.sock)
    check(b"d BAD SELECT not allowed now" in data and b"* BYE Not logged in" in data,
          "SELECT after injection -> %r (%s)" % (data, how))
    check(b"SELECT" not in fb.received.upper(), "backend saw SELECT: %r" % fb.received)
    f = tc.session_end(g)
    check(f.get("user") in ('""', None), "session-end has a user: %r" % f)
    check(f.get("state") == "not-authenticated" or "not" in f.get("state", "").lower(),
          "session-end state %r" % f.get("state"))


def t_starttls_not_offered(env):
    """STARTTLS on an implicit-TLS listener, and a second STARTTLS after TLS:
    `NO STARTTLS is not available here`, session goes on."""
    fb = fake(env)
    g = tc.gate(env, fb.port, tls="implicit")
    c = tc.tls_client(g.port, env.tls)
    t, _ = c.cmd("STARTTLS", ok=False)
    check(t == b"T1 NO STARTTLS is not available here\r\n", "implicit: STARTTLS -> %r" % t)
    caps = tc.capabilities(c)
    check(b"STARTTLS" not in caps and b"LOGINDISABLED" not in caps, "implicit caps %r" % caps)
    c.login("demo", "demo")
    c.logout()
    g2 = tc.gate(env, fb.port, tls="starttls")
    c = tc.plain_client(g2.port)
    tc.starttls(c, no_verify())
    t, _ = c.cmd("STARTTLS", ok=False)
    check(t == b"T2 NO STARTTLS is not available here\r\n", "after TLS: STARTTLS -> %r" % t)
    c.login("demo", "demo")
    c.logout()
    check(b"STARTTLS" not in fb.received.upper(), "STARTTLS reached the backend")


def t_require_tls_false(env):
    """require_tls: false: STARTTLS offered, no LOGINDISABLED, LOGIN allowed."""
    fb = fake(env)
    g = tc.gate(env, fb.port, listen=LISTEN_OPTIONAL, tls="starttls")
    c = tc.plain_client(g.port)
    caps = tc.capabilities(c)
    check(b"STARTTLS" in caps and b"LOGINDISABLED" not in caps, "caps %r" % caps)
    c.login("demo", "demo")
    c.logout()


def t_imaplib(env):
    """Python imaplib against Dovecot: starttls(), login, select, fetch, logout."""
    d = tc.start_dovecot(env)
    if d is None:
        say("   SKIP: dovecot is not installed")
        return "skip"
    g = tc.gate(env, d.port, listen=LISTEN_REQUIRE, tls="starttls")
    m = imaplib.IMAP4("127.0.0.1", g.port, timeout=harness.IO_TIMEOUT)
    try:
        check("STARTTLS" in m.capabilities and "LOGINDISABLED" in m.capabilities,
              "imaplib saw %r" % (m.capabilities,))
        try:
            m.login("demo", "demo")
            raise harness.Fail("LOGIN in plaintext was accepted")
        except imaplib.IMAP4.error as e:
            say("   plaintext login refused: %s" % e)
        ctx = ssl.create_default_context(cafile=env.cert)
        typ, _ = m.starttls(ssl_context=ctx)
        check(typ == "OK", "starttls -> %r" % typ)
        check("STARTTLS" not in m.capabilities and "LOGINDISABLED" not in m.capabilities,
              "capabilities after TLS %r" % (m.capabilities,))
        typ, _ = m.login("demo", "demo")
        check(typ == "OK", "login -> %r" % typ)
        typ, data = m.select("INBOX")
        check(typ == "OK" and data == [b"2"], "select -> %r %r" % (typ, data))
        typ, data = m.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        check(typ == "OK" and b"Subject: TLS test 0" in data[0][1], "fetch -> %r" % data)
        m.logout()
    finally:
        try:
            m.shutdown()
        except OSError:
            pass
    f = tc.session_end(g)
    check(f.get("tls", "-").startswith("TLSv1."), "session-end %r" % f)


def t_curl(env):
    """curl --ssl-reqd imap://... through a STARTTLS listener to Dovecot."""
    why = tc.need("curl")
    if why:
        say("   SKIP: %s" % why)
        return "skip"
    d = tc.start_dovecot(env)
    if d is None:
        say("   SKIP: dovecot is not installed")
        return "skip"
    g = tc.gate(env, d.port, listen=LISTEN_REQUIRE, tls="starttls")
    base = "imap://127.0.0.1:%d/INBOX" % g.port
    for url, want in ((base, None), (base + ";UID=2", b"Subject: TLS test 1")):
        r = subprocess.run(["curl", "-sS", "--ssl-reqd", "-k", "--max-time", "20",
                            "-u", "demo:demo", url],
                           capture_output=True, timeout=CURL_TIMEOUT)
        say("   curl %s -> %d, %d bytes" % (url, r.returncode, len(r.stdout)))
        check(r.returncode == 0, "curl %s failed (%d): %s" % (url, r.returncode, r.stderr))
        if want:
            check(want in r.stdout, "curl output %r" % r.stdout[:300])
    # Without --ssl-reqd curl must not get to log in in plaintext.
    r = subprocess.run(["curl", "-sS", "--max-time", "20", "-u", "demo:demo", base],
                       capture_output=True, timeout=CURL_TIMEOUT)
    check(r.returncode != 0, "curl logged in without TLS: %r" % r.stdout[:300])
    f = tc.session_end(g, count=3)
    say("   last session-end: tls=%s user=%s" % (f.get("tls"), f.get("user")))


TESTS = [
    ("capabilities before and after STARTTLS", t_capabilities),
    ("LOGIN/AUTHENTICATE before TLS: NO [PRIVACYREQUIRED]", t_login_refused_before_tls),
    ("STARTTLS + pipelined LOGIN: nothing executed", t_pipelined_injection),
    ("STARTTLS where not offered", t_starttls_not_offered),
    ("require_tls: false", t_require_tls_false),
    ("imaplib starttls() against Dovecot", t_imaplib),
    ("curl --ssl-reqd against Dovecot", t_curl),
]

if __name__ == "__main__":
    tc.run(tc.Env(sys.argv), TESTS)
