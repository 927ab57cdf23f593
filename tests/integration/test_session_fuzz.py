#!/usr/bin/env python3
"""Session fuzzer (issue 13): random IMAP clients through the real imapgate
in front of a scripted backend (fuzz_backend.py) that frames what it gets
exactly per RFC 3501/9051.

usage: test_session_fuzz.py PATH-TO-IMAPGATE      (or $IMAPGATE)

Environment:
  IMAPGATE_FUZZ_SEED        seed to replay (printed at the start of every run)
  IMAPGATE_FUZZ_SECONDS     fuzzing time, default 60
  IMAPGATE_FUZZ_ONLY        comma-separated session numbers: replay only those
  IMAPGATE_FUZZ_KEEP_GOING  1: do not stop at the first failing session
  IMAPGATE_FUZZ_VERBOSE     1: print the client's bytes of every session
  IMAPGATE_TEST_KEEP        1: keep the temporary directory (logs, config)

Sessions run one at a time (each with its own seeded generator, so one can be
replayed alone).  A quarter go to a plain listener with `compress: true`:
they log in (mostly), send COMPRESS DEFLATE at a random point (sometimes
before login, pipelined behind a command, twice, or with a command deflated
right behind it before the OK) and, once imapgate said OK, go on through a
raw deflate stream (RFC 1951, wbits -9..-15, random level, memLevel and
strategy) with random flush points: a sync flush per command, per several
commands (only before the client waits), full/partial flushes, a sync flush
mid-command or mid-literal, byte-at-a-time writes.  Some break their stream
after COMPRESS (a reserved block type, bad stored lengths, a final block, a
zlib header, plain text, random bytes; checked against a mirror of
imapgate's inflater to fail without inflating a byte) and send plain
commands behind it.  After each session:
  1. imapgate is alive: the process runs and a new connection is greeted;
  2. the commands the backend framed equal imapgate's c2s debug trace for that
     session (kind, tag, name, bytes; SPEC "Debug trace").  A missing tail is
     tolerated unless the session ended cleanly on both legs (the client
     half-closed and read to EOF, imapgate ended it with reason=client-eof,
     the backend neither closed nor hung).  And nothing SPEC says imapgate
     answers itself reached the backend: no command with a bad tag or name,
     a NUL, a bare CR, an unterminated quoted string or a line past max_line,
     none of the generator's invalid lines, no LITERAL+ data after an invalid
     line as a command, nothing but DONE during IDLE, no SASL line past
     max_line;
  3. every tagged OK the client read was sent by the backend for that session
     (imapgate's own `TAG OK Begin TLS negotiation now` to STARTTLS and one
     `TAG OK DEFLATE active` to COMPRESS on the compress listener
     excepted), counted per tag; the backend's answer to imapgate's own ID
     never reaches the client; a line pipelined behind an accepted STARTTLS
     never reaches the backend;
  4. COMPRESS: the command never reaches the backend (any listener); at
     most one OK to it, never to one sent before any LOGIN/AUTHENTICATE;
     imapgate's deflate stream inflates and never ends; a broken client
     stream ends the session with reason=client-compress-error and a
     compressed `* BYE Compression error` (unless the backend ended it
     first) and none of the commands behind it reaches the backend; a valid
     stream never ends with reason=client-compress-error;
  5. no sanitizer report in imapgate's log.
At the end imapgate must exit with status 0 on SIGTERM.  On a failure the
seed, the session number and id, a compact diff and the replay command are
printed and the exit status is 1.  Python 3 standard library only.
"""

import collections
import os
import random
import re
import select
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
import zlib

import harness
from harness import say
import fuzz_backend

DEFAULT_SECONDS = 60.0
SESSION_LIMIT = 8.0         # seconds one client session may run at most
END_WAIT = 8.0              # seconds to wait for msg=session-end after the client is done
BACKEND_WAIT = 5.0          # ... and for the backend to see its connection end
REPLY_WAIT = 0.6            # seconds a polite client waits for "+" or a tagged reply
STALL = 1.0                 # seconds without write progress before a client gives up
GRACEFUL_WAIT = 4.0         # seconds a half-closed client reads, waiting for EOF
PROBE_WAIT = 5.0            # seconds for the liveness probe's greeting
MAX_LINE = 2048             # limits.max_line in the generated config
RESPONSE_LITERAL_MAX = 16 << 20  # larger "{n}" in a response: not read as a literal
KEEP_RX = 4 << 20           # bytes of client input kept for the checks
STARTTLS_OK = b" OK Begin TLS negotiation now\r\n"
COMPRESS_OK = b" OK DEFLATE active\r\n"
COMPRESS_BYE = b"* BYE Compression error\r\n"
# Client flushes of its deflate stream (None: no flush, data may stay in the deflater).
ZFLUSHES = [None, zlib.Z_SYNC_FLUSH, zlib.Z_FULL_FLUSH, zlib.Z_PARTIAL_FLUSH]
LIT_RX = re.compile(rb"~?\{([0-9]+)\+?\}\r?\n$")
SANITIZER_RX = re.compile(r"ERROR: (Address|Leak|Thread|Memory)Sanitizer|runtime error:")
FIELD_RX = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')


def env_flag(name):
    """True if environment variable name is set to 1."""
    return os.environ.get(name) == "1"


# ================================================================ generator

class Lit:
    """A literal argument: data and form (sync, plus, lit8, lit8plus)."""

    def __init__(self, data, form):
        self.data, self.form = data, form

    def header(self):
        """The literal header with its CRLF."""
        n = len(self.data)
        return {"sync": b"{%d}\r\n", "plus": b"{%d+}\r\n", "lit8": b"~{%d}\r\n",
                "lit8plus": b"~{%d+}\r\n"}[self.form] % n


class Cmd:
    """One client command as chunks (gate, bytes).  gate "cont": a polite
    client waits for a "+" (or the tagged reply) before the chunk; "pause":
    it waits a moment; "none": the chunk follows at once."""

    def __init__(self, label, tag, chunks, rude=False, wait=True, special=None):
        self.label, self.tag, self.chunks = label, tag, chunks
        self.rude = rude            # send every chunk without waiting
        self.wait = wait            # wait for the tagged reply afterwards
        self.special = special      # "starttls", "compress" or None
        self.bytewise = False       # the first bytes go out one at a time
        self.pause = 0.05           # seconds of a "pause" gate
        self.inject = None          # tag of a line pipelined behind STARTTLS
        self.reject = False         # SPEC: imapgate answers this line itself
        self.plus_tags = []         # tags of lines sent as LITERAL+ data after it
        self.zflush = zlib.Z_SYNC_FLUSH     # deflate flush after each chunk (compressed)
        self.zcut = None            # (chunk, offset): a sync flush and a pause there
        self.zspec = None           # COMPRESS: a command deflated right behind it

    def data(self):
        """All bytes of the command."""
        return b"".join(c for _, c in self.chunks)


def build(tag, words, eol=b"\r\n"):
    """Chunks of a command from words (bytes, or Lit); a synchronizing literal
    starts a new chunk gated on "+"."""
    chunks, gate, cur = [], "none", bytearray(tag)
    for w in words:
        if isinstance(w, Lit):
            cur += w.header()
            if w.form in ("sync", "lit8"):
                chunks.append((gate, bytes(cur)))
                gate, cur = "cont", bytearray()
            cur += w.data
        else:
            cur += w
    cur += eol
    chunks.append((gate, bytes(cur)))
    return chunks


