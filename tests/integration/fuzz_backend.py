#!/usr/bin/env python3
"""Scripted IMAP backend for the session fuzzer (test_session_fuzz.py).

It frames what imapgate forwards exactly as RFC 3501/9051 define it and
records, per connection, every command it framed and every tagged response
it sent; its answers are random but legal for a server (it never sends a
continuation nobody asked for, nor a tagged reply for a tag still to come):

  - synchronizing literals ({n}, ~{n}) get "+ go", or are refused with a
    tagged NO (the command ends at its literal header);
  - LITERAL+ literals ({n+}, ~{n+}) are read at once;
  - AUTHENTICATE: "+ " challenges, tagged OK/NO, a "*" line gets tagged BAD;
  - IDLE: "+ idling", then one line: DONE gets tagged OK;
  - untagged noise (with literals), invalid lines, tagged replies for tags
    no client uses ("zz<n>"), delays, a hang, and drops at random points.

Framing (the oracle the fuzzer compares imapgate's trace with):
  - a line part ends at LF (CRLF or a bare LF, as real servers accept);
  - outside a quoted string, a line part that ends in {n}, {n+}, ~{n} or
    ~{n+} announces a literal of n bytes, after which the command goes on
    with another line part.  The backend is deliberately permissive here
    (it does not require a space before the "{"): it is the most dangerous
    server a proxy can sit in front of;
  - inside a quoted string a backslash escapes the next byte; a line part
    that ends inside a quoted string ends the command (a server answers
    BAD), so a "{n}" there is never a literal.
Entries are Entry(kind, tag, name, nbytes, nliterals, flags, longest): kind
is "command", "sasl", "sasl-cancel", "done", or "idle-other" (a non-DONE
line during IDLE, which imapgate must never forward); nbytes counts every
byte of the command: line parts with their line ends and literal data;
flags name what SPEC says imapgate answers itself and never forwards
("bad-tag", "bad-name", "unterminated", "nul", "bare-cr") plus "refused"
(ended at a refused synchronizing literal); longest is the longest line
part, line end included.

Python 3 standard library only.  `python3 fuzz_backend.py` runs the
framer's self-test.
"""

import collections
import random
import re
import socket
import struct
import sys
import threading
import time

IO_TIMEOUT = 15.0           # seconds one read may wait for imapgate
REGISTRY_WAIT = 2.0         # seconds to wait for a client port to be registered
MAX_LINE = 1 << 20          # longest line part framed; longer ends the connection
MAX_LITERAL = 4 << 20       # largest literal read; a larger one is refused or ends it
ID_TAG = "imapgate-id"      # imapgate's own ID command (backend.client_ip: id)
ID_LEAK_MARK = b"IDLEAKMARK"    # in the ID reply; must never reach a client
GREETING = (b"* OK [CAPABILITY IMAP4rev1 IMAP4rev2 LITERAL+ BINARY SASL-IR "
            b"AUTH=PLAIN AUTH=LOGIN IDLE ID UNSELECT ENABLE] fuzz backend ready\r\n")

LITERAL_TAIL = re.compile(rb"(~?)\{([0-9]+)(\+?)\}$")
SID_RX = re.compile(rb'"x-session-id" "([^"]*)"')
PORT_RX = re.compile(rb'"x-originating-port" "([0-9]+)"')
# Bytes of a tag: ASTRING-CHAR (ATOM-CHAR or "]") except "+" (RFC 3501 9).
TAG_CHARS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '(){%*"\\+')
# A tag the backend may answer with a tagged reply.
TAG_RX = re.compile("^[%s]{1,64}$" % re.escape(TAG_CHARS))
# A command name: an atom (ATOM-CHAR has "+" but not "]") of at most 32 bytes.
NAME_RX = re.compile("^[%s]{1,32}$" % re.escape(TAG_CHARS.replace("]", "") + "+"))

Entry = collections.namedtuple("Entry", "kind tag name nbytes nliterals flags longest")


# ------------------------------------------------------------------ framing

