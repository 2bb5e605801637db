"""The configuration schema, ``config/schema.yaml``: the one place where a setting's default lives.

The workflow validates its config against it (and fills in its defaults); the command line takes its
defaults from it; ``tests/test_schema_defaults.py`` holds the dataclasses that have defaults of their
own (``TrainConfig``, ``EngineParams``, ...) to it.

The schema is read from the checkout the package is installed from (``pip install -e .``), beside
``src/``; a copy of the package without its checkout has no defaults to offer and says so.
"""

from __future__ import annotations

import copy
import functools
import os
from pathlib import Path
from typing import Any

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "config" / "schema.yaml"


def read_yaml(path: str | os.PathLike) -> Any:
    """A YAML file, through libyaml where PyYAML has it (the schema takes 0.3 s in pure Python)."""
    import yaml

    return yaml.load(Path(path).read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


@functools.cache
def load_schema() -> dict:
    if not SCHEMA_PATH.is_file():
        raise FileNotFoundError(
            f"{SCHEMA_PATH} is missing: ragimpute takes its defaults from the config/schema.yaml of "
            "the repository it is installed from; install it from a checkout (pip install -e .)"
        )
    return read_yaml(SCHEMA_PATH)


def _node(path: str) -> dict:
    node = load_schema()
    for key in path.split("."):
        node = node["properties"][key]
    return node


def default(path: str) -> Any:
    """The default of one setting, e.g. ``default("windows.length")`` (a copy: the schema is shared)."""
    return copy.deepcopy(_node(path)["default"])


def choices(path: str) -> list:
    """The values a setting may take (its ``enum``), e.g. ``choices("index.kind")``."""
    return list(_node(path)["enum"])


def section_defaults(section: str) -> dict[str, Any]:
    """Every setting of a section that has a default, e.g. ``section_defaults("engine")``."""
    props = _node(section)["properties"]
    return {k: copy.deepcopy(v["default"]) for k, v in props.items() if "default" in v}
