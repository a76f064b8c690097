#!/usr/bin/env python3
"""A raw HTTP/2 (h2c, prior knowledge) client for tether's end-to-end tests (tests/e2e/framing.rs),
on Python's `h2` package with every outbound check and normalisation turned off, so it sends
exactly the malformed requests it is told to.

    h2_peer.py HOST:PORT malformed
        Sends every request of MALFORMED, each on a connection of its own, and prints one line
        of JSON per case: {"case": NAME, "outcome": OUTCOME, "detail": ...}. After each line it
        waits for a line on stdin before the next case (so the test can look at the backend
        between cases), and stops when stdin closes.
    h2_peer.py HOST:PORT controls
        The same for CONTROLS: well-formed requests that must get through.

OUTCOME is what came back first for the request's stream:
    "status:NNN"   a response with that status
    "reset:CODE"   RST_STREAM with that error code
    "goaway:CODE"  GOAWAY (a connection error) with that error code
    "closed"       the connection closed without either
    "timeout"      nothing within TIMEOUT seconds
"""

import json
import socket
import sys

try:
    import h2.config
    import h2.connection
    import h2.events
    import h2.exceptions
except ImportError:
    print("this peer needs Python's h2 package: pip install h2", file=sys.stderr)
    sys.exit(3)

TIMEOUT = 10.0
STREAM = 1


def base(authority, method=b"GET", path=b"/"):
    return [(b":method", method), (b":scheme", b"http"), (b":authority", authority), (b":path", path)]


def headers_only(extra=(), end_stream=True, method=b"GET", pseudo=None):
    """A request of only a HEADERS block: the usual pseudo-headers (or `pseudo`) then `extra`."""

    def send(conn, authority):
        fields = list(pseudo) if pseudo is not None else base(authority, method)
        conn.send_headers(STREAM, fields + list(extra), end_stream=end_stream)

    return send


def with_body(extra, body, end_stream=True):
    """A POST whose HEADERS carry `extra`, then one DATA frame of `body`."""

    def send(conn, authority):
        conn.send_headers(STREAM, base(authority, b"POST") + list(extra), end_stream=False)
        conn.send_data(STREAM, body, end_stream=end_stream)

    return send


def many_headers(n):
    return headers_only([(b"x-h%d" % i, b"v") for i in range(n)])


# Each of these must be refused: a 400/431/501 response, a stream reset or a connection error.
MALFORMED = {
    # RFC 9113 §8.2.2: connection-specific header fields.
    "connection": headers_only([(b"connection", b"keep-alive")]),
    "keep-alive": headers_only([(b"keep-alive", b"timeout=5")]),
    "proxy-connection": headers_only([(b"proxy-connection", b"keep-alive")]),
    "transfer-encoding": with_body([(b"transfer-encoding", b"chunked")], b"5\r\nhello\r\n0\r\n\r\n"),
    "upgrade": headers_only([(b"upgrade", b"websocket")]),
    "te-gzip": headers_only([(b"te", b"gzip")]),
    "te-trailers-and-gzip": headers_only([(b"te", b"trailers, gzip")]),
    # §8.2.1: field names are lowercase; names and values carry no CR, LF or NUL.
    "uppercase-name": headers_only([(b"X-Upper", b"1")]),
    "mixed-case-content-length": with_body([(b"Content-Length", b"5")], b"hello"),
    "cr-in-value": headers_only([(b"x-v", b"a\rb")]),
    "lf-in-value": headers_only([(b"x-v", b"a\nb")]),
    "crlf-injection": headers_only([(b"x-v", b"a\r\nx-injected: 1")]),
    "nul-in-value": headers_only([(b"x-v", b"a\x00b")]),
    "space-in-name": headers_only([(b"x v", b"1")]),
    "colon-in-name": headers_only([(b"x:v", b"1")]),
    "empty-name": headers_only([(b"", b"1")]),
    # §8.1.1: content-length must match the DATA sent (the mismatches found only once DATA
    # arrives come last: see LATE in framing.rs).
    "content-length-with-end-stream": headers_only([(b"content-length", b"5")], method=b"POST"),
    "content-length-not-a-number": with_body([(b"content-length", b"abc")], b"hello"),
    "content-length-negative": with_body([(b"content-length", b"-1")], b"hello"),
    "content-length-conflicting": with_body(
        [(b"content-length", b"5"), (b"content-length", b"6")], b"hello"
    ),
    # §8.3: pseudo-headers.
    "pseudo-after-regular": headers_only(
        pseudo=[(b":method", b"GET"), (b":scheme", b"http"), (b"x-a", b"1"), (b":path", b"/")]
    ),
    "duplicate-path": headers_only(
        pseudo=[(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"/"), (b":path", b"/admin")]
    ),
    "unknown-pseudo": headers_only([(b":foo", b"bar")]),
    "status-in-request": headers_only([(b":status", b"200")]),
    "missing-method": headers_only(pseudo=[(b":scheme", b"http"), (b":path", b"/")]),
    "missing-path": headers_only(pseudo=[(b":method", b"GET"), (b":scheme", b"http")]),
    "empty-path": headers_only(pseudo=[(b":method", b"GET"), (b":scheme", b"http"), (b":path", b"")]),
    # §8.3.1: :authority and Host must agree; no userinfo.
    "host-differs-from-authority": headers_only([(b"host", b"evil.example")]),
    "two-hosts": headers_only([(b"host", b"{authority}"), (b"host", b"evil.example")]),
    "userinfo-in-authority": headers_only(
        pseudo=[(b":method", b"GET"), (b":scheme", b"http"), (b":authority", b"user@{authority}"), (b":path", b"/")]
    ),
    # Design §5: at most 100 headers and 64 KiB of them.
    "too-many-headers": many_headers(101),
    "headers-too-large": headers_only([(b"x-big", b"a" * (70 * 1024))]),
    "content-length-above-data": with_body([(b"content-length", b"10")], b"hello"),
    "content-length-below-data": with_body([(b"content-length", b"3")], b"hello"),
}