class Gen:
    """Random clients for one session, all drawn from one Random."""

    def __init__(self, rng):
        self.rng = rng
        self.n = 0
        self.tags = []
        self.smug = 0

    # -- small pieces

    def tag(self, fresh=False):
        """A valid tag, sometimes unusual, sometimes the last one again.  A
        fresh tag is new and never reused (for lines imapgate must refuse)."""
        rng = self.rng
        self.n += 1
        if self.tags and not fresh and rng.random() < 0.04:
            return self.tags[-1]                    # same tag as the last command
        k = rng.random()
        if k < 0.75:
            t = b"a%d" % self.n
        elif k < 0.85:
            t = b"A%04d" % self.n
        elif k < 0.92:
            t = rng.choice([b"t]%d", b"x.y-%d", b"q}%d", b"#%d!", b"a/b,%d"]) % self.n
        else:
            t = b"T%d" % self.n + b"x" * (64 - len(b"T%d" % self.n))   # 64 bytes
        if not fresh:
            self.tags.append(t)
        return t

    def smuggled(self):
        """A command line that must never reach the backend on its own."""
        self.smug += 1
        return b"smug%d %s\r\n" % (self.smug, self.rng.choice(
            [b"NOOP", b"LOGOUT", b"DELETE INBOX", b"SELECT INBOX"]))

    def lit_data(self):
        """Literal bytes: empty, text, lines that look like commands, binary."""
        rng = self.rng
        k = rng.random()
        if k < 0.12:
            return b""
        if k < 0.5:
            return bytes(rng.choice(b"abcdefghij XYZ0123") for _ in range(rng.randrange(1, 40)))
        if k < 0.75:
            parts = [b"From: a@b\r\n\r\n", b"lit9 LOGOUT\r\n", b"{5}\r\n", b"DONE\r\n",
                     b"\r\n", b'"', b"x{3+}\r\nabc", b"* OK\r\n", b"\x00"]
            rng.shuffle(parts)
            return b"".join(parts[:rng.randrange(1, len(parts) + 1)])
        if k < 0.95:
            return rng.randbytes(rng.randrange(1, 300))
        return b"M" * rng.randrange(3000, 70000)

    def lit(self, data=None):
        """A literal of a random form."""
        form = self.rng.choices(["sync", "plus", "lit8", "lit8plus"], [45, 35, 12, 8])[0]
        return Lit(self.lit_data() if data is None else data, form)

    def astring(self, text):
        """text as an atom, a quoted string (escapes, "{n}" inside) or a literal."""
        rng = self.rng
        k = rng.random()
        if k < 0.35 and re.match(rb"^[A-Za-z0-9._-]+$", text):
            return text
        if k < 0.7:
            body = text
            extra = rng.random()
            if extra < 0.2:
                body += b'\\"q\\\\'
            elif extra < 0.35:
                body += rng.choice([b"{5}", b"{19+}", b"~{3}", b"{0}"])
            return b'"' + body + b'"'
        return self.lit(text)

    def mailbox(self):
        """A mailbox name argument."""
        return self.astring(self.rng.choice([b"INBOX", b"Sent", b"Drafts", b"a b",
                                             b"Entw\xc3\xbcrfe", b"x"]))

    # -- commands

    def valid(self):
        """A (mostly) valid command of any kind."""
        rng, t = self.rng, self.tag()
        k = rng.randrange(28)
        if k >= 22:                         # AUTHENTICATE and IDLE three times as often
            k = 8 if k < 25 else 9
        sp = b" "
        if k == 0:
            return Cmd("LOGIN", t, build(t, [b" LOGIN ", self.astring(b"demo"), sp,
                                              self.astring(b"pw")]))
        if k == 1:
            return Cmd("SELECT", t, build(t, [b" " + rng.choice([b"SELECT", b"EXAMINE"]) + sp,
                                               self.mailbox()]))
        if k == 2:
            words = [b" APPEND ", self.mailbox()]
            if rng.random() < 0.5:
                words.append(b" (\\Seen)")
            if rng.random() < 0.3:
                words.append(b' "01-Jan-2024 12:00:00 +0000"')
            words += [sp, self.lit()]
            if rng.random() < 0.2:              # MULTIAPPEND: a second literal
                words += [sp, self.lit()]
            return Cmd("APPEND", t, build(t, words))
        if k == 3:
            return Cmd("RENAME", t, build(t, [b" RENAME ", self.mailbox(), sp, self.mailbox()]))
        if k == 4:
            return Cmd("LIST", t, build(t, [b" LIST ", self.astring(b""), sp,
                                             self.astring(b"*")]))
        if k == 5:
            return Cmd("STATUS", t, build(t, [b" STATUS ", self.mailbox(),
                                               b" (MESSAGES UIDNEXT)"]))
        if k == 6:
            return Cmd("SEARCH", t, build(t, [b" SEARCH CHARSET UTF-8 TEXT ",
                                               self.astring(b"hello")]))
        if k == 7:
            return Cmd("ID", t, build(t, [b' ID ("name" ', self.astring(b"fuzz"), b")"]))
        if k == 8:
            return self.sasl(t)
        if k == 9:
            return self.idle(t)
        if k == 10:
            return self.starttls_cmd(t)
        if k == 11:
            return self.compress_cmd(t)
        if k == 12:
            return Cmd("UID", t, build(t, [b" UID FETCH 1:* (UID FLAGS)"]))
        if k == 13:
            return Cmd("FETCH", t, build(t, [b" FETCH 1 (BODY.PEEK[HEADER] FLAGS)"]))
        if k == 14:
            return Cmd("STORE", t, build(t, [b" STORE 1 +FLAGS (\\Seen)"]))
        if k == 15:
            return Cmd("COPY", t, build(t, [b" " + rng.choice([b"COPY", b"MOVE"]) + b" 1:2 ",
                                             self.mailbox()]))
        if k == 16:
            return Cmd("LOGOUT", t, build(t, [b" LOGOUT"])) if rng.random() < 0.3 else \
                Cmd("NOOP", t, build(t, [b" NOOP"]))
        if k == 17:
            return Cmd("XFUZZ", t, build(t, [b" XFUZZ ", self.astring(b"arg"), b" (1 2)"]))
        name = rng.choice([b"NOOP", b"CAPABILITY", b"CHECK", b"CLOSE", b"UNSELECT", b"EXPUNGE",
                           b"NAMESPACE", b"ENABLE CONDSTORE", b"ID NIL", b"noop"])
        eol = b"\n" if rng.random() < 0.1 else b"\r\n"
        return Cmd(name.split()[0].decode().upper(), t, build(t, [b" " + name], eol))

    def sasl(self, t):
        """AUTHENTICATE with or without SASL-IR, responses, "*" cancel."""
        rng = self.rng
        mech = rng.choice([b"PLAIN", b"PLAIN", b"LOGIN", b"XOAUTH2", b"X-UNKNOWN"])
        first = t + b" AUTHENTICATE " + mech
        if mech != b"LOGIN" and rng.random() < 0.4:
            first += b" " + rng.choice([b"AGRlbW8AcHc=", b"=", b"dXNlcg=="])
        chunks = [("none", first + b"\r\n")]
        for _ in range(rng.randrange(1, 4)):
            k = rng.random()
            if k < 0.5:
                line = rng.choice([b"AGRlbW8AcHc=", b"dXNlcg==", b""])
            elif k < 0.7:
                line = b"*"
            elif k < 0.8:
                line = b"A" * rng.randrange(MAX_LINE, 3 * MAX_LINE)     # past max_line
            elif k < 0.9:
                line = b"abc{%d+}" % rng.randrange(1, 20)           # no literal in SASL
            else:
                line = b"x NOOP"
            chunks.append(("cont", line + b"\r\n"))
        return Cmd("AUTHENTICATE", t, chunks, rude=rng.random() < 0.2)

    def idle(self, t):
        """IDLE: wait for "+", idle a moment, sometimes other lines, then DONE."""
        rng = self.rng
        chunks = [("none", t + b" IDLE\r\n"), ("cont", b""), ("pause", b"")]
        for _ in range(rng.choice([0, 0, 1, 2])):
            chunks.append(("none", rng.choice([b"a NOOP\r\n", b"x{5+}\r\nhello\r\n",
                                               b"DONE x\r\n", b"\r\n", b"{3}\r\n"])))
        chunks.append(("none", rng.choice([b"DONE\r\n", b"DONE\r\n", b"done\r\n", b"DONE\n"])))
        c = Cmd("IDLE", t, chunks, rude=rng.random() < 0.15)
        c.pause = rng.choice([0.0, 0.05, 0.3])
        return c

    def starttls_cmd(self, t):
        """STARTTLS, sometimes with a command pipelined behind it (must be dropped)."""
        c = Cmd("STARTTLS", t, [("none", t + b" STARTTLS\r\n")], special="starttls")
        if self.rng.random() < 0.4:
            c.inject = b"inj%d" % self.n
            c.chunks = [("none", c.chunks[0][1] + c.inject + b" NOOP\r\n")]
        return c

    def compress_cmd(self, t):
        """COMPRESS DEFLATE (imapgate answers it: OK and raw deflate from the
        next byte on a listener with compress: true after login, else NO/BAD)."""
        name = self.rng.choice([b"COMPRESS DEFLATE", b"COMPRESS DEFLATE", b"compress deflate"])
        return Cmd("COMPRESS", t, [("none", t + b" " + name + b"\r\n")], special="compress")

    def invalid(self):
        """A line imapgate must answer itself (SPEC: never forwarded), often
        ending in a literal header whose data looks like commands."""
        rng, t = self.rng, self.tag(fresh=True)
        k = rng.randrange(14)
        if k == 0:                          # unterminated quoted string
            line = t + b' NOOP "x'
        elif k == 1:
            line = t + rng.choice([b" NOOP x{5}", b" NOOP {abc}", b" NOOP {5}x", b" NOOP {5",
                                   b" NOOP {}", b" NOOP {-1}", b" NOOP {5++}", b" NOOP { 5}",
                                   b" NOOP {99999999999999999999}", b" NOOP ~{5"])
        elif k == 2:
            line = t + rng.choice([b' NO"OP', b' NOOP ab"cd"', b' SELECT IN"BOX', b' "NOOP"'])
        elif k == 3:
            line = t + rng.choice([b" NOOP a\x00b", b" NOOP a\rb", b" NOOP\r"])
        elif k == 4:                        # bad tags
            line = rng.choice([b"*", b"+", b"a+b", b"a%", b"a(", b"a{", b'"a"', b"\x80a",
                               b"x" * 65, b"", b"\t"]) + b" NOOP"
        elif k == 5:                        # no or bad command name
            line = rng.choice([b"", t, t + b" ", t + b"  NOOP", t + b" NO(OP",
                               t + b" " + b"N" * 33])
        elif k == 6:                        # longer than limits.max_line
            line = t + b" NOOP " + b"x" * rng.randrange(MAX_LINE, 4 * MAX_LINE)
        elif k == 7:
            line = t + b' SELECT "a"'
        elif k == 8:                        # a tag longer than 64 bytes
            line = b"L" * rng.randrange(65, 300) + b" NOOP"
        elif k == 9:                        # quoted string with a header inside it
            line = t + b' NOOP "x{%d+}"' % rng.randrange(1, 30)
        elif k == 10:                       # overlong line, usually with a header after it
            line = t + b" APPEND INBOX " + b"y" * rng.randrange(MAX_LINE, 3 * MAX_LINE)
        elif k == 11:
            line = t + b' LOGIN a"b c'
        elif k == 12:
            line = t + b" NOOP " + bytes(rng.randrange(128, 256) for _ in range(8))
        else:
            line = t + b' NOOP "unterminated' + rng.choice([b"\\", b'\\"', b""])
        form = rng.choice(["", "plus", "plus", "sync"])
        # Lines SPEC says imapgate answers itself (k 7, 9, 12 may be valid; a
        # 20-digit literal length alone is not listed).
        reject = k not in (7, 9, 12) and not (form == "" and b"{999" in line)
        if not form:
            c = Cmd("INVALID", t, [("none", line + b"\r\n")], rude=rng.random() < 0.6)
        else:
            payload = self.smuggled() + (self.smuggled() if rng.random() < 0.3 else b"")
            if k not in (0, 13) and rng.random() < 0.3:
                line += b" "
            # As a literal, the payload is followed by the end of the command line.
            if form == "plus":
                chunks = [("none", line + b"{%d+}\r\n" % len(payload) + payload + b"\r\n")]
            else:
                chunks = [("none", line + b"{%d}\r\n" % len(payload)), ("cont", payload + b"\r\n")]
            c = Cmd("INVALID", t, chunks, rude=rng.random() < 0.6)
            if form == "plus" and k not in (0, 13):
                # Outside a quoted string "{n+}" at the end is a literal whether
                # the line is valid or rejected: its data is never a command.
                # (Inside an unterminated quote SPEC leaves it open.)
                c.plus_tags = re.findall(rb"(smug[0-9]+) ", payload)
        c.reject = reject
        return c

    def pipelined_conflict(self):
        """A command, then a sync literal with the same tag before the reply."""
        t = self.tag()
        c = Cmd("TAGCLASH", t, [("none", t + b" NOOP\r\n" + t + b" APPEND INBOX {5}\r\n"),
                                ("cont", b"hello\r\n")], rude=self.rng.random() < 0.5)
        return c

    def command(self):
        """Any command: mostly valid, sometimes invalid."""
        k = self.rng.random()
        if k < 0.68:
            return self.valid()
        if k < 0.96:
            return self.invalid()
        return self.pipelined_conflict()


