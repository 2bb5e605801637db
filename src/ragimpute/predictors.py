"""What every imputation method answers: P(ALT) at every site of a batch of query haplotype windows.

The trained model, the retrieval-only baseline and the allele-frequency baseline all implement
``Predictor`` so that imputation, evaluation and the training metrics score them with the same code.
This module holds the protocol, the batch it is asked with, the engine's own predictor and the adapter
that serves the trained model (``load_predictor``); the baselines live in ``ragimpute.baselines``.

torch is imported only when a model is loaded: the other methods run without it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from .devices import pick_device
from .errors import ArtifactError, UnreadableArtifactError, rebuild_hint
from .tokens import ALT, MASK, REF

if TYPE_CHECKING:
    import torch


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
    returns_prior = True  # predict() is the prior unchanged: the writer may read it directly
    k = 0  # no per-window neighbours: the engine chose its own states

    def predict(self, batch: WindowBatch) -> np.ndarray:
        if batch.prior is None:
            raise ValueError("the copying method needs the engine's output (WindowBatch.prior)")
        return batch.prior


def rows_by_mask(tokens: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Groups of rows that observe the same sites, with those observed and hidden sites.

    Masks are per site, but a target with a missing call at a typed site observes one site fewer on that
    haplotype: each group gets its own forward pass (the model and the copying model need one mask).
    """
    _, group = np.unique(np.packbits(tokens == MASK, axis=1), axis=0, return_inverse=True)
    group = group.ravel()
    for g in np.unique(group):
        rows = np.flatnonzero(group == g)
        first = tokens[rows[0]]
        yield rows, np.flatnonzero((first == REF) | (first == ALT)), np.flatnonzero(first == MASK)


def observed_probabilities(tokens: np.ndarray) -> np.ndarray:
    """P(ALT) where the query says: 1 at ALT, 0 at REF (and, until predicted, at hidden and padded sites)."""
    return (tokens == ALT).astype(np.float32)


