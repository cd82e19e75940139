"""Problem lines and warnings: how every config mistake is reported to the user.

Each problem is one line, ``field.path: what is wrong; fix``. Pydantic errors are translated
into such lines here so that no pydantic traceback reaches the user. The ``validate_*`` helpers
across the config modules append their problems to a caller's list and return None on failure,
so one load reports every problem at once.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from model_deploy.runtime.config.models import INTERFACE_METHODS

# Every config module logs under the facade's name, the one users (and tests) filter on.
logger = logging.getLogger("model_deploy.runtime.config")


_MISSING_HINTS = {
    "get_method": "add get_method: one of " + ", ".join(INTERFACE_METHODS),
    "put_method": "add put_method: one of " + ", ".join(INTERFACE_METHODS),
    "variables": "add variables: {NAME: {...}}",
    "formula": 'add formula: "<expression over PV names>"',
    "img_ch": "add img_ch: <PV holding the flat image array>",
    "img_x_ch": "add img_x_ch: <PV holding the column count>",
    "img_y_ch": "add img_y_ch: <PV holding the row count>",
    "name": "add name: <PV name>",
    "type": "add type",
    "config": "add config: {...}",
    "transformers": "add transformers: {NAME: {type: ..., config: ...}}",
}


_FIELD_FIXES = {
    "rate": "give the maximum evaluations per second (a number > 0), or 0 / omit it for no limit",
    "x": "give the number of columns (a positive integer)",
    "y": "give the number of rows (a positive integer)",
}


def join_path(path: str, *parts: Any) -> str:
    """``path`` extended by ``parts`` as the user wrote it: ``a.b[0].c`` (pydantic locations welcome)."""
    text = path
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part == "[key]":  # pydantic's marker for an invalid dict key
            continue
        else:
            text = f"{text}.{part}" if text else str(part)
    return text


def short_repr(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters, so a problem line stays one readable line."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _explain(error: Mapping[str, Any]) -> str:
    kind = error["type"]
    got = error.get("input")
    ctx = error.get("ctx") or {}
    field = next((part for part in reversed(error["loc"]) if isinstance(part, str)), "")
    if kind == "missing":
        hint = _MISSING_HINTS.get(field, f"add {field}")
        return f"required but missing; {hint}"
    if kind == "literal_error":
        return f"got {short_repr(got)}; expected one of {ctx.get('expected')}"
    if kind == "value_error" and "error" in ctx:
        return str(ctx["error"])
    if kind == "too_short":
        return "must not be empty; list at least one entry"
    if kind in ("dict_type", "model_type", "model_attributes_type"):
        return f"expected a mapping, got {short_repr(got)}"
    if kind == "list_type":
        return f"expected a list, got {short_repr(got)}"
    if kind == "string_type":
        return f"expected a string, got {short_repr(got)}"
    if kind == "extra_forbidden":
        return "unknown key; remove it or check its spelling"
    fix = _FIELD_FIXES.get(field)
    message = error["msg"][0].lower() + error["msg"][1:]
    return f"{message} (got {short_repr(got)})" + (f"; {fix}" if fix else "")


def validation_problems(exc: ValidationError, path: str, remap: Callable[[tuple], str] | None = None) -> list[str]:
    """Turn a pydantic ValidationError into ``dotted.path: problem; fix`` lines."""
    problems = []
    for error in exc.errors(include_url=False):
        where = remap(error["loc"]) if remap else join_path(path, *error["loc"])
        problems.append(f"{where}: {_explain(error)}")
    return problems


def validate_pydantic(model: type[BaseModel], data: Any, path: str, problems: list[str], **remap: Any) -> Any:
    """``model.model_validate(data)``, or None after appending its problems (paths under ``path``)."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems.extend(validation_problems(exc, path, **remap))
        return None


def warn_unknown_keys(raw: Mapping[str, Any], known: Iterable[str], path: str) -> None:
    """Warn about keys of ``raw`` not in ``known``: real configs carry extras, so these never fail a load."""
    known = list(known)
    unknown = [str(key) for key in raw if key not in known]
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        logger.warning("%s: ignoring unknown key %r%s; known keys: %s", path or "config", key, hint, ", ".join(known))


def did_you_mean(value: Any, choices: Iterable[str]) -> str:
    """`` (did you mean X?)`` for the closest of ``choices``, or "" when none is close."""
    close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""

