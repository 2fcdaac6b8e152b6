"""Load on two registry replicas: 100 concurrent clients, a realistic mix, every byte verified.

Usage::

    python benchmarks/load.py [--clients 100] [--duration 60] [--replicas 2]
                              [--artifact-mb 10,40,100] [--phases metadata,mixed] [--workdir DIR]
                              [--baseline-tree DIR]

What it does:

1. Starts a private PostgreSQL cluster (the same machinery as the test suite: ``initdb`` +
   ``pg_ctl`` in a temporary directory, durable commits) and ``--replicas`` registry
   processes on loopback sharing that database and one blob directory, like replicas
   behind a load balancer. SQLite is not for several replicas.
2. Publishes the download set (``--artifact-mb``: valid ``exact``-codec skills of random
   fp32 values) and 30 small skills for search and info to find.
3. Runs each phase for ``--duration`` seconds with ``--clients`` concurrent clients (one
   asyncio task and one keep-alive connection each, spread over the replicas
   round-robin; one process of aiohttp on this machine's cores):

   * ``metadata``: search (text, base and paginated) and info (skill and version), the
     traffic a registry mostly serves: the figure compared with the 270 requests/s target
     (a single Nexus node's published peak).
   * ``pages``: half API reads (as ``metadata``), half anonymous web page views (front,
     search, skill and version pages), to compare pages/s with API reads/s.
   * ``mixed``: 70 % search/info, 25 % download of one of the big artifacts (streamed,
     SHA-256 checked against the digest the registry published), 5 % publish of a new
     version (upload + verify + commit, 1 MiB artifacts, every version unique).

4. Reports per endpoint: requests, requests/s, p50/p99 latency; bytes/s downloaded; the
   error count (any non-2xx, transport error or digest mismatch). At the end checks that
   every publish answered 201 is listed exactly once and nothing else was added (no
   version lost or duplicated). Writes ``<workdir>/load-results.json``.

With ``--baseline-tree`` (an older checkout, e.g. ``git archive`` of the commit before a
change), the phases run first on replicas started from that tree's ``registry_server``
(same database, same data), then on this tree's, and a last table gives each phase's
operations/s and replica CPU-ms per operation against that baseline: a before/after in
one run.

The clients share the machine with the servers and PostgreSQL, so the figures are for
the whole system on this box, not the server alone; run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import aiohttp
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from registry_throughput import MiB, digest_of, make_artifact  # noqa: E402

SMALL_SKILLS = 30
# Operations started in a phase's first seconds fill the replicas' read caches (every URL built once
# per replica and caller); the phase's p99 counts them, and a second p99 leaves them out.
WARM_UP_S = 3.0


_TICKS = os.sysconf("SC_CLK_TCK")


def _proc_cpu(pid: int, *, reaped: bool = False) -> float:
    """CPU seconds (user + system) of process ``pid``; with ``reaped``, plus its waited-for children."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = int(fields[11]) + int(fields[12])
    if reaped:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / _TICKS


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                pass
    return found


class CpuMeter:
    """CPU seconds spent by the replicas, by PostgreSQL and by this driver during a phase.

    The driver shares the machine's cores with the servers, so the phase's figures are
    only comparable across machines (or a busy one) per request: server CPU-ms per
    request does not depend on who else runs. PostgreSQL's share is its postmaster, its
    live backends and the ones that exited (the postmaster's reaped-children time).
    """

    def __init__(self, replicas: list[int], postmaster: int | None) -> None:
        self.replicas = replicas
        self.postmaster = postmaster

    def sample(self) -> dict[str, float]:
        pg = 0.0
        if self.postmaster is not None:
            pg = _proc_cpu(self.postmaster, reaped=True) + sum(map(_proc_cpu, _children(self.postmaster)))
        usage = os.times()
        return {
            "replicas": sum(map(_proc_cpu, self.replicas)),
            "postgresql": pg,
            "driver": usage.user + usage.system,
        }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Replica:
    def __init__(
        self, workdir: Path, database_url: str, index: int, env: dict[str, str] | None = None, cwd: Path | None = None
    ) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(workdir / f"replica-{index}.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "registry_server.cli", "serve", "--data", str(workdir / "registry")]
            + ["--database-url", database_url, "--port", str(self.port), "--log-level", "warning"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,  # `python -m` imports from the working directory first: a baseline tree runs in its own
        )

    def wait(self) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/api/v1/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise SystemExit(f"replica on {self.url} did not start; see its log")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()


def _admin(database_url: str, *args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "registry_server.cli", "admin", *args, "--database-url", database_url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def _with_version(template: bytes, name: str, version: str) -> bytes:
    """``template`` (a tvskill) with another name and version in its manifest: same tensors."""
    from tvreg._format.artifact import MANIFEST_KEY
    from tvreg._format.safetensors_io import build_header

    length = int.from_bytes(template[:8], "little")
    header = json.loads(template[8 : 8 + length])
    metadata = header.pop("__metadata__")
    manifest = json.loads(metadata[MANIFEST_KEY])
    manifest.update(name=name, version=version)
    metadata[MANIFEST_KEY] = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    entries = sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0])
    head, _ = build_header([(n, e["dtype"], e["shape"]) for n, e in entries], metadata)
    return head + template[8 + length :]


