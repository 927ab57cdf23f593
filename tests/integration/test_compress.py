#!/usr/bin/env python3
"""COMPRESS=DEFLATE at imapgate (RFC 4978, listen[].compress) with Dovecot
behind it and real clients in front.

usage: test_compress.py PATH-TO-IMAPGATE      (or $IMAPGATE)

imapgate has three listeners in front of one private Dovecot whose INBOX
holds MSGS text messages (5-50 KB, mail-like text: compressible):
implicit TLS with compress: true, plaintext (loopback) with compress: true,
and implicit TLS without it (the uncompressed reference).  Clients reach
them through a counting TCP relay (Relay) so the bytes on the client's wire
are measured, and on the plaintext listener the relay also sees that the
client really sent COMPRESS.

Cases:
  - mbsync (isync 1.4 negotiates COMPRESS when offered) mirrors the INBOX
    over TLS through the compressing listener; the mirror equals one made
    directly against Dovecot and the originals; the client leg carried at
    least MIN_RATIO times fewer bytes than the same sync through the
    uncompressed listener;
  - neomutt (imap_deflate=yes) in a pseudo-terminal lists the INBOX and
    shows a message (skips without neomutt);
  - imapflow (node, compresses by default) fetches every message, appends
    one and is told of a new message while in IDLE (skips without node);
  - imaplib with a hand-made zlib wrapper: LOGIN, COMPRESS, SELECT, FETCH
    bodies, APPEND with a synchronizing literal;
  - raw client: capabilities before/after login and after COMPRESS; IDLE:
    an EXISTS caused by an APPEND on another connection can be inflated
    within IDLE_BOUND (the sync flush); COMPRESS twice (NO
    [COMPRESSIONACTIVE]); before login (refused); behind a command in
    flight (BAD); garbage and a finished stream after COMPRESS (compressed
    `* BYE Compression error` and a close within CLOSE_BOUND); a deflate
    bomb (100 MB of one line from ~100 KB): BAD/BYE, RSS growth bounded; a
    client that never reads while FETCHing big bodies: RSS bounded;
  - random compressed sessions for RANDOM_SECONDS (IMAPGATE_COMPRESS_SECONDS;
    IMAPGATE_COMPRESS_SEED replays): random pipelined commands, the
    compressed stream cut at random points, random flush kinds, levels and
    window sizes; every command gets its tagged answer, every FETCHed body
    is byte-exact.
imapgate must exit with status 0 at the end (ASan/UBSan clean).
"""

import hashlib
import imaplib
import os
import pty
import random
import re
import select
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import zlib

import harness
from harness import Fail, check, say
import test_abuse_common as ac

MSGS = 50
MIN_RATIO = 3.0             # uncompressed / compressed bytes on the client wire
IDLE_BOUND = 1.0            # seconds from APPEND's OK to the inflated EXISTS
CLOSE_BOUND = 5.0           # seconds for BYE + close after a broken stream
RSS_BOUND_KIB = 20 << 10    # RSS growth for the bomb and the non-reader
CLIENT_TIMEOUT = 30
RANDOM_SECONDS = float(os.environ.get("IMAPGATE_COMPRESS_SECONDS", "30"))
NODE_DIR = os.path.join(harness.HERE, "node")

WORDS = ("the of and to in is that it for on was with as by at from this have not are be "
         "or message mail server proxy client session window stream buffer inbox folder "
         "meeting report quarter budget project schedule please thanks regards team update "
         "review network latency throughput memory process thread socket request response "
         "protocol deadline customer invoice release version").split()


