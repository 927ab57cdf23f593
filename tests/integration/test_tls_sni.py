#!/usr/bin/env python3
"""Client-side TLS of imapgate (issue 6): certificates chosen by SNI (exact,
wildcard, CN-only, default), seen by Python ssl and `openssl s_client`
(implicit TLS and `-starttls imap`), sni= in the session log, ALPN,
tls.min_version, tls.ciphers / tls.ciphersuites, session resumption.

usage: test_tls_sni.py [PATH-TO-IMAPGATE]   (or $IMAPGATE)
"""

import re
import ssl
import subprocess
import sys

from harness import check, say
import test_tls_common as tc
from fake_backend import FakeBackend

S_CLIENT_TIMEOUT = 20


def no_verify(alpn=None, maxv=None, minv=None):
    """A client context that does not verify (the certificate is checked by hand)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    if maxv:
        ctx.maximum_version = maxv
    if minv:
        ctx.minimum_version = minv
    return ctx


def setup(env, tls="implicit", tls_extra=""):
    """Fake backend, three certificates (exact, wildcard, CN only) and a gate:
    (gate, {name: der})."""
    if not hasattr(env, "sni_certs"):
        env.sni_certs = [
            tc.make_leaf(env.tmp, "mail", None, "mail.example.org",
                         ["DNS:mail.example.org", "DNS:imap.example.org"]),
            tc.make_leaf(env.tmp, "wild", None, "*.example.net", ["DNS:*.example.net"]),
            tc.make_leaf(env.tmp, "cnonly", None, "legacy.example.com", []),
        ]
    fb = FakeBackend(None)
    fb.start()
    env.backends.append(fb)
    certs = env.sni_certs
    g = tc.gate(env, fb.port, tls=tls, certs=certs, tls_extra=tls_extra)
    der = {n: tc.cert_der(c) for n, (c, _) in zip(("mail", "wild", "cnonly"), certs)}
    return g, der


# server name sent -> certificate expected (None: no SNI at all)
CASES = [
    ("mail.example.org", "mail"),
    ("imap.example.org", "mail"),        # second SAN of the default
    ("x.example.net", "wild"),
    ("IMAP.Example.NET", "wild"),        # names compare without case
    ("a.b.example.net", "mail"),         # a wildcard covers one label only
    ("example.net", "mail"),             # ... and not the bare domain
    ("legacy.example.com", "cnonly"),    # CN when there is no SAN
    ("unknown.example.com", "mail"),     # default: the first certificate
    (None, "mail"),
]


def t_sni_python(env):
    """Python ssl with server_hostname gets the matching certificate."""
    g, der = setup(env)
    for name, want in CASES:
        c = tc.tls_client(g.port, no_verify(), server_hostname=name)
        got = c.sock.getpeercert(binary_form=True)
        which = [k for k, v in der.items() if v == got]
        check(got == der[want], "SNI %r: got %s, want %s" % (name, which, want))
        c.logout()
    f = tc.session_end(g, count=len(CASES))
    check(f.get("sni") == "-", "no SNI logged as %r" % f.get("sni"))
    lines = [x for x in tc.log_since(g).splitlines() if "msg=session-end" in x]
    check('sni="mail.example.org" ' in lines[0], "first session-end: %s" % lines[0])
    check('sni="x.example.net" ' in lines[2], "third session-end: %s" % lines[2])


def s_client_subject(port, name, starttls=False):
    """The subject line openssl s_client prints for the server's certificate."""
    argv = ["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, "-servername", name]
    if starttls:
        argv += ["-starttls", "imap"]
    r = subprocess.run(argv, input=b"", capture_output=True, timeout=S_CLIENT_TIMEOUT)
    out = r.stdout.decode("utf-8", "replace")
    m = re.search(r"^subject=(.*)$", out, re.M)
    check(m is not None, "s_client %s: no subject in output (rc %d):\n%s%s"
          % (name, r.returncode, out[-1500:], r.stderr.decode()[-500:]))
    return m.group(1)


def t_sni_openssl(env):
    """`openssl s_client -servername` on implicit TLS and with -starttls imap."""
    for mode in ("implicit", "starttls"):
        g, _ = setup(env, tls=mode)
        for name, want in (("mail.example.org", "mail.example.org"),
                           ("x.example.net", "*.example.net"),
                           ("legacy.example.com", "legacy.example.com"),
                           ("nobody.invalid", "mail.example.org")):
            subj = s_client_subject(g.port, name, starttls=(mode == "starttls"))
            check(subj.replace(" ", "").endswith("CN=" + want), "%s SNI %s: subject %r"
                  % (mode, name, subj))
        say("   %s: 4 names ok" % mode)
        f = tc.session_end(g, count=4)
        check(f.get("sni") == '"nobody.invalid"', "%s: last sni=%r" % (mode, f.get("sni")))


def t_alpn(env):
    """ALPN imap is accepted; a client without ALPN is still welcome."""
    g, _ = setup(env)
    c = tc.tls_client(g.port, no_verify(alpn=["imap"]))
    check(c.sock.selected_alpn_protocol() == "imap",
          "ALPN selected %r" % c.sock.selected_alpn_protocol())
    c.login("demo", "demo")
    c.logout()
    c = tc.tls_client(g.port, no_verify())
    check(c.sock.selected_alpn_protocol() is None, "ALPN without offer")
    c.logout()


def t_min_version(env):
    """tls.min_version "1.3": a TLS 1.2-only client is refused, 1.3 works."""
    g, _ = setup(env, tls_extra='  min_version: "1.3"\n')
    try:
        c = tc.tls_client(g.port, no_verify(maxv=ssl.TLSVersion.TLSv1_2), timeout=5)
        c.close()
        raise tc.Fail("TLS 1.2 handshake succeeded with min_version 1.3")
    except (ssl.SSLError, ConnectionResetError, tc.Fail) as e:
        if isinstance(e, tc.Fail) and "succeeded" in str(e):
            raise
        say("   TLS 1.2 refused: %s" % e)
    c = tc.tls_client(g.port, no_verify())
    check(c.sock.version() == "TLSv1.3", "version %r" % c.sock.version())
    c.logout()
    # Default 1.2: a TLS 1.2 client is fine.
    g2, _ = setup(env)
    c = tc.tls_client(g2.port, no_verify(maxv=ssl.TLSVersion.TLSv1_2))
    check(c.sock.version() == "TLSv1.2", "version %r" % c.sock.version())
    c.logout()


def t_ciphers(env):
    """tls.ciphers (TLS 1.2) and tls.ciphersuites (TLS 1.3) are what is negotiated."""
    g, _ = setup(env, tls_extra="  ciphers: ECDHE-ECDSA-CHACHA20-POLY1305\n"
                                 "  ciphersuites: TLS_CHACHA20_POLY1305_SHA256\n")
    c = tc.tls_client(g.port, no_verify(maxv=ssl.TLSVersion.TLSv1_2))
    check(c.sock.cipher()[0] == "ECDHE-ECDSA-CHACHA20-POLY1305", "1.2 cipher %r"
          % (c.sock.cipher(),))
    c.logout()
    c = tc.tls_client(g.port, no_verify())
    check(c.sock.cipher()[0] == "TLS_CHACHA20_POLY1305_SHA256", "1.3 cipher %r"
          % (c.sock.cipher(),))
    c.logout()
    f = tc.session_end(g, count=2)
    check(f.get("cipher") == "TLS_CHACHA20_POLY1305_SHA256", "session-end cipher %r"
          % f.get("cipher"))


def t_resumption(env):
    """A second connection resumes the TLS session (tickets on), for 1.2 and 1.3."""
    g, _ = setup(env)
    for maxv in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx = no_verify(maxv=maxv)
        c = tc.tls_client(g.port, ctx, server_hostname="mail.example.org")
        c.cmd("NOOP")           # TLS 1.3 tickets arrive after the handshake
        sess = c.sock.session
        c.logout()
        raw = tc.connect(g.port)
        s = ctx.wrap_socket(raw, server_hostname="mail.example.org", session=sess)
        check(s.session_reused, "%s: session not resumed" % maxv.name)
        s.close()
        say("   %s resumed" % maxv.name)


TESTS = [
    ("SNI picks the certificate (Python ssl)", t_sni_python),
    ("SNI with openssl s_client, implicit and STARTTLS", t_sni_openssl),
    ("ALPN imap", t_alpn),
    ("tls.min_version", t_min_version),
    ("tls.ciphers / tls.ciphersuites", t_ciphers),
    ("session resumption", t_resumption),
]

if __name__ == "__main__":
    tc.run(tc.Env(sys.argv), TESTS)
