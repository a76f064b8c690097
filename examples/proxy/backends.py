#!/usr/bin/env python3
"""Three small HTTP backends for the proxy demo, on 127.0.0.1:9001, :9002 and :9003.

Each answers every GET with one line naming itself, so repeated requests through the proxy
show the load spreading. Stop with Ctrl-C.
"""
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

PORTS = [9001, 9002, 9003]


def handler_for(name):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def do_GET(self):
            body = f"hello from {name} (path {self.path})\n".encode()
            self.send_response(200)
            self.send_header("content-type", "text/plain")
            self.send_header("content-length", str(len(body)))
            self.send_header("x-backend", name)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    return Handler


def main():
    servers = []
    for i, port in enumerate(PORTS, start=1):
        try:
            server = ThreadingHTTPServer(("127.0.0.1", port), handler_for(f"backend-{i}"))
        except OSError as e:
            sys.exit(f"cannot listen on 127.0.0.1:{port}: {e}")
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    print("backends listening on " + ", ".join(f"127.0.0.1:{p}" for p in PORTS), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
