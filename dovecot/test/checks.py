#!/usr/bin/env python3
"""IMAP/LMTP checks run by smoke.sh against a live Dovecot with the xaps plugins.

Talks raw IMAP over a socket (to see the exact response lines), delivers with
smtplib.LMTP and drives standin.py (the fake xapsd) as a child process so it
can be stopped and started again for the "daemon down" cases.
"""

import argparse
import http.client
import json
import os
import re
import smtplib
import socket
import subprocess
import sys
import time

TOPIC = "com.apple.mail.XServer.01234567-89ab-cdef-0123-456789abcdef"
ACCOUNT = "0715A26B-CA09-4730-A419-793000CA982E"
TOKEN = "2918390218931890821908309283098109381029309829018310983092892829"

IOS_FORM = ('"aps-version" "2" "aps-account-id" "%s" "aps-device-token" "%s" '
            '"aps-subtopic" "com.apple.mobilemail" "mailboxes" ("INBOX" "Notes" "Missing")'
            % (ACCOUNT, TOKEN))

failures = []

# Time bounds are multiplied by this (--slow), for runs under valgrind.
SLOW = 1.0


def within(secs):
    return secs * SLOW

# Dovecot 2.3 ends the text of every tagged reply with " (0.001 + 0.000 secs)."
# (replacing a final dot if there is one); compare the text with just a dot.
TIMING = re.compile(r" \(\d+\.\d+ \+ \d+\.\d+(?: \+ \d+\.\d+)? secs\)\.$")


def strip_timing(line):
    return TIMING.sub(".", line)


def check(cond, what, detail=""):
    if cond:
        print("ok   " + what)
    else:
        print("FAIL " + what + (": " + detail if detail else ""))
        failures.append(what)


class Imap:
    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=15)
        self.buf = b""
        self.greeting = self.readline()

    def readline(self):
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError("connection closed")
            self.buf += data
        line, self.buf = self.buf.split(b"\r\n", 1)
        m = re.search(rb"\{(\d+)\}$", line)
        if m:  # literal: splice it and the rest of the line in
            n = int(m.group(1))
            while len(self.buf) < n:
                self.buf += self.sock.recv(65536)
            line += b"\r\n" + self.buf[:n]
            self.buf = self.buf[n:]
            line += self.readline().encode()
        return line.decode("utf-8", "replace")

    def send(self, text):
        self.sock.sendall(text.encode() + b"\r\n")

    def read_tagged(self, tag):
        untagged = []
        while True:
            line = self.readline()
            if line.startswith(tag + " "):
                return untagged, strip_timing(line)
            untagged.append(line)

    def cmd(self, tag, text):
        self.send("%s %s" % (tag, text))
        return self.read_tagged(tag)

    def close(self):
        self.sock.close()


class Standin:
    def __init__(self, script, port, directory):
        self.script, self.port, self.dir = script, port, directory
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([sys.executable, self.script, str(self.port), self.dir],
                                     stderr=open(os.path.join(self.dir, "standin.err"), "ab"))
        with open(os.path.join(self.dir, "standin.pid"), "w") as f:
            f.write(str(self.proc.pid))
        wait_port(self.port)

    def stop(self):
        self.proc.terminate()
        self.proc.wait()
        os.unlink(os.path.join(self.dir, "standin.pid"))

    def mode(self, mode, what="/_mode"):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        conn.request("POST", what, body=mode)
        conn.getresponse().read()
        conn.close()

    def lines(self, name):
        try:
            with open(os.path.join(self.dir, name + ".log"), encoding="utf-8") as f:
                return f.read().splitlines()
        except FileNotFoundError:
            return []


def wait_port(port, secs=15):
    deadline = time.time() + within(secs)
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("port %d did not open" % port)


def wait_for(fn, secs=8):
    deadline = time.time() + within(secs)
    while time.time() < deadline:
        v = fn()
        if v:
            return v
        time.sleep(0.1)
    return None


def wait_notify(standin, start, pred, secs=8):
    """First /notify body after index start that satisfies pred."""
    def find():
        for line in standin.lines("notify")[start:]:
            body = json.loads(line)
            if pred(body):
                return (line, body)
        return None
    return wait_for(find, secs)


def deliver(port, rcpt, subject):
    msg = "From: sender@example.org\r\nTo: %s\r\nSubject: %s\r\n\r\nhello\r\n" % (rcpt, subject)
    with smtplib.LMTP("127.0.0.1", port) as lmtp:
        refused = lmtp.sendmail("sender@example.org", [rcpt], msg)
    return refused


