"""``tvreg key …`` and ``tvreg attest push``: signing keys, the trust list, attestations."""

from __future__ import annotations

import json
from pathlib import Path

import click
from rich.table import Table

from .app import err, main, out


@main.group()
def key():
    """Signing keys: make one, register it, trust others' keys, revoke a stolen one.

    \b
    tvreg key generate [--name release]        # ECDSA P-256, private key 0600 under the config dir
    tvreg key add ~/.config/tvreg/keys/release.pub [--team nlp-safety]
    tvreg key list [--user U | --team T | --trusted]
    tvreg key trust nlp-safety                  # pin the team's keys (or a key id, or a .pub file)
    tvreg key revoke sha256:… --reason "laptop stolen"
    """


@key.command("generate")
@click.option(
    "--name", default="default", show_default=True, help="File stem: KEYS_DIR/NAME.key and NAME.pub."
)
def key_generate(name):
    """Make a new signing key pair; print the public key and its id."""
    from .._format.signing import generate_key

    made = generate_key(name)
    err.print(
        f"Wrote the private key to {made.private_path} (mode 0600) and the public key to {made.public_path}."
    )
    out.print(made.public.pem, end="")
    out.print(made.public.id)
    err.print(
        f"[cyan]hint:[/] register it: `tvreg key add {made.public_path}`; sign with `tvreg publish --sign {name}`"
    )


@key.command("add")
@click.argument("pubfile", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--team", help="Register the key for this team (you need the admin role on it).")
@click.option("--name", default="", help="A label shown in `tvreg key list`.")
@click.option("--registry", metavar="URL")
def key_add(pubfile, team, name, registry):
    """Register the public key PUBFILE with your account (or --team) on the registry."""
    from .._registry.client import client_for
    from .._registry.trust import register_key

    with client_for(registry) as client:
        made = register_key(
            client, pubfile.read_text(encoding="utf-8", errors="replace"), team=team, name=name
        )
    owner = made.get("owner") or {}
    who = f"team {owner['team']}" if owner.get("team") else owner.get("user")
    out.print(made["key_id"])
    err.print(f"Registered {made['key_id']} for {who}.")


def _key_rows(keys: list[dict], fmt: str) -> None:
    if fmt == "json":
        out.print_json(json.dumps(keys))
        return
    table = Table(box=None, header_style="bold")
    for col in ("id", "owner", "name", "created", "revoked"):
        table.add_column(col)
    for k in keys:
        owner = k.get("owner") or {}
        revoked = (
            f"{str(k['revoked_at'])[:19]} ({k.get('revoked_reason') or ''})" if k.get("revoked_at") else ""
        )
        table.add_row(
            k.get("key_id") or k.get("id", ""),
            f"team {owner['team']}"
            if isinstance(owner, dict) and owner.get("team")
            else str(owner.get("user", "") if isinstance(owner, dict) else owner),
            str(k.get("name", "")),
            str(k.get("created_at", ""))[:19],
            revoked,
        )
    out.print(table)


@key.command("list")
@click.option("--user", help="List this user's keys (default: yours).")
@click.option("--team", help="List this team's keys.")
@click.option(
    "--trusted", is_flag=True, help="List the keys you trust (from your config), not the registry's."
)
@click.option("--registry", metavar="URL")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True)
def key_list(user, team, trusted, registry, fmt):
    """A user's or team's registered keys, revoked ones included; or your trusted keys."""
    if trusted:
        from .._registry.trust import trusted_keys

        rows = [{"key_id": k.id, "owner": k.owner, "name": k.source} for k in trusted_keys()]
        if fmt == "json":
            out.print_json(json.dumps(rows))
            return
        for r in rows:
            out.print(f"{r['key_id']}  {r['owner'] or '-'}  ({r['name']})")
        return
    from .._registry.client import client_for
    from .._registry.trust import list_keys

    with client_for(registry) as client:
        if not user and not team:
            user = client.whoami()["user"]
        keys = list_keys(client, user=user, team=team)
    _key_rows(keys, fmt)


