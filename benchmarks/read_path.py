"""CPU per cached API read on one replica: the fast path against the framework path.

Usage::

    python benchmarks/read_path.py [--reads 3000] [--rounds 3] [--workdir DIR] [--baseline-tree DIR]

Starts two ``tvreg-server`` processes on SQLite over the same published skills, one with
the cached-read fast path (:mod:`registry_server.fastread`) and one without it
(``TVREG_SERVER_FAST_READS=0``), plus a bare uvicorn application that answers ``{}``
(the floor any Python HTTP server on this machine pays). One keep-alive client reads
search, skill info and version info in turn; each round measures every server, in
alternating order, by the CPU-seconds its process spends per read (steady on a shared
machine, unlike wall time). Prints the median per server and the ratio against the
framework path measured in the same run. With ``--baseline-tree`` (an older checkout, e.g.
``git archive`` of the commit before a change), a fast-path server run from that tree's
``registry_server`` reads the same data directory too, and its ratio to this tree's fast
path is printed: a before/after in one run.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from registry_throughput import Server, _free_port, digest_of, make_artifact, publish  # noqa: E402

READS = (
    "/api/v1/skills?q=skill",
    "/api/v1/skills/bench/skill0",
    "/api/v1/skills/bench/skill1/versions/1.0.0",
    "/api/v1/skills?q=skill&per_page=2",
)


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _per_read(url: str, pid: int, reads: int, token: str | None = None) -> float:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    with httpx.Client(base_url=url, headers=headers) as c:
        for path in READS:  # warm: the first answer of each URL is built and kept
            for _ in range(3):
                c.get(path).raise_for_status()
        start = _cpu(pid)
        for i in range(reads):
            c.get(READS[i % len(READS)]).raise_for_status()
        return (_cpu(pid) - start) / reads * 1000


class BareServer:
    """uvicorn with an ASGI app that answers ``{}``: the HTTP server's own cost per request."""

    def __init__(self, workdir: Path) -> None:
        script = workdir / "bare.py"
        script.write_text(
            textwrap.dedent(
                """
                import sys, uvicorn
                async def app(scope, receive, send):
                    if scope["type"] != "http":
                        return
                    await send({"type": "http.response.start", "status": 200,
                                "headers": [(b"content-type", b"application/json"), (b"content-length", b"2")]})
                    await send({"type": "http.response.body", "body": b"{}"})
                uvicorn.run(app, port=int(sys.argv[1]), log_level="error")
                """
            )
        )
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, str(script), str(self.port)])
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(self.url + "/", timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise SystemExit("the bare uvicorn server did not start")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reads", type=int, default=3000, help="reads per server per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--baseline-tree", type=Path, help="also measure a fast-path server run from this checkout")
    args = parser.parse_args()
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tvreg-read-path-"))
    workdir.mkdir(parents=True, exist_ok=True)

    os.environ["TVREG_SERVER_FAST_READS"] = "1"
    shared = workdir / "servers"  # one data directory (and log) for every registry process
    shared.mkdir(exist_ok=True)
    fast = Server(shared, None, 1 << 30)
    fast.admin("create-user", "bench")
    token = fast.admin("create-token", "bench", "--name", "bench", "--role", "write")
    with httpx.Client(base_url=fast.url + "/api/v1", headers={"Authorization": f"Bearer {token}"}) as c:
        for i in range(3):
            path = workdir / f"skill{i}.tvskill"
            make_artifact(path, name=f"skill{i}", size=64 * 1024)
            publish(c, path, f"bench/skill{i}", digest_of(path))
    fast.stop()
    # The framework path serves the same data directory: same rows, same answers.
    os.environ["TVREG_SERVER_FAST_READS"] = "0"
    slow = Server(shared, None, 1 << 30)
    os.environ["TVREG_SERVER_FAST_READS"] = "1"
    fast = Server(shared, None, 1 << 30)
    servers = [("fast path", fast), ("framework path", slow)]
    if args.baseline_tree:
        tree = args.baseline_tree.resolve()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tree), os.environ.get("PYTHONPATH", "")]))
        servers.append((f"fast path, {tree.name}", Server(shared, None, 1 << 30, env=env, cwd=tree)))
    bare = BareServer(workdir)
    results: dict[str, list[float]] = {label: [] for label, _ in servers}
    results.update({"fast path, token": [], "bare uvicorn": []})
    try:
        for r in range(args.rounds):
            order = servers
            for label, server in order if r % 2 == 0 else order[::-1]:
                results[label].append(_per_read(server.url, server.proc.pid, args.reads))
            results["fast path, token"].append(_per_read(fast.url, fast.proc.pid, args.reads, token))
            results["bare uvicorn"].append(_bare(bare, args.reads))
    finally:
        for _, server in servers:
            server.stop()
        bare.stop()
    base = statistics.median(results["framework path"])
    load = os.getloadavg()[0]
    print(f"cached API reads, {args.reads} per server per round, {args.rounds} rounds, load {load:.1f}")
    print(f"{'server':<30} {'CPU-ms/read (median)':>22} {'all rounds':>30} {'vs framework':>13}")
    for label, values in results.items():
        median = statistics.median(values)
        rounds = ", ".join(f"{v:.3f}" for v in values)
        print(f"{label:<30} {median:>22.3f} {rounds:>30} {base / median:>12.2f}x")
    if args.baseline_tree:
        before = statistics.median(results[f"fast path, {args.baseline_tree.resolve().name}"])
        after = statistics.median(results["fast path"])
        print(f"fast path: {after:.3f} CPU-ms/read vs {before:.3f} from {args.baseline_tree}: {before / after:.2f}x less CPU")


def _bare(bare: BareServer, reads: int) -> float:
    with httpx.Client(base_url=bare.url) as c:
        for _ in range(50):
            c.get("/")
        start = _cpu(bare.proc.pid)
        for _ in range(reads):
            c.get("/")
        return (_cpu(bare.proc.pid) - start) / reads * 1000


if __name__ == "__main__":
    main()
