"""Publish and download of one large skill through the real registry on loopback, against a plain copy.

Usage::

    python benchmarks/transfer.py [--params 2.8e8] [--workdir DIR] [--keep]

What it does:

1. Writes a bf16 Llama-shaped θ_pre and a densely perturbed θ_ft (``benchmarks/install.py``'s
   generator) and builds the skill with ``tvreg build`` semantics (``build_skill``, the
   ``exact`` codec), as a user would before publishing.
2. Starts ``tvreg-server`` (SQLite) on a free loopback port, a user and a token.
3. Times, in this one run: ``shutil.copyfile`` + ``fsync`` of the artifact (the baseline,
   best of two); ``tvreg._registry.publish.publish`` of the project (the artifact is already built
   and unchanged, the everyday case); ``fetch_skill`` into an empty cache.
   Publish is repeated (``--publish-repeat``, a fresh registry each time) for each
   ``--http`` mode; the download alternates one connection and ``--connections`` ranged
   ones (``TVREG_DOWNLOAD_CONNECTIONS``), ``--repeat`` times each, with a copy per round.
4. Prints median wall seconds (and the range), this process's CPU seconds, the server's
   CPU seconds, and each step's ratio to the median copy. The machine is shared: read CPU
   seconds beside wall.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from install import generate_models, llama_shape  # noqa: E402
from registry_throughput import Server, timed_copy  # noqa: E402


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


_FETCH = """
import json, resource, sys, time
from tvreg._registry.fetch import fetch_skill
def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime
c0, t = cpu(), time.perf_counter()
path = fetch_skill("bench/big@1.0.0", base_fingerprint=sys.argv[3], registry=sys.argv[1], token=sys.argv[2])
import tvreg
print(json.dumps({"wall": time.perf_counter() - t, "cpu": cpu() - c0, "size": path.stat().st_size, "module": tvreg.__file__}))
"""


def _child_fetch(tree: Path | None, connections: str, url: str, token: str, base_fp: str) -> dict:
    """One ``fetch_skill`` into an empty cache in a child process (from ``tree`` when given): wall and CPU s."""
    env = dict(os.environ, TVREG_DOWNLOAD_CONNECTIONS=connections)
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(tree), env.get("PYTHONPATH", "")])
    # From the tree's own directory: `python -c` puts the working directory first on sys.path.
    out = subprocess.run([sys.executable, "-c", _FETCH, url, token, base_fp], env=env, check=True,
                         capture_output=True, text=True, cwd=tree.resolve() if tree is not None else None).stdout
    got = json.loads(out.strip().splitlines()[-1])
    if tree is not None and not Path(got["module"]).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"error: the baseline download imported tvreg from {got['module']}, not from {tree}.")
    return got


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=float, default=1.4e8, help="parameters of the model (exact codec: 4 B each)")
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--repeat", type=int, default=5, help="downloads (and copies) timed per mode; medians shown")
    ap.add_argument("--publish-repeat", type=int, default=3, help="publishes timed per --http mode")
    ap.add_argument("--http", default="h11", help="comma-separated `tvreg-server serve --http` modes to compare")
    ap.add_argument("--connections", type=int, default=4, help="TVREG_DOWNLOAD_CONNECTIONS beside 1")
    ap.add_argument("--baseline-tree", type=Path, help="also publish to a server run from this checkout (before/after)")
    args = ap.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="tvreg-transfer-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["XDG_CACHE_HOME"] = str(work / "cache")
    os.environ["XDG_CONFIG_HOME"] = str(work / "config")
    server: Server | None = None
    try:
        import tomli_w

        from tvreg._build.build import build_skill
        from tvreg._format.fingerprint import fingerprint
        from tvreg._registry.publish import publish

        dirs = generate_models(work / "models", llama_shape(args.params), 1 << 30, ["pre", "ft"])
        project = work / "project"
        project.mkdir()
        (project / "tvskill.toml").write_text(
            tomli_w.dumps(
                {"name": "bench/big", "version": "1.0.0", "base": str(dirs["pre"]), "dataset_size": 1000,
                 "build": {"finetuned": str(dirs["ft"])}}
            )
        )
        t = time.perf_counter()
        art = project / "dist" / "big-1.0.0.tvskill"
        build_skill(dirs["pre"], finetuned=dirs["ft"], output=art, name="big", version="1.0.0", dataset_size=1000)
        build_s = time.perf_counter() - t
        size = art.stat().st_size
        base_fp = fingerprint(dirs["pre"])
        time.sleep(0.1)
        copy_s = min(timed_copy(art, work / "copy.bin") for _ in range(2))

        from tvreg._registry.client import RegistryClient

        put_s: list[float] = []
        plain_put = RegistryClient.put_version

        def timed_put(self, *a, **kw):
            t0 = time.perf_counter()
            try:
                return plain_put(self, *a, **kw)
            finally:
                put_s.append(time.perf_counter() - t0)

        RegistryClient.put_version = timed_put
        mib = size / (1 << 20)
        rows: list[tuple[str, list[float], list[float], list[float]]] = []
        # Publish: a fresh registry per try (a version publishes once), each --http mode in turn.
        servers: list[tuple[str, tuple[str, ...], dict[str, str] | None]] = [
            (mode, ("--http", mode), None) for mode in args.http.split(",")
        ]
        if args.baseline_tree:
            # The same publish against another checkout's server (e.g. main), for a before/after in one run.
            env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(args.baseline_tree), os.environ.get("PYTHONPATH", "")]))
            # With the first --http mode too: a baseline on another parser would compare parsers, not trees.
            servers.insert(0, (f"{args.baseline_tree.name}", ("--http", args.http.split(",")[0]), env))
        put_by_mode: dict[str, list[float]] = {}
        for r in range(max(args.publish_repeat, 1)):  # 0: one untimed publish, for the downloads
            for mode, serve_args, env in servers:
                if server:
                    server.stop()
                (work / f"reg-{mode}-{r}").mkdir()
                # A baseline runs in its own tree: `python -m` imports from the working directory first.
                cwd = args.baseline_tree.resolve() if env is not None else None
                server = Server(work / f"reg-{mode}-{r}", None, 1 << 40, serve_args=serve_args, env=env, cwd=cwd)
                server.admin("create-user", "bench")
                token = server.admin("create-token", "bench", "--role", "write").split()[-1]
                c0, s0, t = _cpu(), _proc_cpu(server.proc.pid), time.perf_counter()
                res = publish(project, registry=server.url, token=token)
                wall, cpu, srv = time.perf_counter() - t, _cpu() - c0, _proc_cpu(server.proc.pid) - s0
                assert res.status == "published", res
                if args.publish_repeat == 0:
                    continue
                put_by_mode.setdefault(mode, []).append(put_s[-1])
                row = next((x for x in rows if x[0] == f"publish {mode}"), None)
                if row is None:
                    rows.append(row := (f"publish {mode}", [], [], []))
                row[1].append(wall)
                row[2].append(cpu)
                row[3].append(srv)
        # Download: one stream and ranged connections, interleaved so load drifts hit both alike. Each
        # download runs in a child process (timed inside it, imports excluded) so that a --baseline-tree
        # client (the previous path) is measured in the same run, against the same server.
        copies, copy_cpus = [copy_s], []
        trees = [("", None)]
        if args.baseline_tree:
            trees.append((f" ({args.baseline_tree.name})", args.baseline_tree))
        modes = [(f"download {c} conn{suffix}", str(c), tree) for suffix, tree in trees for c in (1, args.connections)]
        for _ in range(args.repeat):
            for label, conns, tree in modes:
                shutil.rmtree(work / "cache" / "tvreg" / "blobs", ignore_errors=True)
                s0 = _proc_cpu(server.proc.pid)
                got = _child_fetch(tree, conns, server.url, token, base_fp)
                srv = _proc_cpu(server.proc.pid) - s0
                assert got["size"] == size, got
                row = next((x for x in rows if x[0] == label), None)
                if row is None:
                    rows.append(row := (label, [], [], []))
                row[1].append(got["wall"])
                row[2].append(got["cpu"])
                row[3].append(srv)
            c0 = _cpu()
            copies.append(timed_copy(art, work / "copy.bin"))
            copy_cpus.append(_cpu() - c0)
        copy_med = statistics.median(copies)
        copy_cpu = statistics.median(copy_cpus) if copy_cpus else float("nan")

        print(f"artifact {mib:.0f} MiB; build {build_s:.1f} s; load avg {os.getloadavg()[0]:.2f}; "
              f"publish x{args.publish_repeat}, download x{args.repeat}; medians (min-max wall)")
        print(f"{'step':<26} {'wall s':>8} {'range':>13} {'MiB/s':>7} {'client CPU s':>13} {'server CPU s':>13} "
              f"{'x copy':>7} {'CPU x copy':>10} {'x before':>9}")
        print(f"{'copy':<26} {copy_med:8.2f} {min(copies):6.2f}-{max(copies):<6.2f} {mib / copy_med:7.0f} "
              f"{copy_cpu:13.2f} {'':>13} {1:7.2f} {1:10.2f}")
        medians = {label: (statistics.median(w), statistics.median(c), statistics.median(v)) for label, w, c, v in rows}
        for label, walls, _, _ in rows:
            w, cpu, srv = medians[label]
            # "x before": wall (and client CPU) against the same step run from --baseline-tree.
            before = next((medians[b] for b in medians if args.baseline_tree and b.startswith(label + " (")), None)
            vs = f"{w / before[0]:5.2f}/{cpu / before[1]:.2f}" if before else ""
            print(f"{label:<26} {w:8.2f} {min(walls):6.2f}-{max(walls):<6.2f} {mib / w:7.0f} "
                  f"{cpu:13.2f} {srv:13.2f} {w / copy_med:7.2f} {(cpu + srv) / copy_cpu:10.2f} {vs:>9}")
        if put_s and args.publish_repeat:
            for mode, puts in put_by_mode.items():
                print(f"publish {mode}: median {statistics.median(puts):.2f} s in the final PUT "
                      "(the server's checks after the upload)")
    finally:
        if server:
            server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
