"""What every imputation method answers: P(ALT) at every site of a batch of query haplotype windows.

The trained model, the retrieval-only baseline and the allele-frequency baseline all implement
``Predictor`` so that imputation, evaluation and the training metrics score them with the same code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass
class WindowBatch:
    """Query haplotypes of one window with their retrieved reference haplotypes.

    ``tokens`` use the vocabulary of ``ragimpute.tokens`` (PAD, MASK, REF, ALT); hidden sites are MASK.
    ``neighbours`` index rows of ``reference`` (the train split's haplotypes in this window), nearest
    first; ``distances`` are Hamming distances on the observed sites.
    """

    window: int
    tokens: np.ndarray  # (n_query, L) uint8
    neighbours: np.ndarray  # (n_query, K) int64
    distances: np.ndarray  # (n_query, K) float32
    reference: np.ndarray  # (n_ref, L) uint8 alleles 0/1
    af: np.ndarray  # (L,) float reference ALT allele frequency
    pos: np.ndarray  # (L,) int64 positions (bp)
    mask_hash: str
    # (n_query, L) P(ALT) from the copying-model engine, for predictors that refine it (``needs_prior``)
    prior: np.ndarray | None = None

    def neighbour_alleles(self) -> np.ndarray:
        """(n_query, K, L) uint8 alleles of the retrieved haplotypes."""
        return self.reference[self.neighbours]


class Predictor(Protocol):
    name: str
    # predictors that set ``needs_prior = True`` get the engine's P(ALT) in ``WindowBatch.prior``

    def predict(self, batch: WindowBatch) -> np.ndarray:
        """(n_query, L) float32 probability of the ALT allele at every site."""
        ...


class PriorPredictor:
    """``copying``: the engine's own P(ALT) (Li and Stephens' copying model on composite states over
    the whole chromosome; ``ragimpute.engine``), with no network on top."""

    name = "copying"
    needs_prior = True
    k = 0  # no per-window neighbours: the engine chose its own states

    def predict(self, batch: WindowBatch) -> np.ndarray:
        if batch.prior is None:
            raise ValueError("the copying method needs the engine's output (WindowBatch.prior)")
        return batch.prior
