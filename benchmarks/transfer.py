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
4. Prints wall seconds, this process's CPU seconds, the server's CPU seconds, and each
   step's ratio to the copy. The machine is shared: read CPU seconds beside wall.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", type=float, default=1.4e8, help="parameters of the model (exact codec: 4 B each)")
    ap.add_argument("--workdir", type=Path)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--repeat", type=int, default=5, help="downloads (and copies) timed, best kept; CPU is the mean")
    args = ap.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="tvreg-transfer-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["XDG_CACHE_HOME"] = str(work / "cache")
    os.environ["XDG_CONFIG_HOME"] = str(work / "config")
    server = None
    try:
        import tomli_w

        from tvreg._build.build import build_skill
        from tvreg._format.fingerprint import fingerprint
        from tvreg._registry.fetch import fetch_skill
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

        server = Server(work, None, 1 << 40)
        server.admin("create-user", "bench")
        token = server.admin("create-token", "bench", "--role", "write").split()[-1]

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
        c0, s0, t = _cpu(), _proc_cpu(server.proc.pid), time.perf_counter()
        res = publish(project, registry=server.url, token=token)
        pub_s, pub_cpu, pub_srv = time.perf_counter() - t, _cpu() - c0, _proc_cpu(server.proc.pid) - s0
        assert res.status == "published", res

        c0, s0 = _cpu(), _proc_cpu(server.proc.pid)
        times = []
        for _ in range(args.repeat):
            shutil.rmtree(work / "cache" / "tvreg" / "blobs", ignore_errors=True)
            t = time.perf_counter()
            got = fetch_skill("bench/big@1.0.0", base_fingerprint=base_fp, registry=server.url, token=token)
            times.append(time.perf_counter() - t)
        dl_s = min(times)
        dl_cpu, dl_srv = (_cpu() - c0) / args.repeat, (_proc_cpu(server.proc.pid) - s0) / args.repeat
        copy_s = min(copy_s, *(timed_copy(art, work / "copy.bin") for _ in range(args.repeat)))
        assert got.stat().st_size == size

        mib = size / (1 << 20)
        print(f"artifact {mib:.0f} MiB; build {build_s:.1f} s; load avg {os.getloadavg()[0]:.2f}")
        print(f"{'step':<10} {'wall s':>8} {'MiB/s':>8} {'client CPU s':>13} {'server CPU s':>13} {'x copy':>8}")
        print(f"{'copy':<10} {copy_s:8.2f} {mib / copy_s:8.0f} {'':>13} {'':>13} {1:8.2f}")
        for label, s, cpu, srv in (("publish", pub_s, pub_cpu, pub_srv), ("download", dl_s, dl_cpu, dl_srv)):
            print(f"{label:<10} {s:8.2f} {mib / s:8.0f} {cpu:13.2f} {srv:13.2f} {s / copy_s:8.2f}")
        print(f"publish: {sum(put_s):.2f} s of it in the final PUT (the server's checks after the upload)")
    finally:
        if server:
            server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
