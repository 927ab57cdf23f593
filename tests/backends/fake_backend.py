#!/usr/bin/env python3
"""Scripted IMAP backend for imapgate tests (python3 stdlib only).

It plays a plain IMAP server on 127.0.0.1 whose answers follow a script, so
tests can make a backend do what no real server does on demand: greet twice,
answer with a tagged MAYBE, use unknown response codes, reset in the middle of
a literal, never greet, and so on.

Library use:
    from fake_backend import FakeBackend
    fb = FakeBackend("second_greeting")      # scenario name, dict or None
    port = fb.start()
    ...
    fb.stop()
    fb.received                              # every byte any client sent
    fb.connections[0]["proxy"]               # raw PROXY header, or None

Command line:
    fake_backend.py [PORT] [--scenario NAME | --script FILE.json]
                    [--proxy none|optional|require] [--lifetime SECONDS]
    PORT 0 (default) picks a free port; "READY <port>" is printed on stdout.
    --list prints the built-in scenarios.

Script format (a dict, JSON-compatible):
    {
      "greeting": "* OK hello\\r\\n"   or a list of actions,
      "steps": [ {"command": "LOGIN", "actions": [...]},          # one-shot,
                 {"command": "APPEND", "at": "literal",            # first
                  "actions": [...]} ],                             # match wins
      "commands": {"NOOP": [...]},     # every occurrence of a command
      "connections": [script, script]  # optional: per-connection scripts
    }
A command with no step or "commands" entry gets the built-in behaviour.
Command names match case-insensitively: "UID FETCH" first, then "UID".
A step with "at": "literal" runs when the client announces a synchronizing
literal for that command, instead of the "+" continuation; if its actions do
not end the connection, the literal is then read as usual.

Actions (each a dict; "{tag}" in text is replaced by the command's tag):
    {"send": "text"}             send text (latin-1), e.g. "{tag} OK done\\r\\n"
    {"send_hex": "0d0a"}         send raw bytes
    {"literal": N, "prefix": "* 1 FETCH (BODY[] ", "suffix": ")\\r\\n",
     "fill": "x"}                send prefix + "{N}\\r\\n" + N bytes + suffix
    {"sleep": seconds}           pause (bounded by the lifetime)
    {"close": true}              close the connection (FIN)
    {"reset": true}              abort with a TCP reset (SO_LINGER 0)
    {"cut_after": K, "how": "close"|"reset"}
                                 from now on send only K more bytes, then
                                 close or reset
    {"greet": true}              send the greeting again
    {"builtin": true}            do the built-in answer for this command
    {"hang": true}               never answer; keep the connection open
"""

import argparse
import json
import re
import select
import socket
import struct
import sys
import threading
import time

DEFAULT_LIFETIME = 120.0      # seconds a backend lives at most
IO_TIMEOUT = 30.0             # seconds one read may wait for the client
MAX_LINE = 64 * 1024          # longest command line accepted
MAX_LITERAL = 16 * 1024 * 1024
MAX_CONNECTIONS = 256         # connections served per backend lifetime
PROXY_WAIT = 2.0              # seconds to wait for a required PROXY header
PROXY_OPTIONAL_WAIT = 0.3     # ... and for an optional one (delays the greeting)
PROXY_V1_MAX = 107            # longest PROXY v1 line (HAProxy spec)
PROXY_V2_SIG = b"\r\n\r\n\x00\r\nQUIT\n"
PROXY_V2_MAX_BODY = 4096

GREETING = "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN IDLE UNSELECT] Fake IMAP server ready\r\n"
CAPABILITIES = "IMAP4rev1 AUTH=PLAIN IDLE UNSELECT"

MESSAGE = (b"From: sender@example.com\r\n"
           b"To: testuser@example.com\r\n"
           b"Subject: fake backend message\r\n"
           b"\r\n"
           b"Hello from the scripted backend.\r\n")
