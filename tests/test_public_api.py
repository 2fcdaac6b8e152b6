"""The public surface is exactly ``tvreg.__all__`` and it is cheap to import (httpx's exported-members test).

* ``__all__`` is sorted and equals the public names the package holds once every name was
  loaded, and again once every tvreg module was imported (``install``, ``check``, … stay functions);
* the public modules are exactly ``tvreg``, ``tvreg.errors``, ``tvreg.taskvector``, ``tvreg.cli``
  and ``tvreg.kernels``: everything else lives in ``_``-private packages, with no alias modules;
* every :class:`~tvreg.errors.TvregError` subclass is exported, from ``tvreg`` and from
  ``tvreg.errors``, so a class added to the tree without exporting it fails here;
* ``import tvreg, tvreg.cli`` and the commands that touch no tensor leave torch unloaded,
  and no tvreg module loads the server stack (``pip install tvreg`` does not install it).

Each check of ``sys.modules`` runs in a fresh interpreter: this test process has long
imported torch.
"""

from __future__ import annotations
import __future__

import json
import subprocess
import sys

import pytest
from helpers import subprocess_env

import tvreg
import tvreg.errors

SERVER_PACKAGES = ("alembic", "fastapi", "psycopg", "registry_server", "sqlalchemy", "starlette", "uvicorn")


def _python(code: str, *args: str) -> str:
    res = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=subprocess_env(), timeout=120
    )
    assert res.returncode == 0, res.stderr
    return res.stdout


def _public_members(module) -> list[str]:
    return sorted(
        name
        for name, value in vars(module).items()
        if (not name.startswith("_") or name == "__version__")
        and not isinstance(value, (type(sys), __future__._Feature))
    )


# Run in a fresh interpreter, so that nothing else has loaded a name before the lazy loader does.
_FULL_LOAD = """
import importlib, json, pkgutil, sys, types
import tvreg
before = sorted(k for k, v in vars(tvreg).items() if not k.startswith("_") and not isinstance(v, types.ModuleType))
torch_after_import = "torch" in sys.modules
for name in tvreg.__all__:
    getattr(tvreg, name)
loaded = sorted(k for k, v in vars(tvreg).items()
                if (not k.startswith("_") or k == "__version__") and not isinstance(v, types.ModuleType))
modules = [m.name for m in pkgutil.walk_packages(tvreg.__path__, "tvreg.") if not m.name.endswith("__main__")]
for name in modules:
    importlib.import_module(name)
everything = sorted(k for k, v in vars(tvreg).items()
                    if (not k.startswith("_") or k == "__version__") and not isinstance(v, types.ModuleType))
shadowed = {n: type(getattr(tvreg, n)).__name__ for n in ("install", "check", "fingerprint", "publish",
                                                           "sweep", "sync", "verify")}
server = sorted(p for p in sys.argv[1:] if p in sys.modules)
print(json.dumps(dict(before=before, torch_after_import=torch_after_import, loaded=loaded,
                      everything=everything, shadowed=shadowed, modules=len(modules), server=server,
                      names=modules)))
"""


@pytest.fixture(scope="module")
def full_load() -> dict:
    return json.loads(_python(_FULL_LOAD, *SERVER_PACKAGES))


def test_all_is_sorted_and_every_name_resolves():
    assert tvreg.__all__ == sorted(tvreg.__all__)
    assert len(set(tvreg.__all__)) == len(tvreg.__all__)
    for name in tvreg.__all__:
        assert getattr(tvreg, name) is not None, name
    assert set(tvreg.__all__) <= set(dir(tvreg))


def test_import_tvreg_loads_no_name_until_asked(full_load):
    assert full_load["before"] == []
    assert full_load["torch_after_import"] is False


def test_all_equals_the_public_names_after_a_full_lazy_load(full_load):
    assert full_load["loaded"] == tvreg.__all__


