#!/usr/bin/env python3
"""Login routing, reference run: nginx mail (the real thing) in front of
three real Dovecots, asking a real nginx `auth_http` endpoint where each
user lives.  No imapgate: this proves the fixtures and clients of
test_route_common.py and records what nginx mail answers in each failure
case, the behaviour imapgate's login routing is compared against.

  a: alice@a.test, bob@a.test          b: carol@b.test, dave (+ master user)
  c: erin@c.test (PROXY protocol listener, reached by a second nginx mail
     with `proxy_protocol on`)

usage: test_route_nginx.py [PATH-TO-IMAPGATE]   (the argument is ignored)
Skips (77) unless dovecot, nginx + libnginx-mod-mail, curl and mbsync are
installed.
"""

import imaplib
import sys
import time

import harness
from harness import Fail, check, say
import test_route_common as rc

MASTER = ("route-master", "Master-pw-9c1")
USERS_A = {"alice@a.test": "alice-Pw-1", "bob@a.test": "bob pw%2"}   # space, % escaped
USERS_B = {"carol@b.test": "carol-Pw-3", "dave": "dave-Pw-4"}
USERS_C = {"erin@c.test": "erin-Pw-5"}
CAROL_FRONT = "carol-front-Pw"   # what carol types; nginx logs in as carol*master
AUTH_TIMEOUT = 2                 # auth_http_timeout of the nginx mail in the broken cases
BROKEN_BOUND = AUTH_TIMEOUT + 2.0   # seconds nginx may take to answer in a broken case
BAD_INTERNAL = b"* BAD internal server error\r\n"


def setup(env):
    """Three Dovecots, one NginxAuth, two NginxMails (plain, PROXY to c)."""
    t0 = time.monotonic()
    a, b, c = rc.start_dovecots(env.tmp, [
        ("a", USERS_A),
        ("b", USERS_B, {"master": MASTER}),
        ("c", USERS_C, {"haproxy": True}),
    ])
    for d in (a, b, c):
        env.add(d)
    t1 = time.monotonic()
    routes = {u: (pw, a.port) for u, pw in USERS_A.items()}
    routes.update({"carol@b.test": (CAROL_FRONT, b.port), "dave": (USERS_B["dave"], b.port)})
    routes.update({u: (pw, c.port) for u, pw in USERS_C.items()})
    auth = env.add(rc.NginxAuth(env.dir("auth"), routes,
                                overrides={"carol@b.test": ("carol@b.test" + rc.MASTER_SEPARATOR
                                                            + MASTER[0], MASTER[1])},
                                wait={"ghost@a.test": 1},
                                fail={"locked@a.test": "Account locked"}).start())
    mail = env.add(rc.NginxMail(env.dir("mail"), auth.url).start())
    mail_pp = env.add(rc.NginxMail(env.dir("mail-pp"), auth.url, proxy_protocol=True,
                                   name="nginx-mail-pp").start())
    t2 = time.monotonic()
    say("setup: 3 Dovecots %.2fs (ports %d %d %d), nginx auth + 2 mail %.2fs (auth %d, "
        "mail %d, mail-pp %d)" % (t1 - t0, a.port, b.port, c.port, t2 - t1, auth.port,
                                  mail.port, mail_pp.port))
    env.a, env.b, env.c, env.auth, env.mail, env.mail_pp = a, b, c, auth, mail, mail_pp


def t_dovecot_direct(env):
    """Each Dovecot on its own: its users land on it; master user by LOGIN
    `user*master` and by AUTHENTICATE PLAIN authzid; no cross logins."""
    a, b = env.a, env.b
    for u, pw in USERS_A.items():
        check(rc.client_imaplib(a.port, u, pw) == "a", "%s on a" % u)
    check(rc.client_imaplib(b.port, "dave", USERS_B["dave"]) == "b", "dave on b")
    # Master user, by hand with imaplib.
    conn = imaplib.IMAP4(rc.HOST, b.port, timeout=rc.CLIENT_TIMEOUT)
    typ, _ = conn.login('"carol@b.test*%s"' % MASTER[0], MASTER[1])
    check(typ == "OK", "master LOGIN")
    check(rc.landed_user(conn) == ("b", "carol@b.test"), "master LOGIN landed as carol")
    conn.logout()
    check(rc.client_imaplib_auth_plain(b.port, MASTER[0], MASTER[1], authzid="carol@b.test")
          == "b", "master AUTHENTICATE PLAIN")
    # What must not work.
    for user, pw, why in [
            ("carol@b.test*" + MASTER[0], "wrong", "master with a wrong password"),
            ("nobody@b.test*" + MASTER[0], MASTER[1], "master as an unknown user"),
            (MASTER[0], MASTER[1], "the master user as an ordinary user"),
            ("dave*carol@b.test", USERS_B["carol@b.test"], "an ordinary user as master"),
            ("carol@b.test", CAROL_FRONT, "the front password at the backend"),
            ("alice@a.test", USERS_A["alice@a.test"], "a's user on b")]:
        r = rc.login_exchange(b.port, [(user, pw)], linger=0)
        reply = r["replies"][0][1] if r["replies"] else b""
        check(reply.startswith(b"L1 NO "), "%s: %r" % (why, reply))
        say("   refused (%s) in %.3fs: %r" % (why, r["replies"][0][2], reply))
    r = rc.login_exchange(env.a.port, [("bob@a.test", "wrong"),
                                       ("bob@a.test", USERS_A["bob@a.test"])], linger=0)
    check(r["replies"][0][1].startswith(b"L1 NO [AUTHENTICATIONFAILED]")
          and r["replies"][1][1].startswith(b"L2 OK"), "retry at Dovecot: %r" % r["replies"])
    check(r["replies"][0][2] < 0.4, "Dovecot took %.2fs to refuse (auth_failure_delay 0 and "
          "nodelay should make it immediate)" % r["replies"][0][2])


