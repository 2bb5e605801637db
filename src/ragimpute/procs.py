"""Child processes die with the job that started them.

A job killed from outside (SIGKILL, an out-of-memory kill: no ``finally`` or handler runs) does not
take its children with it: a phaser, or the processes of a distributed training run, would run on,
orphaned, writing files of a job Snakemake has given up on (and that the next run makes again).
Linux's PR_SET_PDEATHSIG has the kernel kill a child when its parent dies.
"""

from __future__ import annotations

import ctypes
import functools
import os
import signal
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1


def _prctl() -> Callable | None:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return None


def _set_death_signal(prctl: Callable, parent: int | None) -> None:
    prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if parent is not None and os.getppid() != parent:  # the parent died before this ran
        os._exit(1)


def die_with_parent(parent: int | None = None) -> None:
    """In a child: be killed when the parent dies (and exit now if ``parent``, the pid it was
    started by, is already gone). Does nothing where there is no prctl."""
    prctl = _prctl()
    if prctl is not None:
        _set_death_signal(prctl, parent)


def dies_with_parent() -> Callable[[], None] | None:
    """A ``preexec_fn`` for ``subprocess``: the command dies with this process (None where there is
    no prctl). prctl is looked up here, before the fork."""
    prctl = _prctl()
    if prctl is None:
        return None
    return functools.partial(_set_death_signal, prctl, os.getpid())
