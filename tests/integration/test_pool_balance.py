#!/usr/bin/env python3
"""Backend pools (issue 7): where sessions land.

Three scripted backends that name themselves in their greeting, so each
client knows its server; the session-end lines (`backend=`) must agree.
In: round-robin with weights 1/2/1, least-connections, source-ip (through
a PROXY protocol listener, so imapgate sees many client addresses),
`max_connections` of a server, and every server full.

usage: test_pool_balance.py [PATH-TO-IMAPGATE]   (or $IMAPGATE)
"""

import collections
import sys

import test_pool_common as pc
from harness import check, say

ROUNDS = 40                 # sessions of the round-robin test
SOURCES = 12                # client addresses of the source-ip test
REPEATS = 3                 # sessions per address


def by_port(backends):
    """Map "127.0.0.1:PORT" (as in session-end lines) to a backend's name."""
    return {"127.0.0.1:%d" % b.port: b.name for b in backends}


def t_round_robin_weights(env):
    """Weights 1/2/1, 40 sessions one after another: 10/20/10 (smooth
    weighted round-robin is exact over any whole number of cycles), seen
    by the clients and in the session-end lines alike."""
    bs = [pc.named_backend(env, n) for n in ("a", "b", "c")]
    g = pc.pool_gate(env, [(bs[0].port, "weight: 1"), (bs[1].port, "weight: 2"),
                           (bs[2].port, "weight: 1")], backend=pc.QUIET_HEALTH)
    seen = collections.Counter(pc.one_session(g) for _ in range(ROUNDS))
    say("   clients saw %s" % dict(seen))
    check(seen == {"a": 10, "b": 20, "c": 10}, "round-robin 1/2/1 gave %s" % dict(seen))
    names = by_port(bs)
    logged = collections.Counter(names.get(e["backend"], e["backend"])
                                 for e in pc.session_ends(g, ROUNDS))
    check(logged == seen, "session-end backend= counts %s, clients saw %s"
          % (dict(logged), dict(seen)))


def t_least_connections(env):
    """least-connections: 6 held sessions spread 2/2/2; free one server and
    the next two sessions both go to it."""
    bs = [pc.named_backend(env, n) for n in ("a", "b", "c")]
    g = pc.pool_gate(env, [b.port for b in bs],
                     backend="  balance: least-connections\n" + pc.QUIET_HEALTH)
    held = [pc.client(g) for _ in range(6)]
    where = collections.Counter(pc.backend_of(c) for c in held)
    check(where == {"a": 2, "b": 2, "c": 2}, "6 sessions spread %s" % dict(where))
    # Free server b: close its sessions and wait until imapgate has ended them.
    for c in [c for c in held if pc.backend_of(c) == "b"]:
        c.logout()
        held.remove(c)
    pc.session_ends(g, 2)
    new = []
    for _ in range(2):
        c = pc.client(g)
        new.append(c)
        check(pc.backend_of(c) == "b", "least-connections picked %s, not the empty b"
              % pc.backend_of(c))
    # The held sessions were not disturbed.
    for c in held + new:
        c.cmd("NOOP")
        c.logout()


def t_source_ip(env):
    """source-ip: each real client address (from a PROXY header) always gets
    the same server; different addresses spread over more than one."""
    bs = [pc.named_backend(env, n) for n in ("a", "b", "c")]
    g = pc.pool_gate(env, [b.port for b in bs], backend="  balance: source-ip\n" +
                     pc.QUIET_HEALTH, listen=pc.PROXY_LISTEN, probe=False)
    homes = {}
    for r in range(REPEATS):
        for i in range(SOURCES):
            addr = "198.51.100.%d" % (10 + i)
            name = pc.one_session(g, pc.proxy_v1(addr, 40000 + r * 100 + i))
            check(homes.setdefault(addr, name) == name,
                  "%s went to %s, earlier to %s" % (addr, name, homes[addr]))
    spread = collections.Counter(homes.values())
    say("   %d addresses over servers %s" % (SOURCES, dict(spread)))
    check(len(spread) >= 2, "all %d addresses hashed to one server: %s"
          % (SOURCES, dict(spread)))
    ends = pc.session_ends(g, SOURCES * REPEATS)
    names = by_port(bs)
    for e in ends:
        ip = e["client"].rsplit(":", 1)[0]
        check(homes.get(ip) == names.get(e["backend"]),
              "session-end client=%s backend=%s disagrees with what the client saw"
              % (e["client"], e["backend"]))


def t_max_connections(env):
    """A server at max_connections is skipped, and used again once it has
    room; when every server is full the client gets BYE [UNAVAILABLE]."""
    a = pc.named_backend(env, "a")
    b = pc.named_backend(env, "b")
    g = pc.pool_gate(env, [(a.port, "weight: 10, max_connections: 2"),
                           (b.port, "weight: 1, max_connections: 3")],
                     backend=pc.QUIET_HEALTH)
    held = [pc.client(g) for _ in range(5)]
    where = collections.Counter(pc.backend_of(c) for c in held)
    check(where == {"a": 2, "b": 3}, "5 sessions with a max 2 / b max 3: %s" % dict(where))
    full = pc.client(g)
    pc.expect_bye(full, pc.BYE_UNAVAILABLE, "every server full")
    e = pc.session_ends(g, 1)[-1]
    check(e["reason"] == "no-backend", "full pool: reason=%s" % e["reason"])
    # Room on a again: the next session goes there (b is still full).
    ca = [c for c in held if pc.backend_of(c) == "a"][0]
    ca.logout()
    held.remove(ca)
    pc.session_ends(g, 2)
    c = pc.client(g)
    check(pc.backend_of(c) == "a", "freed slot on a, session went to %s" % pc.backend_of(c))
    held.append(c)
    for c in held:
        c.cmd("NOOP")       # the refused session touched none of them
        c.logout()


TESTS = [
    ("round-robin with weights 1/2/1: 10/20/10 of 40", t_round_robin_weights),
    ("least-connections prefers the emptiest server", t_least_connections),
    ("source-ip keeps an address on one server", t_source_ip),
    ("max_connections skips a full server; all full -> BYE", t_max_connections),
]

if __name__ == "__main__":
    pc.run(pc.Env(sys.argv), TESTS)