class Plan:
    """Everything one session does, drawn from the session's seed."""

    def __init__(self, seed, n):
        rng = random.Random("%d:%d" % (seed, n))
        self.n = n
        self.backend_seed = "%d:%d:backend" % (seed, n)
        k = rng.random()
        self.listener = "starttls" if k < 0.25 else ("compress" if k < 0.5 else "plain")
        compress = self.listener == "compress"
        self.reads = rng.random() >= 0.08
        gen = Gen(rng)
        self.cmds = []
        if self.listener == "starttls" and rng.random() < 0.5:
            self.cmds.append(gen.starttls_cmd(gen.tag()))
        if compress and rng.random() < 0.15:    # before login: NO/BAD, stays plain
            self.cmds.append(gen.compress_cmd(gen.tag(fresh=True)))
        if rng.random() < (0.9 if compress else 0.6):  # log in first: deeper sessions
            t = gen.tag()
            self.cmds.append(Cmd("LOGIN", t, build(t, [b" LOGIN ", gen.astring(b"demo"), b" ",
                                                        gen.astring(b"pw")])))
        count = rng.choice([1, 2, 3, 5, 8, 12, 16])
        self.cmds += [gen.command() for _ in range(count)]
        zat = []                        # indexes of the COMPRESS commands inserted here
        if compress:
            first = len(self.cmds) - count
            for _ in range(1 if rng.random() < 0.8 else 2):     # sometimes twice
                i = rng.randrange(first, len(self.cmds) + 1)
                if rng.random() < 0.4:  # right after login (or the start)
                    i = first
                self.cmds.insert(i, gen.compress_cmd(gen.tag(fresh=True)))
                zat = [j + (j >= i) for j in zat] + [i]
                first = i + 1
        if not self.reads:
            for c in self.cmds:
                c.rude, c.wait = True, False
            if rng.random() < 0.4:      # a flood of empty lines
                self.cmds.append(Cmd("FLOOD", b"", [("none", b"\n" * rng.randrange(1000, 200000))],
                                     rude=True, wait=False))
        for c in self.cmds:
            if rng.random() < 0.08:
                c.bytewise = True
            if rng.random() < 0.35:
                c.wait = False          # pipelined: the next command follows at once
        # COMPRESS=DEFLATE: how the client's deflate stream is written.
        self.zparams = None             # compressobj (level, wbits, memLevel, strategy)
        self.zgarbage = None            # (commands after COMPRESS, kind): break the stream
        if compress:
            self.zparams = (rng.choice([0, 1, 6, 9]), rng.choice([9, 12, 15, 15]),
                            rng.choice([1, 8, 9]),
                            rng.choice([zlib.Z_DEFAULT_STRATEGY, zlib.Z_DEFAULT_STRATEGY,
                                        zlib.Z_FILTERED, zlib.Z_HUFFMAN_ONLY, zlib.Z_RLE,
                                        zlib.Z_FIXED]))
            # sync flush per command, per several commands, random kinds, cuts
            policy = rng.choice(["command", "several", "random", "cuts"])
            for c in self.cmds:
                if policy == "command":
                    c.zflush = zlib.Z_SYNC_FLUSH
                elif policy == "several":
                    c.zflush = zlib.Z_SYNC_FLUSH if rng.random() < 0.3 else None
                else:
                    c.zflush = rng.choice(ZFLUSHES)
                if policy == "cuts" or rng.random() < 0.1:  # mid-command / mid-literal
                    i = rng.randrange(len(c.chunks))
                    c.zcut = (i, rng.randrange(len(c.chunks[i][1]) + 1))
                if rng.random() < 0.12:
                    c.bytewise = True
            for c in self.cmds:
                if c.label == "LOGIN" and self.reads and rng.random() < 0.8:
                    c.wait = True       # mostly logged in when COMPRESS comes
            for i in zat:
                c = self.cmds[i]
                if i > 0 and rng.random() < 0.3:
                    self.cmds[i - 1].wait = False   # pipelined right behind a command
                c.wait = True
                if rng.random() < 0.25:     # deflate right behind it, before the OK
                    c.zspec = gen.valid() if rng.random() < 0.5 else None
                    if c.zspec is None or c.zspec.special or len(c.zspec.chunks) != 1:
                        t = gen.tag()
                        c.zspec = Cmd("NOOP", t, build(t, [b" NOOP"]))
            if self.reads and rng.random() < 0.25:
                self.zgarbage = (rng.randrange(4), rng.choice(
                    ["reserved", "stored", "final", "zlib", "plain", "random"]))
        if self.reads:
            self.end = rng.choices(["graceful", "close", "reset", "mid"], [55, 15, 15, 15])[0]
        else:
            self.end = rng.choice(["close", "reset"])
        self.mid = gen.valid().data()[:rng.randrange(1, 30)] if self.end == "mid" else b""
        self.mid_how = rng.choice(["close", "reset"])
        # Tags the backend must never frame as a command (see Fuzzer.session).
        self.reject_tags = {fuzz_backend.head_words(c.chunks[0][1].split(b"\n")[0] + b"\n")[0]
                            for c in self.cmds if c.reject}
        # LITERAL+ data is never a command -- unless an AUTHENTICATE before it
        # made imapgate read lines as SASL responses (the backend decides how many).
        self.plus_tags = set()
        for c in self.cmds:
            if c.label == "AUTHENTICATE":
                break
            self.plus_tags.update(t.decode() for t in c.plus_tags)

    def summary(self):
        """One line: listener, modes, command labels."""
        return "%s reads=%s end=%s%s cmds=%s" % (
            self.listener, "yes" if self.reads else "no", self.end,
            " garbage=%d:%s" % self.zgarbage if self.zgarbage else "",
            " ".join(c.label + ("!" if c.rude else "") + ("~" if c.bytewise else "")
                     + ("+" + c.zspec.label if c.zspec else "") for c in self.cmds))


# =================================================================== client

class Gone(Exception):
    """The client connection is over (closed, reset, stalled, out of time)."""


