"""Atomic writes: every artifact appears whole or not at all (temp file + rename); checked reads.

Parquet artifacts are written with a CRC32 checksum on every page (Parquet's own page checksums) and
read with their verification on, so that a flipped byte in a data page is an error, not a silently
different table; read errors of any kind name the file and the command that rebuilds it.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import ArtifactError, UnreadableArtifactError, rebuild_hint

# Temporary files and directories are written beside their destination and named
# ``.<name>.tmp~<host>~<pid>~<random><suffix>``, so that the leftovers of a killed job (SIGKILL, a node
# lost, a time limit: no ``finally`` runs) are recognised and removed when the same output is written
# again: those of a process of this host that no longer runs, and those of other hosts (a cluster
# job that ran elsewhere) untouched for STALE_OTHER_HOST_S.
_TMP = ".tmp~"
STALE_OTHER_HOST_S = 24 * 3600


def _host() -> str:
    return socket.gethostname().replace("~", "_").replace("/", "_") or "host"


def _temp_prefix(path: Path) -> str:
    return f".{path.name}{_TMP}{_host()}~{os.getpid()}~"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files and directories that killed writers of ``path`` left beside it;
    returns what was removed. Temporaries of live writers are left alone."""
    path = Path(path)
    start = f".{path.name}{_TMP}"
    removed = []
    for tmp in path.parent.glob(glob.escape(start) + "*"):
        host, _, rest = tmp.name[len(start) :].partition("~")
        pid = rest.partition("~")[0]
        if not pid.isdigit():
            continue
        try:
            if host == _host():
                stale = not _pid_alive(int(pid))
            else:
                stale = time.time() - tmp.lstat().st_mtime > STALE_OTHER_HOST_S
            if not stale:
                continue
            if tmp.is_dir() and not tmp.is_symlink():
                shutil.rmtree(tmp)
            else:
                tmp.unlink()
        except FileNotFoundError:  # removed meanwhile by another writer
            continue
        removed.append(tmp)
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    ``suffix`` keeps extensions that writers look at (``.vcf.gz``) on the temporary name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(path), suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_umask())
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; it replaces ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        old = None
        if path.is_dir() and not path.is_symlink():
            # moved aside whole before the new one goes in, and only then removed: a kill while
            # it is being removed leaves a leftover beside ``path``, not part of it at ``path``
            old = Path(tempfile.mkdtemp(prefix=_temp_prefix(path), dir=path.parent))
            os.replace(path, old)  # onto an empty directory: allowed
        elif path.exists() or path.is_symlink():
            path.unlink()
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


@contextlib.contextmanager
def scratch_dir(path: str | os.PathLike) -> Iterator[Path]:
    """A scratch directory beside ``path`` for its writer (removed afterwards, or as a leftover the
    next time ``path`` is written)."""
    tmp = new_scratch_dir(path)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def new_scratch_dir(path: str | os.PathLike) -> Path:
    """A new scratch directory beside ``path``, named for this host and process, after removing
    those that killed processes left there (the caller removes it when done)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path)
    return Path(tempfile.mkdtemp(prefix=_temp_prefix(path), dir=path.parent))


def _umask() -> int:
    # mkstemp/mkdtemp create private files; published artifacts get the user's usual permissions.
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks (model checkpoints can be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_parquet(
    path: str | os.PathLike, table: pa.Table, metadata: dict[str, str] | None = None
) -> None:
    """Write a Parquet table atomically; ``metadata`` goes into the schema (key/value strings)."""
    if metadata:
        merged = dict(table.schema.metadata or {})
        merged.update({k.encode(): str(v).encode() for k, v in metadata.items()})
        table = table.replace_schema_metadata(merged)
    with atomic_path(path, suffix=".parquet") as tmp:
        pq.write_table(table, tmp, **PARQUET_WRITE)


def write_tsv(path: str | os.PathLike, df) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, sep="\t", index=False)


def parquet_metadata(path: str | os.PathLike, stage: str | None = None) -> dict[str, str]:
    with reading(path, stage):
        md = pq.read_schema(path).metadata or {}
    return {k.decode(): v.decode() for k, v in md.items() if not k.startswith(b"pandas")}


# -- checked reads --------------------------------------------------------------------------------

# Every Parquet artifact: zstd, and a CRC32 per page that readers verify.
PARQUET_WRITE = {"compression": "zstd", "write_page_checksum": True}
# What the libraries raise on a truncated, corrupted or foreign file (json: ValueError; faiss:
# RuntimeError; pyarrow: OSError and ArrowException; gzip: EOFError and zlib.error; npz: BadZipFile).
_READ_ERRORS = (
    OSError,
    EOFError,
    ValueError,
    RuntimeError,
    pa.ArrowException,
    zlib.error,
    zipfile.BadZipFile,
)


@contextlib.contextmanager
def reading(path: str | os.PathLike, stage: str | None = None) -> Iterator[None]:
    """Read ``path`` inside this block: a library's error becomes an ArtifactError that names the
    file, says what is wrong and how to make it again (``stage``: the stage that writes it)."""
    try:
        yield
    except ArtifactError:
        raise
    except FileNotFoundError as e:
        raise UnreadableArtifactError(f"{path} is missing. {rebuild_hint(stage or '')}") from e
    except _READ_ERRORS as e:
        raise UnreadableArtifactError(
            f"{path} cannot be read ({type(e).__name__}: {str(e).strip()[:300]}): it is corrupt or "
            f"truncated. {rebuild_hint(stage or '')}"
        ) from e


def open_parquet(path: str | os.PathLike, stage: str | None = None) -> pq.ParquetFile:
    """A ParquetFile whose reads verify the page checksums (wrap reads in ``reading``)."""
    with reading(path, stage):
        return pq.ParquetFile(path, page_checksum_verification=True)


def read_parquet(
    path: str | os.PathLike, stage: str | None = None, columns: list[str] | None = None
) -> pa.Table:
    """The whole table (or ``columns``), page checksums verified."""
    with reading(path, stage):
        return pq.read_table(path, columns=columns, page_checksum_verification=True)


def read_parquet_df(
    path: str | os.PathLike, stage: str | None = None, columns: list[str] | None = None
):
    """``read_parquet`` as a pandas DataFrame (as ``pandas.read_parquet`` makes it)."""
    import pandas as pd

    with reading(path, stage):
        return pd.read_parquet(path, columns=columns, page_checksum_verification=True)


def read_artifact_json(path: str | os.PathLike, stage: str | None = None) -> Any:
    with reading(path, stage):
        return json.loads(Path(path).read_text())
