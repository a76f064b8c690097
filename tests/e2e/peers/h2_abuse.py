#!/usr/bin/env python3
"""An abusive HTTP/2 (h2c, prior knowledge) client for tether's end-to-end tests
(tests/e2e/abuse.rs): one connection that floods the proxy with one kind of frame, to check that
the proxy closes it early (reliability A4).

    h2_abuse.py HOST:PORT MODE MAX_FRAMES MAX_SECONDS

MODE is one of
    rapid-reset          HEADERS (a GET) then RST_STREAM(CANCEL) on a new stream, in batches
    paced-reset          the same, one pair at a time, waiting a moment between pairs so the
                         proxy has accepted each stream (and started its request) before the reset
    continuation         one HEADERS without END_HEADERS, then CONTINUATION frames without it
    ping                 PING frames; the client never reads, so the PING ACKs pile up
    settings             SETTINGS frames; never reads
    window-update        WINDOW_UPDATE(1) frames on the connection; never reads

The client stops after MAX_FRAMES frames or MAX_SECONDS, whichever comes first, or when the
proxy closes the connection, and prints one line of JSON:
    {"mode": MODE, "sent": FRAMES_SENT, "outcome": OUTCOME, "seconds": ELAPSED}
OUTCOME is
    "goaway:CODE"  the proxy sent GOAWAY with that error code (modes that read)
    "eof"          the proxy closed the connection (FIN)
    "reset"        the connection was reset (RST, or EPIPE on send)
    "stalled"      the proxy stopped reading (a send made no progress for STALL seconds) and did
                   not close the connection within MAX_SECONDS
    "open"         MAX_FRAMES sent and the connection still open a second later
Exit status 3 if the `h2` package is missing.
"""

import json
import select
import socket
import struct
import sys
import time

try:
    import h2.connection  # noqa: F401  (the package that brings hpack)
    import hpack
except ImportError:
    print("this peer needs Python's h2 package: pip install h2", file=sys.stderr)
    sys.exit(3)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH, PING, GOAWAY, WINDOW_UPDATE, CONTINUATION = range(10)
END_STREAM, END_HEADERS = 0x1, 0x4
CANCEL = 0x8
# A send that makes no progress for this long means the proxy stopped reading.
STALL = 2.0


def frame(kind, flags, stream, payload=b""):
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", kind, flags, stream) + payload


class Closed(Exception):
    def __init__(self, outcome):
        self.outcome = outcome


class Peer:
    def __init__(self, host, port, deadline):
        self.sock = socket.create_connection((host, port), timeout=5)
        self.sock.setblocking(False)
        self.deadline = deadline
        self.inbuf = b""
        self.authority = ("%s:%d" % (host, port)).encode()

    def send(self, data):
        """Sends all of `data`; raises Closed if the proxy closes or stops reading."""
        view = memoryview(data)
        progress = time.monotonic()
        while view:
            now = time.monotonic()
            if now >= self.deadline:
                raise Closed("stalled" if now - progress >= STALL else "open")
            _, writable, _ = select.select([], [self.sock], [], 0.1)
            if not writable:
                if time.monotonic() - progress >= STALL:
                    self.wait_close()
                continue
            try:
                n = self.sock.send(view)
            except (BrokenPipeError, ConnectionResetError):
                raise Closed("reset")
            view = view[n:]
            progress = time.monotonic()

    def wait_close(self):
        """The proxy stopped reading: wait until the deadline for it to close the connection."""
        while time.monotonic() < self.deadline:
            try:
                self.sock.send(frame(PING, 0, 0, b"\0" * 8))
            except BlockingIOError:
                pass
            except (BrokenPipeError, ConnectionResetError):
                raise Closed("reset")
            self.check_closed(0.2)
        raise Closed("stalled")

    def check_closed(self, timeout):
        """Without parsing what the proxy sent, raises Closed if it closed the connection."""
        readable, _, _ = select.select([self.sock], [], [], timeout)
        if not readable:
            return
        try:
            while self.sock.recv(1 << 20):
                pass
            raise Closed("eof")
        except BlockingIOError:
            pass
        except ConnectionResetError:
            raise Closed("reset")

    def poll(self, timeout=0.0):
        """Reads what the proxy sent; raises Closed on GOAWAY, EOF or reset."""
        while True:
            readable, _, _ = select.select([self.sock], [], [], timeout)
            if not readable:
                return
            timeout = 0.0
            try:
                data = self.sock.recv(1 << 16)
            except BlockingIOError:
                return
            except ConnectionResetError:
                raise Closed("reset")
            if not data:
                raise Closed("eof")
            self.inbuf += data
            while len(self.inbuf) >= 9:
                length = struct.unpack(">I", b"\0" + self.inbuf[:3])[0]
                if len(self.inbuf) < 9 + length:
                    break
                kind = self.inbuf[3]
                payload = self.inbuf[9 : 9 + length]
                self.inbuf = self.inbuf[9 + length :]
                if kind == GOAWAY:
                    code = struct.unpack(">I", payload[4:8])[0]
                    raise Closed("goaway:%d" % code)


def request_block(encoder, authority, path=b"/"):
    return encoder.encode(
        [(b":method", b"GET"), (b":scheme", b"http"), (b":authority", authority), (b":path", path)]
    )


def run(peer, mode, max_frames):
    """Floods; returns the number of frames sent when it raises Closed."""
    sent = 0
    encoder = hpack.Encoder()
    peer.send(PREFACE + frame(SETTINGS, 0, 0))
    try:
        if mode in ("rapid-reset", "paced-reset"):
            batch = 100 if mode == "rapid-reset" else 1
            stream = 1
            while sent < max_frames:
                out = b""
                for _ in range(batch):
                    block = request_block(encoder, peer.authority)
                    out += frame(HEADERS, END_STREAM | END_HEADERS, stream, block)
                    out += frame(RST_STREAM, 0, stream, struct.pack(">I", CANCEL))
                    stream += 2
                peer.send(out)
                sent += 2 * batch
                peer.poll(0.005 if mode == "paced-reset" else 0.0)
        elif mode == "continuation":
            block = request_block(encoder, peer.authority)
            peer.send(frame(HEADERS, END_STREAM, 1, block))
            sent += 1
            chunk = b"".join(frame(CONTINUATION, 0, 1, b"") for _ in range(100))
            while sent < max_frames:
                peer.send(chunk)
                sent += 100
                peer.poll()
        else:
            one = {
                "ping": frame(PING, 0, 0, b"\0" * 8),
                "settings": frame(SETTINGS, 0, 0, struct.pack(">HI", 0x4, 65535)),
                "window-update": frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1)),
            }[mode]
            chunk = one * 100
            while sent < max_frames:
                peer.send(chunk)  # never reads
                sent += 100
        # Everything sent: is the connection still open a second later?
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            if mode in ("rapid-reset", "paced-reset", "continuation"):
                peer.poll(0.1)
            else:
                peer.check_closed(0.1)
        raise Closed("open")
    except Closed as closed:
        closed.sent = sent
        raise


def main():
    target, mode, max_frames, max_seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    host, port = target.rsplit(":", 1)
    start = time.monotonic()
    peer = Peer(host, int(port), start + max_seconds)
    try:
        run(peer, mode, max_frames)
    except Closed as closed:
        outcome, sent = closed.outcome, getattr(closed, "sent", 0)
    finally:
        peer.sock.close()
    print(json.dumps({"mode": mode, "sent": sent, "outcome": outcome, "seconds": round(time.monotonic() - start, 3)}))


if __name__ == "__main__":
    main()
