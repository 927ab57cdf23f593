#!/usr/bin/env python3
"""PROXY protocol and the client's address (issue 6).

In: `listen[].proxy_protocol` with v1 and v2 headers written by the test
(TCP4, TCP6, LOCAL, TLVs, split across packets) and by HAProxy
(`send-proxy-v2`); the real address in the session-end line; untrusted
peers, malformed and missing headers closed without a greeting and logged.

Out: `backend.client_ip` proxy-v1 to WildDuck's imap-core (`useProxy`,
WD_PROXY=1: its greeting names the client), id and proxy-v2 to Dovecot
(its login line shows the client), proxy-v2 bytes checked on the scripted
backend.  Clients come from 127.0.0.x source addresses other than
127.0.0.1 so the client's address and imapgate's can be told apart.

usage: test_proxy_protocol.py [PATH-TO-IMAPGATE]   (or $IMAPGATE)
"""

import os
import re
import ssl
import sys
import time

import harness
from harness import check, say
import test_guard_common as common
import test_tls_common as tc
from fake_backend import FakeBackend

TRUSTED = "    proxy_protocol: true\n    trusted_proxies: [10.0.0.0/8, 127.0.0.0/8]\n"
UNTRUSTED = "    proxy_protocol: true\n    trusted_proxies: [10.0.0.0/8]\n"
CLOSE_WAIT = 5.0


def fake(env, script=None, proxy="none"):
    """A scripted backend registered for cleanup."""
    fb = FakeBackend(script, proxy=proxy)
    fb.start()
    env.backends.append(fb)
    return fb


def client_of(g, count=1):
    """client= of the last session-end line."""
    return tc.session_end(g, count=count).get("client")


def t_v1_in(env):
    """v1 TCP4 and TCP6 headers before the TLS handshake: client= is the header's."""
    fb = fake(env)
    g = tc.gate(env, fb.port, listen=TRUSTED)
    c = tc.tls_client(g.port, env.tls, header=tc.proxy_v1("203.0.113.7", 51234))
    c.login("demo", "demo")
    c.logout()
    check(client_of(g) == "203.0.113.7:51234", "client=%r" % client_of(g))
    c = tc.tls_client(g.port, env.tls,
                      header=tc.proxy_v1("2001:db8::7", 40000, dst="2001:db8::1"))
    c.logout()
    check(client_of(g, 2) == "[2001:db8::7]:40000", "client=%r" % client_of(g, 2))


def t_v2_in(env):
    """v2 TCP4 with TLVs, TCP6, LOCAL (keeps the socket's address)."""
    fb = fake(env)
    g = tc.gate(env, fb.port, listen=TRUSTED)
    tlv = b"\x01\x00\x04imap" + b"\x02\x00\x10mail.example.org"
    c = tc.tls_client(g.port, env.tls, header=tc.proxy_v2("198.51.100.5", 6000, tlvs=tlv))
    c.logout()
    check(client_of(g) == "198.51.100.5:6000", "client=%r" % client_of(g))
    c = tc.tls_client(g.port, env.tls, header=tc.proxy_v2("2001:db8::9", 7000, dst="::1"))
    c.logout()
    check(client_of(g, 2) == "[2001:db8::9]:7000", "client=%r" % client_of(g, 2))
    c = tc.tls_client(g.port, env.tls, header=tc.proxy_v2(None, 0, local=True), src="127.0.0.5")
    port = c.sock.getsockname()[1]
    c.logout()
    check(client_of(g, 3) == "127.0.0.5:%d" % port, "LOCAL: client=%r" % client_of(g, 3))


def t_split_header(env):
    """A header arriving in pieces (STARTTLS listener, plaintext after it)."""
    fb = fake(env)
    g = tc.gate(env, fb.port, listen=TRUSTED, tls="starttls")
    for hdr in (tc.proxy_v1("192.0.2.44", 1111), tc.proxy_v2("192.0.2.45", 2222)):
        s = tc.connect(g.port)
        for i in range(0, len(hdr), 7):
            s.sendall(hdr[i:i + 7])
            time.sleep(0.02)
        c = harness.Client.__new__(harness.Client)
        c.tagn, c.buf, c.sock = 0, bytearray(), s
        c.greeting = c.readline()
        check(c.greeting.startswith(b"* OK"), "greeting %r" % c.greeting)
        c.logout()
    check(client_of(g, 2) == "192.0.2.45:2222", "client=%r" % client_of(g, 2))


