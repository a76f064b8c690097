#!/usr/bin/env python3
"""Helpers for bench/run (standard library only).

Subcommands:
  measure  run one warm-up + one measured load run, sample the proxies'
           CPU time and peak RSS, parse the load generator's output and
           append one JSON line to the results file.
  rss      print VmRSS/VmHWM (KiB) of every process in some process groups.
  report   render the results file as Markdown.
"""

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import threading
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")

# --------------------------------------------------------------------------
# /proc helpers


def read_stat(pid):
    """(comm, fields after comm) of /proc/PID/stat, or None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    # comm may contain spaces and parentheses: the fields after the last ')' are fixed.
    end = stat.rfind(")")
    return stat[stat.find("(") + 1:end], stat[end + 2:].split()


def all_stats():
    """{pid: (comm, fields)} for every live process."""
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = read_stat(name)
            if st:
                out[int(name)] = st
    return out


def ticks(fields):
    return int(fields[11]) + int(fields[12])  # utime + stime


def pids_in_group(pgid):
    """All live pids whose process group is pgid (each service runs under setsid)."""
    return sorted(pid for pid, (_, fields) in all_stats().items() if int(fields[2]) == pgid)


def proc_ticks(pid):
    st = read_stat(pid)
    return ticks(st[1]) if st else 0


def proc_status_kib(pid, key):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def host_cpu():
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + vals[4]  # idle + iowait
    return sum(vals) - idle, sum(vals)


def parse_groups(spec):
    """'client=123,server1=456' -> [('client', 123), ...]"""
    groups = []
    for item in filter(None, (spec or "").split(",")):
        label, pgid = item.split("=")
        groups.append((label, int(pgid)))
    return groups


def groups_snapshot(groups):
    return {label: sum(proc_ticks(p) for p in pids_in_group(pgid)) for label, pgid in groups}


def groups_memory(groups):
    mem = {}
    for label, pgid in groups:
        pids = pids_in_group(pgid)
        mem[label] = {
            "pids": pids,
            "hwm_kib": sum(proc_status_kib(p, "VmHWM") for p in pids),
            "rss_kib": sum(proc_status_kib(p, "VmRSS") for p in pids),
        }
    return mem


# --------------------------------------------------------------------------
# load generator output parsing

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def wrk_ms(text):
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text.strip())
    if not m:
        raise ValueError(f"cannot parse wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(text):
    res = {"non2xx": 0, "socket_errors": {"connect": 0, "read": 0, "write": 0, "timeout": 0}}
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if not m:
        raise ValueError("no Requests/sec line in wrk output")
    res["rps"] = float(m.group(1))
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", text, re.M)
        if m:
            res[f"p{pct}_ms"] = wrk_ms(m.group(1))
    m = re.search(r"(\d+) requests in ([\d.]+\w+)", text)
    if m:
        res["requests"] = int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if m:
        res["socket_errors"] = dict(zip(("connect", "read", "write", "timeout"), map(int, m.groups())))
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if m:
        res["non2xx"] = int(m.group(1))
    return res


def percentile(sorted_vals, pct):
    if not sorted_vals:
        return None
    k = max(0, min(len(sorted_vals) - 1, int(round(pct / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


def parse_h2load(text, log_path):
    res = {}
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", text)
    if not m:
        raise ValueError("no 'finished in' line in h2load output")
    res["rps"] = float(m.group(1))
    m = re.search(r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
                  r"(\d+) failed, (\d+) errored, (\d+) timeout", text)
    if m:
        keys = ("total", "started", "done", "succeeded", "failed", "errored", "timeout")
        res["requests_detail"] = dict(zip(keys, map(int, m.groups())))
        res["requests"] = res["requests_detail"]["done"]
    m = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", text)
    if m:
        c2, c3, c4, c5 = map(int, m.groups())
        res["status"] = {"2xx": c2, "3xx": c3, "4xx": c4, "5xx": c5}
        res["non2xx"] = c4 + c5
    m = re.search(r"Application protocol: (\S+)", text)
    if m:
        res["protocol"] = m.group(1)
    lat = []
    non2xx_log = 0
    if log_path and os.path.exists(log_path):
        with open(log_path) as f:
            for line in f:
                parts = line.split("\t")
                if len(parts) < 3:
                    continue
                if not parts[1].startswith("2"):
                    non2xx_log += 1
                lat.append(int(parts[2]) / 1000.0)
        os.unlink(log_path)
    lat.sort()
    if lat:
        for pct in (50, 75, 90, 99):
            res[f"p{pct}_ms"] = percentile(lat, pct)
        res["latency_samples"] = len(lat)
    return res


# --------------------------------------------------------------------------
# measure


def tool_cmd(tool, url, duration, args):
    if tool == "wrk":
        return ["wrk", f"-t{args.wrk_threads}", f"-c{args.wrk_conns}", f"-d{duration}s", "--latency", url]
    if tool == "h2load":
        return ["h2load", "-t1", f"-c{args.h2_clients}", f"-m{args.h2_streams}", "-D", str(duration), url]
    if tool == "h1rate":  # fixed-rate HTTP/1.1 load (for the RSS-at-1k-req/s check)
        return ["h2load", "--h1", "-t1", f"-c{args.rate_clients}", "-m1",
                f"--rps={args.rate_per_client}", "-D", str(duration), url]
    raise ValueError(tool)


BACKEND_PORTS = {18081, 18082, 18083, 18091, 18092, 18093}
HOP_PORTS = {15001, 15002, 15003, 15101, 15102, 15103, 15111, 15112, 15113, 15121, 15122, 15123,
             15131, 15132, 15133, 15201, 15202, 15203}
TWO_HOP_ROWS = "efghij"


def connection_snapshot(raw_path, netns):
    """Mid-run `ss` (also inside the given network namespaces): how many TCP connections go to
    the backends and between the hops."""
    ss = ["ss", "-tnH", "state", "established"]
    out = ""
    try:
        for cmd in [ss] + [["ip", "netns", "exec", ns] + ss for ns in netns]:
            out += subprocess.run(cmd, stdout=subprocess.PIPE, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    with open(raw_path.replace(".txt", "-connections.txt"), "w") as f:
        f.write(out)
    to_backends = to_hops = 0
    for line in out.splitlines():
        cols = line.split()
        if len(cols) < 4:
            continue
        peer = int(cols[3].rsplit(":", 1)[1])
        to_backends += peer in BACKEND_PORTS
        to_hops += peer in HOP_PORTS
    return {"to_backends": to_backends, "between_hops": to_hops}


def run_bounded(cmd, limit):
    """Run a load generator; kill it if it outlives its duration by far (never hang the bench)."""
    try:
        return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=limit)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return subprocess.CompletedProcess(cmd, -9, out + f"\n[bench] killed after {limit} s (hung)\n")


def cmd_measure(args):
    groups = parse_groups(args.groups)
    known = parse_groups(args.known_groups)
    raw_path = os.path.join(args.rawdir, f"{args.row}-{args.tool}-r{args.round}.txt")
    # warm-up (output discarded, but a failing warm-up is reported)
    if args.warmup > 0:
        w = run_bounded(tool_cmd(args.tool, args.url, args.warmup, args), args.warmup + 30)
        if w.returncode != 0:
            sys.stderr.write(f"warm-up of {args.row}/{args.tool} exited {w.returncode}:\n{w.stdout[-2000:]}\n")
    cmd = tool_cmd(args.tool, args.url, args.duration, args)
    log_path = None
    if args.tool in ("h2load", "h1rate"):
        log_path = raw_path + ".log"
        cmd.insert(1, f"--log-file={log_path}")
    busy0, total0 = host_cpu()
    ticks0 = groups_snapshot(groups)
    known0 = sum(groups_snapshot(known).values())
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    snap = {}
    netns = list(filter(None, args.netns.split(",")))
    timer = threading.Timer(args.duration / 2.0, lambda: snap.update(connection_snapshot(raw_path, netns)))
    timer.start()
    p = run_bounded(cmd, args.duration + 30)
    elapsed = time.monotonic() - t0
    timer.join()
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    known1 = sum(groups_snapshot(known).values())
    ticks1 = groups_snapshot(groups)
    busy1, total1 = host_cpu()
    mem = groups_memory(groups)
    with open(raw_path, "w") as f:
        f.write("$ " + " ".join(cmd) + "\n" + p.stdout)
    rec = {"row": args.row, "tool": args.tool, "round": args.round, "url": args.url, "cmd": " ".join(cmd),
           "exit": p.returncode, "elapsed_s": round(elapsed, 2)}
    try:
        if args.tool == "wrk":
            rec.update(parse_wrk(p.stdout))
        else:
            rec.update(parse_h2load(p.stdout, log_path))
    except ValueError as e:
        rec["error"] = str(e)
        if log_path and os.path.exists(log_path):
            os.unlink(log_path)
    rec["connections"] = snap
    rec["host_cpu_busy_pct"] = round(100.0 * (busy1 - busy0) / max(1, total1 - total0) * os.cpu_count(), 1)
    rec["proxies"] = []
    for label, _ in groups:
        cpu_s = (ticks1[label] - ticks0[label]) / CLK_TCK
        rec["proxies"].append({"label": label, "cpu_pct": round(100.0 * cpu_s / max(elapsed, 1e-9), 1),
                               "hwm_kib": mem[label]["hwm_kib"], "rss_kib": mem[label]["rss_kib"],
                               "pids": mem[label]["pids"]})
    # CPU used by anything that is not part of this measurement (another build, tests, ...)
    loadgen_pct = 100.0 * ((ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)) / elapsed
    known_pct = 100.0 * (known1 - known0) / CLK_TCK / elapsed
    rec["loadgen_cpu_pct"] = round(loadgen_pct, 1)
    rec["backends_cpu_pct"] = round(known_pct, 1)
    rec["other_cpu_pct"] = round(max(0.0, rec["host_cpu_busy_pct"] - loadgen_pct - known_pct
                                     - sum(p["cpu_pct"] for p in rec["proxies"])), 1)
    with open(args.out, "a") as f:
        f.write(json.dumps(rec) + "\n")
    summary = f"{rec.get('rps', 0):>10.0f} req/s  p50 {fmt_ms(rec.get('p50_ms'))}  p99 {fmt_ms(rec.get('p99_ms'))}"
    summary += f"  non-2xx {rec.get('non2xx', '?')}"
    if args.tool == "wrk":
        se = rec.get("socket_errors", {})
        summary += "  socket errors " + "/".join(str(se.get(k, "?")) for k in ("connect", "read", "write", "timeout"))
    else:
        d = rec.get("requests_detail", {})
        summary += f"  failed {d.get('failed', '?')} errored {d.get('errored', '?')} proto {rec.get('protocol', '?')}"
    if "error" in rec:
        summary += f"  PARSE ERROR: {rec['error']}"
    us = cpu_us_per_request(rec)
    if us is not None:
        summary += f"  proxy CPU {us:.1f} µs/req"
    summary += f"  [other CPU {rec['other_cpu_pct']:.0f}%]"
    print(f"    r{args.round} {args.row:<3} {args.tool:<7} {summary}", flush=True)


def cmd_background(args):
    """How busy is the machine before we start (another build running skews everything)?"""
    b0, t0 = host_cpu()
    p0 = {pid: (comm, ticks(f)) for pid, (comm, f) in all_stats().items()}
    time.sleep(args.seconds)
    b1, t1 = host_cpu()
    p1 = {pid: (comm, ticks(f)) for pid, (comm, f) in all_stats().items()}
    busy = 100.0 * (b1 - b0) / max(1, t1 - t0) * os.cpu_count()
    top = sorted(((100.0 * (v[1] - p0[k][1]) / CLK_TCK / args.seconds, v[0]) for k, v in p1.items() if k in p0),
                 reverse=True)[:3]
    print(json.dumps({"busy_pct": round(busy, 1),
                      "top": [f"{c} {pct:.0f}%" for pct, c in top if pct >= 1]}))


def cmd_rss(args):
    out = {}
    for label, pgid in parse_groups(args.groups):
        pids = pids_in_group(pgid)
        out[label] = {"rss_kib": sum(proc_status_kib(p, "VmRSS") for p in pids),
                      "hwm_kib": sum(proc_status_kib(p, "VmHWM") for p in pids), "pids": pids}
    print(json.dumps(out))


# --------------------------------------------------------------------------
# report

ROWS = {
    "a": ("direct", "wrk/h2load → backend 1 (no proxy)", None),
    "b": ("HAProxy, one hop", "client → haproxy → 3 backends", "b"),
    "c": ("nginx, one hop", "client → nginx → 3 backends", "b"),
    "d": ("tether, one hop", "client → tether (outbound) → 3 backends", "b"),
    "e": ("HAProxy, two hops", "client → haproxy → 3× haproxy (HTTP/1.1) → backends", "e"),
    "g": ("HAProxy, two hops, h2 between", "client → haproxy → 3× haproxy (h2c) → backends", "e"),
    "f": ("tether, two hops", "client → tether → 3× tether (h2c) → backends", "e"),
    "h": ("HAProxy, two hops, TLS 1.3 between",
          "client → haproxy → 3× haproxy (mutual TLS 1.3, HTTP/1.1) → backends", "h"),
    "i": ("HAProxy, two hops, TLS 1.3 + h2 between",
          "client → haproxy → 3× haproxy (mutual TLS 1.3, ALPN h2) → backends", "h"),
    "j": ("tether, two hops, mutual TLS",
          "client → tether → 3× tether (mutual TLS 1.3, h2; certificates from `tether server`) → backends", "h"),
}
ORDER = ["a", "b", "c", "d", "e", "f", "g", "h", "i", "j"]


def cpu_us_per_request(rec):
    """The proxies' CPU time (all processes of the row together) per completed request, µs."""
    procs = rec.get("proxies") or []
    if not procs or not rec.get("requests") or not rec.get("elapsed_s"):
        return None
    cpu_s = sum(p["cpu_pct"] for p in procs) / 100.0 * rec["elapsed_s"]
    return 1e6 * cpu_s / rec["requests"]