def mail_text(rnd, size):
    """Mail-like text of about size bytes: prose, a quoted earlier part, a signature."""
    lines, n = [], 0
    while n < size * 2 // 3:
        line = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(8, 13)))
        line = line[0].upper() + line[1:] + "."
        lines.append(line)
        n += len(line) + 2
        if rnd.random() < 0.15:
            lines.append("")
    quoted = ["> " + x for x in lines[: len(lines) // 2]]
    body = lines + ["", "On Mon, 1 Jan 2024, Bob wrote:"] + quoted + [
        "", "-- ", "Alice Example, Team Lead", "Example Org, 1 Example Street"]
    return "\n".join(body) + "\n"


def messages():
    """The INBOX: MSGS messages of 5-50 KB."""
    rnd = random.Random(4978)
    return [harness.make_message("Compress test %d" % i, seed=i,
                                 body=mail_text(rnd, rnd.randint(5000, 50000)))
            for i in range(MSGS)]


MAIL = messages()


# --------------------------------------------------------------- the relay

class Relay:
    """A TCP forwarder 127.0.0.1:port -> 127.0.0.1:target counting bytes
    both ways; keeps the first KEEP bytes each client sent."""

    KEEP = 8192

    def __init__(self, target):
        self.target = target
        self.lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.lsock.bind(("127.0.0.1", 0))
        self.lsock.listen(64)
        self.port = self.lsock.getsockname()[1]
        self.lock = threading.Lock()
        self.reset()
        threading.Thread(target=self._accept, daemon=True).start()

    def reset(self):
        """Zero the counters."""
        with self.lock:
            self.c2s = self.s2c = 0
            self.heads = []

    def _accept(self):
        while True:
            try:
                c, _ = self.lsock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c):
        try:
            s = socket.create_connection(("127.0.0.1", self.target), timeout=10)
        except OSError:
            c.close()
            return
        s.settimeout(None)
        head = bytearray()
        with self.lock:
            self.heads.append(head)
        socks = [c, s]
        try:
            while True:
                r, _, _ = select.select(socks, [], [], 60)
                if not r:
                    break
                done = False
                for x in r:
                    data = x.recv(65536)
                    if not data:
                        done = True
                        break
                    (s if x is c else c).sendall(data)
                    with self.lock:
                        if x is c:
                            self.c2s += len(data)
                            if len(head) < self.KEEP:
                                head += data[:self.KEEP - len(head)]
                        else:
                            self.s2c += len(data)
                if done:
                    break
        except OSError:
            pass
        finally:
            c.close()
            s.close()

    def total(self):
        with self.lock:
            return self.c2s + self.s2c

    def client_sent(self, needle):
        """True if some client's first bytes contain needle."""
        with self.lock:
            return any(needle in bytes(h) for h in self.heads)


# --------------------------------------------------------- compressed client

class ZClient(harness.Client):
    """harness.Client that can switch to COMPRESS=DEFLATE (raw deflate both
    ways); send() compresses with a sync flush unless told otherwise."""

    def __init__(self, port, tls_ctx=None, timeout=CLIENT_TIMEOUT, rcvbuf=0):
        self.zin = self.zout = None
        self.raw_in = 0
        super().__init__(port, tls_ctx, timeout=timeout, rcvbuf=rcvbuf)

    def fill(self, limit=65536):
        data = self.sock.recv(limit)
        self.raw_in += len(data)
        if self.zin is not None and data:
            self.buf += self.zin.decompress(data)
        else:
            self.buf += data
        return len(data)

    def zbytes(self, data, flush=zlib.Z_SYNC_FLUSH):
        """data compressed (and flushed) for the wire."""
        out = self.zout.compress(data)
        if flush != zlib.Z_NO_FLUSH:
            out += self.zout.flush(flush)
        return out

    def send(self, data, flush=zlib.Z_SYNC_FLUSH):
        if self.zout is not None:
            data = self.zbytes(data, flush)
        self.sock.sendall(data)

    def start(self, level=6, wbits=15):
        """Switch both directions to raw deflate (after the tagged OK)."""
        self.zout = zlib.compressobj(level, zlib.DEFLATED, -wbits)
        self.zin = zlib.decompressobj(-15)
        rest, self.buf = bytes(self.buf), bytearray()
        if rest:
            self.buf += self.zin.decompress(rest)

    def compress(self, level=6, wbits=15):
        """COMPRESS DEFLATE; OK expected, then compressed."""
        tagged, _ = self.cmd("COMPRESS DEFLATE")
        self.start(level, wbits)
        return tagged

    def caps(self):
        _, items = self.cmd("CAPABILITY")
        for text, _ in items:
            if text.startswith(b"* CAPABILITY"):
                return text.split()[2:]
        raise Fail("no * CAPABILITY")

    def read_until_closed(self, bound):
        """Everything until EOF (inflated); Fail if no EOF within bound s."""
        end = time.monotonic() + bound
        while True:
            left = end - time.monotonic()
            if left <= 0:
                raise Fail("no close within %.0fs (got %r)" % (bound, bytes(self.buf[-200:])))
            self.sock.settimeout(left)
            try:
                if self.fill() == 0:
                    return bytes(self.buf)
            except (ConnectionResetError, BrokenPipeError):
                return bytes(self.buf)
            except socket.timeout:
                continue
            except zlib.error as e:
                raise Fail("imapgate's stream does not inflate: %s" % e)


# ------------------------------------------------------------ environment

class Setup:
    """Dovecot, imapgate with three listeners, relays, the CA context."""

    def __init__(self, argv):
        self.binary = harness.imapgate_binary(argv)
        if shutil.which("dovecot") is None:
            say("SKIP: dovecot is not installed (apt-get install dovecot-imapd)")
            sys.exit(harness.SKIP)
        if not self.binary or not os.access(self.binary, os.X_OK):
            say("FAIL: imapgate binary not given (argv[1] or $IMAPGATE)")
            sys.exit(1)
        import tempfile
        import atexit
        self.tmp = tempfile.mkdtemp(prefix="imapgate-compress-")
        os.chmod(self.tmp, 0o755)
        self.cleaned = False
        atexit.register(self.cleanup)
        self.cert, self.key = harness.make_cert(self.tmp)
        self.tls = ssl.create_default_context(cafile=self.cert)
        self.dovecot = harness.Dovecot(os.path.join(self.tmp, "dovecot"), {"demo": MAIL})
        self.dovecot.start()
        self.proxy = harness.Imapgate(self.binary, self.tmp, self.cert, self.key,
                                      self.dovecot.port)
        self.plain_port = harness.free_port()
        self.ref_port = harness.free_port()
        with open(self.proxy.conf, "w") as f:
            f.write("listen:\n"
                    "  - address: 127.0.0.1:%d\n    tls: implicit\n    compress: true\n"
                    "  - address: 127.0.0.1:%d\n    tls: none\n    compress: true\n"
                    "  - address: 127.0.0.1:%d\n    tls: implicit\n"
                    "tls:\n  certificates:\n    - cert: %s\n      key: %s\n"
                    "backend:\n  servers:\n    - address: 127.0.0.1:%d\n"
                    "limits:\n  max_connections_per_ip: 0\n"
                    "log:\n  level: info\n"
                    % (self.proxy.port, self.plain_port, self.ref_port, self.cert,
                       self.key, self.dovecot.port))
        a = os.environ.get("ASAN_OPTIONS", "")
        # RSS cases: without the quarantine freed memory is reused, so RSS tracks live memory.
        self.proxy.env = {"ASAN_OPTIONS": (a + ":" if a else "") + "quarantine_size_mb=0"}
        self.proxy.start()
        self.relay_tls = Relay(self.proxy.port)
        self.relay_plain = Relay(self.plain_port)
        self.relay_ref = Relay(self.ref_port)
        self.relay_direct = Relay(self.dovecot.port)
        say("env: dovecot 127.0.0.1:%d, imapgate tls+compress %d, plain+compress %d, "
            "tls %d (pid %d), tmp %s" % (self.dovecot.port, self.proxy.port, self.plain_port,
                                         self.ref_port, self.proxy.proc.pid, self.tmp))

    def tls_client(self, **kw):
        return ZClient(self.proxy.port, self.tls, **kw)

    def plain_client(self, **kw):
        return ZClient(self.plain_port, **kw)

    def rss(self):
        return ac.rss_kib(self.proxy.proc.pid)

    def rss_bound(self):
        return RSS_BOUND_KIB * (ac.ASAN_RSS_FACTOR if ac.asan(self.proxy.proc.pid) else 1)

    def alive(self):
        check(self.proxy.proc.alive(), "imapgate died (status %s)" % self.proxy.proc.p.returncode)

    def dump_logs(self):
        say("---- imapgate log (tail) ----\n" + self.proxy.log_text()[-4000:])
        say("---- dovecot log (tail) ----\n" + self.dovecot.log_text()[-2000:])

    def cleanup(self):
        if self.cleaned:
            return
        self.cleaned = True
        self.proxy.stop()
        self.dovecot.stop()
        if os.environ.get("IMAPGATE_TEST_KEEP") == "1":
            say("kept %s" % self.tmp)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def login_select(c):
    c.login("demo", "demo")
    return c.select()


def body_of(uid):
    return MAIL[uid - 1]


# ------------------------------------------------------------------ mbsync

def mbsync_run(env, port, tls, name):
    """mbsync INBOX -> a fresh maildir; returns {sha256: bytes} of the mirror."""
    work = os.path.join(env.tmp, "mbsync-" + name)
    maildir = os.path.join(work, "Mail")
    os.makedirs(maildir)
    conf = os.path.join(work, "mbsyncrc")
    sslconf = ("SSLType IMAPS\nCertificateFile %s\n" % env.cert) if tls else "SSLType None\n"
    with open(conf, "w") as f:
        # The test certificate names localhost (isync checks DNS names only).
        f.write("IMAPAccount acct\nHost %s\nPort %d\nUser demo\nPass demo\n%s"
                "AuthMechs LOGIN\nTimeout %d\n\n"
                "IMAPStore remote\nAccount acct\n\n"
                "MaildirStore local\nPath %s/\nInbox %s/INBOX\n\n"
                "Channel inbox\nFar :remote:\nNear :local:\nPatterns INBOX\n"
                "Create Near\nSync Pull\nExpunge None\nSyncState *\n"
                % ("localhost" if tls else "127.0.0.1", port, sslconf, CLIENT_TIMEOUT,
                   maildir, maildir))
    os.chmod(conf, 0o600)
    try:
        r = subprocess.run(["mbsync", "-V", "-c", conf, "inbox"], capture_output=True,
                           timeout=CLIENT_TIMEOUT + 10, env=dict(os.environ, HOME=work))
    except subprocess.TimeoutExpired:
        raise Fail("mbsync (%s): no result in %ds" % (name, CLIENT_TIMEOUT + 10))
    out = (r.stdout + r.stderr).decode("utf-8", "replace")
    check(r.returncode == 0, "mbsync (%s): exit %d: %s" % (name, r.returncode, out[-2000:]))
    got = {}
    for sub in ("new", "cur"):
        d = os.path.join(maildir, "INBOX", sub)
        for x in sorted(os.listdir(d)) if os.path.isdir(d) else []:
            with open(os.path.join(d, x), "rb") as f:
                data = f.read()
            got[digest(data)] = data
    return got, out


def digest(msg):
    """sha256 of a message with LF line ends and without mbsync's X-TUID
    header (its Maildir store writes both)."""
    msg = re.sub(rb"(?m)^X-TUID: [^\n]*\n", b"", msg.replace(b"\r\n", b"\n"))
    return hashlib.sha256(msg).hexdigest()


def case_mbsync(env):
    """mbsync through the compressing TLS listener == direct == originals; >= 3x fewer bytes."""
    if shutil.which("mbsync") is None:
        say("   SKIP: mbsync is not installed (apt-get install isync)")
        return "skip"
    want = {digest(m) for m in MAIL}
    direct, _ = mbsync_run(env, env.relay_direct.port, False, "direct")
    check(want <= set(direct), "direct mirror lacks originals (%d of %d there)"
          % (len(set(direct) & want), len(want)))
    env.relay_tls.reset()
    comp, out = mbsync_run(env, env.relay_tls.port, True, "compressed")
    zbytes = env.relay_tls.total()
    check(set(comp) == set(direct), "compressed mirror differs from the direct one: "
          "%d of %d messages equal" % (len(set(comp) & set(direct)), len(direct)))
    env.relay_ref.reset()
    ref, _ = mbsync_run(env, env.relay_ref.port, True, "uncompressed")
    pbytes = env.relay_ref.total()
    check(set(ref) == set(direct), "uncompressed mirror differs from the direct one")
    ratio = pbytes / max(1, zbytes)
    say("   mirror of %d messages (%d KB) equal; client wire: %d B uncompressed, "
        "%d B compressed (%.2fx)" % (len(comp), sum(map(len, MAIL)) // 1000, pbytes,
                                     zbytes, ratio))
    # And through the plaintext listener, where the relay can see COMPRESS go by.
    env.relay_plain.reset()
    plain, _ = mbsync_run(env, env.relay_plain.port, False, "plain")
    check(set(plain) == set(direct), "mirror through the plaintext listener differs")
    check(env.relay_plain.client_sent(b" COMPRESS DEFLATE\r\n"),
          "mbsync never sent COMPRESS DEFLATE (isync 1.4 should, when offered)")
    check(ratio >= MIN_RATIO, "compressed sync carried only %.2fx fewer bytes (want >= %.1fx)"
          % (ratio, MIN_RATIO))


# ----------------------------------------------------------------- neomutt

def case_neomutt(env):
    """neomutt (imap_deflate=yes) in a pty: the index lists the INBOX, a message is shown."""
    if shutil.which("neomutt") is None:
        say("   SKIP: neomutt is not installed (apt-get install neomutt)")
        return "skip"
    r = subprocess.run(["neomutt", "-n", "-F", "/dev/null", "-Q", "imap_deflate"],
                       capture_output=True, timeout=10, env=dict(os.environ, HOME=env.tmp))
    if r.returncode != 0:
        # Debian 12's neomutt 20220429 is built without zlib: no imap_deflate.
        say("   SKIP: this neomutt has no imap_deflate (built without zlib): %s"
            % (r.stdout + r.stderr).decode("utf-8", "replace").strip())
        return "skip"
    work = os.path.join(env.tmp, "neomutt")
    os.makedirs(work)
    rc = os.path.join(work, "muttrc")
    with open(rc, "w") as f:
        f.write('set folder="imap://demo@127.0.0.1:%d/"\nset imap_pass="demo"\n'
                'set spoolfile="+INBOX"\nset imap_deflate=yes\nset ssl_starttls=no\n'
                'set ssl_force_tls=no\nset header_cache=""\nset message_cachedir=""\n'
                'set sort=date\nset pager_stop=yes\nset wait_key=no\nset quit=yes\n'
                'set mail_check=0\nset timeout=1\nset imap_keepalive=900\n'
                'set use_threads=no\nset mbox_type=Maildir\nset tmpdir="%s"\n'
                'push "<first-entry><display-message><exit><quit>"\n'
                % (env.relay_plain.port, work))
    env.relay_plain.reset()
    pid, fd = pty.fork()
    if pid == 0:
        os.environ.update({"TERM": "xterm", "HOME": work, "LINES": "50", "COLUMNS": "160"})
        try:
            os.execvp("neomutt", ["neomutt", "-n", "-F", rc])
        finally:
            os._exit(127)
    import fcntl
    import struct
    import termios
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 160, 0, 0))
    out = bytearray()
    end = time.monotonic() + 30
    status = None
    try:
        while time.monotonic() < end:
            r, _, _ = select.select([fd], [], [], 0.2)
            if r:
                try:
                    data = os.read(fd, 65536)
                except OSError:
                    data = b""
                if not data:
                    break
                out += data
            w, st = os.waitpid(pid, os.WNOHANG)
            if w:
                status = st
                break
    finally:
        if status is None:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass
            _, status = os.waitpid(pid, 0)
        os.close(fd)
    screen = re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][0-9A-B]|\x1b[=>]", b"", bytes(out))
    if status is None or time.monotonic() >= end:
        say("   neomutt did not finish within 30 s: skipped (%r)" % screen[-300:])
        return "skip"
    check(env.relay_plain.client_sent(b" COMPRESS DEFLATE\r\n"),
          "neomutt never sent COMPRESS DEFLATE (imap_deflate=yes)")
    check(b"Compress test" in screen,
          "neomutt showed no message of the INBOX: %r" % screen[-800:])
    # The pager shows a body: a signature line of every message.
    check(b"Alice Example, Team Lead" in screen or b"Example Street" in screen,
          "neomutt's pager showed no message body: %r" % screen[-800:])
    say("   neomutt: index and pager through COMPRESS (%d wire bytes)" % env.relay_plain.total())


