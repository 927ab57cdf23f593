#!/usr/bin/env python3
"""Login routing with the static map (`backend.route: login`, `lookup:
{type: static}`), against real Dovecots and real clients:

  a: alice@a.test, bob@a.test, mover@m.test     (the map's `@a.test` line)
  b: carol@b.test, dave, erin@a.test, mover@m.test, master user
     (user lines; erin's line beats the `@a.test` domain line)
  c: frank@c.test   (in no map line: the pool of `fallback: hash`)
  d: gina@d.test    (stopped by one test)

Every user lands on their server through imaplib LOGIN, imaplib
AUTHENTICATE PLAIN, curl (AUTHENTICATE PLAIN with SASL-IR), curl AUTH LOGIN
and mbsync; the greeting is imapgate's and the login's OK carries the
backend's capabilities.  Refused logins (not in the map, unknown at the
backend, wrong password) get NO [AUTHENTICATIONFAILED] after the failure
delay and the same connection may log in next; an unmatched user goes to
the pool with `fallback: hash`; a stopped server gives NO [UNAVAILABLE]
undelayed; SIGHUP re-reads the map (new sessions only), a broken map is
refused with its position and the old one stays; the master-user login;
the summary line and the lookup/login metrics.

usage: test_route_static.py [PATH-TO-IMAPGATE]   (or $IMAPGATE)
Skips (77) unless dovecot, curl and mbsync are installed.
"""

import os
import re
import signal
import subprocess
import sys
import time

import harness
from harness import Fail, check, say
import test_guard_common as common
import test_route_common as rc

MASTER = ("route-master", "Master-pw-9c1")
USERS_A = {"alice@a.test": "alice-Pw-1", "bob@a.test": "bob pw%2",
           "mover@m.test": "mover-Pw-7"}
USERS_B = {"carol@b.test": "carol-Pw-3", "dave": "dave-Pw-4", "erin@a.test": "erin-Pw-5",
           "mover@m.test": "mover-Pw-7"}
USERS_C = {"frank@c.test": "frank-Pw-6"}
USERS_D = {"gina@d.test": "gina-Pw-8"}
GREETING = (b"* OK [CAPABILITY IMAP4rev1 SASL-IR LITERAL+ ID AUTH=PLAIN AUTH=LOGIN] "
            b"IMAP server ready.\r\n")
FAILURE_MS = 100            # timeouts.login_failure: the first failure's delay
# Capabilities only Dovecot's post-login list has (imapgate's own list has none).
BACKEND_ONLY_CAPS = {b"IDLE", b"NAMESPACE", b"UIDPLUS", b"MOVE", b"UNSELECT"}
NO_AUTH = b"NO [AUTHENTICATIONFAILED] Authentication failed\r\n"
NO_UNAVAILABLE = b"NO [UNAVAILABLE] Backend server unavailable, try again later\r\n"


def map_text(env, mover="a"):
    """The map file: a domain line, user lines, mover on server `mover`."""
    p = {k: d.port for k, d in env.dc.items()}
    return ("# imapgate test map (test_route_static.py)\n"
            "@a.test        127.0.0.1:%d\n"
            "erin@a.test    127.0.0.1:%d   # beats the domain line\n"
            "carol@b.test   127.0.0.1:%d\n"
            "dave           127.0.0.1:%d\n"
            "mover@m.test   127.0.0.1:%d\n"
            "gina@d.test    127.0.0.1:%d\n"
            "ghost@x.test   127.0.0.1:%d\n"
            % (p["a"], p["b"], p["b"], p["b"], p[mover], p["d"], env.dead_port))


def write_map(path, text):
    """Replace the map file in one rename (a reload never sees half a file)."""
    tmp = path + ".new"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def static_gate(env, map_path=None, fallback="reject", servers=None, backend="", **kw):
    """An imapgate with the static lookup over map_path (default the shared map)."""
    lookup = "{type: static, file: %s, fallback: %s}" % (map_path or env.map, fallback)
    extra = "timeouts:\n  login_failure: %dms\n" % FAILURE_MS + kw.pop("extra", "")
    if servers is None:
        servers = [env.dc["a"].port, env.dc["b"].port]
    return rc.login_gate(env, servers, lookup, backend=backend, extra=extra, **kw)