def fmt_ms(v):
    if v is None:
        return "–"
    if v < 1:
        return f"{v * 1000:.0f} µs"
    if v < 10:
        return f"{v:.2f} ms"
    return f"{v:.1f} ms"


def fmt_mib(kib):
    return f"{kib / 1024:.1f}"


def fmt_mib2(kib):
    return f"{kib / 1024:.2f}"


def errors_cell(rec):
    parts = []
    if rec.get("non2xx"):
        parts.append(f"{rec['non2xx']} non-2xx")
    se = rec.get("socket_errors") or {}
    for k in ("connect", "read", "write", "timeout"):
        if se.get(k):
            parts.append(f"{se[k]} {k} err")
    d = rec.get("requests_detail") or {}
    for k in ("failed", "errored", "timeout"):
        if d.get(k):
            parts.append(f"{d[k]} {k}")
    if "requests" in rec and rec["requests"] == 0:
        parts.append("no response completed")
    if rec.get("exit"):
        parts.append(f"exit {rec['exit']}")
    if rec.get("error"):
        parts.append(rec["error"])
    return ", ".join(parts) if parts else "0"


def rss_cell(rec):
    procs = rec.get("proxies") or []
    if not procs:
        return "–"
    total = sum(p["hwm_kib"] for p in procs)
    if len(procs) == 1:
        return fmt_mib(total)
    detail = " + ".join(fmt_mib(p["hwm_kib"]) for p in procs)
    return f"{fmt_mib(total)} ({detail})"


