"""What an install policy costs: ``tvreg install --dry-run`` with and without ``tvreg.toml``.

Usage::

    python benchmarks/policy.py [--versions 5] [--repeat 5] [--workdir DIR]

One run on the same inputs: tiny models (``examples/tiny_models.py``), a registry on
loopback, one skill published in ``--versions`` signed versions plus one attestation on
the highest. Each mode runs ``tvreg install --dry-run`` ``--repeat`` times as its own
subprocess (interpreter start included, as a user sees it):

- ``baseline``: no policy (no signature is fetched or checked);
- ``policy``: ``require-signature``, a team in ``trusted-keys`` and an ``[policy.attested]``
  constraint, so every candidate's bundles are fetched and verified on the client.

Prints the median wall time of each and the ratio policy / baseline; writes
``<workdir>/results.json``. The verdicts are cached per version within one command, so
the cost grows with the versions the resolver looks at, not with the installs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

from registry_session import logged_in_registry, server_admin, tvreg  # noqa: E402


def _timed(args: list[str], repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "tvreg.cli", *args], check=True, capture_output=True)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--versions", type=int, default=5)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workdir", type=Path)
    args = parser.parse_args()
    work = (args.workdir or Path(tempfile.mkdtemp(prefix="tvreg-policy-bench-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    os.environ["TVREG_DATA_DIR"] = str(work / "data")
    os.environ["TVREG_CACHE_DIR"] = str(work / "cache")
    os.environ["TVREG_CONFIG_DIR"] = str(work / "config")
    import torch
    from tiny_models import build_family

    from tvreg._build.build import build_skill
    from tvreg._format.signing import sign_statement

    fam = build_family(work / "models", dtype=torch.float32)
    model = work / "mymodel"
    shutil.rmtree(model, ignore_errors=True)
    shutil.copytree(fam.general, model)
    with logged_in_registry(work / "registry", work / "registry.log", "alice"):
        server_admin("create-team", "nlp", "--data", str(work / "registry"))
        server_admin("add-member", "nlp", "alice", "--role", "admin", "--data", str(work / "registry"))
        tvreg("key", "generate", "--name", "nlp", quiet=True)
        tvreg("key", "add", str(work / "config" / "keys" / "nlp.pub"), "--team", "nlp", quiet=True)
        import tomli_w

        for i in range(args.versions):
            version = f"1.0.{i}"
            project = work / "projects" / version
            project.mkdir(parents=True, exist_ok=True)
            artifact = build_skill(
                fam.pre, finetuned=fam.science, output=project / "s.tvskill", name="science",
                version=version, dataset_size=1000 + i,
            ).path  # fmt: skip
            (project / "tvskill.toml").write_text(
                tomli_w.dumps({"name": "nlp/science", "version": version, "artifact": str(artifact)})
            )
            tvreg("publish", str(project), "--sign", "nlp", capture=True, quiet=True)
        tvreg("init", str(model), "--base", str(fam.pre), "--general-size", "100000", capture=True, quiet=True)
        top = f"1.0.{args.versions - 1}"
        statement = work / "statement.json"
        tvreg("eval", f"nlp/science@{top}", "--into", str(model), "--eval",
              str(ROOT / "benchmarks" / "_policy_hook.py") + ":score", "-o", str(statement), capture=True,
              quiet=True)  # fmt: skip
        signed = work / "att.json"
        signed.write_bytes(sign_statement(json.loads(statement.read_text()), "nlp"))
        tvreg("attest", "push", str(signed), capture=True, quiet=True)

        install = ["install", "nlp/science", "--into", str(model), "--dry-run"]
        baseline = _timed(install, args.repeat)
        (model / "tvreg.toml").write_text(
            '[policy]\nrequire-signature = true\ntrusted-keys = ["nlp"]\n'
            '[policy.attested]\n"nlp/science" = { tensors = ">=1" }\n'
        )
        policy = _timed(install, args.repeat)
    result = {
        "versions": args.versions,
        "repeat": args.repeat,
        "baseline_median_s": statistics.median(baseline),
        "policy_median_s": statistics.median(policy),
        "ratio": statistics.median(policy) / statistics.median(baseline),
        "baseline_s": baseline,
        "policy_s": policy,
    }
    (work / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"\ninstall --dry-run of 1 skill with {args.versions} signed versions: baseline "
        f"{result['baseline_median_s']:.2f} s, policy {result['policy_median_s']:.2f} s "
        f"(×{result['ratio']:.2f}); {work / 'results.json'}"
    )


if __name__ == "__main__":
    main()
