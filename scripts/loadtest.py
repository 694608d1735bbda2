"""Load test for an OpenAI-compatible server on this machine: `llamatool serve` or llama-server.

    .venv/bin/python scripts/loadtest.py -m models/SmolLM2-135M-Instruct.Q4_1.gguf            # starts llamatool serve
    .venv/bin/python scripts/loadtest.py -m MODEL --server /work/ref/build/bin/llama-server   # starts llama-server
    .venv/bin/python scripts/loadtest.py --url http://127.0.0.1:8080 --pid 1234              # a running server
    .venv/bin/python scripts/loadtest.py --server llamatool --server /work/ref/build/bin/llama-server --rounds 5

Sends a bounded number of streamed chat requests (--requests per concurrency level, each
--max-tokens long) to 127.0.0.1 only, with --concurrency clients at a time, and reports per
level: errors, generated tokens (from the usage chunk, else one per content chunk),
aggregate generated tokens/s over the level's wall time, time to first token and request
latency (p50/p95), and the server's resident memory before and after all levels (after a
warm-up that has used every client slot, so memory that is committed once, such as the
slots' KV caches, counts as "before"). --max-rss-growth MIB makes the exit status say
whether it stayed within that and no request failed, e.g. 1,000 requests:

    .venv/bin/python scripts/loadtest.py --requests 1000 --max-tokens 4 --concurrency 8 --max-rss-growth 8
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shlex
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
TOPICS = ["a lighthouse keeper", "a lost robot", "the first snow", "a city under the sea", "an old violin",
          "a dragon who hates fire", "a train at midnight", "a garden on Mars", "a clockmaker", "a brave mouse"]
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def start_server(args, server: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    words = shlex.split(server)  # a server, then options of its own ("llamatool --no-repack")
    if words[0] == "llamatool":
        cmd = [sys.executable, "-m", "llamatool", "serve", *words[1:]]
    else:
        cmd = words
    cmd += ["-m", args.model, "--host", "127.0.0.1", "--port", str(port), "-np", str(args.np), "-c", str(args.ctx)]
    if args.threads:
        cmd += ["-t", str(args.threads)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy())
    return proc, f"http://127.0.0.1:{port}"


async def wait_ready(client, url: str, proc, timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise SystemExit(f"the server exited with code {proc.returncode}")
        try:
            r = await client.get(url + "/health")
            if r.status_code == 200:
                return
        except Exception:
            pass
        await asyncio.sleep(0.5)
    raise SystemExit("the server did not become ready")


async def one_request(client, url: str, i: int, max_tokens: int) -> dict:
    body = {"messages": [{"role": "user", "content": f"Write a long story about {TOPICS[i % len(TOPICS)]}."}],
            "max_tokens": max_tokens, "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    start = time.perf_counter()
    first, chunks, usage = None, 0, None
    try:
        async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
            if r.status_code != 200:
                await r.aread()
                return {"error": f"HTTP {r.status_code}"}
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    return {"error": str(event["error"])[:100]}
                if event.get("usage"):
                    usage = event["usage"]
                for choice in event.get("choices") or []:
                    if (choice.get("delta") or {}).get("content"):
                        chunks += 1
                        if first is None:
                            first = time.perf_counter() - start
    except Exception as e:  # a refused or dropped connection counts as an error
        return {"error": type(e).__name__}
    tokens = usage["completion_tokens"] if usage else chunks
    return {"tokens": tokens, "ttft": first if first is not None else float("nan"), "latency": time.perf_counter() - start}


async def level(client, url: str, concurrency: int, n_requests: int, max_tokens: int) -> dict:
    queue = list(range(n_requests))
    results = []

    async def worker():
        while queue:
            i = queue.pop()
            results.append(await one_request(client, url, i, max_tokens))

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - start
    ok = [r for r in results if "error" not in r]
    errors = [r["error"] for r in results if "error" in r]
    tokens = sum(r["tokens"] for r in ok)
    return {"concurrency": concurrency, "requests": len(results), "errors": len(errors), "error_kinds": sorted(set(errors)),
            "tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall if wall else 0.0,
            "ttft_p50": pct([r["ttft"] for r in ok], 50), "ttft_p95": pct([r["ttft"] for r in ok], 95),
            "latency_p50": pct([r["latency"] for r in ok], 50), "latency_p95": pct([r["latency"] for r in ok], 95)}


def pct(values: list[float], p: float) -> float:
    values = sorted(v for v in values if v == v)
    if not values:
        return float("nan")
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1]


async def run(args) -> list[dict]:
    """One report per server. With several servers (all started at once, idle but for the
    one being measured) each round runs every level on each server in turn, so they meet the
    same machine load; a level's figures are then medians over the rounds."""
    import httpx

    if args.url:
        targets = [(args.url, None, args.pid, args.url)]
    else:
        targets = [(url, proc, proc.pid, server) for server in args.server for proc, url in [start_server(args, server)]]
    for url, *_ in targets:
        if urlparse(url).hostname not in LOOPBACK:
            raise SystemExit(f"{url}: the load test only talks to this machine (127.0.0.1)")
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    limits = httpx.Limits(max_connections=max(args.concurrency) + 4)
    try:
        async with httpx.AsyncClient(timeout=args.timeout, limits=limits, headers=headers) as client:
            reports = []
            for url, proc, pid, name in targets:
                await wait_ready(client, url, proc)
                # warm-up: compiled code, every slot's cache, first allocations
                await level(client, url, max(args.concurrency), max(args.concurrency), args.max_tokens)
                reports.append({"server": name, "model": args.model, "np": args.np, "max_tokens": args.max_tokens,
                                "rss_before_mib": rss_mib(pid), "rounds": {c: [] for c in args.concurrency}})
            for _ in range(args.rounds):
                for c in args.concurrency:
                    for (url, *_), report in zip(targets, reports):
                        report["rounds"][c].append(await level(client, url, c, args.requests, args.max_tokens))
            for (_, _, pid, _), report in zip(targets, reports):
                report["levels"] = [merged(report["rounds"].pop(c)) for c in args.concurrency]
                del report["rounds"]
                report["rss_after_mib"] = rss_mib(pid)
            return reports
    finally:
        for _, proc, _, _ in targets:
            if proc is not None:
                proc.terminate()
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()


