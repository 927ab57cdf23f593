#!/usr/bin/env python3
"""Courier-IMAP 5 and Cyrus IMAPd 3.6 (Debian 12 packages) as test backends.

Both conflict with dovecot-imapd (all three provide imap-server), so they are
never installed.  prepare() fetches their .debs with `apt-get download` (the
packages apt would install for them, as `apt-get install --simulate` lists
them, less the mail transfer agent and -dev packages) and unpacks them with
`dpkg -x` into a cache directory reused across runs:

    /var/cache/imapgate-test/legacy/        ($IMAPGATE_LEGACY_CACHE)
        debs/      the downloaded .deb files
        root/      their contents (usr/, etc/, ...), plus .ready (the list)

Each server runs in `unshare --mount --pid --fork --kill-child`: inside the
new mount namespace (made private first, so nothing propagates back) the
unpacked trees are overlaid on the real ones, read-only for /usr
(lowerdir=root/usr:/usr) and with a writable upper directory under the
server's own base directory for /etc, /run and /dev (configuration files,
the authdaemon socket, a /dev/log socket).  Nothing on the host changes;
when the namespace's first process dies the kernel kills everything in it
and the mounts disappear.

    CourierServer(base, users)   couriertcpd + imaplogin + imapd (plaintext,
                                 STARTTLS with tls_cert=(cert, key)),
                                 authdaemond with the userdb module
                                 (/etc/courier/userdb, SHA-512 crypt
                                 passwords, makeuserdb); maildirs written
                                 directly, owned by nobody.
    CyrusServer(base, users)     Cyrus master running imapd only; passwords
                                 in a sasldb (saslpasswd2 -f, auxprop
                                 sasldb, as Debian's imapd.conf does);
                                 INBOXes created at the first login
                                 (autocreate_quota: 0, Debian's default) and
                                 seeded over IMAP with APPEND.  Cyrus logs to
                                 syslog only: a datagram receiver on the
                                 namespace's /dev/log writes BASE/syslog.log.

Both: .port (127.0.0.1, a free port, plaintext IMAP with optional STARTTLS),
.stop(), .log_text(), .name ("courier", "cyrus").  Each user's INBOX holds
the messages given in mail (user -> [bytes]), by default one message with
`Subject: server=NAME user=USER` (test_route_common.subject_for), so the
route tests' client helpers (curl, mbsync, imaplib) work unchanged.

Needs root (mount namespaces, overlayfs), `unshare` (util-linux) and apt.
Python 3 stdlib only.  Command line: `legacy_servers.py prepare` (used by
scripts/test) fetches and unpacks, exit 0, or 77 with the reason.
"""

import fcntl
import grp
import imaplib
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import harness                          # noqa: E402
from harness import Fail, say           # noqa: E402

CACHE = os.environ.get("IMAPGATE_LEGACY_CACHE", "/var/cache/imapgate-test/legacy")
PREPARE_TIMEOUT = 240.0     # seconds for resolving, downloading and unpacking
START_TIMEOUT = 20.0        # seconds for a server to greet
# What each server needs, as apt would install it; courier-imap and
# cyrus-imapd conflict with each other too, so they are resolved apart.
SETS = {"courier": ["courier-imap"], "cyrus": ["cyrus-imapd", "sasl2-bin"]}
# In apt's list but not needed to run the daemons (an MTA, headers, awk).
UNNEEDED = re.compile(r"^(exim4.*|postfix.*|.*-dev|gawk|libsigsegv2)$")
# Binaries whose libraries must all resolve inside the overlay.
CHECK_BINARIES = ["usr/sbin/couriertcpd", "usr/lib/courier/courier/imaplogin", "usr/bin/imapd",
                  "usr/lib/courier/courier-authlib/authdaemond", "usr/sbin/makeuserdb",
                  "usr/lib/cyrus/bin/master", "usr/lib/cyrus/bin/imapd",
                  "usr/lib/cyrus/bin/ctl_cyrusdb", "usr/sbin/saslpasswd2"]
