"""The model: the copying posterior against brute force, features against loops, invariances."""

import itertools

import numpy as np
import pytest
import torch

from ragimpute.model import (
    MATCH_SCALES,
    ImputationModel,
    ModelConfig,
    hidden_sites,
    li_stephens_posterior,
    masked_loss,
    neighbour_features,
)
from ragimpute.tokens import ALT, MASK, PAD, REF


def brute_force_posterior(mism, pos_obs, pos_at, rate, error):
    """Enumerate every copying path over all positions (observed and asked) of one query.

    Sites where the posterior is asked but nothing is observed emit 1 for every state; the path
    probability is the product of Li-Stephens transitions and emissions. Independent of forward-backward.
    """
    K, M = mism.shape
    positions = sorted(set(pos_obs.tolist()) | set(pos_at.tolist()))
    obs_at = {p: m for m, p in enumerate(pos_obs.tolist())}
    post = {p: np.zeros(K) for p in pos_at.tolist()}
    for path in itertools.product(range(K), repeat=len(positions)):
        prob = 1.0 / K
        for i, (p, k) in enumerate(zip(positions, path, strict=True)):
            if i:
                stay = np.exp(-rate * (p - positions[i - 1]))
                prob *= stay * (k == path[i - 1]) + (1 - stay) / K
            if p in obs_at:
                prob *= error if mism[k, obs_at[p]] else 1 - error
        for p, k in zip(positions, path, strict=True):
            if p in post:
                post[p][k] += prob
    return np.stack([post[p] / post[p].sum() for p in pos_at.tolist()], axis=1)  # (K, T)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_li_stephens_posterior_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    K, M = 3, 3
    mism = rng.random((1, K, M)) < 0.4
    pos_obs = np.sort(rng.choice(np.arange(100, 5000), M, replace=False))
    hidden = np.sort(rng.choice(np.setdiff1d(np.arange(0, 5200), pos_obs), 2, replace=False))
    pos_at = np.sort(np.concatenate([hidden, pos_obs[:1]]))  # hidden sites and one observed site
    rate, error = 4e-4, 0.05
    got = li_stephens_posterior(
        torch.from_numpy(mism), torch.from_numpy(pos_obs), torch.from_numpy(pos_at), rate, error
    )
    want = brute_force_posterior(mism[0], pos_obs, pos_at, rate, error)
    np.testing.assert_allclose(got[0].numpy(), want, atol=1e-5)


def test_li_stephens_posterior_without_observed_sites_is_uniform():
    post = li_stephens_posterior(
        torch.zeros(2, 4, 0, dtype=torch.bool), torch.zeros(0), torch.tensor([5, 9]), 1e-5, 1e-3
    )
    assert torch.allclose(post, torch.full((2, 4, 2), 0.25))


def naive_mismatch_counts(tokens, neighbours, w):
    """Loop version of the windowed mismatch count feature for one query row."""
    L = len(tokens)
    out = np.zeros((neighbours.shape[0], L))
    for k in range(neighbours.shape[0]):
        for i in range(L):
            for j in range(max(0, i - w), min(L, i + w + 1)):
                if tokens[j] in (REF, ALT) and neighbours[k, j] != (tokens[j] == ALT):
                    out[k, i] += 1
    return out


def naive_runs(tokens, neighbours):
    """Observed matching sites since the last mismatch (left, site included) and before the next (right)."""
    L = len(tokens)
    obs = [(j, tokens[j] == ALT) for j in range(L) if tokens[j] in (REF, ALT)]
    left = np.zeros((neighbours.shape[0], L))
    right = np.zeros((neighbours.shape[0], L))
    for k in range(neighbours.shape[0]):
        for i in range(L):
            n = 0
            for j, a in reversed([o for o in obs if o[0] <= i]):
                if neighbours[k, j] != a:
                    break
                n += 1
            left[k, i] = n
            n = 0
            for j, a in [o for o in obs if o[0] > i]:
                if neighbours[k, j] != a:
                    break
                n += 1
            right[k, i] = n if not any(neighbours[k, j] != a for j, a in obs if j == i) else 0
    return left, right


def test_neighbour_features_match_loops():
    rng = np.random.default_rng(5)
    L, K = 60, 4
    tokens = np.full(L, MASK)
    obs = rng.choice(L, 15, replace=False)
    tokens[obs] = rng.integers(REF, ALT + 1, 15)
    nb = rng.integers(0, 2, (K, L)).astype(np.uint8)
    t = torch.from_numpy(tokens)[None]
    n = torch.from_numpy(nb)[None]
    idx = torch.arange(L)
    post = torch.full((1, K, L), 1.0 / K)
    f = neighbour_features(t, n, torch.zeros(1, K), torch.arange(L) * 100, idx, [post])[0].numpy()
    for s, w in enumerate(MATCH_SCALES):
        np.testing.assert_allclose(
            f[..., 2 * s], np.log1p(naive_mismatch_counts(tokens, nb, w)), atol=1e-6
        )
    left, right = naive_runs(tokens, nb)
    base = 2 * len(MATCH_SCALES)
    np.testing.assert_allclose(f[..., base], np.log1p(left), atol=1e-6)
    np.testing.assert_allclose(f[..., base + 1], np.log1p(right), atol=1e-6)


