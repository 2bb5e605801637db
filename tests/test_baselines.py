"""Baseline predictors against independent, loop-based implementations."""

from __future__ import annotations

import numpy as np
import pytest

from ragimpute.baselines import AFPredictor, RetrievalPredictor, local_distances
from ragimpute.predictors import WindowBatch
from ragimpute.tokens import ALT, MASK, PAD, REF


def random_batch(seed=0, n_query=7, n_ref=30, L=60, K=10, hidden_frac=0.7, per_row_missing=True):
    rng = np.random.default_rng(seed)
    reference = (rng.random((n_ref, L)) < 0.3).astype(np.uint8)
    # Queries copy a reference haplotype with a few changes, as real ones share haplotypes.
    truth = reference[rng.integers(0, n_ref, n_query)].copy()
    flips = rng.random(truth.shape) < 0.05
    truth[flips] ^= 1
    hidden = rng.random(L) < hidden_frac
    tokens = np.where(hidden[None, :], MASK, truth + REF).astype(np.uint8)
    if per_row_missing:  # a missing call: hidden on one haplotype only
        tokens[1, np.flatnonzero(~hidden)[:2]] = MASK
    tokens[:, -3:] = PAD  # a short last window
    neighbours = np.stack([rng.permutation(n_ref)[:K] for _ in range(n_query)])
    af = reference.mean(axis=0)
    return WindowBatch(
        window=0,
        tokens=tokens,
        neighbours=neighbours,
        distances=np.zeros((n_query, K), np.float32),
        reference=reference,
        af=af,
        pos=np.arange(L) * 100,
        mask_hash="0" * 16,
    )


def naive_retrieval(batch, k, flank, decay, tau, prior):
    """Per query row, per hidden site: walk outwards over the row's own observed sites."""
    tok = batch.tokens
    out = np.zeros(tok.shape)
    out[tok == ALT] = 1
    for r in range(tok.shape[0]):
        obs = [j for j in range(tok.shape[1]) if tok[r, j] in (REF, ALT)]
        q = {j: int(tok[r, j] == ALT) for j in obs}
        cands = batch.reference[batch.neighbours[r, :k]]
        for j in range(tok.shape[1]):
            if tok[r, j] != MASK:
                continue
            left = [o for o in obs if o < j][::-1][:flank]
            right = [o for o in obs if o > j][:flank]
            d = np.zeros(k)
            for side in (left, right):
                for rank, o in enumerate(side):
                    d += (cands[:, o] != q[o]) * decay**rank
            w = np.exp(-(d - d.min()) / tau)
            out[r, j] = ((w * cands[:, j]).sum() + prior * batch.af[j]) / (w.sum() + prior)
    out[tok == PAD] = 0
    return out


@pytest.mark.parametrize(
    "k,flank,decay,tau,prior",
    [
        (10, 3, 1.0, 1.0, 0.0),
        (10, 32, 0.9, 0.25, 0.05),
        (4, 0, 1.0, 0.5, 0.1),
        (10, 5, 0.5, 2.0, 1.0),
    ],
)
def test_retrieval_matches_a_naive_implementation(k, flank, decay, tau, prior):
    batch = random_batch()
    got = RetrievalPredictor(
        k=k, flank=flank, decay=decay, tau=tau, prior=prior, batch_rows=3
    ).predict(batch)
    want = naive_retrieval(batch, k, flank, decay, tau, prior)
    assert got.shape == batch.tokens.shape and got.dtype == np.float32
    assert np.allclose(got, want, atol=1e-5)


def test_local_distances_against_direct_sums():
    rng = np.random.default_rng(1)
    m = rng.random((3, 5, 40)) < 0.3
    split = np.array([0, 1, 7, 20, 39, 40])
    for flank, decay in [(1, 1.0), (4, 1.0), (6, 0.8), (100, 0.9)]:
        got = local_distances(m, split, flank, decay)
        for s_i, s in enumerate(split):
            want = np.zeros(m.shape[:2])
            for r in range(1, flank + 1):
                if s - r >= 0:
                    want += m[..., s - r] * decay ** (r - 1)
                if s + r - 1 < m.shape[-1]:
                    want += m[..., s + r - 1] * decay ** (r - 1)
            assert np.allclose(got[..., s_i], want, atol=1e-5), (flank, decay, s)


def test_identical_neighbours_give_their_alleles():
    batch = random_batch(per_row_missing=False)
    truth = batch.reference[batch.neighbours[:, 0]]
    batch.neighbours = np.repeat(batch.neighbours[:, :1], 4, axis=1)
    p = RetrievalPredictor(k=4, flank=5, prior=0.0).predict(batch)
    hidden = batch.tokens == MASK
    assert np.array_equal(p[hidden], truth[hidden].astype(np.float32))


def test_the_locally_matching_neighbour_wins():
    """Two candidates: one matches the query left of a hidden site, the other only far away."""
    L = 21
    query = np.zeros(L, np.uint8)
    a = np.zeros(L, np.uint8)  # matches near the hidden site 10, carries ALT there
    a[10] = 1
    a[:3] = 1  # ... but mismatches far away
    b = np.zeros(L, np.uint8)  # REF at site 10, mismatches right beside it
    b[9] = b[11] = 1
    tokens = (query + REF)[None, :].copy()
    tokens[0, 10] = MASK
    batch = WindowBatch(0, tokens, np.array([[0, 1]]), np.zeros((1, 2), np.float32),
                        np.stack([a, b]), np.full(L, 0.5), np.arange(L), "0" * 16)  # fmt: skip
    p_local = RetrievalPredictor(k=2, flank=2, decay=1.0, tau=0.25, prior=0).predict(batch)[0, 10]
    p_window = RetrievalPredictor(k=2, flank=0, prior=0).predict(batch)[0, 10]
    assert p_local > 0.99
    assert p_window == pytest.approx(0.5)  # no local information: the plain mean of the two


def test_af_predictor():
    batch = random_batch()
    p = AFPredictor().predict(batch)
    tok = batch.tokens
    assert np.allclose(p[tok == MASK], np.broadcast_to(batch.af, tok.shape)[tok == MASK])
    assert (p[tok == ALT] == 1).all() and (p[tok == REF] == 0).all() and (p[tok == PAD] == 0).all()


def test_bad_parameters_and_too_few_neighbours():
    with pytest.raises(ValueError):
        RetrievalPredictor(k=0)
    with pytest.raises(ValueError):
        RetrievalPredictor(decay=1.5)
    with pytest.raises(ValueError, match="needs 64 neighbours"):
        RetrievalPredictor(k=64).predict(random_batch())
