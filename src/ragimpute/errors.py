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


class MaskMismatchError(RuntimeError):
    """An index was asked to answer queries tokenized with another mask."""


class ArtifactError(RuntimeError):
    """A pipeline artifact is missing, stale or from an incompatible format version."""