# ----------------------------------------------------------------- imapflow

IMAPFLOW_JS = r"""
const { ImapFlow } = require('imapflow');
const crypto = require('crypto');
const [port] = process.argv.slice(2);
const say = l => process.stdout.write(l + '\n');
setTimeout(() => { say('ERROR deadline'); process.exit(1); }, 40000).unref();
(async () => {
  const c = new ImapFlow({ host: '127.0.0.1', port: Number(port), secure: false,
                           auth: { user: 'demo', pass: 'demo' }, logger: false,
                           disableAutoIdle: true });
  c.on('error', e => say('EVENT error ' + e.message));
  await c.connect();
  say('COMPRESSED ' + !!c._deflate);
  let lock = await c.getMailboxLock('INBOX');
  try {
    for await (const m of c.fetch('1:*', { uid: true, source: true })) {
      say('SHA ' + m.uid + ' ' + crypto.createHash('sha256').update(m.source).digest('hex'));
    }
  } finally { lock.release(); }
  const r = await c.append('INBOX', Buffer.from(
      'Subject: appended by imapflow\r\n\r\n' + 'imapflow body line\r\n'.repeat(500)));
  say('APPENDED ' + r.uid);
  await c.mailboxOpen('INBOX');
  c.on('exists', d => { say('EXISTS ' + d.count); c.logout().then(() => process.exit(0)); });
  say('IDLING');
  await c.idle();
})().catch(e => { say('ERROR ' + e.message); process.exit(1); });
"""