@key.command("revoke")
@click.argument("key_id")
@click.option("--reason", required=True, help="Why: every client that lists the key sees it.")
@click.option("--registry", metavar="URL")
def key_revoke(key_id, reason, registry):
    """Revoke one of your keys (or your team's): signatures by it stop verifying anywhere it is checked."""
    from .._registry.client import client_for
    from .._registry.trust import revoke_key

    with client_for(registry) as client:
        done = revoke_key(client, key_id, reason)
    err.print(f"Revoked {done['key_id']} at {done['revoked_at']}.")


@key.command("trust")
@click.argument("spec", metavar="ID|TEAM|USER|PUBFILE")
@click.option("--registry", metavar="URL")
def key_trust(spec, registry):
    """Trust a key (by id, or a .pub file), or pin every current key of a team or user."""
    from .._registry.trust import trust

    if Path(spec).is_file():
        added = trust(spec)
    else:
        from .._registry.client import client_for

        with client_for(registry) as client:
            added = trust(spec, client=client)
    if not added:
        err.print(f"Nothing new: the keys of `{spec}` are already trusted.")
    for k in added:
        out.print(f"trusted {k.id}{f'  ({k.owner})' if k.owner else ''}")


@key.command("untrust")
@click.argument("spec", metavar="ID|TEAM|USER")
def key_untrust(spec):
    """Remove keys from your trust list, by id or by owner."""
    from .._registry.trust import untrust

    gone = untrust(spec)
    if not gone:
        raise click.ClickException(f"no trusted key matches `{spec}` (see `tvreg key list --trusted`).")
    for k in gone:
        out.print(f"untrusted {k.id}")


class TrustReport:
    """Who signed and attested one version and whether each verified against the trusted keys."""

    def __init__(self, sigs: list, atts: list, problem: str | None = None) -> None:
        self.sigs, self.atts, self.problem = sigs, atts, problem

    def as_json(self) -> dict:
        def rows(checks):
            return [
                {"key_id": c.key_id, "owner": c.owner, "status": c.status, "reason": c.reason, **c.summary}
                for c in checks
            ]

        return {"signatures": rows(self.sigs), "attestations": rows(self.atts), "problem": self.problem}

    def print(self) -> None:
        if self.problem:
            out.print(f"  {'signatures':<12} unknown ({self.problem})")
            return
        mark = {"verified": "[green]verified[/]", "untrusted": "[yellow]not verified[/]"}
        if not self.sigs:
            out.print(f"  {'signatures':<12} none (unsigned)")
        for i, c in enumerate(self.sigs):
            why = f" ({c.reason})" if c.reason and c.status != "verified" else ""
            status = mark.get(c.status, f"[red]{c.status}[/]")
            out.print(
                f"  {'signed by' if i == 0 else '':<12} {c.owner or '?'} {c.key_id[:19]}…: {status}{why}"
            )
        if not self.atts:
            out.print(f"  {'attestations':<12} none")
        for i, c in enumerate(self.atts):
            s = c.summary
            metrics = ", ".join(f"{k}={v}" for k, v in sorted((s.get("metrics") or {}).items())) or "-"
            g = s.get("general_hub_id") or str(s.get("general_fingerprint") or "?")[:12]
            why = f" ({c.reason})" if c.reason and c.status != "verified" else ""
            status = mark.get(c.status, f"[red]{c.status}[/]")
            out.print(
                f"  {'attestations' if i == 0 else '':<12} {c.owner or c.key_id[:19]} on G={g} "
                f"ω={s.get('weight')}: {metrics}  {status}{why}"
            )


def trust_report(client, ref, version: str, digest: str) -> TrustReport:
    """Judge ``ref@version``'s signatures and attestations against the user's trusted keys."""
    from .._registry.trust import check_version
    from ..errors import RegistryError

    try:
        sigs, atts = check_version(client, ref, version, digest)
    except RegistryError as exc:
        return TrustReport([], [], f"the registry could not list them: {exc.message}")
    return TrustReport(sigs, atts)


