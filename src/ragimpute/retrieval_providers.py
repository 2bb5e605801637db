"""Where a training query's neighbours come from, one provider per ``train.mode``.

- ``token``: the mask-keyed FAISS index, precomputed by the ``retrieve`` stage;
- ``embedding``: reference haplotypes encoded by the current model, a FAISS index rebuilt at every
  refresh (each epoch, or every N steps), each refresh logged with its time and index hash;
- ``none``: no neighbours (the ablation).

A training query never retrieves its own sample; val samples are never in the index.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

from .checkpoint import state_hash
from .errors import MaskMismatchError
from .index import EmbeddingIndex
from .logs import log
from .model import ImputationModel
from .train_data import Neighbours, TrainingData, Window


class RetrievalProvider(Protocol):
    name: str

    def get(self, w: Window, mask_hash: str, split: str) -> Neighbours | None:
        """The neighbours of every haplotype of ``split`` in window ``w``, tokenized with ``mask_hash``."""
        ...


class TokenRetrieval:
    """Neighbours from the mask-keyed index (precomputed by the retrieve stage)."""

    name = "token"

    def __init__(self, tables: dict[str, dict]):
        self.tables = tables  # chrom -> {(hash, split): {window: Neighbours}}

    def get(self, w: Window, mask_hash: str, split: str) -> Neighbours:
        nb = self.tables[w.chrom][(mask_hash, split)][w.window]
        if nb.mask_hash != mask_hash:
            raise MaskMismatchError(
                f"neighbours of mask {nb.mask_hash} asked for queries of mask {mask_hash}"
            )
        return nb


class NoRetrieval:
    name = "none"

    def get(self, w: Window, mask_hash: str, split: str) -> None:
        return None


class EmbeddingRetrieval:
    """Reference haplotypes encoded by the current model; the index is rebuilt at every refresh."""

    name = "embedding"

    def __init__(self, k: int, samples: dict[str, dict[str, list[str]]], device: torch.device):
        self.k = k
        self.samples = samples  # chrom -> split -> sample names
        self.device = device
        self.current: dict[tuple[str, int, str, str], Neighbours] = {}
        self.hash: str | None = None
        self.refreshes = 0

    def refresh(
        self, model: ImputationModel, windows: list[Window], step: int, hashes: dict[str, str]
    ) -> dict:
        t0 = time.perf_counter()
        model_hash = state_hash(model)
        was_training = model.training
        model.eval()
        digest = hashlib.sha256(model_hash.encode())
        self.current = {}
        for w in windows:
            h = hashes[w.chrom]
            vec = {s: _embed(model, w, h, s, self.device) for s in ("train", "val")}
            index = EmbeddingIndex(h, model_hash, vec["train"], self.samples[w.chrom]["train"])
            digest.update(index.hash.encode())
            for split in ("train", "val"):
                rows = list(np.repeat(np.asarray(self.samples[w.chrom][split], dtype=object), 2))
                ids, dist = index.search(vec[split], rows, self.k, h, model_hash)
                self.current[(w.chrom, w.window, h, split)] = Neighbours(ids, dist, h)
        model.train(was_training)
        self.hash = digest.hexdigest()[:16]
        self.refreshes += 1
        info = {
            "refresh": self.refreshes,
            "step": step,
            "seconds": round(time.perf_counter() - t0, 3),
            "index_hash": self.hash,
            "model_hash": model_hash,
        }
        log.info(
            "embedding index refresh %d at step %d: %.1f s, index hash %s",
            self.refreshes,
            step,
            info["seconds"],
            self.hash,
        )
        return info

    def get(self, w: Window, mask_hash: str, split: str) -> Neighbours:
        return self.current[(w.chrom, w.window, mask_hash, split)]


def _embed(
    model: ImputationModel, w: Window, h: str, split: str, device: torch.device
) -> np.ndarray:
    tokens = w.tokens[(h, split)]
    af = torch.from_numpy(w.af.copy()).to(device)
    pos = torch.from_numpy(w.pos.copy()).to(device)
    out = []
    for a in range(0, len(tokens), 256):
        t = torch.from_numpy(tokens[a : a + 256].astype(np.int64)).to(device)
        out.append(model.embed(t, af, pos).float().cpu().numpy())
    return np.concatenate(out).astype(np.float32)


# ``factory(data, device)``: a provider of one's own (benchmarks reproduce a defect with one on purpose);
# ``data`` holds the run's "windows", retrieval "tables" and "samples".
ProviderFactory = Callable[[dict, torch.device], RetrievalProvider]


def make_provider(
    mode: str, k: int, data: TrainingData, device: torch.device, factory: ProviderFactory | None
) -> RetrievalProvider:
    if factory is not None:
        return factory(
            {"windows": data.windows, "tables": data.tables, "samples": data.samples}, device
        )
    if mode == "token":
        return TokenRetrieval(data.tables)
    if mode == "embedding":
        return EmbeddingRetrieval(k, data.samples, device)
    return NoRetrieval()
