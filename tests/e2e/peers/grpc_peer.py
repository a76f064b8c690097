#!/usr/bin/env python3
"""A gRPC peer for tether's end-to-end tests (tests/e2e/grpc.rs), on the real grpcio package.

Generic handlers with bytes in and bytes out: no protoc, no generated code.

    grpc_peer.py server
        Serves the `tether.test.Echo` service on 127.0.0.1 (a port the kernel picks), prints
        `{"port": N}` on one line of stdout, and serves until stdin closes.

    grpc_peer.py client HOST:PORT ID
        Calls every method once through HOST:PORT, with request metadata `x-test-id: ID`, and
        prints what came back as one line of JSON (see `client`).

    grpc_peer.py cancel HOST:PORT ID MS
        Calls Slow twice through HOST:PORT: once with a deadline of MS milliseconds, once with no
        deadline but cancelled by the client after MS milliseconds. For each, prints the status,
        how long the call took, and whether the server saw the call cancelled (asked through
        WasCancelled), as one line of JSON (see `cancel`).

The methods:
    Unary  echoes the request; initial metadata `x-echo-id: ID` and `x-echo-bin` (the request's
           binary `x-test-bin`, 00 01 fe ff from the client), trailing metadata
           `x-trailer: done:ID` and `x-trailer-bin: 00 ff 01 fe ID`.
    Fail   fails with NOT_FOUND and the details `widget «ID» not found`, trailing metadata
           `x-trailer: failed:ID`.
    Chat   echoes every message of a bidirectional stream, in order; trailing metadata
           `x-trailer-count: N`.
    Slow   works for up to 10 s, watching whether the call is still active; when it is not, it
           notes the call's id (the request) as cancelled.
    WasCancelled  answers b"yes" when the id in the request was noted as cancelled.

Payloads (the Rust test computes the same):
    unary       pattern(UNARY_LEN), where pattern(n) = bytes(i % 256 for i in range(n))
    message i   chat_message(i) for i in range(CHAT_MESSAGES): CHAT_LEN(i) bytes,
                byte j = (31 * i + j) % 256
The client sends message i of the stream only after message i-1 came back (ping-pong), so a
proxy that held the request stream back until its end would hang the call.

Digests are 64-bit FNV-1a, as tether_testkit::Fnv, in 16 hex digits.
"""

import json
import queue
import sys
import threading
import time
from concurrent import futures

try:
    import grpc
except ImportError:
    sys.stderr.write("grpc_peer.py: Python's grpcio is missing: pip install grpcio\n")
    sys.exit(3)

SERVICE = "tether.test.Echo"
UNARY_LEN = 1024 * 1024 + 7
CHAT_MESSAGES = 100
CALL_TIMEOUT_SECONDS = 60
OPTIONS = [
    ("grpc.enable_http_proxy", 0),
    ("grpc.max_send_message_length", 8 * 1024 * 1024),
    ("grpc.max_receive_message_length", 8 * 1024 * 1024),
]


def pattern(n):
    return bytes(i % 256 for i in range(n))


def chat_len(i):
    # Empty, small, several HTTP/2 frames, and one message larger than a 64 KiB stream window.
    return 300_000 if i == 50 else (i * 7919) % 20011


def chat_message(i):
    return bytes((31 * i + j) % 256 for j in range(chat_len(i)))


def fnv(data):
    h = 0xCBF29CE484222325
    for b in data:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def metadata_dict(md):
    out = {}
    for key, value in md or ():
        out[key] = value.hex() if isinstance(value, bytes) else value
    return out


def test_id(context):
    return dict(context.invocation_metadata()).get("x-test-id", "")


# ---- server -------------------------------------------------------------------------------


def unary(request, context):
    tid = test_id(context)
    echo_bin = dict(context.invocation_metadata()).get("x-test-bin", b"")
    context.send_initial_metadata([("x-echo-id", tid), ("x-echo-bin", echo_bin)])
    context.set_trailing_metadata(
        [("x-trailer", f"done:{tid}"), ("x-trailer-bin", b"\x00\xff\x01\xfe" + tid.encode())]
    )
    return request


def fail(request, context):
    tid = test_id(context)
    context.set_trailing_metadata([("x-trailer", f"failed:{tid}")])
    context.abort(grpc.StatusCode.NOT_FOUND, f"widget «{tid}» not found")


def chat(requests, context):
    n = 0
    for message in requests:
        n += 1
        yield message
    context.set_trailing_metadata([("x-trailer-count", str(n))])


CANCELLED = set()


def slow(request, context):
    for _ in range(1000):
        if not context.is_active():
            CANCELLED.add(request)
            return b""
        time.sleep(0.01)
    return b"finished"


