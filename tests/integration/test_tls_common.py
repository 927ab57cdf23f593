#!/usr/bin/env python3
"""Shared pieces of the TLS / STARTTLS / SNI / PROXY protocol tests (issue 6,
test_tls_*.py and test_proxy_*.py); not a test itself.

Builds on test_guard_common.GuardEnv (temp dir, imapgate instances checked
for a clean exit, backends stopped with each test) and harness.py (Dovecot,
Client).  Adds: a private CA and certificates with chosen names, imapgate
configs with any listener/backend keys, Dovecot with TLS / trusted
networks / HAProxy, and raw PROXY headers.  Python 3 stdlib only.
"""

import os
import re
import socket
import ssl
import struct
import subprocess
import time

import harness
from harness import Fail, check, say
import test_guard_common as common

SKIP = harness.SKIP
PROXY_V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"
OPENSSL_TIMEOUT = 30        # seconds for one openssl command


def openssl(*args):
    """Run openssl with args; raise Fail with its stderr on error."""
    r = subprocess.run(["openssl"] + list(args), capture_output=True, timeout=OPENSSL_TIMEOUT)
    if r.returncode != 0:
        raise Fail("openssl %s failed:\n%s" % (args[0], r.stderr.decode("utf-8", "replace")))
    return r.stdout


def make_ca(directory, name):
    """A private CA in directory: (cert path, key path)."""
    cert = os.path.join(directory, name + "-ca.pem")
    key = os.path.join(directory, name + "-ca.key")
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", key, "-out", cert, "-days", "30",
            "-subj", "/CN=imapgate test CA %s" % name,
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    return cert, key


def make_leaf(directory, name, ca, cn, sans):
    """A certificate for cn with subjectAltNames sans ("DNS:x", "IP:y"), signed
    by ca (cert, key) or self-signed when ca is None: (cert path, key path)."""
    cert = os.path.join(directory, name + ".pem")
    key = os.path.join(directory, name + ".key")
    san = "subjectAltName=" + ",".join(sans) if sans else ""
    if ca is None:
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-nodes", "-keyout", key, "-out", cert, "-days", "30",
                "-subj", "/CN=%s" % cn, *(["-addext", san] if san else []))
    else:
        csr = os.path.join(directory, name + ".csr")
        ext = os.path.join(directory, name + ".ext")
        with open(ext, "w") as f:
            f.write((san + "\n" if san else "") + "basicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n")
        openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=%s" % cn)
        openssl("x509", "-req", "-in", csr, "-CA", ca[0], "-CAkey", ca[1],
                "-CAcreateserial", "-out", cert, "-days", "30", "-extfile", ext)
    os.chmod(key, 0o644)    # Dovecot's config process reads it; test dir only
    return cert, key


def cert_der(path):
    """The DER bytes of the first certificate in a PEM file."""
    with open(path) as f:
        return ssl.PEM_cert_to_DER_cert(f.read())


# ------------------------------------------------------------------ config

def gate_config(port, backend_port, certs, listen="", backend="", extra="",
                tls="implicit", tls_extra=""):
    """imapgate YAML: one listener on 127.0.0.1:port (tls mode plus the listen
    lines, 4-space indented), certificates [(cert, key)], backend keys, extra."""
    text = ("listen:\n"
            "  - address: 127.0.0.1:%d\n"
            "    tls: %s\n%s" % (port, tls, listen))
    if certs:
        text += "tls:\n  certificates:\n"
        for c, k in certs:
            text += "    - cert: %s\n      key: %s\n" % (c, k)
        text += tls_extra
    text += "backend:\n%s  servers:\n    - address: 127.0.0.1:%d\n" % (backend, backend_port)
    text += ("log:\n  level: info\n"
             "timeouts:\n  backend_connect: 2s\n  backend_response: 5s\n" + extra)
    return text