def t_haproxy(env):
    """HAProxy (mode tcp, send-proxy-v2) in front: client= is the client's own
    address (127.0.0.2:its port), not HAProxy's."""
    why = tc.need("haproxy")
    if why:
        say("   SKIP: %s" % why)
        return "skip"
    fb = fake(env)
    g = tc.gate(env, fb.port, listen=TRUSTED)
    hport = harness.free_port()
    cfg = os.path.join(env.tmp, "haproxy.cfg")
    with open(cfg, "w") as f:
        f.write("global\n  maxconn 100\n"
                "defaults\n  mode tcp\n  timeout connect 5s\n"
                "  timeout client 30s\n  timeout server 30s\n"
                "frontend imap\n  bind 127.0.0.1:%d\n  default_backend gate\n"
                "backend gate\n  server g1 127.0.0.1:%d send-proxy-v2\n" % (hport, g.port))
    hp = harness.Proc("haproxy", ["haproxy", "-db", "-f", cfg],
                      os.path.join(env.tmp, "haproxy.log"))
    env.backends.append(hp)
    harness.wait_port(hport, hp)
    # wait_port's probe went through to imapgate: skip its session.
    g.wait_log(r"msg=session-end", timeout=3.0, after=g.mark)
    g.mark = len(g.log_text())
    c = tc.tls_client(hport, env.tls, src="127.0.0.2")
    port = c.sock.getsockname()[1]
    c.login("demo", "demo")
    c.logout()
    check(client_of(g) == "127.0.0.2:%d" % port, "client=%r, want 127.0.0.2:%d"
          % (client_of(g), port))


def expect_refused(g, sock, what):
    """sock gets no byte and is closed; imapgate logs what (a regex)."""
    data, how = tc.read_all(sock, timeout=CLOSE_WAIT)
    sock.close()
    check(data == b"" and how in ("eof", "reset"), "got %r (%s), want a silent close"
          % (data, how))
    return tc.wait_log(g, what)


def t_untrusted(env):
    """A header from a peer outside trusted_proxies: closed, no greeting, logged."""
    fb = fake(env)
    g = tc.gate(env, fb.port, listen=UNTRUSTED, tls="starttls")
    s = tc.connect(g.port)
    s.sendall(tc.proxy_v1("203.0.113.7", 51234))
    line = expect_refused(g, s, r"msg=proxy-peer-untrusted")
    check("peer=127.0.0.1:" in line, "log line %r" % line)
    check("msg=session-end" not in tc.log_since(g), "a session was started")
    check(not fb.connections, "the backend was contacted")


def t_malformed(env):
    """Malformed headers, no header, and plain IMAP: closed without a greeting,
    logged as proxy-header-rejected."""
    fb = fake(env)
    g = tc.gate(env, fb.port, listen=TRUSTED, tls="starttls")
    bad = [b"PROXY TCP4 999.0.0.1 127.0.0.1 1 2\r\n",
           b"PROXY TCP4 192.0.2.1 127.0.0.1 65536 143\r\n",
           b"PROXY TCP4 192.0.2.1 127.0.0.1 1 2\n",
           b"PROXY " + b"x" * 120,
           tc.PROXY_V2_SIG + b"\x11\x11\x00\x0c" + b"\x00" * 12,
           b"a CAPABILITY\r\n"]
    for n, hdr in enumerate(bad):
        if n and n % 4 == 0:
            time.sleep(1.1)     # rejections are logged at most 5 a second (ratelog)
        s = tc.connect(g.port)
        s.sendall(hdr)
        expect_refused(g, s, r"msg=proxy-header-rejected")
        g.mark = len(g.log_text())
    check(not fb.connections, "the backend was contacted")
    # A TLS ClientHello with no header on an implicit listener.
    g2 = tc.gate(env, fb.port, listen=TRUSTED)
    try:
        c = tc.tls_client(g2.port, env.tls, timeout=CLOSE_WAIT)
        c.close()
        raise tc.Fail("TLS without a PROXY header got a session")
    except (ssl.SSLError, ConnectionResetError, OSError, harness.Fail) as e:
        if "got a session" in str(e):
            raise
    line = tc.wait_log(g2, r"msg=proxy-header-rejected")
    say("   %s" % line[line.index("msg="):])


def wildduck_proxy(env):
    """server.js with useProxy (WD_PROXY=1), or None (skip)."""
    why = common.wildduck_available()
    if why is not None:
        say("   SKIP: %s" % why)
        return None
    wd = common.WildDuck(env.tmp, env={"WD_PROXY": "1"}).start()
    env.backends.append(wd)
    return wd


WD_GREETING = rb"^\* OK WildDuck IMAP Server ready for requests from %s \S+\r\n$"


