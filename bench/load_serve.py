"""Sustained load at saturation: errors, p50/p99 per minute, worker memory over time.

Starts the serving image (``docker run IMAGE serve``, default), a host multi-model-server
(``--host-mms``) or uses one already listening (``--port``), all on 127.0.0.1 only. After
``--warmup-seconds`` at full load (not counted), it keeps ``--concurrency`` clients (default 4)
sending JPEGs (the sample photos, in turn) for ``--minutes`` (default 10), bounded also by
``--max-requests``. Each answer must be a 200 with the same top-k as the first answer for that
photo (the model is deterministic). Every ``--sample-seconds`` it reads each MMS worker's RSS from
/proc (host PIDs: ``docker top`` for the image) and its PID set.

Targets: 0 errors, the same worker PIDs throughout, and each worker's RSS at the end within 5%
of its RSS just after the warm-up (``--max-growth``).

    .venv/bin/python -m bench.load_serve --model-dir DIR                 # 10 min, serving image
    .venv/bin/python -m bench.load_serve --model-dir DIR --host-mms --minutes 2

Exit 0 when every target is met, 1 otherwise; the JSON summary goes to stdout (and --json-out).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from bench.fuzz_serve import (
    SAMPLE_PHOTOS,
    SERVE_IMAGE,
    DockerServe,
    HostMMS,
    Target,
    rss_mib,
)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


class Load:
    """``concurrency`` threads, each sending one request at a time until told to stop."""

    def __init__(self, target: Target, bodies: list[bytes], concurrency: int,
                 max_requests: int) -> None:
        self.target, self.bodies = target, bodies
        self.concurrency, self.max_requests = concurrency, max_requests
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.sent = 0
        self.records: list[tuple[float, float, bool, str]] = []  # (end, seconds, ok, error)
        self.first_answer: dict[int, Any] = {}
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True)
                        for i in range(concurrency)]

    def start(self) -> None:
        for thread in self.threads:
            thread.start()

    def join(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=180)

    def _client(self, index: int) -> None:
        n = index
        while not self.stop.is_set():
            with self.lock:
                if self.sent >= self.max_requests:
                    return
                self.sent += 1
            photo = n % len(self.bodies)
            n += self.concurrency
            reply = self.target.request(
                "POST", "/invocations", self.bodies[photo],
                [("Content-Type", "image/jpeg"), ("X-Amzn-SageMaker-Custom-Attributes",
                                                  "top_k=5")], timeout=120)
            ok, error = reply.status == 200, reply.error or f"HTTP {reply.status}"
            if ok:
                try:
                    answer = json.loads(reply.body)["predictions"][0]["top_k"]
                    labels = [entry["label"] for entry in answer]
                except (ValueError, KeyError, IndexError, TypeError):
                    ok, error = False, f"bad body {reply.body[:100]!r}"
                else:
                    with self.lock:
                        first = self.first_answer.setdefault(photo, labels)
                    if labels != first:
                        ok, error = False, f"photo {photo}: top-k {labels} != {first}"
            with self.lock:
                self.records.append((time.monotonic(), reply.seconds, ok, "" if ok else error))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--host-mms", action="store_true")
    parser.add_argument("--image", default=SERVE_IMAGE)
    parser.add_argument("--port", type=int, help="a server already listening on 127.0.0.1")
    parser.add_argument("--workers", type=int, help="MMS workers (default: the server's own)")
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--warmup-seconds", type=float, default=60)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-requests", type=int, default=200_000)
    parser.add_argument("--sample-seconds", type=float, default=10)
    parser.add_argument("--max-growth", type=float, default=5.0, help="percent")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args(argv)
    if not 1 <= args.concurrency <= 32:
        parser.error("--concurrency must be 1..32")

    def log(line: str) -> None:
        print(f"load: {line}", file=sys.stderr, flush=True)

    bodies = [p.read_bytes() for p in SAMPLE_PHOTOS[:8]]
    if args.port:
        target: Target = Target(args.port)
    elif args.host_mms:
        target = HostMMS(args.model_dir, {}, workers=args.workers)
    else:
        target = DockerServe(args.image, args.model_dir, {}, workers=args.workers)
    try:
        target.wait_ready(bodies[0])
        summary = run(target, bodies, args, log)
    finally:
        target.stop()
    text = json.dumps(summary, indent=2)
    print(text)
    if args.json_out:
        args.json_out.write_text(text + "\n")
    return 0 if summary["ok"] else 1


def run(target: Target, bodies: list[bytes], args: argparse.Namespace, log) -> dict[str, Any]:
    pids_start = sorted(target.worker_pids())
    log(f"{target.kind} on port {target.port}, workers {pids_start}; warm-up "
        f"{args.warmup_seconds:.0f} s, then {args.minutes} min at concurrency {args.concurrency}")
    load = Load(target, bodies, args.concurrency, args.max_requests)
    load.start()
    time.sleep(args.warmup_seconds)
    measure_start = time.monotonic()
    baseline = {pid: rss_mib(pid) for pid in target.worker_pids()}
    samples: list[dict[str, Any]] = []
    end = measure_start + args.minutes * 60
    pid_changes: list[str] = []
    while time.monotonic() < end and load.sent < args.max_requests:
        time.sleep(min(args.sample_seconds, max(0.0, end - time.monotonic())))
        pids = sorted(target.worker_pids())
        if pids != pids_start:
            pid_changes.append(f"{time.monotonic() - measure_start:.0f} s: {pids}")
        samples.append({"t": round(time.monotonic() - measure_start, 1),
                        "rss_mib": {str(pid): rss_mib(pid) for pid in pids}})
    load.join()
    measured = [r for r in load.records if r[0] >= measure_start]
    per_minute = []
    for minute in range(int(-(-args.minutes // 1))):
        lo, hi = measure_start + 60 * minute, measure_start + 60 * (minute + 1)
        rows = [r for r in measured if lo <= r[0] < hi]
        lat = [r[1] * 1000 for r in rows]
        per_minute.append({
            "minute": minute + 1, "requests": len(rows), "errors": sum(not r[2] for r in rows),
            "req_per_s": round(len(rows) / 60, 2),
            "p50_ms": round(percentile(lat, 50), 1), "p99_ms": round(percentile(lat, 99), 1),
        })
        log(f"minute {minute + 1}: {per_minute[-1]}")
    final = samples[-1]["rss_mib"] if samples else {}
    growth = {}
    for pid, before in baseline.items():
        after = final.get(str(pid))
        if before and after:
            growth[str(pid)] = {"after_warmup_mib": round(before, 1), "end_mib": round(after, 1),
                                "growth_pct": round(100 * (after - before) / before, 2)}
    errors = [r[3] for r in measured if not r[2]]
    all_lat = [r[1] * 1000 for r in measured]
    ok = (bool(measured) and not errors and not pid_changes and bool(growth)
          and all(g["growth_pct"] < args.max_growth for g in growth.values()))
    return {
        "ok": ok, "target": target.kind, "minutes": args.minutes,
        "concurrency": args.concurrency, "warmup_seconds": args.warmup_seconds,
        "requests": len(measured), "errors": len(errors), "first_errors": errors[:10],
        "req_per_s": round(len(measured) / (args.minutes * 60), 2),
        "p50_ms": round(percentile(all_lat, 50), 1), "p99_ms": round(percentile(all_lat, 99), 1),
        "p50_ms_spread": round(statistics.pstdev([m["p50_ms"] for m in per_minute]), 1)
        if per_minute else None,
        "per_minute": per_minute, "workers": pids_start, "worker_pid_changes": pid_changes,
        "rss": growth, "rss_samples": samples,
    }


if __name__ == "__main__":
    sys.exit(main())