def gate(env, backend_port, listen="", backend="", extra="", tls="implicit", certs=None,
         tls_extra=""):
    """Start an imapgate with gate_config(...) as its whole config; registered
    in env (stopped and checked for a clean exit after the test)."""
    env.nth += 1
    g = harness.Imapgate(env.binary, env.tmp, env.cert, env.key, backend_port,
                         name="imapgate%d" % env.nth)
    if certs is None:
        certs = [(env.cert, env.key)]
    with open(g.conf, "w") as f:
        f.write(gate_config(g.port, backend_port, certs, listen, backend, extra, tls,
                            tls_extra))
    g.start()
    env.gates.append(g)
    # The start-up probe is a connection too: let it end, then mark the log.
    g.wait_log(r"msg=(session-end|proxy-)", timeout=3.0)
    g.mark = len(g.log_text())
    return g


def log_since(g):
    """imapgate's log since the test's mark."""
    return g.log_text()[getattr(g, "mark", 0):]


def wait_log(g, pattern, timeout=5.0):
    """A log line after the mark matching pattern, or Fail."""
    line = g.wait_log(pattern, timeout=timeout, after=getattr(g, "mark", 0))
    check(line is not None, "no log line /%s/ in imapgate's log:\n%s"
          % (pattern, log_since(g)[-2000:]))
    return line


# ------------------------------------------------------------------ clients

def plain_client(port, timeout=harness.IO_TIMEOUT, src=None, header=b""):
    """harness.Client over plaintext TCP (optionally from source address src,
    after sending a raw PROXY header); the greeting is read."""
    c = harness.Client.__new__(harness.Client)
    c.tagn, c.buf = 0, bytearray()
    c.sock = connect(port, timeout, src)
    if header:
        c.sock.sendall(header)
    c.greeting = c.readline()
    return c