def case_imapflow(env):
    """imapflow with compression: every body exact, APPEND, IDLE sees a new message."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        say("   SKIP: node/npm are not installed")
        return "skip"
    if not os.path.isfile(os.path.join(NODE_DIR, "node_modules", "imapflow", "package.json")):
        r = subprocess.run(["npm", "ci", "--ignore-scripts", "--no-audit", "--no-fund"],
                           cwd=NODE_DIR, capture_output=True, timeout=600)
        if r.returncode != 0:
            say("   SKIP: npm ci failed: %s" % r.stderr.decode("utf-8", "replace")[-500:])
            return "skip"
    script = os.path.join(NODE_DIR, "compress_imapflow.js")
    with open(os.path.join(env.tmp, "compress_imapflow.js"), "w") as f:
        f.write(IMAPFLOW_JS)
    # Run from NODE_DIR so require() finds node_modules.
    shutil.copy(os.path.join(env.tmp, "compress_imapflow.js"), script)
    env.relay_plain.reset()
    try:
        p = subprocess.Popen(["node", script, str(env.relay_plain.port)], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, cwd=NODE_DIR)
        lines = []
        end = time.monotonic() + 45
        appended = False
        while time.monotonic() < end:
            line = p.stdout.readline().decode("utf-8", "replace").rstrip("\n")
            if not line:
                break
            lines.append(line)
            if line == "IDLING" and not appended:
                appended = True
                time.sleep(0.3)
                o = env.tls_client()
                o.login("demo", "demo")
                o.append("INBOX", harness.make_message("to wake imapflow", 2000, seed=99))
                o.logout()
        try:
            p.wait(timeout=max(1, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            raise Fail("imapflow did not finish: %s" % lines[-5:])
    finally:
        os.unlink(script)
    check(p.returncode == 0, "imapflow exit %s: %s" % (p.returncode, lines[-8:]))
    check("COMPRESSED true" in lines, "imapflow did not compress: %s" % lines[:3])
    check(env.relay_plain.client_sent(b" COMPRESS\r\n") or
          env.relay_plain.client_sent(b" COMPRESS DEFLATE\r\n"), "no COMPRESS on the wire")
    shas = {}
    for l in lines:
        if l.startswith("SHA "):
            _, uid, h = l.split()
            shas[int(uid)] = h
    for uid in range(1, MSGS + 1):
        check(shas.get(uid) == hashlib.sha256(body_of(uid)).hexdigest(),
              "imapflow: body of UID %d differs" % uid)
    check(any(l.startswith("APPENDED ") for l in lines), "imapflow: no APPEND")
    check(any(l.startswith("EXISTS ") for l in lines), "imapflow: no EXISTS in IDLE")
    say("   imapflow: %d bodies exact, APPEND, IDLE woken (%d wire bytes)"
        % (len(shas), env.relay_plain.total()))


# ------------------------------------------------------------------ imaplib

imaplib.Commands.setdefault("COMPRESS", ("AUTH", "SELECTED"))


class ZIMAP4(imaplib.IMAP4_SSL):
    """imaplib over TLS with COMPRESS=DEFLATE done by hand around the socket."""

    zin = zout = None
    zbuf = b""

    def compress(self):
        typ, data = self._simple_command("COMPRESS", "DEFLATE")
        check(typ == "OK", "imaplib COMPRESS -> %s %r" % (typ, data))
        self.zout = zlib.compressobj(6, zlib.DEFLATED, -15)
        self.zin = zlib.decompressobj(-15)
        self.zbuf = b""   # imapgate sends nothing past its OK until we speak
        return typ

    def _more(self):
        data = self.sock.recv(65536)
        if not data:
            raise self.abort("socket closed")
        self.zbuf += self.zin.decompress(data)

    def read(self, size):
        if self.zin is None:
            return super().read(size)
        while len(self.zbuf) < size:
            self._more()
        out, self.zbuf = self.zbuf[:size], self.zbuf[size:]
        return out

    def readline(self):
        if self.zin is None:
            return super().readline()
        while b"\n" not in self.zbuf:
            self._more()
        i = self.zbuf.index(b"\n") + 1
        out, self.zbuf = self.zbuf[:i], self.zbuf[i:]
        return out

    def send(self, data):
        if self.zout is None:
            return super().send(data)
        self.sock.sendall(self.zout.compress(data) + self.zout.flush(zlib.Z_SYNC_FLUSH))


def case_imaplib(env):
    """imaplib + zlib: LOGIN, COMPRESS, SELECT, FETCH bodies, APPEND {n}."""
    m = ZIMAP4("127.0.0.1", env.proxy.port, ssl_context=env.tls, timeout=CLIENT_TIMEOUT)
    try:
        m.login("demo", "demo")
        check(b"COMPRESS=DEFLATE" in " ".join(m.capabilities).encode() or
              "COMPRESS=DEFLATE" in m.capability()[1][0].decode(), "no COMPRESS=DEFLATE")
        m.compress()
        typ, _ = m.select("INBOX")
        check(typ == "OK", "SELECT -> %s" % typ)
        typ, data = m.uid("FETCH", "1:%d" % MSGS, "(BODY.PEEK[])")
        check(typ == "OK", "FETCH -> %s" % typ)
        bodies = [d[1] for d in data if isinstance(d, tuple)]
        check(bodies == MAIL, "imaplib: %d bodies, %d exact" % (
            len(bodies), sum(1 for a, b in zip(bodies, MAIL) if a == b)))
        msg = harness.make_message("imaplib append", 30000, seed=7)
        typ, data = m.append("INBOX", None, None, msg)
        check(typ == "OK", "APPEND -> %s %r" % (typ, data))
        uid = int(re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1))
        typ, data = m.uid("FETCH", str(uid), "(BODY.PEEK[])")
        check(data[0][1] == msg, "appended message does not read back")
        m.logout()
    finally:
        try:
            m.shutdown()
        except OSError:
            pass


# --------------------------------------------------------------- raw cases

def case_caps_and_refusals(env):
    """COMPRESS=DEFLATE only after login; refused before; NO [COMPRESSIONACTIVE]; BAD behind NOOP."""
    c = env.tls_client()
    pre = c.caps()
    check(not any(x.startswith(b"COMPRESS") for x in pre), "COMPRESS offered before login: %r" % pre)
    tagged, _ = c.cmd("COMPRESS DEFLATE", ok=False)
    check(re.match(rb"T\d+ (NO|BAD)", tagged), "COMPRESS before login -> %r" % tagged)
    c.login("demo", "demo")
    post = c.caps()
    check(post.count(b"COMPRESS=DEFLATE") == 1, "after login: %r" % post)
    # Behind a command still in flight: BAD, and the session stays plain.
    c.send(b"p1 NOOP\r\np2 COMPRESS DEFLATE\r\n")
    tagged = {}
    while len(tagged) < 2:     # imapgate's own BAD may come first
        text, _ = c.read_item()
        if text[:3] in (b"p1 ", b"p2 "):
            tagged[text[:2]] = text
    t1, t2 = tagged[b"p1"], tagged[b"p2"]
    check(t1.startswith(b"p1 OK"), "NOOP -> %r" % t1)
    check(t2.startswith(b"p2 BAD"), "pipelined COMPRESS -> %r" % t2)
    tagged, _ = c.cmd("COMPRESS BOGUS", ok=False)
    check(b" BAD " in tagged, "COMPRESS BOGUS -> %r" % tagged)
    c.compress()
    post = c.caps()
    check(not any(x.startswith(b"COMPRESS") for x in post), "COMPRESS offered while active")
    tagged, _ = c.cmd("COMPRESS DEFLATE", ok=False)
    check(b" NO [COMPRESSIONACTIVE]" in tagged, "second COMPRESS -> %r" % tagged)
    check(c.select() == MSGS, "SELECT after COMPRESS")
    check(c.fetch_body(3) == body_of(3), "FETCH after COMPRESS")
    c.logout()


def idle_delays(env, compressed):
    """Seconds from an APPEND's OK on another connection to the EXISTS in IDLE."""
    c = env.plain_client()
    login_select(c)
    if compressed:
        c.compress()
    delays = []
    for i in range(3):
        tag = c.next_tag()
        c.send(("%s IDLE\r\n" % tag).encode())
        text, _ = c.read_item()
        check(text.startswith(b"+"), "IDLE -> %r" % text)
        o = env.tls_client()
        o.login("demo", "demo")
        o.append("INBOX", harness.make_message("idle wake %d" % i, 3000, seed=100 + i))
        t0 = time.monotonic()
        c.sock.settimeout(IDLE_BOUND + 4)
        while True:
            text, _ = c.read_item()
            if re.match(rb"\* \d+ EXISTS", text):
                break
        delays.append(time.monotonic() - t0)
        o.logout()
        c.send(b"DONE\r\n")
        tagged, _ = c.response(tag)
        check(tagged.startswith(tag.encode() + b" OK"), "IDLE end -> %r" % tagged)
    c.logout()
    return delays


