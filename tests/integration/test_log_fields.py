#!/usr/bin/env python3
"""Unforgeable logs (issue 14): every value a client chooses, fed every byte
value, leaves each log line parseable with exactly its own fields.

Values: SNI names (sent in a hand-built ClientHello, so that any byte can be
sent: Python's ssl module IDNA-encodes server_hostname), LOGIN user names and
SELECT mailbox names as literals (every byte 0..255, in chunks), tags made of
every byte a tag may hold, an ID command with quoted strings, and strings
written to forge fields (x" user="admin" state=Selected); from the backend,
a tagged status word holding every byte a word can (in a line too long to
trace whole, so the trace names the word).  The backend is the scripted one
(tests/backends/fake_backend.py), which accepts any LOGIN and any SELECT, so
each value reaches the session-end, trace and state lines.

Checks, for log.format text and json at level debug:
  - no line holds a control byte or a byte past ASCII (every peer value is
    escaped as \\xHH);
  - text: the line splits into key=value fields (quoted values with \\" \\\\
    \\xHH escapes) with nothing left over, keys are plain words, no key twice;
  - json: json.loads succeeds, no key twice, every value a string;
  - the user, SNI, mailbox and tag read back from the lines (escapes undone;
    JSON strings hold one code point per byte) equal the bytes sent.
NUL cannot be sent in an SNI name (OpenSSL refuses the ClientHello) and ends
a C string, so values are compared up to their first NUL.
Python 3 stdlib only.  Run: test_log_fields.py PATH-TO-IMAPGATE
"""

import json
import os
import re
import socket
import struct
import sys
import time

import test_ops_common as ops
from test_ops_common import Fail, check, say
from fake_backend import FakeBackend  # noqa: E402  (path set by test_guard_common)

LIFETIME = 60.0         # seconds a scripted backend lives at most
CHUNK = 32              # bytes of one user/mailbox/SNI value
LOG_WAIT = 5.0          # seconds to wait for a session's last log line
WORD_CHUNK = 16         # bytes of one backend status word (imapgate keeps 32)
LONG_LINE = 2000        # bytes of text after it: past limits.max_line (1KiB)
DEBUG_TEXT = "  level: debug\n"
DEBUG_JSON = "  level: debug\n  format: json\n"
# Bytes a tag may hold (RFC 3501 ASTRING-CHAR except "+"; imapgate's rule).
TAG_BYTES = bytes(c for c in range(0x21, 0x7f) if chr(c) not in '(){%*"\\+')
# Values written to look like fields, quotes or escapes of the log format.
FORGERIES = [
    b'x" user="admin" state=Selected',
    b'x user="admin" state=Selected',
    b'x","user":"admin',
    b'"',
    b'\\',
    b'\\"',
    b'a\\x41b',
    b'\\u0000',
    b'line\r\n2026-01-01T00:00:00.000Z level=error msg=forged',
    b'\xc3\xa9t\xc3\xa9 \xff\xfe',
]
KEY_RX = re.compile(r"^[a-z_]+$")
FIELD_RX = re.compile(r' ([^ ="]+)=("(?:[^"\\]|\\.)*"|[^ "]*)')
TS_RX = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z level=")


def values():
    """Every byte value 0..255 in CHUNK-byte pieces (NUL last in its piece,
    so that the piece is not empty as a C string), then the forgeries."""
    chunks = [bytes(range(i, min(i + CHUNK, 256))) for i in range(0, 256, CHUNK)]
    chunks[0] = chunks[0][1:] + b"\0"
    return chunks + FORGERIES


def upto_nul(b):
    """What a C string keeps of b."""
    return b.split(b"\0", 1)[0]


def fake(env):
    """A running scripted backend (any LOGIN, any SELECT), stopped with the test."""
    fb = FakeBackend({}, lifetime=LIFETIME)
    fb.start()
    env.backends.append(fb)
    return fb


def gate(env, fb, log):
    """An imapgate at debug level with log keys log, in front of fb."""
    g = ops.gate(env, fb.port, log=log)
    g.mark = len(g.log_text())
    return g


# ------------------------------------------------------------ log parsing

def unescape(body):
    """The bytes of a quoted text value's body (\\" \\\\ \\xHH undone)."""
    out, i = bytearray(), 0
    while i < len(body):
        c = body[i]
        if c != "\\":
            out += c.encode("latin-1")
            i += 1
            continue
        check(i + 1 < len(body), "lone backslash at the end of %r" % body)
        n = body[i + 1]
        if n in '"\\':
            out += n.encode()
            i += 2
        elif n == "x" and re.match(r"[0-9a-f]{2}$", body[i + 2:i + 4]):
            out.append(int(body[i + 2:i + 4], 16))
            i += 4
        else:
            raise Fail("unknown escape \\%s in %r" % (n, body))
    return bytes(out)