def exchange(port, attempts, src):
    """LOGIN attempts on one connection from source address src:
    [(tagged reply line, seconds it took)]."""
    c = rc.Raw(port, src=src)
    out = []
    try:
        check(c.greeting == GREETING, "greeting %r" % c.greeting)
        for n, (user, pw) in enumerate(attempts, 1):
            tag = "L%d" % n
            t0 = time.monotonic()
            data = c.cmd(tag, "LOGIN %s %s" % (rc._imap_quote(user), rc._imap_quote(pw)))
            secs = time.monotonic() - t0
            check(data == rc.tagged_line(data, tag),
                  "%s: more than the tagged reply reached the client: %r" % (tag, data))
            out.append((data, secs))
        c.send(b"Z LOGOUT\r\n")
        c.until("Z")
    finally:
        c.close()
    return out


def setup(env):
    """Four Dovecots, the map file, the main gate (fallback: reject, metrics)."""
    t0 = time.monotonic()
    ds = rc.start_dovecots(env.tmp, [
        ("a", USERS_A),
        ("b", USERS_B, {"master": MASTER}),
        ("c", USERS_C),
        ("d", USERS_D),
    ])
    env.backends.extend(ds)
    env.dc = {d.name: d for d in ds}
    env.dead_port = harness.free_port()
    env.map = os.path.join(env.tmp, "users.map")
    write_map(env.map, map_text(env))
    env.g = static_gate(env, metrics=True, name="imapgate-main")
    say("setup: 4 Dovecots (a %d, b %d, c %d, d %d), imapgate %d, %.2fs"
        % (env.dc["a"].port, env.dc["b"].port, env.dc["c"].port, env.dc["d"].port,
           env.g.port, time.monotonic() - t0))


def t_greeting_caps(env):
    """imapgate's greeting (not Dovecot's); the login's one tagged OK carries
    Dovecot's post-login capabilities."""
    c = rc.Raw(env.g.port)
    check(c.greeting == GREETING, "greeting %r" % c.greeting)
    check(b"Dovecot" not in c.greeting and b"ready." in c.greeting, "greeting %r" % c.greeting)
    data = c.cmd("a", 'LOGIN "alice@a.test" "%s"' % USERS_A["alice@a.test"])
    c.close()
    m = re.match(rb"^a OK \[CAPABILITY ([^\]]*)\] (.*)\r\n$", data)
    check(m is not None, "LOGIN reply %r (want exactly one tagged OK with a CAPABILITY code)"
          % data)
    caps = set(m.group(1).split())
    # What Dovecot itself says after login.
    d = rc.Raw(env.dc["a"].port)
    check(b"Dovecot" in d.greeting, "Dovecot's own greeting %r" % d.greeting)
    direct = d.cmd("a", 'LOGIN "alice@a.test" "%s"' % USERS_A["alice@a.test"])
    d.close()
    dm = re.match(rb"^a OK \[CAPABILITY ([^\]]*)\] (.*)\r\n$", direct)
    check(dm is not None, "Dovecot's LOGIN reply %r" % direct)
    dcaps = set(dm.group(1).split())
    check(BACKEND_ONLY_CAPS <= caps, "backend capabilities missing: %s"
          % sorted(x.decode() for x in BACKEND_ONLY_CAPS - caps))
    check(caps <= dcaps, "capabilities Dovecot did not offer: %s" % sorted(caps - dcaps))
    check(not any(x.startswith(b"AUTH=") or x in (b"STARTTLS", b"LOGINDISABLED")
                  for x in caps), "pre-login capabilities after login: %s" % sorted(caps))
    check(m.group(2) == dm.group(2), "OK text %r, Dovecot said %r" % (m.group(2), dm.group(2)))
    say("   greeting %r" % c.greeting.strip())
    say("   login OK: %d capabilities of Dovecot's %d, text %r"
        % (len(caps), len(dcaps), m.group(2).decode()))


