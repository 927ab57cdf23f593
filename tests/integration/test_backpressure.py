#!/usr/bin/env python3
"""A slow client must not make imapgate buffer a whole large FETCH.

The client fetches a 20 MB message but reads it at 64 KiB/s for a few
seconds while the proxy's VmRSS is sampled; Dovecot can send far more than
that in the meantime, so an unbounded relay would grow by megabytes. Then
the client reads the rest at full speed and compares it with a direct fetch.

usage: test_backpressure.py [PATH-TO-IMAPGATE]   (or $IMAPGATE; see harness.py)
"""

import os
import sys
import time

import harness
from harness import Fail, check, say

SIZE = 20 * 1024 * 1024
RATE = 64 * 1024          # bytes per second while reading slowly
SLOW_SECONDS = 3.0
TICK = 0.125              # read RATE * TICK bytes every TICK seconds
RSS_SLACK_KIB = 8 * 1024  # allowed growth over the baseline


def backend_send_queue(port):
    """Largest send queue (bytes) of an established socket on 127.0.0.1:port.

    Non-zero means Dovecot has written more than its peer has read, i.e. the
    relay stopped reading from the backend: backpressure reached Dovecot.
    """
    best = 0
    with open("/proc/net/tcp") as f:
        for line in f.readlines()[1:]:
            fields = line.split()
            local, state, queues = fields[1], fields[3], fields[4]
            if state == "01" and int(local.split(":")[1], 16) == port:
                best = max(best, int(queues.split(":")[0], 16))
    return best


def t_slow_reader(env):
    """RSS stays under baseline + 8 MiB while the client reads at 64 KiB/s."""
    d = env.direct_client()
    d.login("demo", "demo")
    d.select("INBOX")
    uid = d.uid_search('HEADER Subject "big20"')[0]
    want = d.fetch_body(uid)
    d.logout()
    check(len(want) >= SIZE, "direct copy has only %d bytes" % len(want))

    c = env.client(timeout=20)
    c.login("demo", "demo")
    c.select("INBOX")
    c.fetch_body(1)  # warm up: buffers and TLS state exist before the baseline
    proc = env.proxy.proc if env.proxy else None
    base = proc.rss_kib() if proc else 0
    say("   baseline RSS %d KiB" % base)

    tag = c.next_tag()
    c.send(("%s UID FETCH %d BODY.PEEK[]\r\n" % (tag, uid)).encode())
    got, peak = 0, base
    start = time.monotonic()
    nxt = start
    while time.monotonic() - start < SLOW_SECONDS:
        want_now = int((time.monotonic() - start + TICK) * RATE)
        while got < want_now:
            n = c.fill(min(8192, want_now - got))
            check(n > 0, "connection closed during slow read")
            got += n
        if proc:
            peak = max(peak, proc.rss_kib())
        nxt += TICK
        time.sleep(max(0.0, nxt - time.monotonic()))
    elapsed = time.monotonic() - start
    queued = backend_send_queue(env.dovecot.port)
    say("   read %d KiB in %.1fs (%.0f KiB/s); peak RSS %d KiB (+%d KiB)"
        % (got // 1024, elapsed, got / 1024 / elapsed, peak, peak - base))
    say("   Dovecot's unsent queue towards the relay: %d KiB" % (queued // 1024))
    check(queued > 0, "Dovecot is not blocked: the relay kept reading from it")
    if proc:
        check(peak - base < RSS_SLACK_KIB,
              "RSS grew by %d KiB while the client read slowly (limit %d KiB)"
              % (peak - base, RSS_SLACK_KIB))
    t1 = time.monotonic()
    tagged, items = c.response(tag)
    check(tagged.startswith(("%s OK" % tag).encode()), "FETCH -> %r" % tagged)
    body = next((lits[-1] for text, lits in items if b"FETCH" in text and lits), None)
    check(body is not None, "no literal in the FETCH response")
    check(body == want, "slowly read body differs (%d vs %d bytes)" % (len(body), len(want)))
    say("   rest read in %.2fs; %d bytes identical to the direct fetch"
        % (time.monotonic() - t1, len(body)))
    if proc:
        say("   RSS after the fetch %d KiB" % proc.rss_kib())
    c.logout()


def main():
    mail = {"demo": [harness.make_message("small", 2000, seed=1),
                     harness.make_message("big20", SIZE, seed=20)]}
    # In a sanitizer build, AddressSanitizer keeps freed memory in a
    # quarantine (256 MB by default) instead of reusing it, so RSS would grow
    # with every byte relayed, not with what is buffered. Without quarantine
    # RSS tracks live memory again; other tests keep the full quarantine.
    asan = os.environ.get("ASAN_OPTIONS", "")
    env = harness.Env(sys.argv, mail, proxy_env={
        "ASAN_OPTIONS": (asan + ":" if asan else "") + "quarantine_size_mb=0"})
    harness.run_tests(env, [("slow reader, bounded proxy memory", t_slow_reader)])


if __name__ == "__main__":
    try:
        main()
    except Fail as e:
        say("FAIL: %s" % e)
        sys.exit(1)
