"""The soak's HTTP service (tests/e2e/identity_soak.rs): answers every GET with its task's id,
on each port named on the command line.

    python3 web.py PORT...
"""

import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

BODY = os.environ.get("TETHER_TASK", "web").encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args):
        pass


ThreadingHTTPServer.daemon_threads = True
servers = [ThreadingHTTPServer(("0.0.0.0", int(port)), Handler) for port in sys.argv[1:]]
for server in servers[1:]:
    threading.Thread(target=server.serve_forever, daemon=True).start()
servers[0].serve_forever()