@main.group()
def attest():
    """Evaluation attestations: signed statements of what a skill measured on a G."""


@attest.command("push")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--registry", metavar="URL")
def attest_push(file, registry):
    """Upload the signed attestation FILE (from `tvreg eval --sign`) to the version it is about."""
    from .._format.signing import read_bundle
    from .._registry.client import client_for
    from .._registry.refs import parse_ref
    from .._registry.trust import push_attestation
    from ..errors import SignatureError

    data = file.read_bytes()
    try:
        unsigned = json.loads(data).get("_type") is not None
    except (ValueError, AttributeError):
        unsigned = False
    if unsigned:
        raise SignatureError(
            f"`{file}` is an unsigned statement; the registry keeps only signed attestations.",
            hints=["run `tvreg eval ... --sign KEY` to make a signed one"],
        )
    statement, _, _ = read_bundle(data, where=f"`{file}`")
    skill = (statement.get("predicate") or {}).get("skill") or {}
    if not skill.get("name") or not skill.get("version"):
        raise SignatureError(
            f"`{file}` does not say which registry skill it is about (`predicate.skill`).",
            hints=["attestations made with `tvreg eval ns/skill@version` name it"],
        )
    ref = parse_ref(f"{skill['name']}@{skill['version']}")
    with client_for(registry) as client:
        done = push_attestation(client, ref, ref.version, data)
    what = "Attached" if done["created"] else "Already attached:"
    out.print(f"{what} the attestation to {ref} (signed by {done['key_id'][:19]}…).")


@main.command("eval")
@click.argument("skill")
@click.option(
    "--into", required=True, type=click.Path(exists=True, file_okay=False), help="The model environment."
)
@click.option(
    "--eval", "eval_spec", required=True, metavar="MODULE:FN", help="Evaluation hook (as `tvreg sweep`)."
)
@click.option("--weight", type=float, help="ω to install the skill at (default: |D|/|G|).")
@click.option("--sign", "sign", metavar="KEY", help="Sign the statement with this key (name or path).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), help="Where to write it.")
@click.option("--registry", metavar="URL", help="Registry to fetch a named skill from.")
def eval_cmd(skill, into, eval_spec, weight, sign, output, registry):
    """Measure SKILL on the model's G at ω and write an in-toto evaluation statement.

    SKILL is a .tvskill file or a registry requirement (`ns/skill@1.2.0`). The model
    INTO is never changed: the skill is installed into a scratch copy. With --sign the
    statement is signed (a Sigstore bundle) and `tvreg attest push FILE` uploads it.
    """
    from .._env.evaluate import load_hook
    from .._format.fsutil import atomic_writer
    from .._format.signing import sign_statement
    from .._registry.attest import evaluate_skill
    from .._registry.fetch import fetch_for_install
    from .app import RichProgress

    hook = load_hook(eval_spec)
    if sign:
        from .._format.signing import public_key_of

        public_key_of(sign)  # a missing key fails before the evaluation, not after
    paths, sources = fetch_for_install([skill], into=into, registry=registry, progress=RichProgress())
    if len(paths) != 1:
        raise click.UsageError(f"`{skill}` needs other skills; install those first.")
    statement = evaluate_skill(paths[0], into=into, evaluate=hook, weight=weight, source=sources[0])
    data = sign_statement(statement, sign) if sign else (json.dumps(statement, indent=1) + "\n").encode()
    predicate = statement["predicate"]
    if output is None:
        stem = f"{predicate['skill']['name'].replace('/', '-')}-{predicate['skill']['version']}"
        output = Path(f"{stem}.{'attestation' if sign else 'statement'}.json")
    with atomic_writer(output) as f:
        f.write(data)
    metrics = ", ".join(f"{k}={v:g}" for k, v in sorted(predicate["metrics"].items()))
    out.print(f"{statement['subject'][0]['name']} at ω={predicate['weight']:g}: {metrics}")
    err.print(f"Wrote {'the signed attestation' if sign else 'the unsigned statement'} to {output}.")
