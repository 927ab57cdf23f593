#!/usr/bin/env python3
"""Integration-test harness: a private Dovecot, imapgate in front of it, and a
small byte-exact IMAP client. Python 3 standard library only.

Used by the test_*.py files next to it and, through its command line
(`harness.py dovecot-setup BASE PORT`), by scripts/demo, so the Dovecot
configuration is generated in exactly one place (dovecot.conf.in).

Environment:
  IMAPGATE              path of the imapgate binary (or argv[1] of a test)
  IMAPGATE_TEST_DIRECT  if set to 1, tests talk to Dovecot directly (plain
                        IMAP, no proxy); proxy-only checks are skipped.
  IMAPGATE_TEST_KEEP    if set to 1, keep the temporary directory.
"""

import atexit
import os
import random
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
TEMPLATE = os.path.join(HERE, "dovecot.conf.in")

# Every wait in the harness is bounded by one of these.
START_TIMEOUT = 15.0      # seconds for Dovecot / imapgate to come up
STOP_TIMEOUT = 12.0        # seconds between SIGTERM and SIGKILL (a drain may take a flush timeout)
IO_TIMEOUT = 30.0         # seconds for any single socket operation
MAX_LINE = 1 << 20        # longest response line the client accepts
MAX_LITERAL = 64 << 20    # largest literal the client accepts

USERS = {"demo": "demo", "other": "other-Pw-7f3a"}

SKIP = 77                 # meson's "test skipped" exit status


def say(msg):
    """Print one progress line immediately (meson captures stdout)."""
    print(msg, flush=True)


class Fail(Exception):
    """A check that did not hold."""


def check(cond, what):
    """Raise Fail(what) unless cond holds."""
    if not cond:
        raise Fail(what)


# ---------------------------------------------------------------- processes

_live = []


def _stop_all():
    """atexit hook: stop every process the harness started."""
    for p in list(_live):
        p.stop()


atexit.register(_stop_all)


def _on_signal(signum, _frame):
    """SIGTERM/SIGINT: exit through atexit so children are stopped."""
    sys.exit(128 + signum)


signal.signal(signal.SIGTERM, _on_signal)


def _die_with_parent():
    """preexec_fn: have the kernel SIGKILL the child if the test process dies
    without running its cleanup (e.g. killed with SIGKILL by a runner)."""
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class Proc:
    """A child process in its own process group, stopped reliably."""

    def __init__(self, name, argv, logfile, env=None):
        self.name = name
        self.logfile = logfile
        self._log = open(logfile, "ab")
        self.p = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                  stdout=self._log, stderr=subprocess.STDOUT,
                                  start_new_session=True,
                                  preexec_fn=_die_with_parent,
                                  env=dict(os.environ, **(env or {})))
        self.pid = self.p.pid
        self.stopped = False
        _live.append(self)

    def alive(self):
        """True while the process has not exited."""
        return self.p.poll() is None

    def stop(self):
        """SIGTERM the process group, SIGKILL it after STOP_TIMEOUT."""
        if self in _live:
            _live.remove(self)
        if self.stopped:
            return self.p.returncode
        self.stopped = True
        for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT), (signal.SIGKILL, STOP_TIMEOUT)):
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                break
            try:
                self.p.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
            # The leader is gone; make sure no straggler of the group is left.
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            break
        self._log.close()
        return self.p.returncode

    def log_text(self):
        """Everything the process wrote so far."""
        if not self._log.closed:
            self._log.flush()
        with open(self.logfile, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def rss_kib(self):
        """Resident set size in KiB from /proc/PID/status."""
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise Fail("no VmRSS for pid %d" % self.pid)


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, proc=None, timeout=START_TIMEOUT, greeting=False):
    """Wait until 127.0.0.1:port accepts (and greets with * OK if asked)."""
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        if proc is not None and not proc.alive():
            raise Fail("%s exited early (status %s):\n%s"
                       % (proc.name, proc.p.returncode, proc.log_text()[-3000:]))
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                if not greeting:
                    return
                s.settimeout(max(0.1, min(5.0, end - time.monotonic())))
                line = s.recv(4096)
                if line.startswith(b"* OK"):
                    return
                last = line
        except OSError as e:
            last = e
        time.sleep(0.05)
    raise Fail("127.0.0.1:%d not ready after %.0fs (%r)" % (port, timeout, last))