def merged(rounds: list[dict]) -> dict:
    """A level over several rounds: counts summed, rates and times the medians of the rounds'."""
    if len(rounds) == 1:
        return rounds[0]
    out = {k: sum(r[k] for r in rounds) for k in ("requests", "errors", "tokens", "wall_s")}
    out["concurrency"] = rounds[0]["concurrency"]
    out["error_kinds"] = sorted({k for r in rounds for k in r["error_kinds"]})
    for k in ("tokens_per_s", "ttft_p50", "ttft_p95", "latency_p50", "latency_p95"):
        out[k] = statistics.median(r[k] for r in rounds)
    out["rounds_tokens_per_s"] = [round(r["tokens_per_s"], 1) for r in rounds]
    return out


def print_report(r: dict) -> None:
    print(f"server {r['server']}  model {Path(r['model']).name if r['model'] else '?'}  -np {r['np']}  "
          f"max_tokens {r['max_tokens']}")
    print(f"{'conc':>4} {'reqs':>5} {'err':>4} {'tokens':>7} {'wall s':>7} {'tok/s':>7} {'ttft p50':>9} {'ttft p95':>9} "
          f"{'lat p50':>8} {'lat p95':>8}")
    for lv in r["levels"]:
        print(f"{lv['concurrency']:>4} {lv['requests']:>5} {lv['errors']:>4} {lv['tokens']:>7} {lv['wall_s']:>7.1f} "
              f"{lv['tokens_per_s']:>7.1f} {lv['ttft_p50']:>9.3f} {lv['ttft_p95']:>9.3f} {lv['latency_p50']:>8.2f} "
              f"{lv['latency_p95']:>8.2f}" + (f"  rounds: {lv['rounds_tokens_per_s']}" if "rounds_tokens_per_s" in lv else "")
              + (f"  errors: {', '.join(lv['error_kinds'])}" if lv["errors"] else ""))
    before, after = r["rss_before_mib"], r["rss_after_mib"]
    if before is not None and after is not None:
        print(f"server RSS: {before:.0f} MiB before, {after:.0f} MiB after ({after - before:+.0f} MiB)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-m", "--model", default=str(ROOT / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"))
    p.add_argument("--server", action="append", help="llamatool (the default), or the path of a llama-server binary, "
                   "either followed by options of its own ('llamatool --no-repack'); repeat it to measure several servers side by side")
    p.add_argument("--rounds", type=int, default=1, help="times each level is run (on each server in turn)")
    p.add_argument("--url", help="a server already running on 127.0.0.1 (then --pid for its RSS)")
    p.add_argument("--pid", type=int)
    p.add_argument("--api-key")
    p.add_argument("-np", "--np", type=int, default=8, help="slots of the server this script starts")
    p.add_argument("-c", "--ctx", type=int, default=8192)
    p.add_argument("-t", "--threads", type=int)
    p.add_argument("--concurrency", default="1,4,8")
    p.add_argument("--requests", type=int, default=24, help="requests per concurrency level (bounded: at most 2000)")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--json", help="also write the report here")
    p.add_argument("--max-rss-growth", type=float, metavar="MIB",
                   help="exit 1 if the server's RSS grew by more than MIB or any request failed")
    args = p.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    args.server = args.server or ["llamatool"]
    if not 1 <= args.requests <= 2000 or not all(1 <= c <= 64 for c in args.concurrency):
        raise SystemExit("--requests must be 1..2000 and each concurrency 1..64")
    if not 1 <= args.rounds <= 20 or args.requests * args.rounds * len(args.server) > 4000:
        raise SystemExit("--rounds must be 1..20, and requests x rounds x servers at most 4000")
    reports = asyncio.run(run(args))
    for report in reports:
        print_report(report)
    if args.json:
        Path(args.json).write_text(json.dumps(reports if len(reports) > 1 else reports[0], indent=1))
    if args.max_rss_growth is not None:
        sys.exit(0 if all(rss_check(r, args.max_rss_growth) for r in reports) else 1)


def rss_check(report: dict, limit: float) -> bool:
    if report["rss_before_mib"] is None or report["rss_after_mib"] is None:
        raise SystemExit("--max-rss-growth: the server's RSS is unknown (with --url, give --pid)")
    growth = report["rss_after_mib"] - report["rss_before_mib"]
    errors = sum(lv["errors"] for lv in report["levels"])
    ok = growth <= limit and errors == 0
    print(f"check {report['server']}: RSS {growth:+.1f} MiB (limit {limit:g}), {errors} errors: {'ok' if ok else 'FAILED'}")
    return ok


if __name__ == "__main__":
    main()