LIB_DIRS = ["usr/lib/x86_64-linux-gnu", "usr/lib", "lib/x86_64-linux-gnu",
            "usr/lib/x86_64-linux-gnu/sasl2"]


def _root():
    return os.path.join(CACHE, "root")


# ------------------------------------------------------------------ prepare

def _run(argv, timeout, cwd=None):
    """(returncode, output) of argv; output is stdout+stderr as text."""
    try:
        r = subprocess.run(argv, cwd=cwd, capture_output=True, timeout=timeout,
                           env=dict(os.environ, LC_ALL="C", DEBIAN_FRONTEND="noninteractive"))
    except subprocess.TimeoutExpired:
        return 124, "%s: no result in %.0fs" % (argv[0], timeout)
    except OSError as e:
        return 127, "%s: %s" % (argv[0], e)
    return r.returncode, (r.stdout + r.stderr).decode("utf-8", "replace")


def _resolve(pkgs, timeout):
    """The packages `apt-get install --simulate` would install for pkgs."""
    rc, out = _run(["apt-get", "install", "--simulate", "--no-install-recommends",
                    "-o", "Debug::NoLocking=1"] + pkgs, timeout)
    names = re.findall(r"(?m)^Inst (\S+)", out)
    if rc != 0 or not names:
        raise Fail("apt-get install --simulate %s failed (exit %d):\n%s"
                   % (" ".join(pkgs), rc, out[-1500:]))
    return [n.split(":")[0] for n in names if not UNNEEDED.match(n.split(":")[0])]


def _missing_libs(root):
    """'binary: libX.so => not found' lines for the CHECK_BINARIES in root."""
    path = ":".join(os.path.join(root, d) for d in LIB_DIRS)
    out = []
    for b in CHECK_BINARIES:
        f = os.path.join(root, b)
        if not os.path.exists(f):
            out.append("%s: missing" % b)
            continue
        r = subprocess.run(["ldd", f], capture_output=True, timeout=30,
                           env=dict(os.environ, LD_LIBRARY_PATH=path))
        for line in r.stdout.decode("utf-8", "replace").splitlines():
            if "not found" in line:
                out.append("%s: %s" % (b, line.strip()))
    return out


