"""The merge parameters' one table: the CLI offers exactly what the library accepts, each flag with its help and defaults."""

from __future__ import annotations

import inspect
import re

from click.testing import CliRunner

from tvreg._merge import METHODS, get_method
from tvreg._merge.params import REQUIRED, flag
from tvreg.cli import main
from tvreg.cli.models import install


def _shown(default: object) -> str:
    if default is REQUIRED:
        return "required"
    if default is None:
        return "optional"
    if isinstance(default, bool):
        return "on" if default else "off"
    return str(default)


def _library_params() -> dict[str, dict[str, str]]:
    """parameter → {method: default as help shows it}, read from the methods themselves."""
    table: dict[str, dict[str, str]] = {}
    for method in METHODS:
        for name, spec in get_method(method).params.items():
            table.setdefault(name, {})[method] = _shown(spec.default)
    return table


def _help_defaults(help_text: str, name: str) -> dict[str, str]:
    """The ``[method: default; …]`` bracket printed after ``name``'s flag, as {method: default}."""
    text = " ".join(help_text.split())
    opt = re.escape(flag(name))
    found = re.search(rf"(?:^| ){opt}(?:[ /]\S+)*? .*?\[([^\]]*)\]", text)
    assert found, f"{flag(name)} with its defaults is missing from `tvreg install --help`:\n{help_text}"
    defaults: dict[str, str] = {}
    for group in found.group(1).split("; "):
        methods, _, shown = group.rpartition(": ")
        for method in methods.split(", "):
            defaults[method] = shown
    return defaults


def test_every_parameter_of_every_method_is_in_install_help_with_its_default():
    res = CliRunner().invoke(main, ["install", "--help"], terminal_width=100)
    assert res.exit_code == 0, res.output
    for name, per_method in _library_params().items():
        assert _help_defaults(res.output, name) == per_method, name


def test_library_and_cli_accept_the_same_parameters():
    """The flags `install` passes on as ``method_params`` are exactly the methods' parameters.

    (test_install_methods.py's CLI test shows the values reach ``tvreg.lock``.)
    """
    named = set(inspect.signature(install.callback).parameters) - {"method_params"}
    cli = {p.name for p in install.params if p.expose_value} - named  # scope options (--hub-endpoint) pass nothing on
    assert cli == set(_library_params())
    assert all(p.opts[0] == flag(p.name) for p in install.params if p.name in cli)