class Stats:
    def __init__(self) -> None:
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.steady: list[float] = []  # every operation's latency after the warm-up (WARM_UP_S)
        self.errors: dict[str, int] = defaultdict(int)
        self.samples: list[str] = []
        self.bytes = 0
        self.published: list[tuple[str, str]] = []

    def fail(self, endpoint: str, what: str) -> None:
        self.errors[endpoint] += 1
        if len(self.samples) < 10:
            self.samples.append(f"{endpoint}: {what}")


async def _get(c: Client, path: str, params: dict | None = None) -> tuple[int, bytes]:
    async with c.session.get(c.base + path, params=params) as r:
        return r.status, await r.read()


async def _search(c: Client, rng: random.Random, stats: Stats, world: dict) -> str:
    kind = rng.random()
    if kind < 0.5:
        params = {"q": f"skill{rng.randrange(SMALL_SKILLS)}"}
    elif kind < 0.8:
        params = {"base": "0" * 64, "per_page": 10, "page": rng.randint(1, 3)}
    else:
        params = {"q": "skill", "per_page": 20}
    status, body = await _get(c, "/skills", params)
    if status != 200 or "items" not in json.loads(body):
        stats.fail("search", f"{status} {body[:100]!r}")
    return "search"


async def _info(c: Client, rng: random.Random, stats: Stats, world: dict) -> str:
    skill = f"load/skill{rng.randrange(SMALL_SKILLS)}"
    if rng.random() < 0.5:
        path, endpoint, key = f"/skills/{skill}", "info", "versions"
    else:
        path, endpoint, key = f"/skills/{skill}/versions/1.0.0", "version", "digest"
    status, body = await _get(c, path)
    if status != 200 or key not in json.loads(body):
        stats.fail(endpoint, f"{status} {body[:100]!r}")
    return endpoint


async def _download(c: Client, rng: random.Random, stats: Stats, world: dict) -> str:
    skill, digest = rng.choice(world["big"])
    h = hashlib.sha256()
    n = 0
    async with c.session.get(c.base + f"/skills/{skill}/versions/1.0.0/artifact") as r:
        if r.status != 200:
            stats.fail("download", f"{r.status}")
            return "download"
        async for chunk in r.content.iter_chunked(1 * MiB):
            h.update(chunk)
            n += len(chunk)
    stats.bytes += n
    if "sha256:" + h.hexdigest() != digest:
        stats.fail("download", f"digest mismatch for {skill} after {n} bytes")
    return "download"


async def _publish(c: Client, rng: random.Random, stats: Stats, world: dict) -> str:
    world["counter"] += 1
    version = f"2.{world['counter']}.0"
    data = _with_version(world["small_template"], "churn", version)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    async with c.session.post(c.base + "/uploads", json={"size": len(data), "digest": digest}) as r:
        if r.status != 201:
            stats.fail("publish", f"create {r.status} {(await r.text())[:100]}")
            return "publish"
        upload_id = (await r.json())["id"]
    async with c.session.patch(
        c.base + f"/uploads/{upload_id}", data=data, headers={"Upload-Offset": "0"}
    ) as r:
        if r.status != 200:
            stats.fail("publish", f"patch {r.status} {(await r.text())[:100]}")
            return "publish"
        await r.read()
    body = {"upload_id": upload_id, "tag": None}
    async with c.session.put(c.base + "/skills/load/churn/versions/" + version, json=body) as r:
        if r.status != 201:
            stats.fail("publish", f"put {r.status} {(await r.text())[:100]}")
        else:
            await r.read()
            stats.published.append(("load/churn", version))
    return "publish"