def split_eol(part):
    """(content, line end) of a line part that ends in LF."""
    if part.endswith(b"\r\n"):
        return part[:-2], b"\r\n"
    if part.endswith(b"\n"):
        return part[:-1], b"\n"
    return part, b""


def scan_part(content):
    """(ends inside a quoted string, literal or None) for one line part's
    content (no line end); literal is (n, synchronizing, literal8)."""
    in_quote = escaped = False
    for c in content:
        if escaped:
            escaped = False
        elif in_quote:
            if c == 0x5C:           # backslash
                escaped = True
            elif c == 0x22:         # closing quote
                in_quote = False
        elif c == 0x22:
            in_quote = True
    if in_quote:
        return True, None
    m = LITERAL_TAIL.search(content)
    if not m:
        return False, None
    return False, (int(m.group(2)), m.group(3) != b"+", m.group(1) == b"~")


def head_words(part):
    """(tag, NAME) of a command's first line part, latin-1, name upper-case;
    the tag is everything before the first space, the name the next word."""
    content, _ = split_eol(part)
    words = content.split(b" ", 2)
    tag = words[0].decode("latin-1")
    name = words[1].decode("latin-1").upper() if len(words) > 1 else ""
    m = LITERAL_TAIL.search(name.encode("latin-1"))
    if m:                       # "a LOGIN{5}": the literal is not the name
        name = name[:m.start()]
    return tag, name


class Eof(Exception):
    """The peer closed (how: "eof", "reset", "timeout", "overlong", ...)."""

    def __init__(self, how):
        Exception.__init__(self, how)
        self.how = how


class Reader:
    """Buffered input over a fill() function that returns b"" at EOF."""

    def __init__(self, fill):
        self.fill = fill
        self.buf = bytearray()

    def line(self):
        """One line part including its LF."""
        start = 0
        while True:
            i = self.buf.find(b"\n", start)
            if i >= 0:
                out = bytes(self.buf[:i + 1])
                del self.buf[:i + 1]
                return out
            if len(self.buf) > MAX_LINE:
                raise Eof("overlong")
            start = len(self.buf)
            data = self.fill()
            if not data:
                raise Eof("eof" if not self.buf else "eof-mid-line")
            self.buf += data

    def exact(self, n):
        """Exactly n bytes."""
        while len(self.buf) < n:
            data = self.fill()
            if not data:
                raise Eof("eof-mid-literal")
            self.buf += data
        out = bytes(self.buf[:n])
        del self.buf[:n]
        return out


class Command:
    """One framed command: tag, name, bytes, literal count, how it ended."""

    def __init__(self, tag, name, first):
        self.tag, self.name, self.first = tag, name, first
        self.nbytes = len(first)
        self.nliterals = 0
        self.refused = False        # ended at a refused synchronizing literal
        self.unterminated = False   # ended inside a quoted string
        self.flags = set()
        self.longest = 0
        if not TAG_RX.match(tag):
            self.flags.add("bad-tag")
        if not NAME_RX.match(name):
            self.flags.add("bad-name")

    def part(self, part):
        """Note the properties of one line part."""
        content, _ = split_eol(part)
        self.longest = max(self.longest, len(part))
        if b"\x00" in content:
            self.flags.add("nul")
        if b"\r" in content:
            self.flags.add("bare-cr")

    def entry(self):
        """The record tuple of this command."""
        flags = set(self.flags)
        if self.refused:
            flags.add("refused")
        if self.unterminated:
            flags.add("unterminated")
        return Entry("command", self.tag, self.name, self.nbytes, self.nliterals,
                     tuple(sorted(flags)), self.longest)


def read_command(reader, on_sync):
    """Frame one command from reader.  on_sync(cmd, n) is called at each
    synchronizing literal header: True means "+" was sent (the literal is
    read), False means the command was refused there (it ends)."""
    first = reader.line()
    tag, name = head_words(first)
    cmd = Command(tag, name, first)
    part = first
    while True:
        cmd.part(part)
        content, _ = split_eol(part)
        in_quote, lit = scan_part(content)
        if in_quote:
            cmd.unterminated = True
            return cmd
        if lit is None:
            return cmd
        n, sync, _ = lit
        cmd.nliterals += 1
        if sync and not on_sync(cmd, n):
            cmd.refused = True
            return cmd
        if n > MAX_LITERAL:
            raise Eof("literal-too-large")
        cmd.nbytes += len(reader.exact(n))
        part = reader.line()
        cmd.nbytes += len(part)