def case_idle_flush(env):
    """IDLE: the EXISTS from an APPEND elsewhere inflates within IDLE_BOUND, and
    no later than without COMPRESS (Dovecot itself waits ~0.5 s to notify)."""
    plain = idle_delays(env, False)
    delays = idle_delays(env, True)
    say("   EXISTS after %s s (uncompressed: %s s)" % (
        ", ".join("%.3f" % d for d in delays), ", ".join("%.3f" % d for d in plain)))
    check(max(delays) <= IDLE_BOUND, "EXISTS took %.2fs to inflate (bound %.1fs): "
          "no sync flush?" % (max(delays), IDLE_BOUND))
    check(max(delays) <= max(plain) + 0.25, "compressed EXISTS %.2fs later than uncompressed"
          % (max(delays) - max(plain)))


def broken_stream(env, what, payload):
    c = env.tls_client()
    login_select(c)
    c.compress()
    check(c.fetch_body(1) == body_of(1), "FETCH before the break")
    t0 = time.monotonic()
    c.sock.sendall(payload)
    rest = c.read_until_closed(CLOSE_BOUND)
    check(b"* BYE Compression error" in rest, "%s: no compressed BYE before the close: %r"
          % (what, rest[-200:]))
    say("   %s: BYE and close after %.2fs" % (what, time.monotonic() - t0))
    c.close()


