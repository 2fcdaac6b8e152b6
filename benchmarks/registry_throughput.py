"""Registry throughput on loopback: publish and download of a large artifact, and a download storm.

Usage::

    python benchmarks/registry_throughput.py [--size-mb 1024] [--clients 100] [--storm-size-mb 64]
                                             [--database-url URL] [--workdir DIR] [--keep]

What it does:

1. Writes a valid ``.tvskill`` of ``--size-mb`` MiB (random fp32 tensors through the
   ``exact`` codec, written with :class:`tvreg._format.artifact.ArtifactWriter`: the server parses
   and decodes a real artifact).
2. Baseline: a plain file copy of the same bytes (``shutil.copyfile`` + ``fsync``), twice,
   best time kept.
3. Starts ``tvreg-server`` (SQLite in the work directory, or ``--database-url``) on a free
   loopback port, creates a user and a token with the admin CLI.
4. Publish: ``POST /uploads``, the bytes in ``PATCH`` chunks of the server's suggested
   size, ``PUT`` the version; timed end to end (the server fsyncs every chunk, hashes the
   whole upload and links it into the blob store inside that time).
5. Download: ``GET .../artifact`` streamed to a file with SHA-256 computed on the fly and
   checked against ``X-Tvreg-Digest``, then fsynced, as a client would (httpx); and once
   more over a bare socket, hashing only, to separate the server's speed from httpx's.
6. Storm: ``--clients`` concurrent downloads of one ``--storm-size-mb`` MiB artifact, each
   streamed and hashed; counts every non-200 answer, transport error or digest mismatch
   (the count must be 0) and reports aggregate throughput and latency percentiles.

Prints a table with ratios against the copy and writes ``<workdir>/registry-results.json``.
Needs about 3x ``--size-mb`` of free disk in the work directory.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

MiB = 1024 * 1024


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_artifact(path: Path, *, name: str, size: int, version: str = "1.0.0") -> None:
    """A valid tvskill of about ``size`` bytes: random fp32 tensors through the ``exact`` codec.

    Random mantissas barely compress, so the stored size is close to ``size``; the frames
    are real, because the registry decodes every tensor before it accepts a publish.
    """
    import numpy as np
    import torch

    from tvreg._format.artifact import ArtifactWriter
    from tvreg._format.codecs import get_codec
    from tvreg._format.manifest import Manifest

    codec = get_codec("exact")
    rng = np.random.default_rng(0)
    manifest = Manifest(name=name, version=version, base_fingerprint="0" * 64, dataset_size=1000)
    writer = ArtifactWriter(path, manifest)
    remaining, i = size, 0
    while remaining > 0:
        n = max(4, min(16 * MiB, remaining) // 4 * 4)
        values = torch.from_numpy(rng.standard_normal(n // 4, dtype=np.float32))
        encoded = codec.encode(values)
        writer.add(
            f"layers.{i}.weight",
            encoded.data,
            codec="exact",
            shape=(n // 4,),
            dtype="F32",
            params=encoded.params,
        )
        remaining -= len(encoded.data)
        i += 1
    writer.finish()


def digest_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(16 * MiB):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def timed_copy(src: Path, dst: Path) -> float:
    t = time.perf_counter()
    shutil.copyfile(src, dst)
    fd = os.open(dst, os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
    took = time.perf_counter() - t
    dst.unlink()
    return took


class Server:
    def __init__(
        self,
        workdir: Path,
        database_url: str | None,
        max_bytes: int,
        *,
        serve_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.data = workdir.resolve() / "registry"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.db = ["--database-url", database_url] if database_url else []
        self.args = ["--data", str(self.data), *self.db]
        self.log = open(workdir / "server.log", "wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "registry_server.cli", "serve", *self.args]
            + ["--port", str(self.port), "--max-artifact-bytes", str(max_bytes), "--log-level", "warning"]
            + list(serve_args),
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,  # `python -m` imports from the working directory first: a baseline tree runs in its own
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/api/v1/health", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise SystemExit(f"the server did not start; see {workdir / 'server.log'}")

    def admin(self, *args: str) -> str:
        return subprocess.run(
            [sys.executable, "-m", "registry_server.cli", "admin", *args, *self.args],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)
        self.log.close()


def publish(client: httpx.Client, path: Path, skill: str, digest: str) -> tuple[float, float]:
    """(seconds for the whole publish, seconds of the final PUT: verify, parse, link, commit)."""
    size = path.stat().st_size
    t = time.perf_counter()
    r = client.post("/uploads", json={"size": size, "digest": digest})
    r.raise_for_status()
    upload_id, chunk = r.json()["id"], r.json()["chunk_size"]
    offset = 0
    with open(path, "rb") as f:
        while offset < size:
            data = f.read(chunk)
            r = client.patch(f"/uploads/{upload_id}", content=data, headers={"Upload-Offset": str(offset)})
            r.raise_for_status()
            offset = r.json()["offset"]
    put = time.perf_counter()
    r = client.put(f"/skills/{skill}/versions/1.0.0", json={"upload_id": upload_id})
    if r.status_code != 201:
        raise SystemExit(f"publish failed: {r.status_code} {r.text}")
    end = time.perf_counter()
    return end - t, end - put


def download(client: httpx.Client, skill: str, dst: Path | None) -> tuple[float, bool, int]:
    """(seconds, digest ok, bytes) for one streamed, hashed download (to ``dst`` when given)."""
    t = time.perf_counter()
    h = hashlib.sha256()
    n = 0
    out = open(dst, "wb") if dst else None
    try:
        with client.stream("GET", f"/skills/{skill}/versions/1.0.0/artifact") as r:
            if r.status_code != 200:
                return time.perf_counter() - t, False, 0
            for chunk in r.iter_raw(4 * MiB):
                h.update(chunk)
                n += len(chunk)
                if out:
                    out.write(chunk)
            ok = "sha256:" + h.hexdigest() == r.headers["x-tvreg-digest"]
        if out:
            out.flush()
            os.fsync(out.fileno())
    finally:
        if out:
            out.close()
    return time.perf_counter() - t, ok, n


def raw_download(url: str, skill: str) -> tuple[float, bool]:
    """One download over a bare socket (no HTTP library): what the server itself can send."""
    host, port = url.removeprefix("http://").split(":")
    t = time.perf_counter()
    h = hashlib.sha256()
    buf = bytearray(4 * MiB)
    view = memoryview(buf)
    with socket.create_connection((host, int(port))) as s:
        s.sendall(
            f"GET /api/v1/skills/{skill}/versions/1.0.0/artifact HTTP/1.1\r\nHost: {host}\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(65536)
        head, _, rest = head.partition(b"\r\n\r\n")
        h.update(rest)
        while n := s.recv_into(view):
            h.update(view[:n])
    digest = next(
        line.split(b":", 1)[1].strip().decode()
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"x-tvreg-digest:")
    )
    return time.perf_counter() - t, "sha256:" + h.hexdigest() == digest


def storm(url: str, skill: str, clients: int) -> dict:
    errors: list[str] = []
    latencies: list[float] = []
    total = 0
    lock = threading.Lock()
    barrier = threading.Barrier(clients)

    def one() -> None:
        nonlocal total
        try:
            with httpx.Client(base_url=url + "/api/v1", timeout=300) as c:
                barrier.wait()
                took, ok, n = download(c, skill, None)
            with lock:
                latencies.append(took)
                total += n
                if not ok:
                    errors.append("bad status or digest")
        except Exception as exc:  # counted, not raised: the storm reports every failure
            with lock:
                errors.append(repr(exc))

    threads = [threading.Thread(target=one) for _ in range(clients)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - t
    latencies.sort()
    return {
        "clients": clients,
        "errors": len(errors),
        "error_samples": errors[:5],
        "wall_s": wall,
        "aggregate_MBps": total / MiB / wall,
        "latency_p50_s": statistics.median(latencies) if latencies else None,
        "latency_p95_s": latencies[int(0.95 * (len(latencies) - 1))] if latencies else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="size of the big artifact in MiB")
    parser.add_argument("--clients", type=int, default=100, help="concurrent downloads in the storm")
    parser.add_argument("--storm-size-mb", type=int, default=64, help="artifact size for the storm, MiB")
    parser.add_argument("--database-url", help="PostgreSQL URL (default: SQLite in the work directory)")
    parser.add_argument("--workdir", type=Path, help="where to put artifacts and the registry")
    parser.add_argument("--keep", action="store_true", help="keep the artifacts and registry data")
    args = parser.parse_args()

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="tvreg-registry-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    big, small = workdir / "big.tvskill", workdir / "storm.tvskill"
    print(
        f"writing a {args.size_mb} MiB artifact and a {args.storm_size_mb} MiB one in {workdir} ...",
        flush=True,
    )
    make_artifact(big, name="big", size=args.size_mb * MiB)
    make_artifact(small, name="storm", size=args.storm_size_mb * MiB)
    size = big.stat().st_size
    big_digest, small_digest = digest_of(big), digest_of(small)

    copy_s = min(timed_copy(big, workdir / "copy.bin") for _ in range(2))
    server = Server(workdir, args.database_url, max_bytes=2 * size)
    try:
        server.admin("create-user", "bench")
        token = server.admin("create-token", "bench", "--role", "write")
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=server.url + "/api/v1", headers=headers, timeout=600) as c:
            publish_s, put_s = publish(c, big, "bench/big", big_digest)
            publish(c, small, "bench/storm", small_digest)
            dl_s, ok, n = download(c, "bench/big", workdir / "downloaded.bin")
            (workdir / "downloaded.bin").unlink()
            if not ok or n != size:
                raise SystemExit("the big download did not verify")
        raw_s, ok = raw_download(server.url, "bench/big")
        if not ok:
            raise SystemExit("the raw download did not verify")
        storm_result = storm(server.url, "bench/storm", args.clients)
    finally:
        server.stop()

    mbps = lambda s: size / MiB / s  # noqa: E731
    results = {
        "size_bytes": size,
        "database": "postgresql" if args.database_url else "sqlite",
        "copy_s": copy_s,
        "publish_s": publish_s,
        "publish_put_s": put_s,
        "download_s": dl_s,
        "raw_download_s": raw_s,
        "publish_vs_copy": publish_s / copy_s,
        "download_vs_copy": dl_s / copy_s,
        "storm": storm_result,
    }
    print(f"\n{'step':<28}{'seconds':>10}{'MiB/s':>10}{'x copy':>10}")
    print(f"{'plain copy + fsync':<28}{copy_s:>10.2f}{mbps(copy_s):>10.0f}{1:>10.2f}")
    print(
        f"{'publish (upload+verify)':<28}{publish_s:>10.2f}{mbps(publish_s):>10.0f}{publish_s / copy_s:>10.2f}"
    )
    print(f"{'download, httpx (hash+fsync)':<28}{dl_s:>10.2f}{mbps(dl_s):>10.0f}{dl_s / copy_s:>10.2f}")
    print(f"{'download, bare socket (hash)':<28}{raw_s:>10.2f}{mbps(raw_s):>10.0f}{raw_s / copy_s:>10.2f}")
    s = storm_result
    print(
        f"\n{s['clients']} concurrent downloads of {args.storm_size_mb} MiB: {s['errors']} errors, "
        f"{s['wall_s']:.2f} s wall, {s['aggregate_MBps']:.0f} MiB/s aggregate, "
        f"latency p50 {s['latency_p50_s']:.2f} s, p95 {s['latency_p95_s']:.2f} s"
    )
    (workdir / "registry-results.json").write_text(json.dumps(results, indent=2))
    if not args.keep:
        for p in (big, small):
            p.unlink(missing_ok=True)
        shutil.rmtree(workdir / "registry", ignore_errors=True)
    if storm_result["errors"]:
        raise SystemExit(f"{storm_result['errors']} downloads failed: {storm_result['error_samples']}")


if __name__ == "__main__":
    main()