def parse_text(line):
    """A text line as {key: bytes}; Fail unless it splits cleanly."""
    check(TS_RX.match(line), "line does not start with a timestamp: %r" % line)
    rest = line[line.index(" "):]
    fields, pos = {}, 0
    while pos < len(rest):
        m = FIELD_RX.match(rest, pos)
        check(m is not None, "cannot split %r at %r" % (line, rest[pos:pos + 40]))
        k, v = m.group(1), m.group(2)
        check(KEY_RX.match(k), "odd key %r in %r" % (k, line))
        check(k not in fields, "key %s twice in %r" % (k, line))
        fields[k] = unescape(v[1:-1]) if v.startswith('"') else v.encode("latin-1")
        pos = m.end()
    return fields


def no_dup_pairs(pairs):
    """json object_pairs_hook: refuse a key given twice."""
    d = {}
    for k, v in pairs:
        check(k not in d, "key %s twice in a JSON line" % k)
        d[k] = v
    return d


def parse_json(line):
    """A JSON line as {key: bytes} (one code point per byte)."""
    try:
        obj = json.loads(line, object_pairs_hook=no_dup_pairs)
    except ValueError as e:
        raise Fail("log line is not JSON (%s): %r" % (e, line))
    check(isinstance(obj, dict), "not an object: %r" % line)
    out = {}
    for k, v in obj.items():
        check(KEY_RX.match(k), "odd key %r in %r" % (k, line))
        check(isinstance(v, str), "value of %s is not a string in %r" % (k, line))
        try:
            out[k] = v.encode("latin-1")
        except UnicodeEncodeError:
            raise Fail("value of %s holds a code point past U+00FF: %r" % (k, line))
    return out


def log_lines(g, fmt):
    """Every line g logged after its mark, parsed; checks the raw bytes first."""
    with open(g.logfile, "rb") as f:
        raw = f.read()
    lines = []
    for b in raw.split(b"\n")[:-1]:
        bad = [c for c in b if c < 0x20 or c >= 0x7f]
        check(not bad, "raw byte 0x%02x in a log line: %r" % (bad[0] if bad else 0, b[:300]))
        lines.append(b.decode("ascii"))
    out = []
    for line in lines:
        out.append(parse_json(line) if fmt == "json" else parse_text(line))
    return out


def wait_ends(g, n):
    """Wait until n session-end lines follow g's mark (text or JSON)."""
    end = time.monotonic() + LOG_WAIT
    rx = re.compile(r'msg=session-end|"msg":"session-end"')
    while True:
        got = len(rx.findall(g.log_text()[g.mark:]))
        if got >= n or time.monotonic() >= end:
            return got
        time.sleep(0.05)


# ------------------------------------------------------------ clients

def literal_cmd(c, name, value, rest=b""):
    """Send `TAG name {n}` + value + rest as a synchronizing literal; the tagged line."""
    tag = c.next_tag()
    c.send(b"%s %s {%d}\r\n" % (tag.encode(), name, len(value)))
    line = c.readline()
    check(line.startswith(b"+"), "%s literal: no continuation, got %r" % (name, line))
    c.send(value + rest + b"\r\n")
    tagged, _ = c.response(tag)
    return tagged


def tagged_noop(c, tag):
    """NOOP under tag (bytes); returns the tagged line."""
    c.send(tag + b" NOOP\r\n")
    while True:
        text, _ = c.read_item()
        if text.startswith(tag + b" "):
            return text


