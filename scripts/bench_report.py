#!/usr/bin/env python3
"""Turns the raw JSON reports of scripts/bench-report.sh into docs/benchmarks.md.

Usage: bench_report.py RAW_DIR LOADGEN RUNS DURATION WARMUP

Every number in the document comes from a report file in RAW_DIR; the medians are over the
runs that finished. Charts are drawn by `loadgen chart` from the median run of each stack.
"""
import json
import os
import statistics
import subprocess
import sys
from datetime import datetime, timezone

RAW, LOADGEN, RUNS, DURATION, WARMUP = sys.argv[1:6]
DOC = "docs/benchmarks.md"
CHARTS = "docs/bench"
STACKS = ["ringwire", "std", "tokio", "tokio-uring"]
# loadgen --publisher variants run in tp64 and tp1k beside the default (thread), "ringwire".
PUBLISHER_ROWS = {
    "ringwire-batch": "ringwire, `--publisher batch`",
    "ringwire-shard": "ringwire, `--publisher shard`",
}
WORKLOADS = {
    "tp64": "throughput, 64 B, one way (ringwire, tokio, tokio-uring: every message acked; std: no acks)",
    "tp1k": "throughput, 1 KiB, one way (acked likewise)",
    "lat64": "latency, 64 B request/echo, 10,000 msgs/s open loop",
    "lat64busy": "latency, 64 B request/echo, 10,000 msgs/s open loop, busy-polling",
    "fanin": "fanin, 1000 connections, 64 B closed-loop echo",
    "pp64": "ping-pong, 64 B, one message in flight",
    "pp64busy": "ping-pong, 64 B, one message in flight, both sides busy-polling",
}


def load():
    results = {}
    for name in sorted(os.listdir(RAW)):
        if not name.endswith(".json"):
            continue
        workload, stack, _run, _ = name.split(".")
        with open(os.path.join(RAW, name)) as f:
            results.setdefault((workload, stack), []).append(json.load(f))
    return results


def median(reports, key):
    values = [key(r) for r in reports if key(r) is not None]
    return statistics.median(values) if values else None


def lat(field):
    return lambda r: (r.get("latency_us") or {}).get(field)