async def _page_view(c: Client, rng: random.Random, stats: Stats, world: dict) -> str:
    """One anonymous HTML page of the registry's web pages (registry_server.web): front, search, skill, version."""
    root = c.base.removesuffix("/api/v1")
    skill = f"load/skill{rng.randrange(SMALL_SKILLS)}"
    kind = rng.random()
    if kind < 0.2:
        path, params = "/", None
    elif kind < 0.5:
        path, params = "/search", {"q": f"skill{rng.randrange(SMALL_SKILLS)}"}
    elif kind < 0.8:
        path, params = f"/{skill}", None
    else:
        path, params = f"/{skill}/1.0.0", None
    async with c.session.get(root + path, params=params) as r:
        body = await r.read()
        if r.status != 200 or not body.startswith(b"<!doctype html>"):
            stats.fail("page", f"{path} {r.status} {body[:100]!r}")
    return "page"


MIXES = {
    "metadata": [(_search, 0.5), (_info, 0.5)],
    # Page views beside the API reads they mirror, so pages/s and API reads/s come from one run.
    "pages": [(_search, 0.25), (_info, 0.25), (_page_view, 0.5)],
    "mixed": [(_search, 0.35), (_info, 0.35), (_download, 0.25), (_publish, 0.05)],
}


class Client:
    """One simulated user: one keep-alive connection to one replica (aiohttp: a cheap client,
    so that the driver, which shares the machine's cores, takes less of them)."""

    def __init__(self, url: str, token: str) -> None:
        self.base = url + "/api/v1"
        self.session = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {token}"},
            connector=aiohttp.TCPConnector(limit=1),
            timeout=aiohttp.ClientTimeout(total=120),
        )


async def _client(
    url: str, token: str, mix, deadline: float, duration: float, seed: int, stats: Stats, world: dict
) -> None:
    rng = random.Random(seed)
    ops, weights = zip(*mix, strict=True)
    c = Client(url, token)
    async with c.session:
        while time.monotonic() < deadline:
            op = rng.choices(ops, weights)[0]
            started = time.perf_counter()
            try:
                endpoint = await op(c, rng, stats, world)
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError) as exc:
                stats.fail(op.__name__.strip("_"), repr(exc))
                continue
            took = time.perf_counter() - started
            stats.latency[endpoint].append(took)
            if time.monotonic() - took > deadline - duration + WARM_UP_S:
                stats.steady.append(took)


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run_phase(
    name: str, urls: list[str], token: str, clients: int, duration: float, world: dict, meter: CpuMeter
) -> dict:
    stats = Stats()
    load_before = os.getloadavg()
    cpu_before = meter.sample()
    deadline = time.monotonic() + duration

    async def main() -> None:
        await asyncio.gather(
            *(
                _client(urls[i % len(urls)], token, MIXES[name], deadline, duration, i, stats, world)
                for i in range(clients)
            )
        )

    started = time.perf_counter()
    asyncio.run(main())
    wall = time.perf_counter() - started
    cpu = {k: v - cpu_before[k] for k, v in meter.sample().items()}
    total = sum(len(v) for v in stats.latency.values())
    endpoints = {
        ep: {
            "requests": len(v),
            "per_s": len(v) / wall,
            "p50_ms": 1000 * statistics.median(v),
            "p99_ms": 1000 * _percentile(v, 0.99),
            "errors": stats.errors.get(ep, 0),
        }
        for ep, v in sorted(stats.latency.items())
    }
    return {
        "phase": name,
        "clients": clients,
        "wall_s": wall,
        "operations": total,
        "operations_per_s": total / wall,
        "http_requests_per_s": (total + 2 * len(stats.latency.get("publish", []))) / wall,
        "download_MiB_per_s": stats.bytes / MiB / wall,
        "errors": sum(stats.errors.values()),
        "error_samples": stats.samples,
        "endpoints": endpoints,
        "p99_ms_after_warm_up": 1000 * _percentile(stats.steady, 0.99) if stats.steady else None,
        "cpu_ms_per_operation": {k: 1000 * v / max(total, 1) for k, v in cpu.items()},
        "cpu_share": {k: v / (wall * (os.cpu_count() or 1)) for k, v in cpu.items()},
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
        "published": stats.published,
    }