def prepare(timeout=PREPARE_TIMEOUT, log=say):
    """Make sure CACHE/root holds both servers; None when ready, else the
    reason they cannot run here (the caller skips)."""
    if os.geteuid() != 0:
        return "needs root (mount namespaces and overlayfs)"
    for tool in ("unshare", "apt-get", "dpkg", "ldd"):
        if shutil.which(tool) is None:
            return "%s is not installed" % tool
    end = time.monotonic() + timeout
    try:
        os.makedirs(CACHE, exist_ok=True)
    except OSError as e:
        return "cannot create %s: %s" % (CACHE, e)
    ready = os.path.join(_root(), ".ready")
    with open(os.path.join(CACHE, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if os.path.exists(ready) and os.environ.get("IMAPGATE_LEGACY_REFRESH") != "1":
            return None
        t0 = time.monotonic()
        try:
            names = []
            for pkgs in SETS.values():
                for n in _resolve(pkgs, max(5.0, end - time.monotonic())):
                    if n not in names:
                        names.append(n)
        except Fail as e:
            return str(e)
        debs = os.path.join(CACHE, "debs")
        shutil.rmtree(debs, ignore_errors=True)
        os.makedirs(debs)
        os.chmod(debs, 0o755)   # apt's _apt user writes the files
        log("legacy: apt-get download %d packages into %s" % (len(names), debs))
        rc, out = _run(["apt-get", "download"] + names, max(5.0, end - time.monotonic()),
                       cwd=debs)
        if rc != 0:
            return "apt-get download failed (exit %d, no network?):\n%s" % (rc, out[-1500:])
        tmp = _root() + ".new"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        files = sorted(os.listdir(debs))
        for deb in files:
            rc, out = _run(["dpkg", "-x", os.path.join(debs, deb), tmp],
                           max(5.0, end - time.monotonic()))
            if rc != 0:
                return "dpkg -x %s failed: %s" % (deb, out[-500:])
        missing = _missing_libs(tmp)
        if missing:
            return "libraries missing after unpacking:\n  " + "\n  ".join(missing)
        with open(os.path.join(tmp, ".ready"), "w") as f:
            f.write("\n".join(files) + "\n")
        shutil.rmtree(_root(), ignore_errors=True)
        os.rename(tmp, _root())
        log("legacy: %d packages unpacked in %.1fs" % (len(files), time.monotonic() - t0))
    return None


# ------------------------------------------------------------------ servers

def _seed(name, users, mail):
    """user -> [message bytes]: mail, or one `server=NAME user=USER` message."""
    if mail is not None:
        return {u: list(mail.get(u, [])) for u in users}
    return {u: [harness.make_message("server=%s user=%s" % (name, u), seed=i + 1)]
            for i, u in enumerate(users)}


def _safe_user(user, password):
    bad = [c for c in user + password if not ("!" <= c <= "~") or c in "\"\\'$`|:"]
    if bad or not user or not password:
        raise ValueError("user/password %r/%r: the test setups do not quote %r"
                         % (user, password, bad))


class _Server:
    """Common part: a base directory, overlays, the namespace process."""

    name = "?"
    overlays_rw = ("etc", "run", "dev")

    def __init__(self, base, users, mail=None, tls_cert=None):
        reason = prepare()
        if reason:
            raise Fail("legacy servers cannot run: %s" % reason)
        self.base = os.path.abspath(base)
        self.users = dict(users)
        for u, p in self.users.items():
            _safe_user(u, p)
        self.mail = _seed(self.name, self.users, mail)
        self.tls_cert = tls_cert
        self.port = harness.free_port()
        self.proc = None
        os.makedirs(self.base, exist_ok=True)
        os.chmod(self.base, 0o755)
        for d in self.overlays_rw:
            for part in ("upper", "work"):
                os.makedirs(os.path.join(self.base, "ns", d + "-" + part), exist_ok=True)
        self.setup()
        self.start()

    def upper(self, path):
        """The host path of a file under an overlaid directory (etc/..., run/...)."""
        top, rest = path.strip("/").split("/", 1)
        p = os.path.join(self.base, "ns", top + "-upper", rest)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        return p

    def add_account(self, name, home):
        """Add user and group `name` (ids free on the host) to the overlay's
        /etc/passwd and /etc/group, as the package's postinst would with
        adduser; returns (uid, gid).  Reuses the host's entry if it exists."""
        try:
            p = pwd.getpwnam(name)
            return p.pw_uid, p.pw_gid
        except KeyError:
            pass
        used_u = {p.pw_uid for p in pwd.getpwall()}
        used_g = {g.gr_gid for g in grp.getgrall()}
        uid = next(u for u in range(64990, 60000, -1) if u not in used_u)
        gid = next(g for g in range(64990, 60000, -1) if g not in used_g)
        for f, line in (("passwd", "%s:x:%d:%d:%s:%s:/usr/sbin/nologin\n" % (name, uid, gid, name, home)),
                        ("group", "%s:x:%d:\n" % (name, gid))):
            path = self.upper("etc/" + f)
            if not os.path.exists(path):
                shutil.copy("/etc/" + f, path)
            with open(path, "a") as out:
                out.write(line)
        return uid, gid

    def mounts(self):
        """Shell lines that build the private view of the file system."""
        root = _root()
        lines = ["set -e", "mount --make-rprivate /",
                 "mount -t overlay overlay -o lowerdir=%s/usr:/usr /usr" % root]
        for d in self.overlays_rw:
            lower = "%s/%s:/%s" % (root, d, d) if os.path.isdir(os.path.join(root, d)) \
                else "/" + d
            lines.append("mount -t overlay overlay -o lowerdir=%s,upperdir=%s/ns/%s-upper,"
                         "workdir=%s/ns/%s-work /%s" % (lower, self.base, d, self.base, d, d))
        return lines

    def start(self):
        """Run the namespace script and wait for the greeting."""
        script = os.path.join(self.base, "run.sh")
        with open(script, "w") as f:
            f.write("\n".join(self.mounts() + self.body()) + "\n")
        self.proc = harness.Proc(self.name, ["unshare", "--mount", "--pid", "--fork",
                                             "--kill-child", "--mount-proc", "sh", script],
                                 os.path.join(self.base, "server.out"))
        harness.wait_port(self.port, self.proc, timeout=START_TIMEOUT, greeting=True)
        self.after_start()
        return self

    def after_start(self):
        pass

    def log_text(self):
        """The namespace's output plus the server's own log."""
        out = ""
        for name in ("server.out", "syslog.log"):
            try:
                with open(os.path.join(self.base, name), "rb") as f:
                    out += f.read().decode("utf-8", "replace")
            except OSError:
                pass
        return out

    def stop(self):
        """SIGKILL unshare: --kill-child then SIGKILLs the namespace's first
        process and the kernel kills everything else in the namespace
        (unshare itself ignores SIGTERM while it waits for its child)."""
        if self.proc is None:
            return None
        if self.proc.alive():
            try:
                os.kill(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return self.proc.stop()


def _combined_pem(cert, key, path):
    with open(path, "wb") as out:
        for p in (cert, key):
            with open(p, "rb") as f:
                out.write(f.read())
    os.chmod(path, 0o600)
    return path


class CourierServer(_Server):
    """Courier-IMAP 5.0 (imapd via couriertcpd) with authdaemond/userdb."""

    name = "courier"

    def setup(self):
        nobody = pwd.getpwnam("nobody")
        uid, gid = nobody.pw_uid, nobody.pw_gid
        # courier-base's postinst: adduser --system --group courier
        # (imaplogin starts couriertls as this user).
        self.courier_ids = self.add_account("courier", "/var/lib/courier")
        with open(self.upper("etc/courier/authdaemonrc"), "w") as f:
            f.write('authmodulelist="authuserdb"\ndaemons=2\n'
                    'authdaemonvar=/run/courier/authdaemon\nDEBUG_LOGIN=0\n'
                    'DEFAULTOPTIONS=""\nLOGGEROPTS=""\n')
        home = os.path.join(self.base, "home")
        os.makedirs(home, exist_ok=True)
        os.chmod(home, 0o755)
        stamp = int(time.time())
        userdb = []
        for user, pw in self.users.items():
            h = subprocess.run(["openssl", "passwd", "-6", "-stdin"], input=pw.encode(),
                               capture_output=True, check=True, timeout=30).stdout.decode().strip()
            uh = os.path.join(home, user)
            md = os.path.join(uh, "Maildir")
            userdb.append("%s\tuid=%d|gid=%d|home=%s|mail=%s|systempw=%s"
                          % (user, uid, gid, uh, md, h))
            for sub in ("cur", "new", "tmp"):
                os.makedirs(os.path.join(md, sub), exist_ok=True)
            for n, msg in enumerate(self.mail.get(user, [])):
                with open(os.path.join(md, "cur", "%d.M%06dP%d.imapgate-test:2,"
                                       % (stamp, n, os.getpid())), "wb") as f:
                    f.write(msg)
            for r, dirs, files in os.walk(uh):
                os.chown(r, uid, gid)
                for x in files:
                    os.chown(os.path.join(r, x), uid, gid)
        db = self.upper("etc/courier/userdb")
        with open(db, "w") as f:
            f.write("\n".join(userdb) + "\n")
        os.chmod(db, 0o600)

    def body(self):
        tls = ["IMAP_STARTTLS=NO"]
        if self.tls_cert:
            # couriertls runs as `courier`: the key must be readable by it.
            pem = _combined_pem(self.tls_cert[0], self.tls_cert[1],
                                os.path.join(self.base, "imapd.pem"))
            os.chown(pem, *self.courier_ids)
            # The postinst makes dhparams.pem with mkdhparams (minutes of
            # CPU); the RFC 7919 group is as good for a test.
            dh = os.path.join(self.base, "dhparams.pem")
            with open(dh, "wb") as f:
                f.write(subprocess.run(["openssl", "genpkey", "-genparam", "-algorithm", "DH",
                                        "-pkeyopt", "group:ffdhe2048"], capture_output=True,
                                       check=True, timeout=30).stdout)
            tls = ["IMAP_STARTTLS=YES", "COURIERTLS=/usr/bin/couriertls",
                   "TLS_CERTFILE=%s" % pem, "TLS_VERIFYPEER=NONE", "TLS_CACHEFILE=",
                   "TLS_DHPARAMS=%s" % dh]
        return [
            "mkdir -p /run/courier/authdaemon",
            "makeuserdb",
            "/usr/lib/courier/courier-authlib/authdaemond &",
            "n=0; while [ ! -S /run/courier/authdaemon/socket ] && [ $n -lt 100 ]; "
            "do sleep 0.05; n=$((n+1)); done",
            # The environment the init script (/usr/lib/courier/imapd) gives
            # imapd: the packaged /etc/courier/imapd and imapd-ssl, sourced.
            "set -a", ". /etc/courier/imapd", ". /etc/courier/imapd-ssl",
        ] + tls + [
            "set +a",
            # Not exec: sh stays the namespace's first process (a daemon that
            # changes uid loses --kill-child's parent-death signal).
            "couriertcpd -address=127.0.0.1 -maxprocs=200 -maxperip=200 "
            "-nodnslookup -noidentlookup %d /usr/lib/courier/courier/imaplogin "
            "/usr/bin/imapd Maildir &" % self.port,
            "wait $!",
        ]


SYSLOG_RX = r'''
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
try:
    os.unlink(sys.argv[1])
except OSError:
    pass
s.bind(sys.argv[1])
os.chmod(sys.argv[1], 0o666)
f = open(sys.argv[2], "ab", buffering=0)
while True:
    f.write(s.recv(65536).rstrip(b"\0\n") + b"\n")
'''


class CyrusServer(_Server):
    """Cyrus IMAPd 3.6 (master + imapd) with a sasldb."""

    name = "cyrus"

    def setup(self):
        b = self.base
        # Debian's cyrus-common postinst: adduser --system --ingroup mail cyrus
        # (here with a group of its own; nothing depends on the group).
        uid, gid = self.add_account("cyrus", b + "/lib")
        self.uid = uid
        for d in ("lib", "lib/socket", "spool", "sieve", "run", "run/socket", "run/proc",
                  "run/lock"):
            p = os.path.join(b, d)
            os.makedirs(p, exist_ok=True)
            os.chown(p, uid, gid)
        # Debian 12's /etc/imapd.conf, with every path under the base
        # directory (and its services' sockets there too).
        conf = ["configdirectory: %s/lib" % b,
                "proc_path: %s/run/proc" % b,
                "mboxname_lockpath: %s/run/lock" % b,
                "defaultpartition: default",
                "partition-default: %s/spool" % b,
                "altnamespace: no",
                "unixhierarchysep: no",
                "allowanonymouslogin: no",
                "autocreate_quota: 0",
                "umask: 077",
                "sieveusehomedir: false",
                "sievedir: %s/sieve" % b,
                "hashimapspool: true",
                "allowplaintext: yes",
                "sasl_pwcheck_method: auxprop",
                "sasl_auxprop_plugin: sasldb",
                "sasl_sasldb_path: %s/sasldb2" % b,
                "sasl_auto_transition: no",
                "lmtpsocket: %s/run/socket/lmtp" % b,
                "idlesocket: %s/run/socket/idle" % b,
                "notifysocket: %s/run/socket/notify" % b,
                "syslog_prefix: cyrus"]
        if self.tls_cert:
            pem = os.path.join(b, "tls")
            os.makedirs(pem, exist_ok=True)
            for src, dst in zip(self.tls_cert, ("cert.pem", "key.pem")):
                shutil.copy(src, os.path.join(pem, dst))
                os.chown(os.path.join(pem, dst), uid, gid)
            conf += ["tls_server_cert: %s/cert.pem" % pem, "tls_server_key: %s/key.pem" % pem]
        self.conf = os.path.join(b, "imapd.conf")
        with open(self.conf, "w") as f:
            f.write("\n".join(conf) + "\n")
        with open(os.path.join(b, "cyrus.conf"), "w") as f:
            f.write('START {\n  recover cmd="ctl_cyrusdb -r -C %s"\n}\n'
                    'SERVICES {\n  imap cmd="imapd -C %s" listen="127.0.0.1:%d" prefork=0\n}\n'
                    'DAEMON {\n  idled cmd="idled -C %s"\n}\n'
                    'EVENTS {\n}\n' % (self.conf, self.conf, self.port, self.conf))
        with open(os.path.join(b, "syslog_rx.py"), "w") as f:
            f.write(SYSLOG_RX)

    def body(self):
        b = self.base
        lines = ["python3 %s/syslog_rx.py /dev/log %s/syslog.log &" % (b, b),
                 "n=0; while [ ! -S /dev/log ] && [ $n -lt 100 ]; do sleep 0.05; n=$((n+1)); done"]
        for user, pw in self.users.items():
            lines.append("printf '%%s' '%s' | saslpasswd2 -f %s/sasldb2 -p -c '%s'" % (pw, b, user))
        lines += ["chown cyrus %s/sasldb2" % b,
                  "/usr/lib/cyrus/bin/master -D -C %s/imapd.conf -M %s/cyrus.conf "
                  "-p %s/run/master.pid &" % (b, b, b),
                  "wait $!"]
        return lines

    def after_start(self):
        """Log every user in once (creates the INBOX) and APPEND its mail."""
        for user, pw in self.users.items():
            c = imaplib.IMAP4("127.0.0.1", self.port, timeout=15)
            try:
                c.login(user, pw)
                for msg in self.mail.get(user, []):
                    typ, data = c.append("INBOX", None, None, msg)
                    if typ != "OK":
                        raise Fail("cyrus: seeding %s's INBOX: %s %r" % (user, typ, data))
                c.logout()
            except imaplib.IMAP4.error as e:
                raise Fail("cyrus: seeding %s's INBOX: %s\n%s" % (user, e, self.log_text()[-2000:]))


SERVERS = {"courier": CourierServer, "cyrus": CyrusServer}


def main(argv):
    """`prepare`: fetch and unpack (exit 0, or 77 with the reason).
    `run NAME BASE`: start one server with user demo/demo until Ctrl-C."""
    if len(argv) == 2 and argv[1] == "prepare":
        reason = prepare()
        if reason:
            say("legacy servers unavailable: %s" % reason)
            return harness.SKIP
        say("legacy servers ready in %s" % _root())
        return 0
    if len(argv) == 4 and argv[1] == "run" and argv[2] in SERVERS:
        s = SERVERS[argv[2]](argv[3], {"demo": "demo"})
        say("%s on 127.0.0.1:%d (user demo, password demo); Ctrl-C stops it" % (s.name, s.port))
        try:
            while s.proc.alive():
                time.sleep(0.5)
        except KeyboardInterrupt:
            pass
        s.stop()
        return 0
    sys.stderr.write("usage: legacy_servers.py prepare | run courier|cyrus BASE\n")
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