def conns_cell(rec):
    c = rec.get("connections") or {}
    if not c:
        return "–"
    return f"{c['to_backends']} / {c['between_hops']}" if rec["row"] in TWO_HOP_ROWS else str(c["to_backends"])


def cpu_cell(rec):
    procs = rec.get("proxies") or []
    if not procs:
        return "–"
    if len(procs) == 1:
        return f"{procs[0]['cpu_pct']:.0f}%"
    return " + ".join(f"{p['cpu_pct']:.0f}" for p in procs) + " %"


def us_cell(rec):
    v = rec["cpu_us_per_req"] if "cpu_us_per_req" in rec else cpu_us_per_request(rec)
    return "–" if v is None else f"{v:.1f}"


def aggregate(rs):
    """Several rounds of one (row, tool) -> one record: medians, min/max req/s, summed errors, max RSS."""
    ok = [r for r in rs if "rps" in r]
    if not ok:
        return rs[0]
    med_rps = statistics.median(r["rps"] for r in ok)
    rep = min(ok, key=lambda r: abs(r["rps"] - med_rps))  # representative round (connections)
    agg = dict(rep)
    agg["n"] = len(rs)
    agg["rps"] = med_rps
    agg["rps_min"] = min(r["rps"] for r in ok)
    agg["rps_max"] = max(r["rps"] for r in ok)
    for k in ("p50_ms", "p75_ms", "p90_ms", "p99_ms", "host_cpu_busy_pct"):
        vals = [r[k] for r in ok if r.get(k) is not None]
        agg[k] = statistics.median(vals) if vals else None
    per_request = [v for v in map(cpu_us_per_request, ok) if v is not None]
    agg["cpu_us_per_req"] = statistics.median(per_request) if per_request else None
    agg["p99_ms_max"] = max((r.get("p99_ms") or 0) for r in ok)
    agg["other_cpu_max"] = max(r.get("other_cpu_pct", 0) for r in rs)
    agg["non2xx"] = sum(r.get("non2xx", 0) for r in rs)
    agg["socket_errors"] = {k: sum((r.get("socket_errors") or {}).get(k, 0) for r in rs)
                            for k in ("connect", "read", "write", "timeout")}
    agg["requests_detail"] = {k: sum((r.get("requests_detail") or {}).get(k, 0) for r in rs)
                              for k in ("total", "started", "done", "succeeded", "failed", "errored", "timeout")}
    agg["requests"] = sum(r.get("requests", 0) for r in ok)
    agg["exit"] = next((r["exit"] for r in rs if r.get("exit")), 0)
    agg["error"] = "; ".join(sorted({r["error"] for r in rs if r.get("error")})) or None
    if agg["error"] is None:
        del agg["error"]
    procs = []
    for i, p in enumerate(rep.get("proxies") or []):
        same = [r["proxies"][i] for r in ok if len(r.get("proxies") or []) > i]
        procs.append(dict(p, cpu_pct=statistics.median(q["cpu_pct"] for q in same),
                          hwm_kib=max(q["hwm_kib"] for q in same)))
    agg["proxies"] = procs
    return agg