def case_garbage(env):
    """Garbage, and a finished stream, after COMPRESS: * BYE Compression error, close."""
    broken_stream(env, "garbage", b"\xff\xfe\xfd garbage \x00\x01" * 20)
    z = zlib.compressobj(6, zlib.DEFLATED, -15)
    broken_stream(env, "final block", z.compress(b"x NOOP\r\n") + z.flush(zlib.Z_FINISH))
    # A client that compresses right behind its COMPRESS (RFC 4978 lets the
    # client start after its CRLF): the compressed NOOP is answered.
    c = env.tls_client()
    login_select(c)
    z = zlib.compressobj(6, zlib.DEFLATED, -15)
    c.send(b"y1 COMPRESS DEFLATE\r\n" + z.compress(b"y2 NOOP\r\n") + z.flush(zlib.Z_SYNC_FLUSH))
    tagged = c.readline()
    check(tagged.startswith(b"y1 OK"), "COMPRESS + compressed NOOP -> %r" % tagged)
    c.start()
    c.zout = z
    tagged, _ = c.response("y2")
    check(tagged.startswith(b"y2 OK"), "compressed NOOP right behind COMPRESS -> %r" % tagged)
    check(c.fetch_body(2) == body_of(2), "FETCH after that")
    c.logout()
    # Plain text where deflate is due (a client that ignored the switch):
    # imapgate's OK (plain), then the compressed BYE and the close.
    c = env.tls_client()
    login_select(c)
    c.send(b"z1 COMPRESS DEFLATE\r\nz2 NOOP\r\n")
    try:
        tagged = c.readline()
    except Fail as e:
        raise Fail("COMPRESS followed by plain NOOP: %s (no OK, no BYE)" % e)
    check(tagged.startswith(b"z1 OK"), "COMPRESS + plain NOOP -> %r" % tagged)
    c.start()
    try:
        # Whatever "z2 NOOP" inflated to, zeros end the block and start a
        # stored one with LEN/NLEN 0/0: the stream is broken by now.
        c.sock.sendall(b"\x00" * 64)
    except OSError:
        pass
    rest = c.read_until_closed(CLOSE_BOUND)
    check(b"* BYE Compression error" in rest, "no BYE after plain text in the compressed "
          "stream: %r" % rest[-200:])
    c.close()
    env.alive()