def line_entry(part, kind):
    """The record tuple for a SASL / IDLE-mode line."""
    return Entry(kind, "", "", len(part), 0, (), len(part))


def sasl_kind(part):
    """The kind of a SASL response line: sasl-cancel for "*", else sasl."""
    return "sasl-cancel" if split_eol(part)[0] == b"*" else "sasl"


def frame_bytes(data, refuse=()):
    """Frame a whole byte string in command mode (unit checks): every sync
    literal is accepted except those whose command tag is in refuse.
    Returns (entries, leftover bytes)."""
    chunks = [bytes(data)]

    def fill():
        """The whole input once, then EOF."""
        return chunks.pop() if chunks else b""

    reader = Reader(fill)
    out = []
    while True:
        try:
            cmd = read_command(reader, lambda c, n: c.tag not in refuse)
        except Eof:
            return out, bytes(reader.buf)
        out.append(cmd.entry())


# ------------------------------------------------------------------ backend

class Record:
    """What one backend connection saw and did."""

    def __init__(self, number):
        self.number = number
        self.sid = None             # x-session-id from imapgate's ID
        self.cport = None           # x-originating-port (the client's port)
        self.entries = []           # framed commands, see module doc
        self.tagged = []            # (tag, STATUS) of every tagged reply sent
        self.end = None             # how reading ended: eof, reset, timeout, ...
        self.closed_by_backend = None   # fin/rst/bye/logout/mid-... if it did
        self.hung = False           # stopped answering (backend_response case)
        self.notes = []             # decisions, for failure reports
        self.done = threading.Event()


class Profile:
    """Per-connection random behaviour, drawn from the session's seed."""

    def __init__(self, rng):
        self.rng = rng
        self.refuse = rng.choice([0.0, 0.0, 0.15, 0.5])
        self.noise = rng.choice([0.0, 0.1, 0.3, 0.7])
        self.delay = rng.choice([0.0, 0.0, 0.0, 0.02])
        self.drop_at = rng.randrange(12) if rng.random() < 0.25 else None
        self.drop_how = rng.choice(["fin-before", "fin-after", "rst-before", "rst-after",
                                    "bye", "mid-line", "mid-literal", "at-literal"])
        self.hang_at = rng.randrange(8) if rng.random() < 0.03 else None
        self.id_reply = rng.choice(["ok", "ok", "literal", "noise"])


def polite_profile():
    """A profile that answers everything at once and never drops."""
    p = Profile(random.Random(0))
    p.refuse = p.noise = p.delay = 0.0
    p.drop_at = p.hang_at = None
    p.id_reply = "ok"
    return p


