#!/usr/bin/env python3
"""Shared pieces of the login-routing tests (test_route_*.py); not a test.

Login routing: the proxy answers the client itself before login, takes
LOGIN / AUTHENTICATE, asks where the user lives, then logs in to that
backend for the user.  Everything here is a real server or a real client
except BrokenAuth (no real server misbehaves on demand):

  RouteDovecot     a private Dovecot holding some users, each user's INBOX
                   seeded with one message `Subject: server=NAME user=USER`,
                   optional master user and PROXY-protocol listener
  start_dovecots   several RouteDovecots started side by side
  NginxAuth        a real nginx serving an nginx-mail `auth_http` endpoint
                   from maps only (no script), logging every request
  BrokenAuth       scripted auth endpoints that misbehave (down, slow,
                   close, garbage, huge)
  NginxMail        nginx's mail proxy (the reference implementation of
                   login routing) in front of an auth endpoint
  client_*         imaplib LOGIN, imaplib AUTHENTICATE PLAIN, curl, mbsync:
                   each returns the server the user landed on
  run_client_matrix  every client x every user, checked against the
                   expected server
  login_exchange   byte-exact LOGIN attempts on one connection, recording
                   every reply and whether/when the connection closed
  login_gate       imapgate with `backend.route: login` in a
                   test_guard_common.GuardEnv (test_route_static/hash/input)
  Raw, quick_login, land_all
                   a raw-socket client; one login plus the landed Subject;
                   many of those a few at a time

Python 3 stdlib only; nginx (plus libnginx-mod-mail), curl and isync are
Debian packages (scripts/test installs them).  All waits are bounded.
"""

import imaplib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

import harness
from harness import Fail, check, say

SKIP = harness.SKIP
HOST = "127.0.0.1"
CLIENT_TIMEOUT = 10.0        # seconds for one client run (each socket op / process)
MASTER_SEPARATOR = "*"       # auth_master_user_separator in RouteDovecot
NGINX = "nginx"
NGINX_MAIL_MODULE = "/usr/lib/nginx/modules/ngx_mail_module.so"
INVALID_LOGIN = "Invalid login or password"
BROKEN_KINDS = ("down", "slow", "close", "garbage", "huge")


def missing_tools(*tools):
    """Skip reasons for the tools (nginx, nginx-mail, dovecot, curl, mbsync)
    that are not installed; an empty list when all are there."""
    out = []
    for t in tools:
        if t == "nginx-mail":
            if not os.path.exists(NGINX_MAIL_MODULE):
                out.append("%s missing (apt-get install libnginx-mod-mail)" % NGINX_MAIL_MODULE)
        elif shutil.which(t) is None:
            pkg = {"mbsync": "isync", "dovecot": "dovecot-imapd"}.get(t, t)
            out.append("%s is not installed (apt-get install %s)" % (t, pkg))
    return out


def subject_for(server, user):
    """The Subject seeded into user's INBOX on server."""
    return "server=%s user=%s" % (server, user)


def parse_subject(text, what="message"):
    """(server, user) from a text containing the seeded Subject, or Fail."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    m = re.search(r"(?im)^Subject: *server=(\S+) user=(\S+?)\s*$", text)
    check(m is not None, "%s has no `Subject: server=.. user=..`: %r" % (what, text[:300]))
    return m.group(1), m.group(2)


def plain_user(login):
    """The user a login name logs in as: `alice*master` -> `alice`."""
    return login.split(MASTER_SEPARATOR, 1)[0]


def _safe(value, what, extra=""):
    """value if it is printable ASCII without `"`, `\\`, `$`, `'` or extra."""
    bad = [ch for ch in value if not (" " <= ch <= "~") or ch in "\"\\$'" + extra]
    if bad or not value:
        raise ValueError("%s %r: empty or has characters the test configs do not "
                         "quote (%r)" % (what, value, "".join(sorted(set(bad)))))
    return value


# ------------------------------------------------------------------ Dovecot

class RouteDovecot:
    """A real Dovecot on a free 127.0.0.1 port holding `users` (user ->
    password; `name@domain` allowed).  Each user's INBOX holds one message,
    Subject `server=NAME user=USER`, so a client can tell where it landed.

    master=(user, password): a master passdb with auth_master_user_separator
    `*`: `LOGIN "alice*user" password` and AUTHENTICATE PLAIN with authzid
    alice, authcid user both log in as alice.
    haproxy: the listener wants a PROXY header (v1 or v2) from 127.0.0.0/8
    first (Dovecot then sends no greeting until the header came).
    auth_failure_delay: seconds Dovecot waits before a failed login's NO
    (its default is 2; 0 here keeps tests fast).

    Cheap on purpose (3-6 run at once on two cores): no TLS, no stats
    process, no fsync, one login process shared by all clients.
    """

    def __init__(self, base, name, users, master=None, haproxy=False,
                 auth_failure_delay=0):
        check(re.match(r"^[A-Za-z0-9_.-]+$", name) is not None, "bad server name %r" % name)
        for u, p in users.items():
            _safe(u, "user", ": *%/")
            _safe(p, "password", ":")
        self.base = base
        self.name = name
        self.users = dict(users)
        self.master = master
        self.haproxy = haproxy
        self.port = harness.free_port()
        self.proc = None
        mail = {u: [harness.make_message(subject_for(name, u), seed=i + 1, to=u)]
                for i, u in enumerate(users)}
        self.conf = harness.setup_dovecot_dir(base, self.port, mail, users=self.users)
        if auth_failure_delay == 0:
            self._nodelay_passwd(base)
        with open(self.conf) as f:
            text = f.read()
        text = _sub_once(text, "auth_failure_delay = 0\n",
                         "auth_failure_delay = %gs\n" % auth_failure_delay)
        text += ("\n# test_route_common.RouteDovecot: keep it cheap.\n"
                 "mail_fsync = never\n"
                 "stats_writer_socket_path =\n")
        if master:
            muser, mpw = master
            _safe(muser, "master user", ": *%/")
            _safe(mpw, "master password", ":")
            mfile = os.path.join(base, "master-passwd")
            with open(mfile, "w") as f:
                f.write("%s:{PLAIN}%s::::::%s\n"
                        % (muser, mpw, "nodelay=y" if auth_failure_delay == 0 else ""))
            import pwd
            internal = harness.dovecot_accounts()[0]
            os.chown(mfile, os.geteuid(), pwd.getpwnam(internal).pw_gid)
            os.chmod(mfile, 0o640)
            # pass = yes: after the master password matched, the normal
            # passdb must still know the user being logged in as.
            text = _sub_once(text, "passdb {\n",
                             "auth_master_user_separator = %s\n"
                             "passdb {\n"
                             "  driver = passwd-file\n"
                             "  master = yes\n"
                             "  pass = yes\n"
                             "  args = scheme=PLAIN username_format=%%u %s\n"
                             "}\n"
                             "passdb {\n" % (MASTER_SEPARATOR, mfile))
        if auth_failure_delay == 0:
            # Dovecot queues every failure for a 500 ms timer even with
            # auth_failure_delay = 0, unless the passdb answers `nodelay`:
            # the passwd-file lines carry it (wrong password), and a last
            # passdb fails every user the file does not know, also nodelay.
            text = _sub_once(text, "userdb {\n",
                             "passdb {\n"
                             "  driver = static\n"
                             "  args = nopassword=y nodelay=y\n"
                             "  result_success = return-fail\n"
                             "}\n"
                             "userdb {\n")
        if haproxy:
            text = _sub_once(text, "    port = %d\n" % self.port,
                             "    port = %d\n    haproxy = yes\n" % self.port)
            text += "haproxy_trusted_networks = 127.0.0.0/8\n"
        with open(self.conf, "w") as f:
            f.write(text)

    def _nodelay_passwd(self, base):
        """Add the nodelay extra field to every line of base/passwd."""
        path = os.path.join(base, "passwd")
        with open(path) as f:
            lines = f.read().splitlines()
        with open(path, "w") as f:
            for line in lines:
                f.write(line + ":nodelay=y\n" if line.endswith(":::::") else line + "\n")

    def spawn(self):
        """Start `dovecot -F` without waiting (see ready())."""
        self.proc = harness.Proc("dovecot-" + self.name, ["dovecot", "-F", "-c", self.conf],
                                 os.path.join(self.base, "dovecot.out"))
        return self

    def ready(self, timeout=harness.START_TIMEOUT):
        """Wait until it accepts (and greets, unless it wants a PROXY header)."""
        harness.wait_port(self.port, self.proc, timeout=timeout, greeting=not self.haproxy)
        return self

    def start(self):
        """spawn() and ready()."""
        return self.spawn().ready()

    def log_text(self):
        """Dovecot's log file plus what it printed."""
        out = ""
        for name in ("dovecot.out", "dovecot.log"):
            try:
                with open(os.path.join(self.base, name), "rb") as f:
                    out += f.read().decode("utf-8", "replace")
            except OSError:
                pass
        return out

    def logins(self):
        """The `imap-login: Login: user=<..>` users in its log, in order."""
        return re.findall(r"imap-login: (?:Info: )?Login: user=<([^>]*)>", self.log_text())

    def stop(self):
        """Stop the master and all its children."""
        if self.proc:
            self.proc.stop()