def t_matrix(env):
    """Every user x every client through nginx mail lands on their server;
    carol (front password, master override) lands on b too."""
    users = {u: (pw, "a") for u, pw in USERS_A.items()}
    users["dave"] = (USERS_B["dave"], "b")
    users["carol@b.test"] = (CAROL_FRONT, "b")
    mark = len(env.auth.requests())
    t0 = time.monotonic()
    results = rc.run_client_matrix(env.mail.port, users, base=env.tmp)
    say("   %d runs in %.2fs" % (len(results), time.monotonic() - t0))
    reqs = env.auth.requests()[mark:]
    check(len(reqs) == len(results),
          "%d auth requests for %d client runs" % (len(reqs), len(results)))
    methods = {}
    for (cname, _, _, _), r in zip(results, reqs):
        methods.setdefault(cname, set()).add(r["method"])
        check(r["protocol"] == "imap" and r["client_ip"] == "127.0.0.1" and r["attempt"] == "1"
              and r["status"] == "OK", "auth request %r" % r)
    say("   Auth-Method per client: %s" % ", ".join("%s=%s" % (k, "/".join(sorted(v)))
                                                  for k, v in methods.items()))
    with open(env.auth.authlog, "rb") as f:
        log = f.read()
    for pw in list(USERS_A.values()) + [CAROL_FRONT, USERS_B["dave"], MASTER[1]]:
        check(pw.encode() not in log and rc.mail_auth_escape(pw).encode() not in log,
              "a password is in auth.log")
    # The master path: Dovecot b logged carol in, while nginx only ever knew
    # carol's front password (not her Dovecot one).
    check(env.b.logins().count("carol@b.test") >= len(rc.CLIENTS),
          "Dovecot b's log has %d carol logins" % env.b.logins().count("carol@b.test"))


def t_proxy_protocol(env):
    """erin@c.test behind a PROXY-protocol Dovecot, through nginx mail with
    `proxy_protocol on`, every client."""
    rc.run_client_matrix(env.mail_pp.port, {"erin@c.test": (USERS_C["erin@c.test"], "c")},
                         base=env.tmp)
    check("erin@c.test" in env.c.logins(), "no erin login in c's log")


def t_refusals(env):
    """Unknown user, wrong password, a forced failure: nginx mail's NO, and
    what happens to the connection (Auth-Wait 0: closed; 1: retry)."""
    good = ("alice@a.test", USERS_A["alice@a.test"])
    cases = [
        ("unknown user, Auth-Wait 0", [("nobody@a.test", "x"), good]),
        ("wrong password, Auth-Wait 0", [("alice@a.test", "wrong"), good]),
        ("forced failure", [("locked@a.test", "x"), good]),
        ("unknown user, Auth-Wait 1", [("ghost@a.test", "x"), good]),
    ]
    got = {}
    for name, attempts in cases:
        r = rc.login_exchange(env.mail.port, attempts, timeout=5)
        got[name] = r
        say("   %-28s greeting %r" % (name, r["greeting"]))
        for tag, data, secs in r["replies"]:
            say("      %s after %.3fs: %r"
                % (tag, secs, data[:90] + (b"..." if len(data) > 90 else b"")))
        say("      closed: %s" % (r["closed"],))
    for name in ("unknown user, Auth-Wait 0", "wrong password, Auth-Wait 0"):
        r = got[name]
        check(r["replies"][0][1] == b"L1 NO " + rc.INVALID_LOGIN.encode() + b"\r\n",
              "%s: %r" % (name, r["replies"][0]))
        check(r["closed"] is not None and r["closed"][1] == 1,
              "%s: nginx kept the connection (%r)" % (name, r["closed"]))
    r = got["forced failure"]
    check(r["replies"][0][1] == b"L1 NO Account locked\r\n" and r["closed"] is not None,
          "forced failure: %r" % r)
    r = got["unknown user, Auth-Wait 1"]
    check(r["replies"][0][1] == b"L1 NO " + rc.INVALID_LOGIN.encode() + b"\r\n"
          and 0.9 <= r["replies"][0][2] < 3.0, "Auth-Wait 1: %r" % (r["replies"][:1],))
    check(r["closed"] is None and r["replies"][1][1].startswith(b"L2 OK "),
          "retry after Auth-Wait 1: %r" % r)
    ghost = [x for x in env.auth.requests() if x["user"] in ("ghost@a.test",)]
    retry = [x for x in env.auth.requests() if x["user"] == "alice@a.test" and x["attempt"] == "2"]
    check(len(ghost) == 1 and len(retry) == 1,
          "auth requests: ghost %r, alice attempt 2 %r" % (ghost, retry))


