"""Accuracy as the field reports it: aggregate dosage r² per MAF bin, ALT-allele F1, rare-variant F1.

Aggregate r² is the squared Pearson correlation of all (site, sample) pairs of imputed dosage and true
genotype in a bin, pooled over sites (not a mean of per-site r²). The accumulator keeps exact running
sums so that batches can be added one by one (and summed across processes).
"""

from __future__ import annotations

import numpy as np

# (low, high]: the first bin includes 0 (monomorphic in the reference, present in targets).
MAF_BINS: tuple[tuple[float, float], ...] = ((0.0, 0.005), (0.005, 0.01), (0.01, 0.05), (0.05, 0.5))
BIN_LABELS: tuple[str, ...] = ("0-0.5%", "0.5-1%", "1-5%", "5-50%")
RARE_THRESHOLDS = (0.05, 0.01)


def maf_bin(maf: np.ndarray) -> np.ndarray:
    """Bin index of each MAF; 0 and MAF <= 0.005 fall in the first bin."""
    edges = np.array([b[1] for b in MAF_BINS[:-1]])
    return np.searchsorted(edges, np.asarray(maf, dtype=float), side="left")


def pearson_r2(x: np.ndarray, y: np.ndarray) -> float:
    """Squared Pearson correlation; NaN when either side is constant."""
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if len(x) < 2 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1] ** 2)


def r2_from_sums(n, sx, sy, sxx, syy, sxy) -> np.ndarray:
    """Squared Pearson correlation from running sums (scalars or arrays); NaN where a side is constant."""
    n, sx, sy, sxx, syy, sxy = (np.asarray(v, dtype=np.float64) for v in (n, sx, sy, sxx, syy, sxy))
    with np.errstate(invalid="ignore", divide="ignore"):
        vx = sxx - sx * sx / n
        vy = syy - sy * sy / n
        cov = sxy - sx * sy / n
        r2 = cov * cov / (vx * vy)
    tiny = 1e-9 * np.maximum(n, 1)
    return np.where((n >= 2) & (vx > tiny) & (vy > tiny), np.clip(r2, 0.0, 1.0), np.nan)


class Accumulator:
    """Running sums for r² per MAF bin (dosage vs genotype), F1 of the ALT allele and retrieval quality."""

    N_BINS = len(MAF_BINS)

    def __init__(self) -> None:
        self.r2 = np.zeros((self.N_BINS + 1, 6))  # per bin, then all: n, sx, sy, sxx, syy, sxy
        self.f1 = np.zeros((1 + len(RARE_THRESHOLDS), 3))  # all, then MAF < thresholds: tp, fp, fn
        self.loss = np.zeros(2)  # sum, count
        self.retrieval = np.zeros(
            4
        )  # sum of mean top-K distance, windows, best-neighbour-correct, sites

    def add(self, p_hap: np.ndarray, truth: np.ndarray, maf: np.ndarray) -> None:
        """p_hap, truth: (n_samples, 2, S) ALT probability and true allele; maf: (S,)."""
        dos = p_hap.sum(1)  # (n, S)
        gt = truth.sum(1).astype(np.float64)
        bins = maf_bin(maf)
        for b in range(self.N_BINS + 1):
            sel = slice(None) if b == self.N_BINS else bins == b
            x, y = dos[:, sel].ravel().astype(np.float64), gt[:, sel].ravel()
            self.r2[b] += (len(x), x.sum(), y.sum(), (x * x).sum(), (y * y).sum(), (x * y).sum())
        call = p_hap > 0.5
        alt = truth.astype(bool)
        for j, thr in enumerate((None, *RARE_THRESHOLDS)):
            sel = slice(None) if thr is None else maf < thr
            c, t = call[..., sel], alt[..., sel]
            self.f1[j] += ((c & t).sum(), (c & ~t).sum(), (~c & t).sum())

    def add_loss(self, loss: float, n: int) -> None:
        self.loss += (loss * n, n)

    def add_retrieval(
        self, distances: np.ndarray, best_allele: np.ndarray, truth: np.ndarray
    ) -> None:
        """distances (n_query, K); best_allele, truth (n_query, S): the nearest neighbour's allele."""
        self.retrieval += (distances.mean() * 1.0, 1, (best_allele == truth).sum(), truth.size)

    def state(self) -> np.ndarray:
        return np.concatenate([self.r2.ravel(), self.f1.ravel(), self.loss, self.retrieval])

    def load_state(self, v: np.ndarray) -> None:
        a = self.r2.size
        b = a + self.f1.size
        self.r2 = v[:a].reshape(self.r2.shape).copy()
        self.f1 = v[a:b].reshape(self.f1.shape).copy()
        self.loss = v[b : b + 2].copy()
        self.retrieval = v[b + 2 :].copy()

    def result(self, prefix: str = "") -> dict[str, float]:
        out: dict[str, float] = {}
        out[f"{prefix}loss"] = self.loss[0] / self.loss[1] if self.loss[1] else float("nan")
        for b, label in enumerate(BIN_LABELS):
            out[f"{prefix}r2_{label}"] = float(r2_from_sums(*self.r2[b]))
            out[f"{prefix}n_{label}"] = int(self.r2[b, 0])
        out[f"{prefix}r2"] = float(r2_from_sums(*self.r2[-1]))
        for j, name in enumerate(("f1", "f1_maf<5%", "f1_maf<1%")):
            tp, fp, fn = self.f1[j]
            out[f"{prefix}{name}"] = (
                2 * tp / (2 * tp + fp + fn) if (2 * tp + fp + fn) else float("nan")
            )
        d, w, ok, n = self.retrieval
        out[f"{prefix}topk_hamming"] = d / w if w else float("nan")
        out[f"{prefix}best_neighbour_correct"] = ok / n if n else float("nan")
        return out