def _sub_once(text, old, new):
    """text with old replaced by new; Fail unless old occurs exactly once."""
    n = text.count(old)
    check(n == 1, "config template: %r occurs %d times, want 1" % (old, n))
    return text.replace(old, new)


def start_dovecots(base, specs):
    """Start several RouteDovecots side by side; returns them in order.

    specs: list of (name, users) or (name, users, kwargs) tuples.  Each gets
    base/NAME.  All are spawned first, then waited for (in parallel, so three
    cost about as much as one); on a failure every one is stopped.
    """
    out = []
    try:
        for spec in specs:
            name, users = spec[0], spec[1]
            kw = spec[2] if len(spec) > 2 else {}
            out.append(RouteDovecot(os.path.join(base, name), name, users, **kw).spawn())
        for d in out:
            d.ready()
    except Exception:
        for d in out:
            d.stop()
        raise
    return out


# ------------------------------------------------------------------- nginx

def mail_auth_escape(s):
    """What nginx mail sends in Auth-User / Auth-Pass for s: bytes 0x00-0x20
    and `%` as %XX (NGX_ESCAPE_MAIL_AUTH); everything else as is."""
    out = []
    for b in s.encode("utf-8"):
        out.append("%%%02X" % b if b <= 0x20 or b == 0x25 else chr(b))
    return "".join(out)


def _rx_key(s):
    """A quoted nginx map key: a case-sensitive exact regex for s (nginx
    compares plain map strings without regard to case)."""
    return '"~^%s$"' % re.escape(s)


class _Nginx:
    """One nginx process run in the foreground (daemon off, master_process
    off: a single process), everything under base."""

    def __init__(self, base, name):
        self.base = base
        self.name = name
        os.makedirs(base, exist_ok=True)
        self.conf = os.path.join(base, "nginx.conf")
        self.errlog = os.path.join(base, "error.log")
        self.proc = None

    def head(self):
        """Top-level directives every instance shares."""
        return ("# Generated by test_route_common.py (%s).\n"
                "daemon off;\n"
                "master_process off;\n"
                "pid %s/nginx.pid;\n"
                "error_log %s info;\n"
                "events {\n    worker_connections 256;\n}\n"
                % (self.name, self.base, self.errlog))

    def _argv(self):
        return [NGINX, "-p", self.base + "/", "-e", self.errlog, "-c", self.conf]

    def write(self, text):
        """Write the config and have `nginx -t` check it (Fail with its output)."""
        with open(self.conf, "w") as f:
            f.write(text)
        r = subprocess.run(self._argv() + ["-t", "-q"], capture_output=True,
                           timeout=harness.START_TIMEOUT)
        if r.returncode != 0:
            raise Fail("nginx -t rejected %s:\n%s%s\n%s" % (
                self.conf, r.stdout.decode(), r.stderr.decode(), text))

    def spawn(self):
        """Start nginx in the foreground as a harness.Proc."""
        self.proc = harness.Proc(self.name, self._argv(), os.path.join(self.base, "nginx.out"))
        return self

    def log_text(self):
        """nginx's error log plus what it printed."""
        out = ""
        for path in (os.path.join(self.base, "nginx.out"), self.errlog):
            try:
                with open(path, "rb") as f:
                    out += f.read().decode("utf-8", "replace")
            except OSError:
                pass
        return out

    def stop(self):
        """SIGTERM (then SIGKILL) nginx."""
        if self.proc:
            self.proc.stop()