class Responses:
    """Server responses parsed from a byte stream, honouring literals (so
    literal data never looks like a tagged reply)."""

    def __init__(self):
        self.items = []             # complete responses: (text, [literals])
        self.switch_at = None       # a response after which the stream is deflate
        self.switched = False       # switch_at was seen
        self.restart()

    def restart(self):
        """Forget a partial response (the stream changes, e.g. to TLS)."""
        self.rx = bytearray()
        self.text, self.lits, self.need = b"", [], None

    def partial(self):
        """Bytes received that do not yet form a complete response."""
        return self.text + b"".join(self.lits) + bytes(self.rx)

    def feed(self, data):
        """Add received bytes; complete responses are appended to items.
        Returns the bytes after the response switch_at (they are deflate;
        switch_at is reset), else b""."""
        self.rx += data
        pos = 0
        while True:
            if self.need is not None:
                if len(self.rx) - pos < self.need:
                    break
                self.lits.append(bytes(self.rx[pos:pos + self.need]))
                pos += self.need
                self.need = None
                continue
            i = self.rx.find(b"\n", pos)
            if i < 0:
                break
            line = bytes(self.rx[pos:i + 1])
            pos = i + 1
            self.text += line
            m = LIT_RX.search(line)
            if m and int(m.group(1)) <= RESPONSE_LITERAL_MAX:
                self.need = int(m.group(1))
                continue
            self.items.append((self.text, self.lits))
            self.text, self.lits = b"", []
            if self.switch_at is not None and self.items[-1][0] == self.switch_at:
                self.switch_at = None
                self.switched = True
                rest = bytes(self.rx[pos:])
                self.rx = bytearray()
                return rest
        del self.rx[:pos]
        return b""

    def tagged_oks(self):
        """Counter of the tags of tagged OK responses (latin-1 strings)."""
        out = collections.Counter()
        for text, _ in self.items:
            w = text.split(b" ", 2)
            if len(w) >= 2 and w[0] not in (b"*", b"") and not w[0].startswith(b"+") \
                    and w[1].rstrip(b"\r\n").upper() == b"OK":
                out[w[0].decode("latin-1")] += 1
        return out


class Client:
    """A non-blocking client socket with a response parser that honours
    literals (so literal data never looks like a tagged reply)."""

    def __init__(self, port, deadline, reads):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=3.0)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.deadline = deadline
        self.reads = reads
        self.tls = False
        self.resp = Responses()
        self.items = self.resp.items
        self.seen = bytearray()     # all input (up to KEEP_RX), for the checks
        self.gone = None            # why the connection ended, once it has
        self.events = []            # ("C"|"S", bytes) for failure reports
        self.violations = []        # client-side check failures
        self.tls_failed = None      # why the handshake after a STARTTLS OK failed
        self.starttls_refused = set()   # id() of STARTTLS Cmds seen answered other than OK
        # COMPRESS=DEFLATE (raw deflate both ways once imapgate said OK)
        self.zparams = None         # compressobj parameters (Plan.zparams)
        self.zin = None             # inflates imapgate's output
        self.zout = None            # deflates ours
        self.zmirror = None         # inflates what we deflated (imapgate's view of it)
        self.zdirty = False         # deflate data not flushed yet
        self.zoks = 0               # `TAG OK DEFLATE active` seen (the switch)
        self.zunsure = False        # imapgate's view of the stream unknown: send no more
        self.zblind = False         # a non-reading client sent COMPRESS (either may be)
        self.zanswers = []          # (Cmd, status or None, sent before any login)
        self.zgarbage = None        # (kind, smuggled tags) once a broken stream was sent

    # -- input

    def _recv_some(self):
        """Read what is available now; sets gone at EOF or error."""
        while self.gone is None:
            try:
                data = self.sock.recv(65536)
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return
            except ssl.SSLError as e:
                self.gone = "tls-error %s" % e.reason
                return
            except OSError:
                self.gone = "reset"
                return
            if not data:
                self.gone = "eof"
                return
            while data:
                if self.zin is not None:
                    try:
                        data = self.zin.decompress(data)
                    except zlib.error as e:
                        self.violations.append("imapgate's deflate stream is broken: %s" % e)
                        self.gone = "inflate-error"
                        return
                    if self.zin.eof:
                        self.violations.append("imapgate ended its deflate stream")
                        self.gone = "inflate-eof"
                        return
                self.events.append(("S", data[:300]))
                if len(self.seen) < KEEP_RX:
                    self.seen += data
                data = self.resp.feed(data)
                if self.resp.switched:      # imapgate's OK to COMPRESS: deflate from here
                    self.resp.switched = False
                    self.zoks += 1
                    self.zin = zlib.decompressobj(-15)
                    self.events.append(("S", b"<deflate from here>"))

    def pump(self, timeout):
        """Wait up to timeout for input and read it."""
        if self.gone is not None or not self.reads:
            time.sleep(min(timeout, 0.01))
            return
        if isinstance(self.sock, ssl.SSLSocket) and self.sock.pending():
            self._recv_some()
            return
        r, _, _ = select.select([self.sock], [], [], max(0.0, timeout))
        if r:
            self._recv_some()

    def left(self):
        """Seconds left before the session's deadline."""
        return self.deadline - time.monotonic()

    # -- output

    def send(self, data, bytewise=False, flush=zlib.Z_SYNC_FLUSH):
        """Send data, deflated once COMPRESS is on (then flushed with flush,
        None: not flushed); raises Gone like send_raw."""
        if self.zout is None:
            self.send_raw(data, bytewise)
            return
        self.events.append(("C", b"<deflate> " + bytes(data[:290])))
        wire = self.zout.compress(data)
        self.zdirty = True
        if flush is not None:
            wire += self.zout.flush(flush)
            self.zdirty = False
        self.send_raw(wire, bytewise, log=False)

    def zflush(self, how=zlib.Z_SYNC_FLUSH):
        """Flush our deflate stream so imapgate can inflate all we sent."""
        if self.zout is not None and self.zdirty:
            self.zdirty = False
            self.send_raw(self.zout.flush(how), log=False)

    def zstart(self):
        """Deflate what we send from now on (raw deflate, Plan.zparams)."""
        level, wbits, mem, strategy = self.zparams
        self.zout = zlib.compressobj(level, zlib.DEFLATED, -wbits, mem, strategy)
        self.zmirror = zlib.decompressobj(-15)
        self.zdirty = False
        self.events.append(("C", b"<deflate from here>"))

    def send_raw(self, data, bytewise=False, log=True, plain=0):
        """Send data as it is (reading meanwhile unless the client never reads);
        raises Gone if the connection ends, stalls or time runs out.  The
        bytes from plain on are deflate if COMPRESS is on."""
        if self.zmirror is not None and len(data) > plain:
            self.zmirror.decompress(data[plain:])   # imapgate's inflater, as we know it
        view = memoryview(data)
        off, slow = 0, 120 if bytewise else 0
        stall_end = time.monotonic() + STALL
        if log:
            self.events.append(("C", bytes(data[:300])))
        while off < len(data):
            if self.gone is not None:
                raise Gone(self.gone)
            if self.left() <= 0:
                raise Gone("session time limit")
            rl = [self.sock] if self.reads else []
            r, w, _ = select.select(rl, [self.sock], [], 0.1)
            if r:
                self._recv_some()
            if not w:
                if time.monotonic() > stall_end:
                    raise Gone("stalled")
                continue
            step = 1 if off < slow else 65536
            try:
                n = self.sock.send(view[off:off + step])
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                n = 0
            except OSError:
                self.gone = "reset"
                raise Gone("reset")
            off += n
            if n:
                stall_end = time.monotonic() + STALL
            if step == 1:
                time.sleep(0.002)
            elif time.monotonic() > stall_end:
                raise Gone("stalled")

    def wait_for(self, tag, since, want_cont, timeout, starttls=False):
        """Wait for a "+" (if want_cont) or the tagged reply of tag among the
        responses from index since on: ("cont"|"tagged"|"timeout"|"gone", index).
        With starttls, only imapgate's own OK or a tagged non-OK count (the
        tag may be the same as an earlier command's)."""
        self.zflush()
        end = time.monotonic() + min(timeout, max(0.0, self.left()))
        prefix = tag + b" "
        i = since
        while True:
            while i < len(self.items):
                text = self.items[i][0]
                if want_cont and text.startswith(b"+"):
                    return "cont", i + 1
                if tag and text.startswith(prefix) and not (
                        starttls and text.startswith(prefix + b"OK") and text != tag + STARTTLS_OK):
                    return "tagged", i + 1
                i += 1
            if self.gone is not None:
                return "gone", i
            left = end - time.monotonic()
            if left <= 0 or not self.reads:
                return "timeout", i
            self.pump(min(left, 0.05))

    # -- STARTTLS

    def upgrade(self, cmd, index):
        """After `TAG OK` to STARTTLS: check nothing followed it in
        plaintext, then do the TLS handshake."""
        if self.items[index - 1][0] != cmd.tag + STARTTLS_OK:
            return
        if index < len(self.items) or self.resp.partial():
            self.violations.append("plaintext bytes after the STARTTLS OK: %r"
                                   % (b"".join(t for t, _ in self.items[index:])
                                      + self.resp.partial())[:200])
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        try:
            self.sock.setblocking(True)
            self.sock.settimeout(min(3.0, max(0.5, self.left())))
            self.sock = ctx.wrap_socket(self.sock, server_hostname="localhost")
            self.sock.setblocking(False)
            self.tls = True
            self.resp.restart()
            self.events.append(("C", b"<TLS handshake done>"))
        except (OSError, ssl.SSLError) as e:
            self.gone = "tls-failed"
            self.tls_failed = "%s%s" % (e, " (a line was pipelined behind STARTTLS)"
                                         if cmd.inject else "")
            raise Gone("tls-failed")

    # -- COMPRESS

    def compress(self, cmd, logged_in):
        """Send COMPRESS (sometimes with a command deflated right behind it)
        and wait for its answer; switch on OK.  Sets zunsure when imapgate's
        view of the stream is unknown (no answer, or deflate sent behind a
        COMPRESS that was refused): the client then sends nothing more."""
        since = len(self.items)
        line = cmd.chunks[0][1]
        was = self.zout is not None
        spec = cmd.zspec if not was else None
        if not self.reads:                  # it will never know: switch or not, blindly
            self.zblind = True
            self.send(line, cmd.bytewise, cmd.zflush)
            if spec is not None:
                self.zstart()
                self.send(spec.data(), cmd.bytewise, cmd.zflush)
            return
        if self.zin is None:
            self.resp.switch_at = cmd.tag + COMPRESS_OK
        if spec is not None:                # RFC 4978 lets it start right after the CRLF
            self.zstart()
            self.events.append(("C", b"<deflate> " + spec.data()[:290]))
            wire = self.zout.compress(spec.data()) + self.zout.flush(zlib.Z_SYNC_FLUSH)
            self.send_raw(line + wire, cmd.bytewise, plain=len(line))
        else:
            self.send(line, cmd.bytewise, cmd.zflush)
        how, idx = self.wait_for(cmd.tag, since, False, REPLY_WAIT * 2)
        status = None
        if how == "tagged":
            text = self.items[idx - 1][0]
            status = text.split(b" ", 2)[1].rstrip(b"\r\n").upper().decode("latin-1")
            if text == cmd.tag + COMPRESS_OK and not was:
                if self.zout is None:
                    self.zstart()
            elif not was:
                self.resp.switch_at = None
                if spec is not None:
                    self.zunsure = True     # our deflate went to a plain parser
        elif not was:
            self.zunsure = True
        self.zanswers.append((cmd, status, not logged_in))

    def break_stream(self, kind, rng):
        """Send bytes that are not a valid continuation of our deflate
        stream, then plain commands that must never reach the backend."""
        self.send_raw(self.zout.flush(zlib.Z_SYNC_FLUSH), log=False)   # byte-aligned
        tags = [b"zsmug%d" % i for i in range(rng.randrange(1, 3))]
        smug = b"".join(t + rng.choice([b" NOOP\r\n", b" LOGOUT\r\n", b" DELETE INBOX\r\n"])
                        for t in tags)
        if kind == "reserved":              # block type 3
            bad = bytes([rng.choice([6, 7])]) + rng.randbytes(rng.randrange(20)) + smug
        elif kind == "stored":              # NLEN is not the complement of LEN
            bad = b"\x00" + struct.pack("<HH", len(smug), len(smug)) + smug
        elif kind == "final":               # a final block ends the stream: an error too
            z = zlib.compressobj(6, zlib.DEFLATED, -15)
            bad = self.zout.flush(zlib.Z_FINISH) + z.compress(smug) + z.flush(zlib.Z_SYNC_FLUSH)
        elif kind == "zlib":                # a zlib header where raw deflate is due
            bad = zlib.compress(smug, 6)
        elif kind == "plain":
            bad = smug
        else:
            bad = rng.randbytes(rng.randrange(1, 64)) + smug
        # The mirror of imapgate's inflater must fail (or end) on these
        # bytes without inflating a byte; if not, a reserved block type first.
        m, out, failed = self.zmirror.copy(), b"", False
        for i in range(len(bad)):
            try:
                out += m.decompress(bad[i:i + 1])
            except zlib.error:
                failed = True
                break
            if m.eof:
                failed = True
                break
        if out or not failed:
            bad = b"\x06" + bad
        self.zmirror = None
        self.zgarbage = (kind, [t.decode() for t in tags])
        self.events.append(("C", b"<broken deflate: %s>" % kind.encode()))
        self.send_raw(bad, log=False)

    # -- ending

    def finish(self, how, mid=b"", mid_how="close"):
        """End the session: graceful (half-close, read to EOF), close,
        reset, or mid (a partial command, then close or reset); after a
        broken deflate stream: read to EOF.  Returns True if the client saw
        imapgate close after a half-close."""
        try:
            if self.zgarbage is not None:
                end = time.monotonic() + GRACEFUL_WAIT
                while self.gone is None and time.monotonic() < end:
                    self.pump(0.1)
                return False
            if how == "mid" and self.zunsure:
                how = mid_how
            if how == "mid" and self.gone is None:
                try:
                    self.send(mid)
                except Gone:
                    pass
                how = mid_how
            if how == "graceful" and self.gone is None and not self.tls:
                try:
                    self.zflush()
                    self.sock.shutdown(socket.SHUT_WR)
                except (OSError, Gone):
                    return False
                end = time.monotonic() + GRACEFUL_WAIT
                while self.gone is None and time.monotonic() < end:
                    self.pump(0.1)
                return self.gone == "eof"
            if how == "graceful" and self.tls:      # TLS: read until quiet, then close
                quiet_until = time.monotonic() + 0.3
                end = time.monotonic() + GRACEFUL_WAIT
                while self.gone is None and time.monotonic() < min(quiet_until, end):
                    before = len(self.items)
                    self.pump(0.05)
                    if len(self.items) != before:
                        quiet_until = time.monotonic() + 0.3
            if how == "reset":
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False
        finally:
            try:
                self.sock.close()
            except OSError:
                pass


