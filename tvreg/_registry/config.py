"""Which registry to talk to, and with which token: ``config.toml`` plus environment overrides.

Why both: ``tvreg login`` remembers a token so later commands need no flags, while CI
sets ``TVREG_REGISTRY`` and ``TVREG_TOKEN`` and never writes a secret to disk. The
file lives at ``$XDG_CONFIG_HOME/tvreg/_registry/config.toml`` (``TVREG_CONFIG_DIR`` overrides)::

    registry = "https://registry.example.org"      # the default registry

    [tokens]
    "https://registry.example.org" = "tvr_..."     # one token per registry URL

It holds secrets, so it is written to a 0600 temporary file, fsynced and renamed over
the old one: a crash leaves the old file or the new one, and no other user can read
either. Precedence, highest first: an explicit argument, the environment, the file.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import tomli_w

from .._format.fsutil import atomic_writer
from .._util.paths import config_dir
from ..errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

CONFIG_NAME = "config.toml"
API_PREFIX = "/api/v1"


@dataclass(frozen=True)
class RegistrySettings:
    """The registry a command talks to, its token (None = anonymous), and where each came from."""

    url: str
    token: str | None
    url_source: str
    token_source: str | None


def config_path() -> Path:
    """``config.toml`` under :func:`tvreg._util.paths.config_dir`."""
    return config_dir() / CONFIG_NAME


_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]*@")


def redact_url(text: str) -> str:
    """``text`` with the credentials of every URL in it (``user:password@``) replaced by ``***@``.

    Why: a registry URL may carry basic-auth credentials; they go to the server, never to
    a message, a log, a lock file or the terminal.
    """
    return _USERINFO.sub(r"\1***@", str(text))


def normalize_url(url: str) -> str:
    """The canonical form of a registry URL: scheme and host, no trailing ``/`` or ``/api/v1``.

    Raises:
        ConfigError: the URL is not ``http://`` or ``https://`` with a host.
    """
    text = url.strip()
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ConfigError(
            f"`{redact_url(url)}` is not a registry URL.",
            hints=["give the registry's address, such as `https://registry.example.org`"],
        )
    path = parts.path.rstrip("/")
    if path.endswith(API_PREFIX):
        path = path[: -len(API_PREFIX)]
    return f"{parts.scheme}://{parts.netloc}{path}"


def load_config() -> dict:
    """The parsed ``config.toml`` (empty when there is none).

    Raises:
        ConfigError: the file exists but is not valid TOML of the expected shape.
    """
    path = config_path()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(
            f"cannot read the tvreg configuration `{path}`: {exc}.",
            hints=["fix or delete the file, then run `tvreg login` again"],
        ) from exc
    if not isinstance(data.get("registry", ""), str) or not isinstance(data.get("tokens", {}), dict):
        raise ConfigError(
            f"the tvreg configuration `{path}` has an unexpected shape.",
            hints=["fix or delete the file, then run `tvreg login` again"],
        )
    return data


def save_config(data: dict) -> Path:
    """Write ``config.toml`` atomically with mode 0600 (its directory 0700) and return its path."""
    path = config_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.parent.stat().st_mode & 0o077:  # an existing directory keeps its mode: tighten it
        os.chmod(path.parent, 0o700)
    with atomic_writer(path, permissions=0o600) as f:
        f.write(tomli_w.dumps(data).encode("utf-8"))
    return path


def resolve(registry: str | None = None, token: str | None = None) -> RegistrySettings:
    """The registry URL and token a command should use.

    Args:
        registry: an explicit URL (``--registry``); else ``TVREG_REGISTRY``; else the file's default.
        token: an explicit token; else ``TVREG_TOKEN``; else the file's token for that URL.

    Raises:
        ConfigError: no registry is configured anywhere, or the URL is malformed.
    """
    data = load_config()
    if registry:
        url, url_source = registry, "argument"
    elif os.environ.get("TVREG_REGISTRY"):
        url, url_source = os.environ["TVREG_REGISTRY"], "TVREG_REGISTRY"
    elif data.get("registry"):
        url, url_source = data["registry"], str(config_path())
    else:
        raise ConfigError(
            "no registry is configured.",
            hints=[
                "log in first: `tvreg login --registry URL`",
                "or set `TVREG_REGISTRY` (and `TVREG_TOKEN`) in the environment",
            ],
        )
    url = normalize_url(url)
    if token:
        return RegistrySettings(url, token, url_source, "argument")
    if os.environ.get("TVREG_TOKEN"):
        return RegistrySettings(url, os.environ["TVREG_TOKEN"], url_source, "TVREG_TOKEN")
    saved = data.get("tokens", {}).get(url)
    if isinstance(saved, str) and saved:
        return RegistrySettings(url, saved, url_source, str(config_path()))
    return RegistrySettings(url, None, url_source, None)


def remember_login(url: str, token: str, *, make_default: bool = True) -> Path:
    """Store ``token`` for ``url`` (and make ``url`` the default registry); returns the file's path."""
    url = normalize_url(url)
    data = load_config()
    tokens = dict(data.get("tokens", {}))
    tokens[url] = token
    data["tokens"] = tokens
    if make_default or not data.get("registry"):
        data["registry"] = url
    return save_config(data)


def forget_login(url: str) -> bool:
    """Remove the stored token for ``url``; True if there was one."""
    url = normalize_url(url)
    data = load_config()
    tokens = dict(data.get("tokens", {}))
    if tokens.pop(url, None) is None:
        return False
    data["tokens"] = tokens
    save_config(data)
    return True
