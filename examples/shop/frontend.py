#!/usr/bin/env python3
"""The shop's front door, on 0.0.0.0:8000.

GET /            places an order (POST http://orders/api/orders) and shows the whole call chain
GET /?item=NAME  the same for another item (coffee-mug, t-shirt, sticker)
GET /health      200 ok

`orders` is a plain name: inside a tether task it resolves to the task's sidecar.
"""
import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

TASK = os.environ.get("TETHER_TASK") or f"pid{os.getpid()}"


def place_order(item):
    body = json.dumps({"item": item, "quantity": 1}).encode()
    request = urllib.request.Request("http://orders/api/orders", data=body, method="POST",
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=20) as response:
        return json.load(response)


def json_or_text(response):
    text = response.read().decode("utf-8", "replace")
    try:
        return json.loads(text)
    except ValueError:
        return text


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as separate writes

    def do_GET(self):
        url = urlparse(self.path)
        if url.path == "/health":
            return self.reply(200, "ok\n", "text/plain")
        if url.path != "/":
            return self.reply(404, {"service": "frontend", "error": f"no page {url.path}"})
        item = parse_qs(url.query).get("item", ["coffee-mug"])[0]
        started = time.monotonic()
        try:
            order = place_order(item)
        except urllib.error.HTTPError as e:  # orders answered, but not with success
            return self.fail(e.code if e.code < 500 else 502, f"answered {e.code}", orders=json_or_text(e))
        except (OSError, ValueError) as e:  # unknown name, refused, timed out, not JSON
            return self.fail(502, f"failed: {getattr(e, 'reason', e)}")
        chain = [f"frontend {TASK}", f"orders {order['task']}",
                 f"payment-service {order['payment']['task']}", f"inventory: {order['inventory']}"]
        self.reply(200, {"service": "frontend", "task": TASK, "chain": chain, "order": order,
                         "took_ms": round((time.monotonic() - started) * 1000, 1)})

    def fail(self, code, what, **details):
        error = {"service": "frontend", "task": TASK, "error": f"POST http://orders/api/orders {what}"}
        self.reply(code, {**error, **details})

    def reply(self, code, body, content_type="application/json"):
        if not isinstance(body, str):
            body = json.dumps(body, indent=2) + "\n"
        data = body.encode()
        self.send_response(code)
        self.send_header("content-type", content_type)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_request(self, code="-", size="-"):
        print(f"frontend {TASK} {self.command} {self.path} {code}", flush=True)

    def log_message(self, fmt, *args):
        print(f"frontend {TASK} " + fmt % args, flush=True)


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop at once; the sidecar drains
    server = ThreadingHTTPServer(("0.0.0.0", 8000), Handler)
    print(f"frontend {TASK} listening on 0.0.0.0:8000", flush=True)
    server.serve_forever()