MESSAGE_COUNT = 3

LITERAL_RE = re.compile(rb"\{(\d+)(\+?)\}\r\n$")

# Built-in scenarios: name -> (description, script).
SCENARIOS = {
    "default": ("plain server: any LOGIN works, SELECT/FETCH/IDLE/APPEND/LOGOUT",
                {}),
    "second_greeting": ("after the tagged OK to LOGIN, greets again",
                        {"steps": [{"command": "LOGIN", "actions": [
                            {"builtin": True}, {"greet": True}]}]}),
    "tagged_maybe": ("NOOP is answered with a tagged MAYBE",
                     {"commands": {"NOOP": [
                         {"send": "{tag} MAYBE NOOP completed\r\n"}]}}),
    "x_foo_code": ("NOOP answers carry the unknown code [X-FOO]",
                   {"commands": {"NOOP": [
                       {"send": "* OK [X-FOO] untagged note\r\n"},
                       {"send": "{tag} OK [X-FOO] NOOP completed\r\n"}]}}),
    "bracket_later": ("NOOP gets a NO whose text has a bracket later on",
                      {"commands": {"NOOP": [
                          {"send": "{tag} NO text [with brackets]\r\n"}]}}),
    "auth_database_error": ("AUTHENTICATE is answered BAD Database error",
                            {"commands": {"AUTHENTICATE": [
                                {"send": "{tag} BAD Database error\r\n"}]}}),
    "reset_mid_fetch": ("FETCH: 300 bytes into a 1000-byte literal, TCP reset",
                        {"commands": {"FETCH": [
                            {"cut_after": 332, "how": "reset"},
                            {"literal": 1000, "prefix": "* 1 FETCH (UID 1 BODY[] ",
                             "suffix": ")\r\n"},
                            {"send": "{tag} OK FETCH completed\r\n"}]}}),
    "close_after_ok": ("LOGIN gets its tagged OK, then the backend closes",
                       {"steps": [{"command": "LOGIN", "actions": [
                           {"builtin": True}, {"close": True}]}]}),
    "never_greet": ("accepts and never sends a greeting",
                    {"greeting": [{"hang": True}]}),
    "slow_greet": ("greets after 3 seconds",
                   {"greeting": [{"sleep": 3.0}, {"send": GREETING}]}),
    "not_allowed_now": ("SELECT answered like a WildDuck that lost the session",
                        {"commands": {"SELECT": [
                            {"send": "{tag} BAD SELECT not allowed now\r\n"}]}}),
    "bye_on_noop": ("NOOP gets the backend's own BYE, then a close",
                    {"commands": {"NOOP": [
                        {"send": "* BYE Server shutting down\r\n"},
                        {"close": True}]}}),
    "reset_mid_append": ("APPEND's literal announcement gets a TCP reset",
                         {"steps": [{"command": "APPEND", "at": "literal",
                                     "actions": [{"reset": True}]}]}),
    "close_on_idle": ("IDLE is accepted, then the backend closes 0.5 s later",
                      {"commands": {"IDLE": [{"send": "+ idling\r\n"},
                                             {"sleep": 0.5}, {"close": True}]}}),
}


class _Done(Exception):
    """Raised inside a connection handler when the connection is over."""


