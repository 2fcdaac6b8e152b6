"""The model card (``README.md``) of a model environment, written with ``huggingface_hub``.

Why: a merged model pushed to the Hub should say what it is made of. The card's
metadata lists G and every installed skill under ``base_model`` with
``base_model_relation: merge`` and the tags ``tvreg``/``task-vector``; its text holds
a table of the installed skills. tvreg owns only the part between its two markers:
the text of the card that was there before (G's own card, or what the user wrote)
is kept below it, and its metadata (license, language, ...) is kept too, so
installing never silently clobbers a README.
"""

from __future__ import annotations

import re
from pathlib import Path

from .._format.fingerprint import short
from .._format.fsutil import atomic_write_text
from .lockfile import Lock

CARD_NAME = "README.md"
BEGIN = "<!-- tvreg:begin: this section is rewritten by tvreg on every install; edit outside it -->"
END = "<!-- tvreg:end -->"
TAGS = ("tvreg", "task-vector")
_SECTION = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END) + r"\n*", re.S)
#: ``huggingface_hub.repocard.REGEX_YAML_BLOCK``: where a card's metadata block is.
_YAML_BLOCK = re.compile(r"^(\s*---(?:\r\n|\r|\n))([\S\s]*?)((?:\r\n|\r|\n)---[ \t]*(\r\n|\n|$))")


def _read_card(content: str) -> tuple[dict, str]:
    """The metadata and text of a card, as ``huggingface_hub.ModelCard(content, ignore_metadata_errors=True)``
    reads them.

    Why not ``ModelCard`` itself: importing ``huggingface_hub.repocard`` pulls in the Hub
    client (its HTTP stack, file downloads), about 0.35 CPU-s that every install paid for
    one front-matter split; :class:`~huggingface_hub.ModelCardData` alone is light.
    """
    import yaml
    from huggingface_hub.repocard_data import ModelCardData

    match = _YAML_BLOCK.search(content)
    if match is None:
        return {}, content
    data = yaml.safe_load(match.group(2))
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError("repo card metadata block should be a dict")
    return ModelCardData(**data, ignore_metadata_errors=True).to_dict(), content[match.end() :]


def general_model_id(lock: Lock) -> str:
    """How the card names G: its Hub id when known, else its weights fingerprint (never a local path)."""
    return lock.general_hub_id or lock.general_fingerprint


def _cell(text: object) -> str:
    """A Markdown table cell: ``|`` escaped and line breaks flattened, so no value can break the table."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _section(lock: Lock, general_id: str) -> str:
    lines = [
        BEGIN,
        f"# {_cell(general_id)} with task vectors",
        "",
        f"This model is `{general_id}` (weights fingerprint `{short(lock.general_fingerprint)}`) with task "
        f"vectors installed by [tvreg](https://github.com/tvreg/tvreg): θ = θ_G + Σ_k ω_k τ_k, merge method "
        f"`{lock.method}`, recomputed from pristine G on every change.",
        "",
    ]
    if lock.skills:
        lines += ["| skill | version | ω | ω from | digest |", "|---|---|---|---|---|"]
        for s in lock.skills:
            cells = (s.id, s.version, f"{s.weight:.6g}", s.weight_source, f"`{s.digest[:19]}`")
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    else:
        lines.append("No skills are installed: the weights are G's own.")
    lines += [
        "",
        f"Base model fingerprint: `{short(lock.base_fingerprint)}`. Reproduce these weights bit for bit with "
        "`tvreg sync --locked --into .` (see `tvreg.lock`).",
        END,
        "",
    ]
    return "\n".join(lines)


def write_model_card(directory: Path, lock: Lock) -> None:
    """Write ``directory/README.md`` for ``lock``, keeping the previous card's text and metadata.

    The file is replaced (temp + rename), never written through: in a staged tree it is
    a hard link to the live model's card.
    """
    general_id = general_model_id(lock)
    path = directory / CARD_NAME
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    if old.lstrip().startswith("---"):
        data, body = _read_card(old)
    else:
        data, body = {}, old
    body = _SECTION.sub("", body).strip()
    tags = [t for t in data.pop("tags", None) or [] if t not in TAGS] + list(TAGS)
    for key in ("base_model", "base_model_relation"):
        data.pop(key, None)
    from huggingface_hub.repocard_data import ModelCardData

    card_data = ModelCardData(
        base_model=[general_id] + [s.id for s in lock.skills],
        base_model_relation="merge",
        tags=tags,
        **data,
    )
    text = f"---\n{card_data.to_yaml()}\n---\n\n{_section(lock, general_id)}"
    if body:
        text += "\n" + body + "\n"
    atomic_write_text(path, text)