def client_hello(sni):
    """A TLS 1.3/1.2 ClientHello record naming sni (any bytes) in server_name."""
    suites = b"".join(struct.pack("!H", s) for s in (0x1301, 0x1302, 0x1303, 0xc02f, 0xc030))
    name = struct.pack("!BH", 0, len(sni)) + sni
    ext = struct.pack("!HHH", 0x0000, len(name) + 2, len(name)) + name
    groups = struct.pack("!HH", 0x001d, 0x0017)
    ext += struct.pack("!HHH", 0x000a, len(groups) + 2, len(groups)) + groups
    ext += struct.pack("!HHBB", 0x000b, 2, 1, 0)
    sigs = struct.pack("!6H", 0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501)
    ext += struct.pack("!HHH", 0x000d, len(sigs) + 2, len(sigs)) + sigs
    ext += struct.pack("!HHBHH", 0x002b, 5, 4, 0x0304, 0x0303)
    share = struct.pack("!HH", 0x001d, 32) + os.urandom(32)
    ext += struct.pack("!HHH", 0x0033, len(share) + 2, len(share)) + share
    body = (struct.pack("!H", 0x0303) + os.urandom(32) + b"\x20" + os.urandom(32)
            + struct.pack("!H", len(suites)) + suites + b"\x01\x00"
            + struct.pack("!H", len(ext)) + ext)
    hs = b"\x01" + struct.pack("!I", len(body))[1:] + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs


def send_sni(g, sni):
    """Open a connection, send a ClientHello naming sni, read the answer, close."""
    s = socket.create_connection(("127.0.0.1", g.port), timeout=10)
    try:
        s.sendall(client_hello(sni))
        try:
            s.recv(65536)       # ServerHello (or an alert): the name was read
        except OSError:
            pass
    finally:
        s.close()


def run_sessions(env, g):
    """Drive every value through g; returns what was sent, per field."""
    sent = {"user": [], "mailbox": [], "tag": [], "sni": []}
    vals = values()
    for i, v in enumerate(vals):
        c = ops.client(env, g)
        tagged = literal_cmd(c, b"LOGIN", v, b" pw")
        check(b" OK " in tagged, "LOGIN of value %d -> %r" % (i, tagged))
        sent["user"].append(v)
        box = vals[(i + 1) % len(vals)]
        tagged = literal_cmd(c, b"SELECT", box)
        check(b" OK " in tagged, "SELECT of value %d -> %r" % (i, tagged))
        sent["mailbox"].append(box)
        # Tags: every tag byte, a slice per session.
        part = TAG_BYTES[i * 12:(i + 1) * 12] or TAG_BYTES[-12:]
        tag = b"t" + part
        tagged = tagged_noop(c, tag)
        check(tagged.startswith(tag + b" OK"), "NOOP under %r -> %r" % (tag, tagged))
        sent["tag"].append(tag)
        # An ID whose strings hold what a quoted string may (the trace shows the line).
        c.cmd('ID ("name" "x\\" user=\\"admin\\" state=Selected" "v" "\\\\")')
        c.logout()
    # Every byte a tag may not hold, in a tag: refused (* BAD), and the lines stay whole.
    c = ops.client(env, g)
    c.cmd("LOGIN user pw")
    for b in range(256):
        if b in TAG_BYTES or b in b"\r\n ":
            continue
        c.send(b"a" + bytes([b]) + b"z NOOP\r\n")
        line = c.readline()
        check(line.startswith(b"* BAD") or line.startswith(b"a"),
              "tag with byte 0x%02x -> %r" % (b, line))
    c.logout()
    sent["user"].append(b"user")
    # SNI: any byte but NUL, in a hand-built ClientHello.  Unfinished
    # handshakes are logged at most 5 a second (of imapgate's clock): each
    # one's session-end line is waited for, and the next one starts 0.25 s
    # after it, so that a stalled imapgate (a busy machine) cannot log
    # several late lines in one second and drop some.
    # The last name holds a NUL: OpenSSL refuses it, there is no name to log.
    hellos = [(upto_nul(v) or b"-", True) for v in vals] + [(b"nul\0inside", False)]
    ends = len(sent["user"])            # one session per user value so far
    check(wait_ends(g, ends) >= ends, "%d sessions, fewer session-end lines" % ends)
    for sni, named in hellos:
        time.sleep(0.25)
        send_sni(g, sni)
        ends += 1
        check(wait_ends(g, ends) >= ends, "no session-end line for the ClientHello "
              "naming %r:\n%s" % (sni, g.log_text()[g.mark:][-1500:]))
        if named:
            sent["sni"].append(sni)
    return sent