def test_importing_every_module_adds_no_public_name_and_keeps_functions_over_modules(full_load):
    assert full_load["modules"] > 50
    assert full_load["everything"] == tvreg.__all__
    assert full_load["shadowed"] == dict.fromkeys(full_load["shadowed"], "function")


PUBLIC_MODULES = {"tvreg.cli", "tvreg.errors", "tvreg.kernels", "tvreg.taskvector"}


def test_the_public_modules_are_few_and_the_rest_private(full_load):
    public = {
        name
        for name in full_load["names"]
        if not any(part.startswith("_") for part in name.split(".")[1:])
        and not name.startswith(tuple(f"{m}." for m in PUBLIC_MODULES))
    }
    assert public == PUBLIC_MODULES


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="has no attribute 'nonesuch'"):
        tvreg.nonesuch  # noqa: B018


def _tvreg_error_tree() -> list[type]:
    def walk(cls):
        return [cls, *(c for sub in cls.__subclasses__() for c in walk(sub))]

    return walk(tvreg.errors.TvregError)


def test_every_tvreg_error_is_exported_from_both_places():
    names = {cls.__name__ for cls in _tvreg_error_tree() if cls.__module__ == "tvreg.errors"}
    assert len(names) >= 33
    assert names <= set(tvreg.__all__), sorted(names - set(tvreg.__all__))
    assert sorted(names) == tvreg.errors.__all__
    for name in names:
        assert getattr(tvreg, name) is getattr(tvreg.errors, name)


def test_every_exported_exception_is_a_tvreg_error():
    for name in tvreg.__all__:
        obj = getattr(tvreg, name)
        if isinstance(obj, type) and issubclass(obj, BaseException):
            assert issubclass(obj, tvreg.TvregError), name


def test_errors_module_exports_only_its_tree():
    assert _public_members(tvreg.errors) == sorted(tvreg.errors.__all__)


def test_no_tvreg_module_loads_the_server_stack(full_load):
    assert full_load["server"] == []


_NO_TORCH_CLI = """
import sys
sys.argv = ["tvreg", *sys.argv[1:]]
try:
    from tvreg.cli import main
    main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
sys.stderr.write(f"\\nEXIT={code} TORCH={'torch' in sys.modules}\\n")
"""

NO_TENSOR_COMMANDS = [
    ["--help"],
    ["--version"],
    *[
        [cmd, "--help"]
        for cmd in ("search", "info", "login", "logout", "whoami", "yank", "unyank", "tag", "publish",
                    "install", "build", "uninstall", "upgrade", "lock", "sync", "verify", "list", "check",
                    "sweep", "init", "fingerprint", "cache")
    ],
    ["tag", "add", "--help"],
    ["cache", "list", "--help"],
    ["cache", "list"],
    ["whoami"],
]


def test_import_tvreg_and_cli_leaves_torch_unloaded():
    out = _python("import sys, tvreg, tvreg.cli; print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))")
    assert out.strip() == "[]"


@pytest.mark.parametrize("argv", NO_TENSOR_COMMANDS, ids=" ".join)
def test_commands_that_touch_no_tensor_leave_torch_unloaded(argv, tmp_path):
    env = subprocess_env()
    env.update(XDG_CONFIG_HOME=str(tmp_path / "config"), TVREG_CACHE_DIR=str(tmp_path / "cache"))
    res = subprocess.run(
        [sys.executable, "-c", _NO_TORCH_CLI, *argv], capture_output=True, text=True, env=env, timeout=120
    )
    last = res.stderr.strip().splitlines()[-1]
    expected_exit = "1" if argv == ["whoami"] else "0"  # whoami without a login: one error sentence
    assert last == f"EXIT={expected_exit} TORCH=False", res.stderr


def test_the_report_knows_which_codecs_are_lossless_without_loading_them():
    from tvreg._format.codecs import CODECS
    from tvreg._format.codecs.report import LOSSLESS_CODECS

    assert LOSSLESS_CODECS == {name for name, codec in CODECS.items() if codec.lossless}
