"""Server CPU-seconds of a publish's two phases (the PATCH upload, the final PUT), two server trees interleaved.

Usage::

    python benchmarks/publish_phases.py ARTIFACT --baseline-tree /tmp/base [--rounds 6] [--workdir DIR]

Why: ``transfer.py`` times whole publishes; this splits the server's CPU (user + system, from
``/proc/<pid>/stat``, all threads) between the upload and the final check, and runs a server from
this checkout and one from ``--baseline-tree`` alternately on the same artifact (e.g. one from
``registry_throughput.make_artifact``), so a change to either phase is read as a before/after in
one run. Prints medians: CPU s (system s) and wall s per phase, and new/base ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from registry_throughput import Server, digest_of  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _times(pid: int) -> tuple[float, float]:
    """(user + system, system) CPU seconds of process ``pid`` so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, int(fields[12]) / tick


def _publish(server: Server, art: Path, digest: str) -> tuple[float, float, float, float, float]:
    """(PATCH CPU, PATCH system CPU, PUT CPU, PATCH wall, PUT wall) of one publish, server side."""
    server.admin("create-user", "bench")
    token = server.admin("create-token", "bench", "--role", "write").split()[-1]
    size = art.stat().st_size
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=server.url + "/api/v1", headers=headers, timeout=600) as c:
        up = c.post("/uploads", json={"size": size, "digest": digest}).json()
        (c0, y0), t0 = _times(server.proc.pid), time.perf_counter()
        offset = 0
        with open(art, "rb") as f:
            while offset < size:
                data = f.read(up["chunk_size"])
                r = c.patch(f"/uploads/{up['id']}", content=data, headers={"Upload-Offset": str(offset)})
                r.raise_for_status()
                offset = r.json()["offset"]
        (c1, y1), t1 = _times(server.proc.pid), time.perf_counter()
        r = c.put("/skills/bench/big/versions/1.0.0", json={"upload_id": up["id"]})
        if r.status_code != 201:
            raise SystemExit(f"publish failed: {r.status_code} {r.text}")
        (c2, _), t2 = _times(server.proc.pid), time.perf_counter()
    return c1 - c0, y1 - y0, c2 - c1, t1 - t0, t2 - t1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--baseline-tree", type=Path, required=True)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--http", default="httptools", help="`tvreg-server serve --http` for both servers")
    ap.add_argument("--workdir", type=Path)
    args = ap.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="tvreg-phases-"))
    digest = digest_of(args.artifact)
    trees = {"base": args.baseline_tree.resolve(), "new": ROOT}
    got: dict[str, list[tuple[float, ...]]] = {name: [] for name in trees}
    for r in range(args.rounds):
        for name, tree in trees.items():
            (work / f"{name}{r}").mkdir(parents=True)
            env = dict(os.environ, PYTHONPATH=str(tree))
            server = Server(work / f"{name}{r}", None, 1 << 40, serve_args=("--http", args.http), env=env)
            try:
                got[name].append(_publish(server, args.artifact, digest))
            finally:
                server.stop()
    mib = args.artifact.stat().st_size / (1 << 20)
    print(f"artifact {mib:.0f} MiB; {args.rounds} rounds; load avg {os.getloadavg()[0]:.2f}; medians")
    med = {name: [statistics.median(x[i] for x in rows) for i in range(5)] for name, rows in got.items()}
    for name, (patch, patch_sys, put, patch_wall, put_wall) in med.items():
        print(f"{name:<5} server CPU s: PATCH {patch:.2f} (system {patch_sys:.2f}) PUT {put:.2f} "
              f"total {patch + put:.2f}; wall s: PATCH {patch_wall:.2f} PUT {put_wall:.2f}")
    b, n = med["base"], med["new"]
    print(f"new/base: CPU total {(n[0] + n[2]) / (b[0] + b[2]):.2f}, PATCH {n[0] / b[0]:.2f}, PUT {n[2] / b[2]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
