"""Atomic writes: every artifact appears whole or not at all (temp file + rename); checked reads.

Parquet artifacts are written with a CRC32 checksum on every page (Parquet's own page checksums) and
read with their verification on, so that a flipped byte in a data page is an error, not a silently
different table; read errors of any kind name the file and the command that rebuilds it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from .errors import ArtifactError, UnreadableArtifactError, rebuild_hint


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success.

    ``suffix`` keeps extensions that writers look at (``.vcf.gz``) on the temporary name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
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
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


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
# RuntimeError; pyarrow: OSError and ArrowException).
_READ_ERRORS = (OSError, EOFError, ValueError, RuntimeError, pa.ArrowException)


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
