"""Errors that users see: each names the file, the record and what to do."""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input. The message is meant to be read by a person, as is."""

    def __init__(
        self, path: object, problem: str, hint: str | None = None, record: str | None = None
    ):
        self.path = str(path)
        self.problem = problem
        self.hint = hint
        self.record = record
        msg = f"{self.path}: {problem}"
        if record:
            msg += f" (at {record})"
        if hint:
            msg += f". {hint}"
        super().__init__(msg)


class ToolError(RuntimeError):
    """An external tool the workflow runs itself (the phaser) failed or returned something unusable;
    the message names the tool, what went wrong and what to do."""


class MaskMismatchError(RuntimeError):
    """An index was asked to answer queries tokenized with another mask."""


class ArtifactError(RuntimeError):
    """A pipeline artifact is missing, stale or from an incompatible format version."""


class UnreadableArtifactError(ArtifactError):
    """A pipeline artifact is corrupt, truncated or gone: its checksum or its format does not hold."""


# How each stage's artifacts are made again: in the workflow, and outside it.
_REBUILD = {
    "split": ("split", "`ragimpute split`"),
    "window": ("window", "`ragimpute window`"),
    "mask": ("mask", "`ragimpute mask`"),
    "tokenize": ("tokenize", "`ragimpute tokenize`"),
    "index": ("index", "`ragimpute index`"),
    "retrieve": ("retrieve", "`ragimpute retrieve`"),
    "train": ("train", "`ragimpute train`"),
    "states": ("states", "delete the directory; `ragimpute impute` builds it when it is missing"),
    "prior": ("prior", "only the workflow makes it"),
    "impute": ("impute", "`ragimpute impute`"),
    "evaluate": ("evaluate", "`ragimpute evaluate`"),
    "beagle": ("beagle", "only the workflow runs it"),
    "minimac4": ("minimac4", "only the workflow runs it"),
}


def rebuild_hint(stage: str) -> str:
    """What to run to make a ``stage``'s artifact again (``window``, ``mask``, ``index``, ...)."""
    if stage not in _REBUILD:
        return "Re-run the stage that wrote it"
    rule, cli = _REBUILD[stage]
    return (
        f"Rebuild it: `snakemake --cores all --forcerun {rule}`, with the target you ran if it was "
        f"not the whole workflow (outside Snakemake: {cli}); what depends on it is then re-made as "
        "needed"
    )
