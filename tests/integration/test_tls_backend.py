#!/usr/bin/env python3
"""TLS from imapgate to the backend (issue 6), against Dovecot with
`ssl = required` and a certificate from a private CA: implicit TLS and
STARTTLS with verification on (ca_file, server_name), what the client sees
(no stale pre-TLS capability code), verification failures (wrong CA, wrong
name) giving a BYE and a clear log line, verify: false, and a backend that
refuses STARTTLS.

usage: test_tls_backend.py [PATH-TO-IMAPGATE]   (or $IMAPGATE)
"""

import re
import ssl
import sys

from harness import check, say
import test_tls_common as tc
from test_guard_common import BYE_UNAVAILABLE, read_to_close
from fake_backend import FakeBackend

SERVER_NAME = "imap.internal"


def pki(env):
    """(good CA, other CA, Dovecot's cert signed by the good CA), made once."""
    if not hasattr(env, "pki"):
        good = tc.make_ca(env.tmp, "good")
        other = tc.make_ca(env.tmp, "other")
        leaf = tc.make_leaf(env.tmp, "dovecot-leaf", good, SERVER_NAME,
                            ["DNS:" + SERVER_NAME, "DNS:imap2.internal"])
        env.pki = (good, other, leaf)
    return env.pki


def backend_keys(mode, ca, name=SERVER_NAME, verify=None):
    """The backend: lines for tls mode, CA file, server_name, verify."""
    text = "  tls: %s\n  ca_file: %s\n  server_name: %s\n" % (mode, ca, name)
    if verify is not None:
        text += "  verify: %s\n" % ("true" if verify else "false")
    return text


def dovecot(env):
    """Dovecot with ssl = required, or None (skip)."""
    good, _, leaf = pki(env)
    d = tc.start_dovecot(env, tls_cert=leaf)
    if d is None:
        say("   SKIP: dovecot is not installed")
    return d


def use_mailbox(c):
    """Log in, select, fetch one message through c, log out."""
    c.login("demo", "demo")
    check(c.select("INBOX") == 2, "INBOX should hold 2 messages")
    body = c.fetch_body(1)
    check(b"Subject: TLS test 0" in body, "fetched %r" % body[:200])
    c.logout()


def check_dovecot_tls_login(d):
    """Dovecot logged the demo login as made over TLS."""
    line = tc.wait_dovecot_log(d, r"imap-login: (Info: )?Login: user=<demo>")
    check("TLS" in line, "Dovecot login not over TLS: %s" % line)
    say("   dovecot: %s" % line.split("imap-login: ")[-1][:160])


def t_implicit(env):
    """backend.tls implicit, verified: login, select, fetch work."""
    d = dovecot(env)
    if d is None:
        return "skip"
    good = pki(env)[0]
    g = tc.gate(env, d.tls_port, backend=backend_keys("implicit", good[0]))
    c = tc.tls_client(g.port, env.tls)
    check(c.greeting.startswith(b"* OK") and b"Dovecot" in c.greeting, "greeting %r"
          % c.greeting)
    use_mailbox(c)
    check_dovecot_tls_login(d)
    f = tc.session_end(g)
    check(f.get("reason") not in ("backend-tls-failed",), "session-end %r" % f)


def t_starttls(env):
    """backend.tls starttls, verified: the client's greeting carries no stale
    capability code, CAPABILITY shows the post-TLS list, the mailbox works."""
    d = dovecot(env)
    if d is None:
        return "skip"
    good = pki(env)[0]
    g = tc.gate(env, d.port, backend=backend_keys("starttls", good[0]))
    c = tc.tls_client(g.port, env.tls)
    say("   greeting %r" % c.greeting)
    check(c.greeting.startswith(b"* OK ") and b"[CAPABILITY" not in c.greeting.upper(),
          "greeting still has the pre-TLS capabilities: %r" % c.greeting)
    caps = tc.capabilities(c)
    check(b"STARTTLS" not in caps and b"LOGINDISABLED" not in caps,
          "client sees pre-TLS capabilities %r" % caps)
    check(b"IMAP4REV1" in caps, "caps %r" % caps)
    use_mailbox(c)
    check_dovecot_tls_login(d)


