"""End-to-end tour of tvreg on tiny real checkpoints, driven through the CLI as a user would.

1. Build a family of tiny Llama checkpoints (θ_pre, a general model G that added
   tokens to its vocabulary, and two skill fine-tunes) by training a few steps on CPU.
2. Start a registry (``tvreg-server``, SQLite under ``demo/registry``) on a free
   loopback port, create a user and an API token with ``tvreg-server admin``, and
   ``tvreg login``.
3. Write a skill project (``tvskill.toml``) per fine-tune and ``tvreg publish`` it: the
   skill is built, checked and uploaded.
4. ``tvreg init`` a copy of G as a model environment, ``tvreg search`` for skills that fit
   it, ``tvreg install`` both by name with the default weights ω = |D|/|G|, ``tvreg list``.
5. Load the result with ``transformers`` and generate a few tokens; stop the registry.

Everything lands in ``./demo`` (tvreg's data, cache and config too), so it is safe to rerun.
Tiny models show the mechanics, not merge quality; see examples/README.md.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import tomli_w
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from tiny_models import build_family  # noqa: E402


def tvreg(*args: str, input: str | None = None) -> None:
    shown = " ".join(args)
    print(f"\n$ tvreg {shown}", flush=True)
    subprocess.run([sys.executable, "-m", "tvreg.cli", *args], check=True, input=input, text=True)


def server_admin(*args: str) -> str:
    print(f"\n$ tvreg-server admin {' '.join(args)}", flush=True)
    done = subprocess.run(
        [sys.executable, "-m", "registry_server.cli", "admin", *args],
        check=True,
        capture_output=True,
        text=True,
    )
    print(done.stderr, end="", flush=True)
    return done.stdout.strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_registry(data: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    print(f"\n$ tvreg-server --data {data} --port {port} &   (log: {log})", flush=True)
    proc = subprocess.Popen(
        [sys.executable, "-m", "registry_server.cli", "--data", str(data), "--port", str(port)],
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"tvreg-server exited with status {proc.returncode}; see {log}")
        try:
            if httpx.get(f"{url}/api/v1/skills", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit(f"tvreg-server did not start within 60 s; see {log}")


def write_project(path: Path, **fields: object) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "tvskill.toml").write_text(tomli_w.dumps(fields))
    print(f"\n# {path / 'tvskill.toml'}\n{(path / 'tvskill.toml').read_text()}", end="", flush=True)
    return path


def main() -> None:
    demo = Path("demo")  # relative, so the commands read as a user would type them
    shutil.rmtree(demo, ignore_errors=True)
    demo.mkdir()
    os.environ["TVREG_DATA_DIR"] = str(demo.resolve() / "tvreg-data")
    os.environ["TVREG_CACHE_DIR"] = str(demo.resolve() / "tvreg-cache")
    os.environ["TVREG_CONFIG_DIR"] = str(demo.resolve() / "tvreg-config")
    for var in ("TVREG_REGISTRY", "TVREG_TOKEN"):
        os.environ.pop(var, None)
    print("Training a tiny θ_pre, a general model G (+3 tokens) and two skills on CPU ...", flush=True)
    fam = build_family(demo / "models", dtype=torch.bfloat16, extra_general_tokens=3, sharded_general=True)
    shutil.copytree(fam.general, demo / "mymodel")

    registry_dir = demo / "registry"
    server, url = start_registry(registry_dir, demo / "registry.log")
    try:
        server_admin("create-user", "alice", "--data", str(registry_dir))
        token = server_admin("create-token", "alice", "--name", "demo", "--data", str(registry_dir))
        print(f"{token[:8]}… (shown once; the registry stores only its hash)")
        tvreg("login", "--registry", url, "--token", "-", input=token + "\n")
        tvreg("whoami")

        for skill, size in (("science", 61000), ("coding", 22000)):
            project = write_project(
                demo / "projects" / skill,
                name=f"alice/{skill}",
                version="1.0.0",
                base="../../models/pre",  # paths are relative to the project directory
                dataset_size=size,
                description=f"tiny {skill} skill",
                license="Apache-2.0",
                build={"finetuned": f"../../models/{skill}"},
            )
            tvreg("publish", str(project))
        tvreg("info", "alice/science")

        tvreg("init", str(demo / "mymodel"), "--base", str(fam.pre), "--general-size", "275000")
        tvreg("search", "--into", str(demo / "mymodel"))
        tvreg("install", "alice/science", "alice/coding", "--into", str(demo / "mymodel"))
        tvreg("list", str(demo / "mymodel"))
    finally:
        print("\n$ kill %1   # stop the registry", flush=True)
        server.terminate()
        server.wait(timeout=30)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(demo / "mymodel")
    model = AutoModelForCausalLM.from_pretrained(demo / "mymodel")
    ids = tok("User: Say hello.\nBot:", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id)
    print(f"\nThe merged model loads in transformers ({model.dtype}) and generates: {tok.decode(out[0])!r}")
    print(f"Done. Everything is under {demo.resolve()}.")


if __name__ == "__main__":
    main()
