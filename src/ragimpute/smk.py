"""Glue for ``workflow/scripts``: log to Snakemake's ``log:`` and turn user errors into one clear line."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from .cli import USER_ERRORS
from .logs import log, setup_logging


def run(snakemake: Any, fn: Callable[..., Any], **kwargs: Any) -> Any:
    setup_logging(snakemake.log[0] if snakemake.log else None)
    log.info("rule %s: %s", snakemake.rule, ", ".join(f"{k}={v}" for k, v in kwargs.items()))
    try:
        return fn(**kwargs)
    except USER_ERRORS as e:
        log.error("%s", e)
        sys.exit(1)


def config_problems(config: dict, schema_path: str | os.PathLike) -> list[str]:
    """What is wrong with a workflow config, one short line per problem (empty: nothing).

    Snakemake's own validation prints the whole schema after the first error; this names the key
    (``train.model.d_modle``), says what is wrong and, for a misspelt key, which key was meant.
    """
    import difflib

    import jsonschema

    from .schema import read_yaml

    schema = read_yaml(schema_path)
    validator = jsonschema.Draft202012Validator(schema)
    out = []
    seen = set()
    for err in sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.path))):
        where = ".".join(map(str, err.absolute_path))
        if err.validator == "additionalProperties":
            known = list(err.schema.get("properties", {}))
            given = err.instance if isinstance(err.instance, dict) else {}
            for key in sorted(set(given) - set(known)):
                name = f"{where}.{key}" if where else str(key)
                guess = difflib.get_close_matches(str(key), known, n=1)
                hint = f"did you mean {guess[0]!r}?" if guess else f"known keys: {', '.join(known)}"
                out.append(f"unknown config key {name!r} ({hint})")
            continue
        if where in seen:  # one line per key: e.g. an empty `results` fails minLength and pattern
            continue
        seen.add(where)
        message = err.message
        if err.validator in ("minLength", "pattern") and "description" in err.schema:
            message = f"{err.instance!r} is not allowed: {err.schema['description']}"
        out.append(f"config key {where or '(top level)'!r}: {message}")
    return out