class _Conn:
    """One connection: framing loop and random answers."""

    def __init__(self, backend, sock, rec):
        self.backend, self.sock, self.rec = backend, sock, rec
        self.reader = Reader(self._fill)
        self.profile = None
        self.rng = None
        self.quiet = False          # sends nothing more (closed its side, or hangs)
        self.ncmd = 0
        self.zz = 0

    # -- I/O

    def _fill(self):
        """Read from the socket (bounded wait); b"" at EOF."""
        self.sock.settimeout(IO_TIMEOUT)
        try:
            return self.sock.recv(65536)
        except socket.timeout:
            raise Eof("timeout")
        except OSError:
            raise Eof("reset")

    def send(self, data):
        """Send unless quiet; a failed send makes the connection quiet."""
        if self.quiet:
            return
        try:
            self.sock.sendall(data)
        except OSError:
            self.quiet = True

    def tagged(self, tag, status, text):
        """Send a tagged reply and record it."""
        if self.quiet:
            return
        self.rec.tagged.append((tag, status.upper()))
        self.send(("%s %s %s\r\n" % (tag, status, text)).encode("latin-1"))

    def close_write(self, how):
        """Stop sending (FIN) but keep framing until imapgate closes."""
        if not self.quiet:
            self.rec.closed_by_backend = how
            self.rec.notes.append("backend %s" % how)
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        self.quiet = True

    def reset(self, how):
        """Abort the connection with a TCP reset."""
        self.rec.closed_by_backend = how
        self.rec.notes.append("backend %s" % how)
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        raise Eof("backend-" + how)

    # -- random output

    def noise(self):
        """Zero or more untagged (or stray-tagged) lines, some invalid."""
        rng = self.rng
        while not self.quiet and rng.random() < self.profile.noise:
            k = rng.randrange(12)
            if k == 0:
                self.send(b"* OK still here\r\n")
            elif k == 1:
                self.send(b"* %d EXISTS\r\n" % rng.randrange(100))
            elif k == 2:
                self.send(b"* 1 FETCH (FLAGS (\\Seen))\r\n")
            elif k in (3, 4):
                body = self.literal_body()
                form = b"~" if k == 4 else b""
                name = b"BINARY[]" if k == 4 else b"BODY[]"
                self.send(b"* 1 FETCH (" + name + b" " + form + b"{%d}\r\n" % len(body)
                          + body + b")\r\n")
            elif k == 5:
                self.send(b"* OK [X-FUZZ a b] unknown code\r\n")
            elif k == 6:
                self.send(b"* NO warning [ALERT] later bracket\r\n")
            elif k == 7:
                self.send(b"* BAD backend noise\r\n")
            elif k == 8:
                self.zz += 1
                tag = "zz%d" % self.zz
                self.tagged(tag, rng.choice(["OK", "NO", "BAD"]), "stray tagged reply")
            elif k == 9:
                self.send(rng.choice([b"garbage line\r\n", b"*\r\n", b")\r\n",
                                      b"* 3 FROB\r\n", b"*  double space\r\n"]))
            elif k == 10:
                self.send(b"* CAPABILITY IMAP4rev1 LITERAL+ IDLE\r\n")
            else:
                self.send(b'* LIST () "/" {6}\r\nab"c\r\n\r\n')

    def literal_body(self):
        """Response literal data that would fool a line-based reader."""
        rng = self.rng
        parts = [b"x" * rng.randrange(20), b"\r\na1 OK fake inside a literal\r\n",
                 b"{5}\r\n", b"+ go\r\n", b"* BYE fake\r\n", bytes([rng.randrange(256)])]
        rng.shuffle(parts)
        return b"".join(parts[:rng.randrange(1, len(parts) + 1)])

    def status(self, name):
        """A random tagged status for a command."""
        r = self.rng.random()
        if name in ("LOGIN", "SELECT", "EXAMINE"):
            return "OK" if r < 0.85 else "NO"
        return "OK" if r < 0.75 else ("NO" if r < 0.9 else "BAD")

    # -- framing callbacks and command handling

    def on_sync(self, cmd, n):
        """Decide about a synchronizing literal: "+" (True) or refuse (False)."""
        if self.quiet:
            return False
        if self.profile.drop_at == self.ncmd and self.profile.drop_how == "at-literal":
            self.profile.drop_at = None
            self.send(b"+ go\r\n")
            self.close_write("fin-at-literal")
            return True
        if n > MAX_LITERAL or self.rng.random() < self.profile.refuse:
            self.tagged(cmd.tag, self.rng.choice(["NO", "NO", "BAD"]),
                        "[TOOBIG] literal refused" if n > MAX_LITERAL else "literal refused")
            self.rec.notes.append("refused literal of %s" % cmd.tag)
            return False
        self.send(b"+ go\r\n")
        return True

    def handle_id(self, cmd):
        """imapgate's own ID: learn the session, answer per profile."""
        m, p = SID_RX.search(cmd.first), PORT_RX.search(cmd.first)
        self.rec.sid = m.group(1).decode("latin-1") if m else None
        self.rec.cport = int(p.group(1)) if p else None
        seed = self.backend.lookup(self.rec.cport)
        self.profile = Profile(random.Random(seed)) if seed is not None else polite_profile()
        self.rng = self.profile.rng
        how = self.profile.id_reply
        if how == "literal":
            self.send(b'* ID ("name" {%d}\r\n%s "x" "y")\r\n' % (len(ID_LEAK_MARK), ID_LEAK_MARK))
        elif how == "noise":
            self.send(b"* OK " + ID_LEAK_MARK + b" noise\r\n")
            self.send(b"* 1 FETCH (BODY[] {%d}\r\n%s\r\n)\r\n"
                      % (len(ID_LEAK_MARK) + 2, ID_LEAK_MARK))
        self.tagged(cmd.tag, "OK", "ID completed")

    def sasl(self, cmd):
        """AUTHENTICATE: challenges, SASL lines, tagged OK/NO/BAD."""
        rng = self.rng
        words = split_eol(cmd.first)[0].split(b" ")
        mech = words[2].upper() if len(words) > 2 else b""
        has_ir = len(words) > 3
        if mech not in (b"PLAIN", b"LOGIN", b"XOAUTH2") or rng.random() < 0.1:
            self.tagged(cmd.tag, "NO", "mechanism refused")
            return
        need = 2 if mech == b"LOGIN" else (0 if has_ir and rng.random() < 0.8 else 1)
        rounds = 0
        while rounds < need or (rounds < 3 and rng.random() < 0.1):
            self.send(rng.choice([b"+ \r\n", b"+ VXNlcm5hbWU6\r\n", b"+ =\r\n"]))
            part = self.reader.line()
            kind = sasl_kind(part)
            self.rec.entries.append(line_entry(part, kind))
            if kind == "sasl-cancel":
                self.tagged(cmd.tag, "BAD", "AUTHENTICATE cancelled")
                return
            rounds += 1
        self.tagged(cmd.tag, "OK" if rng.random() < 0.7 else "NO",
                    "AUTHENTICATE done")

    def idle(self, cmd):
        """IDLE: "+ idling", pushes, then one line (DONE expected)."""
        if self.rng.random() < 0.1:
            self.tagged(cmd.tag, "NO", "no IDLE now")
            return
        self.send(b"+ idling\r\n")
        self.noise()
        part = self.reader.line()
        if split_eol(part)[0].upper() == b"DONE":
            self.rec.entries.append(line_entry(part, "done"))
            self.tagged(cmd.tag, "OK", "IDLE terminated")
        else:
            self.rec.entries.append(line_entry(part, "idle-other"))
            self.tagged(cmd.tag, "BAD", "Expected DONE")

    def answer(self, cmd):
        """The random answer to one framed command."""
        p, rng = self.profile, self.rng
        if p.delay:
            time.sleep(rng.random() * p.delay)
        if p.hang_at == self.ncmd:
            self.rec.hung = True
            self.rec.notes.append("backend hangs at command %d" % self.ncmd)
            self.quiet = True
            return
        drop = p.drop_at == self.ncmd
        if drop and p.drop_how in ("fin-before", "rst-before"):
            if p.drop_how == "rst-before":
                self.reset("rst-before")
            self.close_write("fin-before")
            return
        if drop and p.drop_how == "mid-line":
            self.send(("%s O" % cmd.tag).encode("latin-1"))
            self.close_write("mid-line")
            return
        if drop and p.drop_how == "mid-literal":
            self.send(b"* 1 FETCH (BODY[] {100}\r\nonly a part")
            self.close_write("mid-literal")
            return
        self.noise()
        if not TAG_RX.match(cmd.tag):
            self.send(b"* BAD parse error\r\n")     # never "+ ...": no stray continuation
        elif cmd.unterminated or not cmd.name:
            self.tagged(cmd.tag, "BAD", "parse error")
        elif cmd.name == "AUTHENTICATE":
            self.sasl(cmd)
        elif cmd.name == "IDLE":
            self.idle(cmd)
        elif cmd.name == "LOGOUT":
            self.send(b"* BYE logging out\r\n")
            self.tagged(cmd.tag, "OK", "LOGOUT completed")
            self.close_write("logout")
            return
        else:
            self.tagged(cmd.tag, self.status(cmd.name), "%s done" % cmd.name)
        if drop and p.drop_how == "bye":
            self.send(b"* BYE backend going away\r\n")
            self.close_write("bye")
        elif drop and p.drop_how == "fin-after":
            self.close_write("fin-after")
        elif drop and p.drop_how == "rst-after":
            self.reset("rst-after")

    def run(self):
        """Greet, then frame and answer commands until the connection ends."""
        self.send(GREETING)
        first = True
        while True:
            cmd = read_command(self.reader, self.on_sync if self.profile else
                               (lambda c, n: self.on_sync_setup(c)))
            if first and cmd.tag == ID_TAG and cmd.name == "ID":
                first = False
                self.handle_id(cmd)
                continue
            if first:
                first = False
                self.profile = polite_profile()
                self.rng = self.profile.rng
                self.rec.notes.append("first command was not imapgate's ID")
            self.rec.entries.append(cmd.entry())
            if not self.quiet and not cmd.refused:
                self.answer(cmd)
            self.ncmd += 1

    def on_sync_setup(self, cmd):
        """A literal before imapgate's ID: accept it (a polite server)."""
        self.send(b"+ go\r\n")
        return True