def t_matrix(env):
    """Every user x every client (imaplib LOGIN / AUTHENTICATE PLAIN, curl,
    curl AUTH LOGIN, mbsync) lands on the server the map names."""
    users = {u: (pw, "a") for u, pw in USERS_A.items() if u != "mover@m.test"}
    users.update({u: (USERS_B[u], "b") for u in ("carol@b.test", "dave", "erin@a.test")})
    t0 = time.monotonic()
    results = rc.run_client_matrix(env.g.port, users, base=env.tmp, log=None)
    say("   %d client runs (%d users x %d clients) in %.2fs"
        % (len(results), len(users), len(rc.CLIENTS), time.monotonic() - t0))
    logins = rc.wait_lines(env.g, r"msg=login user=", len(results))
    for line in logins:
        f = rc.log_fields(line)
        check(f.get("route") == "static", "login line %s" % line)
    mechs = sorted({rc.log_fields(x).get("mech") for x in logins})
    say("   mechanisms seen: %s" % ", ".join(mechs))
    check({"login", "plain", "sasl-login"} <= set(mechs), "mechanisms %s" % mechs)
    for name, d in env.dc.items():
        if name in ("a", "b"):
            want = [u for u, (_, s) in users.items() if s == name]
            got = d.logins()
            for u in want:
                check(got.count(u) >= len(rc.CLIENTS), "Dovecot %s logged %d logins of %s"
                      % (name, got.count(u), u))
            check(not set(got) - set(want) - {"mover@m.test"},
                  "Dovecot %s saw logins of %s" % (name, sorted(set(got) - set(want))))


def t_refused_then_retry(env):
    """Not in the map, unknown at the backend, wrong password: NO
    [AUTHENTICATIONFAILED], each later than the last (the delay grows with
    the address's failures), then a good login on the same connection."""
    good = ("alice@a.test", USERS_A["alice@a.test"])
    cases = [
        ("127.0.0.2", "not in the map, then unknown at a", [("zed@z.test", "x"),
                                                           ("nobody@a.test", "x"), good]),
        ("127.0.0.3", "wrong password three times", [("alice@a.test", "wrong"),
                                                     ("alice@a.test", "wrong-again"),
                                                     ("alice@a.test", "wrong-thrice"), good]),
    ]
    for src, what, attempts in cases:
        mark = len(env.g.log_text())
        got = exchange(env.g.port, attempts, src)
        for (data, secs), (user, _) in zip(got, attempts):
            say("   %-36s %-14s %.3fs %r" % (what, user, secs, data[:60]))
        check(got[0][0] == b"L1 " + NO_AUTH and got[1][0] == b"L2 " + NO_AUTH,
              "%s: %r" % (what, got[:2]))
        for data, _ in got[2:-1]:
            check(data.endswith(b" " + NO_AUTH), "%s: %r" % (what, data))
        check(got[-1][0].startswith(b"L%d OK [CAPABILITY " % len(got)),
              "%s: then %r" % (what, got[-1][0]))
        # Lower bounds only: 1 x and 2 x the base delay for a fresh address.
        check(got[0][1] >= FAILURE_MS / 1000.0 * 0.9,
              "%s: first NO after %.3fs, before the %d ms delay" % (what, got[0][1], FAILURE_MS))
        check(got[1][1] >= 0.15, "%s: second NO after %.3fs (want >= 0.15 s: %d ms x 2)"
              % (what, got[1][1], FAILURE_MS))
        lines = rc.wait_lines(env.g, r"msg=login-failed client_ip=%s " % re.escape(src), 2,
                              after=mark)
        f1, f2 = rc.log_fields(lines[0]), rc.log_fields(lines[1])
        check((f1.get("failures"), f1.get("delay_ms")) == ("1", str(FAILURE_MS)) and
              (f2.get("failures"), f2.get("delay_ms")) == ("2", str(2 * FAILURE_MS)),
              "%s: login-failed lines:\n%s\n%s" % (what, lines[0], lines[1]))
        check(f1.get("route") == "static", "route in %s" % lines[0])
    check(not any(u == "zed@z.test" for d in env.dc.values() for u in d.logins()),
          "zed reached a Dovecot")


def t_fallback(env):
    """fallback: reject refuses a user in no line; fallback: hash sends it to
    the pool (c), while mapped users still go where the map says."""
    line, where = rc.quick_login(env.g.port, "frank@c.test", USERS_C["frank@c.test"],
                                 src="127.0.0.4")
    check(line == b"L " + NO_AUTH and where is None, "reject: frank got %r" % line)
    f = rc.log_fields(rc.wait_lines(env.g, r'msg=login-failed .*user="frank@c.test"', 1)[0])
    check(f.get("reason") == '"user not in the map"', "reject: %r" % f)
    check("frank@c.test" not in env.dc["c"].logins(), "reject: frank reached Dovecot c")
    g = static_gate(env, fallback="hash", servers=[env.dc["c"].port])
    for user, pw, want, route in [("frank@c.test", USERS_C["frank@c.test"], "c",
                                   "static-fallback"),
                                  ("alice@a.test", USERS_A["alice@a.test"], "a", "static"),
                                  ("dave", USERS_B["dave"], "b", "static")]:
        line, where = rc.quick_login(g.port, user, pw)
        check(where == (want, user), "fallback: hash: %s got %r, landed %r" % (user, line, where))
        f = rc.log_fields(rc.wait_lines(g, r'msg=login user="%s"' % re.escape(user), 1)[-1])
        check(f.get("route") == route and f.get("backend") == "127.0.0.1:%d"
              % env.dc[want].port, "%s: %r" % (user, f))
        say("   fallback: hash: %-13s -> %s (route=%s)" % (user, want, route))


