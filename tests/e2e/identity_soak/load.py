"""The soak's load (tests/e2e/identity_soak.rs): steady, paced requests to an HTTP service by
an HTTP alias and by a tcp one, unary gRPC calls, and one gRPC stream (ticks.py's Ticks) held
open for the whole run. Run inside the mesh, as a service, and from the host, through ports
published by the edge.

    python3 load.py --http URL --raw URL --grpc HOST:PORT --seconds S [--rate N] [--stay]

First a warm-up: each target is called until it answers (at most 60 s); what fails then is
not counted, since a caller may start before what it calls. Then the stream is opened and,
once its first message arrived, `MEASURING` is printed and every kind of request is sent N
times a second for S seconds. Every 5 s a `STATS {json}` line; at the end `RESULT {json}`:

    {"http"|"raw"|"grpc": {"ok": N, "failed": N}, "failures": [first 20, with the time],
     "stream": {"code", "messages", "sent" (the server's count), "calls", "peers",
                "anomalies" (the first 20 breaks in the sequence), "longest_pause_ms"}}

--stay keeps the process alive afterwards, so that a task's app does not exit and get
replaced (and start over).
"""

import argparse
import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request

# Inside a task, names resolve through its /etc/hosts only: the system resolver reads it.
os.environ.setdefault("GRPC_DNS_RESOLVER", "native")
import grpc  # noqa: E402

SERVICE = "tether.soak.Ticks"
OPTIONS = [("grpc.enable_http_proxy", 0)]
REQUEST_TIMEOUT = 10
WARMUP_SECONDS = 60
TICK_INTERVAL = 0.1
KEPT_FAILURES = 20

lock = threading.Lock()
counts = {kind: {"ok": 0, "failed": 0} for kind in ("http", "raw", "grpc")}
failures = []
started = time.monotonic()
# Never a proxy from the environment: every request goes to the address given.
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def note(kind, error):
    with lock:
        counts[kind]["failed"] += 1
        if len(failures) < KEPT_FAILURES:
            failures.append(f"{kind} at {time.monotonic() - started:.1f}s: {error}")


def describe(error):
    if isinstance(error, urllib.error.HTTPError):
        return f"HTTP {error.code} x-tether-error={error.headers.get('x-tether-error')} {error.read()[:200]!r}"
    if isinstance(error, grpc.RpcError):
        return f"gRPC {error.code().name}: {error.details()}"
    return repr(error)


def get(url):
    with opener.open(url, timeout=REQUEST_TIMEOUT) as reply:
        body = reply.read()
    if not body.startswith(b"web-"):
        raise ValueError(f"unexpected answer {body[:200]!r}")


def caller(args, channel):
    unary = channel.unary_unary(f"/{SERVICE}/Unary")
    sequence = iter(range(1 << 62))

    def call():
        payload = f"ping-{next(sequence)}".encode()
        if unary(payload, timeout=REQUEST_TIMEOUT) != payload:
            raise ValueError("the echo differs from the request")

    return {"http": lambda: get(args.http), "raw": lambda: get(args.raw), "grpc": call}


def warm_up(calls):
    """Until every target has answered once; the last error of one that never did."""
    deadline = time.monotonic() + WARMUP_SECONDS
    for kind, call in calls.items():
        while True:
            try:
                call()
                break
            except Exception as error:  # noqa: BLE001 - any failure means not ready yet
                if time.monotonic() > deadline:
                    return f"{kind} never answered during the warm-up: {describe(error)}"
                time.sleep(0.2)
    return None


def paced(kind, call, rate, until):
    """`rate` calls a second until `until`; behind schedule, it skips rather than bursts."""
    start = time.monotonic()
    n = 0
    while True:
        due = start + n / rate
        now = time.monotonic()
        if due >= until:
            return
        if due > now:
            time.sleep(due - now)
        elif now - due > 1:
            n = int((now - start) * rate)
        n += 1
        try:
            call()
            with lock:
                counts[kind]["ok"] += 1
        except Exception as error:  # noqa: BLE001 - every failure is counted and kept
            note(kind, describe(error))


class Stream:
    """The long-lived Ticks call and what came of it."""

    def __init__(self, channel, seconds):
        stub = channel.unary_stream(f"/{SERVICE}/Ticks")
        asked = json.dumps({"seconds": seconds, "interval": TICK_INTERVAL}).encode()
        self.call = stub(asked, timeout=seconds + 120)
        self.first = threading.Event()
        self.result = {"messages": 0, "calls": [], "peers": [], "anomalies": [], "longest_pause_ms": 0}

    def follow(self):
        r = self.result
        last, last_seq = None, -1
        try:
            for raw in self.call:
                now = time.monotonic()
                message = json.loads(raw)
                if last is not None:
                    r["longest_pause_ms"] = max(r["longest_pause_ms"], round((now - last) * 1000))
                last = now
                if message["seq"] != last_seq + 1 and len(r["anomalies"]) < KEPT_FAILURES:
                    r["anomalies"].append(f"seq {message['seq']} after {last_seq}")
                last_seq = message["seq"]
                for key, seen in (("call", r["calls"]), ("peer", r["peers"])):
                    if message[key] not in seen:
                        seen.append(message[key])
                r["messages"] += 1
                self.first.set()
            r["code"] = self.call.code().name
            r["sent"] = int(dict(self.call.trailing_metadata()).get("x-sent", -1))
        except grpc.RpcError as error:
            r["code"] = error.code().name
            r["details"] = error.details()
        finally:
            self.first.set()


def report(done):
    while not done.wait(5):
        with lock:
            print("STATS " + json.dumps(counts), flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--http", required=True)
    parser.add_argument("--raw", required=True)
    parser.add_argument("--grpc", required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--rate", type=float, default=10)
    parser.add_argument("--stay", action="store_true")
    args = parser.parse_args()

    unary_channel = grpc.insecure_channel(args.grpc, options=OPTIONS)
    calls = caller(args, unary_channel)
    result = {}
    problem = warm_up(calls)
    if problem:
        result["warmup"] = problem
    else:
        stream = Stream(grpc.insecure_channel(args.grpc, options=OPTIONS), args.seconds)
        follower = threading.Thread(target=stream.follow)
        follower.start()
        stream.first.wait(WARMUP_SECONDS)
        print("MEASURING", flush=True)
        until = time.monotonic() + args.seconds
        done = threading.Event()
        threading.Thread(target=report, args=(done,), daemon=True).start()
        loops = [threading.Thread(target=paced, args=(k, c, args.rate, until)) for k, c in calls.items()]
        for loop in loops:
            loop.start()
        for loop in loops:
            loop.join()
        follower.join(args.seconds + 180)
        done.set()
        result.update(counts, failures=failures, stream=stream.result)
    print("RESULT " + json.dumps(result), flush=True)
    while args.stay:
        time.sleep(3600)


if __name__ == "__main__":
    sys.exit(main())
