#!/usr/bin/env python3
"""Login routing by rendezvous hashing (`backend.route: login`, `lookup:
{type: hash}`), against real servers:

  h1, h2, h3   three Dovecots that all hold the same 300 users
               (u000@d0.test .. u299@d9.test); each user's INBOX message
               names the server, so where a login landed is observable.

- Agreement: two imapgate instances with the same servers (listed in
  opposite orders) send each of the 300 users to the same server, and
  imapgate's own login line names the server the mailbox came from.
- Weights 1:2:1 give the middle server roughly half (40-60 %).
- `key: domain` sends every user of a domain to one server.
- Stopping h2 moves only h2's users (to h1 or h3); everyone else stays.
- WildDuck's imap-core (node; skipped without it) behind `client_ip:
  proxy-v1`: the client never sees WildDuck's greeting, logs in, SELECTs,
  and WildDuck saw the client's address from the PROXY header.

usage: test_route_hash.py [PATH-TO-IMAPGATE]   (or $IMAPGATE)
Skips (77) unless dovecot is installed.
"""

import os
import re
import sys
import time

import harness
from harness import Fail, check, say
import test_guard_common as common
import test_route_common as rc

NUSERS = 300
NDOMAINS = 10
SERVERS = ("h1", "h2", "h3")
USERS = {"u%03d@d%d.test" % (i, i % NDOMAINS): "pw-%03d-x" % i for i in range(NUSERS)}
THREADS = 6                 # logins in flight at once (2-core CI)
WD_GREETING = b"WildDuck IMAP Server ready for requests from"


def ports(env, order=SERVERS, weights=None):
    """The pool entries for the Dovecots in order, with optional weights."""
    out = []
    for name in order:
        p = env.dc[name].port
        out.append((p, "weight: %d" % weights[name]) if weights else p)
    return out


def shares(where):
    """{server: count} of a {user: server} map."""
    out = {s: 0 for s in SERVERS}
    for s in where.values():
        out[s] = out.get(s, 0) + 1
    return out


def fmt_shares(where):
    """h1=97 h2=105 h3=98"""
    return " ".join("%s=%d" % kv for kv in sorted(shares(where).items()))


def landing(g, users):
    """land_all through g, timed; also checks imapgate's login lines name
    the server each mailbox came from.  Returns {user: server}."""
    mark = len(g.log_text())
    t0 = time.monotonic()
    where = rc.land_all(g.port, users, threads=THREADS)
    secs = time.monotonic() - t0
    byport = {"127.0.0.1:%d" % d.port: n for n, d in g.env_dc.items()}
    lines = rc.wait_lines(g, r"msg=login user=", len(users), after=mark)
    for line in lines:
        f = rc.log_fields(line)
        user = f.get("user", "").strip('"')
        check(f.get("route") == "hash", "route in %s" % line)
        check(byport.get(f.get("backend")) == where.get(user),
              "%s: imapgate says %s, the mailbox came from %s"
              % (user, f.get("backend"), where.get(user)))
    say("   %d logins through :%d in %.2fs: %s" % (len(users), g.port, secs, fmt_shares(where)))
    return where


def hash_gate(env, order=SERVERS, weights=None, key="user"):
    """An imapgate with the hash lookup over the Dovecots."""
    g = rc.login_gate(env, ports(env, order, weights), "{type: hash, key: %s}" % key,
                      extra="timeouts:\n  login_failure: 100ms\n")
    g.env_dc = env.dc
    return g


def setup(env):
    """Three Dovecots with the same 300 users."""
    t0 = time.monotonic()
    ds = rc.start_dovecots(env.tmp, [(name, USERS) for name in SERVERS])
    env.backends.extend(ds)
    env.dc = {d.name: d for d in ds}
    env.first = None
    say("setup: 3 Dovecots x %d users (%s) in %.2fs"
        % (NUSERS, ", ".join("%s %d" % (d.name, d.port) for d in ds), time.monotonic() - t0))


def t_agreement(env):
    """Two instances (servers listed in opposite orders) agree on every user."""
    g1 = hash_gate(env)
    g2 = hash_gate(env, order=tuple(reversed(SERVERS)))
    w1 = landing(g1, USERS)
    w2 = landing(g2, USERS)
    diff = sorted(u for u in USERS if w1[u] != w2[u])
    check(not diff, "%d users land differently: %s" % (len(diff), ", ".join(
        "%s %s/%s" % (u, w1[u], w2[u]) for u in diff[:10])))
    for s, n in shares(w1).items():
        check(n >= NUSERS * 0.15, "%s got %d of %d users (hashing does not spread)"
              % (s, n, NUSERS))
    env.first = w1


def t_weights(env):
    """Weights 1:2:1: the middle server gets 40-60 % of the users."""
    g = hash_gate(env, weights={"h1": 1, "h2": 2, "h3": 1})
    w = landing(g, USERS)
    n = shares(w)["h2"]
    check(0.40 * NUSERS <= n <= 0.60 * NUSERS, "h2 (weight 2 of 4) got %d of %d users"
          % (n, NUSERS))
    if env.first:
        # Raising h2's weight only moves users to h2, never between h1 and h3.
        moved = [u for u in USERS if w[u] != env.first[u] and w[u] != "h2"]
        check(not moved, "%d users moved elsewhere than to h2: %s" % (len(moved), moved[:5]))