def make_cert(directory):
    """Self-signed EC certificate for localhost / 127.0.0.1; returns (cert, key)."""
    cert = os.path.join(directory, "cert.pem")
    key = os.path.join(directory, "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec",
                    "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "30",
                    "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                   timeout=30)
    os.chmod(key, 0o600)
    return cert, key


# ------------------------------------------------------------------ Dovecot

def dovecot_accounts():
    """(internal user, login user, mail user, mail group) for Dovecot.

    Dovecot never gives mail access to root, so as root the mailboxes belong
    to `nobody`, and the service users are the ones the Debian package made.
    As an ordinary user everything runs as that user.
    """
    import grp
    import pwd
    if os.geteuid() == 0:
        def have(name):
            try:
                pwd.getpwnam(name)
                return True
            except KeyError:
                return False
        internal = "dovecot" if have("dovecot") else "nobody"
        login = "dovenull" if have("dovenull") else "nobody"
        group = grp.getgrgid(pwd.getpwnam("nobody").pw_gid).gr_name
        return internal, login, "nobody", group
    me = pwd.getpwuid(os.geteuid()).pw_name
    return me, me, me, grp.getgrgid(os.getegid()).gr_name


def render_dovecot_conf(base, port):
    """The Dovecot configuration text for an instance living in base."""
    internal, login, mail_user, mail_group = dovecot_accounts()
    with open(TEMPLATE) as f:
        text = f.read()
    values = {"BASE": base, "PORT": str(port), "INSTANCE": str(port),
              "INTERNAL_USER": internal, "LOGIN_USER": login,
              "MAIL_USER": mail_user, "MAIL_GROUP": mail_group}
    for k, v in values.items():
        text = text.replace("@%s@" % k, v)
    left = re.findall(r"@[A-Z_]+@", text)
    if left:
        raise Fail("unfilled placeholders in %s: %s" % (TEMPLATE, left))
    return text


def make_message(subject, size=0, seed=1, sender="Alice <alice@example.org>",
                 to="Demo <demo@example.org>", body=None):
    """An RFC 5322 message with CRLF line ends, padded to about size bytes."""
    head = ("From: %s\r\nTo: %s\r\nSubject: %s\r\n"
            "Date: Mon, 01 Jan 2024 12:00:00 +0000\r\n"
            "Message-ID: <%s.%d@imapgate.test>\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
            % (sender, to, subject, re.sub(r"\W", "", subject), seed)).encode()
    if body is not None:
        return head + body.replace("\n", "\r\n").encode()
    rnd = random.Random(seed)
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    need = max(0, size - len(head))
    lines = (need + 77) // 78
    table = bytes(alphabet[i & 63] for i in range(256))
    raw = rnd.randbytes(lines * 76).translate(table)
    body = b"".join(raw[i * 76:(i + 1) * 76] + b"\r\n" for i in range(lines))
    return head + body[:max(0, need - 2)] + (b"\r\n" if need >= 2 else b"")


def setup_dovecot_dir(base, port, mail=None, users=None):
    """Write config, passwd file and maildirs under base; return conf path.

    mail maps a user name to a list of messages (bytes) put in their INBOX;
    users maps user name to password (default USERS).
    """
    import grp
    import pwd
    users = USERS if users is None else users
    internal, _, mail_user, mail_group = dovecot_accounts()
    uid = pwd.getpwnam(mail_user).pw_uid
    gid = grp.getgrnam(mail_group).gr_gid
    os.makedirs(base, exist_ok=True)
    # The mail user must be able to walk down to its maildir.
    os.chmod(base, 0o755)
    conf = os.path.join(base, "dovecot.conf")
    with open(conf, "w") as f:
        f.write(render_dovecot_conf(base, port))
    passwd = os.path.join(base, "passwd")
    with open(passwd, "w") as f:
        for user, pw in users.items():
            f.write("%s:{PLAIN}%s:::::\n" % (user, pw))
    # Dovecot's auth process reads it as the internal user.
    os.chown(passwd, os.geteuid(), pwd.getpwnam(internal).pw_gid)
    os.chmod(passwd, 0o640)
    maildirs = os.path.join(base, "mail")
    os.makedirs(maildirs, exist_ok=True)
    os.chown(maildirs, uid, gid)
    stamp = int(time.time())
    for user in users:
        md = os.path.join(maildirs, user)
        for sub in ("cur", "new", "tmp"):
            os.makedirs(os.path.join(md, sub), exist_ok=True)
        # Names sort in delivery order, so Dovecot gives UIDs 1, 2, ...
        for n, msg in enumerate((mail or {}).get(user, [])):
            name = os.path.join(md, "cur", "%d.M%06dP%d.imapgate-test:2," % (stamp, n, os.getpid()))
            with open(name, "wb") as f:
                f.write(msg)
        for root, dirs, files in os.walk(md):
            os.chown(root, uid, gid)
            for x in files:
                os.chown(os.path.join(root, x), uid, gid)
    return conf


class Dovecot:
    """A private Dovecot on 127.0.0.1, in its own temp directory."""

    def __init__(self, base, mail=None):
        self.base = base
        self.port = free_port()
        self.conf = setup_dovecot_dir(base, self.port, mail)
        self.proc = None

    def start(self):
        """Run `dovecot -F -c conf` and wait for its greeting."""
        self.proc = Proc("dovecot", ["dovecot", "-F", "-c", self.conf],
                         os.path.join(self.base, "dovecot.out"))
        wait_port(self.port, self.proc, greeting=True)
        return self

    def log_text(self):
        """Dovecot's own log plus whatever it printed."""
        out = ""
        for name in ("dovecot.out", "dovecot.log"):
            try:
                with open(os.path.join(self.base, name), "rb") as f:
                    out += f.read().decode("utf-8", "replace")
            except OSError:
                pass
        return out

    def stop(self):
        """Stop the Dovecot master and all its children."""
        if self.proc:
            self.proc.stop()


# ----------------------------------------------------------------- imapgate

def imapgate_binary(argv):
    """The imapgate binary from argv[1] or $IMAPGATE, or None."""
    path = argv[1] if len(argv) > 1 else os.environ.get("IMAPGATE", "")
    return os.path.abspath(path) if path else None


def imapgate_config(port, cert, key, backend_port, extra=""):
    """YAML configuration for one implicit-TLS listener and one backend."""
    return ("listen:\n"
            "  - address: 127.0.0.1:%d\n"
            "    tls: implicit\n"
            "tls:\n"
            "  certificates:\n"
            "    - cert: %s\n"
            "      key: %s\n"
            "backend:\n"
            "  servers:\n"
            "    - address: 127.0.0.1:%d\n"
            "log:\n"
            "  level: info\n%s" % (port, cert, key, backend_port, extra))


class Imapgate:
    """imapgate started from a generated config, logging to a file."""

    def __init__(self, binary, base, cert, key, backend_port, name="imapgate", extra="",
                 env=None):
        self.binary = binary
        self.env = env
        self.port = free_port()
        self.conf = os.path.join(base, name + ".yaml")
        self.logfile = os.path.join(base, name + ".log")
        with open(self.conf, "w") as f:
            f.write(imapgate_config(self.port, cert, key, backend_port, extra))
        self.proc = None

    def check_config(self):
        """Run `imapgate -t -c conf`; raise Fail with its output if rejected."""
        r = subprocess.run([self.binary, "-t", "-c", self.conf], capture_output=True,
                           timeout=START_TIMEOUT)
        if r.returncode != 0:
            raise Fail("imapgate -t rejected %s:\n%s%s" % (self.conf, r.stdout.decode(),
                                                          r.stderr.decode()))

    def start(self):
        """Start imapgate and wait until its port accepts connections."""
        self.check_config()
        self.proc = Proc("imapgate", [self.binary, "-c", self.conf], self.logfile,
                         env=self.env)
        wait_port(self.port, self.proc)
        return self

    def log_text(self):
        """imapgate's stderr so far."""
        return self.proc.log_text() if self.proc else ""

    def wait_log(self, pattern, timeout=5.0, after=0):
        """Wait until a log line matching pattern appears past offset after."""
        rx = re.compile(pattern)
        end = time.monotonic() + timeout
        while True:
            text = self.log_text()[after:]
            for line in text.splitlines():
                if rx.search(line):
                    return line
            if time.monotonic() >= end:
                return None
            time.sleep(0.05)

    def stop(self):
        """Stop imapgate; returns its exit status."""
        return self.proc.stop() if self.proc else None


# ------------------------------------------------------------------- client

class Client:
    """A byte-exact IMAP client: keeps every literal exactly as received."""

    def __init__(self, port, tls_ctx=None, timeout=IO_TIMEOUT, rcvbuf=0):
        self.tagn = 0
        self.buf = bytearray()
        if rcvbuf:
            # Set before connect: a small window makes the server's writes block.
            raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            raw.settimeout(timeout)
            raw.connect(("127.0.0.1", port))
        else:
            raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        if tls_ctx is not None:
            self.sock = tls_ctx.wrap_socket(raw, server_hostname="localhost")
        else:
            self.sock = raw
        self.sock.settimeout(timeout)
        self.greeting = self.readline()

    def close(self):
        """Close the connection without LOGOUT."""
        try:
            self.sock.close()
        except OSError:
            pass

    def fill(self, limit=65536):
        """Read up to limit bytes into the buffer; returns the count (0 = EOF)."""
        data = self.sock.recv(limit)
        self.buf += data
        return len(data)

    def readline(self):
        """One CRLF-terminated line (CRLF included)."""
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i + 2])
                del self.buf[:i + 2]
                return line
            check(len(self.buf) <= MAX_LINE, "response line longer than %d" % MAX_LINE)
            if self.fill() == 0:
                raise Fail("connection closed (partial line %r)" % bytes(self.buf[:200]))

    def readexact(self, n):
        """Exactly n bytes."""
        while len(self.buf) < n:
            if self.fill(max(65536, min(n - len(self.buf), 1 << 20))) == 0:
                raise Fail("connection closed inside a %d-byte literal" % n)
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def read_item(self):
        """One response: (text with literals replaced by {n}, [literals])."""
        text, lits = b"", []
        while True:
            line = self.readline()
            m = re.search(rb"\{(\d+)\+?\}\r\n$", line)
            if not m:
                return text + line, lits
            n = int(m.group(1))
            check(n <= MAX_LITERAL, "literal of %d bytes is too large" % n)
            text += line
            lits.append(self.readexact(n))

    def send(self, data):
        """Send raw bytes."""
        self.sock.sendall(data)

    def next_tag(self):
        """A fresh command tag."""
        self.tagn += 1
        return "T%d" % self.tagn

    def response(self, tag):
        """Read until the tagged response; returns (tagged, [untagged items])."""
        items = []
        t = tag.encode() + b" "
        while True:
            text, lits = self.read_item()
            if text.startswith(t):
                return text, items
            items.append((text, lits))

    def cmd(self, command, ok=True):
        """Send a command, return (tagged line, untagged items); check OK."""
        tag = self.next_tag()
        self.send(("%s %s\r\n" % (tag, command)).encode())
        tagged, items = self.response(tag)
        if ok:
            check(tagged.startswith(("%s OK" % tag).encode()),
                  "%s -> %r" % (command.split(" ")[0], tagged))
        return tagged, items

    def login(self, user, pw):
        """LOGIN with quoted strings."""
        return self.cmd('LOGIN "%s" "%s"' % (user, pw))

    def select(self, box="INBOX"):
        """SELECT box; returns the EXISTS count."""
        _, items = self.cmd('SELECT "%s"' % box)
        for text, _ in items:
            m = re.match(rb"\* (\d+) EXISTS", text)
            if m:
                return int(m.group(1))
        raise Fail("SELECT gave no EXISTS")

    def uid_search(self, criteria):
        """UID SEARCH; returns the list of UIDs."""
        _, items = self.cmd("UID SEARCH " + criteria)
        for text, _ in items:
            if text.startswith(b"* SEARCH"):
                return [int(x) for x in text.split()[2:]]
        return []

    def fetch_body(self, uid):
        """UID FETCH uid BODY.PEEK[]; returns the literal exactly."""
        _, items = self.cmd("UID FETCH %d BODY.PEEK[]" % uid)
        for text, lits in items:
            if b"FETCH" in text and lits:
                return lits[-1]
        raise Fail("UID FETCH %d returned no literal" % uid)

    def append(self, box, msg):
        """APPEND with a synchronizing literal; returns the tagged line."""
        tag = self.next_tag()
        self.send(('%s APPEND "%s" {%d}\r\n' % (tag, box, len(msg))).encode())
        text, _ = self.read_item()
        check(text.startswith(b"+"), "APPEND: no continuation, got %r" % text)
        self.send(msg + b"\r\n")
        tagged, _ = self.response(tag)
        check(tagged.startswith(("%s OK" % tag).encode()), "APPEND -> %r" % tagged)
        return tagged

    def logout(self):
        """LOGOUT; checks the BYE and the tagged OK, then closes."""
        _, items = self.cmd("LOGOUT")
        check(any(t.startswith(b"* BYE") for t, _ in items), "LOGOUT without * BYE")
        self.close()


