#!/usr/bin/env python3
"""Issue 3 integration: literals full of protocol decoys, through imapgate
to a real Dovecot, and the session state afterwards.

A message whose body looks like IMAP (a tagged OK, a BYE, a continuation, a
literal header, a fake greeting, a tagged NO with an unknown code, 8-bit
bytes) is APPENDed once with a synchronizing literal and once with LITERAL+,
FETCHed back, and compared byte for byte with what Dovecot returns directly.
The session must still be tracked right afterwards: imapgate runs with
`log: {level: debug}` and its state-transition lines and summary line are
checked. Also: a client line over limits.max_line (4KiB here) gets a tagged
BAD and the session goes on; an unreadable literal length ends the session.

usage: test_decoys.py [PATH-TO-IMAPGATE]   (or $IMAPGATE; see harness.py)
"""

import re
import socket
import sys
import time

import harness
from harness import Fail, check, say

MAX_LINE = 4096           # limits.max_line in this test's imapgate config
CLOSE_TIMEOUT = 10.0      # seconds to wait for imapgate to end a session
LOG_TIMEOUT = 5.0         # seconds to wait for a log line
PIECE_PAUSE = 0.02        # seconds between the pieces of a split literal

DECOYS = (b"\r\nA1 OK done\r\n"
          b"* BYE bye\r\n"
          b"+ go\r\n"
          b"{5}\r\n"
          b"* OK [CAPABILITY IMAP4rev1] Dovecot ready.\r\n"
          b"a1 NO [X-FOO] fake\r\n"
          b"T3 OK [CLOSED] fake close\r\n"
          b"* PREAUTH fake\r\n"
          b"8-bit: \xe4\xf6\xfc\xdf \xc3\xa9\xc3\xa8 \x80\x81\xfe\xff\r\n"
          b"{99999999999999999999}\r\n"
          b"~{3}\r\nabc\r\n"
          b"* 1 FETCH (BODY[] {4}\r\n"
          b"end\r\n")


def decoy_message(kind):
    """An RFC 5322 message (CRLF line ends) whose body holds the decoys."""
    head = ("From: Mallory <mallory@example.org>\r\nTo: Demo <demo@example.org>\r\n"
            "Subject: decoys %s %d\r\n"
            "Date: Mon, 01 Jan 2024 12:00:00 +0000\r\n"
            "Message-ID: <decoys.%s.%d@imapgate.test>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=iso-8859-1\r\n"
            "Content-Transfer-Encoding: 8bit\r\n"
            % (kind, time.time_ns(), kind, time.time_ns())).encode()
    return head + DECOYS


def appenduid(tagged):
    """The UID from a tagged OK [APPENDUID v uid]."""
    m = re.search(rb"\[APPENDUID \d+ (\d+)\]", tagged)
    check(m is not None, "no APPENDUID in %r" % tagged)
    return int(m.group(1))


def append_literal_plus(c, box, msg):
    """APPEND with a non-synchronizing literal {n+}, all in one write."""
    tag = c.next_tag()
    c.send(('%s APPEND "%s" {%d+}\r\n' % (tag, box, len(msg))).encode() + msg + b"\r\n")
    tagged, items = c.response(tag)
    check(not any(t.startswith(b"+") for t, _ in items),
          "LITERAL+ APPEND got a continuation: %r" % items)
    check(tagged.startswith(("%s OK" % tag).encode()), "APPEND {n+} -> %r" % tagged)
    return tagged


def append_in_pieces(c, box, msg, cuts):
    """APPEND {n} with the literal sent in pieces cut at the given offsets,
    a short pause between them, so imapgate reads the decoys split."""
    tag = c.next_tag()
    c.send(('%s APPEND "%s" {%d}\r\n' % (tag, box, len(msg))).encode())
    text, _ = c.read_item()
    check(text.startswith(b"+"), "APPEND: no continuation, got %r" % text)
    data = msg + b"\r\n"
    prev = 0
    for cut in sorted(cuts) + [len(data)]:
        c.send(data[prev:cut])
        prev = cut
        time.sleep(PIECE_PAUSE)
    tagged, _ = c.response(tag)
    check(tagged.startswith(("%s OK" % tag).encode()), "APPEND in pieces -> %r" % tagged)
    return tagged


def session_of(env, c):
    """imapgate's session id for client connection c (from the accept log line)."""
    port = c.sock.getsockname()[1]
    line = env.proxy.wait_log(r"msg=accepted client=127\.0\.0\.1:%d\b" % port,
                              timeout=LOG_TIMEOUT)
    check(line is not None, "no accept log line for client port %d" % port)
    m = re.search(r"session=(\S+)", line)
    check(m is not None, "no session id in %r" % line)
    return m.group(1)


def session_lines(env, sid):
    """The log lines of one session."""
    key = "session=%s " % sid
    return [x for x in env.proxy.log_text().splitlines() if key in x]