def t_starttls_both_legs(env):
    """A legacy backend offering only STARTTLS behind a STARTTLS listener:
    the client sees imapgate's STARTTLS/LOGINDISABLED, never Dovecot's."""
    d = dovecot(env)
    if d is None:
        return "skip"
    good = pki(env)[0]
    g = tc.gate(env, d.port, tls="starttls", backend=backend_keys("starttls", good[0]))
    c = tc.plain_client(g.port)
    caps = tc.capabilities(c)
    check(caps.count(b"STARTTLS") == 1 and caps.count(b"LOGINDISABLED") == 1, "caps %r" % caps)
    ctx = ssl.create_default_context(cafile=env.cert)
    tc.starttls(c, ctx)
    caps = tc.capabilities(c)
    check(b"STARTTLS" not in caps and b"LOGINDISABLED" not in caps, "caps after TLS %r" % caps)
    use_mailbox(c)
    check_dovecot_tls_login(d)


def expect_verify_failure(env, g, want):
    """A client through g gets exactly the UNAVAILABLE BYE; the session-end
    line names the TLS failure (want: a regex on its error=)."""
    c = tc.tls_client(g.port, env.tls)
    data = c.greeting + read_to_close(c)[0]
    check(data == BYE_UNAVAILABLE, "client got %r, want %r" % (data, BYE_UNAVAILABLE))
    f = tc.session_end(g)
    err = f.get("error", "")
    say("   session-end reason=%s error=%s" % (f.get("reason"), err))
    check(re.search(want, err, re.I), "error=%r does not match /%s/" % (err, want))


def t_verify_wrong_ca(env):
    """The backend's certificate is not from ca_file: BYE [UNAVAILABLE] and a
    log line saying the verification failed (implicit and STARTTLS)."""
    d = dovecot(env)
    if d is None:
        return "skip"
    other = pki(env)[1]
    for mode, port in (("implicit", d.tls_port), ("starttls", d.port)):
        g = tc.gate(env, port, backend=backend_keys(mode, other[0]))
        expect_verify_failure(env, g, r"certificate verify failed|unable to get local issuer")
    check("user=<demo>" not in d.log_text(), "a login reached Dovecot")


def t_verify_wrong_name(env):
    """The certificate does not name backend.server_name: refused likewise."""
    d = dovecot(env)
    if d is None:
        return "skip"
    good = pki(env)[0]
    g = tc.gate(env, d.tls_port, backend=backend_keys("implicit", good[0], name="other.internal"))
    expect_verify_failure(env, g, r"certificate verify failed|hostname mismatch")


def t_verify_off(env):
    """verify: false, written out: the wrong CA is accepted."""
    d = dovecot(env)
    if d is None:
        return "skip"
    other = pki(env)[1]
    g = tc.gate(env, d.tls_port, backend=backend_keys("implicit", other[0], verify=False))
    use_mailbox(tc.tls_client(g.port, env.tls))


def t_starttls_refused(env):
    """A backend without STARTTLS (answers it with BAD): BYE [UNAVAILABLE],
    nothing else reaches the client, the log says why."""
    fb = FakeBackend({"commands": {"STARTTLS": [{"send": "{tag} BAD Unknown command\r\n"}]}})
    fb.start()
    env.backends.append(fb)
    good = pki(env)[0]
    g = tc.gate(env, fb.port, backend=backend_keys("starttls", good[0]))
    expect_verify_failure(env, g, r"STARTTLS")
    check(b"imapgate-tls STARTTLS\r\n" in fb.received, "backend got %r" % fb.received)


TESTS = [
    ("backend implicit TLS, verified", t_implicit),
    ("backend STARTTLS, verified", t_starttls),
    ("STARTTLS on both legs (legacy backend)", t_starttls_both_legs),
    ("verification fails: wrong CA", t_verify_wrong_ca),
    ("verification fails: wrong name", t_verify_wrong_name),
    ("verify: false", t_verify_off),
    ("backend refuses STARTTLS", t_starttls_refused),
]

if __name__ == "__main__":
    tc.run(tc.Env(sys.argv), TESTS)
