#!/usr/bin/env python3
"""Login routing with `lookup: {type: http}`: imapgate asks a real nginx
`auth_http` endpoint where each user lives, side by side with nginx mail
(the reference implementation) asking the same endpoint.

Real parts: three Dovecots (a: alice@a.test, bob@a.test; b: carol@b.test,
dave, with a master passdb; c: erin@c.test), NginxAuth (a real nginx, maps
only), NginxMail, imapgate (`route: login`, http lookup, timeout 2s) with a
plaintext and an implicit-TLS listener, and the real clients of
test_route_common (imaplib LOGIN / AUTHENTICATE PLAIN, curl, curl AUTH
LOGIN, mbsync).  Scripted: BrokenAuth (endpoints that misbehave) and
HeaderTap below (a relay in front of NginxAuth that records request heads
byte for byte, to compare the whole header set).

The checks (each test's docstring says more):
  matrix        every user x every client lands on its server through both;
                NginxAuth's log of the two runs is identical field for field
  header set    the whole request heads (HeaderTap) are identical: names,
                order, values, Auth-User/Auth-Pass escaping (space, %, ",
                \\, control bytes, DEL, UTF-8, CR LF), Auth-SSL* over TLS
  refusals      NO [AUTHENTICATIONFAILED], retry on the same connection
                with Auth-Login-Attempt 2, Auth-Wait N as a lower bound,
                a pipelined retry behind the delayed NO
  WAIT, authzid (with the master override), a backend refusal after the
  lookup's OK, broken endpoints (50 attempts each: descriptors, RSS,
  error-kind metrics), a client leaving mid-lookup, drain, how a session
  before login ends, no password in the debug log, metrics, clean exits
  (exit 0, no sanitizer report in any imapgate log).

What differs from nginx mail on purpose (documented here, checked below):
  * a refused login (unknown user, wrong password, any Auth-Status
    failure text) is `TAG NO [AUTHENTICATIONFAILED] Authentication failed`
    and the connection stays open for another try; nginx mail passes the
    Auth-Status text (`TAG NO Invalid login or password`) and, with
    Auth-Wait 0 or none, closes.  With Auth-Wait N both wait N s first.
    imapgate's Auth-Wait 0 means its own timeouts.login_failure delay
    (0 s in this file).
  * a broken endpoint (down, silent, closed, garbage, oversized) is
    `TAG NO [UNAVAILABLE] Backend server unavailable, try again later` and
    the session stays usable; nginx mail sends the untagged
    `* BAD internal server error` and closes (test_route_nginx.py,
    t_broken_auth, records it for every kind).
  * Auth-Status: WAIT: nginx mail waits Auth-Wait and asks again, for as
    long as the answer is WAIT; imapgate answers NO [UNAVAILABLE] at once
    (recorded, not judged: docs/routing-http.md says "the caller asks
    again").
  * AUTHENTICATE PLAIN with an authzid: nginx mail drops it and logs in
    as the authentication identity; imapgate passes it to the backend,
    which decides, except over an Auth-User/Auth-Pass override.
  * the request heads are the same, with one expected difference in
    practice: Auth-Login-Attempt counts retries nginx mail never makes
    because it closed after the first refusal.

usage: test_route_http.py PATH-TO-IMAPGATE
Skips (77) unless dovecot, nginx + libnginx-mod-mail, curl and mbsync are
installed.
"""

import base64
import imaplib
import os
import re
import select
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time

import harness
from harness import check, say
import test_route_common as rc
import test_ops_common as oc
from test_route_nginx import CAROL_FRONT, MASTER, USERS_A, USERS_B

USERS_C = {"erin@c.test": "erin-Pw-5"}
LOOKUP_TIMEOUT = 2.0        # backend.lookup.timeout of the main imapgate and the broken ones
NO_HANG = LOOKUP_TIMEOUT + 5.0   # correctness bound: "answered, did not hang"
BROKEN_ATTEMPTS = 50        # LOGINs per broken kind before descriptors and RSS are read
RSS_SLACK_KIB = 8 * 1024    # loose: 50 failed logins must not keep memory
ASAN_RSS_FACTOR = 6
WRONG_PW = "wrong-Pw-q7"    # a distinctive wrong password (searched for in the log)
KEEP_TIMEOUT = 2.0          # the auth nginx's keepalive_timeout (idle connections it closes)
KEEP_REQUESTS = 10          # its keepalive_requests (then "Connection: close")
KEEP_IDLE = 4               # backend.lookup.keepalive of imapgate-keepalive
STALE = ("stale@a.test", "stale-Pw-8")   # the endpoint's user that no Dovecot has
UNAVAILABLE = b"NO [UNAVAILABLE] Backend server unavailable, try again later\r\n"
AUTHFAILED = b"NO [AUTHENTICATIONFAILED] Authentication failed\r\n"
# The kind imapgate reports for each BrokenAuth kind (imapgate_lookups_total
# result="http:<kind>", docs/routing-http.md's table).
BROKEN_ERROR = {"down": "connect", "slow": "timeout", "close": "closed",
                "garbage": "protocol", "huge": "too_large"}
SANITIZER_RX = re.compile(r"AddressSanitizer|LeakSanitizer|UndefinedBehaviorSanitizer|"
                          r"runtime error:")


# ----------------------------------------------------------------- imapgate

def asan(pid):
    """True if the process maps an AddressSanitizer runtime."""
    try:
        with open("/proc/%d/maps" % pid) as f:
            maps = f.read()
    except OSError:
        return False
    return "libasan" in maps or "libclang_rt.asan" in maps


class Gate:
    """imapgate with route: login and an http lookup: a plaintext listener
    (port), an implicit-TLS one (tls_port) and metrics, all on 127.0.0.1."""

    def __init__(self, env, name, url, servers, timeout=LOOKUP_TIMEOUT, level="debug",
                 timeouts="", drain="3s", backend="", extra=""):
        self.name = name
        self.port = harness.free_port()
        self.tls_port = harness.free_port()
        self.metrics_port = harness.free_port()
        self.conf = os.path.join(env.tmp, name + ".yaml")
        self.logfile = os.path.join(env.tmp, name + ".log")
        self.binary = env.binary
        self.proc = None
        self.exit_status = None
        text = ("listen:\n"
                "  - address: 127.0.0.1:%d\n    tls: none\n"
                "  - address: 127.0.0.1:%d\n    tls: implicit\n"
                "tls:\n  certificates:\n    - cert: %s\n      key: %s\n"
                "backend:\n  servers:\n%s"
                "  health: {interval: 1h, timeout: 2s}\n"
                "  route: login\n"
                "  lookup:\n    type: http\n    url: %s\n    timeout: %gs\n%s"
                "timeouts:\n  login_failure: 0s\n  drain: %s\n%s"
                "limits:\n  max_connections_per_ip: 0\n"
                "metrics:\n  address: 127.0.0.1:%d\n"
                "log:\n  level: %s\n%s"
                % (self.port, self.tls_port, env.cert, env.key,
                   "".join("    - address: 127.0.0.1:%d\n" % p for p in servers),
                   url, timeout, backend, drain, timeouts, self.metrics_port, level, extra))
        with open(self.conf, "w") as f:
            f.write(text)

    def start(self):
        """Check the config (-t), start, wait for the port and the probe's end."""
        r = subprocess.run([self.binary, "-t", "-c", self.conf], capture_output=True,
                           timeout=harness.START_TIMEOUT)
        check(r.returncode == 0, "imapgate -t rejected %s:\n%s%s"
              % (self.conf, r.stdout.decode(), r.stderr.decode()))
        self.proc = harness.Proc(self.name, [self.binary, "-c", self.conf], self.logfile)
        harness.wait_port(self.port, self.proc)
        self.wait_ends(1, after=0, timeout=3.0)
        return self

    def log_text(self):
        return self.proc.log_text() if self.proc else ""

    def mark(self):
        """The log's length now (for looking only at what comes after)."""
        return len(self.log_text())

    def ends(self, after):
        """msg=session-end lines past offset after."""
        return [x for x in self.log_text()[after:].splitlines() if "msg=session-end" in x]

    def wait_ends(self, count, after, timeout=5.0):
        """Wait until count sessions ended past offset after; returns the lines."""
        end = time.monotonic() + timeout
        while True:
            lines = self.ends(after)
            if len(lines) >= count or time.monotonic() >= end:
                check(len(lines) >= count, "%s: %d session-end lines, want %d"
                      % (self.name, len(lines), count))
                return lines
            time.sleep(0.05)

    def fds(self):
        """Open descriptors of the process (all its worker threads)."""
        return len(os.listdir("/proc/%d/fd" % self.proc.pid))

    def rss_kib(self):
        return self.proc.rss_kib()

    def metrics(self):
        """Parsed /metrics samples."""
        return oc.parse_metrics(oc.scrape(self.metrics_port)[1])

    def alive(self):
        return self.proc is not None and self.proc.alive()

    def stop(self):
        """Stop (SIGTERM); returns the exit status (kept)."""
        if self.proc is not None and self.exit_status is None:
            self.exit_status = self.proc.stop()
        return self.exit_status

    def check_clean_exit(self):
        """Stop; Fail unless it exited 0 with no sanitizer report in its log."""
        status = self.stop()
        text = self.log_text()
        m = SANITIZER_RX.search(text)
        check(m is None, "%s: sanitizer report in its log:\n%s"
              % (self.name, text[max(0, m.start() - 200):m.start() + 3000] if m else ""))
        check(status == 0, "%s exited with status %s:\n%s" % (self.name, status, text[-2000:]))


