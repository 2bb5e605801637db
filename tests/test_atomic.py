"""Atomic writes of directories (``ragimpute.atomic.atomic_dir``)."""

from __future__ import annotations

import shutil

import pytest

import ragimpute.atomic as atomic
from ragimpute.atomic import atomic_dir, remove_stale_temps


class _Killed(BaseException):
    """Stands for a SIGKILL: no ``except Exception`` catches it, no cleanup is expected to run."""


def _write(d, names):
    for n in names:
        (d / n).write_text(n)


def test_a_directory_is_replaced_whole(tmp_path):
    out = tmp_path / "index"
    with atomic_dir(out) as d:
        _write(d, ["a", "b"])
    with atomic_dir(out) as d:
        _write(d, ["c"])
    assert sorted(p.name for p in out.iterdir()) == ["c"]
    assert [p.name for p in tmp_path.iterdir()] == ["index"]


def test_a_failed_write_leaves_the_old_directory(tmp_path):
    out = tmp_path / "index"
    with atomic_dir(out) as d:
        _write(d, ["a", "b"])
    with pytest.raises(RuntimeError), atomic_dir(out) as d:
        _write(d, ["c"])
        raise RuntimeError("the stage failed")
    assert sorted(p.name for p in out.iterdir()) == ["a", "b"]
    assert [p.name for p in tmp_path.iterdir()] == ["index"]


def test_a_kill_while_the_old_directory_is_removed_leaves_the_new_one_whole(tmp_path, monkeypatch):
    """The old directory was removed in place before the new one was renamed in: a kill part way
    left some of the old files at the artifact's path, as if they were it."""
    out = tmp_path / "index"
    with atomic_dir(out) as d:
        _write(d, ["a", "b"])
    real = shutil.rmtree

    def killed_half_way(path, *args, **kwargs):
        files = sorted(p for p in path.iterdir())
        if files and files[0].name == "a":  # the old directory: remove one file, then die
            files[0].unlink()
            raise _Killed
        return real(path, *args, **kwargs)

    monkeypatch.setattr(atomic.shutil, "rmtree", killed_half_way)
    with pytest.raises(_Killed), atomic_dir(out) as d:
        _write(d, ["c"])
    monkeypatch.setattr(atomic.shutil, "rmtree", real)
    assert sorted(p.name for p in out.iterdir()) == ["c"]
    # the old one's remains are a leftover of this (live) process's write, named as such
    left = [p for p in tmp_path.iterdir() if p.name != "index"]
    assert len(left) == 1 and left[0].name.startswith(".index.tmp~")
    assert remove_stale_temps(out) == []  # its writer still runs