def t_server_down(env):
    """gina's server stopped: NO [UNAVAILABLE] without the failure delay,
    and the same connection may retry (still down) and log in as someone
    else."""
    line, where = rc.quick_login(env.g.port, "gina@d.test", USERS_D["gina@d.test"])
    check(where == ("d", "gina@d.test"), "gina before the stop: %r %r" % (line, where))
    env.dc["d"].stop()
    mark = len(env.g.log_text())
    got = exchange(env.g.port, [("gina@d.test", USERS_D["gina@d.test"]),
                                ("gina@d.test", USERS_D["gina@d.test"]),
                                ("alice@a.test", USERS_A["alice@a.test"])], "127.0.0.5")
    for data, secs in got:
        say("   %.3fs %r" % (secs, data[:70]))
    check(got[0][0] == b"L1 " + NO_UNAVAILABLE and got[1][0] == b"L2 " + NO_UNAVAILABLE,
          "down: %r" % got[:2])
    check(got[2][0].startswith(b"L3 OK [CAPABILITY "), "then alice: %r" % got[2][0])
    for line in rc.wait_lines(env.g, r'msg=login-failed .*user="gina@d.test"', 2, after=mark):
        f = rc.log_fields(line)
        # Not the credentials' fault: not delayed, not counted against the address.
        check(f.get("delay_ms") == "0" and f.get("failures") == "0", "down: %s" % line)


def t_reload(env):
    """SIGHUP after editing the map moves mover@m.test from a to b for new
    sessions (an open session stays on a); a broken map is refused with its
    position (reload-failed) and the old map stays; `imapgate -t` prints
    MAPFILE:LINE:COL: message."""
    path = os.path.join(env.tmp, "reload.map")
    write_map(path, map_text(env, mover="a"))
    g = static_gate(env, map_path=path)
    pw = USERS_A["mover@m.test"]
    _, where = rc.quick_login(g.port, "mover@m.test", pw)
    check(where == ("a", "mover@m.test"), "before: mover on %r" % (where,))
    old = rc.Raw(g.port)
    data = old.cmd("o1", 'LOGIN "mover@m.test" "%s"' % pw)
    check(rc.tagged_line(data, "o1").startswith(b"o1 OK"), "open session: %r" % data)
    write_map(path, map_text(env, mover="b"))
    mark = len(g.log_text())
    os.kill(g.proc.pid, signal.SIGHUP)
    rc.wait_lines(g, r"msg=reloaded ", 1, after=mark)
    _, where = rc.quick_login(g.port, "mover@m.test", pw)
    check(where == ("b", "mover@m.test"), "after SIGHUP: mover on %r" % (where,))
    old.send(rc.LANDED_TAIL)
    check(rc.parse_subject(old.until("x3"))[0] == "a", "the open session left server a")
    old.close()
    say("   mover: a -> b for new sessions; the open session stayed on a")
    # A broken map: line 4 has no target, line 6 is a duplicate.
    broken = map_text(env, mover="b").splitlines(True)
    broken[3] = "carol@b.test\n"
    broken[5] = "Dave   127.0.0.1:%d\n" % env.dc["a"].port
    write_map(path, "".join(broken))
    mark = len(g.log_text())
    os.kill(g.proc.pid, signal.SIGHUP)
    lines = rc.wait_lines(g, r"msg=reload-failed ", 2, after=mark)
    text = "\n".join(lines)
    say("   " + "\n   ".join(x[x.index("msg="):] for x in lines))
    check(re.search(re.escape(path) + r":4:\d+: .*carol@b\.test.* no target", text),
          "no positioned error for line 4 in:\n%s" % text)
    check(re.search(re.escape(path) + r":6:\d+: duplicate key", text),
          "no positioned error for line 6 in:\n%s" % text)
    check(rc.wait_lines(g, r"msg=reloaded ", 0, after=mark) == [], "the broken map was taken")
    for user, want in (("mover@m.test", "b"), ("carol@b.test", "b"), ("dave", "b")):
        pw = USERS_B[user]
        _, where = rc.quick_login(g.port, user, pw)
        check(where == (want, user), "old map after a failed reload: %s on %r" % (user, where))
    r = subprocess.run([env.binary, "-t", "-c", g.conf], capture_output=True,
                       timeout=harness.START_TIMEOUT)
    out = (r.stdout + r.stderr).decode("utf-8", "replace")
    say("   imapgate -t: exit %d\n      %s" % (r.returncode, out.strip().replace("\n", "\n      ")))
    check(r.returncode != 0, "imapgate -t accepted the broken map")
    check(re.search(r"(?m)^" + re.escape(path) + r":4:\d+: \S", out) and
          re.search(r"(?m)^" + re.escape(path) + r":6:\d+: \S", out),
          "imapgate -t: no MAPFILE:LINE:COL: message lines:\n%s" % out)


