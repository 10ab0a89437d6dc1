#!/usr/bin/env python3
"""Stand-in for xapsd, just enough to exercise the Dovecot plugin.

POST /register  answers according to the current mode (see MODES) and appends
                the raw request body as one line to <dir>/register.log
                (every /register and /notify also appends "<path> <Authorization
                header>" to <dir>/auth.log)
POST /notify    appends the raw body as one line to <dir>/notify.log and answers
                according to the notify mode (NOTIFY_MODES)
POST /_mode     sets the mode for later /register requests (body = mode name)
Every request other than /_mode and /_notifymode appends its method and path,
as the request line had them, to <dir>/paths.log.
POST /_notifymode  sets the mode for later /notify requests

Listens on 127.0.0.1 only. Usage: standin.py <port> <dir>
"""

import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# 59 bytes, the length of a real "com.apple.mail.XServer.<uuid>" topic.
TOPIC = b"com.apple.mail.XServer.01234567-89ab-cdef-0123-456789abcdef"

MODES = {
    "ok": (200, TOPIC, 0),
    # The original plugin asserts on topics of 50 bytes or less.
    "short": (200, b"com.apple.mail.nil", 0),
    "long": (200, b"com.apple.mail.XServer." + b"x" * 300, 0),
    "badtopic": (200, b'com.apple.mail."quoted"', 0),
    "newline": (200, TOPIC + b"\n", 0),
    "empty": (200, b"", 0),
    "400": (400, b"invalid registration: subtopic is not com.apple.mobilemail\n", 0),
    "500": (500, b"registry write failed\r\nsecond line is not shown\n", 0),
    "503": (503, b"", 0),
    "slow": (200, TOPIC, 1.5),
    "hang": (200, TOPIC, 30),
    # Headers at once, then the body one byte every 150 ms.
    "trickle": (200, TOPIC, "trickle"),
}

NOTIFY_MODES = {
    "ok": (200, b"", 0),
    "404": (404, b"", 0),
    "500": (500, b"registry lookup failed\n", 0),
    "hang": (200, b"", 30),
    "trickle": (200, b"ok, noted\n" * 4, "trickle"),
}


class State:
    def __init__(self, directory):
        self.directory = directory
        self.mode = "ok"
        self.notify_mode = "ok"
        self.lock = threading.Lock()

    def record(self, name, body):
        with self.lock:
            with open(f"{self.directory}/{name}.log", "ab") as f:
                f.write(body + b"\n")


def make_handler(state):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            sys.stderr.write("standin: " + (fmt % args) + "\n")

        def reply(self, status, body, delay=0):
            if delay == "trickle":
                self.send_response(status)
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.flush()
                try:
                    for i in range(len(body)):
                        self.wfile.write(body[i:i + 1])
                        self.wfile.flush()
                        time.sleep(0.15)
                except OSError:
                    pass  # the plugin gave up, as it should
                return
            if delay:
                time.sleep(delay)
            self.send_response(status)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            length = int(self.headers.get("Content-Length", "0"))
            body = self.rfile.read(length)
            if self.path not in ("/_mode", "/_notifymode"):
                state.record("paths", ("POST " + self.path).encode())
            if self.path == "/_mode":
                state.mode = body.decode().strip()
                self.reply(200, b"")
            elif self.path == "/_notifymode":
                state.notify_mode = body.decode().strip()
                self.reply(200, b"")
            elif self.path == "/register":
                state.record("auth", b"/register " + self.headers.get("Authorization", "-").encode())
                state.record("register", body)
                status, answer, delay = MODES[state.mode]
                self.reply(status, answer, delay)
            elif self.path == "/notify":
                state.record("auth", b"/notify " + self.headers.get("Authorization", "-").encode())
                state.record("notify", body)
                status, answer, delay = NOTIFY_MODES[state.notify_mode]
                self.reply(status, answer, delay)
            else:
                self.reply(404, b"404 page not found\n")

        def do_GET(self):
            state.record("paths", ("GET " + self.path).encode())
            self.reply(404, b"404 page not found\n")

    return Handler


def main():
    port, directory = int(sys.argv[1]), sys.argv[2]
    ThreadingHTTPServer.allow_reuse_address = True
    ThreadingHTTPServer.daemon_threads = True
    server = ThreadingHTTPServer(("127.0.0.1", port), make_handler(State(directory)))
    server.serve_forever()


if __name__ == "__main__":
    main()
