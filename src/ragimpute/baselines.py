"""Baselines the trained model must beat, behind the same ``Predictor`` protocol.

- ``AFPredictor``: P(ALT) = reference ALT frequency at every hidden site (the floor).
- ``RetrievalPredictor``: no network. The index gives the K reference haplotypes nearest to the query by
  Hamming distance on the window's observed sites; at each hidden site they are re-weighted by their
  Hamming distance to the query on the ``flank`` nearest observed sites on each side of that site
  (a local match, where haplotype sharing is decided), a mismatch r observed sites away counting
  ``decay ** (r - 1)`` (``decay = 1``: plain Hamming on the flanks). Weights are
  ``w_c = exp(-(d_c - min_c d_c) / tau)``; P(ALT) is the weighted mean of the candidates' alleles,
  shrunk towards the reference frequency by a pseudo-count ``prior``:
  ``(sum_c w_c a_c + prior * af) / (sum_c w_c + prior)``. Defaults tuned on the demo's validation split
  (benchmarks/tune_retrieval.py; README, "Imputation and evaluation").

Both handle per-row masks (a missing target call is a MASK token on one haplotype only): rows that observe
the same sites are scored together.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .predictors import WindowBatch
from .tokens import ALT, MASK, PAD, REF


class AFPredictor:
    """Dosage = 2 x reference allele frequency: what imputation without any haplotype information gives."""

    name = "af"
    k = 0  # needs no neighbours

    def predict(self, batch: WindowBatch) -> np.ndarray:
        tokens = batch.tokens
        out = np.broadcast_to(np.asarray(batch.af, dtype=np.float32), tokens.shape).copy()
        out[tokens == REF] = 0.0
        out[tokens == ALT] = 1.0
        out[tokens == PAD] = 0.0
        return out


def mask_groups(tokens: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(rows, observed columns, hidden columns) for each set of rows that hide the same sites."""
    hidden = tokens == MASK
    _, group = np.unique(np.packbits(hidden, axis=1), axis=0, return_inverse=True)
    group = np.asarray(group).ravel()
    for g in np.unique(group):
        rows = np.flatnonzero(group == g)
        t = tokens[rows[0]]
        yield rows, np.flatnonzero((t == REF) | (t == ALT)), np.flatnonzero(t == MASK)


def local_distances(mism: np.ndarray, split: np.ndarray, flank: int, decay: float) -> np.ndarray:
    """Decayed Hamming distances around split points.

    ``mism`` (..., n_obs) 0/1 mismatches at the observed sites, in order; ``split`` (n_hidden,) the
    number of observed sites left of each hidden site. A mismatch ``r`` observed sites away from the
    hidden site (r = 1 for its nearest observed neighbour on that side) counts ``decay ** (r - 1)`` if
    r <= ``flank``, else 0. Returns (..., n_hidden).
    """
    m = mism.astype(np.float32)
    n = m.shape[-1]
    if decay == 1.0:
        cum = np.zeros(m.shape[:-1] + (n + 1,), dtype=np.float32)
        np.cumsum(m, axis=-1, out=cum[..., 1:])
        lo = np.maximum(split - flank, 0)
        hi = np.minimum(split + flank, n)
        return cum[..., hi] - cum[..., lo]
    # left[i] = sum over t < i within the flank of m[t] decay^(i-1-t); right[i] likewise for t >= i.
    left = np.zeros(m.shape[:-1] + (n + 1,), dtype=np.float32)
    right = np.zeros_like(left)
    cut = np.float32(decay**flank)
    for i in range(1, n + 1):
        left[..., i] = decay * left[..., i - 1] + m[..., i - 1]
        if i - 1 - flank >= 0:
            left[..., i] -= cut * m[..., i - 1 - flank]
    for i in range(n - 1, -1, -1):
        right[..., i] = decay * right[..., i + 1] + m[..., i]
        if i + flank < n:
            right[..., i] -= cut * m[..., i + flank]
    return left[..., split] + right[..., split]


class RetrievalPredictor:
    """Distance-weighted mean of the K nearest reference haplotypes, distances local to each site."""

    name = "retrieval"

    def __init__(
        self,
        k: int = 64,
        flank: int = 32,
        decay: float = 0.9,
        tau: float = 0.25,
        prior: float = 0.05,
        batch_rows: int = 256,
    ):
        if k < 1 or flank < 0 or not 0 < decay <= 1 or tau <= 0 or prior < 0:
            raise ValueError(
                "need k >= 1, flank >= 0, 0 < decay <= 1, tau > 0, prior >= 0; got "
                f"{k}, {flank}, {decay}, {tau}, {prior}"
            )
        self.k = k
        self.flank = flank
        self.decay = decay
        self.tau = tau
        self.prior = prior
        self.batch_rows = batch_rows

    def params(self) -> dict:
        return {
            "k": self.k,
            "flank": self.flank,
            "decay": self.decay,
            "tau": self.tau,
            "prior": self.prior,
        }

    def predict(self, batch: WindowBatch) -> np.ndarray:
        tokens = batch.tokens
        if batch.neighbours.shape[1] < self.k:
            raise ValueError(
                f"retrieval baseline needs {self.k} neighbours, the batch has {batch.neighbours.shape[1]}"
            )
        out = np.zeros(tokens.shape, dtype=np.float32)
        out[tokens == ALT] = 1.0
        af = np.asarray(batch.af, dtype=np.float64)
        nbrs = batch.neighbours[:, : self.k]
        for rows_all, obs, hid in mask_groups(tokens):
            if len(hid) == 0:
                continue
            split = np.searchsorted(obs, hid)  # observed sites left of each hidden site
            prior = self.prior * af[hid]
            for a in range(0, len(rows_all), self.batch_rows):
                rows = rows_all[a : a + self.batch_rows]
                cand = batch.reference[nbrs[rows]]  # (B, K, L)
                query = tokens[rows][:, obs] == ALT  # (B, n_obs)
                mism = cand[:, :, obs].astype(bool) != query[:, None, :]
                d = local_distances(mism, split, self.flank, self.decay)  # (B, K, n_hidden)
                # Shifted by the best candidate's distance (exact after normalisation) so that the
                # prior keeps its weight relative to the best local match, however long the flank.
                d -= d.min(axis=1, keepdims=True)
                w = np.exp(d * np.float32(-1.0 / self.tau))
                num = np.einsum("bkh,bkh->bh", w, cand[:, :, hid].astype(np.float32)) + prior
                den = w.sum(axis=1) + self.prior
                out[np.ix_(rows, hid)] = num / den
        out[tokens == PAD] = 0.0
        return out
