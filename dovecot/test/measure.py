#!/usr/bin/env python3
"""Figures for the plugin under bulk work, printed by smoke.sh before its
checks (not under valgrind, where times mean nothing):

- the time of an LMTP transaction to 20 recipients and to one, with the
  plugin on for the recipients (r01..r20) against off (n01..n20), as the
  median of interleaved runs, with a daemon stand-in that answers at once;
- the /notify requests one IMAP STORE and one EXPUNGE over 3,000 messages
  cost.

Uses the same Dovecot, users and stand-in as checks.py.
"""

import argparse
import json
import statistics
import time

import checks


def timed(port, users, subject):
    t0 = time.perf_counter()
    _, replies = checks.lmtp_transaction(port, ["%s@example.org" % u for u in users], subject)
    took = time.perf_counter() - t0
    if [c for c, _ in replies] != [250] * len(users):
        raise SystemExit("measure: delivery failed: %r" % replies)
    return took


def transaction_times(port, on, off, rounds):
    """Median seconds with the plugin on and off, interleaved so that both
    see the same machine."""
    with_plugin, without = [], []
    timed(port, on, "warm-up")
    timed(port, off, "warm-up")
    for i in range(rounds):
        pair = [(with_plugin, on), (without, off)]
        if i % 2:
            pair.reverse()
        for times, users in pair:
            times.append(timed(port, users, "measure %d" % i))
    return statistics.median(with_plugin), statistics.median(without)


def bulk_requests(a, standin, count):
    """/notify requests for STORE +FLAGS and EXPUNGE over count messages."""
    checks.make_messages(a.dir, "mass", count)
    im = checks.Imap(a.imap_port)
    im.cmd("m1", "LOGIN mass secret")
    im.cmd("m2", "SELECT INBOX")
    n = len(standin.lines("notify"))
    im.cmd("m3", "STORE 1:* +FLAGS.SILENT (\\Seen \\Deleted)")
    im.cmd("m4", "EXPUNGE")
    im.cmd("m5", "LOGOUT")
    im.close()
    # Requests that expired in the plugin never arrive: wait for the
    # expunge's, then a little for stragglers of the old one-per-message
    # plugin.
    checks.wait_notify(standin, n, lambda b: "MessageExpunge" in b.get("Events", []), 10)
    last, stable = -1, 0
    while stable < 5:
        time.sleep(0.2)
        now = len(standin.lines("notify"))
        stable = stable + 1 if now == last else 0
        last = now
    return [json.loads(l) for l in standin.lines("notify")[n:]]


def main():
    ap = argparse.ArgumentParser()
    checks.harness_args(ap)
    ap.add_argument("--rounds", type=int, default=10)
    a = ap.parse_args()

    standin = checks.Standin(a.standin, a.http_port, a.dir)
    standin.start()
    checks.wait_port(a.imap_port)
    checks.wait_port(a.lmtp_port)
    try:
        on = ["r%02d" % i for i in range(1, 21)]
        off = ["n%02d" % i for i in range(1, 21)]
        t_on, t_off = transaction_times(a.lmtp_port, on, off, a.rounds)
        print("measure: LMTP transaction to 20 recipients: %.1f ms with the plugin, %.1f ms "
              "without (median of %d)" % (t_on * 1000, t_off * 1000, a.rounds))
        t_on, t_off = transaction_times(a.lmtp_port, on[:1], off[:1], a.rounds * 2)
        print("measure: LMTP transaction to 1 recipient: %.1f ms with the plugin, %.1f ms "
              "without (median of %d)" % (t_on * 1000, t_off * 1000, a.rounds * 2))
        count = 3000
        bodies = bulk_requests(a, standin, count)
        print("measure: IMAP STORE and EXPUNGE over %d messages: %d /notify requests reached "
              "the daemon" % (count, len(bodies)))
    finally:
        standin.stop()


if __name__ == "__main__":
    main()