class LmtpSession:
    """A raw LMTP client: smtplib.LMTP reads one reply after DATA, but LMTP
    answers once per accepted recipient, and those replies are the point of
    the multi-recipient checks."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.buf = b""

    def reply(self):
        """One (possibly multi-line) reply as (code, text); (None, "") on EOF."""
        lines = []
        while True:
            while b"\r\n" not in self.buf:
                data = self.sock.recv(65536)
                if not data:
                    return None, " / ".join(lines)
                self.buf += data
            line, self.buf = self.buf.split(b"\r\n", 1)
            line = line.decode("utf-8", "replace")
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                return int(line[:3]), " / ".join(lines)

    def cmd(self, text):
        self.sock.sendall(text.encode() + b"\r\n")
        return self.reply()

    def close(self):
        self.sock.close()


def lmtp_transaction(port, rcpts, subject, body_size=0):
    """Delivers one message to several recipients in one LMTP transaction.

    Returns (rcpt_codes, data_replies): the RCPT reply code of each recipient
    and the list of (code, text) replies after the final dot, one per accepted
    recipient when the server behaves (code None means the connection closed
    before that reply)."""
    s = LmtpSession(port)
    s.reply()
    s.cmd("LHLO test.example")
    s.cmd("MAIL FROM:<sender@example.org>")
    rcpt_codes = [s.cmd("RCPT TO:<%s>" % r)[0] for r in rcpts]
    accepted = sum(1 for c in rcpt_codes if c == 250)
    replies = []
    if accepted:
        code, _ = s.cmd("DATA")
        if code == 354:
            filler = ("x" * 70 + "\r\n") * (body_size // 72)
            msg = ("From: sender@example.org\r\nTo: %s\r\nSubject: %s\r\n\r\nhello\r\n%s.\r\n"
                   % (", ".join(rcpts), subject, filler))
            s.sock.sendall(msg.encode())
            for _ in range(accepted):
                code, text = s.reply()
                replies.append((code, text))
                if code is None:
                    break
    try:
        s.cmd("QUIT")
    except OSError:
        pass
    s.close()
    return rcpt_codes, replies


def copies(directory, user, subject):
    """How many messages with this subject are in the user's maildir."""
    n = 0
    root = os.path.join(directory, "home", user, "Maildir")
    for dirpath, _, files in os.walk(root):
        if os.path.basename(dirpath) not in ("new", "cur"):
            continue
        for name in files:
            try:
                with open(os.path.join(dirpath, name), "rb") as f:
                    # Maildir files have bare LF line ends.
                    if re.search(b"^Subject: " + re.escape(subject.encode()) + b"\r?$",
                                 f.read(), re.M):
                        n += 1
            except OSError:
                pass
    return n


# Username each test user's /notify carries (bob has a user_lookup alias).
NOTIFY_NAME = {"alice": "alice", "bob": "bob@alias.example", "carol": "carol"}


def crash_lines(text):
    """The lines of a Dovecot log that say a process crashed or gave up."""
    return [l for l in text.splitlines()
            if re.search(r"Panic|Fatal|assertion|killed with signal|segfault", l)]


