#!/usr/bin/env python3
"""Takes orders, on 0.0.0.0:3000.

POST /api/orders  {"item": "coffee-mug", "quantity": 1}: charge via payment-service (HTTP) and
                  reserve the item at inventory (raw TCP); GET /api/orders?item=NAME does the same
GET /health       200 ok

Both downstream services are called by plain name; no URL comes from the environment.
"""
import json
import os
import secrets
import signal
import socket
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import requests

TASK = os.environ.get("TETHER_TASK") or f"pid{os.getpid()}"


def charge():
    payment = requests.get("http://payment-service/api/process-payment")
    payment.raise_for_status()
    return payment.json()


def reserve(item):
    with socket.create_connection(("inventory", 7000), timeout=5) as conn:
        conn.sendall(f"RESERVE {item}\n".encode())
        reply = conn.makefile().readline().strip()
    if not reply:
        raise ConnectionError("the connection closed without an answer")
    return reply


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes

    def do_GET(self):
        url = urlparse(self.path)
        if url.path == "/health":
            return self.reply(200, "ok\n", "text/plain")
        self.order(url.path, parse_qs(url.query).get("item", ["coffee-mug"])[0])

    def do_POST(self):
        length = int(self.headers.get("content-length") or 0)
        try:
            item = json.loads(self.rfile.read(length) or b"{}").get("item", "coffee-mug")
        except (ValueError, AttributeError):
            return self.reply(400, {"service": "orders", "error": "the body must be a JSON object"})
        self.order(urlparse(self.path).path, item)

    def order(self, path, item):
        if path != "/api/orders":
            return self.reply(404, {"service": "orders", "error": f"no resource {path}"})
        try:
            inventory = reserve(item)
        except OSError as e:
            return self.fail(502, f"RESERVE at inventory:7000 (tcp) failed: {e}")
        if not inventory.startswith("OK "):  # e.g. "ERR unknown item …": the caller's mistake
            return self.fail(409, f"inventory refused: {inventory}")
        try:
            payment = charge()
        except (requests.RequestException, ValueError) as e:
            return self.fail(502, f"GET http://payment-service/api/process-payment failed: {e}")
        self.reply(200, {"service": "orders", "task": TASK, "order_id": "ord-" + secrets.token_hex(4),
                         "item": item, "payment": payment, "inventory": inventory})

    def fail(self, code, error):
        self.reply(code, {"service": "orders", "task": TASK, "error": error})

    def reply(self, code, body, content_type="application/json"):
        data = (body if isinstance(body, str) else json.dumps(body) + "\n").encode()
        self.send_response(code)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_request(self, code="-", size="-"):
        print(f"orders {TASK} {self.command} {self.path} {code}", flush=True)

    def log_message(self, fmt, *args):
        print(f"orders {TASK} " + fmt % args, flush=True)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop at once; the sidecar drains
    server = ThreadingHTTPServer(("0.0.0.0", 3000), Handler)
    print(f"orders {TASK} listening on 0.0.0.0:3000", flush=True)
    server.serve_forever()