def t_wildduck_proxy_v1(env):
    """client_ip: proxy-v1 to WildDuck (useProxy): the greeting names the
    client's address, from an inbound PROXY header or the socket."""
    wd = wildduck_proxy(env)
    if wd is None:
        return "skip"
    back = "  client_ip: proxy-v1\n"
    g = tc.gate(env, wd.port, listen=TRUSTED, backend=back)
    c = tc.tls_client(g.port, env.tls, header=tc.proxy_v1("198.51.100.23", 40123))
    say("   greeting %r" % c.greeting)
    check(re.match(WD_GREETING % rb"198\.51\.100\.23", c.greeting), "greeting %r" % c.greeting)
    c.login("testuser", "pass")
    check(c.select("INBOX") >= 4, "SELECT")
    c.logout()
    # No inbound header: the client's own socket address.
    g2 = tc.gate(env, wd.port, backend=back)
    c = tc.tls_client(g2.port, env.tls, src="127.0.0.3")
    check(re.match(WD_GREETING % rb"127\.0\.0\.3", c.greeting), "greeting %r" % c.greeting)
    c.logout()


def t_dovecot_id(env):
    """client_ip: id to Dovecot (login_trusted_networks): Dovecot logs the
    client's address; the client never sees the ID or its reply."""
    d = tc.start_dovecot(env, trusted=True)
    if d is None:
        say("   SKIP: dovecot is not installed")
        return "skip"
    g = tc.gate(env, d.port, listen=TRUSTED, backend="  client_ip: id\n")
    c = tc.tls_client(g.port, env.tls, header=tc.proxy_v1("192.0.2.77", 40001))
    check(c.greeting.startswith(b"* OK") and b"Dovecot" in c.greeting, "greeting %r"
          % c.greeting)
    seen = [c.greeting]
    tag = c.next_tag()
    c.send(("%s NOOP\r\n" % tag).encode())
    t, items = c.response(tag)
    seen += [x for x, _ in items] + [t]
    c.login("demo", "demo")
    c.logout()
    text = b"".join(seen)
    check(b"imapgate-id" not in text and b"* ID" not in text, "client saw the ID: %r" % text)
    line = tc.wait_dovecot_log(d, r"Login: user=<demo>")
    say("   dovecot: %s" % line.split("imap-login: ")[-1][:140])
    check("rip=192.0.2.77" in line, "Dovecot did not take the address: %s" % line)
    sid = tc.session_end(g).get("session")
    check("session=<%s>" % sid in line, "x-session-id %s not in Dovecot's line" % sid)


def t_dovecot_proxy_v2(env):
    """client_ip: proxy-v2 to Dovecot (haproxy_trusted_networks)."""
    d = tc.start_dovecot(env, haproxy=True)
    if d is None:
        say("   SKIP: dovecot is not installed")
        return "skip"
    g = tc.gate(env, d.port, backend="  client_ip: proxy-v2\n")
    c = tc.tls_client(g.port, env.tls, src="127.0.0.4")
    c.login("demo", "demo")
    c.logout()
    line = tc.wait_dovecot_log(d, r"Login: user=<demo>")
    say("   dovecot: %s" % line.split("imap-login: ")[-1][:140])
    check("rip=127.0.0.4" in line, "Dovecot did not take the address: %s" % line)


def t_proxy_v2_bytes(env):
    """The v2 header imapgate writes: the client's address and port from the
    inbound v1 header, the destination it named."""
    fb = fake(env, proxy="require")
    g = tc.gate(env, fb.port, listen=TRUSTED, backend="  client_ip: proxy-v2\n")
    c = tc.tls_client(g.port, env.tls,
                      header=tc.proxy_v1("203.0.113.9", 61000, dst="10.1.2.3", dport=993))
    c.login("demo", "demo")
    c.logout()
    conns = [x for x in fb.connections if x.get("proxy")]
    check(conns, "no PROXY header reached the backend")
    want = tc.proxy_v2("203.0.113.9", 61000, dst="10.1.2.3", dport=993)
    check(conns[-1]["proxy"] == want, "header %r, want %r" % (conns[-1]["proxy"], want))


TESTS = [
    ("PROXY v1 in (TCP4, TCP6)", t_v1_in),
    ("PROXY v2 in (TCP4+TLVs, TCP6, LOCAL)", t_v2_in),
    ("PROXY header split across packets", t_split_header),
    ("HAProxy send-proxy-v2 in front", t_haproxy),
    ("untrusted peer refused", t_untrusted),
    ("malformed / missing header refused", t_malformed),
    ("proxy-v1 out to WildDuck useProxy", t_wildduck_proxy_v1),
    ("ID out to Dovecot", t_dovecot_id),
    ("proxy-v2 out to Dovecot", t_dovecot_proxy_v2),
    ("proxy-v2 header bytes", t_proxy_v2_bytes),
]

if __name__ == "__main__":
    tc.run(tc.Env(sys.argv), TESTS)