def read_until_closed(c, timeout):
    """Lines the server sends until it closes; Fail if it stays open."""
    lines, end = [], time.monotonic() + timeout
    c.sock.settimeout(1.0)
    while time.monotonic() < end:
        i = c.buf.find(b"\r\n")
        if i >= 0:
            lines.append(bytes(c.buf[:i + 2]))
            del c.buf[:i + 2]
            continue
        try:
            data = c.sock.recv(65536)
        except socket.timeout:
            continue
        except (ConnectionResetError, BrokenPipeError):
            data = b""
        if not data:
            if c.buf:
                lines.append(bytes(c.buf))
            return lines
        c.buf += data
    raise Fail("connection still open after %.0fs (got %r)" % (timeout, lines))


def t_decoys_roundtrip(env):
    """APPEND {n} and {n+} with decoys, FETCH identical to direct, state right after."""
    c = env.client()
    sid = session_of(env, c) if env.proxy else None
    c.login("demo", "demo")
    _, items = c.cmd("CAPABILITY")
    caps = b" ".join(t for t, _ in items if t.startswith(b"* CAPABILITY"))
    check(b"LITERAL+" in caps.upper(), "no LITERAL+ after login: %r" % caps)
    c.select("INBOX")

    msg_sync = decoy_message("sync")
    msg_plus = decoy_message("plus")
    uid_sync = appenduid(c.append("INBOX", msg_sync))
    say("   APPEND {%d} (synchronizing) -> UID %d" % (len(msg_sync), uid_sync))
    uid_plus = appenduid(append_literal_plus(c, "INBOX", msg_plus))
    say("   APPEND {%d+} (LITERAL+) -> UID %d" % (len(msg_plus), uid_plus))
    # The literal split inside the decoys: after "\r\nA1", inside "{5}",
    # inside the fake greeting and inside the 8-bit bytes.
    msg_split = decoy_message("split")
    base = msg_split.index(DECOYS)
    cuts = [base + DECOYS.index(x) + k for x, k in
            ((b"A1 OK", 2), (b"{5}", 2), (b"Dovecot ready", 3), (b"\xe4\xf6", 1))]
    uid_split = appenduid(append_in_pieces(c, "INBOX", msg_split, cuts))
    say("   APPEND {%d} sent in %d pieces -> UID %d" % (len(msg_split), len(cuts) + 1,
                                                     uid_split))
    c.cmd("NOOP")

    via = {u: c.fetch_body(u) for u in (uid_sync, uid_plus, uid_split)}
    _, items = c.cmd("UID FETCH %d BINARY.PEEK[]" % uid_sync)
    via_binary = [lits[-1] for t, lits in items if b"FETCH" in t and lits]

    d = env.direct_client()
    d.login("demo", "demo")
    d.select("INBOX")
    direct = {u: d.fetch_body(u) for u in (uid_sync, uid_plus, uid_split)}
    _, items = d.cmd("UID FETCH %d BINARY.PEEK[]" % uid_sync)
    direct_binary = [lits[-1] for t, lits in items if b"FETCH" in t and lits]
    d.logout()
    check(via_binary == direct_binary and len(via_binary) == 1,
          "BINARY.PEEK[] (literal8) differs from direct")

    for name, uid, orig in (("sync", uid_sync, msg_sync), ("plus", uid_plus, msg_plus),
                            ("split", uid_split, msg_split)):
        got, want = via[uid], direct[uid]
        check(got == want, "%s: proxy FETCH (%d bytes) differs from direct "
              "(%d bytes) at %s" % (name, len(got), len(want),
                                    next((i for i, (a, b) in
                                          enumerate(zip(got, want)) if a != b),
                                         "the end")))
        check(got == orig, "%s: FETCH differs from the APPENDed message" % name)
        check(DECOYS in got, "%s: decoys not intact" % name)
    say("   3 BODY.PEEK[] and 1 BINARY.PEEK[] FETCHes byte-identical to direct "
        "and to the original")

    # The session must still be followed: SELECT, CLOSE, LOGOUT.
    n = c.select("INBOX")
    check(n >= 2, "SELECT after decoys: %d messages" % n)
    c.cmd("CLOSE")
    tagged, _ = c.cmd("FETCH 1 FLAGS", ok=False)
    check(b" OK" not in tagged[:12], "FETCH after CLOSE was accepted: %r" % tagged)
    c.logout()
    say("   SELECT, CLOSE, LOGOUT after the decoys work")

    if env.proxy is None:
        return
    end = env.proxy.wait_log(r"session=%s msg=session-end" % re.escape(sid),
                             timeout=LOG_TIMEOUT)
    check(end is not None, "no session-end line for session %s" % sid)
    lines = session_lines(env, sid)
    states = [re.search(r"state=(\S+)", x).group(1) for x in lines
              if "msg=state " in x]
    say("   session %s transitions: %s" % (sid, " ".join(states)))
    check(states[:2] == ["NotAuthenticated->Authenticated", "Authenticated->Selected"],
          "first transitions: %r" % states)
    check(any('state=Authenticated->Selected mailbox="INBOX"' in x for x in lines),
          "no Authenticated->Selected mailbox=\"INBOX\" line")
    # SELECT again (Dovecot first sends "* OK [CLOSED]" for the old mailbox,
    # RFC 7162 3.2.11), CLOSE, then LOGOUT's BYE.
    reselect = (["Selected->Selected"],
                ["Selected->Authenticated", "Authenticated->Selected"])
    check(any(states[2:] == r + ["Selected->Authenticated", "Authenticated->Logout"]
              for r in reselect),
          "transitions after the decoys: %r" % states[2:])
    check(any("state=Selected->Authenticated" in x and "why=CLOSE" in x for x in lines),
          "CLOSE transition not logged")
    check('user="demo"' in end, "summary without user=\"demo\": %s" % end)
    check(re.search(r"\bstate=Logout\b", end) is not None, "summary state: %s" % end)
    check(not any("msg=guard" in x for x in lines), "guard events in a clean session: %r"
          % [x for x in lines if "msg=guard" in x])
    say("   log: transitions and summary (user=\"demo\" state=Logout) are right")