def t_master(env):
    """credentials: master with the static map is refused (`imapgate -t`
    names the key): the backend only sees the master password, and nothing
    else would check the client's, so anyone could log in as anyone.
    Master logins are tested behind the http lookup (route-http)."""
    pwfile = os.path.join(env.tmp, "master.pw")
    with open(pwfile, "w") as f:
        f.write(MASTER[1] + "\n")
    os.chmod(pwfile, 0o600)
    conf = os.path.join(env.tmp, "master-static.yaml")
    with open(conf, "w") as f:
        f.write(rc.login_gate_config(harness.free_port(), [env.dc["b"].port],
                                     "{type: static, file: %s}" % env.map,
                                     backend="  login:\n    credentials: master\n"
                                     "    master_user: %s\n    master_password_file: %s\n"
                                     % (MASTER[0], pwfile)))
    r = subprocess.run([env.binary, "-t", "-c", conf], capture_output=True, text=True,
                       timeout=harness.START_TIMEOUT)
    check(r.returncode == 1 and "master needs backend.lookup.type: http" in r.stderr,
          "master + static not refused: %d %r" % (r.returncode, r.stderr))
    say("   %s" % r.stderr.strip()[:160])


def t_ctl_route_delay(env):
    """The control socket's view of login routing: `ctl route user U` names
    the map's target (or the refusal, or the hash order for a fallback);
    `ctl delay user U D` holds U's logins for D (lower bound only), then
    they go through; `delay ... 0` releases at once."""
    sock = os.path.join(env.tmp, "route-ctl.sock")
    g = static_gate(env, extra="control:\n  socket: %s\n" % sock)

    def ctl(*args):
        r = subprocess.run([env.binary, "ctl", "-S", sock] + list(args), capture_output=True,
                           text=True, timeout=10)
        return r.returncode, r.stdout, r.stderr

    import json
    rc, out, err = ctl("--json", "route", "user", "alice@a.test")
    got = json.loads(out) if rc == 0 else {}
    check(got.get("route") == "static" and got.get("server") == "127.0.0.1:%d" % env.dc["a"].port,
          "route user alice: %d %r %r" % (rc, out, err))
    rc, out, _ = ctl("--json", "route", "user", "nobody@nowhere.test")
    check(rc == 0 and json.loads(out).get("route") == "static-reject",
          "route of an unmatched user: %r" % out)
    rc, out, err = ctl("delay", "user", "dave", "1500ms")
    check(rc == 0, "delay user dave: %d %r" % (rc, err))
    t0 = time.monotonic()
    line, where = rc_login(g, "dave")
    took = time.monotonic() - t0
    check(where == ("b", "dave") and took >= 1.4,
          "a delayed login: %r %r after %.2fs (want >= 1.4 s)" % (line, where, took))
    ctl("delay", "user", "dave", "10s")
    rc, _, err = ctl("delay", "user", "dave", "0")
    check(rc == 0, "release: %r" % err)
    line, where = rc_login(g, "dave")
    check(where == ("b", "dave"), "after the release: %r %r" % (line, where))
    say("   route user alice -> a; delay user dave 1500ms: login after %.2fs" % took)


def rc_login(g, user):
    """quick_login of user with its password from the test's tables."""
    pw = USERS_A.get(user) or USERS_B.get(user)
    return rc.quick_login(g.port, user, pw)


