#!/usr/bin/env python3
"""The stock room: a raw TCP service on 0.0.0.0:7000 speaking a one-line protocol.

    client: RESERVE <item>\\n
    server: OK <item> <remaining>\\n      or      ERR <reason>\\n

Several lines may be sent on one connection. Counts live in memory (one stock room per task);
an item that sells out is restocked at once, so the demo never runs dry.
"""
import os
import signal
import socketserver
import sys
import threading

TASK = os.environ.get("TETHER_TASK") or f"pid{os.getpid()}"
FULL = {"coffee-mug": 1000, "t-shirt": 500, "sticker": 10000}
stock = dict(FULL)
lock = threading.Lock()


def reserve(item):
    with lock:
        if item not in stock:
            return f"ERR unknown item {item!r}; we sell {', '.join(FULL)}"
        if stock[item] == 0:
            stock[item] = FULL[item]  # the truck came
        stock[item] -= 1
        return f"OK {item} {stock[item]}"


def answer(line):
    words = line.split()
    if len(words) == 2 and words[0] == "RESERVE":
        return reserve(words[1])
    return "ERR expected: RESERVE <item>"


class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        for raw in self.rfile:
            line = raw.decode("utf-8", "replace").strip()
            reply = answer(line)
            self.wfile.write(reply.encode() + b"\n")
            print(f"inventory {TASK} {self.client_address[0]} {line!r} -> {reply}", flush=True)


class Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop at once; the sidecar drains
    server = Server(("0.0.0.0", 7000), Handler)
    print(f"inventory {TASK} listening on 0.0.0.0:7000 (tcp)", flush=True)
    server.serve_forever()