def t_authzid_via_nginx(env):
    """AUTHENTICATE PLAIN with an authzid through nginx mail: recorded, not
    judged (nginx mail has no notion of authzid)."""
    mark = len(env.auth.requests())
    try:
        server = rc.client_imaplib_auth_plain(env.mail.port, "dave", USERS_B["dave"],
                                              authzid="carol@b.test")
        say("   landed on %s" % server)
    except Fail as e:
        say("   refused: %s" % e)
    say("   auth requests: %r" % [(x["user"], x["method"], x["status"])
                                 for x in env.auth.requests()[mark:]])


def t_broken_auth(env):
    """Every BrokenAuth kind: nginx mail answers the LOGIN with an untagged
    BAD and closes, within auth_http_timeout plus a margin."""
    for kind in rc.BROKEN_KINDS:
        b = env.add(rc.BrokenAuth(kind))
        m = env.add(rc.NginxMail(env.dir("mail-" + kind), b.url, auth_timeout=AUTH_TIMEOUT,
                                 name="nginx-mail-" + kind).start())
        r = rc.login_exchange(m.port, [("alice@a.test", USERS_A["alice@a.test"])],
                              timeout=BROKEN_BOUND + 2)
        reply = r["replies"][0] if r["replies"] else ("L1", b"", r["seconds"])
        say("   %-8s %r after %.3fs, closed %s, %d request(s) reached the endpoint"
            % (kind, reply[1], reply[2], r["closed"], len(b.requests())))
        check(reply[1] == BAD_INTERNAL, "%s: nginx answered %r" % (kind, reply[1]))
        check(r["closed"] == ("eof", 0), "%s: connection %r" % (kind, r["closed"]))
        check(reply[2] < BROKEN_BOUND, "%s: %.2fs to answer" % (kind, reply[2]))
        check(kind == "down" or len(b.requests()) == 1,
              "%s: %d requests" % (kind, len(b.requests())))
        t0 = time.monotonic()
        m.stop()
        b.stop()
        check(time.monotonic() - t0 < 5, "%s: stopping took %.2fs" % (kind, time.monotonic() - t0))


def t_stop_clean(env):
    """nginx exits on SIGTERM (no leftover pid file needed, no crash)."""
    for n in (env.mail_pp, env.mail, env.auth):
        rc_ = n.proc.stop()
        check(rc_ == 0, "%s exited with %s:\n%s" % (n.name, rc_, n.log_text()[-1500:]))


def main():
    missing = rc.missing_tools("dovecot", "nginx", "nginx-mail", "curl", "mbsync")
    if missing:
        say("SKIP: " + "; ".join(missing))
        return harness.SKIP
    t0 = time.monotonic()
    env = rc.RouteEnv()
    try:
        setup(env)
    except Exception:
        env.dump_logs()
        env.cleanup()
        raise
    rc.run(env, [
        ("Dovecot direct: users, master user, refusals", t_dovecot_direct),
        ("nginx mail: every user x every client", t_matrix),
        ("nginx mail with PROXY protocol to Dovecot c", t_proxy_protocol),
        ("nginx mail: unknown user, wrong password, forced failure", t_refusals),
        ("nginx mail: AUTHENTICATE PLAIN with authzid (recorded)", t_authzid_via_nginx),
        ("nginx mail: broken auth endpoints", t_broken_auth),
        ("nginx stops cleanly", t_stop_clean),
    ], started=t0)


if __name__ == "__main__":
    sys.exit(main())
