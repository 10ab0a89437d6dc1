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
    deadline = time.time() + secs
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise SystemExit("port %d did not open" % port)


def wait_for(fn, secs=8):
    deadline = time.time() + secs
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
    a = ap.parse_args()

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
          and took < 10, "daemon not answering gives NO after the timeout (%.1fs)" % took,
          repr(untagged + [tagged]))
    _, tagged = im.cmd("a17", "NOOP")
    check(tagged.startswith("a17 OK"), "session usable after timeout", tagged)

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
    check(refused == {} and took < 5, "LMTP delivery succeeds with daemon down (%.1fs)" % took,
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

    # --- /notify answers: 404 is quiet, errors are logged, a hang is cut off -
    def log_text():
        with open(a.log, encoding="utf-8", errors="replace") as f:
            return f.read()

    standin.mode("404", "/_notifymode")
    before = len(log_text())
    deliver(a.lmtp_port, "alice@example.org", "404 answer")
    time.sleep(0.5)
    new = log_text()[before:]
    check("no registered device for user alice" in new and "Error: xaps" not in new
          and "Error:" not in new, "/notify 404 is logged at debug level only", new[-300:])
    standin.mode("500", "/_notifymode")
    before = len(log_text())
    deliver(a.lmtp_port, "alice@example.org", "500 answer")
    time.sleep(0.5)
    new = log_text()[before:]
    check("xaps: POST /notify for user alice mailbox INBOX failed: 500" in new,
          "/notify 500 is logged as an error", new[-300:])
    standin.mode("hang", "/_notifymode")
    before = len(log_text())
    t0 = time.time()
    refused = deliver(a.lmtp_port, "alice@example.org", "daemon hangs")
    took = time.time() - t0
    new = log_text()[before:]
    check(refused == {} and took < 4.5 and "abandoned: no answer within 2000 ms" in new,
          "hanging /notify delays delivery by at most timeout_msecs (%.1fs)" % took,
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

    # --- nothing crashed ----------------------------------------------------
    time.sleep(0.5)
    with open(a.log, encoding="utf-8", errors="replace") as f:
        log = f.read()
    bad_lines = [l for l in log.splitlines()
                 if re.search(r"Panic|Fatal|assertion|killed with signal|segfault", l)]
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