def random_window(B=3, L=200, K=8, M=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.full((B, L), MASK)
    obs = torch.randperm(L, generator=g)[:M]
    tokens[:, obs] = torch.randint(REF, ALT + 1, (B, M), generator=g)
    af = torch.rand(L, generator=g)
    pos = torch.cumsum(torch.randint(1, 400, (L,), generator=g), 0)
    nb = torch.randint(0, 2, (B, K, L), generator=g, dtype=torch.uint8)
    dist = torch.rand(B, K, generator=g) * 5
    return tokens, af, pos, nb, dist


@pytest.mark.parametrize("use_retrieval", [True, False])
def test_output_at_a_site_does_not_depend_on_which_other_sites_are_asked(use_retrieval):
    torch.manual_seed(0)
    m = ImputationModel(ModelConfig.preset("tiny", use_retrieval=use_retrieval)).eval()
    tokens, af, pos, nb, dist = random_window()
    hid = hidden_sites(tokens)
    with torch.no_grad():
        full = m(tokens, af, pos, nb, dist)
        part = m(tokens, af, pos, nb, dist, sites=hid[10:30])
    assert full.shape == (3, len(hid))
    torch.testing.assert_close(full[:, 10:30], part, atol=1e-5, rtol=1e-5)


def test_padding_changes_nothing():
    torch.manual_seed(1)
    m = ImputationModel(ModelConfig.preset("tiny")).eval()
    tokens, af, pos, nb, dist = random_window()
    P = 25
    tokens_p = torch.cat([tokens, torch.full((3, P), PAD)], 1)
    af_p = torch.cat([af, torch.zeros(P)])
    pos_p = torch.cat([pos, pos[-1:].expand(P)])
    nb_p = torch.cat([nb, torch.zeros(3, nb.shape[1], P, dtype=nb.dtype)], 2)
    with torch.no_grad():
        a = m(tokens, af, pos, nb, dist)
        b = m(tokens_p, af_p, pos_p, nb_p, dist)
    torch.testing.assert_close(a, b)


def test_window_without_observed_sites_gives_finite_output_and_gradients():
    torch.manual_seed(2)
    m = ImputationModel(ModelConfig.preset("tiny"))
    tokens, af, pos, nb, dist = random_window(M=0)
    out = m(tokens, af, pos, nb, dist)
    assert torch.isfinite(out).all()
    masked_loss(out, torch.ones_like(out)).backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_rows_with_different_masks_are_refused():
    m = ImputationModel(ModelConfig.preset("tiny"))
    tokens, af, pos, nb, dist = random_window()
    tokens[1, hidden_sites(tokens)[0]] = REF
    with pytest.raises(ValueError, match="different sites"):
        m(tokens, af, pos, nb, dist)


def test_masked_loss_weights_rare_sites():
    logits = torch.tensor([[0.0, 0.0]])
    truth = torch.tensor([[1, 0]])
    plain = masked_loss(logits, truth)
    assert plain.item() == pytest.approx(np.log(2))
    w = masked_loss(torch.tensor([[3.0, 0.0]]), truth, torch.tensor([1.0, 3.0]))
    manual = (np.log1p(np.exp(-3.0)) + 3 * np.log(2)) / 4
    assert w.item() == pytest.approx(manual, rel=1e-5)


def test_the_correction_is_scaled_by_the_maf_bin_of_each_site():
    """logit = logit(prior) + correction_scale[bin] * correction, the bin of each site's MAF as
    metrics.maf_bin draws it; scale 1 everywhere is the model as trained."""
    from ragimpute.metrics import maf_bin

    torch.manual_seed(3)
    m = ImputationModel(ModelConfig.preset("tiny")).eval()
    torch.nn.init.normal_(m.head.weight, std=0.5)  # a correction that is not zero
    tokens, af, pos, nb, dist = random_window()
    af[:8] = torch.tensor([0.001, 0.004, 0.007, 0.02, 0.3, 0.996, 0.992, 0.97])
    hid = hidden_sites(tokens)
    with torch.no_grad():
        whole = m(tokens, af, pos, nb, dist)
        base, corr = m(tokens, af, pos, nb, dist, parts=True)
        torch.testing.assert_close(whole, base + corr)
        scale = torch.tensor([0.0, 0.25, 0.75, 0.5])
        m.correction_scale.copy_(scale)
        scaled = m(tokens, af, pos, nb, dist)
    a = af[hid].numpy()
    bins = torch.from_numpy(maf_bin(np.minimum(a, 1 - a)))
    assert set(bins.tolist()) == {0, 1, 2, 3}
    torch.testing.assert_close(scaled, base + scale[bins][None] * corr)
    assert not torch.allclose(scaled, whole)


def test_a_model_saved_without_the_scale_applies_its_whole_correction():
    """model.pt files written before the per-bin scale existed load, and answer as they did."""
    m = ImputationModel(ModelConfig.preset("tiny"))
    state = m.state_dict()
    del state["correction_scale"]
    other = ImputationModel(ModelConfig.preset("tiny"))
    other.correction_scale.fill_(0.5)
    other.load_state_dict(state)
    assert other.correction_scale.tolist() == [1.0] * 4
