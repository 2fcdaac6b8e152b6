"""Turning registry data into inert HTML: the Jinja2 environment, the Markdown renderer, text filters.

Everything a publisher wrote (names, descriptions, cards, yank reasons) is hostile until
shown otherwise. Jinja2 autoescapes every value; :func:`inert` also makes terminal escape
sequences and bidirectional overrides visible instead of letting them act, and cuts text
over a bound so a 1 MB description cannot make a page 1 MB. Cards are CommonMark rendered
by markdown-it-py with raw HTML off, links limited to http(s), mailto and relative targets,
and ``rel="nofollow noopener"`` on every link.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote

import yaml
from jinja2 import Environment, FileSystemLoader, select_autoescape
from markdown_it import MarkdownIt
from markdown_it.renderer import RendererHTML
from markupsafe import Markup

TEMPLATES = Path(__file__).parent / "templates"
MAX_TEXT = 4000
MAX_FRONT_MATTER = 16 * 1024

# C0 controls but tab and newline, DEL, C1 controls, and the Unicode bidi embeddings,
# overrides and isolates: shown as ⟨U+XXXX⟩ so none of them can reorder or recolour text.
_HIDDEN = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\ufeff]")
_SAFE_SCHEMES = ("http:", "https:", "mailto:")


def _visible(m: re.Match[str]) -> str:
    return f"⟨U+{ord(m.group(0)):04X}⟩"


def inert(value: Any, limit: int = MAX_TEXT) -> str:
    """``value`` as text with control and bidi characters made visible, cut at ``limit`` characters."""
    text = "" if value is None else str(value)
    cut = len(text) > limit
    text = _HIDDEN.sub(_visible, text[:limit])
    return text + (f"… (cut at {limit} characters)" if cut else "")


def _safe_link(url: str) -> bool:
    target = _HIDDEN.sub("", url).strip().lower()
    if ":" not in target.split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]:
        return True  # relative: no scheme before the first / ? #
    return target.startswith(_SAFE_SCHEMES)


def _markdown() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "linkify": False})
    md.validateLink = _safe_link  # type: ignore[method-assign]

    def link_open(_renderer: Any, tokens: Any, idx: int, options: Any, env: Any) -> str:
        tokens[idx].attrSet("rel", "nofollow noopener")
        return cast(RendererHTML, md.renderer).renderToken(tokens, idx, options, env)  # the "commonmark" preset

    md.add_render_rule("link_open", link_open)
    return md


_MD = _markdown()


def split_front_matter(text: str) -> tuple[dict[str, str], str]:
    """The YAML front matter of a card as flat strings (empty when absent or not a mapping), and the body."""
    if not text.startswith("---\n"):
        return {}, text
    end = text.find("\n---", 4)
    if end < 0 or end > MAX_FRONT_MATTER:
        return {}, text
    head, body = text[4:end], text[end + 4 :].lstrip("-").lstrip("\n")
    try:
        data = yaml.safe_load(head)
    except yaml.YAMLError:
        return {}, text
    if not isinstance(data, dict):
        return {}, body
    flat = {}
    for key, value in list(data.items())[:50]:
        if isinstance(value, list):
            value = ", ".join(str(v) for v in value)
        flat[str(key)] = str(value)
    return flat, body


def markdown(text: str) -> Markup:
    """A card's Markdown as HTML: raw HTML shown as text, unsafe links dropped, every link nofollow."""
    return Markup(_MD.render(_HIDDEN.sub(_visible, text)))


def seg(value: Any) -> str:
    """One URL path segment, every reserved character escaped."""
    return quote(str(value), safe="")


def human_size(n: int | None) -> str:
    if n is None:
        return "—"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1000 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{n} B"


def profile_svg(norms: dict[str, float], *, width: int = 640, bar: int = 14) -> Markup:
    """The per-layer ‖τ‖ profile as an inline SVG bar chart (no script, no style attribute)."""
    if not norms:
        return Markup("")
    top = max(norms.values()) or 1.0
    label_w = 220
    rows = []
    for i, (layer, value) in enumerate(norms.items()):
        y = i * (bar + 4)
        w = 0 if not math.isfinite(value) else max(1, int((width - label_w - 80) * value / top))
        rows.append(
            Markup(
                '<g><text x="0" y="{ty}" class="lbl">{layer}</text>'
                '<rect x="{x}" y="{y}" width="{w}" height="{h}" class="bar"><title>{layer}: {v}</title></rect>'
                '<text x="{tx}" y="{ty}" class="val">{v}</text></g>'
            ).format(
                ty=y + bar - 3,
                layer=inert(layer, 60),
                x=label_w,
                y=y,
                w=w,
                h=bar,
                tx=label_w + w + 4,
                v=f"{value:.4g}",
            )
        )
    height = len(norms) * (bar + 4)
    return Markup(
        '<svg class="profile" role="img" aria-label="per-layer norm of the task vector" '
        'xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}">{rows}</svg>'
    ).format(w=width, h=height, rows=Markup("").join(rows))


def environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(TEMPLATES),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(inert=inert, seg=seg, size=human_size, markdown=markdown, profile_svg=profile_svg)
    env.globals["inf"] = math.inf
    return env