def was_cancelled(request, context):
    return b"yes" if request in CANCELLED else b"no"


def serve():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=OPTIONS)
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "Chat": grpc.stream_stream_rpc_method_handler(chat),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
        "WasCancelled": grpc.unary_unary_rpc_method_handler(was_cancelled),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    if port == 0:
        sys.exit("grpc_peer.py: cannot bind 127.0.0.1:0")
    server.start()
    print(json.dumps({"port": port}), flush=True)
    # Serve until the test closes our stdin (or dies, which closes it too).
    sys.stdin.read()
    server.stop(0)


# ---- client -------------------------------------------------------------------------------


def call_unary(channel, metadata):
    stub = channel.unary_unary(f"/{SERVICE}/Unary")
    response, call = stub.with_call(pattern(UNARY_LEN), metadata=metadata, timeout=CALL_TIMEOUT_SECONDS)
    return {
        "code": call.code().name,
        "len": len(response),
        "fnv": fnv(response),
        "initial": metadata_dict(call.initial_metadata()),
        "trailing": metadata_dict(call.trailing_metadata()),
    }


def call_fail(channel, metadata):
    stub = channel.unary_unary(f"/{SERVICE}/Fail")
    try:
        response = stub(b"which widget?", metadata=metadata, timeout=CALL_TIMEOUT_SECONDS)
    except grpc.RpcError as e:
        return {"code": e.code().name, "details": e.details(), "trailing": metadata_dict(e.trailing_metadata())}
    return {"code": "OK", "details": None, "unexpected_response": response.hex()}


def call_chat(channel, metadata):
    stub = channel.stream_stream(f"/{SERVICE}/Chat")
    outgoing = queue.Queue()
    call = stub(iter(outgoing.get, None), metadata=metadata, timeout=CALL_TIMEOUT_SECONDS)
    received = []
    try:
        for i in range(CHAT_MESSAGES):
            outgoing.put(chat_message(i))
            reply = next(call)
            received.append([len(reply), fnv(reply)])
        outgoing.put(None)
        extra = sum(1 for _ in call)
    except grpc.RpcError as e:
        outgoing.put(None)
        return {"code": e.code().name, "details": e.details(), "messages": received}
    return {
        "code": call.code().name,
        "messages": received,
        "extra": extra,
        "trailing": metadata_dict(call.trailing_metadata()),
    }


def client(target, tid):
    metadata = [("x-test-id", tid), ("x-test-bin", b"\x00\x01\xfe\xff")]
    result = {}
    with grpc.insecure_channel(target, options=OPTIONS) as channel:
        for name, call in [("unary", call_unary), ("fail", call_fail), ("chat", call_chat)]:
            try:
                result[name] = call(channel, metadata)
            except grpc.RpcError as e:
                result[name] = {"code": e.code().name, "details": e.details()}
    print(json.dumps(result), flush=True)


def server_saw_cancel(channel, call_id):
    """Whether the server noted `call_id` as cancelled, within 3 s."""
    ask = channel.unary_unary(f"/{SERVICE}/WasCancelled")
    for _ in range(60):
        if ask(call_id, timeout=CALL_TIMEOUT_SECONDS) == b"yes":
            return True
        time.sleep(0.05)
    return False


def cancel(target, tid, ms):
    slow_call = None
    result = {}
    with grpc.insecure_channel(target, options=OPTIONS) as channel:
        slow_call = channel.unary_unary(f"/{SERVICE}/Slow")
        deadline_id = f"deadline-{tid}".encode()
        start = time.monotonic()
        try:
            slow_call(deadline_id, timeout=ms / 1000)
            code = "OK"
        except grpc.RpcError as e:
            code = e.code().name
        result["deadline"] = {
            "code": code,
            "elapsed_ms": round((time.monotonic() - start) * 1000),
            "server_saw_cancel": server_saw_cancel(channel, deadline_id),
        }
        # No deadline: the server can only learn of the cancellation from the reset that
        # travels back through every hop.
        cancel_id = f"cancel-{tid}".encode()
        future = slow_call.future(cancel_id)
        time.sleep(ms / 1000)
        future.cancel()
        result["cancel"] = {
            "cancelled": future.cancelled(),
            "server_saw_cancel": server_saw_cancel(channel, cancel_id),
        }
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    if len(sys.argv) == 2 and sys.argv[1] == "server":
        serve()
    elif len(sys.argv) == 4 and sys.argv[1] == "client":
        client(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 5 and sys.argv[1] == "cancel":
        cancel(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        sys.exit(__doc__)