# -------------------------------------------------------------- environment

class Env:
    """Temp dir, certificate, Dovecot and (unless direct mode) imapgate."""

    def __init__(self, argv, mail=None, proxy_env=None, proxy_extra=""):
        self.direct = os.environ.get("IMAPGATE_TEST_DIRECT") == "1"
        self.binary = imapgate_binary(argv)
        if shutil.which("dovecot") is None:
            say("SKIP: dovecot is not installed (apt-get install dovecot-imapd)")
            sys.exit(SKIP)
        if not self.direct and (not self.binary or not os.access(self.binary, os.X_OK)):
            say("FAIL: imapgate binary not given or not executable: %r "
                "(pass it as argv[1] or $IMAPGATE, or set IMAPGATE_TEST_DIRECT=1)" % self.binary)
            sys.exit(1)
        self.cleaned = False
        self.proxy = None
        self.dovecot = None
        self.tmp = tempfile.mkdtemp(prefix="imapgate-it-")
        os.chmod(self.tmp, 0o755)
        atexit.register(self.cleanup)
        self.cert, self.key = make_cert(self.tmp)
        try:
            self.dovecot = Dovecot(os.path.join(self.tmp, "dovecot"), mail)
            self.dovecot.start()
            if not self.direct:
                self.proxy = Imapgate(self.binary, self.tmp, self.cert, self.key,
                                      self.dovecot.port, env=proxy_env, extra=proxy_extra)
                self.proxy.start()
                self.tls = ssl.create_default_context(cafile=self.cert)
        except Fail:
            say("setup failed; server logs follow")
            self.dump_logs()
            raise
        say("env: dovecot on 127.0.0.1:%d%s (tmp %s)" % (
            self.dovecot.port,
            ", imapgate on 127.0.0.1:%d (pid %d)" % (self.proxy.port, self.proxy.proc.pid)
            if self.proxy else ", DIRECT mode (no proxy)", self.tmp))

    def client(self, timeout=IO_TIMEOUT, rcvbuf=0):
        """A connection through imapgate (TLS), or to Dovecot in direct mode."""
        if self.direct:
            return Client(self.dovecot.port, timeout=timeout, rcvbuf=rcvbuf)
        return Client(self.proxy.port, self.tls, timeout=timeout, rcvbuf=rcvbuf)

    def direct_client(self, timeout=IO_TIMEOUT):
        """A plain connection straight to Dovecot."""
        return Client(self.dovecot.port, timeout=timeout)

    def start_proxy(self, backend_port, name, extra=""):
        """Another imapgate instance (e.g. in front of a dead backend)."""
        return Imapgate(self.binary, self.tmp, self.cert, self.key, backend_port,
                        name=name, extra=extra).start()

    def dump_logs(self):
        """Print the tails of the server logs (after a failure)."""
        if self.proxy:
            say("---- imapgate log (tail) ----\n" + self.proxy.log_text()[-4000:])
        if self.dovecot:
            say("---- dovecot log (tail) ----\n" + self.dovecot.log_text()[-3000:])

    def cleanup(self):
        """Stop servers and remove the temp dir (once)."""
        if self.cleaned:
            return
        self.cleaned = True
        if self.proxy:
            self.proxy.stop()
        if self.dovecot:
            self.dovecot.stop()
        if os.environ.get("IMAPGATE_TEST_KEEP") == "1":
            say("kept %s" % self.tmp)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def run_one(env, name, fn, after=None):
    """Run one named check fn(env): print `== name`, then `ok (seconds)`,
    `skipped` (fn returned "skip") or `FAIL: error` (with the traceback of
    anything but a failed check).  after(), if given, runs once fn has
    returned, and its failure fails the check.  Returns "ok", "skip" or
    "fail"."""
    say("== %s" % name)
    t0 = time.monotonic()
    try:
        r = fn(env)
        if after is not None:
            after()
        if r == "skip":
            say("   skipped")
            return "skip"
        say("   ok (%.2fs)" % (time.monotonic() - t0))
        return "ok"
    except Exception as e:  # a failed check or any crash of the test
        say("   FAIL: %s" % e)
        if not isinstance(e, Fail):
            traceback.print_exc(file=sys.stdout)
        return "fail"


