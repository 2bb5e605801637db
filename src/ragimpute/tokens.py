"""Tokenization: haplotype alleles under a mask become REF / ALT / MASK tokens (PAD pads short windows).

Each split's table is ``tokens/<chrom>/<mask hash>/<split>.parquet`` with the same row layout as the
haplotype tables (one row group per window), a ``mask_hash`` column, the hash again in the schema
metadata, and a ``vocab.json`` sidecar.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import write_json
from .errors import ArtifactError, MaskMismatchError
from .masks import Mask
from .windows import DIGEST_KEY, WindowedTable, haplotypes_digest, write_windowed

FORMAT_VERSION = 1
PAD, MASK, REF, ALT = 0, 1, 2, 3
VOCAB = {"PAD": PAD, "MASK": MASK, "REF": REF, "ALT": ALT}


def tokenize_block(alleles: np.ndarray, masked: np.ndarray) -> np.ndarray:
    """alleles (n_hap, L) 0/1 and masked (L,) bool -> tokens (n_hap, L) uint8."""
    return np.where(masked[None, :], np.uint8(MASK), alleles.astype(np.uint8) + np.uint8(REF))


def tokenize(
    haplotypes_path: str | os.PathLike,
    windows: pd.DataFrame,
    mask: Mask,
    out_path: str | os.PathLike,
) -> None:
    haps = WindowedTable(haplotypes_path, "alleles")
    if haps.metadata.get("site_list_hash") != mask.site_list_hash:
        raise ArtifactError(
            f"{haplotypes_path} has site list {haps.metadata.get('site_list_hash')}, the mask "
            f"{mask.hash} was made for {mask.site_list_hash}; re-run windowing and masking"
        )
    bounds = windows[["first_site", "last_site"]].to_numpy()

    def blocks():
        for w, block in haps:
            a, b = bounds[w, 0], bounds[w, 1] + 1
            yield tokenize_block(block, mask.masked[a:b])

    meta = {
        "mask_hash": mask.hash,
        "site_list_hash": mask.site_list_hash,
        "split": haps.metadata.get("split", ""),
        DIGEST_KEY: haplotypes_digest(haps),  # what an index built from these tokens holds
        "format_version": FORMAT_VERSION,
        "vocab": json.dumps(VOCAB),
    }
    write_windowed(out_path, blocks(), "tokens", haps.samples, meta, {"mask_hash": mask.hash})
    write_json(Path(out_path).parent / "vocab.json", VOCAB)


class TokenTable(WindowedTable):
    """A token table that knows its mask hash."""

    def __init__(self, path: str | os.PathLike):
        super().__init__(Path(path), "tokens")
        if "mask_hash" not in self.metadata:
            # e.g. a haplotype table passed where tokens belong: same layout, no mask
            raise ArtifactError(
                f"{path} is not a token table (it carries no mask hash); give the output of "
                "`ragimpute tokenize` (results/tokens/<chrom>/<mask hash>/<split>.parquet)"
            )
        if int(self.metadata.get("format_version", -1)) != FORMAT_VERSION:
            raise ArtifactError(
                f"{path}: token format {self.metadata.get('format_version')}, expected {FORMAT_VERSION}"
            )
        self.mask_hash: str = self.metadata["mask_hash"]
        self.site_list_hash: str = self.metadata["site_list_hash"]
        self.split: str = self.metadata.get("split", "")

    def require_mask(self, mask_hash: str, what: str = "this index") -> None:
        if mask_hash != self.mask_hash:
            raise MaskMismatchError(
                f"{self.path} was tokenized with mask {self.mask_hash}, but {what} was built with mask "
                f"{mask_hash}. Query and index must use the same mask: tokenize the queries with mask "
                f"{mask_hash} (Snakemake does this when you run the workflow)"
            )


def alleles_from_tokens(tokens: np.ndarray) -> np.ndarray:
    """Observed alleles back from tokens; hidden and padded positions become -1."""
    out = np.full(tokens.shape, -1, dtype=np.int8)
    out[tokens == REF] = 0
    out[tokens == ALT] = 1
    return out


def run_tokenize_stage(
    windows_dir: str | os.PathLike,
    mask_store: str | os.PathLike,
    mask_hash: str,
    split: str,
    out_path: str | os.PathLike,
) -> None:
    from .masks import load_mask
    from .windows import load_windows

    mask = load_mask(mask_store, mask_hash)
    tokenize(
        Path(windows_dir) / "haplotypes" / f"{split}.parquet",
        load_windows(windows_dir),
        mask,
        out_path,
    )
