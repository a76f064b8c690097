"""The soak's gRPC service (tests/e2e/identity_soak.rs), on grpcio with generic handlers: bytes
in and out, no generated code.

    python3 ticks.py PORT

Unary  echoes the request.
Ticks  a server stream that the caller keeps open for a whole run. The request is JSON
       {"seconds": S, "interval": I}: a message every I seconds for S seconds, each JSON
       {"call": ID, "seq": N, "peer": PEER}, where ID is this call's own and PEER the address
       the call arrived from (the task's sidecar's connection); then the trailing metadata
       `x-sent: N`, the number of messages sent. A stream that was reset and opened again shows
       as a failed call, a gap in `seq`, another `call` or another `peer`.
"""

import json
import sys
import time
import uuid
from concurrent import futures

import grpc

SERVICE = "tether.soak.Ticks"


def unary(request, context):
    return request


def ticks(request, context):
    asked = json.loads(request)
    call = uuid.uuid4().hex
    start = time.monotonic()
    sent = 0
    while context.is_active() and time.monotonic() - start < asked["seconds"]:
        yield json.dumps({"call": call, "seq": sent, "peer": context.peer()}).encode()
        sent += 1
        time.sleep(asked["interval"])
    context.set_trailing_metadata([("x-sent", str(sent))])


def main():
    # One thread per open stream, beside the unary calls.
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Ticks": grpc.unary_stream_rpc_method_handler(ticks),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_insecure_port(f"0.0.0.0:{sys.argv[1]}")
    server.start()
    server.wait_for_termination()


if __name__ == "__main__":
    main()