def t_domain(env):
    """key: domain: every user of a domain on one server (4 users of each
    of the 10 domains)."""
    g = hash_gate(env, key="domain")
    users = {}
    for d in range(NDOMAINS):
        for u in [x for x in USERS if x.endswith("@d%d.test" % d)][:4]:
            users[u] = USERS[u]
    w = landing(g, users)
    per = {}
    for u, s in w.items():
        per.setdefault(u.split("@")[1], set()).add(s)
    split = {d: sorted(s) for d, s in per.items() if len(s) != 1}
    check(not split, "domains split across servers: %r" % split)
    used = {next(iter(s)) for s in per.values()}
    say("   domains -> %s" % " ".join("%s:%s" % (d, next(iter(s)))
                                      for d, s in sorted(per.items())))
    check(len(used) >= 2, "all %d domains on %s" % (NDOMAINS, used))


def t_stop_one(env):
    """h2 stopped: h2's users move to h1 or h3 (both take some), nobody else
    moves."""
    if env.first is None:
        raise Fail("needs the agreement test's landing map")
    env.dc["h2"].stop()
    # A fresh instance: hashing has no state, the agreement test showed it.
    w = landing(hash_gate(env), USERS)
    stayed_bad = [u for u in USERS if env.first[u] != "h2" and w[u] != env.first[u]]
    moved = [u for u in USERS if env.first[u] == "h2"]
    check(not stayed_bad, "%d users of h1/h3 moved: %s" % (len(stayed_bad), ", ".join(
        "%s %s->%s" % (u, env.first[u], w[u]) for u in stayed_bad[:10])))
    to = {s: sum(1 for u in moved if w[u] == s) for s in SERVERS}
    say("   h2's %d users went to h1: %d, h3: %d" % (len(moved), to["h1"], to["h3"]))
    check(to["h2"] == 0 and to["h1"] + to["h3"] == len(moved), "h2's users: %r" % to)
    check(min(to["h1"], to["h3"]) >= len(moved) * 0.25,
          "h2's users did not spread over h1 and h3: %r" % to)


def t_wildduck(env):
    """WildDuck (imap-core, useProxy) behind `client_ip: proxy-v1`: imapgate's
    greeting only, LOGIN, SELECT, and WildDuck names the client's address."""
    why = common.wildduck_available()
    if why is not None:
        say("   SKIP: %s" % why)
        return "skip"
    wd = common.WildDuck(env.tmp, env={"WD_PROXY": "1", "WD_DEBUG": "1"}).start()
    env.backends.append(wd)
    g = rc.login_gate(env, [wd.port], "{type: hash}", backend="  client_ip: proxy-v1\n")
    src = "127.0.0.7"
    c = rc.Raw(g.port, src=src)
    seen = c.greeting
    check(c.greeting.startswith(b"* OK [CAPABILITY IMAP4rev1 ") and
          WD_GREETING not in c.greeting, "greeting %r" % c.greeting)
    data = c.cmd("a", "LOGIN testuser pass")
    seen += data
    check(re.match(rb"^a OK \[CAPABILITY [^\]]*\] .*\r\n$", data), "LOGIN -> %r" % data)
    data = c.cmd("b", "SELECT INBOX")
    seen += data
    check(rc.tagged_line(data, "b").startswith(b"b OK") and
          re.search(rb"\* (\d+) EXISTS", data), "SELECT -> %r" % data)
    data = c.cmd("c", "LOGOUT")
    seen += data
    c.close()
    check(WD_GREETING not in seen, "the client saw WildDuck's greeting: %r" % seen)
    say("   login: %r" % seen.split(b"\r\n")[1][:100])
    # WildDuck's own trace names the address it took from the PROXY header.
    end = time.monotonic() + 5
    while time.monotonic() < end and src not in wd.proc.log_text():
        time.sleep(0.05)
    log = wd.proc.log_text()
    hits = [x for x in log.splitlines() if src in x]
    check(hits, "WildDuck's log never names %s (the PROXY header's source):\n%s"
          % (src, log[-1500:]))
    say("   wildduck: %s" % hits[0][:160])


def t_stop_clean(env):
    """The gates still running exit with status 0 on SIGTERM."""
    for g in list(env.gates):
        env.stop_gate(g)


def main():
    missing = rc.missing_tools("dovecot")
    if missing:
        say("SKIP: " + "; ".join(missing))
        return harness.SKIP
    env = common.GuardEnv(sys.argv)
    try:
        setup(env)
    except Exception:
        env.cleanup()
        raise
    common.run(env, [
        ("two instances agree on all 300 users", t_agreement),
        ("weights 1:2:1", t_weights),
        ("key: domain", t_domain),
        ("stopping h2 moves only h2's users", t_stop_one),
        ("WildDuck with client_ip: proxy-v1", t_wildduck),
        ("gates stop cleanly", t_stop_clean),
    ])


if __name__ == "__main__":
    sys.exit(main())