def run_client(plan, port, backend):
    """Run a plan's client; returns (client, graceful_eof)."""
    c = Client(port, time.monotonic() + SESSION_LIMIT, plan.reads)
    c.zparams = plan.zparams
    backend.register(c.port, plan.backend_seed)
    graceful = False
    logged_in = False           # a LOGIN or AUTHENTICATE was sent
    zsent = 0                   # commands sent deflated after imapgate's OK to COMPRESS
    zrng = random.Random(plan.backend_seed + ":garbage")
    try:
        for cmd in plan.cmds:
            since = len(c.items)
            if cmd.special == "compress":
                c.compress(cmd, logged_in)
                if c.zunsure or c.gone is not None:
                    break
                if c.zoks == 1 and plan.zgarbage and zsent >= plan.zgarbage[0]:
                    c.break_stream(plan.zgarbage[1], zrng)
                    break
                continue
            for i, (gate, chunk) in enumerate(cmd.chunks):
                if gate == "cont" and not cmd.rude:
                    how, since = c.wait_for(cmd.tag, since, True, REPLY_WAIT)
                    if how in ("tagged", "gone"):
                        break           # refused (or over): the rest is not sent
                elif gate == "pause":
                    c.zflush()
                    end = time.monotonic() + cmd.pause
                    while time.monotonic() < end and c.gone is None:
                        c.pump(end - time.monotonic())
                if c.zout is not None and cmd.zcut and cmd.zcut[0] == i:
                    # a sync flush mid-command (mid-literal), a moment, the rest
                    c.send(chunk[:cmd.zcut[1]], cmd.bytewise, zlib.Z_SYNC_FLUSH)
                    time.sleep(0.01)
                    chunk = chunk[cmd.zcut[1]:]
                if chunk:
                    c.send(chunk, cmd.bytewise, cmd.zflush)
            if cmd.label in ("LOGIN", "AUTHENTICATE"):
                logged_in = True
            if cmd.special == "starttls" and plan.listener == "starttls" and c.reads:
                how, idx = c.wait_for(cmd.tag, since, False, REPLY_WAIT * 2, starttls=True)
                if how == "tagged":
                    if c.items[idx - 1][0] != cmd.tag + STARTTLS_OK:
                        c.starttls_refused.add(id(cmd))
                    c.upgrade(cmd, idx)
            elif cmd.wait and c.reads:
                c.wait_for(cmd.tag, since, False, REPLY_WAIT)
            if c.gone is not None:
                break
            if c.zoks and c.zout is not None:
                zsent += 1
                if c.zoks == 1 and plan.zgarbage and zsent >= plan.zgarbage[0]:
                    c.break_stream(plan.zgarbage[1], zrng)
                    break
    except Gone:
        pass
    finally:
        graceful = c.finish(plan.end, plan.mid, plan.mid_how)
    return c, graceful


# ================================================================ the log