def case_bomb(env):
    """100 MB of one line from ~100 KB of deflate: BAD/BYE, RSS growth bounded."""
    c = env.tls_client()
    login_select(c)
    c.compress(level=9)
    base = env.rss()
    peak = 0
    z = c.zout
    chunk = b"X" * (1 << 20)
    sent = 0
    closed = False
    c.sock.sendall(z.compress(b"b1 SEARCH TEXT \""))
    for i in range(100):
        data = z.compress(chunk)
        if i % 10 == 9:
            data += z.flush(zlib.Z_SYNC_FLUSH)
        try:
            c.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            closed = True
            break
        sent += len(data)
        peak = max(peak, env.rss() - base)
    if not closed:
        try:
            c.sock.sendall(z.compress(b"\"\r\nb2 NOOP\r\n") + z.flush(zlib.Z_SYNC_FLUSH))
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            closed = True
    got = b""
    try:
        end = time.monotonic() + 15
        while time.monotonic() < end:
            c.sock.settimeout(1)
            try:
                if c.fill() == 0:
                    break
            except socket.timeout:
                pass
            peak = max(peak, env.rss() - base)
            if re.search(rb"(^|\n)b1 (BAD|NO)|\* BYE|b2 ", bytes(c.buf)):
                break
    except (ConnectionResetError, ssl.SSLError, OSError):
        pass
    got = bytes(c.buf)
    peak = max(peak, env.rss() - base)
    say("   sent %d KB of deflate (100 MB inflated)%s; RSS growth %d KiB; answer %r"
        % (sent // 1000, ", closed early" if closed else "", peak, got[:120]))
    check(re.search(rb"b1 BAD|\* BYE", got), "no BAD/BYE for the bomb: %r" % got[:300])
    check(peak < env.rss_bound(), "RSS grew by %d KiB (bound %d KiB)" % (peak, env.rss_bound()))
    c.close()
    env.alive()


def case_nonreader(env):
    """A compressed client FETCHes big bodies over and over and never reads: RSS bounded."""
    c = env.tls_client(rcvbuf=8192)
    login_select(c)
    c.compress()
    base = env.rss()
    peak = 0
    c.sock.settimeout(0.5)
    sent = 0
    t0 = time.monotonic()
    stopped = None
    while time.monotonic() - t0 < 6:
        if stopped is None:
            try:
                c.sock.sendall(c.zbytes(b"".join(b"f%d UID FETCH 1:* BODY.PEEK[]\r\n"
                                                   % (sent + i) for i in range(10))))
                sent += 10
            except socket.timeout:
                # imapgate stopped reading us (a partial write: send no more).
                stopped = time.monotonic() - t0
        peak = max(peak, env.rss() - base)
        time.sleep(0.05)
    port = c.sock.getsockname()[1]
    peak = max(peak, env.rss() - base)
    say("   %s%d FETCHes of %d KB sent unread (%.0f MB asked for); RSS growth %d KiB"
        % ("our sends blocked after %.1fs; " % stopped if stopped else "", sent, sum(map(len, MAIL)) // 1000, sent * sum(map(len, MAIL)) / 1e6, peak))
    check(peak < env.rss_bound(), "RSS grew by %d KiB (bound %d KiB)" % (peak, env.rss_bound()))
    c.close()
    line = env.proxy.wait_log(r"msg=session-end client=127\.0\.0\.1:%d " % port, timeout=10)
    check(line, "no session-end for the non-reader")
    taken = int(re.search(r"bytes_in=(\d+)", line).group(1))
    asked = sent * len(b"f1000 UID FETCH 1:* BODY.PEEK[]\r\n")
    say("   imapgate took %d of the ~%d command bytes sent" % (taken, asked))
    check(taken < asked // 2, "imapgate read on from a client that does not read")
    env.alive()
    d = env.tls_client()
    login_select(d)
    d.logout()


# --------------------------------------------------- random compressed sessions

FLUSHES = [zlib.Z_SYNC_FLUSH, zlib.Z_FULL_FLUSH, zlib.Z_NO_FLUSH, zlib.Z_PARTIAL_FLUSH]


def random_session(env, rnd, n):
    """One random compressed session; returns the number of commands."""
    tls = rnd.random() < 0.5
    c = env.tls_client(timeout=20) if tls else env.plain_client(timeout=20)
    login_select(c)
    c.compress(level=rnd.choice([0, 1, 6, 9]), wbits=rnd.choice([9, 12, 15]))
    cmds = 0
    for _ in range(rnd.randint(3, 12)):
        batch = []          # (tag, kind, data)
        for _ in range(rnd.randint(1, 6)):
            tag = c.next_tag()
            k = rnd.choice(["noop", "fetch", "fetch", "flags", "search", "status", "list",
                            "bad", "compress", "append+", "check", "idle", "examine"])
            if k == "noop":
                d = b"%s NOOP\r\n" % tag.encode()
            elif k == "fetch":
                lo = rnd.randint(1, MSGS)
                hi = min(MSGS, lo + rnd.randint(0, 4))
                d = b"%s UID FETCH %d:%d BODY.PEEK[]\r\n" % (tag.encode(), lo, hi)
            elif k == "flags":
                d = b"%s FETCH 1:* (FLAGS UID RFC822.SIZE)\r\n" % tag.encode()
            elif k == "search":
                d = b"%s UID SEARCH TEXT \"%s\"\r\n" % (tag.encode(), rnd.choice(WORDS).encode())
            elif k == "status":
                d = b"%s STATUS INBOX (MESSAGES UIDNEXT)\r\n" % tag.encode()
            elif k == "list":
                d = b'%s LIST "" "*"\r\n' % tag.encode()
            elif k == "bad":
                d = b"%s FROB %s\r\n" % (tag.encode(), b"x" * rnd.randint(0, 300))
            elif k == "compress":
                d = b"%s COMPRESS DEFLATE\r\n" % tag.encode()
            elif k == "append+":
                msg = harness.make_message("random %d" % n, rnd.randint(100, 20000),
                                           seed=rnd.randint(0, 1 << 30))
                d = b"%s APPEND INBOX {%d+}\r\n%s\r\n" % (tag.encode(), len(msg), msg)
            elif k == "check":
                d = b"%s CHECK\r\n" % tag.encode()
            elif k == "idle":
                d = b"%s IDLE\r\n" % tag.encode()
            else:
                d = b"%s EXAMINE INBOX\r\n%s SELECT INBOX\r\n" % (tag.encode(), c.next_tag().encode())
            batch.append((tag, k, d))
            if k in ("idle", "examine"):
                break       # IDLE needs its "+"; EXAMINE+SELECT used two tags
        # The batch's compressed bytes with random flushes between commands.
        wire = b""
        for _, k, d in batch:
            fl = rnd.choice(FLUSHES)
            wire += c.zbytes(d, fl)
        wire += c.zout.flush(zlib.Z_SYNC_FLUSH)
        # Cut at random points, sent with random pauses.
        pos = 0
        while pos < len(wire):
            step = rnd.choice([1, 2, 7, 100, 1500, len(wire)])
            c.sock.sendall(wire[pos:pos + step])
            pos += step
            if rnd.random() < 0.1:
                time.sleep(rnd.random() * 0.02)
        # Dovecot may answer pipelined commands out of order: collect them all.
        want = {}
        for tag, k, d in batch:
            want[tag] = (k, d)
            if k == "examine":
                want["T%d" % (int(tag[1:]) + 1)] = ("select", d)
        kinds = {k for k, _ in want.values()}
        tagged = {}
        idle_tag = next((t for t, (k, _) in want.items() if k == "idle"), None)
        cont = False
        while len(tagged) < len(want):
            text, lits = c.read_item()
            if text.startswith(b"+"):
                check(idle_tag is not None and not cont, "unexpected %r" % text)
                cont = True
                done = c.zbytes(b"DONE\r\n")
                cut = rnd.randint(0, len(done))
                c.sock.sendall(done[:cut])
                time.sleep(0.01)
                c.sock.sendall(done[cut:])
                continue
            m = re.match(rb"(T\d+) ", text)
            if m and m.group(1).decode() in want:
                tagged[m.group(1).decode()] = text
                continue
            check(text.startswith(b"* "), "stray line %r" % text[:100])
            m = re.search(rb"UID (\d+)", text)
            if "fetch" in kinds and m and lits and b"BODY[]" in text and int(m.group(1)) <= MSGS:
                check(lits[-1] == body_of(int(m.group(1))),
                      "UID %s body differs" % m.group(1).decode())
        for tag, text in tagged.items():
            cmds += 1
            k, d = want[tag]
            if k == "bad":
                check(b" BAD " in text, "FROB -> %r" % text)
            elif k == "compress":
                check(b" NO [COMPRESSIONACTIVE]" in text, "COMPRESS again -> %r" % text)
            else:
                check(re.match(rb"T\d+ OK", text), "%s -> %r" % (d[:60], text))
    c.logout()
    return cmds


def case_random(env):
    """Random compressed sessions (random commands, cuts, flushes, levels, windows)."""
    seed = int(os.environ.get("IMAPGATE_COMPRESS_SEED", str(random.randrange(1 << 30))))
    say("   seed %d (IMAPGATE_COMPRESS_SEED replays), %.0f s" % (seed, RANDOM_SECONDS))
    t0 = time.monotonic()
    n = cmds = 0
    while time.monotonic() - t0 < RANDOM_SECONDS:
        rnd = random.Random(seed * 1000003 + n)
        try:
            cmds += random_session(env, rnd, n)
        except (Fail, OSError, zlib.error) as e:
            raise Fail("session %d (seed %d): %s" % (n, seed, e))
        n += 1
        env.alive()
    say("   %d sessions, %d commands" % (n, cmds))


def main(argv):
    env = Setup(argv)
    tests = [
        ("mbsync mirror, compressed vs direct vs uncompressed", case_mbsync),
        ("capabilities, COMPRESS refused/BAD/NO", case_caps_and_refusals),
        ("imaplib + zlib: FETCH and APPEND compressed", case_imaplib),
        ("IDLE: EXISTS arrives flushed", case_idle_flush),
        ("broken deflate streams: BYE and close", case_garbage),
        ("deflate bomb: bounded", case_bomb),
        ("non-reading compressed client: bounded", case_nonreader),
        ("neomutt imap_deflate", case_neomutt),
        ("imapflow compressed", case_imapflow),
        ("random compressed sessions", case_random),
    ]
    failed, skipped = [], 0
    for name, fn in tests:
        say("== %s" % name)
        t0 = time.monotonic()
        try:
            if fn(env) == "skip":
                skipped += 1
                continue
            env.alive()
            say("   ok (%.2fs)" % (time.monotonic() - t0))
        except Exception as e:
            failed.append(name)
            say("   FAIL: %s" % e)
            if not isinstance(e, (Fail, zlib.error, OSError)):
                import traceback
                traceback.print_exc(file=sys.stdout)
    say("== imapgate exits cleanly on SIGTERM")
    rc = env.proxy.stop()
    log = env.proxy.log_text()
    if rc != 0 or re.search(r"ERROR: (Address|Leak)Sanitizer|runtime error:", log):
        failed.append("imapgate exit status %s" % rc)
        say("   FAIL: status %s" % rc)
    if failed:
        env.dump_logs()
        say("FAILED: %s" % ", ".join(failed))
    else:
        say("all %d checks passed%s" % (len(tests) - skipped,
                                         ", %d skipped" % skipped if skipped else ""))
    env.cleanup()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