def cmd_report(args):
    recs = []
    with open(args.results) as f:
        for line in f:
            if line.strip():
                recs.append(json.loads(line))
    meta = {}
    if args.meta and os.path.exists(args.meta):
        with open(args.meta) as f:
            meta = json.load(f)
    grouped = {}
    for r in recs:
        grouped.setdefault((r["row"], r["tool"]), []).append(r)
    by = {k: aggregate(v) for k, v in grouped.items()}
    rounds = max((r.get("round", 1) for r in recs), default=1)
    pending = set(filter(None, meta.get("pending_rows", "").split(",")))
    requested = [r for r in ORDER if r in set(meta.get("rows", ",".join(ORDER)).split(","))]
    out = []
    w = out.append
    w(f"# tether benchmark results\n")
    w(f"- date: {meta.get('date', '?')}")
    w(f"- machine: {meta.get('nproc', '?')} cores (`nproc`), {meta.get('cpu', '?')}, kernel {meta.get('kernel', '?')}")
    w(f"- tools: {meta.get('versions', '?')}")
    w(f"- tether: {meta.get('tether', '?')}")
    w(f"- load: {meta.get('load', '?')}")
    w(f"- balancing: {meta.get('balancing', '?')}")
    bgs = meta.get("background") or []
    if bgs:
        w("- background CPU (other processes, 1 s sample; 200% = both cores): " + "; ".join(
            f"{b['when']}: {b['busy_pct']:.0f}%" + (f" ({', '.join(b['top'])})" if b.get("top") else "") for b in bgs))
    w("")
    for tool, title in (("wrk", "HTTP/1.1 (wrk)"), ("h2load", "HTTP/2 prior knowledge, h2c (h2load)")):
        rows = [r for r in requested if (r, tool) in by or r in pending]
        if not rows:
            continue
        w(f"## {title}\n")
        w("| row | setup | req/s | p50 | p99 | errors | proxy CPU | proxy CPU µs/req | proxy peak RSS MiB (VmHWM) | TCP conns to backends / between hops | req/s vs HAProxy |")
        w("|---|---|--:|--:|--:|---|--:|--:|--:|--:|--:|")
        for r in rows:
            name, path, ref = ROWS[r]
            rec = by.get((r, tool))
            if rec is None:
                if r in pending:
                    w(f"| {r} | **{name}**: {path} | pending | pending | pending | – | – | – | – | – | – |")
                continue
            ratio = "–"
            if ref and (ref, tool) in by and by[(ref, tool)].get("rps"):
                ratio = f"{rec.get('rps', 0) / by[(ref, tool)]['rps']:.2f}×"
            rps_cell = f"{rec.get('rps', 0):,.0f}"
            if rec.get("n", 1) > 1 and "rps_min" in rec:
                rps_cell += f" ({rec['rps_min'] / 1000:,.1f}k–{rec['rps_max'] / 1000:,.1f}k)"
            w(f"| {r} | **{name}**: {path} | {rps_cell} | {fmt_ms(rec.get('p50_ms'))} | "
              f"{fmt_ms(rec.get('p99_ms'))} | {errors_cell(rec)} | {cpu_cell(rec)} | {us_cell(rec)} | {rss_cell(rec)} | "
              f"{conns_cell(rec)} | {ratio} |")
        w("")
    if rounds > 1:
        w(f"Each (row, load) pair was measured {rounds} times in interleaved rounds (round 1 runs every row, "
          "then round 2, ...), each time with freshly started proxies. req/s: median (min–max); p50, p99, "
          "CPU: median over the rounds; RSS: the largest peak; errors: summed over the rounds.\n")
    w("Ratios: one-hop rows (b, c, d) against b (HAProxy one hop); two-hop rows (e, f, g) against e "
      "(HAProxy two hops, HTTP/1.1 between the hops); the two-hop target is judged against the faster of "
      "e and g. Two-hop rows with TLS between the hops (h, i, j) against h (HAProxy, TLS 1.3, HTTP/1.1 "
      "between the hops); their target is judged against the faster of h and i. "
      "Proxy CPU = CPU time of the proxy process(es) / wall time of the measured "
      "run (100% = one core); µs/req = the CPU time of all of the row's proxies together / requests "
      "completed. TCP conns: established connections to the backends (and between the two "
      "proxy hops) in an `ss` snapshot half-way through the measured run; for scale, wrk keeps 50 "
      "requests in flight and h2load 100 (10 connections × 10 streams). Multi-process rows list client-side proxy first, then the three "
      "server-side proxies. nginx RSS = master + worker.")
    w("")
    # host saturation
    keys = [(r, t) for t in ("wrk", "h2load") for r in requested if (r, t) in by]
    if keys:
        w("Host CPU busy during the measured runs (median over rounds; 200% = both cores): "
          + ", ".join(f"{r}/{t} {by[(r, t)].get('host_cpu_busy_pct') or 0:.0f}%" for r, t in keys) + ".\n")
        w("CPU taken by processes outside the benchmark (host busy − load generator − backends − proxies; "
          "worst round): " + ", ".join(f"{r}/{t} {by[(r, t)].get('other_cpu_max', 0):.0f}%" for r, t in keys) + ".")
        noisy = [f"{r}/{t}" for r, t in keys if by[(r, t)].get("other_cpu_max", 0) > 15]
        if noisy:
            w(f"**Warning:** more than 15% of a core went to other processes during {', '.join(noisy)}; "
              "those numbers are disturbed.")
        w("")
    # tether memory
    idle = meta.get("idle_rss")
    rate = by.get(("d", "h1rate"))
    if idle or rate or pending & {"d", "f", "j"}:
        w("## tether memory\n")
        if idle:
            for label, v in idle.items():
                w(f"- idle sidecar ({label}), 1 s after start: VmRSS **{fmt_mib2(v['rss_kib'])} MiB** "
                  f"(VmHWM {fmt_mib2(v['hwm_kib'])} MiB)")
        if rate:
            p = rate["proxies"][0]
            w(f"- one hop at a fixed ~{rate.get('rps', 0):,.0f} req/s (h2load --h1 rate-limited, "
              f"{rate.get('elapsed_s', 0):.0f} s): peak RSS **{fmt_mib2(p['hwm_kib'])} MiB**, CPU {p['cpu_pct']:.0f}%, "
              f"p50 {fmt_ms(rate.get('p50_ms'))}, p99 {fmt_ms(rate.get('p99_ms'))}, errors {errors_cell(rate)}")
        tether_hwm = []
        for (r, t), rec in by.items():
            if r in ("d", "f", "j") and t in ("wrk", "h2load"):
                for p in rec.get("proxies", []):
                    tether_hwm.append((p["hwm_kib"], f"{r}/{t} {p['label']}"))
        if tether_hwm:
            mx = max(tether_hwm)
            w(f"- largest peak RSS of one tether process under full benchmark load: **{fmt_mib2(mx[0])} MiB** ({mx[1]})")
        if not idle and pending & {"d", "f"}:
            w("- pending (tether binary not built)")
        w("")
    # targets
    w("## targets\n")
    w("| target | measured | met? |")
    w("|---|---|---|")

    def verdict(ok, x=None, ref=None):
        v = "pending" if ok is None else ("**yes**" if ok else "**no**")
        if x and ref and x.get("n", 1) > 1 and "rps_min" in x and "rps_min" in ref \
                and x["rps_min"] <= ref["rps_max"] and ref["rps_min"] <= x["rps_max"]:
            v += " (req/s ranges overlap: within run-to-run noise)"
        return v

    for tool in ("wrk", "h2load"):
        b, d = by.get(("b", tool)), by.get(("d", tool))
        if b and d and "error" not in d:
            ok = d.get("rps", 0) >= b.get("rps", 0) and d.get("p99_ms", 1e9) <= b.get("p99_ms", 0)
            w(f"| one hop ≥ 1.0× HAProxy req/s, p99 no worse ({tool}) | {d.get('rps', 0) / max(b.get('rps', 0), 1e-9):.2f}×, "
              f"p99 {fmt_ms(d.get('p99_ms'))} vs {fmt_ms(b.get('p99_ms'))} | {verdict(ok, d, b)} |")
        elif d:
            w(f"| one hop ≥ 1.0× HAProxy req/s, p99 no worse ({tool}) | "
              f"{'no HAProxy one-hop row (run row b)' if not b else errors_cell(d)} | "
              f"{'n/a' if not b else '**no**'} |")
        elif "d" in pending:
            w(f"| one hop ≥ 1.0× HAProxy req/s, p99 no worse ({tool}) | pending | pending |")
        f_ = by.get(("f", tool))
        # the reference is the faster HAProxy two-hop variant: e (HTTP/1.1 between) or g (h2c between)
        refs = [(by[(r, tool)], r) for r in ("e", "g") if (r, tool) in by]
        if refs and f_:
            best, best_row = max(refs, key=lambda x: x[0].get("rps", 0))
            vs = ", ".join(f"{f_.get('rps', 0) / max(ref.get('rps', 0), 1e-9):.2f}× {r}" for ref, r in refs)
            w(f"| two hops ≥ 1.0× HAProxy two hops req/s ({tool}) | {vs} "
              f"(p99 {fmt_ms(f_.get('p99_ms'))} vs {fmt_ms(best.get('p99_ms'))} in {best_row}) | "
              f"{verdict(f_.get('rps', 0) >= best.get('rps', 0), f_, best)} |")
        elif f_:
            w(f"| two hops ≥ 1.0× HAProxy two hops req/s ({tool}) | "
              f"{'no HAProxy two-hop row (run row e or g)' if not refs else errors_cell(f_)} | "
              f"{'n/a' if not refs else '**no**'} |")
        elif "f" in pending:
            w(f"| two hops ≥ 1.0× HAProxy two hops req/s ({tool}) | pending | pending |")
        j = by.get(("j", tool))
        refs = [(by[(r, tool)], r) for r in ("h", "i") if (r, tool) in by]
        if refs and j:
            best, best_row = max(refs, key=lambda x: x[0].get("rps", 0))
            vs = ", ".join(f"{j.get('rps', 0) / max(ref.get('rps', 0), 1e-9):.2f}× {r}" for ref, r in refs)
            w(f"| two hops with mutual TLS ≥ 1.0× HAProxy two hops with TLS 1.3 req/s ({tool}) | {vs} "
              f"(p99 {fmt_ms(j.get('p99_ms'))} vs {fmt_ms(best.get('p99_ms'))} in {best_row}; "
              f"CPU {us_cell(j)} vs {us_cell(best)} µs/req) | "
              f"{verdict(j.get('rps', 0) >= best.get('rps', 0), j, best)} |")
        elif j:
            w(f"| two hops with mutual TLS ≥ 1.0× HAProxy two hops with TLS 1.3 req/s ({tool}) | "
              f"{'no HAProxy TLS row (run row h or i)' if not refs else errors_cell(j)} | "
              f"{'n/a' if not refs else '**no**'} |")
        elif "j" in pending:
            w(f"| two hops with mutual TLS ≥ 1.0× HAProxy two hops with TLS 1.3 req/s ({tool}) | pending | pending |")
    if idle:
        worst = max(v["rss_kib"] for v in idle.values())
        w(f"| idle sidecar RSS ≤ 8 MiB | {fmt_mib2(worst)} MiB | {verdict(worst <= 8 * 1024)} |")
    elif pending & {"d", "f"}:
        w("| idle sidecar RSS ≤ 8 MiB | pending | pending |")
    if rate:
        v = rate["proxies"][0]["hwm_kib"]
        w(f"| RSS ≤ 16 MiB at 1,000 req/s | {fmt_mib2(v)} MiB | {verdict(v <= 16 * 1024)} |")
    if tether_hwm if (idle or rate) else False:
        mx = max(tether_hwm)
        w(f"| RSS ≤ 16 MiB under the full benchmark load (per tether process) | {fmt_mib2(mx[0])} MiB | "
          f"{verdict(mx[0] <= 16 * 1024)} |")
    elif pending & {"d", "f"}:
        w("| RSS ≤ 16 MiB under load | pending | pending |")
    w("")
    text = "\n".join(out)
    if args.output:  # file first: stdout may be a closed pipe
        with open(args.output, "w") as f:
            f.write(text)
    print(text)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--row", required=True)
    m.add_argument("--tool", required=True, choices=["wrk", "h2load", "h1rate"])
    m.add_argument("--url", required=True)
    m.add_argument("--duration", type=int, default=10)
    m.add_argument("--warmup", type=int, default=2)
    m.add_argument("--groups", default="")
    m.add_argument("--known-groups", default="", help="other bench processes (backends), label=pgid,...")
    m.add_argument("--netns", default="", help="network namespaces to count backend connections in too, ns,...")
    m.add_argument("--round", type=int, default=1)
    m.add_argument("--rawdir", required=True)
    m.add_argument("--out", required=True)
    m.add_argument("--wrk-threads", type=int, default=1)
    m.add_argument("--wrk-conns", type=int, default=50)
    m.add_argument("--h2-clients", type=int, default=10)
    m.add_argument("--h2-streams", type=int, default=10)
    m.add_argument("--rate-clients", type=int, default=10)
    m.add_argument("--rate-per-client", type=int, default=100)
    m.set_defaults(func=cmd_measure)
    bg = sub.add_parser("background")
    bg.add_argument("--seconds", type=float, default=1.0)
    bg.set_defaults(func=cmd_background)
    r = sub.add_parser("rss")
    r.add_argument("--groups", required=True)
    r.set_defaults(func=cmd_rss)
    rp = sub.add_parser("report")
    rp.add_argument("--results", required=True)
    rp.add_argument("--meta")
    rp.add_argument("--output")
    rp.set_defaults(func=cmd_report)
    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