def run_tests(env, tests):
    """Run (name, function) pairs; print each result; exit 0/1 (77 if all skipped)."""
    failed, skipped = [], 0
    for name, fn in tests:
        r = run_one(env, name, fn)
        if r == "fail":
            failed.append(name)
        skipped += r == "skip"
    if env.proxy and env.proxy.proc.alive():
        # Last check of every run: a clean exit (no crash, no sanitizer report).
        say("== imapgate exits cleanly on SIGTERM")
        rc = env.proxy.stop()
        if rc == 0:
            say("   ok")
        else:
            failed.append("imapgate exit status %s" % rc)
            say("   FAIL: imapgate exited with status %s" % rc)
    if failed:
        env.dump_logs()
        say("FAILED: %s" % ", ".join(failed))
    else:
        say("all %d checks passed%s" % (len(tests) - skipped,
                                         ", %d skipped" % skipped if skipped else ""))
    env.cleanup()
    sys.exit(1 if failed else (SKIP if skipped == len(tests) else 0))


# -------------------------------------------------------- command line (demo)

def demo_mail():
    """A few sample messages for the demo user's INBOX."""
    msgs = [
        ("Welcome to imapgate", "Bob <bob@example.org>",
         "Hello!\n\nThis message was read through imapgate, a TLS reverse proxy\n"
         "for IMAP, from a private Dovecot started by scripts/demo.\n"),
        ("Lunch on Friday?", "Carol <carol@example.org>",
         "Are you free for lunch on Friday at noon?\n\nCarol\n"),
        ("Quarterly report", "Dave <dave@example.org>",
         "The numbers are in. Summary:\n\n  Q1  100\n  Q2  120\n  Q3  150\n"),
    ]
    return {"demo": [make_message(s, seed=i, sender=f, body=b)
                     for i, (s, f, b) in enumerate(msgs)]}


USAGE = """usage: harness.py COMMAND ...  (used by scripts/demo)
  dovecot-setup BASE PORT      write a Dovecot config, users and sample mail
                               under BASE; print the config path
  make-cert DIR                self-signed cert.pem/key.pem in DIR (kept if present)
  imapgate-config PORT CERT KEY BACKEND_PORT
                               print an imapgate config for 127.0.0.1:PORT
"""


def main(argv):
    """Command line for scripts/demo; see USAGE."""
    args = argv[1:]
    if len(args) == 3 and args[0] == "dovecot-setup":
        print(setup_dovecot_dir(os.path.abspath(args[1]), int(args[2]), demo_mail()))
        return 0
    if len(args) == 2 and args[0] == "make-cert":
        d = os.path.abspath(args[1])
        if not (os.path.exists(os.path.join(d, "cert.pem"))
                and os.path.exists(os.path.join(d, "key.pem"))):
            os.makedirs(d, exist_ok=True)
            make_cert(d)
        return 0
    if len(args) == 5 and args[0] == "imapgate-config":
        sys.stdout.write(imapgate_config(int(args[1]), os.path.abspath(args[2]),
                                         os.path.abspath(args[3]), int(args[4])))
        return 0
    sys.stderr.write(USAGE)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