def check_fields(lines, sent):
    """The logged values, read back, equal what was sent, in order."""
    ends = [f for f in lines if f.get("msg") == b"session-end"]
    logins = [f for f in lines if f.get("trace") == b"c2s" and f.get("name") == b"LOGIN"]
    states = [f for f in lines if f.get("msg") == b"state" and "mailbox" in f]
    noops = [f for f in lines if f.get("trace") == b"c2s" and f.get("name") == b"NOOP"]
    nv = len(sent["user"])
    check(len(logins) == nv, "%d LOGIN trace lines, want %d" % (len(logins), nv))
    for f, v in zip(logins, sent["user"]):
        check(f.get("user") == upto_nul(v), "LOGIN trace user %r, sent %r" % (f.get("user"), v))
    check(len(states) == len(sent["mailbox"]), "%d msg=state lines with a mailbox, want %d"
          % (len(states), len(sent["mailbox"])))
    for f, v in zip(states, sent["mailbox"]):
        check(f.get("mailbox") == upto_nul(v), "mailbox %r, sent %r" % (f.get("mailbox"), v))
    tags = [f.get("tag") for f in noops]
    check(tags == sent["tag"], "NOOP trace tags %r, sent %r" % (tags, sent["tag"]))
    # Sessions that logged in: user read back from session-end, state as tracked.
    logged = [f for f in ends if f.get("user")]
    check([f["user"] for f in logged] == [upto_nul(v) for v in sent["user"]],
          "session-end users %r" % [f["user"] for f in logged])
    for f in logged:
        check(f.get("state") == b"Logout", "session-end state %r" % f.get("state"))
    # Sessions that only sent a ClientHello: the SNI name, nothing forged.
    named = [f for f in ends if not f.get("user") and f.get("sni", b"-") != b"-"]
    check([f["sni"] for f in named] == sent["sni"],
          "session-end SNI names %r, sent %r" % ([f["sni"] for f in named], sent["sni"]))
    for f in named:
        check(f.get("state") == b"NotAuthenticated", "SNI session state %r" % f.get("state"))
    return len(ends)


def test_format(env, log, fmt):
    """Every value through an imapgate logging in fmt."""
    fb = fake(env)
    g = gate(env, fb, log)
    sent = run_sessions(env, g)
    n = len(sent["user"]) + len(sent["sni"]) + 1
    got = wait_ends(g, n)
    check(got >= n, "%d session-end lines, want %d" % (got, n))
    lines = log_lines(g, fmt)
    ends = check_fields(lines, sent)
    say("   %s: %d lines, %d session-end, %d values per field" % (fmt, len(lines), ends,
                                                               len(sent["user"])))


def test_backend_words(env, log, fmt):
    """A backend's tagged status word with every byte it can hold, in a line
    too long to trace whole (so the trace names the word): read back intact."""
    words = []
    for i in range(1, 256, WORD_CHUNK):
        w = bytes(b for b in range(i, min(i + WORD_CHUNK, 256)) if b not in b"\r\n ")
        if w:
            words.append(w)
    script = {"steps": [{"command": "NOOP", "actions": [
        {"send": "{tag} " + w.decode("latin-1") + " " + "x" * LONG_LINE + "\r\n"}]}
        for w in words]}
    fb = FakeBackend(script, lifetime=LIFETIME)
    fb.start()
    env.backends.append(fb)
    g = ops.gate(env, fb.port, log=log, extra="limits:\n  max_line: 1KiB\n")
    g.mark = len(g.log_text())
    c = ops.client(env, g)
    c.cmd("LOGIN user pw")
    for w in words:
        c.cmd("NOOP", ok=False)
    c.logout()
    check(wait_ends(g, 1) >= 1, "no session-end line")
    lines = log_lines(g, fmt)
    got = [f.get("name") for f in lines
           if f.get("trace") == b"s2c" and "name" in f and int(f.get("bytes", b"0")) > LONG_LINE]
    want = [w.upper() for w in words]
    check(got == want, "backend status words %r, sent %r" % (got, want))


def test_text(env):
    """log.format text: fields split cleanly, values read back byte for byte."""
    test_format(env, DEBUG_TEXT, "text")


def test_json(env):
    """log.format json: every line is JSON, values read back byte for byte."""
    test_format(env, DEBUG_JSON, "json")


def test_text_backend(env):
    """log.format text: a backend's status word, every byte."""
    test_backend_words(env, DEBUG_TEXT, "text")


def test_json_backend(env):
    """log.format json: a backend's status word, every byte."""
    test_backend_words(env, DEBUG_JSON, "json")


def main():
    """Run every check."""
    env = ops.Env(sys.argv)
    ops.run(env, [
        ("text log: every byte in every client field", test_text),
        ("json log: every byte in every client field", test_json),
        ("text log: every byte in a backend status word", test_text_backend),
        ("json log: every byte in a backend status word", test_json_backend),
    ])


if __name__ == "__main__":
    socket.setdefaulttimeout(30)
    main()
