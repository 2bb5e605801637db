"""Glue for ``workflow/scripts``: log to Snakemake's ``log:`` and turn user errors into one clear line."""

from __future__ import annotations

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