def multi_recipient_checks(a, standin, log_text):
    """Several recipients in one LMTP transaction: each must get exactly one
    reply and one copy, whatever the daemon does and whether a later
    recipient fails. A crash here makes the MTA retry the whole transaction
    and the recipients already saved get the message twice."""
    serial = [0]

    def run(label, users, expect_notify, max_secs):
        """users in RCPT order; erin (home not writable) and frank (over
        quota) fail at DATA, the others must be saved."""
        serial[0] += 1
        subject = "multi %d %s" % (serial[0], label)
        saved = [u for u in users if u not in ("erin", "frank")]
        before_log = len(log_text())
        n = len(standin.lines("notify"))
        t0 = time.time()
        rcpt_codes, replies = lmtp_transaction(a.lmtp_port, ["%s@example.org" % u for u in users],
                                               subject, body_size=4096)
        took = time.time() - t0
        what = "%s, %s" % (label, "+".join(users))
        codes = [c for c, _ in replies]
        check(rcpt_codes == [250] * len(users) and len(replies) == len(users) and None not in codes,
              what + ": one reply per recipient (%.1fs)" % took, repr((rcpt_codes, replies)))
        want = [250 if u in saved else "fail" for u in users]
        have = [250 if c == 250 else ("fail" if c is not None and 400 <= c < 600 else c)
                for c in codes]
        check(have == want, what + ": 250 for the saved recipients, 4xx/5xx for the failing ones",
              repr(replies))
        got = {u: copies(a.dir, u, subject) for u in users}
        check(all(got[u] == (1 if u in saved else 0) for u in users),
              what + ": exactly one copy per saved recipient", repr(got))
        check(took < within(max_secs),
              what + ": transaction finished within %.1fs (%.1fs)" % (within(max_secs), took))
        if expect_notify:
            want_names = {NOTIFY_NAME[u] for u in saved}

            def seen():
                names = set()
                for line in standin.lines("notify")[n:]:
                    body = json.loads(line)
                    if "MessageNew" in body.get("Events", []):
                        names.add(body.get("Username"))
                return names if names >= want_names else None
            names = wait_for(seen, 5)
            check(names == want_names, what + ": /notify for every saved recipient and no other",
                  repr(standin.lines("notify")[n:]))
        time.sleep(0.3)
        new = log_text()[before_log:]
        bad = crash_lines(new)
        check(not bad, what + ": no panic or killed process", "\n".join(bad[:3]))

    # timeout_msecs is 2000 for every user here: a daemon that never answers
    # may hold a transaction for about that long, once, not once per
    # recipient (three recipients waiting in turn would take 4 s or more).
    everything = (["alice", "bob"], ["alice", "bob", "carol"], ["alice", "erin"],
                  ["alice", "bob", "frank"], ["alice", "erin", "bob"])
    for label, mode, sets in [("daemon answers", "ok", everything),
                              ("daemon never answers", "hang", everything),
                              # headers at once, then a byte every 150 ms
                              ("daemon trickles its answer", "trickle",
                               (["alice", "bob"], ["alice", "erin", "bob"])),
                              ("daemon down", None, everything)]:
        if mode is None:
            standin.stop()
        else:
            standin.mode(mode, "/_notifymode")
        for users in sets:
            run(label, users, mode is not None, 3.5)
        if mode is None:
            standin.start()
    standin.mode("ok", "/_notifymode")