class FuzzBackend:
    """The listening backend: one thread per connection, records kept."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.lock = threading.Lock()
        self.registry = {}          # client port -> seed string (None: polite)
        self.records = []
        self.socks = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)

    def start(self):
        """Start accepting; returns the port."""
        self.thread.start()
        return self.port

    def register(self, port, seed):
        """Tell the backend which seed drives the session of client port."""
        with self.lock:
            self.registry[port] = seed

    def lookup(self, port):
        """The seed registered for a client port (waits briefly), or None."""
        if port is None:
            return None
        end = time.monotonic() + REGISTRY_WAIT
        while True:
            with self.lock:
                if port in self.registry:
                    return self.registry[port]
            if time.monotonic() >= end or self.stopping.is_set():
                return None
            time.sleep(0.005)

    def records_for(self, sid):
        """The connection records whose ID named session sid, in order."""
        with self.lock:
            return [r for r in self.records if r.sid == sid]

    def _accept_loop(self):
        """Accept connections until stopped."""
        self.sock.settimeout(0.2)
        while not self.stopping.is_set():
            try:
                s, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self.lock:
                rec = Record(len(self.records))
                self.records.append(rec)
                self.socks.append(s)
            threading.Thread(target=self._serve, args=(s, rec), daemon=True).start()

    def _serve(self, s, rec):
        """Thread body for one connection."""
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.settimeout(IO_TIMEOUT)        # bounds sends too
        conn = _Conn(self, s, rec)
        try:
            conn.run()
        except Eof as e:
            rec.end = e.how
        except Exception as e:          # a bug in the backend itself
            rec.end = "backend-error %r" % e
        finally:
            try:
                s.close()
            except OSError:
                pass
            rec.done.set()

    def stop(self):
        """Stop accepting and close every connection."""
        self.stopping.set()
        try:
            self.sock.close()
        except OSError:
            pass
        with self.lock:
            socks = list(self.socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.thread.join(2.0)


# ---------------------------------------------------------------- self-test

def selftest():
    """Check the framer on hand-made inputs; raises AssertionError."""
    def cmd(tag, name, data, nlit=0):
        """The expected entry (without flags) for a command of bytes data."""
        return ("command", tag, name, len(data), nlit)

    def same(data, want, refuse=(), left=b""):
        """Frame data and compare with the expected entries and leftover."""
        got, rest = frame_bytes(data, refuse)
        got = [e[:5] for e in got]
        assert got == want and rest == left, "framing %r:\n got  %r\n want %r (left %r)" % (
            data, got, want, rest)

    same(b"a NOOP\r\n", [cmd("a", "NOOP", b"a NOOP\r\n")])
    same(b"a noop\nb2 Capability\r\n",
         [cmd("a", "NOOP", b"a noop\n"), cmd("b2", "CAPABILITY", b"b2 Capability\r\n")])
    two = b"a LOGIN {4}\r\nuser {4+}\r\npass\r\n"
    same(two, [cmd("a", "LOGIN", two, 2)])
    # The smuggling line: "{19+}" inside an unterminated quoted string is no literal.
    same(b'a NOOP "x{19+}\r\nb LOGOUT\r\n',
         [cmd("a", "NOOP", b'a NOOP "x{19+}\r\n'), cmd("b", "LOGOUT", b"b LOGOUT\r\n")])
    same(b'a SELECT "a\\"{5}"\r\n', [cmd("a", "SELECT", b'a SELECT "a\\"{5}"\r\n')])
    q = b'a SELECT "a\\\\" {3}\r\nabc\r\n'        # escaped backslash closes the quote
    same(q, [cmd("a", "SELECT", q, 1)])
    b8 = b"a APPEND INBOX ~{3}\r\n\x00\r\n\r\n"
    same(b8, [cmd("a", "APPEND", b8, 1)])
    z = b"a SELECT {0}\r\n\r\nb NOOP\r\n"
    same(z, [cmd("a", "SELECT", b"a SELECT {0}\r\n\r\n", 1), cmd("b", "NOOP", b"b NOOP\r\n")])
    # A refused synchronizing literal ends the command at its header.
    same(b"a APPEND x {5}\r\nhello\r\n",
         [cmd("a", "APPEND", b"a APPEND x {5}\r\n", 1), cmd("hello", "", b"hello\r\n")],
         refuse=("a",))
    same(b"a NOOP {5}x\r\n", [cmd("a", "NOOP", b"a NOOP {5}x\r\n")])
    same(b"a NOOP x{3}\r\nabc\r\n", [cmd("a", "NOOP", b"a NOOP x{3}\r\nabc\r\n", 1)])
    same(b"a LOGIN{2}\r\nxy\r\n", [cmd("a", "LOGIN", b"a LOGIN{2}\r\nxy\r\n", 1)])
    same(b"a NOOP {3}\r\nab", [], left=b"ab")      # incomplete: nothing framed
    lit = b"a APPEND INBOX {13}\r\nb NOOP\r\nc X\r\n\r\n"
    same(lit, [cmd("a", "APPEND", lit, 1)])
    same(b"\r\n* NOOP\r\n", [cmd("", "", b"\r\n"), cmd("*", "NOOP", b"* NOOP\r\n")])
    assert scan_part(b'a "b') == (True, None)
    assert scan_part(b"a ~{7+}") == (False, (7, False, True))
    assert scan_part(b'a "x" {12}') == (False, (12, True, False))
    assert sasl_kind(b"*\r\n") == "sasl-cancel" and sasl_kind(b"* \r\n") == "sasl"
    assert head_words(b"t1 uid fetch 1 (FLAGS)\r\n") == ("t1", "UID")
    flags = [e.flags for e in frame_bytes(
        b'a NOOP\r\n+ NOOP\r\na  NOOP\r\nb NO(OP\r\nc NOOP a\x00b\r\nd NOOP\r\r\n'
        b'e NOOP "x\r\nf {2}\r\nxy\r\ng]} NOOP\r\n' + b"x" * 65 + b" NOOP\r\n"
        + b"h " + b"N" * 33 + b"\r\n")[0]]
    assert flags == [(), ("bad-tag",), ("bad-name",), ("bad-name",), ("nul",),
                     ("bad-name", "bare-cr"), ("unterminated",), ("bad-name",), (),
                     ("bad-tag",), ("bad-name",)], flags
    refused = frame_bytes(b"a APPEND x {5}\r\n", refuse=("a",))[0]
    assert refused[0].flags == ("refused",) and refused[0].longest == 16


if __name__ == "__main__":
    selftest()
    print("fuzz_backend framer self-test: ok")
    sys.exit(0)