def unescape(value):
    """A log value: surrounding quotes removed, \\" \\\\ \\xHH decoded (latin-1)."""
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        value = value[1:-1]
    out, i = [], 0
    while i < len(value):
        ch = value[i]
        if ch == "\\" and i + 1 < len(value):
            nxt = value[i + 1]
            if nxt == "x" and re.match(r"[0-9a-fA-F]{2}$", value[i + 2:i + 4]):
                out.append(chr(int(value[i + 2:i + 4], 16)))
                i += 4
                continue
            out.append(nxt)
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


class LogIndex:
    """imapgate's log read incrementally: lines per session, client port ->
    session ids, sanitizer reports."""

    def __init__(self, path):
        self.path = path
        self.off = 0
        self.partial = b""
        self.by_sid = collections.defaultdict(list)
        self.by_port = collections.defaultdict(list)
        self.ended = {}
        self.sanitizer = []         # sanitizer report lines (with a few stack lines)
        self.san_more = 0           # stack lines still to keep
        self.lines = 0              # complete lines read so far

    def update(self):
        """Read what was appended since the last call."""
        try:
            with open(self.path, "rb") as f:
                f.seek(self.off)
                data = f.read()
        except OSError:
            return
        self.off += len(data)
        data = self.partial + data
        lines = data.split(b"\n")
        self.partial = lines.pop()
        for raw in lines:
            self.lines += 1
            line = raw.decode("utf-8", "replace")
            if SANITIZER_RX.search(line):
                self.sanitizer.append(line)
                self.san_more = 12
                continue
            if self.san_more and line.strip():
                self.san_more -= 1
                if len(self.sanitizer) < 60:
                    self.sanitizer.append(line)
            m = re.search(r"\bsession=(\S+) msg=(\S+)", line)
            if not m:
                continue
            sid, msg = m.groups()
            self.by_sid[sid].append(line)
            if msg == "accepted":
                p = re.search(r"\bclient=127\.0\.0\.1:(\d+)", line)
                if p:
                    self.by_port[int(p.group(1))].append((self.lines, sid))
            elif msg == "session-end":
                r = re.search(r"\breason=(\S+)", line)
                self.ended[sid] = r.group(1) if r else "?"

    def sid_for(self, port, mark, timeout):
        """The session id accepted from client port in a log line after line mark."""
        end = time.monotonic() + timeout
        while True:
            self.update()
            fresh = [s for n, s in self.by_port.get(port, []) if n > mark]
            if fresh:
                return fresh[-1]
            if time.monotonic() >= end:
                return None
            time.sleep(0.02)

    def wait_end(self, sid, timeout):
        """The session-end reason of sid, waiting up to timeout; None if none."""
        end = time.monotonic() + timeout
        while True:
            self.update()
            if sid in self.ended:
                return self.ended[sid]
            if time.monotonic() >= end:
                return None
            time.sleep(0.02)

    def trace(self, sid):
        """(entries, legacy) of sid's c2s trace; entries are (kind, tag,
        NAME, bytes) in the SPEC format, or (kind, tag, NAME, None) parsed
        from the old line="..." format (legacy=True)."""
        out, legacy = [], False
        for line in self.by_sid.get(sid, []):
            if " msg=trace " not in line or " trace=c2s" not in line:
                continue
            f = dict(FIELD_RX.findall(line.split(" msg=trace ", 1)[1]))
            if "kind" in f:
                kind = f["kind"]
                tag = unescape(f.get("tag", '""')) if kind == "command" else ""
                name = f.get("name", "").upper() if kind == "command" else ""
                if tag != fuzz_backend.ID_TAG:      # imapgate's own ID is no client command
                    out.append((kind, tag, name,
                                int(f["bytes"]) if f.get("bytes", "").isdigit() else None))
                continue
            legacy = True
            if "line" in f:
                text = unescape(f["line"])
                if text == "<sasl redacted>":
                    out.append(("sasl*", "", "", None))
                elif text.upper() == "DONE":
                    out.append(("done", "", "", None))
                else:
                    w = text.split(" ")
                    out.append(("command", w[0], w[1].upper() if len(w) > 1 else "", None))
            else:
                out.append(("command", unescape(f.get("tag", '""')), f.get("name", "").upper(),
                            None))
        return out, legacy


# ================================================================= checking

def show(e):
    """One entry for a diff line."""
    kind, tag, name, nbytes = e[:4]
    if kind == "command":
        if len(tag) > 40:
            tag = tag[:20] + "...(%d bytes)" % len(tag)
        return "command tag=%r name=%s bytes=%s" % (tag, name[:40], nbytes)
    return "%s bytes=%s" % (kind, nbytes)


def diff(backend, trace, at):
    """Compact side-by-side listing around index at."""
    lo, hi = max(0, at - 3), min(max(len(backend), len(trace)), at + 4)
    rows = ["      %-60s | %s" % ("backend framed", "imapgate trace (c2s)")]
    for i in range(lo, hi):
        b = show(backend[i]) if i < len(backend) else "-"
        t = show(trace[i]) if i < len(trace) else "-"
        rows.append("  %s%3d %-60s | %s" % (">" if i == at else " ", i, b[:60], t))
    if hi < max(len(backend), len(trace)):
        rows.append("      ... (%d backend, %d trace entries)" % (len(backend), len(trace)))
    return "\n".join(rows)


def compare(backend, trace, legacy, exact):
    """None if the backend's framing agrees with the trace, else a message."""
    if legacy:
        # Old trace format: commands imapgate answered itself are traced too and
        # bytes are not comparable, so every framed command must appear in the
        # trace, in order (kind, tag, name).
        norm = [("sasl*" if e[0] in ("sasl", "sasl-cancel") else e[0], e[1], e[2]) for e in backend]
        j = 0
        for i, e in enumerate(norm):
            if "refused" in backend[i][5]:
                continue        # the old core traces a command only once it is complete
            while j < len(trace) and trace[j][:3] != e:
                j += 1
            if j == len(trace):
                return ("backend framed %s, which is not in imapgate's trace (old trace "
                        "format: kind/tag/name only)\n%s"
                        % (show(backend[i]), diff(backend, trace, i)))
            j += 1
        return None
    want = [e[:4] for e in backend]
    for i in range(min(len(want), len(trace))):
        if want[i] != trace[i]:
            return "entry %d differs\n%s" % (i, diff(want, trace, i))
    if len(want) > len(trace):
        return ("backend framed %d more entr%s than imapgate traced\n%s"
                % (len(want) - len(trace), "y" if len(want) - len(trace) == 1 else "ies",
                   diff(want, trace, len(trace))))
    if len(trace) > len(want) and exact:
        return ("imapgate traced %d entr%s the backend never framed (both legs ended cleanly)\n%s"
                % (len(trace) - len(want), "y" if len(trace) - len(want) == 1 else "ies",
                   diff(want, trace, len(want))))
    return None