def register_ok(untagged, tagged, tag, mailboxes):
    want = ['* XAPPLEPUSHSERVICE mailbox "%s"' % m for m in mailboxes]
    want.append('* XAPPLEPUSHSERVICE aps-version "2" aps-topic "%s"' % TOPIC)
    return untagged == want and tagged == tag + " OK XAPPLEPUSHSERVICE completed."


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--imap-port", type=int, required=True)
    ap.add_argument("--lmtp-port", type=int, required=True)
    ap.add_argument("--http-port", type=int, required=True)
    ap.add_argument("--dir", required=True)
    ap.add_argument("--standin", required=True)
    ap.add_argument("--log", required=True)
    ap.add_argument("--secret", required=True, help="what xaps_secret holds")
    ap.add_argument("--slow", type=float, default=1.0,
                    help="multiply every time bound (valgrind runs)")
    a = ap.parse_args()
    global SLOW
    SLOW = a.slow

    standin = Standin(a.standin, a.http_port, a.dir)
    standin.start()
    wait_port(a.imap_port)
    wait_port(a.lmtp_port)

    # --- capability -----------------------------------------------------
    im = Imap(a.imap_port)
    check("XAPPLEPUSHSERVICE" not in im.greeting, "not advertised before login", im.greeting)
    _, tagged = im.cmd("a1", "LOGIN alice secret")
    check(tagged.startswith("a1 OK") and " XAPPLEPUSHSERVICE" in tagged,
          "capability in LOGIN response", tagged)
    untagged, tagged = im.cmd("a2", "CAPABILITY")
    check(any(u.startswith("* CAPABILITY") and " XAPPLEPUSHSERVICE" in u for u in untagged),
          "capability in CAPABILITY response", repr(untagged))
    im.cmd("a3", "CREATE Notes")
    im.cmd("a4", 'CREATE "Entw&APw-rfe"')

    # --- iOS form ---------------------------------------------------------
    n = len(standin.lines("register"))
    untagged, tagged = im.cmd("a5", "XAPPLEPUSHSERVICE " + IOS_FORM)
    check(register_ok(untagged, tagged, "a5", ["INBOX", "Notes"]),
          "iOS form: mailbox lines for existing mailboxes, topic, OK", repr(untagged + [tagged]))
    regs = standin.lines("register")[n:]
    want = ('{"ApsAccountId":"%s","ApsDeviceToken":"%s","ApsSubtopic":"com.apple.mobilemail",'
            '"Username":"alice","Mailboxes": ["INBOX","Notes","Missing"]}' % (ACCOUNT, TOKEN))
    check(regs == [want], "iOS form: exact /register body", repr(regs))

    # --- atoms, extra pair, other order, literal, mUTF-7 --------------------
    untagged, tagged = im.cmd("a6", "XAPPLEPUSHSERVICE aps-version 2 aps-account-id %s "
                              "aps-device-token %s aps-subtopic com.apple.mobilemail "
                              "mailboxes (INBOX Notes)" % (ACCOUNT, TOKEN))
    check(register_ok(untagged, tagged, "a6", ["INBOX", "Notes"]), "atom form",
          repr(untagged + [tagged]))
    untagged, tagged = im.cmd("a7", "XAPPLEPUSHSERVICE " + IOS_FORM + ' "sender" "x-sender-arg"')
    check(register_ok(untagged, tagged, "a7", ["INBOX", "Notes"]), "extra sender pair",
          repr(untagged + [tagged]))
    untagged, tagged = im.cmd("a8", 'XAPPLEPUSHSERVICE "mailboxes" ("INBOX") "sender" ("a" "b") '
                              '"APS-SUBTOPIC" "com.apple.mobilemail" "aps-device-token" "%s" '
                              '"aps-account-id" "%s" "aps-version" "2"' % (TOKEN, ACCOUNT))
    check(register_ok(untagged, tagged, "a8", ["INBOX"]), "pairs in another order",
          repr(untagged + [tagged]))
    n = len(standin.lines("register"))
    literal = 'AB"C\\D\u00e9'
    im.send('a9 XAPPLEPUSHSERVICE aps-version 2 aps-account-id {%d}' % len(literal.encode()))
    cont = im.readline()
    im.send(literal + ' aps-device-token %s aps-subtopic com.apple.mobilemail '
            'mailboxes ("Entw&APw-rfe")' % TOKEN)
    untagged, tagged = im.read_tagged("a9")
    check(cont.startswith("+") and register_ok(untagged, tagged, "a9", ["Entw&APw-rfe"]),
          "literal value and modified UTF-7 mailbox", repr([cont] + untagged + [tagged]))
    regs = standin.lines("register")[n:]
    try:
        body = json.loads(regs[0])
        good = (body["ApsAccountId"] == literal and body["Mailboxes"] == ["Entw&APw-rfe"])
    except (ValueError, IndexError, KeyError):
        good = False
    check(good, "JSON escaping of quotes, backslashes and UTF-8", repr(regs))

    # --- a non-ASCII mailbox name, as the client negotiated ----------------
    # A client that did not enable UTF8=ACCEPT names mailboxes in modified
    # UTF-7, which is ASCII, and the confirmation quotes the name so (a9). A
    # client that enabled it (where this Dovecot offers it) names them as
    # Dovecot's LIST shows them to it: in UTF-8 where Dovecot supports UTF-8
    # names (2.4.5), else still in modified UTF-7. The confirmation names the
    # mailbox the same way, in a quoted string (UTF-8 in a quoted string only
    # for such a client, never a literal), and the daemon gets the name in
    # modified UTF-7 whatever the client used.
    im_u = Imap(a.imap_port)
    _, tagged = im_u.cmd("u1", "LOGIN alice secret")
    if " UTF8=ACCEPT" not in tagged:
        print("skip the UTF8=ACCEPT checks: this Dovecot does not offer UTF8=ACCEPT")
    else:
        untagged, tagged = im_u.cmd("u2", "ENABLE UTF8=ACCEPT")
        check(untagged == ["* ENABLED UTF8=ACCEPT"], "ENABLE UTF8=ACCEPT", repr(untagged + [tagged]))
        untagged, _ = im_u.cmd("u3", 'LIST "" "Entw*"')
        name = None
        for line in untagged:
            m = re.match(r'^\* LIST \([^)]*\) (?:"[^"]*"|NIL) (?:"(.*)"|\{\d+\}\r\n(.*)|(\S+))$', line, re.S)
            if m:
                name = next(g for g in m.groups() if g is not None)
        n = len(standin.lines("register"))
        untagged, tagged = im_u.cmd("u4", 'XAPPLEPUSHSERVICE aps-version 2 aps-account-id %s '
                                    'aps-device-token %s aps-subtopic com.apple.mobilemail '
                                    'mailboxes (INBOX "%s")' % (ACCOUNT, TOKEN, name))
        check(name is not None and register_ok(untagged, tagged, "u4", ["INBOX", name]),
              "UTF8=ACCEPT client: the mailbox named as LIST names it (%r), in a quoted string" % name,
              repr(untagged + [tagged]))
        regs = standin.lines("register")[n:]
        check(len(regs) == 1 and json.loads(regs[0])["Mailboxes"] == ["INBOX", "Entw&APw-rfe"],
              "UTF8=ACCEPT client: /register names the mailbox in modified UTF-7", repr(regs))
    im_u.close()

    # --- validation -------------------------------------------------------
    bad = "a10 BAD Error in IMAP command XAPPLEPUSHSERVICE: "
    cases = [
        (IOS_FORM.replace('"aps-version" "2"', '"aps-version" "1"'), "Unknown aps-version."),
        (IOS_FORM.replace('"aps-version" "2" ', ''), "Unknown aps-version."),
        (IOS_FORM.replace('"%s"' % ACCOUNT, '""'), "Incomplete or empty aps-account-id parameter."),
        (IOS_FORM.replace('"%s"' % TOKEN, '""'), "Incomplete or empty aps-device-token parameter."),
        (IOS_FORM.replace('"com.apple.mobilemail"', '""'), "Incomplete or empty aps-subtopic parameter."),
        (IOS_FORM.replace('("INBOX" "Notes" "Missing")', '()'), "Incomplete or empty mailboxes parameter."),
        (IOS_FORM.replace(' "mailboxes" ("INBOX" "Notes" "Missing")', ''), "Incomplete or empty mailboxes parameter."),
        (IOS_FORM.replace('("INBOX" "Notes" "Missing")', '"INBOX"'), "Invalid arguments."),
        (IOS_FORM.replace('"%s"' % ACCOUNT, '("x")'), "Invalid arguments."),
        (IOS_FORM + ' "dangling"', "Invalid arguments."),
        ("", "Invalid arguments."),
        (IOS_FORM.replace('("INBOX" "Notes" "Missing")', '("INBOX" ("nested"))'), "Registration failed."),
    ]
    n = len(standin.lines("register"))
    for args, msg in cases:
        _, tagged = im.cmd("a10", ("XAPPLEPUSHSERVICE " + args).rstrip())
        check(tagged == bad + msg, "BAD %s" % msg, tagged)
    check(len(standin.lines("register")) == n, "invalid commands never reach the daemon")

    # --- daemon answers that must not give OK -----------------------------
    for mode, expect in [
        ("500", "a11 NO XAPPLEPUSHSERVICE registration failed: 500 registry write failed."),
        ("400", "a11 NO XAPPLEPUSHSERVICE registration failed: 400 invalid registration: "
                "subtopic is not com.apple.mobilemail."),
        ("503", "a11 NO XAPPLEPUSHSERVICE registration failed: 503 Service Unavailable."),
        ("badtopic", "a11 NO XAPPLEPUSHSERVICE registration failed: invalid topic from push daemon."),
        ("newline", "a11 NO XAPPLEPUSHSERVICE registration failed: invalid topic from push daemon."),
        ("empty", "a11 NO XAPPLEPUSHSERVICE registration failed: invalid topic from push daemon."),
    ]:
        standin.mode(mode)
        untagged, tagged = im.cmd("a11", "XAPPLEPUSHSERVICE " + IOS_FORM)
        check(untagged == [] and tagged == expect, "daemon %s gives NO" % mode,
              repr(untagged + [tagged]))
        _, tagged = im.cmd("a12", "NOOP")
        check(tagged.startswith("a12 OK"), "session usable after daemon %s" % mode, tagged)

    for mode, topic in [("short", "com.apple.mail.nil"),
                        ("long", "com.apple.mail.XServer." + "x" * 300)]:
        standin.mode(mode)
        untagged, tagged = im.cmd("a13", "XAPPLEPUSHSERVICE " + IOS_FORM)
        check(untagged[-1:] == ['* XAPPLEPUSHSERVICE aps-version "2" aps-topic "%s"' % topic]
              and tagged == "a13 OK XAPPLEPUSHSERVICE completed.",
              "%s topic (%d bytes) accepted" % (mode, len(topic)), repr(untagged + [tagged]))
    standin.mode("ok")

    # --- not blocking: a pipelined NOOP finishes while /register waits -----
    standin.mode("slow")
    im.send("a14 XAPPLEPUSHSERVICE " + IOS_FORM + "\r\na15 NOOP")
    seen = []
    while not any(l.startswith("a14 ") for l in seen):
        seen.append(im.readline())
    tags = [l.split(" ")[0] for l in seen if not l.startswith("*")]
    check(tags == ["a15", "a14"] and strip_timing(seen[-1]) == "a14 OK XAPPLEPUSHSERVICE completed.",
          "command runs asynchronously (NOOP answered first)", repr(seen))
    # Hang up while the daemon is still thinking: must not crash imap.
    im2 = Imap(a.imap_port)
    im2.cmd("b1", "LOGIN alice secret")
    im2.send("b2 XAPPLEPUSHSERVICE " + IOS_FORM)
    time.sleep(0.3)
    im2.close()
    time.sleep(1.8)
    standin.mode("ok")

    # --- timeout ----------------------------------------------------------
    standin.mode("hang")
    t0 = time.time()
    untagged, tagged = im.cmd("a16", "XAPPLEPUSHSERVICE " + IOS_FORM)
    took = time.time() - t0
    check(tagged == "a16 NO XAPPLEPUSHSERVICE registration failed: push daemon timed out."
          and took < within(3.5), "daemon not answering gives NO after the timeout (%.1fs)" % took,
          repr(untagged + [tagged]))
    _, tagged = im.cmd("a17", "NOOP")
    check(tagged.startswith("a17 OK"), "session usable after timeout", tagged)
    # A daemon that sends its headers and then trickles the body: the
    # timeout bounds the whole exchange, it does not restart on every byte.
    standin.mode("trickle")
    t0 = time.time()
    untagged, tagged = im.cmd("a17b", "XAPPLEPUSHSERVICE " + IOS_FORM)
    took = time.time() - t0
    check(tagged == "a17b NO XAPPLEPUSHSERVICE registration failed: push daemon timed out."
          and took < within(3.5), "daemon trickling its answer gives NO after timeout_msecs (%.1fs)" % took,
          repr(untagged + [tagged]))
    # The same with a timeout above the HTTP client's built-in 5 s: only
    # the user's own timeout may end the registration (an absolute timeout
    # of the client firing first tore the request down under the body's
    # read, and Dovecot panicked).
    im_gina = Imap(a.imap_port)
    im_gina.cmd("g1", "LOGIN gina secret")
    t0 = time.time()
    untagged, tagged = im_gina.cmd("g2", "XAPPLEPUSHSERVICE " + IOS_FORM)
    took = time.time() - t0
    check(tagged == "g2 NO XAPPLEPUSHSERVICE registration failed: push daemon timed out."
          and 5.8 < took < within(7.5),
          "timeout of 6 s, above the client's default, bounds a trickled answer (%.1fs)" % took,
          repr(untagged + [tagged]))
    _, tagged = im_gina.cmd("g3", "NOOP")
    check(tagged.startswith("g3 OK"), "session usable after the 6 s timeout", tagged)
    im_gina.close()
    standin.mode("ok")

    # --- NUL inside a literal: refused, never cut short ---------------------
    n = len(standin.lines("register"))
    rest_of_form = IOS_FORM.split('"aps-version" "2" ', 1)[1]
    for tag, opener, literal, after in [
            # (text up to and including the literal's {n}, its bytes, the rest)
            ("a17c", IOS_FORM.replace('"mailboxes" ("INBOX" "Notes" "Missing")', '"mailboxes" ({7}'),
             b"INBOX\0x", ' "Notes")'),
            ("a17d", '"aps-version" {2}', b"2\0", " " + rest_of_form),
            ("a17e", '"aps-device-token" {66}', TOKEN.encode() + b"\0z",
             ' "aps-version" "2" "aps-account-id" "%s" "aps-subtopic" "com.apple.mobilemail" '
             '"mailboxes" ("INBOX")' % ACCOUNT)]:
        im.send("%s XAPPLEPUSHSERVICE %s" % (tag, opener))
        cont = im.readline()
        im.sock.sendall(literal + after.encode() + b"\r\n")
        _, tagged = im.read_tagged(tag)
        check(cont.startswith("+") and
              tagged == "%s BAD Error in IMAP command XAPPLEPUSHSERVICE: NUL character in argument." % tag,
              "NUL inside a literal is refused (%s)" % tag, repr([cont, tagged]))
    check(len(standin.lines("register")) == n, "values with NUL never reach the daemon",
          repr(standin.lines("register")[n:]))

    # --- daemon down ------------------------------------------------------
    standin.stop()
    untagged, tagged = im.cmd("a18", "XAPPLEPUSHSERVICE " + IOS_FORM)
    check(tagged == "a18 NO XAPPLEPUSHSERVICE registration failed: push daemon unreachable.",
          "daemon down gives NO", repr(untagged + [tagged]))
    _, tagged = im.cmd("a19", "NOOP")
    check(tagged.startswith("a19 OK"), "session usable with daemon down", tagged)
    t0 = time.time()
    refused = deliver(a.lmtp_port, "alice@example.org", "while daemon is down")
    took = time.time() - t0
    check(refused == {} and took < within(5), "LMTP delivery succeeds with daemon down (%.1fs)" % took,
          repr(refused))
    for i in range(3):
        refused = deliver(a.lmtp_port, "alice@example.org", "still down %d" % i)
        check(refused == {}, "repeated delivery %d with daemon down" % i, repr(refused))
    standin.start()
    standin.mode("ok")
    untagged, tagged = im.cmd("a20", "XAPPLEPUSHSERVICE " + IOS_FORM)
    check(register_ok(untagged, tagged, "a20", ["INBOX", "Notes"]),
          "registration works again once the daemon is back", repr(untagged + [tagged]))

    # --- /notify from LMTP -------------------------------------------------
    n = len(standin.lines("notify"))
    refused = deliver(a.lmtp_port, "alice@example.org", "to inbox")
    check(refused == {}, "LMTP delivery to INBOX")
    got = wait_notify(standin, n, lambda b: b.get("Mailbox") == "INBOX")
    check(got is not None and got[0] ==
          '{"Username":"alice","Mailbox":"INBOX","Events": ["MessageNew"]}',
          "/notify MessageNew for INBOX (exact body)", repr(standin.lines("notify")[n:]))

    n = len(standin.lines("notify"))
    refused = deliver(a.lmtp_port, "alice+Notes@example.org", "to notes")
    check(refused == {}, "LMTP delivery to alice+Notes")
    got = wait_notify(standin, n, lambda b: b.get("Mailbox") == "Notes")
    check(got is not None and got[1].get("Events") == ["MessageNew"] and
          got[1].get("Username") == "alice", "/notify MessageNew for Notes",
          repr(standin.lines("notify")[n:]))

    # user_lookup: bob has userdb_xaps_alias set.
    n = len(standin.lines("notify"))
    deliver(a.lmtp_port, "bob@example.org", "to bob")
    got = wait_notify(standin, n, lambda b: True)
    check(got is not None and got[1].get("Username") == "bob@alias.example",
          "user_lookup replaces Username in /notify", repr(standin.lines("notify")[n:]))

    def log_text():
        with open(a.log, encoding="utf-8", errors="replace") as f:
            return f.read()

    # --- several recipients in one LMTP transaction ------------------------
    multi_recipient_checks(a, standin, log_text)

    # --- /notify answers: 404 is quiet, errors are logged, a hang is cut off -

    standin.mode("404", "/_notifymode")
    before = len(log_text())
    deliver(a.lmtp_port, "alice@example.org", "404 answer")
    new = wait_for(lambda: "no registered device for user alice" in log_text()[before:]
                   and log_text()[before:], 3) or log_text()[before:]
    check("no registered device for user alice" in new and "Error: xaps" not in new
          and "Error:" not in new, "/notify 404 is logged at debug level only", new[-300:])
    standin.mode("500", "/_notifymode")
    before = len(log_text())
    deliver(a.lmtp_port, "alice@example.org", "500 answer")
    failed_500 = "xaps: POST /notify for user alice mailbox INBOX failed: 500"
    new = wait_for(lambda: failed_500 in log_text()[before:] and log_text()[before:], 3) or ""
    check(failed_500 in new,
          "/notify 500 is logged as an error", new[-300:])
    standin.mode("hang", "/_notifymode")
    before = len(log_text())
    t0 = time.time()
    refused = deliver(a.lmtp_port, "alice@example.org", "daemon hangs")
    took = time.time() - t0
    timed_out = "xaps: POST /notify for user alice mailbox INBOX: no answer within 2000 ms"
    new = wait_for(lambda: timed_out in log_text()[before:] and log_text()[before:], 5) or ""
    check(refused == {} and took < within(3.5) and timed_out in new,
          "hanging /notify delays delivery by at most timeout_msecs (%.1fs) and is logged" % took,
          new[-300:])
    standin.mode("ok", "/_notifymode")

    # --- /notify from IMAP actions ----------------------------------------
    im.cmd("a21", "SELECT INBOX")
    n = len(standin.lines("notify"))
    _, tagged = im.cmd("a22", "STORE 1 +FLAGS (\\Flagged)")
    got = wait_notify(standin, n, lambda b: "FlagsSet" in b.get("Events", []))
    check(tagged.startswith("a22 OK") and got is not None and got[1]["Mailbox"] == "INBOX",
          "flag change over IMAP gives FlagsSet", repr(standin.lines("notify")[n:]))
    n = len(standin.lines("notify"))
    im.cmd("a23", "STORE 1 +FLAGS (\\Seen)")
    got = wait_notify(standin, n, lambda b: "MessageRead" in b.get("Events", []))
    check(got is not None, "\\Seen gives MessageRead", repr(standin.lines("notify")[n:]))
    n = len(standin.lines("notify"))
    im.send("a24 APPEND Notes {5}")
    im.readline()
    im.send("hello")
    im.read_tagged("a24")
    got = wait_notify(standin, n, lambda b: b.get("Mailbox") == "Notes")
    check(got is not None and got[1].get("Events") == ["MessageAppend"],
          "APPEND gives MessageAppend", repr(standin.lines("notify")[n:]))
    im.cmd("a25", "LOGOUT")
    im.close()

    # bob registers: Username comes from user_lookup.
    n = len(standin.lines("register"))
    im = Imap(a.imap_port)
    im.cmd("c1", "LOGIN bob secret")
    untagged, tagged = im.cmd("c2", "XAPPLEPUSHSERVICE " + IOS_FORM)
    regs = standin.lines("register")[n:]
    check(tagged.startswith("c2 OK") and len(regs) == 1 and
          json.loads(regs[0])["Username"] == "bob@alias.example",
          "user_lookup replaces Username in /register", repr(regs))
    im.cmd("c3", "LOGOUT")
    im.close()

    # carol has mailbox_confirm=no: only the version/topic line.
    im = Imap(a.imap_port)
    im.cmd("d1", "LOGIN carol secret")
    untagged, tagged = im.cmd("d2", "XAPPLEPUSHSERVICE " + IOS_FORM)
    check(register_ok(untagged, tagged, "d2", []), "mailbox_confirm=no drops the mailbox lines",
          repr(untagged + [tagged]))
    im.cmd("d3", "LOGOUT")
    im.close()

    # dave's xaps_config lacks url=: delivery works, registration says NO.
    n = len(standin.lines("notify"))
    refused = deliver(a.lmtp_port, "dave@example.org", "misconfigured")
    check(refused == {}, "delivery works for a user with a broken xaps_config", repr(refused))
    im = Imap(a.imap_port)
    im.cmd("e1", "LOGIN dave secret")
    untagged, tagged = im.cmd("e2", "XAPPLEPUSHSERVICE " + IOS_FORM)
    check(untagged == [] and
          tagged == "e2 NO XAPPLEPUSHSERVICE registration failed: not configured.",
          "registration with a broken xaps_config gives NO", repr(untagged + [tagged]))
    _, tagged = im.cmd("e3", "NOOP")
    check(tagged.startswith("e3 OK"), "session usable after broken xaps_config", tagged)
    im.cmd("e4", "LOGOUT")
    im.close()
    check(not any('"dave"' in l for l in standin.lines("notify")[n:]),
          "no /notify for a user with a broken xaps_config")

    # --- the daemon's URL: its path is replaced, or added ---------------------
    # Everybody else's URL has a path and a query; hank's has neither. Both
    # must reach /register and /notify, and nothing else.
    n_reg, n_notify = len(standin.lines("register")), len(standin.lines("notify"))
    im = Imap(a.imap_port)
    im.cmd("h1", "LOGIN hank secret")
    untagged, tagged = im.cmd("h2", "XAPPLEPUSHSERVICE " + IOS_FORM)
    check(register_ok(untagged, tagged, "h2", ["INBOX"]) and
          [json.loads(l)["Username"] for l in standin.lines("register")[n_reg:]] == ["hank"],
          "URL without a path: registration reaches /register", repr(untagged + [tagged]))
    im.cmd("h3", "LOGOUT")
    im.close()
    refused = deliver(a.lmtp_port, "hank@example.org", "no path in the URL")
    got = wait_notify(standin, n_notify, lambda b: b.get("Username") == "hank")
    check(refused == {} and got is not None, "URL without a path: /notify reaches /notify",
          repr(standin.lines("notify")[n_notify:]))
    paths = sorted(set(standin.lines("paths")))
    check(paths == ["POST /notify", "POST /register"],
          "every request went to /register or /notify, whatever the URL's path", repr(paths))

    # --- the shared secret -------------------------------------------------
    auth = standin.lines("auth")
    check(len(auth) > 10 and all(l.endswith(" Bearer " + a.secret) for l in auth),
          "every /register and /notify carries Authorization: Bearer <secret from the file>",
          repr([l for l in auth if not l.endswith(" Bearer " + a.secret)][:3]))

    # --- nothing crashed ----------------------------------------------------
    time.sleep(0.5)
    log = log_text()
    bad_lines = crash_lines(log)
    check(not bad_lines, "no panics, fatals or crashed processes in the Dovecot log",
          "\n".join(bad_lines[:5]))
    check("xaps: POST /register for user alice failed" in log,
          "daemon errors are logged")

    standin.stop()
    if failures:
        print("%d check(s) failed" % len(failures))
        sys.exit(1)
    print("all checks passed")


if __name__ == "__main__":
    main()