def auth_requests(auth, start, want, timeout=3.0):
    """NginxAuth's requests past index start, once at least want of them
    are logged (nginx writes its access log line after the answer went out,
    so the last one may lag behind the client's reply); bounded."""
    end = time.monotonic() + timeout
    while True:
        reqs = auth.requests()[start:]
        if len(reqs) >= want or time.monotonic() >= end:
            return reqs
        time.sleep(0.02)


def count(samples, name, **labels):
    return oc.value(samples, name, **labels)


# --------------------------------------------------------------- HeaderTap

class HeaderTap:
    """A relay in front of an auth_http endpoint: records every request
    head exactly (list of (name, value) in the order sent, plus the request
    line), forwards it, relays the answer unchanged.  Heads stay in memory
    only (they hold passwords) and are never printed unredacted."""

    def __init__(self, upstream_port, max_conns=64):
        self.upstream = upstream_port
        self.max_conns = max_conns
        self.heads = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind((rc.HOST, 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        t = threading.Thread(target=self._loop, daemon=True)
        t.start()
        self._threads.append(t)

    @property
    def url(self):
        return "%s:%d/auth" % (rc.HOST, self.port)

    @property
    def http_url(self):
        return "http://%s:%d/auth" % (rc.HOST, self.port)

    def _loop(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.accepted += 1
            if self.accepted > self.max_conns:
                conn.close()
                continue
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, conn):
        try:
            conn.settimeout(5.0)
            data = b""
            end = time.monotonic() + 5.0
            while b"\r\n\r\n" not in data and len(data) < 65536 and time.monotonic() < end:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
            with self._lock:
                self.heads.append((head[0], [tuple(x.split(": ", 1)) if ": " in x else (x, None)
                                             for x in head[1:]]))
            with socket.create_connection((rc.HOST, self.upstream), timeout=5.0) as up:
                up.sendall(data)
                while time.monotonic() < end + 5.0:
                    chunk = up.recv(65536)
                    if not chunk:
                        break
                    conn.sendall(chunk)
        except OSError:
            pass
        finally:
            conn.close()

    def taken(self):
        with self._lock:
            return list(self.heads)

    def stop(self):
        self._stop.set()
        self.sock.close()
        for t in self._threads:
            t.join(timeout=2.0)


def redact(head):
    """A recorded head with the Auth-Pass value hidden (for messages)."""
    line, hdrs = head
    return (line, [(k, "***" if k.lower() == "auth-pass" else v) for k, v in hdrs])


# -------------------------------------------------------------------- setup

def setup(env):
    """Three Dovecots, NginxAuth, NginxMail, imapgate (plus a TLS listener)."""
    t0 = time.monotonic()
    env.binary = harness.imapgate_binary(sys.argv)
    check(env.binary is not None and os.access(env.binary, os.X_OK),
          "imapgate binary not given or not executable: %r" % env.binary)
    env.cert, env.key = harness.make_cert(env.tmp)
    env.tls = ssl.create_default_context(cafile=env.cert)
    a, b, c = rc.start_dovecots(env.tmp, [
        ("a", USERS_A),
        ("b", USERS_B, {"master": MASTER}),
        ("c", USERS_C),
    ])
    for d in (a, b, c):
        env.add(d)
    t1 = time.monotonic()
    routes = {u: (pw, a.port) for u, pw in USERS_A.items()}
    routes.update({"carol@b.test": (CAROL_FRONT, b.port), "dave": (USERS_B["dave"], b.port)})
    routes.update({u: (pw, c.port) for u, pw in USERS_C.items()})
    # The endpoint knows stale@a.test, Dovecot a does not: the lookup says
    # OK and the backend refuses the login.
    routes[STALE[0]] = (STALE[1], a.port)
    auth = env.add(rc.NginxAuth(env.dir("auth"), routes,
                                overrides={"carol@b.test": ("carol@b.test" + rc.MASTER_SEPARATOR
                                                            + MASTER[0], MASTER[1])},
                                wait={"ghost@a.test": 1, "waiter@a.test": 1},
                                fail={"locked@a.test": "Account locked",
                                      "waiter@a.test": "WAIT"},
                                keepalive=("%gs" % KEEP_TIMEOUT, KEEP_REQUESTS)).spawn())
    mail = env.add(rc.NginxMail(env.dir("mail"), auth.url).spawn())
    gate = env.add(Gate(env, "imapgate", auth.http_url, (a.port, b.port, c.port)))
    env.gates = [gate]
    gate.start()
    harness.wait_port(auth.port, auth.proc)
    harness.wait_port(mail.port, mail.proc, greeting=True)
    t2 = time.monotonic()
    say("setup: 3 Dovecots %.2fs (a %d, b %d, c %d); nginx auth %d, nginx mail %d, "
        "imapgate %d/tls %d (pid %d%s) %.2fs"
        % (t1 - t0, a.port, b.port, c.port, auth.port, mail.port, gate.port, gate.tls_port,
           gate.proc.pid, ", ASan" if asan(gate.proc.pid) else "", t2 - t1))
    env.a, env.b, env.c, env.auth, env.mail, env.gate = a, b, c, auth, mail, gate
    env.passwords = (list(USERS_A.values()) + list(USERS_B.values()) + list(USERS_C.values())
                     + [CAROL_FRONT, MASTER[1], WRONG_PW, STALE[1]])


def matrix_users():
    users = {u: (pw, "a") for u, pw in USERS_A.items()}
    users["dave"] = (USERS_B["dave"], "b")
    users["carol@b.test"] = (CAROL_FRONT, "b")     # front password, master override
    users["erin@c.test"] = (USERS_C["erin@c.test"], "c")
    return users


COMPARED = ("user", "method", "protocol", "client_ip", "client_host", "attempt", "ssl",
            "salt", "status", "route", "request")


# -------------------------------------------------------------------- tests

def t_matrix(env):
    """The same clients through nginx mail and through imapgate: every user
    lands on their server (carol by the master override), and NginxAuth
    logged the same request, field for field, for both."""
    users = matrix_users()
    runs = {}
    g = env.gate
    m0 = g.metrics()
    b_carol0 = env.b.logins().count("carol@b.test")
    for name, port in (("nginx mail", env.mail.port), ("imapgate", g.port)):
        mark = len(env.auth.requests())
        say("   -- through %s" % name)
        t0 = time.monotonic()
        results = rc.run_client_matrix(port, users, base=env.tmp)
        say("   %d runs in %.2fs" % (len(results), time.monotonic() - t0))
        reqs = auth_requests(env.auth, mark, len(results))
        check(len(reqs) == len(results), "%s: %d auth requests for %d client runs"
              % (name, len(reqs), len(results)))
        runs[name] = (results, reqs)
    (res_n, req_n), (res_g, req_g) = runs["nginx mail"], runs["imapgate"]
    diffs = []
    for (cname, user, _, _), rn, rg in zip(res_n, req_n, req_g):
        for k in COMPARED:
            if rn.get(k) != rg.get(k):
                diffs.append("%s %s %s: nginx %r, imapgate %r" % (cname, user, k, rn.get(k),
                                                                   rg.get(k)))
    say("   NginxAuth log, %d request pairs compared on %s: %d differences"
        % (len(req_n), ",".join(COMPARED), len(diffs)))
    check(not diffs, "auth requests differ:\n  " + "\n  ".join(diffs))
    check(all(r["status"] == "OK" and r["method"] == "plain" and r["attempt"] == "1"
              and r["client_ip"] == "127.0.0.1" and r["ssl"] == "" for r in req_g),
          "imapgate's requests: %r" % req_g)
    # carol: imapgate replayed the override (carol@b.test*route-master and the
    # master password) and Dovecot b logged her in, once per client.
    b_carol = env.b.logins().count("carol@b.test") - b_carol0
    check(b_carol == 2 * len(rc.CLIENTS), "Dovecot b logged %d carol logins, want %d"
          % (b_carol, 2 * len(rc.CLIENTS)))
    logins = re.findall(r'msg=login user="([^"]*)" backend=(\S+) route=(\S+) mech=(\S+)',
                        g.log_text())
    check(("carol@b.test*route-master", "127.0.0.1:%d" % env.b.port, "http") in
          [x[:3] for x in logins], "no override login line for carol: %r" % logins[-6:])
    mechs = sorted(set(x[3] for x in logins))
    say("   imapgate login lines: %d, mechs %s" % (len(logins), mechs))
    m1 = g.metrics()
    n = len(res_g)
    for metric, labels, want in (("imapgate_lookups_total", {"result": "http:ok"}, n),
                                 ("imapgate_lookup_duration_seconds_count", {"type": "http"}, n),
                                 ("imapgate_logins_total", {"result": "ok"}, n)):
        got = count(m1, metric, **labels) - count(m0, metric, **labels)
        check(got == want, "%s%r grew by %g over the matrix, want %d" % (metric, labels, got,
                                                                         want))


def _tls_login(port, tls, user, pw):
    """LOGIN over implicit TLS, then LOGOUT."""
    c = harness.Client(port, tls, timeout=rc.CLIENT_TIMEOUT)
    try:
        c.login(user, pw)
        c.logout()
    finally:
        c.close()


def _nginx_mail_tls(env, tap_url):
    """A NginxMail on tap_url with a second, implicit-TLS listener
    (NginxMail has no such option: its config text gets one more server).
    nginx 1.22's default ssl_protocols stop at TLSv1.2 (1.23.4 added 1.3);
    imapgate's allow 1.3, so both are given the same list here or the
    Auth-SSL-Protocol / -Cipher values would differ for that reason alone."""
    m = rc.NginxMail(env.dir("mail-tap"), tap_url, name="nginx-mail-tap")
    m.tls_port = harness.free_port()
    with open(m.conf) as f:
        text = f.read()
    text = text.replace(
        "    server {\n",
        "    ssl_certificate %s;\n    ssl_certificate_key %s;\n"
        "    ssl_protocols TLSv1.2 TLSv1.3;\n"
        "    server {\n        listen %s:%d ssl;\n        protocol imap;\n    }\n"
        "    server {\n" % (env.cert, env.key, rc.HOST, m.tls_port), 1)
    m.write(text)
    return m


# Refused LOGINs with the password as a literal: what escaping must cover.
LITERAL_LOGINS = [(b"we ird%u@a.test", b'p"w\\x %\x01\x7f\xc3\xa9 \t'),
                  (b"alice@a.test", b"a\r\nb")]


def _literal_login(port, user, pw, timeout=5.0):
    """LOGIN "user" {n} with a synchronizing literal; the tagged reply line."""
    s = socket.create_connection((rc.HOST, port), timeout=timeout)
    try:
        f = s.makefile("rb")
        f.readline()
        s.sendall(b'L1 LOGIN "%s" {%d}\r\n' % (user, len(pw)))
        cont = f.readline()
        check(cont.startswith(b"+"), "no continuation for the literal: %r" % cont)
        s.sendall(pw + b"\r\n")
        while True:
            line = f.readline()
            if not line or line.startswith(b"L1 "):
                return line
    finally:
        s.close()


def t_header_set(env):
    """The whole request head (HeaderTap in front of NginxAuth) that nginx
    mail and imapgate send for the same logins: LOGIN, AUTHENTICATE PLAIN
    (bob: a space and % in the password), AUTHENTICATE LOGIN, LOGIN over
    implicit TLS, and two refused LOGINs whose password is a literal (a
    user with a space and %; a password with `"`, `\\`, control bytes,
    DEL, UTF-8, CR LF).  Same header names in the same order, same values
    (Auth-User / Auth-Pass compared byte for byte, never printed)."""
    tap = env.add(HeaderTap(env.auth.port))
    m = env.add(_nginx_mail_tls(env, tap.url)).spawn()
    g = env.add(Gate(env, "imapgate-tap", tap.http_url, (env.a.port, env.b.port, env.c.port)))
    env.gates.append(g)
    g.start()
    harness.wait_port(m.port, m.proc, greeting=True)
    harness.wait_port(m.tls_port, m.proc)
    alice, bob = ("alice@a.test", USERS_A["alice@a.test"]), ("bob@a.test", USERS_A["bob@a.test"])
    heads = {}
    for name, port, tls_port in (("nginx", m.port, m.tls_port), ("imapgate", g.port, g.tls_port)):
        mark = len(tap.taken())
        check(rc.client_imaplib(port, *alice) == "a", "%s LOGIN" % name)
        check(rc.client_imaplib_auth_plain(port, *bob) == "a", "%s AUTHENTICATE PLAIN" % name)
        check(rc.client_curl_auth_login(port, "dave", USERS_B["dave"]) == "b",
              "%s AUTHENTICATE LOGIN" % name)
        _tls_login(tls_port, env.tls, *alice)
        for user, pw in LITERAL_LOGINS:
            reply = _literal_login(port, user, pw)
            check(reply.startswith(b"L1 NO "), "%s literal LOGIN: %r" % (name, reply))
        heads[name] = tap.taken()[mark:]
        check(len(heads[name]) == 6, "%s: %d requests, want 6" % (name, len(heads[name])))
    diffs = []
    for what, hn, hg in zip(("LOGIN", "AUTH PLAIN", "AUTH LOGIN", "TLS LOGIN", "LITERAL 1",
                             "LITERAL 2"),
                            heads["nginx"], heads["imapgate"]):
        say("   %-10s nginx    %r" % (what, redact(hn)))
        say("   %-10s imapgate %r" % (what, redact(hg)))
        if hn[0] != hg[0]:
            diffs.append("%s: request line %r vs %r" % (what, hn[0], hg[0]))
        names_n, names_g = [k for k, _ in hn[1]], [k for k, _ in hg[1]]
        if names_n != names_g:
            diffs.append("%s: header names %r vs %r" % (what, names_n, names_g))
        for (kn, vn), (kg, vg) in zip(hn[1], hg[1]):
            if kn == kg and vn != vg:
                diffs.append("%s: %s %r vs %r" % (what, kn, "***" if kn == "Auth-Pass" else vn,
                                                   "***" if kg == "Auth-Pass" else vg))
    check(not diffs, "request heads differ:\n  " + "\n  ".join(diffs))
    # Auth-Pass escaping, checked explicitly: bob's `bob pw%2` goes as bob%20pw%252.
    pw = dict(heads["imapgate"][1][1]).get("Auth-Pass")
    check(pw == rc.mail_auth_escape(USERS_A["bob@a.test"]) == "bob%20pw%252",
          "bob's Auth-Pass is not nginx's escaping")
    tls_head = dict(heads["imapgate"][3][1])
    check(tls_head.get("Auth-SSL") == "on"
          and tls_head.get("Auth-SSL-Protocol", "").startswith("TLS")
          and tls_head.get("Auth-SSL-Cipher"),
          "TLS request head: %r" % (redact(heads["imapgate"][3]),))
    m.stop()
    g.check_clean_exit()
    env.gates.remove(g)
    tap.stop()


def _show(name, r):
    """Print a login_exchange result."""
    say("   %-34s %r" % (name, r["greeting"][:40]))
    for tag, data, secs in r["replies"]:
        say("      %s after %.3fs: %r"
            % (tag, secs, data[:80] + (b"..." if len(data) > 80 else b"")))
    say("      closed: %s" % (r["closed"],))


def t_refusals(env):
    """Unknown user, wrong password, a forced failure, Auth-Wait 1: imapgate
    answers NO [AUTHENTICATIONFAILED] and the retry on the same connection
    logs in, seen by the endpoint as Auth-Login-Attempt 2; nginx mail
    closes after Auth-Wait 0.  Auth-Wait 1 delays the NO by >= 1 s (both)."""
    g = env.gate
    good = ("alice@a.test", USERS_A["alice@a.test"])
    cases = [
        ("unknown user, Auth-Wait 0", [("nobody@a.test", WRONG_PW), good], 0),
        ("wrong password, Auth-Wait 0", [("alice@a.test", WRONG_PW), good], 0),
        ("forced failure", [("locked@a.test", WRONG_PW), good], 0),
        ("unknown user, Auth-Wait 1", [("ghost@a.test", WRONG_PW), good], 1),
    ]
    m0 = g.metrics()
    for name, attempts, wait in cases:
        mark = len(env.auth.requests())
        rn = rc.login_exchange(env.mail.port, attempts, timeout=5)
        # nginx mail asks once, and again for the retry only if it did not close.
        mark += len(auth_requests(env.auth, mark, 1 if wait == 0 else 2))
        lmark = g.mark()
        ri = rc.login_exchange(g.port, attempts, timeout=NO_HANG)
        _show("nginx mail: " + name, rn)
        _show("imapgate:   " + name, ri)
        reqs = auth_requests(env.auth, mark, 2)
        # nginx mail (the recorded reference): NO with the endpoint's text;
        # closed unless Auth-Wait was given.
        check(rn["replies"][0][1].startswith(b"L1 NO ") and
              ((rn["closed"] is not None) == (wait == 0)), "nginx mail %s: %r" % (name, rn))
        # imapgate: the standard code, the connection kept, the retry works.
        check(ri["replies"][0][1] == b"L1 " + AUTHFAILED, "%s: %r" % (name, ri["replies"][:1]))
        check(ri["closed"] is None and len(ri["replies"]) == 2
              and ri["replies"][1][1].startswith(b"L2 OK [CAPABILITY "),
              "%s: no retry on the same connection: %r" % (name, ri))
        check(ri["replies"][0][2] >= wait * 0.95,
              "%s: the NO came after %.3fs, Auth-Wait is %d" % (name, ri["replies"][0][2], wait))
        check([r["attempt"] for r in reqs] == ["1", "2"] and reqs[1]["status"] == "OK",
              "%s: endpoint saw %r" % (name, [(r["user"], r["attempt"], r["status"])
                                              for r in reqs]))
        failed = [x for x in g.log_text()[lmark:].splitlines() if "msg=login-failed" in x]
        check(len(failed) == 1 and "route=http" in failed[0]
              and "delay_ms=%d" % (wait * 1000) in failed[0],
              "%s: login-failed lines %r" % (name, failed))
    m1 = g.metrics()
    for metric, labels, want in (("imapgate_lookups_total", {"result": "http:denied"}, 4),
                                 ("imapgate_lookups_total", {"result": "http:ok"}, 4),
                                 ("imapgate_logins_total", {"result": "failed"}, 4),
                                 ("imapgate_logins_total", {"result": "ok"}, 4),
                                 ("imapgate_lookup_duration_seconds_count", {"type": "http"}, 8)):
        got = count(m1, metric, **labels) - count(m0, metric, **labels)
        check(got == want, "%s%r grew by %g, want %d" % (metric, labels, got, want))
    # A client that leaves during the Auth-Wait delay: the session ends, the
    # delayed NO goes nowhere, imapgate lives on.
    mark = g.mark()
    s = socket.create_connection((rc.HOST, g.port), timeout=5)
    s.recv(4096)
    s.sendall(b'L1 LOGIN "ghost@a.test" "%s"\r\n' % WRONG_PW.encode())
    time.sleep(0.3)
    s.close()
    g.wait_ends(1, mark, timeout=5.0)
    time.sleep(1.0)         # past the 1 s Auth-Wait timer
    check(g.alive(), "imapgate died after a client left during Auth-Wait")
    rc.client_imaplib(g.port, *good)
    # A client that pipelines its retry behind the refused LOGIN (legal: the
    # commands are sent without waiting): L2 must be answered once L1's
    # delayed NO is out, without the client sending anything more.
    for name, port in (("nginx mail", env.mail.port), ("imapgate", g.port)):
        got = _pipelined(port, b'L1 LOGIN "ghost@a.test" "%s"\r\nL2 LOGIN "%s" "%s"\r\n'
                         b'L3 LOGOUT\r\n' % (WRONG_PW.encode(), good[0].encode(),
                                             good[1].encode()), b"L3 ", NO_HANG)
        say("   pipelined retry behind Auth-Wait 1, %s: %s" % (name, got))
        if name == "imapgate":
            tags = [t for t, _, _ in got]
            check(tags[:3] == ["L1 NO", "L2 OK", "L3 OK"],
                  "imapgate left the pipelined retry unanswered behind the delayed NO "
                  "(answers within %.0fs: %r)" % (NO_HANG, got))


def _pipelined(port, data, last, timeout):
    """Send data in one write; [(tag and status, seconds, line)] for every
    tagged line until one starts with last, EOF or timeout (then the last
    entry is ("<eof>"|"<timeout>", seconds, b""))."""
    out = []
    s = socket.create_connection((rc.HOST, port), timeout=5)
    try:
        f = s.makefile("rb")
        f.readline()
        t0 = time.monotonic()
        s.sendall(data)
        while True:
            left = timeout - (time.monotonic() - t0)
            if left <= 0:
                out.append(("<timeout>", time.monotonic() - t0, b""))
                return out
            s.settimeout(left)
            try:
                line = f.readline()
            except (socket.timeout, OSError):
                out.append(("<timeout>", time.monotonic() - t0, b""))
                return out
            if not line:
                out.append(("<eof>", time.monotonic() - t0, b""))
                return out
            if not line.startswith(b"* "):
                parts = line.split(b" ", 2)
                out.append((b" ".join(parts[:2]).decode("latin-1"),
                            round(time.monotonic() - t0, 3), line[:60]))
                if line.startswith(last):
                    return out
    finally:
        s.close()


def t_wait_status(env):
    """Auth-Status: WAIT (with Auth-Wait 1).  nginx mail waits and asks
    again with the same attempt number, for as long as the answer is WAIT
    (recorded for 2.5 s).  imapgate (a lookup outcome `retry`): a tagged NO
    within the no-hang bound and a usable session (checked); what it says
    is recorded."""
    mark = len(env.auth.requests())
    rn = rc.login_exchange(env.mail.port, [("waiter@a.test", WRONG_PW)], timeout=2.5, linger=0)
    nginx_reqs = auth_requests(env.auth, mark, 3, timeout=0.5)
    g = env.gate
    m0 = g.metrics()
    tagged, secs, cap = _gate_exchange(g.port, "waiter@a.test", WRONG_PW, NO_HANG + 2)
    time.sleep(0.3)
    reqs = [r for r in env.auth.requests()[mark + len(nginx_reqs):]
            if r["user"] == "waiter@a.test"]
    m1 = g.metrics()
    say("   nginx mail: %r after %.2fs; %d requests %r" % (
        rn["replies"][0][1] if rn["replies"] else b"", rn["seconds"], len(nginx_reqs),
        [(r["attempt"], r["status"]) for r in nginx_reqs]))
    say("   imapgate:   %r after %.3fs; %d requests; http:retry +%g; then %r" % (
        tagged, secs, len(reqs), count(m1, "imapgate_lookups_total", result="http:retry")
        - count(m0, "imapgate_lookups_total", result="http:retry"), cap))
    check(tagged.startswith(b"T1 NO ") and secs < NO_HANG, "WAIT: %r after %.2fs"
          % (tagged, secs))
    check(cap.startswith(b"T2 OK"), "CAPABILITY after WAIT: %r" % cap)


def t_backend_refusal_then_leave(env):
    """The lookup says OK, the backend refuses (stale@a.test: the endpoint
    knows her, Dovecot a does not): NO [AUTHENTICATIONFAILED], the session
    stays usable (CAPABILITY), and a client that then disconnects ends its
    session; after 20 such clients the descriptors are back at the
    baseline."""
    g = env.gate
    tagged, secs, cap = _gate_exchange(g.port, STALE[0], STALE[1], NO_HANG)
    say("   LOGIN %s -> %r after %.3fs; then %r" % (STALE[0], tagged, secs, cap))
    check(tagged == b"T1 " + AUTHFAILED, "backend refusal: %r" % tagged)
    problems = []
    if not cap.startswith(b"T2 OK"):
        problems.append("after the backend's refusal the session is stuck: the next command "
                        "(CAPABILITY) got %r" % cap)
    time.sleep(0.2)
    fd0 = g.fds()
    mark = g.mark()
    rounds = 20
    for _ in range(rounds):
        s = _greeted(g.port)
        s.sendall(b'L1 LOGIN "%s" "%s"\r\n' % (STALE[0].encode(), STALE[1].encode()))
        s.settimeout(NO_HANG)
        reply = s.makefile("rb").readline()
        check(reply == b"L1 " + AUTHFAILED, "LOGIN %s -> %r" % (STALE[0], reply))
        s.close()
    end = time.monotonic() + 5.0
    while (len(g.ends(mark)) < rounds or g.fds() > fd0) and time.monotonic() < end:
        time.sleep(0.05)
    ended, fd1 = len(g.ends(mark)), g.fds()
    say("   %d clients refused by the backend, then gone: %d session-end lines; fds %d -> %d"
        % (rounds, ended, fd0, fd1))
    if not (ended == rounds and fd1 <= fd0):
        problems.append("after a backend refusal the client's close is not noticed: %d of %d "
                        "sessions ended 5 s after their clients left, descriptors %d -> %d"
                        % (ended, rounds, fd0, fd1))
    check(not problems, "\n  ".join(problems))


def _plain_as(port, authzid, user, pw):
    """AUTHENTICATE PLAIN authzid/user/pw with imaplib: ("landed", (server,
    mailbox user)) or ("refused", reason)."""
    conn = imaplib.IMAP4(rc.HOST, port, timeout=rc.CLIENT_TIMEOUT)
    try:
        blob = ("%s\0%s\0%s" % (authzid, user, pw)).encode()
        try:
            conn.authenticate("PLAIN", lambda _challenge: blob)
        except imaplib.IMAP4.error as e:
            return ("refused", str(e))
        where = rc.landed_user(conn)
        conn.logout()
        return ("landed", where)
    finally:
        try:
            conn.shutdown()
        except OSError:
            pass


def t_authzid_override(env):
    """AUTHENTICATE PLAIN with an authorization identity.  carol knows only
    her front password; the endpoint answers for her with the master-user
    override (Auth-User carol@b.test*route-master, the master password).
    Asking for authzid dave must not put her in dave's mailbox: the
    override is the service's credential, and the backend login must be
    exactly Auth-User/Auth-Pass (nginx mail ignores authzids altogether).
    Without an override the authzid goes to the backend, which decides
    (dave is no master user at b: refused)."""
    cases = [("carol (front password, override) as dave", "dave", "carol@b.test", CAROL_FRONT,
              "dave"),
             ("dave (own password, no override) as carol", "carol@b.test", "dave",
              USERS_B["dave"], "carol@b.test")]
    problems = []
    for what, authzid, user, pw, victim in cases:
        rn = _plain_as(env.mail.port, authzid, user, pw)
        rg = _plain_as(env.gate.port, authzid, user, pw)
        say("   %s: nginx mail %r; imapgate %r" % (what, rn, rg))
        if rg[0] == "landed" and rg[1][1] == victim:
            problems.append("%s: imapgate logged in to %s's mailbox" % (what, victim))
    check(not problems, "authzid:\n  " + "\n  ".join(problems))


def _gate_exchange(port, user, pw, timeout):
    """LOGIN (expected to fail) then CAPABILITY on the same connection;
    returns (LOGIN's tagged reply, seconds, CAPABILITY's tagged reply); a
    reply that did not come within timeout is b"<none within Ns>"."""
    c = harness.Client(port, timeout=timeout)
    none = b"<none within %gs>" % timeout
    try:
        t0 = time.monotonic()
        try:
            tagged, _ = c.cmd('LOGIN "%s" "%s"' % (user, pw), ok=False)
        except (socket.timeout, OSError):
            return none, time.monotonic() - t0, b""
        secs = time.monotonic() - t0
        try:
            cap, items = c.cmd("CAPABILITY", ok=False)
        except (socket.timeout, OSError):
            return tagged, secs, none
        check(any(t.startswith(b"* CAPABILITY ") for t, _ in items),
              "CAPABILITY after the failed LOGIN: %r %r" % (cap, items))
        c.logout()
        return tagged, secs, cap
    finally:
        c.close()


def t_broken(env):
    """Every BrokenAuth kind: LOGIN gets a tagged NO [UNAVAILABLE] well
    within the lookup timeout + 5 s, CAPABILITY works after it, the error
    kind is counted; after 50 attempts the descriptors and RSS are flat.
    (nginx mail: `* BAD internal server error` and close, see the header.)"""
    user, pw = "alice@a.test", USERS_A["alice@a.test"]
    for kind in rc.BROKEN_KINDS:
        b = env.add(rc.BrokenAuth(kind, max_conns=BROKEN_ATTEMPTS + 16))
        g = env.add(Gate(env, "imapgate-" + kind, "http://" + b.url,
                         (env.a.port,), level="info"))
        env.gates.append(g)
        g.start()
        tagged, secs, cap = _gate_exchange(g.port, user, pw, NO_HANG + 2)
        say("   %-8s LOGIN -> %r after %.3fs; then %r" % (kind, tagged, secs, cap))
        check(tagged == b"T1 " + UNAVAILABLE, "%s: LOGIN -> %r" % (kind, tagged))
        check(cap.startswith(b"T2 OK"), "%s: CAPABILITY -> %r" % (kind, cap))
        check(secs < NO_HANG, "%s: the NO took %.2fs (lookup timeout %gs)"
              % (kind, secs, LOOKUP_TIMEOUT))
        g.wait_ends(2, 0)           # the probe and this session
        time.sleep(0.2)
        fd0, rss0 = g.fds(), g.rss_kib()
        # 50 more: parallel connections, several LOGINs on each (slow ones
        # all at once: each costs the whole lookup timeout).
        width = BROKEN_ATTEMPTS if kind == "slow" else 10
        per = BROKEN_ATTEMPTS // width
        mark = g.mark()
        problems = []
        t0 = time.monotonic()

        def one(n):
            try:
                c = harness.Client(g.port, timeout=NO_HANG + 2)
                try:
                    for _ in range(per):
                        tagged, _ = c.cmd('LOGIN "%s" "%s"' % (user, pw), ok=False)
                        if not tagged.endswith(UNAVAILABLE):
                            problems.append("%d: %r" % (n, tagged))
                    c.logout()
                finally:
                    c.close()
            except Exception as e:   # reported below, with the others
                problems.append("%d: %s" % (n, e))
        threads = [threading.Thread(target=one, args=(n,)) for n in range(width)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=per * NO_HANG + 10)
        secs = time.monotonic() - t0
        check(not any(t.is_alive() for t in threads), "%s: clients still waiting" % kind)
        check(not problems, "%s: %d problems: %s" % (kind, len(problems), problems[:5]))
        g.wait_ends(width, mark)
        end = time.monotonic() + 3.0
        while g.fds() > fd0 and time.monotonic() < end:
            time.sleep(0.05)
        fd1, rss1 = g.fds(), g.rss_kib()
        bound = RSS_SLACK_KIB * (ASAN_RSS_FACTOR if asan(g.proc.pid) else 1)
        samples = g.metrics()
        err = count(samples, "imapgate_lookups_total", result="http:" + BROKEN_ERROR[kind])
        unav = count(samples, "imapgate_logins_total", result="unavailable")
        say("   %-8s %d x %d LOGINs in %.2fs; fds %d -> %d; RSS %d -> %d KiB; "
            "http:%s %g, logins unavailable %g, endpoint saw %d"
            % (kind, width, per, secs, fd0, fd1, rss0, rss1, BROKEN_ERROR[kind], err, unav,
               len(b.requests())))
        check(fd1 <= fd0, "%s: descriptors %d -> %d after %d attempts"
              % (kind, fd0, fd1, BROKEN_ATTEMPTS))
        check(rss1 - rss0 <= bound, "%s: RSS grew %d KiB (bound %d)" % (kind, rss1 - rss0, bound))
        check(err == BROKEN_ATTEMPTS + 1 and unav == BROKEN_ATTEMPTS + 1,
              "%s: http:%s %g, logins unavailable %g, want %d"
              % (kind, BROKEN_ERROR[kind], err, unav, BROKEN_ATTEMPTS + 1))
        check(count(samples, "imapgate_lookup_duration_seconds_count", type="http")
              == BROKEN_ATTEMPTS + 1, "%s: lookup duration count" % kind)
        check(kind == "down" or len(b.requests()) == BROKEN_ATTEMPTS + 1,
              "%s: the endpoint saw %d requests" % (kind, len(b.requests())))
        g.check_clean_exit()
        env.gates.remove(g)
        b.stop()


def _peer_closed(conn):
    """Whether the other side of conn (a BrokenAuth connection) closed it."""
    try:
        r, _, _ = select.select([conn], [], [], 0)
        return bool(r) and conn.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


def t_master_credentials(env):
    """login.credentials: master with the http lookup: the auth service
    checks the user's password (NginxAuth), then imapgate logs in to b as
    the master user on the user's behalf (AUTHENTICATE PLAIN, authzid =
    user): dave lands in his own mailbox; a wrong password never reaches
    the backend (the lookup denies it)."""
    pwfile = os.path.join(env.tmp, "master.pw")
    with open(pwfile, "w") as f:
        f.write(MASTER[1] + "\n")
    os.chmod(pwfile, 0o600)
    g = Gate(env, "imapgate-master", env.auth.http_url, (env.b.port,),
             backend="  login:\n    credentials: master\n    master_user: %s\n"
                     "    master_password_file: %s\n" % (MASTER[0], pwfile))
    env.gates.append(g)
    g.start()
    before = len(env.b.log_text())
    check(rc.client_imaplib(g.port, "dave", USERS_B["dave"]) == "b", "dave via master")
    log = env.b.log_text()[before:]
    logins = [x for x in log.splitlines() if "Login: user=<dave>" in x]
    check(logins and "method=PLAIN" in logins[-1], "Dovecot b: no PLAIN login of dave: %s"
          % log[-800:])
    c = socket.create_connection((rc.HOST, g.port), timeout=5)
    c.recv(4096)
    c.sendall(b'M1 LOGIN dave "not-daves-password"\r\n')
    c.settimeout(5)
    data = b""
    while b"M1 " not in data:
        chunk = c.recv(4096)
        if not chunk:
            break
        data += chunk
    c.close()
    check(b"M1 NO [AUTHENTICATIONFAILED]" in data, "wrong password: %r" % data)
    say("   dave via the master user: %s" % logins[-1].split("imap-login: ")[-1][:120])
    g.check_clean_exit()
    env.gates.remove(g)


def t_disconnect_in_flight(env):
    """A client that leaves while the lookup is in flight (BrokenAuth slow,
    lookup timeout 10 s): the session ends, the lookup connection is closed
    before the lookup's timeout (measured: at once), descriptors return to
    the baseline.  The bound is what makes this exercise the cancel path
    (authhttp_cancel with the connection open) rather than the timeout's;
    nginx mail, for comparison, does not watch the client while it waits
    for auth_http."""
    b = env.add(rc.BrokenAuth("slow", max_conns=32))
    g = env.add(Gate(env, "imapgate-leave", "http://" + b.url, (env.a.port,), timeout=10.0))
    env.gates.append(g)
    g.start()
    time.sleep(0.2)
    fd0 = g.fds()
    rounds = 10
    for n in range(rounds):
        mark = g.mark()
        seen = len(b.requests())
        s = socket.create_connection((rc.HOST, g.port), timeout=5)
        s.recv(4096)
        s.sendall(b'L1 LOGIN "alice@a.test" "%s"\r\n' % USERS_A["alice@a.test"].encode())
        end = time.monotonic() + 5.0
        while len(b.requests()) == seen and time.monotonic() < end:
            time.sleep(0.01)
        check(len(b.requests()) == seen + 1, "round %d: the lookup never reached the endpoint" % n)
        conn = b._conns[-1]     # BrokenAuth's side of imapgate's lookup connection
        s.close()
        t0 = time.monotonic()
        lines = g.wait_ends(1, mark, timeout=5.0)
        while not _peer_closed(conn) and time.monotonic() - t0 < 5.0:
            time.sleep(0.01)
        closed = _peer_closed(conn)
        if n == 0:
            say("   session end: %s" % lines[0][:200])
            say("   lookup connection closed %.3fs after the client left" % (time.monotonic() - t0))
        check(closed, "round %d: imapgate kept the lookup connection 5 s after the client "
              "left (the lookup timeout is 10 s)" % n)
        check(g.alive(), "imapgate died")
    end = time.monotonic() + 3.0
    while g.fds() > fd0 and time.monotonic() < end:
        time.sleep(0.05)
    say("   %d rounds; fds %d -> %d" % (rounds, fd0, g.fds()))
    check(g.fds() <= fd0, "descriptors %d -> %d" % (fd0, g.fds()))
    g.check_clean_exit()
    env.gates.remove(g)
    b.stop()


def _until_eof(sock, deadline):
    """Everything sock gives until EOF or deadline: (bytes, True if EOF)."""
    data = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return data, False
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            return data, False
        except OSError:
            return data, True
        if not chunk:
            return data, True
        data += chunk


def _until_eof_all(socks, deadline):
    """_until_eof for several sockets at once: [(bytes, EOF?, seconds until
    EOF or the deadline)], timed from the call."""
    t0 = time.monotonic()
    out = [[b"", False, None] for _ in socks]
    while True:
        live = [i for i, o in enumerate(out) if not o[1]]
        left = deadline - time.monotonic()
        if not live or left <= 0:
            break
        ready, _, _ = select.select([socks[i] for i in live], [], [], left)
        for sk in ready:
            i = socks.index(sk)
            try:
                chunk = sk.recv(65536)
            except OSError:
                chunk = b""
            if chunk:
                out[i][0] += chunk
            else:
                out[i][1] = True
                out[i][2] = time.monotonic() - t0
    for o in out:
        if o[2] is None:
            o[2] = time.monotonic() - t0
    return [tuple(o) for o in out]


def _greeted(port):
    s = socket.create_connection((rc.HOST, port), timeout=5)
    g = s.recv(4096)
    check(g.startswith(b"* OK"), "greeting %r" % g)
    return s


def t_drain(env):
    """SIGTERM (timeouts.drain 20 s) with two pre-login sessions: one just
    greeted, one whose lookup is in flight (BrokenAuth slow, lookup timeout
    2 s).  docs/operations.md: each gets `* BYE [UNAVAILABLE] Server
    shutting down` at its next quiet point (the second after its tagged
    NO), and imapgate exits 0 once they are gone: within the lookup timeout
    + 5 s here, not at the drain timeout."""
    b = env.add(rc.BrokenAuth("slow"))
    g = env.add(Gate(env, "imapgate-drain", "http://" + b.url, (env.a.port,), drain="20s"))
    env.gates.append(g)
    g.start()
    idle = _greeted(g.port)
    busy = _greeted(g.port)
    try:
        busy.sendall(b'L1 LOGIN "alice@a.test" "%s"\r\n' % USERS_A["alice@a.test"].encode())
        end = time.monotonic() + 5.0
        while not b.requests() and time.monotonic() < end:
            time.sleep(0.01)
        check(b.requests(), "the lookup never reached the endpoint")
        t0 = time.monotonic()
        os.kill(g.proc.pid, signal.SIGTERM)
        deadline = t0 + NO_HANG
        (got_idle, eof_idle, t_idle), (got_busy, eof_busy, t_busy) = \
            _until_eof_all([idle, busy], deadline)
        try:
            status = g.proc.p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            status = None
        t_exit = time.monotonic() - t0
    finally:
        idle.close()
        busy.close()
    say("   greeted session: %r, closed %s (%.2fs)" % (got_idle, eof_idle, t_idle))
    say("   lookup in flight: %r, closed %s (%.2fs)" % (got_busy, eof_busy, t_busy))
    say("   imapgate exit status %s after %.2fs" % (status, t_exit))
    problems = []
    if not (got_idle.startswith(b"* BYE") and eof_idle):
        problems.append("the greeted pre-login session got %r, closed %s, within %.0fs of "
                        "SIGTERM" % (got_idle, eof_idle, NO_HANG))
    if not (got_busy.startswith(b"L1 NO [UNAVAILABLE]") and b"* BYE" in got_busy
            and eof_busy):
        problems.append("the session with the lookup in flight got %r, closed %s"
                        % (got_busy, eof_busy))
    if status != 0:
        problems.append("imapgate had not exited %.0fs after SIGTERM (lookup timeout %gs, "
                        "drain 20s)" % (NO_HANG, LOOKUP_TIMEOUT) if status is None
                        else "exit status %s" % status)
    check(not problems, "drain before login:\n  " + "\n  ".join(problems))
    g.check_clean_exit()
    env.gates.remove(g)
    b.stop()


def t_prelogin_ends(env):
    """How a session before login ends (route: login; not http-specific,
    found here): LOGOUT closes after its OK; timeouts.preauth (1 s) gives a
    silent client `* BYE` and closes; timeouts.tls_handshake (1 s) closes a
    TCP connection on the implicit-TLS listener that never starts TLS; the
    50th BAD ends the session (`* BYE Too many invalid commands`)."""
    g = env.add(Gate(env, "imapgate-ends", env.auth.http_url, (env.a.port,), level="info",
                     timeouts="  preauth: 1s\n  tls_handshake: 1s\n"))
    env.gates.append(g)
    g.start()
    t0 = time.monotonic()
    silent = _greeted(g.port)
    raw_tls = socket.create_connection((rc.HOST, g.tls_port), timeout=5)
    problems = []
    try:
        s = _greeted(g.port)
        s.sendall(b"L1 LOGOUT\r\n")
        got, eof = _until_eof(s, time.monotonic() + 2.0)
        s.close()
        say("   LOGOUT: %r, closed %s" % (got, eof))
        if not (b"* BYE" in got and b"L1 OK" in got and eof):
            problems.append("LOGOUT before login: %r, closed within 2 s: %s" % (got, eof))
        s = _greeted(g.port)
        s.sendall(b"x BOGUS\r\n" * 60)
        got, eof = _until_eof(s, time.monotonic() + 2.0)
        s.close()
        say("   60 BAD commands: %d BAD, BYE %s, closed %s"
            % (got.count(b" BAD "), b"* BYE" in got, eof))
        if not (b"* BYE" in got and eof and got.count(b" BAD ") <= 50):
            problems.append("60 invalid commands before login: %d BAD answers, BYE %s, closed "
                            "%s (the 50th BAD should end the session)"
                            % (got.count(b" BAD "), b"* BYE" in got, eof))
        (got, eof, _), (_, tls_eof, _) = _until_eof_all([silent, raw_tls], t0 + 1.0 + 3.0)
        say("   silent after the greeting (preauth 1s): %r, closed %s; no TLS handshake "
            "(tls_handshake 1s): closed %s (%.2fs)" % (got, eof, tls_eof, time.monotonic() - t0))
        if not (got.startswith(b"* BYE") and eof):
            problems.append("a silent client before login, timeouts.preauth 1s: %r, closed %s "
                            "after %.1fs" % (got, eof, time.monotonic() - t0))
        if not tls_eof:
            problems.append("a TCP connection on the TLS listener that never starts TLS, "
                            "timeouts.tls_handshake 1s: still open after %.1fs"
                            % (time.monotonic() - t0))
    finally:
        silent.close()
        raw_tls.close()
    check(not problems, "pre-login sessions:\n  " + "\n  ".join(problems))
    g.check_clean_exit()
    env.gates.remove(g)


def _plain_login(port, user, pw):
    """LOGIN in plaintext, then LOGOUT; returns LOGIN's tagged reply."""
    c = harness.Client(port, timeout=rc.CLIENT_TIMEOUT)
    try:
        tagged, _ = c.cmd('LOGIN "%s" "%s"' % (user, pw), ok=False)
        if b" OK " in tagged:
            c.logout()
        return tagged
    finally:
        c.close()


def _keepalive_requests(auth, start, want, timeout=3.0):
    """The HTTP/1.1 requests NginxAuth logged past index start, once want
    of them are in (bounded)."""
    end = time.monotonic() + timeout
    while True:
        reqs = [r for r in auth.requests()[start:] if r["request"] == "GET /auth HTTP/1.1"]
        if len(reqs) >= want or time.monotonic() >= end:
            return reqs
        time.sleep(0.02)


def t_keepalive(env):
    """backend.lookup.keepalive against the real nginx endpoint
    (keepalive_requests 10, keepalive_timeout 2s): 25 logins in a row, a
    wrong password every fifth, are asked in HTTP/1.1 on 3 connections
    (nginx ends each after 10 requests with "Connection: close"); after
    nginx closed the idle connection the next login works on a new one;
    8 logins at once, then at most 4 connections stay open; the metric
    counts the reused lookups; imapgate exits cleanly."""
    g = env.add(Gate(env, "imapgate-keepalive", env.auth.http_url,
                     (env.a.port, env.b.port, env.c.port),
                     backend="    keepalive: %d\n" % KEEP_IDLE,
                     extra="workers: 1\n"))   # one pool: the counts below are its own
    env.gates.append(g)
    g.start()
    base_fds = g.fds()
    users = sorted(USERS_A.items())
    start = len(env.auth.requests())
    n, want = 25, []
    for i in range(n):
        u, pw = users[i % len(users)]
        wrong = i % 5 == 4
        tagged = _plain_login(g.port, u, WRONG_PW if wrong else pw)
        want.append(b"NO [AUTHENTICATIONFAILED]" if wrong else b"OK")
        check(want[-1] in tagged, "login %d (%s%s): %r" % (i, u, ", wrong password" if wrong
                                                          else "", tagged))
    # Only this imapgate asks in HTTP/1.1 (a lookup of an earlier test
    # may still be logged in between).
    reqs = _keepalive_requests(env.auth, start, n)
    check(len(reqs) == n, "%d HTTP/1.1 auth requests logged, want %d" % (len(reqs), n))
    conns = [r["conn"] for r in reqs]
    per = {c: conns.count(c) for c in conns}
    say("   %d lookups on %d connections %r" % (n, len(per), sorted(per.values())))
    check(len(per) == -(-n // KEEP_REQUESTS) and max(per.values()) == KEEP_REQUESTS,
          "connections: %r (nginx's keepalive_requests is %d)" % (per, KEEP_REQUESTS))

    # nginx closes the idle connection; the next login opens a new one.
    time.sleep(KEEP_TIMEOUT + 0.5)
    start = len(env.auth.requests())
    tagged = _plain_login(g.port, users[0][0], users[0][1])
    check(b" OK " in tagged, "login after nginx closed the idle connection: %r" % tagged)
    r = _keepalive_requests(env.auth, start, 1)
    check(len(r) == 1 and r[0]["conn"] not in per and r[0]["conn_requests"] == "1",
          "after the idle close: %r" % r)

    # Eight at once: at most KEEP_IDLE connections kept afterwards.
    mark = g.mark()
    results, threads = [], []
    for i in range(8):
        u, pw = users[i % len(users)]
        t = threading.Thread(target=lambda u=u, pw=pw: results.append(
            _plain_login(g.port, u, pw)))
        threads.append(t)
        t.start()
    for t in threads:
        t.join(rc.CLIENT_TIMEOUT + 5)
    check(len(results) == 8 and all(b" OK " in x for x in results),
          "8 at once: %r" % results)
    g.wait_ends(8, after=mark)
    time.sleep(0.2)
    kept = g.fds() - base_fds
    check(0 < kept <= KEEP_IDLE, "%d descriptors more than before any lookup, want 1..%d"
          % (kept, KEEP_IDLE))
    s = g.metrics()
    reused = count(s, "imapgate_lookup_http_reused_total")
    say("   kept afterwards: %d; imapgate_lookup_http_reused_total %g" % (kept, reused))
    # 25 + 1 + 8 lookups: 3 new connections for the 25, 1 after the idle
    # close; the burst's lookups reuse what is free when each starts.
    check(n - 3 <= reused <= n - 3 + 8, "reused %g" % reused)
    check("level=error" not in g.log_text(), "errors in the log")
    g.check_clean_exit()
    env.gates.remove(g)


def t_no_password_in_log(env):
    """imapgate's debug log (every test above ran through it) holds no
    password: not raw, not escaped, not in a base64 SASL blob."""
    g = env.gate
    text = g.log_text()
    check("level=debug" in text or "msg=trace" in text or "msg=greeted" in text,
          "the log has no debug lines: is log.level debug?")
    needles = {}
    users = {"alice@a.test": USERS_A["alice@a.test"], "bob@a.test": USERS_A["bob@a.test"],
             "dave": USERS_B["dave"], "carol@b.test": CAROL_FRONT,
             "erin@c.test": USERS_C["erin@c.test"]}
    for pw in env.passwords:
        needles[pw] = pw
        needles["escaped " + pw] = rc.mail_auth_escape(pw)
        needles["base64 " + pw] = base64.b64encode(pw.encode()).decode()
    for u, pw in users.items():
        for n, blob in enumerate(("\0%s\0%s" % (u, pw), "%s\0%s\0%s" % (u, u, pw))):
            needles["PLAIN%d %s" % (n, u)] = base64.b64encode(blob.encode()).decode()
    # The override imapgate replays to Dovecot b.
    needles["PLAIN master"] = base64.b64encode(
        ("\0carol@b.test*%s\0%s" % MASTER).encode()).decode()
    found = [k for k, v in needles.items() if v in text]
    say("   %d bytes of debug log, %d needles" % (len(text), len(needles)))
    check(not found, "in imapgate's log: %s" % found)


def t_metrics(env):
    """The lookup families on the main imapgate are consistent: every http
    lookup outcome summed equals the duration histogram's count."""
    s = env.gate.metrics()
    outcomes = {dict(ls)["result"]: v for (n, ls), v in s.items()
                if n == "imapgate_lookups_total"}
    say("   lookups %r; logins %r" % (outcomes, {dict(ls)["result"]: v for (n, ls), v in s.items()
                                                if n == "imapgate_logins_total"}))
    http = sum(v for k, v in outcomes.items() if k.startswith("http:"))
    check(http == count(s, "imapgate_lookup_duration_seconds_count", type="http") and http > 0,
          "http lookups %g vs duration count %g"
          % (http, count(s, "imapgate_lookup_duration_seconds_count", type="http")))
    check(outcomes.get("http:ok", 0) > 0 and outcomes.get("http:denied", 0) > 0,
          "outcomes %r" % outcomes)
    check(count(s, "imapgate_lookup_duration_seconds_bucket", type="http", le="+Inf") == http,
          "+Inf bucket")


def t_stop_clean(env):
    """Every imapgate exits 0 on SIGTERM with no sanitizer report; nginx too."""
    for g in list(env.gates):
        g.check_clean_exit()
        env.gates.remove(g)
    for n in (env.mail, env.auth):
        st = n.proc.stop()
        check(st == 0, "%s exited with %s" % (n.name, st))


def main():
    missing = rc.missing_tools("dovecot", "nginx", "nginx-mail", "curl", "mbsync")
    if missing:
        say("SKIP: " + "; ".join(missing))
        return harness.SKIP
    t0 = time.monotonic()
    env = rc.RouteEnv(prefix="imapgate-route-http-")
    try:
        setup(env)
    except Exception:
        env.dump_logs()
        env.cleanup()
        raise
    rc.run(env, [
        ("every user x every client, nginx mail and imapgate; NginxAuth's log compared",
         t_matrix),
        ("whole request heads compared (HeaderTap), Auth-Pass escaping, Auth-SSL",
         t_header_set),
        ("refusals: NO [AUTHENTICATIONFAILED], retry, Auth-Wait, attempt 2", t_refusals),
        ("Auth-Status: WAIT", t_wait_status),
        ("backend refuses after the lookup's OK, then the client leaves",
         t_backend_refusal_then_leave),
        ("AUTHENTICATE PLAIN with an authzid, with and without an override",
         t_authzid_override),
        ("broken endpoints: NO [UNAVAILABLE], usable session, flat fds/RSS", t_broken),
        ("login.credentials: master behind the http lookup", t_master_credentials),
        ("client leaves while the lookup is in flight", t_disconnect_in_flight),
        ("SIGTERM drain with sessions before login", t_drain),
        ("how a session before login ends: LOGOUT, preauth, TLS handshake, 50 BADs",
         t_prelogin_ends),
        ("lookup.keepalive: HTTP/1.1 on kept connections, nginx closing them",
         t_keepalive),
        ("no password in the debug log", t_no_password_in_log),
        ("lookup metrics consistent", t_metrics),
        ("imapgate and nginx stop cleanly", t_stop_clean),
    ], started=t0)


if __name__ == "__main__":
    sys.exit(main())