class Fuzzer:
    """imapgate + backend + the session loop."""

    def __init__(self, binary, seed):
        self.binary = binary
        self.seed = seed
        self.tmp = tempfile.mkdtemp(prefix="imapgate-fuzz-")
        self.backend = fuzz_backend.FuzzBackend()
        self.proc = None
        self.log = None
        self.san_reported = 0       # sanitizer lines already reported
        self.failures = []
        self.stats = collections.Counter()
        crng = random.Random("%d:config" % seed)
        self.client_state = crng.choice(["pass", "pass", "pass", "bye"])

    def start(self):
        """Write the config, start the backend and imapgate."""
        cert, key = harness.make_cert(self.tmp)
        bport = self.backend.start()
        self.plain_port, self.tls_port = harness.free_port(), harness.free_port()
        self.z_port = harness.free_port()
        conf = os.path.join(self.tmp, "imapgate.yaml")
        with open(conf, "w") as f:
            f.write("listen:\n"
                    "  - address: 127.0.0.1:%d\n    tls: none\n"
                    "  - address: 127.0.0.1:%d\n    tls: starttls\n    require_tls: false\n"
                    "  - address: 127.0.0.1:%d\n    tls: none\n    compress: true\n"
                    "tls:\n  certificates:\n    - cert: %s\n      key: %s\n"
                    "backend:\n  client_ip: id\n  connect_tries: 1\n"
                    "  health: {interval: 1h, timeout: 2s, rise: 1, fall: 100}\n"
                    "  servers:\n    - address: 127.0.0.1:%d\n"
                    "log:\n  level: debug\n"
                    "limits:\n  max_line: %d\n  buffer: 64KiB\n  max_connections_per_ip: 0\n"
                    "timeouts:\n  preauth: 5m\n  backend_response: 2s\n  drain: 0s\n"
                    "guard:\n  client_state: %s\n"
                    % (self.plain_port, self.tls_port, self.z_port, cert, key, bport, MAX_LINE,
                       self.client_state))
        r = subprocess.run([self.binary, "-t", "-c", conf], capture_output=True,
                           timeout=harness.START_TIMEOUT)
        if r.returncode != 0:
            raise harness.Fail("imapgate -t rejected the config:\n%s%s"
                               % (r.stdout.decode(), r.stderr.decode()))
        self.logfile = os.path.join(self.tmp, "imapgate.log")
        self.proc = harness.Proc("imapgate", [self.binary, "-c", conf], self.logfile)
        harness.wait_port(self.plain_port, self.proc)
        harness.wait_port(self.tls_port, self.proc)
        harness.wait_port(self.z_port, self.proc)
        self.log = LogIndex(self.logfile)

    def alive(self):
        """None if imapgate runs and greets a new connection, else why not."""
        if not self.proc.alive():
            return "imapgate exited (status %s)" % self.proc.p.returncode
        try:
            with socket.create_connection(("127.0.0.1", self.plain_port), timeout=PROBE_WAIT) as s:
                self.backend.register(s.getsockname()[1], None)
                s.settimeout(PROBE_WAIT)
                data = b""
                while b"\n" not in data:
                    chunk = s.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                if not data.startswith(b"* OK"):
                    return "a new connection got %r instead of a greeting" % data[:200]
                s.sendall(b"p LOGOUT\r\n")
        except OSError as e:
            return "a new connection failed: %s" % e
        return None

    def session(self, n):
        """Run session n and check it; returns a failure message or None."""
        plan = Plan(self.seed, n)
        port = {"starttls": self.tls_port, "compress": self.z_port}.get(plan.listener,
                                                                         self.plain_port)
        t0 = time.monotonic()
        self.log.update()
        mark = self.log.lines
        try:
            client, graceful = run_client(plan, port, self.backend)
        except OSError as e:
            return self.report(n, None, plan, None, "client could not connect: %s" % e)
        sid = self.log.sid_for(client.port, mark, 3.0)
        if sid is None:
            return self.report(n, None, plan, client, "no msg=accepted for client port %d"
                               % client.port)
        reason = self.log.wait_end(sid, END_WAIT)
        if reason is None:
            self.stats["lingering"] += 1
        recs = self.backend.records_for(sid)
        end = time.monotonic() + BACKEND_WAIT
        for r in recs:
            r.done.wait(max(0.0, end - time.monotonic()))
        self.log.update()
        problems = []
        if len(self.log.sanitizer) > self.san_reported:
            problems.append("sanitizer report in imapgate's log:\n  " + "\n  ".join(
                x[:160] for x in self.log.sanitizer[self.san_reported:self.san_reported + 16]))
            self.san_reported = len(self.log.sanitizer)
        why = self.alive()
        if why:
            problems.append(why)
        entries = [e for r in recs for e in r.entries]
        trace, legacy = self.log.trace(sid)
        if legacy:
            self.stats["legacy-trace"] += 1
        exact = (graceful and reason == "client-eof" and len(recs) == 1 and recs[0].end == "eof"
                 and recs[0].closed_by_backend is None and not recs[0].hung)
        if not recs and trace:
            problems.append("imapgate traced commands but no backend connection named session %s"
                            % sid)
        else:
            msg = compare(entries, trace, legacy, exact)
            if msg:
                problems.append("c2s mismatch: " + msg)
        sent = collections.Counter()
        for r in recs:
            for tag, status in r.tagged:
                if status == "OK" and tag != fuzz_backend.ID_TAG:
                    sent[tag] += 1
        seen = client.resp.tagged_oks()
        own, injected = self.starttls_oks(plan, client)
        zown, zproblems = self.compress_checks(plan, client, entries, reason, recs)
        own.update(zown)
        fake = {t: k for t, k in seen.items() if k > sent[t] + own[t]}
        if fake:
            problems.append("tagged OK the backend did not send: %s" % ", ".join(
                "%r x%d (backend sent %d)" % (t, k, sent[t]) for t, k in sorted(fake.items())[:5]))
        if fuzz_backend.ID_LEAK_MARK in client.seen:
            problems.append("the backend's answer to imapgate's own ID reached the client")
        problems += self.forwarding_checks(plan, entries)
        framed_tags = {e[1] for e in entries if e[0] == "command"}
        leaked = [t for t in injected if t in framed_tags]
        if leaked:
            problems.append("lines pipelined behind an accepted STARTTLS reached the backend: %s"
                            % leaked)
        problems += zproblems
        problems += client.violations
        problems += ["fuzz backend error (a bug in the fuzzer): %s" % r.end
                     for r in recs if str(r.end).startswith("backend-error")]
        backend_ended = any(r.closed_by_backend or r.hung for r in recs)
        if client.tls_failed and not backend_ended and not str(reason).startswith("backend"):
            problems.append("STARTTLS answered OK but the TLS handshake failed: %s"
                            % client.tls_failed)
        self.stats["sessions"] += 1
        self.stats["exact"] += exact
        self.stats["starttls upgrades"] += client.tls
        self.stats["compress listener"] += plan.listener == "compress"
        self.stats["compress active"] += client.zoks > 0
        self.stats["compress broken by client"] += client.zgarbage is not None
        self.stats["compress unsure"] += client.zunsure
        if plan.listener == "compress":
            for _, status, _ in client.zanswers:
                self.stats["compress answer %s" % status] += 1
        for e in entries:
            self.stats["framed " + e.kind] += 1
        self.stats["reason " + str(reason)] += 1
        line = "#%d %s %.2fs sid=%s reason=%s framed=%d traced=%d%s %s" % (
            n, "FAIL" if problems else "ok", time.monotonic() - t0, sid, reason, len(entries),
            len(trace), " exact" if exact else "", plan.summary())
        say(line[:220])
        if env_flag("IMAPGATE_FUZZ_VERBOSE"):
            for d, b in client.events[:60]:
                say("      %s %r" % (d, b[:160]))
        if problems:
            return self.report(n, sid, plan, client, "\n".join(problems), recs)
        return None

    @staticmethod
    def starttls_oks(plan, client):
        """(imapgate's own STARTTLS OKs per tag, tags of the lines pipelined
        behind a STARTTLS that got one); only on the STARTTLS listener."""
        own, injected = collections.Counter(), []
        if plan.listener != "starttls":
            return own, injected
        sent = collections.Counter(c.tag for c in plan.cmds if c.special == "starttls")
        for text, _ in client.items:
            tag = text.split(b" ", 1)[0]
            if tag in sent and text == tag + STARTTLS_OK and own[tag.decode("latin-1")] < sent[tag]:
                own[tag.decode("latin-1")] += 1
        for c in plan.cmds:
            # (an OK to an earlier STARTTLS with the same tag does not count)
            if c.special == "starttls" and c.inject and own[c.tag.decode("latin-1")] \
                    and id(c) not in client.starttls_refused:
                injected.append(c.inject.decode("latin-1"))
        return own, injected

    @staticmethod
    def compress_checks(plan, client, entries, reason, recs):
        """(imapgate's own COMPRESS OK per tag, problems): COMPRESS never
        reaches the backend; at most one OK, never before a login was sent,
        only on the compress listener; a broken client stream ends the
        session with the compressed BYE, and nothing behind it is framed;
        a valid one never counts as broken."""
        own, out = collections.Counter(), []
        framed = [e for e in entries if e.kind == "command" and e.name == "COMPRESS"]
        if framed:
            out.append("COMPRESS reached the backend: %s" % show(framed[0]))
        tags = {c.tag for c in plan.cmds if c.special == "compress"}
        oks = []
        for text, _ in client.items:
            tag = text.split(b" ", 1)[0]
            if tag in tags and text == tag + COMPRESS_OK:
                oks.append(tag)
        if plan.listener == "compress" and oks:
            own[oks[0].decode("latin-1")] += 1      # the rest count as fabricated
            if len(oks) > 1:
                out.append("imapgate said OK to COMPRESS %d times" % len(oks))
        for cmd, status, prelogin in client.zanswers:
            if prelogin and status == "OK":
                out.append("COMPRESS before any login got OK (%r)" % cmd.tag)
        if client.zgarbage is not None:
            kind, smug = client.zgarbage
            leaked = [e.tag for e in entries if e.kind == "command" and e.tag in smug]
            if leaked:
                out.append("commands behind a broken deflate stream (%s) reached the "
                           "backend: %s" % (kind, leaked))
            ended = any(r.closed_by_backend or r.hung for r in recs)
            if reason == "client-compress-error":
                if COMPRESS_BYE not in (t for t, _ in client.items):
                    out.append("broken deflate stream (%s): no `* BYE Compression error` "
                               "before the close" % kind)
            elif not ended:
                out.append("broken deflate stream (%s) ended the session with reason=%s "
                           "(client-compress-error expected)" % (kind, reason))
        elif reason == "client-compress-error" and not client.zblind:
            out.append("imapgate found the client's valid deflate stream broken")
        return own, out

    def forwarding_checks(self, plan, entries):
        """SPEC rules about what imapgate never forwards, on the backend's entries."""
        out = []
        for e in entries:
            if e.kind == "command":
                bad = [f for f in e.flags if f != "refused"]
                if e.longest > MAX_LINE + 64:
                    bad.append("line of %d bytes > max_line" % e.longest)
                if bad:
                    out.append("imapgate forwarded a line it must answer itself (%s): %s"
                               % (", ".join(bad), show(e)[:120]))
                elif e.tag in plan.reject_tags:
                    out.append("imapgate forwarded a line it must answer itself: %s"
                               % show(e)[:120])
                if e.tag in plan.plus_tags:
                    out.append("LITERAL+ data reached the backend as a command: %s" % show(e)[:120])
            elif e.kind == "idle-other":
                out.append("imapgate forwarded a line other than DONE during IDLE (%d bytes)"
                           % e.nbytes)
            elif e.kind == "sasl" and e.nbytes > MAX_LINE + 2:
                out.append("imapgate forwarded a SASL line of %d bytes (> max_line)" % e.nbytes)
        return out[:6]

    def report(self, n, sid, plan, client, what, recs=()):
        """Print a failure with everything needed to replay it."""
        say("FAIL seed=%d session=#%d sid=%s\n%s" % (self.seed, n, sid, what))
        say("  plan: %s" % plan.summary())
        for c in plan.cmds[:20]:
            say("    %-12s %r" % (c.label, c.data()[:100]))
        if client is not None:
            say("  client port %d, ended: %s; last bytes:" % (client.port, client.gone))
            for d, b in client.events[-12:]:
                say("    %s %r" % (d, b[:120]))
        for r in recs:
            say("  backend conn #%d: end=%s closed_by_backend=%s hung=%s notes=%s"
                % (r.number, r.end, r.closed_by_backend, r.hung, r.notes[:6]))
        if env_flag("IMAPGATE_FUZZ_VERBOSE"):
            say("  every backend entry / trace entry:")
            entries = [e for r in recs for e in r.entries]
            trace = self.log.trace(sid)[0] if sid else []
            for i in range(max(len(entries), len(trace))):
                say("    %3d %-60s | %s" % (i, show(entries[i])[:60] if i < len(entries) else "-",
                                          show(trace[i]) if i < len(trace) else "-"))
        if sid:
            say("  imapgate log for %s (tail):" % sid)
            for line in self.log.by_sid.get(sid, [])[-25:]:
                say("    " + line.split(" level=", 1)[-1][:200])
        say("  replay: IMAPGATE_FUZZ_SEED=%d IMAPGATE_FUZZ_ONLY=%d python3 %s %s"
            % (self.seed, n, os.path.relpath(__file__), self.binary))
        self.failures.append((n, sid, what.split("\n")[0]))
        return what

    def stop(self):
        """Stop imapgate (its status is returned; a sanitizer report at exit
        is a failure) and the backend; remove the temp dir unless needed."""
        rc = None
        if self.proc is not None:
            rc = self.proc.stop()
        if self.log is not None:
            self.log.update()
            if len(self.log.sanitizer) > self.san_reported:
                self.failures.append((None, None, "sanitizer report at exit"))
                say("FAIL: sanitizer report at exit:\n  " + "\n  ".join(
                    x[:160] for x in self.log.sanitizer[self.san_reported:self.san_reported + 30]))
        self.backend.stop()
        if env_flag("IMAPGATE_TEST_KEEP") or self.failures:
            say("kept %s" % self.tmp)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return rc