def connect(port, timeout=harness.IO_TIMEOUT, src=None):
    """A TCP socket to 127.0.0.1:port, bound to (src, 0) if given."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    if src:
        s.bind((src, 0))
    s.connect(("127.0.0.1", port))
    return s


def tls_client(port, ctx, server_hostname="localhost", header=b"", timeout=harness.IO_TIMEOUT,
               src=None):
    """harness.Client over implicit TLS, after an optional raw PROXY header."""
    c = harness.Client.__new__(harness.Client)
    c.tagn, c.buf = 0, bytearray()
    raw = connect(port, timeout, src)
    if header:
        raw.sendall(header)
    c.sock = ctx.wrap_socket(raw, server_hostname=server_hostname)
    c.sock.settimeout(timeout)
    c.greeting = c.readline()
    return c


def starttls(c, ctx, server_hostname="localhost"):
    """Send STARTTLS on a plaintext Client, check the OK, switch to TLS."""
    tag = c.next_tag()
    c.send(("%s STARTTLS\r\n" % tag).encode())
    tagged, items = c.response(tag)
    check(tagged == ("%s OK Begin TLS negotiation now\r\n" % tag).encode(),
          "STARTTLS -> %r" % tagged)
    check(not c.buf, "bytes after the STARTTLS OK in plaintext: %r" % bytes(c.buf))
    c.sock = ctx.wrap_socket(c.sock, server_hostname=server_hostname)
    return tagged


def capabilities(c):
    """The CAPABILITY list (upper case) from a CAPABILITY command."""
    _, items = c.cmd("CAPABILITY")
    for text, _ in items:
        if text.upper().startswith(b"* CAPABILITY "):
            return text[len(b"* CAPABILITY "):].strip().upper().split()
    raise Fail("no * CAPABILITY in %r" % items)


def read_all(sock, timeout=5.0, limit=1 << 20):
    """Everything sock delivers until EOF/reset/timeout: (bytes, how)."""
    data = b""
    end = time.monotonic() + timeout
    while len(data) < limit:
        left = end - time.monotonic()
        if left <= 0:
            return data, "timeout"
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return data, "timeout"
        except (ConnectionResetError, ssl.SSLError):
            return data, "reset"
        if not chunk:
            return data, "eof"
        data += chunk
    return data, "limit"


# ------------------------------------------------------------------ PROXY headers

def proxy_v1(src, sport, dst="127.0.0.1", dport=993):
    """A PROXY v1 line for TCP4 or TCP6 (by the address form)."""
    fam = "TCP6" if ":" in src else "TCP4"
    return ("PROXY %s %s %s %d %d\r\n" % (fam, src, dst, sport, dport)).encode()


def proxy_v2(src, sport, dst="127.0.0.1", dport=993, local=False, tlvs=b""):
    """A PROXY v2 header (PROXY or LOCAL command, TCP4/TCP6)."""
    if local:
        return PROXY_V2_SIG + bytes([0x20, 0x00]) + struct.pack("!H", len(tlvs)) + tlvs
    if ":" in src:
        body = (socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
                + struct.pack("!HH", sport, dport))
        fam = 0x21
    else:
        body = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport)
        fam = 0x11
    body += tlvs
    return PROXY_V2_SIG + bytes([0x21, fam]) + struct.pack("!H", len(body)) + body


# ------------------------------------------------------------------ Dovecot

def start_dovecot(env, tls_cert=None, trusted=False, haproxy=False, mail=None):
    """A private Dovecot (harness.Dovecot) registered in env.backends.

    tls_cert (cert, key): `ssl = required` with that certificate, STARTTLS on
    .port and implicit TLS on .tls_port.  trusted: login_trusted_networks =
    127.0.0.0/8 (ID x-originating-ip is believed).  haproxy: the plaintext
    listener expects a PROXY header from 127.0.0.0/8.
    """
    import shutil
    if shutil.which("dovecot") is None:
        return None
    base = os.path.join(env.tmp, "dovecot%d" % (len(env.backends) + env.nth + 1))
    if mail is None:
        mail = {"demo": [harness.make_message("TLS test %d" % i, seed=i) for i in range(2)]}
    d = harness.Dovecot(base, mail)
    with open(d.conf) as f:
        text = f.read()
    d.tls_port = None
    if tls_cert is not None:
        d.tls_port = harness.free_port()
        text = text.replace("ssl = no\n",
                            "ssl = required\nssl_cert = <%s\nssl_key = <%s\n"
                            "ssl_min_protocol = TLSv1.2\n" % tls_cert, 1)
        text = re.sub(r"inet_listener imaps \{\n(\s*)port = 0\n",
                      lambda m: "inet_listener imaps {\n%sport = %d\n%sssl = yes\n"
                      % (m.group(1), d.tls_port, m.group(1)), text, count=1)
    if trusted:
        text += "login_trusted_networks = 127.0.0.0/8\n"
    if haproxy:
        text += "haproxy_trusted_networks = 127.0.0.0/8\n"
        text = re.sub(r"(inet_listener imap \{\n(\s*)address = 127\.0\.0\.1\n)",
                      lambda m: m.group(1) + m.group(2) + "haproxy = yes\n", text, count=1)
    with open(d.conf, "w") as f:
        f.write(text)
    d.proc = harness.Proc("dovecot", ["dovecot", "-F", "-c", d.conf],
                          os.path.join(base, "dovecot.out"))
    env.backends.append(d)
    if haproxy:
        harness.wait_port(d.port, d.proc)
        time.sleep(0.3)
    else:
        harness.wait_port(d.port, d.proc, greeting=True)
    if d.tls_port:
        harness.wait_port(d.tls_port, d.proc)
    return d


def wait_dovecot_log(d, pattern, timeout=5.0):
    """A line of Dovecot's log matching pattern, or Fail."""
    rx = re.compile(pattern)
    end = time.monotonic() + timeout
    while True:
        for line in d.log_text().splitlines():
            if rx.search(line):
                return line
        if time.monotonic() >= end:
            raise Fail("no /%s/ in Dovecot's log:\n%s" % (pattern, d.log_text()[-2000:]))
        time.sleep(0.05)


def need(tool):
    """None if tool is on PATH, else a skip message."""
    import shutil
    return None if shutil.which(tool) else "%s is not installed" % tool


Env = common.GuardEnv
run = common.run
session_end = common.session_end
