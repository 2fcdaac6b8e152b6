"""Trust end to end: a signed safety skill, an attestation, and a policy that refuses an unsigned skill.

Run after ``quickstart.py`` (``make demo`` runs both); it reuses the tiny models under ``./demo``.

1. Start a fresh registry; team ``safety`` registers a signing key (``tvreg key generate``,
   ``tvreg key add --team``) and publishes ``safety/refusal`` signed with it
   (``tvreg publish --sign``). Alice publishes ``alice/coding`` unsigned.
2. ``tvreg eval`` measures the safety skill on *this* G and signs the statement;
   ``tvreg attest push`` attaches it to the version.
3. ``demo/guarded`` gets a ``tvreg.toml`` policy: signatures required, only the safety
   team's keys trusted, the safety skill in every install, with an attested metric.
4. ``tvreg check --policy`` and ``tvreg install alice/coding`` are refused, with the reason;
   installing the safety skill through a gate succeeds and the lock records who signed it.

The metric here is a stand-in (the norm of the weights) so the demo runs in seconds; a
real hook would run a refusal benchmark and return ``refusal_rate``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from registry_session import logged_in_registry, server_admin, tvreg, write_project  # noqa: E402

HOOK = '''"""A stand-in evaluation hook: real ones run a benchmark on the model in `model_dir`."""
from safetensors.torch import load_file


def score(model_dir):
    tensors = {}
    for f in sorted(model_dir.glob("*.safetensors")):
        tensors.update(load_file(f))
    return {"norm": float(sum(t.double().pow(2).sum() for t in tensors.values()) ** 0.5)}
'''

POLICY = """[policy]
require-signature = true
trusted-keys = ["safety"]          # team names resolve to the team's registered keys
always = ["safety/refusal>=1"]     # in every install of this model

[policy.attested]
"safety/refusal" = { norm = ">0" } # a trusted attestation measured on this G must show it
"""


def refused(*args: str) -> None:
    """Run a tvreg command that the policy must refuse, and show that it did."""
    print(f"\n$ tvreg {' '.join(args)}", flush=True)
    done = subprocess.run([sys.executable, "-m", "tvreg.cli", *args])
    if done.returncode == 0:
        raise SystemExit(f"`tvreg {' '.join(args)}` should have been refused")
    print(f"(exit status {done.returncode}: refused, as the policy says)", flush=True)


def main() -> None:
    demo = Path("demo")
    if not (demo / "models" / "general").is_dir():
        raise SystemExit("run examples/quickstart.py first (it builds the tiny models under ./demo)")
    os.environ["TVREG_DATA_DIR"] = str(demo.resolve() / "tvreg-data")
    os.environ["TVREG_CACHE_DIR"] = str(demo.resolve() / "tvreg-cache")
    os.environ["TVREG_CONFIG_DIR"] = str(demo.resolve() / "trust-config")
    shutil.rmtree(demo / "trust-config", ignore_errors=True)
    shutil.rmtree(demo / "trust", ignore_errors=True)
    shutil.rmtree(demo / "guarded", ignore_errors=True)
    (demo / "trust").mkdir()
    shutil.copytree(demo / "models" / "general", demo / "guarded")
    (demo / "trust" / "score.py").write_text(HOOK)
    registry = demo / "trust" / "registry"

    print("\n== Trust: signed skills, attestations and an install policy ==", flush=True)
    with logged_in_registry(registry, demo / "trust" / "registry.log", "alice"):
        server_admin("create-team", "safety", "--data", str(registry))
        server_admin("add-member", "safety", "alice", "--role", "admin", "--data", str(registry))
        tvreg("key", "generate", "--name", "safety-release")
        tvreg("key", "add", str(demo / "trust-config" / "keys" / "safety-release.pub"), "--team", "safety")
        for name, finetuned, sign in (("safety/refusal", "science", True), ("alice/coding", "coding", False)):
            project = write_project(
                demo / "trust" / name.replace("/", "-"),
                name=name,
                version="1.0.0",
                base="../../models/pre",
                dataset_size=61000,
                description=f"tiny {name} skill",
                license="Apache-2.0",
                build={"finetuned": f"../../models/{finetuned}"},
            )
            tvreg("publish", str(project), *(["--sign", "safety-release"] if sign else []))

        tvreg("init", str(demo / "guarded"), "--base", str(demo / "models" / "pre"), "--general-size", "275000")
        attestation = demo / "trust" / "refusal.attestation.json"
        tvreg(
            "eval", "safety/refusal@1.0.0", "--into", str(demo / "guarded"),
            "--eval", str(demo / "trust" / "score.py") + ":score", "--sign", "safety-release", "-o", str(attestation),
        )  # fmt: skip
        tvreg("attest", "push", str(attestation))

        (demo / "guarded" / "tvreg.toml").write_text(POLICY)
        print(f"\n# {demo / 'guarded' / 'tvreg.toml'}\n{POLICY}", end="", flush=True)
        refused("check", "--policy", "--into", str(demo / "guarded"), "alice/coding")
        refused("install", "alice/coding", "--into", str(demo / "guarded"))
        tvreg(
            "install", "safety/refusal", "--into", str(demo / "guarded"),
            "--gate", str(demo / "trust" / "score.py") + ":score", "--require", "norm>0",
        )  # fmt: skip
        tvreg("list", str(demo / "guarded"))
        tvreg("check", "--policy", "--into", str(demo / "guarded"))
    print("Done: the guarded model holds only what its policy allows, and its lock says who signed it.")


if __name__ == "__main__":
    main()