class ModelPredictor:
    """The trained model behind the ``Predictor`` protocol used by imputation and evaluation."""

    name = "model"

    def __init__(
        self,
        checkpoint: dict,
        device: torch.device,
        batch_rows: int = 32,
        site_chunk: int = 512,
        path: str = "model.pt",
    ):
        from .model import ImputationModel, ModelConfig

        self.path = str(path)
        # {chrom: site list hash and train haplotypes' digest} of what it was trained on
        self.reference: dict | None = checkpoint.get("reference")

        self.model = ImputationModel(ModelConfig(**checkpoint["model_args"])).to(device)
        self.model.load_state_dict(checkpoint["model"])
        self.model.eval()
        self.epoch = checkpoint.get("epoch")
        self.device = device
        self.batch_rows = batch_rows
        self.site_chunk = site_chunk
        # a model trained on the engine's prior gets it at imputation too (WindowBatch.prior)
        self.needs_prior = self.model.cfg.use_prior
        # Imputation retrieves as many neighbours as the model was trained with.
        self.k = int(checkpoint.get("train_config", {}).get("k", 0)) or None
        if not self.model.cfg.use_retrieval:
            self.k = 0
        # the share of the correction applied per MAF bin (0-0.5 / 0.5-1 / 1-5 / 5-50 %)
        self.correction_scale = self.model.correction_scale.tolist()

    def params(self) -> dict:
        """What the VCF header and the report record of the model: the epoch it is of, and the
        share of its correction per MAF bin (``train.correction_by_maf``)."""
        return {
            "model_epoch": self.epoch,
            "correction_by_maf": "/".join(f"{x:g}" for x in self.correction_scale),
        }

    def check_reference(self, windows_dir: str | os.PathLike) -> None:
        """Refuse to impute with a model trained on another reference than ``windows_dir``'s (other
        sites, or the same sites and samples with other haplotypes): its weights learnt that panel's
        haplotypes, and its neighbours would come from this one."""
        from .windows import DIGEST_KEY, reference_identity

        here = reference_identity(windows_dir)
        redo = (
            "Impute with the model.pt of the run that made these windows, or train one on them: "
            "`snakemake --cores all --forcerun train` in that run, with the target you ran if it "
            "was not the whole workflow (outside Snakemake: `ragimpute train --results RESULTS`)"
        )
        if not self.reference:
            raise ArtifactError(
                f"{self.path} records no reference it was trained on (trained by an earlier "
                f"version), so it cannot be checked against {windows_dir}. {redo}"
            )
        same = [
            c
            for c, r in self.reference.items()
            if r.get("site_list_hash") == here["site_list_hash"]
        ]
        if not same:
            trained = ", ".join(
                f"{c}: {r.get('site_list_hash')}" for c, r in self.reference.items()
            )
            raise ArtifactError(
                f"{self.path} was trained on other sites (site lists {trained}) than {windows_dir} "
                f"({here['site_list_hash']}): another panel, other filters, or a chromosome or "
                f"chunk it was not trained on. {redo}"
            )
        if all(self.reference[c].get(DIGEST_KEY) != here[DIGEST_KEY] for c in same):
            raise ArtifactError(
                f"{self.path} was trained on other reference haplotypes (digest "
                f"{self.reference[same[0]].get(DIGEST_KEY)}) than {windows_dir}/haplotypes/"
                f"train.parquet ({here[DIGEST_KEY]}): the same sites, another panel file. {redo}"
            )

    def predict(self, batch: WindowBatch) -> np.ndarray:
        import torch

        with torch.no_grad():
            tokens = batch.tokens
            out = observed_probabilities(tokens)
            af = torch.from_numpy(np.array(batch.af, dtype=np.float32)).to(self.device)
            pos = torch.from_numpy(np.array(batch.pos, dtype=np.int64)).to(self.device)
            use_nb = self.model.cfg.use_retrieval
            for rows_all, _, hidden in rows_by_mask(tokens):
                if len(hidden) == 0:
                    continue
                sites = torch.from_numpy(hidden).to(self.device)
                for a in range(0, len(rows_all), self.batch_rows):
                    rows = rows_all[a : a + self.batch_rows]
                    t = torch.from_numpy(tokens[rows].astype(np.int64)).to(self.device)
                    nb = dist = None
                    if use_nb:
                        nb = torch.from_numpy(batch.reference[batch.neighbours[rows]]).to(
                            self.device
                        )
                        dist = torch.from_numpy(batch.distances[rows].astype(np.float32)).to(
                            self.device
                        )
                    prior = None
                    if self.needs_prior:
                        prior = torch.from_numpy(np.asarray(batch.prior[rows], np.float32)).to(
                            self.device
                        )
                    p = self.model.predict_sites(
                        t, af, pos, nb, dist, sites, self.site_chunk, prior=prior
                    )
                    out[np.ix_(rows, hidden)] = p.cpu().numpy()
            return out


def load_predictor(
    checkpoint_path: str | os.PathLike, device: str | torch.device = "auto", **kwargs
) -> ModelPredictor:
    """Rebuild the trained model from ``model.pt`` (its own arguments are stored with the weights)."""
    import torch

    if isinstance(device, str):
        device = torch.device(pick_device(device, "impute.device"))
    if not os.path.exists(checkpoint_path):
        raise ArtifactError(f"{checkpoint_path} is missing. {rebuild_hint('train')}")
    try:
        ck = torch.load(checkpoint_path, map_location=device, weights_only=False)
    except Exception as e:  # a truncated or corrupted file: torch and pickle raise many kinds
        raise UnreadableArtifactError(
            f"{checkpoint_path} cannot be read ({type(e).__name__}: {str(e).strip()[:300]}): it is "
            f"corrupt or truncated. {rebuild_hint('train')}"
        ) from e
    for key in ("model", "model_args"):
        if key not in ck:
            raise ValueError(
                f"{checkpoint_path} is not a ragimpute model (no {key!r}); use results/model/model.pt"
            )
    from .checkpoint import verify_weights

    broken = verify_weights(ck, checkpoint_path)
    if broken:
        raise UnreadableArtifactError(f"{broken}. {rebuild_hint('train')}")
    return ModelPredictor(ck, device, path=str(checkpoint_path), **kwargs)
