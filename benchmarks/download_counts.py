"""What counting downloads costs: batched counts against a write per download, on SQLite.

Usage::

    python benchmarks/download_counts.py [--duration 20] [--downloaders 8] [--readers 2] [--size-kb 256]

Why: the registry counts artifact downloads (``registry_server.downloads``) in memory and adds
them to the database every ``TVREG_DOWNLOAD_FLUSH`` seconds. The baseline, in the same run,
is the same server with ``TVREG_DOWNLOAD_FLUSH=0.001``: a flush (one write transaction, one
registry-generation bump that empties every replica's read cache) after almost every
download, which is what a counter written per request costs. For each: ``--downloaders``
threads GET one small artifact over keep-alive connections while ``--readers`` threads read
the skill's info (a cached read, as most traffic is); reported: downloads/s, info p50/p99,
and that the database holds exactly the downloads made once the server stopped.
Small artifacts, so the per-request overhead is what is measured, not bandwidth.
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from registry_throughput import Server, digest_of, make_artifact, publish  # noqa: E402


def _scenario(workdir: Path, flush: float, args: argparse.Namespace) -> dict:
    os.environ["TVREG_DOWNLOAD_FLUSH"] = str(flush)
    workdir.mkdir(parents=True)
    server = Server(workdir, None, 1 << 30)
    try:
        server.admin("create-user", "bench")
        token = server.admin("create-token", "bench", "--role", "write")
        path = workdir / "small.tvskill"
        make_artifact(path, name="small", size=args.size_kb * 1024)
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=server.url + "/api/v1", headers=headers, timeout=60) as c:
            publish(c, path, "bench/small", digest_of(path))
        stop = threading.Event()
        downloads = [0] * args.downloaders
        latencies: list[float] = []
        errors = [0]

        def download(i: int) -> None:
            with httpx.Client(base_url=server.url + "/api/v1", timeout=60) as c:
                while not stop.is_set():
                    r = c.get("/skills/bench/small/versions/1.0.0/artifact")
                    if r.status_code == 200:
                        downloads[i] += 1
                    else:
                        errors[0] += 1

        def read() -> None:
            with httpx.Client(base_url=server.url + "/api/v1", timeout=60) as c:
                while not stop.is_set():
                    t = time.perf_counter()
                    r = c.get("/skills/bench/small")
                    latencies.append(time.perf_counter() - t)
                    if r.status_code != 200:
                        errors[0] += 1

        threads = [threading.Thread(target=download, args=(i,)) for i in range(args.downloaders)]
        threads += [threading.Thread(target=read) for _ in range(args.readers)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        time.sleep(args.duration)
        stop.set()
        for t in threads:
            t.join()
        elapsed = time.perf_counter() - start
    finally:
        server.stop()
    with sqlite3.connect(server.data / "registry.db") as db:
        counted = db.execute("SELECT downloads FROM versions").fetchone()[0]
    made = sum(downloads)
    lat = sorted(latencies)
    return {
        "flush_s": flush,
        "downloads": made,
        "downloads_per_s": made / elapsed,
        "info_reads": len(lat),
        "info_p50_ms": 1000 * statistics.median(lat),
        "info_p99_ms": 1000 * lat[int(0.99 * (len(lat) - 1))],
        "counted_in_database": counted,
        "errors": errors[0],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--downloaders", type=int, default=8)
    parser.add_argument("--readers", type=int, default=2)
    parser.add_argument("--size-kb", type=int, default=256)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tvreg-downloads-"))
    baseline = _scenario(workdir / "per-request", 0.001, args)
    batched = _scenario(workdir / "batched", 10.0, args)
    result = {
        "baseline_write_per_download": baseline,
        "batched": batched,
        "downloads_per_s_ratio": batched["downloads_per_s"] / baseline["downloads_per_s"],
        "info_p99_ratio": batched["info_p99_ms"] / baseline["info_p99_ms"],
    }
    print(json.dumps(result, indent=2))
    for name, r in (("per-request (baseline)", baseline), ("batched", batched)):
        assert r["counted_in_database"] == r["downloads"], (name, r)
        assert r["errors"] == 0, (name, r)
    (workdir / "download-counts.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