class NginxAuth(_Nginx):
    """A real nginx serving nginx mail's `auth_http` protocol from maps only.

    routes: user -> (password, backend_port); the backend host is 127.0.0.1.
    A matching user and password gets `Auth-Status: OK`, `Auth-Server`,
    `Auth-Port`; anything else `Auth-Status: Invalid login or password` and
    `Auth-Wait: 0` (nginx mail then says NO and closes; wait gives other
    values per user, e.g. {"ghost": 1} lets that user retry after 1 s).
    overrides: user -> (login, password) sent as `Auth-User` / `Auth-Pass`,
    so the proxy logs in to the backend as someone else (a master user).
    keepalive: (keepalive_timeout, keepalive_requests) for clients that keep
    connections (nginx mail never does), e.g. ("2s", 10); None: nginx's.
    fail: user -> Auth-Status error text whatever the password, or one text
    for every request.

    Matching is exact and case-sensitive on the escaped values nginx mail
    sends (see mail_auth_escape).  Every request is logged to base/auth.log
    (never the password); requests() parses it.
    """

    def __init__(self, base, routes, fail=None, overrides=None, wait=None, name="nginx-auth",
                 keepalive=None):
        super().__init__(base, name)
        self.port = harness.free_port()
        self.routes = dict(routes)
        self.overrides = dict(overrides or {})
        self.authlog = os.path.join(base, "auth.log")
        tmp = os.path.join(base, "tmp")
        os.makedirs(tmp, exist_ok=True)
        if isinstance(fail, str):
            fail = {None: fail}
        fail = dict(fail or {})
        wait = dict(wait or {})

        ids, hosts, ports, users, passes, statuses, waits = [], [], [], [], [], [], []
        # Forced failures first: nginx tries map regexes in order.
        for n, (user, text) in enumerate(fail.items()):
            rid = "f%d" % n
            _safe(text, "fail text")
            key = '"~^"' if user is None else '"~^%s:"' % re.escape(
                mail_auth_escape(_safe(user, "user", ":")))
            ids.append("        %s %s;\n" % (key, rid))
            statuses.append('        %s "%s";\n' % (rid, text))
        for n, (user, (pw, port)) in enumerate(self.routes.items()):
            rid = "r%d" % n
            key = "%s:%s" % (mail_auth_escape(_safe(user, "user", ":")),
                             mail_auth_escape(_safe(pw, "password")))
            ids.append("        %s %s;\n" % (_rx_key(key), rid))
            hosts.append("        %s %s;\n" % (rid, HOST))
            ports.append("        %s %d;\n" % (rid, int(port)))
            if user in self.overrides:
                lu, lp = self.overrides[user]
                users.append('        %s "%s";\n' % (rid, _safe(lu, "Auth-User")))
                passes.append('        %s "%s";\n' % (rid, _safe(lp, "Auth-Pass")))
        for user, secs in wait.items():
            waits.append("        %s %d;\n"
                         % (_rx_key(mail_auth_escape(_safe(user, "user"))), int(secs)))

        log_fields = ("user:$http_auth_user method:$http_auth_method "
                      "protocol:$http_auth_protocol client_ip:$http_client_ip "
                      "client_host:$http_client_host attempt:$http_auth_login_attempt "
                      "ssl:$http_auth_ssl salt:$http_auth_salt "
                      "status:$auth_status route:$route_id request:$request "
                      "msec:$msec conn:$connection conn_requests:$connection_requests")
        fmt = "{" + ",".join('"%s":"%s"' % tuple(x.split(":", 1)) for x in log_fields.split()) + "}"
        text = self.head() + (
            "http {\n"
            "    client_body_temp_path %(tmp)s/body;\n"
            "    proxy_temp_path %(tmp)s/proxy;\n"
            "    fastcgi_temp_path %(tmp)s/fastcgi;\n"
            "    uwsgi_temp_path %(tmp)s/uwsgi;\n"
            "    scgi_temp_path %(tmp)s/scgi;\n"
            "    default_type text/plain;\n"
            "    server_tokens off;\n%(keepalive)s"
            "    # One JSON object per auth request; Auth-Pass is never logged.\n"
            "    log_format auth escape=json '%(fmt)s';\n"
            "    access_log %(authlog)s auth;\n"
            "    # Which route (rN), forced failure (fN) or nothing (\"\") a\n"
            "    # user:password pair gets; regexes, because plain map strings\n"
            "    # match without regard to case.\n"
            "    map \"$http_auth_user:$http_auth_pass\" $route_id {\n"
            "        default \"\";\n%(ids)s    }\n"
            "    map $route_id $auth_status {\n"
            "        default OK;\n"
            "        \"\" \"%(invalid)s\";\n%(statuses)s    }\n"
            "    map $route_id $route_host {\n        default \"\";\n%(hosts)s    }\n"
            "    map $route_id $route_port {\n        default \"\";\n%(ports)s    }\n"
            "    map $route_id $route_user {\n        default \"\";\n%(users)s    }\n"
            "    map $route_id $route_pass {\n        default \"\";\n%(passes)s    }\n"
            "    map $http_auth_user $user_wait {\n        default 0;\n%(waits)s    }\n"
            "    map $route_id $auth_wait {\n        default $user_wait;\n"
            "        \"~^r\" \"\";\n    }\n"
            "    server {\n"
            "        listen %(host)s:%(port)d;\n"
            "        location / {\n"
            "            # add_header leaves out a header whose value is empty.\n"
            "            add_header Auth-Status $auth_status;\n"
            "            add_header Auth-Server $route_host;\n"
            "            add_header Auth-Port $route_port;\n"
            "            add_header Auth-User $route_user;\n"
            "            add_header Auth-Pass $route_pass;\n"
            "            add_header Auth-Wait $auth_wait;\n"
            "            return 204;\n"
            "        }\n"
            "    }\n"
            "}\n") % {
                "tmp": tmp, "fmt": fmt, "authlog": self.authlog, "ids": "".join(ids),
                "invalid": INVALID_LOGIN, "statuses": "".join(statuses),
                "hosts": "".join(hosts), "ports": "".join(ports), "users": "".join(users),
                "passes": "".join(passes), "waits": "".join(waits), "host": HOST,
                "port": self.port,
                "keepalive": "" if keepalive is None else
                "    keepalive_timeout %s;\n    keepalive_requests %d;\n" % keepalive}
        self.write(text)

    @property
    def url(self):
        """The endpoint as nginx mail's auth_http wants it (host:port/uri)."""
        return "%s:%d/auth" % (HOST, self.port)

    @property
    def http_url(self):
        """The endpoint as an http:// URL."""
        return "http://%s:%d/auth" % (HOST, self.port)

    def start(self):
        """Start nginx and wait until its port accepts."""
        self.spawn()
        harness.wait_port(self.port, self.proc)
        return self

    def requests(self):
        """Every auth request so far, oldest first, as dicts (user, method,
        protocol, client_ip, client_host, attempt, ssl, salt, status, route,
        request, msec, conn: nginx's connection serial number, conn_requests:
        requests on that connection so far)."""
        try:
            with open(self.authlog, "rb") as f:
                lines = f.read().decode("utf-8", "replace").splitlines()
        except OSError:
            return []
        return [json.loads(x) for x in lines if x.strip()]

    def ask(self, user, password, timeout=5.0):
        """Ask the endpoint directly like nginx mail would; returns the
        response headers as a dict (lower-case names)."""
        req = ("GET /auth HTTP/1.0\r\nHost: localhost\r\nAuth-Method: plain\r\n"
               "Auth-User: %s\r\nAuth-Pass: %s\r\nAuth-Protocol: imap\r\n"
               "Auth-Login-Attempt: 1\r\nClient-IP: 127.0.0.1\r\n\r\n"
               % (mail_auth_escape(user), mail_auth_escape(password)))
        data = _http_exchange(self.port, req.encode(), timeout)
        head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
        check(head and head[0].startswith("HTTP/1."), "not HTTP: %r" % data[:200])
        return {k.strip().lower(): v.strip() for k, v in
                (x.split(":", 1) for x in head[1:] if ":" in x)}