def selftest():
    """Check the fuzzer's own parsers on hand-made input (AssertionError)."""
    r = Responses()
    for b in (b"* 1 FETCH (BODY[] {22}\r\na1 OK inside literal", b"\r\n)\r\n+ go\r\n",
              b"a2 OK done\r\n* 2 FETCH (BINARY[] ~{3}\r\nx\r\n)\r\nA3 ok\r\na4 NO x\r\n",
              b"a5 OK"):
        r.feed(b)
    assert [t[:6] for t, _ in r.items] == [b"* 1 FE", b"+ go\r\n", b"a2 OK ", b"* 2 FE",
                                           b"A3 ok\r", b"a4 NO "], r.items
    assert r.tagged_oks() == collections.Counter({"a2": 1, "A3": 1}) and r.partial() == b"a5 OK"
    assert unescape(r'"a\"b\\c\x01\x7f"') == 'a"b\\c\x01\x7f'
    path = os.path.join(tempfile.mkdtemp(prefix="imapgate-fuzz-selftest-"), "log")
    with open(path, "w") as f:
        f.write("\n".join("2026-01-01T00:00:00Z level=debug session=s1 msg=trace " + x for x in (
            r'trace=c2s kind=command tag="a\"b" name=noop bytes=9 literals=0 line="x"',
            'trace=c2s kind=command tag="imapgate-id" name=ID bytes=50 literals=0',
            'trace=c2s kind=sasl bytes=10', 'trace=c2s kind=sasl-cancel bytes=3 own=1',
            'trace=s2c line="a OK"', 'trace=c2s kind=done bytes=6')) + "\n"
                "2026-01-01T00:00:00Z level=debug session=s1 msg=accepted client=127.0.0.1:99 "
                "listen=x\n2026-01-01T00:00:00Z level=info session=s1 msg=session-end "
                "reason=client-eof\n")
    log = LogIndex(path)
    assert log.sid_for(99, 0, 0) == "s1" and log.wait_end("s1", 0) == "client-eof"
    shutil.rmtree(os.path.dirname(path))
    trace, legacy = log.trace("s1")
    want = [("command", 'a"b', "NOOP", 9), ("sasl", "", "", 10), ("sasl-cancel", "", "", 3),
            ("done", "", "", 6)]
    assert trace == want and not legacy, trace
    backend = [fuzz_backend.Entry(*(e + (0, (), 0))) for e in want]
    assert compare(backend, trace, False, True) is None
    assert compare(backend[:3], trace, False, False) is None        # a missing tail is tolerated
    assert "never framed" in compare(backend[:3], trace, False, True)
    extra = fuzz_backend.Entry("command", "s", "NOOP", 8, 0, (), 8)
    assert "more entr" in compare(backend + [extra], trace, False, False)
    assert "differs" in compare([extra._replace(tag='a"b', nbytes=10)], trace, False, False)
    legacy_trace = [("command", "a", "NOOP", None), ("command", "b", "STARTTLS", None)]
    assert compare([extra._replace(tag="a")], legacy_trace, True, True) is None
    assert compare([extra], legacy_trace, True, False)
    assert compare([extra._replace(flags=("refused",))], legacy_trace, True, False) is None


def main(argv):
    """Run the fuzzer; exit status 0 if every check held, 1 otherwise."""
    binary = harness.imapgate_binary(argv)
    if not binary or not os.access(binary, os.X_OK):
        say("FAIL: imapgate binary not given or not executable: %r" % binary)
        return 1
    fuzz_backend.selftest()
    selftest()
    seed = int(os.environ.get("IMAPGATE_FUZZ_SEED") or random.SystemRandom().randrange(1 << 32))
    seconds = float(os.environ.get("IMAPGATE_FUZZ_SECONDS") or DEFAULT_SECONDS)
    only = [int(x) for x in os.environ.get("IMAPGATE_FUZZ_ONLY", "").split(",") if x.strip()]
    keep_going = env_flag("IMAPGATE_FUZZ_KEEP_GOING")
    fz = Fuzzer(binary, seed)
    say("session fuzzer: seed=%d (IMAPGATE_FUZZ_SEED=%d to replay), %s, guard.client_state=%s"
        % (seed, seed, "sessions %s" % only if only else "%.0f s" % seconds, fz.client_state))
    t0 = time.monotonic()
    try:
        try:
            fz.start()
        except harness.Fail as e:
            say("FAIL: setup: %s" % e)
            fz.failures.append((None, None, "setup failed"))
            return 1
        say("imapgate pid %d: plain 127.0.0.1:%d, starttls 127.0.0.1:%d, compress "
            "127.0.0.1:%d; backend 127.0.0.1:%d; tmp %s"
            % (fz.proc.pid, fz.plain_port, fz.tls_port, fz.z_port, fz.backend.port, fz.tmp))
        numbers = iter(only) if only else iter(range(1 << 30))
        for n in numbers:
            if not only and time.monotonic() - t0 > seconds - SESSION_LIMIT:
                break
            if fz.session(n) and not keep_going:
                break
            if not fz.proc.alive():
                break
    finally:
        rc = fz.stop()
    if rc != 0 and not fz.failures:
        fz.failures.append((None, None, "imapgate exited with status %s on SIGTERM" % rc))
        say("FAIL: imapgate exited with status %s on SIGTERM; log tail:\n%s"
            % (rc, fz.proc.log_text()[-3000:]))
    say("stats: %s" % ", ".join("%s=%d" % kv for kv in sorted(fz.stats.items())))
    if fz.stats.get("legacy-trace"):
        say("note: imapgate wrote the old c2s trace format (no kind=); only kind/tag/name "
            "were compared")
    if fz.failures:
        say("FAILED (seed %d): %d failing session(s): %s" % (
            seed, len(fz.failures), "; ".join("#%s %s" % (n, w) for n, _, w in fz.failures[:10])))
        return 1
    say("all %d sessions held (seed %d, %.0f s)" % (fz.stats["sessions"], seed,
                                                     time.monotonic() - t0))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