class _Conn:
    """One client connection: socket, input buffer and script state."""

    # Set up the state for one accepted socket.
    def __init__(self, backend, sock, record, script):
        self.backend = backend
        self.sock = sock
        self.record = record
        self.script = script
        self.buf = b""
        self.budget = None          # bytes left before a scripted cut
        self.cut_how = "close"
        self.used_steps = set()
        self.selected = False

    # Remaining seconds of the backend's lifetime (never negative).
    def _left(self):
        return max(0.0, self.backend.deadline - time.monotonic())

    # Read more bytes into the buffer, bounded by IO_TIMEOUT and lifetime.
    def _fill(self):
        wait = min(IO_TIMEOUT, self._left())
        end = time.monotonic() + wait
        while True:
            if self.backend.stopping.is_set():
                raise _Done()
            left = end - time.monotonic()
            if left <= 0:
                raise _Done()
            r, _, _ = select.select([self.sock], [], [], min(left, 0.2))
            if not r:
                continue
            try:
                data = self.sock.recv(65536)
            except OSError:
                raise _Done()
            if not data:
                raise _Done()
            self.record["received"] += data
            self.backend._note_received(data)
            self.buf += data
            return

    # Return one line including CRLF (or LF).
    def read_line(self):
        while b"\n" not in self.buf:
            if len(self.buf) > MAX_LINE:
                raise _Done()
            self._fill()
        i = self.buf.index(b"\n") + 1
        line, self.buf = self.buf[:i], self.buf[i:]
        return line

    # Return exactly n bytes.
    def read_exact(self, n):
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    # Send bytes, honouring a scripted cut-after budget.
    def send(self, data):
        if self.budget is not None:
            if len(data) >= self.budget:
                part = data[:self.budget]
                self.budget = 0
                self._sendall(part)
                self._end(self.cut_how)
            self.budget -= len(data)
        self._sendall(data)

    # Write all bytes to the socket or end the connection.
    def _sendall(self, data):
        if not data:
            return
        try:
            self.sock.settimeout(min(IO_TIMEOUT, max(self._left(), 0.1)))
            self.sock.sendall(data)
        except OSError:
            raise _Done()

    # Close (FIN) or reset (RST) the socket and stop handling it.
    def _end(self, how):
        try:
            if how == "reset":
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                     struct.pack("ii", 1, 0))
            else:
                self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.record["ended_by"] = how
        raise _Done()

    # Sleep in small steps so stop() and the lifetime still apply.
    def _sleep(self, seconds):
        end = time.monotonic() + min(float(seconds), self._left())
        while time.monotonic() < end:
            if self.backend.stopping.is_set():
                raise _Done()
            time.sleep(min(0.05, max(0.0, end - time.monotonic())))

    # Send the script's greeting (text or actions).
    def greet(self):
        g = self.script.get("greeting", GREETING)
        if isinstance(g, str):
            self.send(g.encode("latin-1"))
        else:
            self.run_actions(g, tag="*", name="", line=b"")

    # Run a list of scripted actions for one command.
    def run_actions(self, actions, tag, name, line):
        for act in actions:
            if "send" in act:
                self.send(act["send"].replace("{tag}", tag).encode("latin-1"))
            elif "send_hex" in act:
                self.send(bytes.fromhex(act["send_hex"]))
            elif "literal" in act:
                n = int(act["literal"])
                fill = act.get("fill", "x").encode("latin-1") or b"x"
                body = (fill * (n // len(fill) + 1))[:n]
                self.send(act.get("prefix", "").replace("{tag}", tag).encode("latin-1")
                          + b"{%d}\r\n" % n + body
                          + act.get("suffix", "").encode("latin-1"))
            elif "sleep" in act:
                self._sleep(act["sleep"])
            elif act.get("close"):
                self._end("close")
            elif act.get("reset"):
                self._end("reset")
            elif "cut_after" in act:
                self.budget = int(act["cut_after"])
                self.cut_how = act.get("how", "close")
            elif act.get("greet"):
                self.greet()
            elif act.get("builtin"):
                self.builtin(tag, name, line)
            elif act.get("hang"):
                self._sleep(self._left())
                raise _Done()
            else:
                raise ValueError("unknown action %r" % (act,))

    # Find the scripted actions for a command at a point ("line"/"literal").
    def lookup(self, names, at):
        for i, step in enumerate(self.script.get("steps", [])):
            if i in self.used_steps or step.get("at", "line") != at:
                continue
            if step.get("command", "").upper() in names:
                self.used_steps.add(i)
                return step.get("actions", [])
        if at == "line":
            cmds = {k.upper(): v for k, v in self.script.get("commands", {}).items()}
            for n in names:
                if n in cmds:
                    return cmds[n]
        return None

    # Read one complete command (with its literals); return (tag, names, raw).
    def read_command(self):
        raw = self.read_line()
        words = raw.split(None, 3)
        tag = words[0].decode("latin-1") if words else ""
        names = []
        if len(words) > 1:
            first = words[1].decode("latin-1").upper()
            if first == "UID" and len(words) > 2:
                names.append("UID " + words[2].decode("latin-1").upper())
            names.append(first)
        while True:
            m = LITERAL_RE.search(raw[-24:])
            if not m:
                break
            n = int(m.group(1))
            if n > MAX_LITERAL:
                self.send(b"%s BAD Literal too big\r\n" % tag.encode("latin-1"))
                raise _Done()
            if not m.group(2):
                acts = self.lookup(names, "literal")
                if acts is not None:
                    self.run_actions(acts, tag, names[0] if names else "", raw)
                self.send(b"+ Ready for literal data\r\n")
            raw += self.read_exact(n)
            raw += self.read_line()
        return tag, names, raw

    # Built-in answer to one command.
    def builtin(self, tag, name, line):
        t = tag.encode("latin-1")
        if name in ("CAPABILITY",):
            self.send(b"* CAPABILITY " + CAPABILITIES.encode() + b"\r\n" + t + b" OK CAPABILITY completed\r\n")
        elif name in ("NOOP", "CHECK"):
            self.send(t + b" OK " + name.encode() + b" completed\r\n")
        elif name == "LOGIN":
            self.send(t + b" OK LOGIN completed\r\n")
        elif name == "AUTHENTICATE":
            if len(line.split()) < 4:          # no SASL-IR: ask for it
                self.send(b"+ \r\n")
                self.read_line()
            self.send(t + b" OK AUTHENTICATE completed\r\n")
        elif name in ("SELECT", "EXAMINE"):
            self.selected = True
            mode = b"READ-WRITE" if name == "SELECT" else b"READ-ONLY"
            self.send(b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n"
                      b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] Flags permitted\r\n"
                      b"* %d EXISTS\r\n* 0 RECENT\r\n"
                      b"* OK [UIDVALIDITY 1] UIDs valid\r\n"
                      b"* OK [UIDNEXT %d] Predicted next UID\r\n" % (MESSAGE_COUNT, MESSAGE_COUNT + 1)
                      + t + b" OK [" + mode + b"] " + name.encode() + b" completed\r\n")
        elif name in ("FETCH", "UID FETCH"):
            for seq in _parse_set(line, MESSAGE_COUNT):
                self.send(b"* %d FETCH (UID %d BODY[] {%d}\r\n" % (seq, seq, len(MESSAGE))
                          + MESSAGE + b")\r\n")
            self.send(t + b" OK " + name.encode() + b" completed\r\n")
        elif name == "IDLE":
            self.send(b"+ idling\r\n")
            while self.read_line().strip().upper() != b"DONE":
                pass
            self.send(t + b" OK IDLE terminated\r\n")
        elif name == "APPEND":
            self.send(t + b" OK [APPENDUID 1 %d] APPEND completed\r\n" % (MESSAGE_COUNT + 1))
        elif name == "LOGOUT":
            self.send(b"* BYE Logging out\r\n" + t + b" OK LOGOUT completed\r\n")
            self._end("close")
        elif name in ("LIST", "LSUB"):
            self.send(b'* ' + name.encode() + b' (\\HasNoChildren) "/" INBOX\r\n'
                      + t + b" OK " + name.encode() + b" completed\r\n")
        elif name == "NAMESPACE":
            self.send(b'* NAMESPACE (("" "/")) NIL NIL\r\n' + t + b" OK NAMESPACE completed\r\n")
        elif name in ("CLOSE", "UNSELECT"):
            self.selected = False
            self.send(t + b" OK " + name.encode() + b" completed\r\n")
        elif name in ("ID", "ENABLE", "STATUS", "STORE", "UID STORE", "SEARCH",
                      "UID SEARCH", "EXPUNGE", "CREATE", "DELETE", "SUBSCRIBE"):
            self.send(t + b" OK " + name.encode() + b" completed\r\n")
        else:
            self.send(t + b" BAD Unknown command\r\n")

    # Serve the connection: optional PROXY header, greeting, command loop.
    def serve(self):
        mode = self.backend.proxy
        if mode != "none":
            self.read_proxy(mode == "require")
        self.greet()
        while True:
            tag, names, raw = self.read_command()
            self.record["commands"].append(raw)
            if not names:
                self.send(tag.encode("latin-1") + b" BAD Missing command\r\n")
                continue
            acts = self.lookup(names, "line")
            if acts is None:
                self.builtin(tag, names[-1] if names[-1] != "UID" else names[0], raw)
            else:
                self.run_actions(acts, tag, names[0], raw)

    # Consume and record a PROXY v1/v2 header, if one comes.
    def read_proxy(self, required):
        end = time.monotonic() + (PROXY_WAIT if required else PROXY_OPTIONAL_WAIT)
        while time.monotonic() < end:
            b = self.buf
            if b.startswith(b"PROXY ") and b"\n" in b:
                break
            if len(b) >= 16 and b.startswith(PROXY_V2_SIG):
                break
            if b and not (b"PROXY "[:len(b)] == b[:6] or PROXY_V2_SIG[:len(b)] == b[:12]):
                break                       # some other bytes: no header
            if len(b) > PROXY_V1_MAX:
                break
            r, _, _ = select.select([self.sock], [], [], max(0.0, min(0.05, end - time.monotonic())))
            if r:
                self._fill()
        if self.buf.startswith(b"PROXY ") and b"\n" in self.buf[:PROXY_V1_MAX + 1]:
            i = self.buf.index(b"\n") + 1
            self.record["proxy"], self.buf = self.buf[:i], self.buf[i:]
        elif len(self.buf) >= 16 and self.buf.startswith(PROXY_V2_SIG):
            n = struct.unpack("!H", self.buf[14:16])[0]
            if n > PROXY_V2_MAX_BODY:
                self._end("close")
            self.record["proxy"] = self.read_exact(16 + n)
        elif required:
            self.send(b"* BAD Invalid PROXY header\r\n")
            self._end("close")


# Parse a FETCH sequence set like "1", "1:3", "2,3", "1:*"; capped to count.
def _parse_set(line, count):
    words = line.split()
    spec = words[3] if len(words) > 3 and words[1].upper() == b"UID" else (words[2] if len(words) > 2 else b"1")
    out = []
    for part in spec.split(b","):
        a, _, b = part.partition(b":")
        try:
            lo = count if a == b"*" else int(a)
            hi = lo if not b else (count if b == b"*" else int(b))
        except ValueError:
            continue
        lo, hi = min(lo, hi), max(lo, hi)
        out.extend(x for x in range(max(lo, 1), min(hi, count) + 1) if x not in out)
    return out


class FakeBackend:
    """A scripted IMAP backend listening on 127.0.0.1 in a thread."""

    # Create a backend from a scenario name, a script dict, or None.
    def __init__(self, script=None, port=0, proxy="none",
                 lifetime=DEFAULT_LIFETIME, host="127.0.0.1"):
        if script is None:
            script = {}
        if isinstance(script, str):
            if script not in SCENARIOS:
                raise ValueError("unknown scenario %r" % script)
            script = SCENARIOS[script][1]
        if proxy not in ("none", "optional", "require"):
            raise ValueError("proxy must be none, optional or require")
        self.script = script
        self.host = host
        self.port = port
        self.proxy = proxy
        self.lifetime = float(lifetime)
        self.connections = []           # per-connection records
        self.stopping = threading.Event()
        self._lock = threading.Lock()
        self._received = bytearray()
        self._sock = None
        self._threads = []
        self._conns = []
        self.deadline = 0.0

    @property
    def received(self):
        """Every byte received from all clients, in arrival order."""
        with self._lock:
            return bytes(self._received)

    # Append received bytes to the shared log.
    def _note_received(self, data):
        with self._lock:
            self._received += data

    # Bind, start the accept thread and return the port.
    def start(self):
        self.deadline = time.monotonic() + self.lifetime
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((self.host, self.port))
        s.listen(64)
        s.settimeout(0.2)
        self._sock = s
        self.port = s.getsockname()[1]
        t = threading.Thread(target=self._accept_loop, daemon=True)
        t.start()
        self._threads.append(t)
        return self.port

    # Script for the n-th connection (0-based).
    def _script_for(self, n):
        per = self.script.get("connections")
        if per:
            return per[min(n, len(per) - 1)]
        return self.script

    # Accept connections until stopped, the lifetime ends or the cap is hit.
    def _accept_loop(self):
        while not self.stopping.is_set() and time.monotonic() < self.deadline:
            if len(self.connections) >= MAX_CONNECTIONS:
                break
            try:
                c, addr = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            rec = {"peer": addr, "proxy": None, "received": b"", "commands": [],
                   "ended_by": None}
            self.connections.append(rec)
            conn = _Conn(self, c, rec, self._script_for(len(self.connections) - 1))
            self._conns.append(conn)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)
        self.stopping.set()
        self._close_listener()

    # Run one connection's handler and always close its socket.
    def _serve(self, conn):
        try:
            conn.serve()
        except _Done:
            pass
        except Exception as e:  # a script error must not kill the process
            conn.record["error"] = repr(e)
        finally:
            if conn.record["ended_by"] is None:
                conn.record["ended_by"] = "server-exit"
            try:
                conn.sock.close()
            except OSError:
                pass

    # Close the listening socket once.
    def _close_listener(self):
        s, self._sock = self._sock, None
        if s is not None:
            try:
                s.close()
            except OSError:
                pass

    # Stop accepting, end every connection and join the threads (bounded).
    def stop(self, timeout=5.0):
        self.stopping.set()
        end = time.monotonic() + timeout
        for t in list(self._threads):
            t.join(max(0.0, end - time.monotonic()))
        self._close_listener()

    # Block until the lifetime ends or stop() is called.
    def wait(self):
        while not self.stopping.is_set() and time.monotonic() < self.deadline:
            time.sleep(0.2)

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()


# Command-line entry point.
def main(argv=None):
    ap = argparse.ArgumentParser(description="Scripted IMAP backend for imapgate tests")
    ap.add_argument("port", nargs="?", type=int, default=0)
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--scenario", default="default", choices=sorted(SCENARIOS))
    g.add_argument("--script", help="JSON file with a script")
    ap.add_argument("--proxy", default="none", choices=["none", "optional", "require"])
    ap.add_argument("--lifetime", type=float, default=DEFAULT_LIFETIME)
    ap.add_argument("--list", action="store_true", help="list built-in scenarios")
    a = ap.parse_args(argv)
    if a.list:
        for name in sorted(SCENARIOS):
            print("%-20s %s" % (name, SCENARIOS[name][0]))
        return 0
    script = a.scenario
    if a.script:
        with open(a.script) as f:
            script = json.load(f)
    fb = FakeBackend(script, port=a.port, proxy=a.proxy, lifetime=a.lifetime)
    port = fb.start()
    print("READY %d" % port, flush=True)
    import signal
    signal.signal(signal.SIGTERM, lambda *_: fb.stopping.set())
    try:
        fb.wait()
    except KeyboardInterrupt:
        pass
    fb.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