def t_summary_metrics(env):
    """The session-end line has route=static and user=; the lookup and login
    counters count exactly what a fresh gate was asked."""
    g = static_gate(env, metrics=True)
    m0 = rc.scrape_metrics(g)
    steps = [("alice@a.test", USERS_A["alice@a.test"], "ok"),
             ("dave", USERS_B["dave"], "ok"),
             ("zed@z.test", "x", "NO [AUTHENTICATIONFAILED]"),
             ("alice@a.test", "wrong", "NO [AUTHENTICATIONFAILED]"),
             ("ghost@x.test", "x", "NO [UNAVAILABLE]")]
    for user, pw, want in steps:
        line, where = rc.quick_login(g.port, user, pw, src="127.0.0.6")
        if want == "ok":
            check(where == ("a" if user.endswith("a.test") else "b", user),
                  "%s: %r" % (user, line))
        else:
            check(line.startswith(b"L " + want.encode()), "%s: %r" % (user, line))
    ends = rc.wait_lines(g, r"msg=session-end ", len(steps))
    byuser = {}
    for line in ends:
        f = rc.log_fields(line)
        byuser.setdefault(f.get("user"), []).append(f)
    for user in ("alice@a.test", "dave"):
        fs = [f for f in byuser.get('"%s"' % user, []) if f.get("backend") != "-"]
        check(fs and fs[0].get("route") == "static" and fs[0].get("state") == "Logout",
              "session-end of %s: %r" % (user, byuser.get('"%s"' % user)))
    say("   session-end: %s" % ends[0][ends[0].index("msg="):])
    m1 = rc.scrape_metrics(g)

    def delta(name, **labels):
        return rc.metric(m1, name, **labels) - rc.metric(m0, name, **labels)

    got = {
        "lookups static:ok": delta("imapgate_lookups_total", result="static:ok"),
        "lookups static:unmatched": delta("imapgate_lookups_total", result="static:unmatched"),
        "logins ok": delta("imapgate_logins_total", result="ok"),
        "logins failed": delta("imapgate_logins_total", result="failed"),
        "logins unavailable": delta("imapgate_logins_total", result="unavailable"),
        "lookup histogram count": delta("imapgate_lookup_duration_seconds_count",
                                        type="static"),
        "backend logins a ok": delta("imapgate_backend_logins_total",
                                     server="127.0.0.1:%d" % env.dc["a"].port, result="ok"),
        "backend logins a failed": delta("imapgate_backend_logins_total",
                                         server="127.0.0.1:%d" % env.dc["a"].port,
                                         result="failed"),
        "backend logins b ok": delta("imapgate_backend_logins_total",
                                     server="127.0.0.1:%d" % env.dc["b"].port, result="ok"),
    }
    want = {"lookups static:ok": 4, "lookups static:unmatched": 1, "logins ok": 2,
            "logins failed": 2, "logins unavailable": 1, "lookup histogram count": 5,
            "backend logins a ok": 1, "backend logins a failed": 1, "backend logins b ok": 1}
    say("   " + ", ".join("%s=%g" % kv for kv in got.items()))
    bad = ["%s: %g, want %g" % (k, got[k], v) for k, v in want.items() if got[k] != v]
    check(not bad, "metrics: " + "; ".join(bad))


def t_stop_clean(env):
    """The gates started in setup exit with status 0 on SIGTERM."""
    for g in list(env.gates):
        env.stop_gate(g)


def main():
    missing = rc.missing_tools("dovecot", "curl", "mbsync")
    if missing:
        say("SKIP: " + "; ".join(missing))
        return harness.SKIP
    t0 = time.monotonic()
    env = common.GuardEnv(sys.argv)
    try:
        setup(env)
    except Exception:
        env.dump_logs()
        env.cleanup()
        raise
    common.run(env, [
        ("greeting is imapgate's, login OK has the backend's capabilities", t_greeting_caps),
        ("every user x every client lands on the mapped server", t_matrix),
        ("refused logins: delayed NO, retry on the same connection", t_refused_then_retry),
        ("fallback: reject and fallback: hash", t_fallback),
        ("stopped server: NO [UNAVAILABLE] at once, retry", t_server_down),
        ("SIGHUP re-reads the map; a broken map is refused", t_reload),
        ("master user credentials", t_master),
        ("ctl route user and delay user", t_ctl_route_delay),
        ("session-end route= and user=, lookup and login metrics", t_summary_metrics),
        ("gates stop cleanly", t_stop_clean),
    ])
    say("total %.1fs" % (time.monotonic() - t0))


if __name__ == "__main__":
    sys.exit(main())