def median_run(reports):
    ordered = sorted(reports, key=lambda r: r["msgs_per_s"])
    return ordered[len(ordered) // 2]


def fmt(v, unit=""):
    if v is None:
        return "—"
    if v >= 1e6:
        return f"{v / 1e6:.2f}M{unit}"
    if v >= 1e4:
        return f"{v / 1e3:.0f}k{unit}"
    if v >= 100:
        return f"{v:.0f}{unit}"
    return f"{v:.1f}{unit}"


def busy(reports):
    """How busy the serving side's core (0) and the load side's (1) were in the measured window,
    medians over the runs, from `cpu_window_s` (threads by the core they are pinned to)."""
    def share(core):
        shares = [r["cpu_window_s"][core] / r["duration_s"] for r in reports
                  if core in r.get("cpu_window_s", {}) and r.get("duration_s")]
        return f"{statistics.median(shares):.0%}" if shares else "?"
    if not any(r.get("cpu_window_s") for r in reports):
        return "—"
    return f"{share('0')} / {share('1')}"


def ratio(a, b):
    return None if a is None or b is None or b == 0 else a / b


def rows_of(workload):
    """The stacks with a row in a workload's table, in order: tp64 and tp1k add the publishers."""
    if workload in ("tp64", "tp1k"):
        return ["ringwire", *PUBLISHER_ROWS, *STACKS[1:]]
    return STACKS


def row_label(workload, stack):
    if stack in PUBLISHER_ROWS:
        return PUBLISHER_ROWS[stack]
    if workload in ("tp64", "tp1k") and stack == "ringwire":
        return "ringwire, `--publisher thread`"
    return stack


def tls_section(results, m, w):
    """TLS: ringwire over TLS beside the tokio-rustls baseline and ringwire's plaintext rows."""
    if not any(k[0] in ("tls64", "tls1k") for k in results):
        return
    w("## TLS")
    w("")
    w("Every connection inside TLS 1.3 with mutual TLS: ringwire with `loadgen run --tls` "
      "(certificates made for the run, node ids checked), the tokio baseline with "
      "tokio-rustls (`baseline --stack tokio-rustls`, set up the same way: ring provider, "
      "AES-128-GCM preferred, client certificates, no tickets). The plaintext rows are the "
      "same run's `--publisher thread` throughput rows above.")
    w("")
    w("| workload | stack | msgs/s | MB/s | p50 µs (publish→ack) | CPU s | busy: serving / load core | ÷ plaintext ringwire |")
    w("|---|---|---|---|---|---|---|---|")
    for workload, plain, label in (("tls64", "tp64", "64 B"), ("tls1k", "tp1k", "1 KiB")):
        base = m(plain, "ringwire", lambda r: r["msgs_per_s"])
        for stack in ("ringwire", "tokio-rustls"):
            reports = results.get((workload, stack))
            if not reports:
                w(f"| {label} | {stack} | no run finished | | | | | |")
                continue
            rates = [r["msgs_per_s"] for r in reports]
            rate = statistics.median(rates)
            x = ratio(rate, base)
            w(f"| {label} | {stack} | {fmt(rate)} [{fmt(min(rates))}–{fmt(max(rates))}] "
              f"| {fmt(m(workload, stack, lambda r: r['mb_per_s']))} "
              f"| {fmt(m(workload, stack, lat('p50')))} "
              f"| {fmt(m(workload, stack, lambda r: r['cpu_s']))} "
              f"| {busy(reports)} | {f'{x:.2f}×' if x else ''} |")
    w("")
    if any(k[0] == "handshakes" for k in results):
        w("Mutual-TLS handshakes per second into one core (bench's `handshakes`): the serving "
          "side on core 0, a ringwire node with one shard or a tokio-rustls accept loop; the "
          "same load side on core 1 for both, 16 threads each opening one connection after "
          "another with rustls's blocking client (handshake, a HELLO each way, close).")
        w("")
        w("| stack | handshakes/s | busy: serving / load core | ÷ tokio-rustls |")
        w("|---|---|---|---|")
        base = m("handshakes", "tokio-rustls", lambda r: r["handshakes_per_s"])
        for stack in ("ringwire", "tokio-rustls"):
            reports = results.get(("handshakes", stack))
            if not reports:
                w(f"| {stack} | no run finished | | |")
                continue
            rates = [r["handshakes_per_s"] for r in reports]
            rate = statistics.median(rates)
            serving = statistics.median(r["busy_serving_core"] for r in reports)
            load = statistics.median(r["busy_load_core"] for r in reports)
            x = ratio(rate, base)
            w(f"| {stack} | {fmt(rate)} [{fmt(min(rates))}–{fmt(max(rates))}] "
              f"| {serving:.0%} / {load:.0%} | {f'{x:.2f}×' if x else ''} |")
        w("")


def wire_section(results, m, w):
    """End-to-end CRC32C on and off, and LZ4 on compressible text."""
    if not any(k[0] in ("crc64", "crc1k", "lz4") for k in results):
        return
    w("## CRC and LZ4")
    w("")
    w("ringwire only, `--publisher thread`, interleaved with the rest of the run. CRC: the "
      "same throughput workload with end-to-end CRC32C on (`--crc on`, the plaintext default) "
      "and off. LZ4: 1 KiB payloads of JSON log records (`--content text`), with and without "
      "`--lz4`; wire ÷ payload is the client's `bytes_sent` (frames, checksums and all) over "
      "the payload bytes sent.")
    w("")
    w("| workload | variant | msgs/s | MB/s payload | wire ÷ payload | p50 µs (publish→ack) | CPU s | busy: serving / load core | ÷ first row |")
    w("|---|---|---|---|---|---|---|---|---|")
    for workload, label, variants in (("crc64", "64 B", ("off", "on")),
                                      ("crc1k", "1 KiB", ("off", "on")),
                                      ("lz4", "1 KiB text", ("plain", "lz4"))):
        base = m(workload, variants[0], lambda r: r["msgs_per_s"])
        for variant in variants:
            reports = results.get((workload, variant))
            if not reports:
                w(f"| {label} | {variant} | no run finished | | | | | | |")
                continue
            rates = [r["msgs_per_s"] for r in reports]
            rate = statistics.median(rates)
            wire = statistics.median(
                r["engine"]["client.bytes_sent"] / max(1, r["sent"] * r["size"]) for r in reports)
            x = ratio(rate, base)
            w(f"| {label} | {variant} | {fmt(rate)} [{fmt(min(rates))}–{fmt(max(rates))}] "
              f"| {fmt(m(workload, variant, lambda r: r['mb_per_s']))} | {wire:.3f} "
              f"| {fmt(m(workload, variant, lat('p50')))} "
              f"| {fmt(m(workload, variant, lambda r: r['cpu_s']))} "
              f"| {busy(reports)} | {f'{x:.2f}×' if x else ''} |")
    w("")


def durable_section(results, m, w):
    """The durable outbox: throughput by sync policy, and recovery time."""
    if not any(k[0] in ("dur64", "recovery") for k in results):
        return
    w("## Durable outbox")
    w("")
    w("ringwire only; the same 64 B throughput workload without an outbox (`memory`), and with "
      "one under each sync policy (`loadgen run --outbox DIR --sync none|always`). Under "
      "`always` an ACK implies the record is on the sender's disk, so msgs/s counts "
      "confirmed-durable messages. See docs/durability.md for what each policy promises.")
    w("")
    w("| variant | msgs/s | p50 µs (publish→ack) | p99 µs | CPU s | ÷ memory |")
    w("|---|---|---|---|---|---|")
    base = m("dur64", "memory", lambda r: r["msgs_per_s"])
    for variant in ("memory", "outbox-none", "outbox-always"):
        reports = results.get(("dur64", variant))
        if not reports:
            w(f"| {variant} | no run finished | | | | |")
            continue
        rates = [r["msgs_per_s"] for r in reports]
        rate = statistics.median(rates)
        x = ratio(rate, base)
        w(f"| {variant} | {fmt(rate)} [{fmt(min(rates))}–{fmt(max(rates))}] "
          f"| {fmt(m('dur64', variant, lat('p50')))} | {fmt(m('dur64', variant, lat('p99')))} "
          f"| {fmt(m('dur64', variant, lambda r: r['cpu_s']))} "
          f"| {f'{x:.0%}' if x else ''} |")
    w("")
    if any(k[0] == "recovery" for k in results):
        w("Recovery: `bench`'s `recovery` fills an outbox through the public API (a peer that "
          "never connects), drops the engine, and times `Engine::start` on the directory: every "
          "segment mapped, every record's CRC checked, the unacknowledged set rebuilt (as "
          "per-peer runs of records; the shard reads a run's records as it sends them, which is "
          "not timed). Warm page cache (as after a process crash).")
        w("")
        w("| records | messages | segments | scan s | `Engine::start` s |")
        w("|---|---|---|---|---|")
        for variant, label in (("1k", "1 GiB of 1 KiB"), ("64", "1 GiB of 64 B")):
            reports = results.get(("recovery", variant))
            if not reports:
                continue
            starts = [r["start_s"] for r in reports]
            w(f"| {label} | {reports[0]['messages']:,} | {reports[0]['segments']} "
              f"| {statistics.median(r['scan_s'] for r in reports):.2f} "
              f"| {statistics.median(starts):.2f} [{min(starts):.2f}–{max(starts):.2f}] |")
        w("")


def main():
    results = load()
    machine = next((r[0]["machine"] for r in results.values() if "machine" in r[0]), {})
    commands = {}
    with open(os.path.join(RAW, "commands.txt")) as f:
        for line in f:
            name, stack, cmd = line.rstrip("\n").split("|", 2)
            commands[(name, stack)] = cmd

    def m(workload, stack, key):
        reports = results.get((workload, stack))
        return median(reports, key) if reports else None

    out = []
    w = out.append
    w("# Benchmarks")
    w("")
    # The run's start, from the raw directory's name (bench-report.sh names it so); the time
    # of generation only if the name is not a timestamp (a doc regenerated later keeps the
    # run's date).
    try:
        taken = datetime.strptime(os.path.basename(os.path.normpath(RAW)), "%Y%m%dT%H%M%SZ")
    except ValueError:
        taken = datetime.now(timezone.utc)
    w("Generated by `scripts/bench-report.sh` from a run started "
      f"{taken.strftime('%Y-%m-%d %H:%M UTC')}; do not edit by hand "
      "(the analysis at the end comes from `docs/bench/analysis.md`).")
    w("")
    w(f"- Machine: {machine.get('cpu', '?')}, {machine.get('cores', '?')} cores, "
      f"Linux {machine.get('kernel', '?')}, loopback only.")
    w(f"- Each figure is the **median of {RUNS} runs** of {DURATION} measured after a {WARMUP} "
      "warm-up; runs of all stacks are interleaved. Range (min–max) in brackets.")
    w("- Same pinning for every stack: the serving side on core 0, the load side (client "
      "threads, pacer) on core 1. Same framing for the baselines (4-byte length prefix).")
    w("- Stacks: **ringwire** (`loadgen`), **std** (blocking std sockets: the raw-TCP limit, "
      "no acks in throughput), **tokio** (current-thread runtimes, tokio-util "
      "`LengthDelimitedCodec`, cumulative acks), **tokio-uring** (same protocol), "
      "**tokio-rustls** (the tokio stack inside TLS 1.3, for the TLS rows). "
      "See `bench/src/` for exactly what each baseline does, and docs/loadgen.md for the "
      "workloads.")
    w("- Reproduce: `scripts/bench-report.sh` (about "
      f"{(len(WORKLOADS) * len(STACKS) + 2 * len(PUBLISHER_ROWS) + 11) * int(RUNS)} runs), or any "
      "single command listed below.")
    w("")

    # The bars.
    w("## The bars")
    w("")
    w("| workload | bar | measured | met? |")
    w("|---|---|---|---|")

    def bar(workload, text, value_text, ok):
        verdict = "—" if ok is None else ("**yes**" if ok else "**no**")
        w(f"| {workload} | {text} | {value_text} | {verdict} |")

    r_tp = m("tp64", "ringwire", lambda r: r["msgs_per_s"])
    t_tp = m("tp64", "tokio", lambda r: r["msgs_per_s"])
    s_tp = m("tp64", "std", lambda r: r["msgs_per_s"])
    x = ratio(r_tp, t_tp)
    bar("throughput 64 B", "≥ 2× tokio msgs/s",
        f"{fmt(r_tp)} vs {fmt(t_tp)} = {x:.2f}×" if x else "—", None if x is None else x >= 2)
    x = ratio(r_tp, s_tp)
    bar("throughput 64 B", "≥ 50% of raw TCP msgs/s",
        f"{fmt(r_tp)} vs {fmt(s_tp)} = {x:.0%}" if x else "—", None if x is None else x >= 0.5)
    # Publishing paths (issue 9): each against the tokio-uring baseline, the shard also against
    # tokio with its codec.
    for stack, label, floors in (
            ("ringwire-shard", "produced on the shard",
             (("tokio-uring", 1.0, "≥ 1.0× `baseline --stack tokio-uring` msgs/s"),
              ("tokio", 2.0, "≥ 2× tokio+codec msgs/s"))),
            ("ringwire-batch", "publish_batch of 64 from another thread",
             (("tokio-uring", 0.6, "≥ 0.6× tokio-uring baseline msgs/s"),)),
            ("ringwire", "plain publish from another thread",
             (("tokio-uring", 0.4, "≥ 0.4× tokio-uring baseline msgs/s"),))):
        a = m("tp64", stack, lambda r: r["msgs_per_s"])
        for base, floor, text in floors:
            b = m("tp64", base, lambda r: r["msgs_per_s"])
            x = ratio(a, b)
            bar(f"64 B acked, {label}", text, f"{fmt(a)} vs {fmt(b)} = {x:.2f}×" if x else "—",
                None if x is None else x >= floor)
    r_1k = m("tp1k", "ringwire", lambda r: r["mb_per_s"])
    s_1k = m("tp1k", "std", lambda r: r["mb_per_s"])
    x = ratio(r_1k, s_1k)
    bar("throughput 1 KiB", "≥ 0.9× raw TCP (std) bytes/s",
        f"{fmt(r_1k)} vs {fmt(s_1k)} MB/s = {x:.2f}×" if x else "—",
        None if x is None else x >= 0.9)
    for q, name in (("p50", "p50"), ("p99", "p99")):
        a = m("lat64", "ringwire", lat(q))
        b = m("lat64", "std", lat(q))
        x = ratio(a, b)
        bar("latency 64 B", f"{name} ≤ 1.2× raw TCP ping-pong",
            f"{fmt(a)} vs {fmt(b)} µs = {x:.2f}×" if x else "—",
            None if x is None else x <= 1.2)
    a = m("lat64busy", "ringwire", lat("p50"))
    b = m("lat64busy", "std", lat("p50"))
    x = ratio(a, b)
    bar("latency 64 B, busy-poll", "p50 ≤ 1.3× busy-polled raw TCP",
        f"{fmt(a)} vs {fmt(b)} µs = {x:.2f}×" if x else "—", None if x is None else x <= 1.3)
    for workload, label, limits in (
            ("pp64busy", "ping-pong 64 B, both sides spinning", (("p50", 1.3), ("p99", 1.5))),
            ("pp64", "ping-pong 64 B, sleeping", (("p50", 1.1), ("p99", 1.1)))):
        for q, limit in limits:
            a = m(workload, "ringwire", lat(q))
            b = m(workload, "std", lat(q))
            x = ratio(a, b)
            bar(label, f"{q} ≤ {limit}× std ping-pong",
                f"{fmt(a)} vs {fmt(b)} µs = {x:.2f}×" if x else "—",
                None if x is None else x <= limit)
    a = m("fanin", "ringwire", lambda r: r["msgs_per_s"])
    b = m("fanin", "tokio", lambda r: r["msgs_per_s"])
    x = ratio(a, b)
    bar("fanin 1000 conns", "≥ 1.5× tokio round trips/s",
        f"{fmt(a)} vs {fmt(b)} = {x:.2f}×" if x else "—", None if x is None else x >= 1.5)
    mem = m("dur64", "memory", lambda r: r["msgs_per_s"])
    none = m("dur64", "outbox-none", lambda r: r["msgs_per_s"])
    always = m("dur64", "outbox-always", lambda r: r["msgs_per_s"])
    x = ratio(none, mem)
    bar("outbox, sync none, 64 B", "≥ 90% of the same run without an outbox",
        f"{fmt(none)} vs {fmt(mem)} = {x:.0%}" if x else "—", None if x is None else x >= 0.9)
    bar("outbox, sync always, 64 B", "≥ 1,000,000 confirmed-durable msgs/s",
        fmt(always), None if always is None else always >= 1e6)
    for workload, plain, label, floor_plain, floor_tokio in (
            ("tls64", "tp64", "64 B", 0.6, 2.0), ("tls1k", "tp1k", "1 KiB", 0.5, 1.5)):
        a = m(workload, "ringwire", lambda r: r["msgs_per_s"])
        for base_workload, base_stack, floor, text in (
                (plain, "ringwire", floor_plain, f"≥ {floor_plain}× plaintext ringwire msgs/s"),
                (workload, "tokio-rustls", floor_tokio, f"≥ {floor_tokio}× the tokio-rustls baseline")):
            b = m(base_workload, base_stack, lambda r: r["msgs_per_s"])
            x = ratio(a, b)
            bar(f"TLS {label} acked", text, f"{fmt(a)} vs {fmt(b)} = {x:.2f}×" if x else "—",
                None if x is None else x >= floor)
    a = m("handshakes", "ringwire", lambda r: r["handshakes_per_s"])
    b = m("handshakes", "tokio-rustls", lambda r: r["handshakes_per_s"])
    x = ratio(a, b)
    bar("mTLS handshakes into one shard", "≥ 1.0× the tokio-rustls baseline",
        f"{fmt(a)} vs {fmt(b)} per s = {x:.2f}×" if x else "—", None if x is None else x >= 1.0)
    plain = m("lz4", "plain", lambda r: r["msgs_per_s"])
    packed = m("lz4", "lz4", lambda r: r["msgs_per_s"])

    def wire_ratio(variant):
        reports = results.get(("lz4", variant))
        if not reports:
            return None
        return statistics.median(
            r["engine"]["client.bytes_sent"] / max(1, r["sent"] * r["size"]) for r in reports)
    wp, wl = wire_ratio("plain"), wire_ratio("lz4")
    x = ratio(wp, wl)
    bar("LZ4, 1 KiB of compressible text", "≥ 2× fewer bytes on the wire",
        f"{wp:.3f} vs {wl:.3f} wire bytes per payload byte = {x:.2f}×" if x else "—",
        None if x is None else x >= 2.0)
    x = ratio(packed, plain)
    bar("LZ4, 1 KiB of compressible text", "≥ 0.8× the uncompressed msgs/s",
        f"{fmt(packed)} vs {fmt(plain)} = {x:.2f}×" if x else "—", None if x is None else x >= 0.8)
    for workload, label in (("crc64", "64 B"), ("crc1k", "1 KiB")):
        on = m(workload, "on", lambda r: r["msgs_per_s"])
        off = m(workload, "off", lambda r: r["msgs_per_s"])
        x = ratio(on, off)
        bar(f"CRC on, {label}", "≥ 0.9× CRC off",
            f"{fmt(on)} vs {fmt(off)} = {x:.2f}×" if x else "—", None if x is None else x >= 0.9)
    for variant, label, limit in (("1k", "1 KiB", 1.0), ("64", "64 B", 0.5)):
        t = m("recovery", variant, lambda r: r["start_s"])
        bar(f"outbox recovery, 1 GiB of {label} messages", f"< {limit:g} s",
            f"{t:.2f} s" if t is not None else "—", None if t is None else t < limit)
    w("")

    # Per-workload tables.
    for workload, title in WORKLOADS.items():
        if not any((workload, s) in results for s in rows_of(workload)):
            continue
        w(f"## {title}")
        w("")
        w("| stack | msgs/s | MB/s | p50 µs | p99 µs | p99.9 µs | CPU s | busy: serving / load core | ringwire ÷ stack |")
        w("|---|---|---|---|---|---|---|---|---|")
        base = m(workload, "ringwire", lambda r: r["msgs_per_s"])
        for stack in rows_of(workload):
            label = row_label(workload, stack)
            reports = results.get((workload, stack))
            if not reports:
                why = "not supported" if os.path.exists(
                    os.path.join(RAW, f"{workload}.{stack}.unsupported")) else "no run finished"
                w(f"| {label} | {why} | | | | | | | |")
                continue
            rates = [r["msgs_per_s"] for r in reports]
            rate = statistics.median(rates)
            kind = reports[0].get("latency_kind") or ""
            note = " (publish→ack)" if kind == "publish_to_ack" else ""
            if stack.startswith("ringwire"):
                rel = ""
            elif workload.startswith(("lat", "pp")):
                # Latency workloads all carry the offered rate, and a ping-pong's rate is its
                # mean round trip: compare median latencies instead.
                x = ratio(m(workload, "ringwire", lat("p50")), m(workload, stack, lat("p50")))
                rel = f"{x:.2f}× p50 (lower is better)" if x else ""
            else:
                x = ratio(base, rate)
                rel = f"{x:.2f}×" if x else ""
            w(f"| {label} | {fmt(rate)} [{fmt(min(rates))}–{fmt(max(rates))}] "
              f"| {fmt(m(workload, stack, lambda r: r['mb_per_s']))} "
              f"| {fmt(m(workload, stack, lat('p50')))}{note} "
              f"| {fmt(m(workload, stack, lat('p99')))} "
              f"| {fmt(m(workload, stack, lat('p999')))} "
              f"| {fmt(m(workload, stack, lambda r: r['cpu_s']))} "
              f"| {busy(reports)} | {rel} |")
        w("")
        # Charts from the median run of each stack.
        medians = [(s, median_run(results[(workload, s)])) for s in rows_of(workload)
                   if (workload, s) in results]
        paths = []
        for stack, report in medians:
            path = os.path.join(RAW, f"median.{workload}.{stack}.json")
            with open(path, "w") as f:
                json.dump(report, f)
            paths.append(path)
        kinds = ["latency"] if workload.startswith(("lat", "fanin", "pp")) else ["throughput"]
        if workload.startswith("tp"):
            kinds.append("latency")
        for kind in kinds:
            usable = [p for p, (_, r) in zip(paths, medians)
                      if kind == "throughput" or r.get("latency_distribution")]
            if not usable:
                continue
            svg = os.path.join(CHARTS, f"{workload}-{kind}.svg")
            subprocess.run([LOADGEN, "chart", "--kind", kind, "--out", svg, *usable], check=True)
            what = "latency by percentile" if kind == "latency" else "throughput over time"
            w(f"![{title}: {what}](bench/{workload}-{kind}.svg)")
            w("")

    tls_section(results, m, w)
    wire_section(results, m, w)
    durable_section(results, m, w)

    w("## Commands")
    w("")
    w("Each run was one of these, with `--json FILE` added:")
    w("")
    w("```sh")
    for (name, stack), cmd in commands.items():
        w(f"{cmd}")
    w("```")
    w("")
    analysis = os.path.join(CHARTS, "analysis.md")
    if os.path.exists(analysis):
        with open(analysis) as f:
            w(f.read().rstrip())
        w("")
    with open(DOC, "w") as f:
        f.write("\n".join(out))


main()
