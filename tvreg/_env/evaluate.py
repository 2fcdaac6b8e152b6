"""Evaluation hooks: a user's ``module:function(model_dir) -> dict[str, float]`` that tvreg can call.

Why a hook and not built-in benchmarks: what "better" means for a merged model is the
user's call (a validation set, a refusal rate, a held-out loss). tvreg only needs a
number per metric to compare merge weights (``tvreg sweep``), so it loads the user's
function the way pytest plugins and uvicorn apps are named: ``package.module:function``
(importable from the current directory or the installed environment) or
``path/to/file.py:function``.
"""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ..errors import EvaluationError

EvalFn = Callable[[Path], Mapping[str, float]]


@dataclass(frozen=True)
class EvalHook:
    """A loaded evaluation hook; call it with a model directory to get its scores."""

    spec: str
    function: EvalFn

    def __call__(self, model_dir: str | os.PathLike[str]) -> dict[str, float]:
        return run_hook(self, model_dir)


def _import_module(target: str, spec: str):
    if target.endswith(".py") or os.sep in target or "/" in target:
        path = Path(target)
        if not path.is_file():
            raise EvaluationError(f"evaluation hook `{spec}`: the file `{path}` does not exist.")
        name = f"_tvreg_eval_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(name, path)
        if module_spec is None or module_spec.loader is None:
            raise EvaluationError(f"evaluation hook `{spec}`: `{path}` cannot be imported as Python.")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module
        # Sibling modules of the file import as they would when it runs as a script.
        sys.path.insert(0, str(path.resolve().parent))
        try:
            module_spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(name, None)
            raise EvaluationError(
                f"evaluation hook `{spec}`: importing `{path}` failed ({type(exc).__name__}: {exc})."
            ) from exc
        return module
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as exc:
        if exc.name and target.startswith(exc.name):
            raise EvaluationError(
                f"evaluation hook `{spec}`: no module named `{target}`.",
                hints=["run from the directory that contains it, or give a file: `path/to/file.py:function`"],
            ) from exc
        raise EvaluationError(f"evaluation hook `{spec}`: importing `{target}` failed ({exc}).") from exc
    except Exception as exc:
        raise EvaluationError(
            f"evaluation hook `{spec}`: importing `{target}` failed ({type(exc).__name__}: {exc})."
        ) from exc


def load_hook(spec: str) -> EvalHook:
    """Load ``module:function`` or ``file.py:function``.

    Raises:
        EvaluationError: the spec is malformed, the module cannot be imported, or the
            attribute is missing or not callable.
    """
    target, sep, attr = spec.rpartition(":")
    if not sep or not target or not attr:
        raise EvaluationError(
            f"`{spec}` is not an evaluation hook; expected `module:function` or `path/to/file.py:function`."
        )
    module = _import_module(target, spec)
    fn = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise EvaluationError(f"evaluation hook `{spec}`: `{target}` has no attribute `{attr}`.")
        fn = getattr(fn, part)
    if not callable(fn):
        raise EvaluationError(f"evaluation hook `{spec}`: `{attr}` is a {type(fn).__name__}, not a function.")
    return EvalHook(spec, fn)


def run_hook(hook: EvalHook, model_dir: str | os.PathLike[str]) -> dict[str, float]:
    """Call the hook on ``model_dir`` and check it returned a non-empty mapping of metric → finite float.

    Raises:
        EvaluationError: the hook raised, or returned something other than scores.
    """
    try:
        result = hook.function(Path(model_dir))
    except EvaluationError:
        raise
    except Exception as exc:
        raise EvaluationError(
            f"evaluation hook `{hook.spec}` failed on `{model_dir}` ({type(exc).__name__}: {exc})."
        ) from exc
    if not isinstance(result, Mapping) or not result:
        raise EvaluationError(
            f"evaluation hook `{hook.spec}` returned {type(result).__name__} {result!r:.60}; "
            "it must return a non-empty dict of metric name to float."
        )
    scores: dict[str, float] = {}
    for name, value in result.items():
        if not isinstance(name, str) or not name:
            raise EvaluationError(
                f"evaluation hook `{hook.spec}` returned a metric named {name!r}, not a string."
            )
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise EvaluationError(
                f"evaluation hook `{hook.spec}` returned {value!r:.60} for metric `{name}`, not a number."
            ) from None
        if not math.isfinite(number):
            raise EvaluationError(f"evaluation hook `{hook.spec}` returned {number} for metric `{name}`.")
        scores[name] = number
    return scores