def _http_exchange(port, request, timeout):
    """Send request, read until close (at most 1 MiB)."""
    end = time.monotonic() + timeout
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while len(data) < (1 << 20) and time.monotonic() < end:
            s.settimeout(max(0.05, end - time.monotonic()))
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    return data


class BrokenAuth:
    """A scripted auth_http endpoint that misbehaves; no nginx.

    kinds: down (a free port nobody listens on), slow (accepts, reads the
    request, never answers), close (sends part of the headers, closes
    close_pause seconds later), garbage (answers bytes that are not HTTP),
    huge (1 MiB of headers, then a valid OK).  requests() gives what each
    connection sent.  At most max_conns connections are served, each held at
    most hold seconds; stop() ends everything within a second.
    """

    HUGE = 1 << 20

    def __init__(self, kind, max_conns=32, hold=30.0, close_pause=0.2):
        check(kind in BROKEN_KINDS, "unknown BrokenAuth kind %r" % kind)
        self.kind = kind
        self.close_pause = close_pause
        self.max_conns = max_conns
        self.hold = hold
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._conns = []
        self._threads = []
        self._requests = []
        self.accepted = 0
        self.sock = None
        if kind == "down":
            self.port = harness.free_port()
            return
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((HOST, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        t = threading.Thread(target=self._accept_loop, daemon=True)
        t.start()
        self._threads.append(t)

    @property
    def url(self):
        """host:port/uri for nginx mail's auth_http."""
        return "%s:%d/auth" % (HOST, self.port)

    def requests(self):
        """The request heads received (Auth-Pass values replaced by ***)."""
        with self._lock:
            return list(self._requests)

    def _accept_loop(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            with self._lock:
                self.accepted += 1
                if self.accepted > self.max_conns or self._stop.is_set():
                    conn.close()
                    continue
                self._conns.append(conn)
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _read_request(self, conn):
        conn.settimeout(0.2)
        data = b""
        end = time.monotonic() + 5.0
        while b"\r\n\r\n" not in data and len(data) < 65536 and time.monotonic() < end \
                and not self._stop.is_set():
            try:
                chunk = conn.recv(4096)
            except socket.timeout:
                continue
            if not chunk:
                break
            data += chunk
        head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        with self._lock:
            self._requests.append(re.sub(r"(?im)^(Auth-Pass:)[^\r\n]*", r"\1 ***", head))

    def _serve(self, conn):
        try:
            self._read_request(conn)
            conn.settimeout(5.0)
            if self.kind == "slow":
                self._stop.wait(self.hold)
            elif self.kind == "close":
                conn.sendall(b"HTTP/1.0 200 OK\r\nAuth-Status: OK\r\nAuth-Ser")
                # The close apart from the bytes: nginx 1.22 reads once per
                # (edge-triggered) event, so a FIN that came with the data
                # is often missed and it waits for auth_http_timeout.
                self._stop.wait(self.close_pause)
            elif self.kind == "garbage":
                conn.sendall(b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03"
                             b"\x00\xff\xfe SSH-2.0-not-http \x00\r\n\r\n")
            elif self.kind == "huge":
                conn.sendall(b"HTTP/1.0 200 OK\r\n")
                line = b"X-Filler-%06d: " + b"a" * 100 + b"\r\n"
                sent, n = 0, 0
                while sent < self.HUGE and not self._stop.is_set():
                    chunk = b"".join(line % (n + i) for i in range(64))
                    conn.sendall(chunk)
                    sent += len(chunk)
                    n += 64
                conn.sendall(b"Auth-Status: OK\r\nAuth-Server: 127.0.0.1\r\n"
                             b"Auth-Port: 1\r\n\r\n")
        except OSError:
            pass                    # the peer gave up: that is the point
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def stop(self):
        """Close the listener and every connection; join the threads (bounded)."""
        self._stop.set()
        if self.sock is not None:
            self.sock.close()
        with self._lock:
            for c in self._conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        for t in self._threads:
            t.join(timeout=2.0)


class NginxMail(_Nginx):
    """nginx's mail proxy for IMAP on a free 127.0.0.1 port, asking auth_url
    (host:port/uri) where each user goes: the reference behaviour for login
    routing.  Plaintext on both legs: nginx mail has no TLS to the backend
    at all (backend_tls=True is refused), and the client side is kept plain
    for simplicity.

    auth_timeout: auth_http_timeout in seconds (nginx's default is 60).
    proxy_protocol: send a PROXY v1 header to the backend (for a
    RouteDovecot(haproxy=True)).
    """

    def __init__(self, base, auth_url, backend_tls=False, auth_timeout=3,
                 proxy_protocol=False, name="nginx-mail"):
        if backend_tls:
            raise Fail("nginx mail cannot use TLS to the backend (it has no such option)")
        super().__init__(base, name)
        self.port = harness.free_port()
        self.auth_url = auth_url
        text = self.head().replace(
            "daemon off;", "load_module %s;\ndaemon off;" % NGINX_MAIL_MODULE, 1) + (
            "mail {\n"
            "    server_name imapgate-route-test;\n"
            "    auth_http %(url)s;\n"
            "    auth_http_timeout %(auth_timeout)ds;\n"
            "    proxy_pass_error_message on;\n"
            "    imap_auth login plain;\n"
            "    timeout 30s;\n"
            "    proxy_timeout 60s;\n"
            "    # No TLS anywhere: nginx mail cannot speak TLS to a backend, and\n"
            "    # the client side stays plain to keep the fixture simple.\n"
            "    server {\n"
            "        listen %(host)s:%(port)d;\n"
            "        protocol imap;\n"
            "%(pp)s"
            "    }\n"
            "}\n") % {"url": auth_url, "auth_timeout": auth_timeout, "host": HOST,
                      "port": self.port,
                      "pp": "        proxy_protocol on;\n" if proxy_protocol else ""}
        self.write(text)

    def start(self):
        """Start nginx and wait for its IMAP greeting."""
        self.spawn()
        harness.wait_port(self.port, self.proc, greeting=True)
        return self


# ----------------------------------------------------------------- clients

def _imap_quote(s):
    """s as an IMAP quoted string (imaplib sends LOGIN's user unquoted)."""
    return '"%s"' % s.replace("\\", "\\\\").replace('"', '\\"')


def landed_user(conn):
    """(server, user) from INBOX message 1's Subject on a logged-in imaplib
    connection."""
    typ, data = conn.select("INBOX", readonly=True)
    check(typ == "OK", "SELECT INBOX -> %s %r" % (typ, data))
    typ, data = conn.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    check(typ == "OK", "FETCH 1 -> %s %r" % (typ, data))
    text = b"".join(x[1] for x in data if isinstance(x, tuple))
    return parse_subject(text, "FETCH 1 header")


def landed(conn):
    """The server name an imaplib connection landed on (from the Subject)."""
    return landed_user(conn)[0]


def _expect_user(got, want, how):
    check(got == want, "%s: landed in %r's mailbox, want %r" % (how, got, want))


def client_imaplib(port, user, password, timeout=CLIENT_TIMEOUT):
    """imaplib: LOGIN, SELECT INBOX, FETCH 1 Subject, LOGOUT; the server name."""
    try:
        conn = imaplib.IMAP4(HOST, port, timeout=timeout)
    except (OSError, imaplib.IMAP4.error) as e:
        raise Fail("imaplib: connect/greeting on %d: %s" % (port, e))
    try:
        try:
            conn.login(_imap_quote(user), password)
        except imaplib.IMAP4.error as e:
            raise Fail("imaplib LOGIN %s refused: %s" % (user, e))
        server, who = landed_user(conn)
        _expect_user(who, plain_user(user), "imaplib LOGIN %s" % user)
        conn.logout()
        return server
    except (OSError, imaplib.IMAP4.abort) as e:
        raise Fail("imaplib LOGIN %s: connection failed: %s" % (user, e))
    finally:
        try:
            conn.shutdown()
        except OSError:
            pass


def client_imaplib_auth_plain(port, user, password, timeout=CLIENT_TIMEOUT, authzid=""):
    """imaplib: AUTHENTICATE PLAIN (authzid, user, password) without SASL-IR,
    then as client_imaplib; the server name."""
    try:
        conn = imaplib.IMAP4(HOST, port, timeout=timeout)
    except (OSError, imaplib.IMAP4.error) as e:
        raise Fail("imaplib: connect/greeting on %d: %s" % (port, e))
    how = "AUTHENTICATE PLAIN %s%s" % (user, " as " + authzid if authzid else "")
    try:
        blob = ("%s\0%s\0%s" % (authzid, user, password)).encode()
        try:
            conn.authenticate("PLAIN", lambda _challenge: blob)
        except imaplib.IMAP4.error as e:
            raise Fail("imaplib %s refused: %s" % (how, e))
        server, who = landed_user(conn)
        _expect_user(who, authzid or plain_user(user), "imaplib " + how)
        conn.logout()
        return server
    except (OSError, imaplib.IMAP4.abort) as e:
        raise Fail("imaplib %s: connection failed: %s" % (how, e))
    finally:
        try:
            conn.shutdown()
        except OSError:
            pass


def client_curl(port, user, password, timeout=CLIENT_TIMEOUT, mech=None):
    """curl imap://127.0.0.1:PORT/INBOX;MAILINDEX=1 -u user:password; the
    server name.  curl prefers SASL: AUTHENTICATE PLAIN (with SASL-IR when
    offered); mech="LOGIN" makes it AUTHENTICATE LOGIN.  curl 7.88 cannot be
    made to send the LOGIN command while AUTH= is offered (`AUTH=+LOGIN`
    is refused with exit 3).  Its FETCH is BODY[] (sets \\Seen)."""
    check(":" not in user, "curl -u cannot carry a user with a colon: %r" % user)
    url = "imap://%s:%d/INBOX;MAILINDEX=1" % (HOST, port)
    argv = ["curl", "-sS", "--max-time", str(int(timeout)), "--connect-timeout", "5",
            "-u", "%s:%s" % (user, password), url]
    if mech:
        argv[1:1] = ["--login-options", "AUTH=" + mech]
    try:
        r = subprocess.run(argv, capture_output=True, timeout=timeout + 5)
    except subprocess.TimeoutExpired:
        raise Fail("curl %s: no answer in %.0fs" % (user, timeout + 5))
    if r.returncode != 0:
        raise Fail("curl %s: exit %d: %s" % (user, r.returncode,
                                             r.stderr.decode("utf-8", "replace").strip()))
    server, who = parse_subject(r.stdout, "curl's message 1")
    _expect_user(who, plain_user(user), "curl %s" % user)
    return server


def mbsync_config(port, user, password, maildir, timeout=CLIENT_TIMEOUT, mech="LOGIN"):
    """An mbsync (isync 1.4) config pulling the remote INBOX into maildir.

    isync 1.4 says SSLType (1.5 renamed it TLSType) and Far/Near.  Without
    `SSLType None` it wants STARTTLS and fails on a server that offers none
    ("IMAP error: SSL support not available"); with it, it logs in in the
    clear without complaint.  mech LOGIN sends the LOGIN command (and warns
    "Password is being sent in the clear"); PLAIN (or `*`, the default,
    which picks PLAIN here) goes through Cyrus SASL's PLAIN plugin
    (libsasl2-modules) as AUTHENTICATE PLAIN."""
    _safe(user, "user")
    _safe(password, "password")
    return ("IMAPAccount acct\n"
            "Host %s\nPort %d\nUser \"%s\"\nPass \"%s\"\n"
            "SSLType None\nAuthMechs %s\nTimeout %d\n\n"
            "IMAPStore remote\nAccount acct\n\n"
            "MaildirStore local\nPath %s/\nInbox %s/INBOX\n\n"
            "Channel inbox\nFar :remote:\nNear :local:\nPatterns INBOX\n"
            "Create Near\nSync Pull\nExpunge None\nSyncState *\n"
            % (HOST, port, user, password, mech, max(1, int(timeout)), maildir, maildir))


def client_mbsync(port, user, password, timeout=CLIENT_TIMEOUT, base=None, mech="LOGIN"):
    """mbsync: sync the remote INBOX to a fresh local Maildir (under base, or a
    temp dir removed afterwards), then read the Subject of the one message
    synced; the server name.  mech: see mbsync_config."""
    work = tempfile.mkdtemp(prefix="mbsync-", dir=base)
    try:
        maildir = os.path.join(work, "Mail")
        os.makedirs(maildir)
        conf = os.path.join(work, "mbsyncrc")
        with open(conf, "w") as f:
            f.write(mbsync_config(port, user, password, maildir, timeout, mech))
        os.chmod(conf, 0o600)
        argv = ["mbsync", "-c", conf, "inbox"]
        try:
            r = subprocess.run(argv, capture_output=True, timeout=timeout + 5,
                               env=dict(os.environ, HOME=work))
        except subprocess.TimeoutExpired:
            raise Fail("mbsync %s: no result in %.0fs" % (user, timeout + 5))
        out = (r.stdout + r.stderr).decode("utf-8", "replace").strip()
        if r.returncode != 0:
            raise Fail("mbsync %s: exit %d: %s" % (user, r.returncode, out))
        files = []
        for sub in ("new", "cur"):
            d = os.path.join(maildir, "INBOX", sub)
            if os.path.isdir(d):
                files += [os.path.join(d, x) for x in sorted(os.listdir(d))]
        check(len(files) == 1, "mbsync %s: %d messages synced, want 1 (%s)"
              % (user, len(files), out))
        with open(files[0], "rb") as f:
            server, who = parse_subject(f.read(), "mbsync's synced message")
        _expect_user(who, plain_user(user), "mbsync %s" % user)
        return server
    finally:
        shutil.rmtree(work, ignore_errors=True)


def client_curl_auth_login(port, user, password, timeout=CLIENT_TIMEOUT):
    """client_curl with AUTHENTICATE LOGIN (user and password in two steps)."""
    return client_curl(port, user, password, timeout, mech="LOGIN")


# name -> client(port, user, password); client_mbsync also takes base=.
# What each sends to log in: imaplib-login the LOGIN command (user quoted),
# imaplib-plain AUTHENTICATE PLAIN then the blob after `+` (no SASL-IR),
# curl AUTHENTICATE PLAIN with SASL-IR when offered (else after `+`),
# curl-authlogin AUTHENTICATE LOGIN, mbsync LOGIN and pipelined commands.
CLIENTS = {
    "imaplib-login": client_imaplib,
    "imaplib-plain": client_imaplib_auth_plain,
    "curl": client_curl,
    "curl-authlogin": client_curl_auth_login,
    "mbsync": client_mbsync,
}


def run_client_matrix(port, users, clients=None, base=None, log=say):
    """Run every client (names from CLIENTS; default all) for every user
    against 127.0.0.1:port.  users: user -> (password, expected server
    name).  Returns [(client, user, server, seconds)]; Fail listing every
    mismatch once all ran."""
    results, problems = [], []
    for cname in (clients or list(CLIENTS)):
        fn = CLIENTS[cname]
        for user, (pw, want) in users.items():
            t0 = time.monotonic()
            try:
                got = fn(port, user, pw, base=base) if fn is client_mbsync else fn(port, user, pw)
            except Fail as e:
                got = None
                problems.append("%s %s: %s" % (cname, user, e))
            secs = time.monotonic() - t0
            results.append((cname, user, got, secs))
            if got is not None and got != want:
                problems.append("%s %s: landed on %s, want %s" % (cname, user, got, want))
            if log:
                log("   %-14s %-14s -> %-8s %.3fs" % (cname, user, got, secs))
    if problems:
        raise Fail("client matrix: %d problems:\n  %s" % (len(problems), "\n  ".join(problems)))
    return results


# ------------------------------------------------------- byte-exact logins

def login_exchange(port, attempts, timeout=CLIENT_TIMEOUT, linger=0.5):
    """LOGIN attempts on one plaintext connection, byte-exact.

    attempts: [(user, password)], sent one after the other on the same
    connection, each after the previous one's reply.  Returns a dict:
    greeting (bytes), replies ([(tag, everything received for it (bytes),
    seconds)]), closed (None, or ("eof" or "reset", how many attempts had
    their tagged reply before the close)), seconds (total).  An attempt
    sent after the close is listed with b"".  After the last reply it waits
    linger seconds to see whether the server closes.  Never waits more than
    timeout per step.
    """
    out = {"greeting": b"", "replies": [], "closed": None, "seconds": 0.0}
    t0 = time.monotonic()
    s = socket.create_connection((HOST, port), timeout=timeout)
    buf = bytearray()

    def fill(deadline):
        """Read more; False on EOF/reset (recorded), None on timeout."""
        s.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = s.recv(65536)
        except socket.timeout:
            return None
        except ConnectionResetError:
            out["closed"] = ("reset", len(out["replies"]))
            return False
        if not data:
            out["closed"] = ("eof", len(out["replies"]))
            return False
        buf.extend(data)
        return True

    try:
        deadline = time.monotonic() + timeout
        while b"\r\n" not in buf:
            r = fill(deadline)
            if not r:
                break
        i = buf.find(b"\r\n")
        out["greeting"] = bytes(buf[:i + 2]) if i >= 0 else bytes(buf)
        del buf[:i + 2 if i >= 0 else len(buf)]
        for n, (user, pw) in enumerate(attempts):
            if out["closed"]:
                break
            tag = "L%d" % (n + 1)
            a0 = time.monotonic()
            try:
                s.sendall(("%s LOGIN %s %s\r\n"
                           % (tag, _imap_quote(user), _imap_quote(pw))).encode())
            except OSError:
                out["closed"] = ("reset", len(out["replies"]))
                break
            got = bytearray()
            deadline = time.monotonic() + timeout
            tagged = re.compile(rb"(^|\r\n)%s [^\r\n]*\r\n" % tag.encode())
            while True:
                got.extend(buf)
                buf.clear()
                if tagged.search(got) or out["closed"]:
                    break
                r = fill(deadline)
                if r is None:
                    break           # timeout: recorded by what is missing
                if r is False:
                    got.extend(buf)
                    buf.clear()
                    break
            out["replies"].append((tag, bytes(got), time.monotonic() - a0))
        if not out["closed"]:
            end = time.monotonic() + linger
            while time.monotonic() < end:
                r = fill(end)
                if r is False:
                    break
                if r is None:
                    break
                # bytes after the last reply (e.g. an untagged BYE): keep them
                if out["replies"]:
                    tag, got, secs = out["replies"][-1]
                    out["replies"][-1] = (tag, got + bytes(buf), secs)
                buf.clear()
    finally:
        s.close()
    out["seconds"] = time.monotonic() - t0
    return out


# ---------------------------------------------------------------- test env

class RouteEnv:
    """A temp dir and the servers a routing test started (anything with
    .stop()), stopped at exit.  The imapgate-side tests may use
    test_guard_common.GuardEnv instead and put these in env.backends."""

    def __init__(self, prefix="imapgate-route-"):
        self.tmp = tempfile.mkdtemp(prefix=prefix)
        os.chmod(self.tmp, 0o755)
        self.things = []
        self.cleaned = False
        import atexit
        atexit.register(self.cleanup)

    def add(self, thing):
        """Register thing (stopped at cleanup); returns it."""
        self.things.append(thing)
        return thing

    def dir(self, name):
        """A fresh directory under the temp dir."""
        d = os.path.join(self.tmp, name)
        os.makedirs(d, exist_ok=True)
        return d

    def dump_logs(self, tail=2500):
        """Print the tail of every registered server's log."""
        for t in self.things:
            if hasattr(t, "log_text"):
                say("---- %s log (tail) ----\n%s" % (getattr(t, "name", t), t.log_text()[-tail:]))

    def cleanup(self):
        """Stop everything (newest first) and remove the temp dir (once)."""
        if self.cleaned:
            return
        self.cleaned = True
        for t in reversed(self.things):
            try:
                t.stop()
            except Exception:       # best effort: the next one must still stop
                traceback.print_exc(file=sys.stdout)
        if os.environ.get("IMAPGATE_TEST_KEEP") == "1":
            say("kept %s" % self.tmp)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)


def run(env, tests, started=None):
    """Run (name, fn(env)) pairs; print results and timings (total since
    started, a time.monotonic() value); exit 0/1/77."""
    failed, skipped = [], 0
    t_all = time.monotonic() if started is None else started
    for name, fn in tests:
        r = harness.run_one(env, name, fn)
        if r == "fail":
            failed.append(name)
        skipped += r == "skip"
    if failed:
        env.dump_logs()
        say("FAILED: %s" % ", ".join(failed))
    else:
        say("all %d checks passed%s in %.1fs" % (
            len(tests) - skipped, ", %d skipped" % skipped if skipped else "",
            time.monotonic() - t_all))
    env.cleanup()
    sys.exit(1 if failed else (SKIP if skipped == len(tests) else 0))


# ------------------------------------------------- imapgate with route: login

def login_gate_config(port, servers, lookup, backend="", extra="", tls="none", listen="",
                      certs=None, level="info", metrics_port=None):
    """imapgate YAML for `backend.route: login`: one listener on 127.0.0.1:port
    (tls mode, plus listen lines 4-space indented), the pool servers (ports,
    or (port, "weight: 2") pairs), `lookup` as a flow mapping text (e.g.
    "{type: static, file: /x}"), more backend lines (2-space indented),
    certificates [(cert, key)], log level, metrics on metrics_port, extra
    top-level YAML."""
    text = "listen:\n  - address: %s:%d\n    tls: %s\n%s" % (HOST, port, tls, listen)
    if certs:
        text += "tls:\n  certificates:\n"
        for c, k in certs:
            text += "    - cert: %s\n      key: %s\n" % (c, k)
    text += "backend:\n  route: login\n  lookup: %s\n%s  servers:\n" % (lookup, backend)
    for s in servers:
        p, opts = (s, "") if isinstance(s, int) else s
        text += "    - {address: %s:%d%s}\n" % (HOST, p, ", " + opts if opts else "")
    text += "log:\n  level: %s\n" % level
    if metrics_port:
        text += "metrics:\n  address: %s:%d\n" % (HOST, metrics_port)
    return text + extra


def login_gate(env, servers, lookup, backend="", extra="", tls="none", listen="",
               level="info", metrics=False, name=None, proc_env=None):
    """Start an imapgate with login_gate_config(...) in a
    test_guard_common.GuardEnv (stopped and checked for a clean exit with
    the test, or at exit when started before the tests).  The start-up
    probe's session is waited for, then the log is marked (g.mark);
    g.metrics_port is set when metrics is true; proc_env: more environment
    for the process (e.g. ASAN_OPTIONS)."""
    env.nth += 1
    g = harness.Imapgate(env.binary, env.tmp, env.cert, env.key, 1,
                         name=name or "imapgate%d" % env.nth, env=proc_env)
    g.metrics_port = harness.free_port() if metrics else None
    with open(g.conf, "w") as f:
        f.write(login_gate_config(g.port, servers, lookup, backend, extra, tls, listen,
                                  [(env.cert, env.key)] if tls != "none" else None,
                                  level, g.metrics_port))
    g.start()
    env.gates.append(g)
    g.wait_log(r"msg=session-end", timeout=3.0)
    g.mark = len(g.log_text())
    return g


def gate_log(g):
    """imapgate's log since the gate's mark."""
    return g.log_text()[getattr(g, "mark", 0):]


def log_fields(line):
    """The key=value fields of one log line as a dict (quotes kept)."""
    return dict(re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', line))


def wait_lines(g, pattern, count, timeout=5.0, after=None):
    """The log lines after g's mark (or offset after) matching pattern, once
    there are at least count of them (Fail with the log tail if not)."""
    rx = re.compile(pattern)
    start = getattr(g, "mark", 0) if after is None else after
    end = time.monotonic() + timeout
    while True:
        lines = [x for x in g.log_text()[start:].splitlines() if rx.search(x)]
        if len(lines) >= count or time.monotonic() >= end:
            break
        time.sleep(0.05)
    check(len(lines) >= count, "%d log lines /%s/, want %d:\n%s"
          % (len(lines), pattern, count, g.log_text()[start:][-2500:]))
    return lines


def connect(port, timeout=CLIENT_TIMEOUT, src=None):
    """A TCP socket to 127.0.0.1:port (from source address src if given)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(timeout)
    if src:
        s.bind((src, 0))
    s.connect((HOST, port))
    return s


class Raw:
    """A byte-level client on a plain socket: send bytes, read lines or up
    to a tagged line; every read bounded by timeout."""

    def __init__(self, port, timeout=CLIENT_TIMEOUT, src=None, greeting=True):
        self.sock = connect(port, timeout, src)
        self.timeout = timeout
        self.buf = bytearray()
        self.greeting = self.line() if greeting else b""

    def fill(self):
        """Read once more; False at EOF."""
        data = self.sock.recv(65536)
        self.buf += data
        return bool(data)

    def line(self):
        """One line, CRLF included (Fail at EOF)."""
        end = time.monotonic() + self.timeout
        while b"\r\n" not in self.buf:
            check(time.monotonic() < end and len(self.buf) < (1 << 20),
                  "no line in %.0fs: %r" % (self.timeout, bytes(self.buf[:200])))
            if not self.fill():
                raise Fail("connection closed (partial line %r)" % bytes(self.buf[:200]))
        i = self.buf.index(b"\r\n") + 2
        out = bytes(self.buf[:i])
        del self.buf[:i]
        return out

    def send(self, data):
        """Send raw bytes."""
        self.sock.sendall(data)

    def until(self, tag):
        """Everything up to and including the line tagged tag (bytes)."""
        t = tag.encode() if isinstance(tag, str) else tag
        rx = re.compile(rb"(?:^|\r\n)" + re.escape(t) + rb" [^\r\n]*\r\n")
        end = time.monotonic() + self.timeout
        while True:
            m = rx.search(self.buf)
            if m:
                out = bytes(self.buf[:m.end()])
                del self.buf[:m.end()]
                return out
            check(time.monotonic() < end and len(self.buf) < (8 << 20),
                  "no %r line in %.0fs: %r" % (t, self.timeout, bytes(self.buf[-300:])))
            if not self.fill():
                raise Fail("connection closed before %r: %r" % (t, bytes(self.buf[-300:])))

    def cmd(self, tag, text):
        """Send `tag text` and return everything up to its tagged line."""
        self.send(("%s %s\r\n" % (tag, text)).encode())
        return self.until(tag)

    def close(self):
        """Close without LOGOUT."""
        try:
            self.sock.close()
        except OSError:
            pass


def tagged_line(data, tag):
    """The tagged line for tag in data (bytes), or b""."""
    t = tag.encode() if isinstance(tag, str) else tag
    m = re.search(rb"(?:^|\r\n)(" + re.escape(t) + rb" [^\r\n]*\r\n)", data)
    return m.group(1) if m else b""


LANDED_TAIL = (b"x1 EXAMINE INBOX\r\nx2 FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])\r\n"
               b"x3 LOGOUT\r\n")


def quick_login(port, user, password, timeout=CLIENT_TIMEOUT, src=None):
    """LOGIN on a raw socket; on OK, EXAMINE INBOX, FETCH message 1's Subject
    and LOGOUT pipelined.  Returns (tagged LOGIN reply, (server, user) or
    None when the login failed)."""
    c = Raw(port, timeout, src)
    try:
        reply = c.cmd("L", "LOGIN %s %s" % (_imap_quote(user), _imap_quote(password)))
        line = tagged_line(reply, "L")
        if not line.startswith(b"L OK"):
            return line, None
        c.send(LANDED_TAIL)
        data = c.until("x3")
        check(tagged_line(data, "x2").startswith(b"x2 OK"), "FETCH after login: %r" % data[-300:])
        return line, parse_subject(data, "%s's message 1" % user)
    finally:
        c.close()


def land_all(port, users, threads=6, src=None):
    """quick_login for every (user, password) in users, a few at a time:
    {user: server}; Fail listing every login that failed or landed in
    another user's mailbox."""
    from concurrent.futures import ThreadPoolExecutor
    out, problems = {}, []

    def one(item):
        user, pw = item
        try:
            line, where = quick_login(port, user, pw, src=src)
        except (Fail, OSError) as e:
            return user, None, "%s: %s" % (user, e)
        if where is None:
            return user, None, "%s: %r" % (user, line)
        if where[1] != user:
            return user, None, "%s landed in %s's mailbox" % (user, where[1])
        return user, where[0], None

    with ThreadPoolExecutor(max_workers=threads) as ex:
        for user, server, problem in ex.map(one, list(users.items())):
            if problem:
                problems.append(problem)
            else:
                out[user] = server
    check(not problems, "%d of %d logins failed:\n  %s"
          % (len(problems), len(users), "\n  ".join(problems[:20])))
    return out


def scrape_metrics(g):
    """The gate's metrics as {(name, frozenset(labels)): value} (strict parse)."""
    import test_ops_common as oc
    return oc.parse_metrics(oc.scrape(g.metrics_port)[1])


def metric(samples, name, **labels):
    """One sample's value (0 when absent)."""
    return samples.get((name, frozenset(labels.items())), 0.0)