CONTROLS = {
    "get": headers_only(),
    "get-with-matching-host": headers_only([(b"host", b"{authority}")]),
    "post-with-content-length": with_body([(b"content-length", b"5")], b"hello"),
    "post-without-content-length": with_body([], b"hello"),
    "te-trailers": headers_only([(b"te", b"trailers")]),
    "hundred-headers": many_headers(100),
}


def substitute(conn_send, authority):
    """Runs `conn_send`, replacing the placeholder `{authority}` in header values."""

    class Proxy:
        def __init__(self, conn):
            self.conn = conn

        def send_headers(self, stream, fields, end_stream):
            fields = [(n, v.replace(b"{authority}", authority)) for n, v in fields]
            self.conn.send_headers(stream, fields, end_stream=end_stream)

        def send_data(self, stream, data, end_stream):
            self.conn.send_data(stream, data, end_stream=end_stream)

    return lambda conn: conn_send(Proxy(conn), authority)


def run(host, port, send):
    authority = ("%s:%d" % (host, port)).encode()
    config = h2.config.H2Configuration(
        client_side=True,
        header_encoding=None,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
        validate_inbound_headers=False,
        normalize_inbound_headers=False,
    )
    conn = h2.connection.H2Connection(config=config)
    sock = socket.create_connection((host, port), timeout=TIMEOUT)
    try:
        conn.initiate_connection()
        substitute(send, authority)(conn)
        sock.sendall(conn.data_to_send())
        while True:
            try:
                data = sock.recv(65536)
            except socket.timeout:
                return "timeout", None
            except OSError as e:
                return "closed", str(e)
            if not data:
                return "closed", None
            try:
                events = conn.receive_data(data)
            except h2.exceptions.ProtocolError as e:
                return "closed", "client-side protocol error: %s" % e
            for event in events:
                if isinstance(event, h2.events.ResponseReceived) and event.stream_id == STREAM:
                    status = dict(event.headers).get(b":status", b"?").decode()
                    cause = dict(event.headers).get(b"x-tether-error", b"").decode()
                    return "status:" + status, cause or None
                if isinstance(event, h2.events.StreamReset) and event.stream_id == STREAM:
                    return "reset:%s" % getattr(event.error_code, "name", event.error_code), None
                if isinstance(event, h2.events.ConnectionTerminated):
                    return "goaway:%s" % getattr(event.error_code, "name", event.error_code), None
            out = conn.data_to_send()
            if out:
                sock.sendall(out)
    finally:
        sock.close()


def main():
    target, mode = sys.argv[1], sys.argv[2]
    host, port = target.rsplit(":", 1)
    cases = {"malformed": MALFORMED, "controls": CONTROLS}[mode]
    for name, send in cases.items():
        try:
            outcome, detail = run(host, int(port), send)
        except OSError as e:
            outcome, detail = "closed", str(e)
        print(json.dumps({"case": name, "outcome": outcome, "detail": detail}), flush=True)
        if not sys.stdin.readline():
            return


if __name__ == "__main__":
    main()