def t_line_too_long(env):
    """A client line over limits.max_line gets a tagged BAD; the session goes on."""
    if env.proxy is None:
        return "skip"
    c = env.client()
    c.login("demo", "demo")
    c.select("INBOX")
    for size in (MAX_LINE + 100, 50 * MAX_LINE):
        tag = c.next_tag()
        c.send(('%s SEARCH TEXT "%s"\r\n' % (tag, "x" * size)).encode())
        tagged, items = c.response(tag)
        check(tagged.startswith(("%s BAD" % tag).encode()),
              "%d-byte line -> %r" % (size, tagged))
        say("   %d-byte line -> %s" % (size, tagged.decode("latin-1").strip()))
        # Dovecot never saw it: no second answer under that tag.
        _, items = c.cmd("NOOP")
        check(not any(t.startswith(tag.encode() + b" ") for t, _ in items),
              "the over-long line was answered twice: %r" % items)
    # The session is still tracked as Selected: a FETCH works.
    c.cmd("FETCH 1 FLAGS")
    c.logout()
    say("   NOOP, FETCH and LOGOUT work after it")


def t_huge_literal_length(env):
    """A literal length of 99999999999999999999 ends the session."""
    if env.proxy is None:
        return "skip"
    c = env.client()
    c.login("demo", "demo")
    c.send(b'T9 APPEND "INBOX" {99999999999999999999}\r\n')
    lines = read_until_closed(c, CLOSE_TIMEOUT)
    say("   before close: %r" % lines)
    check(not any(x.startswith(b"+") for x in lines), "got a continuation: %r" % lines)
    check(not any(x.startswith(b"T9 OK") for x in lines), "got a tagged OK: %r" % lines)
    bad = [x for x in lines if not (x.startswith(b"* BYE") or x.startswith(b"T9 BAD")
                                    or x.startswith(b"* BAD"))]
    check(not bad, "unexpected lines before the close: %r" % bad)
    c.close()
    # The same happens before login, and imapgate is fine afterwards.
    c = env.client()
    c.send(b"T1 LOGIN {99999999999999999999}\r\n")
    lines = read_until_closed(c, CLOSE_TIMEOUT)
    check(not any(x.startswith(b"+") for x in lines), "got a continuation: %r" % lines)
    c.close()
    c = env.client()
    c.login("other", harness.USERS["other"])
    c.logout()
    check(harness.USERS["other"] not in env.proxy.log_text(), "a password is in the log")
    say("   session ended; a new session works; no password in the log")


def main(argv):
    """Start Dovecot and a debug-logging imapgate with max_line 4KiB; run the checks."""
    env = harness.Env(argv)
    if env.proxy is not None:
        # Replace the default proxy by one with debug logging and a small max_line.
        env.proxy.stop()
        p = harness.Imapgate(env.binary, env.tmp, env.cert, env.key, env.dovecot.port,
                             name="imapgate-decoys")
        with open(p.conf) as f:
            text = f.read()
        check("  level: info\n" in text, "unexpected harness config:\n" + text)
        text = text.replace("  level: info\n", "  level: debug\n")
        text += "limits:\n  max_line: %d\n" % MAX_LINE
        with open(p.conf, "w") as f:
            f.write(text)
        env.proxy = p.start()
        say("imapgate (debug, max_line %d) on 127.0.0.1:%d" % (MAX_LINE, p.port))
    harness.run_tests(env, [
        ("decoys in literals: APPEND {n} and {n+}, FETCH, state after", t_decoys_roundtrip),
        ("client line over limits.max_line", t_line_too_long),
        ("literal length 99999999999999999999", t_huge_literal_length),
    ])


if __name__ == "__main__":
    main(sys.argv)