class Abuse:
    """Hostile traffic beside a phase (issue #18): idle sockets, trickled bodies, bad tokens.

    Every attacker uses its own loopback source address (Linux routes 127.0.0.0/8 to lo),
    apart from the normal clients' 127.0.0.1: idle sockets from 127.0.7.x held open and
    re-opened when the server closes them, anonymous ``PUT .../sketch`` bodies announcing
    64 MiB and trickled a byte a second, and bad tokens from ever new addresses in
    127.8.0.0/16 and 127.9.0.0/16 (rotating over 512 networks).
    """

    def __init__(self, urls: list[str], *, idle: int = 200, trickles: int = 20, guessers: int = 4) -> None:
        self.ports = [int(u.rsplit(":", 1)[1]) for u in urls]
        self.stop = threading.Event()
        self.counts = {"idle_opened": 0, "trickles": 0, "bad_tokens": 0, "bad_token_429": 0}
        self.threads = [threading.Thread(target=self._idle, args=(i,), daemon=True) for i in range(idle // 50)]
        self.threads += [threading.Thread(target=self._trickle, args=(i,), daemon=True) for i in range(trickles)]
        self.threads += [threading.Thread(target=self._guess, args=(i,), daemon=True) for i in range(guessers)]

    def __enter__(self) -> Abuse:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(10)

    def _connect(self, n: int, source: str) -> socket.socket | None:
        try:
            return socket.create_connection(
                ("127.0.0.1", self.ports[n % len(self.ports)]), timeout=2, source_address=(source, 0)
            )
        except OSError:
            return None

    def _idle(self, n: int) -> None:
        held: list[socket.socket] = []
        while not self.stop.is_set():
            held = [s for s in held if s.fileno() >= 0]
            while len(held) < 50 and not self.stop.is_set():
                s = self._connect(n, f"127.0.7.{n % 250 + 1}")
                if s is None:
                    break
                held.append(s)
                self.counts["idle_opened"] += 1
            self.stop.wait(1.0)
            for s in list(held):
                s.setblocking(False)
                try:
                    if s.recv(1) == b"":
                        raise OSError
                except BlockingIOError:
                    continue
                except OSError:
                    pass
                s.close()
                held.remove(s)
        for s in held:
            s.close()

    def _trickle(self, n: int) -> None:
        head = (
            "PUT /api/v1/skills/load/skill0/versions/1.0.0/sketch HTTP/1.1\r\nHost: x\r\n"
            f"Content-Length: {64 * MiB}\r\n\r\n"
        ).encode()
        while not self.stop.is_set():
            s = self._connect(n, f"127.0.6.{n % 250 + 1}")
            if s is None:
                self.stop.wait(0.5)
                continue
            self.counts["trickles"] += 1
            try:
                s.sendall(head)
                while not self.stop.is_set():
                    s.sendall(b"\0")
                    self.stop.wait(1.0)
            except OSError:
                pass
            finally:
                s.close()

    def _guess(self, n: int) -> None:
        i = n
        while not self.stop.is_set():
            i += 4
            s = self._connect(i, f"127.{8 + (i >> 16) % 2}.{(i >> 8) & 255}.{i & 255 or 1}")
            if s is None:
                continue
            try:
                s.sendall(
                    b"GET /api/v1/whoami HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer tvr_"
                    + os.urandom(32).hex()[:43].encode()
                    + b"\r\n\r\n"
                )
                answer = s.recv(64)
                self.counts["bad_tokens"] += 1
                self.counts["bad_token_429"] += answer.startswith(b"HTTP/1.1 429")
            except OSError:
                pass
            finally:
                s.close()


def _reset_peak(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(OSError):
            Path(f"/proc/{pid}/clear_refs").write_text("5")


def _peak_mib(pids: list[int]) -> list[float]:
    out = []
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                out.append(int(line.split()[1]) / 1024)
    return out


def _print_phase(result: dict) -> None:
    print(
        f"\nphase `{result['phase']}`: {result['clients']} clients, {result['wall_s']:.1f} s, "
        f"{result['operations_per_s']:.0f} operations/s ({result['http_requests_per_s']:.0f} HTTP requests/s), "
        f"{result['download_MiB_per_s']:.0f} MiB/s downloaded, {result['errors']} errors"
    )
    print(f"  {'endpoint':<10}{'requests':>10}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
    for ep, e in result["endpoints"].items():
        print(
            f"  {ep:<10}{e['requests']:>10}{e['per_s']:>9.1f}{e['p50_ms']:>9.1f}{e['p99_ms']:>9.1f}{e['errors']:>8}"
        )
    if result.get("p99_ms_after_warm_up") is not None:
        print(f"  p99 of every operation started after the first {WARM_UP_S:g} s: {result['p99_ms_after_warm_up']:.1f} ms")
    per_op, share = result["cpu_ms_per_operation"], result["cpu_share"]
    print(
        "  CPU per operation: "
        + ", ".join(f"{k} {v:.2f} ms ({100 * share[k]:.0f} % of the machine)" for k, v in per_op.items())
    )
    print(
        "  load average before / after: "
        + " / ".join(", ".join(f"{x:.2f}" for x in result[k]) for k in ("loadavg_before", "loadavg_after"))
    )
    for sample in result["error_samples"]:
        print(f"  error: {sample}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per phase")
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--artifact-mb", default="10,40,100", help="sizes of the download set, MiB")
    parser.add_argument("--phases", default="metadata,mixed")
    parser.add_argument("--workdir", type=Path)
    parser.add_argument(
        "--abuse",
        action="store_true",
        help="run each phase a second time beside hostile traffic (idle sockets, trickled bodies, bad tokens)",
    )
    parser.add_argument(
        "--baseline-tree", type=Path, help="first run the phases on replicas from this checkout (before/after)"
    )
    args = parser.parse_args()

    from registry_server.pgcluster import PostgresCluster, find_pg_bin

    bin_dir = find_pg_bin()
    if bin_dir is None:
        raise SystemExit("PostgreSQL binaries (initdb, pg_ctl) not found; install the `postgresql` package.")
    workdir = (args.workdir or Path(tempfile.mkdtemp(prefix="tvreg-load-"))).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    cluster = PostgresCluster(bin_dir, durable=True)
    replicas: list[Replica] = []
    try:
        cluster.start()
        cluster.execute('CREATE DATABASE "registry"')
        url = cluster.url("registry")
        from registry_server.db import make_engine
        from registry_server.migrate import upgrade

        engine = make_engine(url)
        upgrade(engine)
        engine.dispose()
        _admin(url, "create-user", "bench")
        _admin(url, "create-team", "load")
        _admin(url, "add-member", "load", "bench", "--role", "write")
        token = _admin(url, "create-token", "bench", "--role", "write")
        replicas = [Replica(workdir, url, i) for i in range(args.replicas)]
        for r in replicas:
            r.wait()
        urls = [r.url for r in replicas]
        meter = CpuMeter([r.proc.pid for r in replicas], _postmaster_pid(cluster))

        print(f"making the artifacts in {workdir} ...", flush=True)
        world: dict = {"big": [], "counter": 0}
        headers = {"Authorization": f"Bearer {token}"}
        small = workdir / "small.tvskill"
        make_artifact(small, name="skill0", size=1 * MiB)
        world["small_template"] = small.read_bytes()
        with httpx.Client(base_url=urls[0] + "/api/v1", headers=headers, timeout=600) as c:
            for i, mb in enumerate(int(x) for x in args.artifact_mb.split(",")):
                path = workdir / f"big{i}.tvskill"
                make_artifact(path, name=f"big{i}", size=mb * MiB)
                digest = digest_of(path)
                _publish_file(c, path.read_bytes(), f"load/big{i}", "1.0.0")
                world["big"].append((f"load/big{i}", digest))
                path.unlink()
            for i in range(SMALL_SKILLS):
                _publish_file(
                    c, _with_version(world["small_template"], f"skill{i}", "1.0.0"), f"load/skill{i}", "1.0.0"
                )

        trees: list[tuple[str, Path | None]] = [("this tree", None)]
        if args.baseline_tree:
            trees.insert(0, (f"baseline {args.baseline_tree.resolve()}", args.baseline_tree.resolve()))
        results = []
        for tree, where in trees:
            if where is not None or tree != trees[0][0]:  # replicas of this tree (the setup ones serve the first)
                for r in replicas:
                    r.stop()
                env = None
                if where is not None:
                    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(where), os.environ.get("PYTHONPATH", "")]))
                replicas = [Replica(workdir, url, len(results) * 10 + i, env, where) for i in range(args.replicas)]
                for r in replicas:
                    r.wait()
                urls = [r.url for r in replicas]
                meter = CpuMeter([r.proc.pid for r in replicas], _postmaster_pid(cluster))
            if len(trees) > 1:
                print(f"\n=== replicas from {tree}", flush=True)
            pids = [r.proc.pid for r in replicas]
            for phase in args.phases.split(","):
                for hostile in (False, True) if args.abuse else (False,):
                    label = f"{phase}+abuse" if hostile else phase
                    print(f"phase `{label}`: {args.clients} clients for {args.duration:.0f} s ...", flush=True)
                    _reset_peak(pids)
                    abuse = Abuse(urls) if hostile else contextlib.nullcontext()
                    with abuse:
                        result = run_phase(phase, urls, token, args.clients, args.duration, world, meter)
                    result["phase"] = label
                    result["tree"] = tree
                    result["replica_peak_rss_MiB"] = _peak_mib(pids)
                    if hostile:
                        result["abuse"] = dict(abuse.counts)
                    _print_phase(result)
                    print(f"  replica peak RSS: {result['replica_peak_rss_MiB']} MiB; abuse: {result.get('abuse')}")
                    results.append(result)
        if len(trees) > 1:
            _print_against_baseline(results, trees[0][0])

        published = [v for r in results for v in r["published"]]
        with httpx.Client(base_url=urls[-1] + "/api/v1", headers=headers, timeout=60) as c:
            listed = (
                [v["version"] for v in c.get("/skills/load/churn").json().get("versions", [])]
                if published
                else []
            )
        expected = sorted(v for _, v in published)
        consistency = {
            "published_201": len(published),
            "listed": len(listed),
            "lost": sorted(set(expected) - set(listed)),
            "unexpected": sorted(set(listed) - set(expected)),
            "duplicated": len(listed) - len(set(listed)),
        }
        print(
            f"\nversions: {consistency['published_201']} publishes answered 201, {consistency['listed']} listed, "
            f"{len(consistency['lost'])} lost, {len(consistency['unexpected'])} unexpected, "
            f"{consistency['duplicated']} duplicated"
        )
        for r in results:
            r.pop("published")
        out = {
            "replicas": args.replicas,
            "cpus": os.cpu_count(),
            "loadavg_after": os.getloadavg(),
            "phases": results,
            "versions": consistency,
        }
        (workdir / "load-results.json").write_text(json.dumps(out, indent=2))
        print(f"results: {workdir / 'load-results.json'}")
        bad = sum(r["errors"] for r in results) + len(consistency["lost"]) + len(consistency["unexpected"])
        if bad or consistency["duplicated"]:
            raise SystemExit("errors, or versions lost or duplicated: see above")
    finally:
        for r in replicas:
            r.stop()
        cluster.stop()
        shutil.rmtree(workdir / "registry", ignore_errors=True)


def _print_against_baseline(results: list[dict], baseline: str) -> None:
    """Each phase of this tree against the same phase of the baseline tree."""
    before = {r["phase"]: r for r in results if r["tree"] == baseline}
    print(f"\nthis tree against {baseline} (same run):")
    print(f"  {'phase':<16}{'ops/s':>16}{'ratio':>8}{'replica CPU-ms/op':>22}{'ratio':>8}{'p99 ms (max)':>16}")
    for r in results:
        b = before.get(r["phase"])
        if r["tree"] == baseline or b is None:
            continue
        cpu, cpu_b = r["cpu_ms_per_operation"]["replicas"], b["cpu_ms_per_operation"]["replicas"]
        p99 = max((e["p99_ms"] for e in r["endpoints"].values()), default=0.0)
        p99_b = max((e["p99_ms"] for e in b["endpoints"].values()), default=0.0)
        print(
            f"  {r['phase']:<16}{b['operations_per_s']:>7.0f} -> {r['operations_per_s']:<6.0f}"
            f"{r['operations_per_s'] / max(b['operations_per_s'], 1e-9):>7.2f}x"
            f"{cpu_b:>11.2f} -> {cpu:<7.2f}{cpu_b / max(cpu, 1e-9):>7.2f}x{p99_b:>8.0f} -> {p99:<6.0f}"
        )


def _postmaster_pid(cluster) -> int | None:
    try:
        return int((cluster.root / "data" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _publish_file(c: httpx.Client, data: bytes, skill: str, version: str) -> None:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    r = c.post("/uploads", json={"size": len(data), "digest": digest})
    r.raise_for_status()
    upload_id, chunk = r.json()["id"], r.json()["chunk_size"]
    for offset in range(0, len(data), chunk):
        c.patch(
            f"/uploads/{upload_id}",
            content=data[offset : offset + chunk],
            headers={"Upload-Offset": str(offset)},
        ).raise_for_status()
    r = c.put(f"/skills/{skill}/versions/{version}", json={"upload_id": upload_id})
    if r.status_code != 201:
        raise SystemExit(f"setup publish of {skill}@{version} failed: {r.status_code} {r.text}")


if __name__ == "__main__":
    main()
