"""The imputation engine against independent computations: path enumeration, a plain numpy
forward-backward, brute-force nearest haplotypes, and its own invariances (batch, block, threads)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ragimpute.engine import (
    ALT_LISTED,
    NOT_LISTED,
    REF_LISTED,
    Chunk,
    Engine,
    EngineParams,
    StateIndex,
    interpolation_weights,
    interval_classes,
    pack_reference,
    reference_carriers,
    step_bounds,
)


def switch_probs(cm_typed: np.ndarray, ne: float, n: int) -> np.ndarray:
    d = np.maximum(np.r_[0.0, np.diff(cm_typed)], 1e-7)
    rho = -np.expm1(-0.04 * ne * d / n)
    rho[0] = 0.0
    return rho


def forward_backward(alleles: np.ndarray, q: np.ndarray, rho: np.ndarray, err: float) -> np.ndarray:
    """Plain float64 Li-Stephens posterior (M, n): alleles (M, n) of the states at the typed sites."""
    M, n = alleles.shape
    e = np.where(q[:, None] < 0, 1.0, np.where(alleles == q[:, None], 1 - err, err))
    f = np.empty((M, n))
    f[0] = e[0] / n
    f[0] /= f[0].sum()
    for m in range(1, M):
        f[m] = e[m] * ((1 - rho[m]) * f[m - 1] + rho[m] / n)
        f[m] /= f[m].sum()
    b = np.ones((M, n))
    for m in range(M - 2, -1, -1):
        x = e[m + 1] * b[m + 1]
        b[m] = (1 - rho[m + 1]) * x + rho[m + 1] * x.sum() / n
        b[m] /= b[m].sum()
    post = f * b
    return post / post.sum(1, keepdims=True)


def enumerate_paths(alleles: np.ndarray, q: np.ndarray, rho: np.ndarray, err: float) -> np.ndarray:
    """The same posterior by summing over every path of states (tiny cases only)."""
    M, n = alleles.shape
    post = np.zeros((M, n))
    for path in itertools.product(range(n), repeat=M):
        p = 1.0 / n
        for m, k in enumerate(path):
            if m:
                p *= (1 - rho[m]) * (k == path[m - 1]) + rho[m] / n
            if q[m] >= 0:
                p *= 1 - err if alleles[m, k] == q[m] else err
        for m, k in enumerate(path):
            post[m, k] += p
    return post / post.sum(1, keepdims=True)


def expected_output(
    chunk: Chunk, states: np.ndarray, step_of, q, ne, err, renormalise_below: float | None = None
) -> np.ndarray:
    """P(ALT) at every site by brute force: posterior at the typed sites, linear interpolation of the
    state posteriors (in cM) between them, every state kept; or, at untyped sites, only the states of
    posterior at least ``renormalise_below``, their posteriors scaled to sum to 1."""
    dense = np.unpackbits(chunk.ref_packed, axis=1, bitorder="little")[:, : chunk.n_ref]
    hap = states[step_of]  # (M, n) reference haplotype of each state at each typed site
    t = chunk.typed_site
    alleles = np.take_along_axis(chunk.ref_typed, hap, axis=1)
    post = forward_backward(alleles, q, switch_probs(chunk.cm[t], ne, chunk.n_ref), err)
    kept = post
    if renormalise_below is not None:
        kept = np.where(post >= renormalise_below, post, 0.0)
        kept /= kept.sum(1, keepdims=True)
    out = np.empty(chunk.n_sites)
    for u in range(chunk.n_sites):
        right = np.searchsorted(t, u, side="left")
        if right < len(t) and t[right] == u:
            out[u] = (post[right] * alleles[right]).sum()
            continue
        left = right - 1
        if left < 0:
            out[u] = (kept[0] * dense[u, hap[0]]).sum()
        elif right >= len(t):
            out[u] = (kept[-1] * dense[u, hap[-1]]).sum()
        else:
            span = chunk.cm[t[right]] - chunk.cm[t[left]]
            w = (chunk.cm[u] - chunk.cm[t[left]]) / span
            out[u] = (1 - w) * (kept[left] * dense[u, hap[left]]).sum() + w * (
                kept[right] * dense[u, hap[right]]
            ).sum()
    return out


def random_panel(seed: int, n_sites: int = 300, n_ref: int = 40, n_typed: int = 60):
    """A panel of mosaics of a few founders (so that copying matters), with cM positions."""
    rng = np.random.default_rng(seed)
    founders = (rng.random((n_sites, 6)) < rng.uniform(0.05, 0.5, n_sites)[:, None]).astype(
        np.uint8
    )
    pick = rng.integers(0, 6, size=(n_ref + 4, 8)).repeat(-(-n_sites // 8), axis=1)[:, :n_sites]
    haps = founders[np.arange(n_sites)[None, :], pick].T  # (N, R + 4)
    flip = rng.random(haps.shape) < 0.01
    haps = (haps ^ flip).astype(np.uint8)
    pos = np.sort(rng.choice(np.arange(1, 2_000_000), n_sites, replace=False))
    cm = pos * 1e-6
    typed = np.sort(rng.choice(n_sites, n_typed, replace=False))
    return haps[:, :n_ref], haps[:, n_ref:], pos, cm, typed


def test_forward_backward_equals_path_enumeration():
    rng = np.random.default_rng(0)
    alleles = rng.integers(0, 2, size=(5, 3))
    q = np.array([1, -1, 0, 1, 0])
    rho = np.array([0.0, 0.3, 0.05, 0.6, 0.2])
    np.testing.assert_allclose(
        forward_backward(alleles, q, rho, 0.05), enumerate_paths(alleles, q, rho, 0.05), atol=1e-12
    )


# the whole panel (no more haplotypes than candidates), composite states that all fit, and composite
# states that replace each other along the chunk
@pytest.mark.parametrize("states,candidates", [(100, 40), (100, 4), (12, 4)])
def test_engine_equals_brute_force(states, candidates):
    ref, tgt, pos, cm, typed = random_panel(1)
    chunk = Chunk.from_alleles(ref, typed, cm, pos)
    params = EngineParams(
        states=states, candidates=candidates, step_cm=0.1, span_steps=3, min_posterior=0.0
    )
    engine = Engine(chunk, params)
    q = tgt[typed].T.astype(np.int8)
    q[0, 5] = -1  # a missing call
    err, ne = 0.01, 1e4
    run = Engine(chunk, EngineParams(**{**params.to_dict(), "ne": ne}))
    # every interval between typed sites summed by classes of identical haplotypes, as long ones are
    run.classes = interval_classes(chunk.ref_packed, chunk.n_ref, chunk.typed_site, min_sites=1)
    out, stats = run.impute(q, error=err)
    tables = engine.states(q)
    assert engine.identity == (candidates >= chunk.n_ref)
    for i in range(len(q)):
        want = expected_output(chunk, tables[i], engine.step_of, q[i], ne, err)
        np.testing.assert_allclose(out[i], want, atol=2e-5)
    assert stats[0, 1] == len(typed) - 1 and (stats[1:, 1] == len(typed)).all()


@pytest.mark.parametrize("states,candidates,min_post", [(100, 40, 0.005), (12, 4, 0.5)])
def test_renormalised_interpolation_equals_brute_force(states, candidates, min_post):
    """Beagle's rule: at untyped sites only the states of posterior at least min(min_posterior,
    0.9999 / states) count, scaled to sum to 1 (0.5 leaves the 0.9999 / states bound in charge)."""
    ref, tgt, pos, cm, typed = random_panel(4)
    chunk = Chunk.from_alleles(ref, typed, cm, pos)
    params = EngineParams(
        states=states, candidates=candidates, span_steps=3, min_posterior=min_post,
        renormalise=True, error=0.01,
    )  # fmt: skip
    engine = Engine(chunk, params)
    q = tgt[typed].T.astype(np.int8)
    out, _ = engine.impute(q)
    dropped = 0
    for i, table in enumerate(engine.states(q)):
        below = min(min_post, 0.9999 / table.shape[1])
        want = expected_output(chunk, table, engine.step_of, q[i], 1e5, 0.01, below)
        np.testing.assert_allclose(out[i], want, atol=2e-5)
        exact = expected_output(chunk, table, engine.step_of, q[i], 1e5, 0.01)
        dropped += np.abs(exact - want).max() > 1e-3
    assert dropped  # the rule changed something: states were dropped and the rest rescaled


def test_interpolation_is_exact_where_untyped_sites_share_a_typed_sites_cm():
    """With no genetic distance to the typed site on their left, untyped sites get that site's exact
    posterior (nothing is interpolated)."""
    ref, tgt, pos, cm, typed = random_panel(2)
    cm = cm.copy()
    for lo, hi in zip(typed[:-1], typed[1:], strict=True):
        cm[lo + 1 : hi] = cm[lo]
    chunk = Chunk.from_alleles(ref, typed, cm, pos)
    engine = Engine(chunk, EngineParams(states=100, min_posterior=0.0, error=0.01))
    q = tgt[typed].T.astype(np.int8)
    out, _ = engine.impute(q)
    post = forward_backward(ref[typed], q[0], switch_probs(cm[typed], 1e5, chunk.n_ref), 0.01)
    for m in range(len(typed) - 1):
        for u in range(typed[m] + 1, typed[m + 1]):
            assert out[0, u] == pytest.approx((post[m] * ref[u]).sum(), abs=2e-5)


def test_min_posterior_error_is_bounded():
    ref, tgt, pos, cm, typed = random_panel(3)
    chunk = Chunk.from_alleles(ref, typed, cm, pos)
    q = tgt[typed].T.astype(np.int8)
    exact, _ = Engine(chunk, EngineParams(states=100, min_posterior=0.0, error=0.01)).impute(q)
    approx, _ = Engine(chunk, EngineParams(states=100, min_posterior=1e-3, error=0.01)).impute(q)
    # at most the dropped mass (< n_states x 1e-3) per site, and far less on average
    assert np.abs(exact - approx).max() < 100 * 1e-3
    assert np.abs(exact - approx).mean() < 5e-3


def test_composite_states_hold_each_steps_nearest_haplotypes():
    ref, tgt, pos, cm, typed = random_panel(4, n_ref=60)
    chunk = Chunk.from_alleles(ref, typed, cm, pos)
    params = EngineParams(states=16, candidates=5, step_cm=0.1, span_steps=3)
    engine = Engine(chunk, params)
    q = tgt[typed].T.astype(np.int8)
    cand = engine.candidates(q)
    tables = engine.states(q)
    idx = engine.index
    for i in range(len(q)):
        for s, (a, b) in enumerate(idx.span):
            d = (ref[typed[a:b]] != q[i, a:b, None]).sum(0)  # brute-force Hamming, (R,)
            kth = np.sort(d)[params.candidates - 1]
            assert (d[cand[i, s]] <= kth).all()  # nearest (ties may go either way)
            assert len(set(cand[i, s])) == params.candidates
            assert set(cand[i, s]) <= set(tables[i][s])  # ... and in the states at that step


@pytest.mark.parametrize("centred", [True, False])
@pytest.mark.parametrize("span_steps", [1, 3, 7])
def test_step_windows_at_the_chunks_ends_narrow_centred_or_keep_their_inner_steps(
    span_steps, centred
):
    """Each step is matched over the typed sites of the steps at most span_steps // 2 away on either
    side. Near an end, centred: as many on both sides (the window narrows symmetrically); otherwise
    every such step the chunk has (the window keeps its inner side)."""
    ref, _, pos, cm, typed = random_panel(6, n_ref=40, n_typed=180)
    idx = StateIndex.build(ref[typed], cm[typed], 0.1, span_steps, centred_ends=centred)
    bounds = step_bounds(cm[typed], 0.1)
    n = len(bounds) - 1
    assert n > span_steps  # the panel has a middle, where windows are whole
    for s, (a, b) in enumerate(idx.span):
        steps = [t for t in range(n) if abs(t - s) <= span_steps // 2]
        first, last = steps[0], steps[-1]
        if centred:
            reach = min(s - first, last - s)  # what both sides can have
            first, last = s - reach, s + reach
        assert (a, b) == (bounds[first], bounds[last + 1]), s
    end = (0, bounds[1]) if centred else (0, bounds[span_steps // 2 + 1])
    assert tuple(idx.span[0]) == end  # an end step on its own sites, or on those inward too
    assert tuple(idx.span[n // 2]) == (
        bounds[n // 2 - span_steps // 2],
        bounds[n // 2 + span_steps // 2 + 1],
    )


@pytest.mark.parametrize("states, centred", [(39, True), (40, False)])
def test_the_engine_centres_the_end_windows_only_where_the_states_leave_haplotypes_out(
    states, centred
):
    """A reference of more haplotypes than states: end windows narrow, centred; one that fits: they
    keep their inner steps. Whatever span_steps is."""
    ref, _, pos, cm, typed = random_panel(6, n_ref=40, n_typed=180)
    chunk = Chunk.from_alleles(ref, typed, cm, pos)
    for span in (None, 5):
        engine = Engine(chunk, EngineParams(states=states, candidates=5, span_steps=span))
        assert engine.params.centred_ends(chunk.n_ref) is centred
        half = engine.params.span_steps // 2
        bounds = engine.index.bounds
        assert tuple(engine.index.span[0]) == (0, bounds[1 if centred else half + 1])
        assert tuple(engine.index.span[-1]) == (bounds[-2 if centred else -2 - half], bounds[-1])


@pytest.mark.parametrize("states, want", [(39, 3), (40, 7), (64, 7)])
def test_auto_span_steps_narrow_only_where_the_states_leave_haplotypes_out(states, want):
    """span_steps auto: 3 for a reference of more haplotypes than states, 7 for one that fits; the
    engine's own state index is built with it (a middle step's window spans that many steps) and
    its params say which; an explicit span_steps is kept whatever the reference."""
    ref, _, pos, cm, typed = random_panel(6, n_ref=40, n_typed=180)
    chunk = Chunk.from_alleles(ref, typed, cm, pos)
    engine = Engine(chunk, EngineParams(states=states, candidates=5))
    assert engine.params.span_steps == want
    bounds, n = engine.index.bounds, engine.index.n_steps
    assert n > 7
    assert tuple(engine.index.span[n // 2]) == (
        bounds[n // 2 - want // 2],
        bounds[n // 2 + want // 2 + 1],
    )
    assert (
        Engine(chunk, EngineParams(states=states, candidates=5, span_steps=5)).params.span_steps
        == 5
    )
    with pytest.raises(ValueError, match="odd"):
        EngineParams(span_steps=4)


@pytest.mark.parametrize("threads", [1, 3])
def test_candidates_are_the_nearest_with_ties_in_the_seeded_order(threads):
    """Exactly the brute-force k nearest of each step, nearest first, equally near ones in the index's
    seeded order of the panel (a panel of mosaics: many ties), whatever the steps searched at once."""
    ref, tgt, pos, cm, typed = random_panel(5, n_ref=90)
    idx = StateIndex.build(ref[typed], cm[typed], 0.1, 3, seed=2)
    q = tgt[typed].T.astype(np.uint8)
    k = 10
    cand = idx.candidates(q, k, threads=threads)
    rank = np.argsort(idx.order)  # place of each panel haplotype in the seeded order
    ties = 0
    for i in range(len(q)):
        for s, (a, b) in enumerate(idx.span):
            d = (ref[typed[a:b]] != q[i, a:b, None]).sum(0)
            want = np.lexsort((rank, d))[:k]
            np.testing.assert_array_equal(cand[i, s], want)
            ties += len(np.unique(d[want])) < k
    assert ties > 0


def test_exclusion_keeps_a_sample_out_of_its_own_states():
    ref, _, pos, cm, typed = random_panel(5, n_ref=60, n_typed=250)
    chunk = Chunk.from_alleles(ref, typed, cm, pos)
    q = ref[typed].T[:4].astype(np.int8)  # reference haplotypes as queries
    exclude = np.array([[0, 1], [0, 1], [2, 3], [2, 3]])
    for states, candidates in ((16, 5), (100, 60)):  # composite, then the whole panel
        engine = Engine(chunk, EngineParams(states=states, candidates=candidates, error=0.01))
        for i, table in enumerate(engine.states(q, exclude)):
            assert not np.isin(table, exclude[i]).any()
        left_out, _ = engine.impute(q, exclude)
        kept_in, _ = engine.impute(q)
        truth = ref.T[:4]
        # a haplotype that may copy itself is imputed better than one that may not
        assert np.abs(kept_in - truth).mean() < np.abs(left_out - truth).mean()


@pytest.mark.parametrize("states,candidates", [(100, 40), (12, 4)])
def test_output_does_not_depend_on_batch_block_or_threads(states, candidates):
    ref, tgt, pos, cm, typed = random_panel(6, n_typed=80)
    chunk = Chunk.from_alleles(ref, typed, cm, pos)
    q = tgt[typed].T.astype(np.int8)
    base = dict(states=states, candidates=candidates, error=0.01)
    want, _ = Engine(chunk, EngineParams(**base, block_sites=256)).impute(q, threads=1)
    for block in (1, 7, 80):
        got, _ = Engine(chunk, EngineParams(**base, block_sites=block)).impute(q, threads=2)
        np.testing.assert_allclose(got, want, atol=1e-6)
    engine = Engine(chunk, EngineParams(**base))
    parts = np.concatenate([engine.impute(q[i : i + 1])[0] for i in range(len(q))])
    np.testing.assert_array_equal(parts, engine.impute(q)[0])  # batch size, and determinism


def test_carrier_lists_hold_each_sites_minor_allele_carriers():
    rng = np.random.default_rng(4)
    n_ref, limit = 101, 10  # an odd panel: a minor allele is never half of it
    freq = rng.choice([0.0, 0.005, 0.03, 0.08, 0.5, 0.93, 0.99, 1.0], size=400)
    alleles = (rng.random((400, n_ref)) < freq[:, None]).astype(np.uint8)
    ptr, hap, kind = reference_carriers(pack_reference(alleles), n_ref, limit)
    for u in range(len(alleles)):
        alt = int(alleles[u].sum())
        listed = hap[ptr[u] : ptr[u + 1]]
        if min(alt, n_ref - alt) > limit:
            assert kind[u] == NOT_LISTED and len(listed) == 0
            continue
        allele = 1 if alt <= n_ref - alt else 0
        assert kind[u] == (ALT_LISTED if allele else REF_LISTED)
        np.testing.assert_array_equal(listed, np.flatnonzero(alleles[u] == allele))
    assert {REF_LISTED, ALT_LISTED, NOT_LISTED} <= set(kind.tolist())


@pytest.mark.parametrize("min_post", [0.0, 1e-3])
def test_interpolation_by_carriers_equals_interpolation_by_state_bits(min_post):
    """Untyped sites summed over their minor allele's carriers give what the kept states' reference
    bits give (carriers of up to 100 of 256 haplotypes listed: most sites)."""
    ref, tgt, pos, cm, typed = random_panel(8, n_sites=600, n_ref=256, n_typed=60)
    chunk = Chunk.from_alleles(ref, typed, cm, pos)
    q = tgt[typed].T.astype(np.int8)
    engine = Engine(chunk, EngineParams(states=100, candidates=20, error=0.01,
                                        min_posterior=min_post))  # fmt: skip
    engine.carriers = ptr, hap, kind = reference_carriers(chunk.ref_packed, chunk.n_ref, 100)
    assert (kind != NOT_LISTED).mean() > 0.5
    by_carriers, _ = engine.impute(q)
    engine.carriers = (np.zeros_like(ptr), hap[:0], np.full_like(kind, NOT_LISTED))
    by_bits, _ = engine.impute(q)
    np.testing.assert_allclose(by_carriers, by_bits, atol=1e-6)


def test_interval_classes_group_haplotypes_with_the_same_alleles():
    ref, _, _, _, typed = random_panel(3, n_sites=500, n_ref=70, n_typed=20)
    packed = pack_reference(ref)
    cls, cls_row, cbits, cbit_off = interval_classes(packed, 70, typed, min_sites=5)
    edges, ends = np.r_[0, typed + 1], np.r_[typed, len(ref)]
    assert (cls_row >= 0).sum() == ((ends - edges) >= 5).sum() > 0
    for k in range(len(edges)):
        seg = ref[edges[k] : ends[k]]  # (sites, haplotypes)
        if cls_row[k] < 0:
            assert (cbit_off[edges[k] : ends[k]] == -1).all()
            continue
        c = cls[cls_row[k]].astype(np.int64)
        _, first, inverse = np.unique(seg.T, axis=0, return_index=True, return_inverse=True)
        # the same class exactly when the same alleles; classes numbered by their least haplotype
        np.testing.assert_array_equal(c, np.argsort(np.argsort(first))[inverse.ravel()])
        assert len(first) < 70  # the panel's mosaics repeat: some classes hold several haplotypes
        for u in range(edges[k], ends[k]):
            row = np.unpackbits(cbits[cbit_off[u] :], bitorder="little")[: c.max() + 1]
            np.testing.assert_array_equal(row[c], ref[u])


def test_interpolation_by_classes_equals_interpolation_by_state_bits():
    ref, tgt, pos, cm, _ = random_panel(9, n_sites=1500, n_ref=120)
    typed = np.arange(20, 1500, 37)
    chunk = Chunk.from_alleles(ref, typed, cm, pos)
    q = tgt[typed].T.astype(np.int8)
    engine = Engine(chunk, EngineParams(states=60, candidates=10, error=0.01))
    assert "classes" not in vars(engine)  # built on first use: the CUDA path never reads them
    assert (engine.classes[1] >= 0).all()  # every interval long enough to be grouped
    by_classes, _ = engine.impute(q)
    engine.classes = interval_classes(chunk.ref_packed, chunk.n_ref, typed, min_sites=10**9)
    by_bits, _ = engine.impute(q)
    np.testing.assert_allclose(by_classes, by_bits, atol=1e-6)


def test_estimated_error_follows_the_genotyping_error_rate():
    ref, tgt, pos, cm, _ = random_panel(7, n_sites=2000, n_ref=100, n_typed=10)
    typed = np.arange(0, 2000, 2)
    chunk = Chunk.from_alleles(ref, typed, cm, pos)
    engine = Engine(chunk, EngineParams(states=200))
    q = tgt[typed].T.astype(np.int8)
    clean = engine.estimate_error(q)
    noisy_q = q ^ (np.random.default_rng(0).random(q.shape) < 0.02)
    noisy = engine.estimate_error(noisy_q.astype(np.int8))
    assert clean < 0.02 < noisy * 1.5
    assert noisy > 3 * clean


def test_step_bounds_and_weights():
    cm = np.array([0.0, 0.01, 0.12, 0.13, 0.5, 0.51])
    assert step_bounds(cm, 0.1).tolist() == [0, 2, 4, 6]
    pos = np.array([10, 20, 30, 40])
    w = interpolation_weights(np.array([0.0, 0.1, 0.4, 1.0]), pos, np.array([0, 3]))
    np.testing.assert_allclose(w, [0, 0.1, 0.4, 0])
    flat = interpolation_weights(np.zeros(4), pos, np.array([0, 3]))  # flat map: by bp
    np.testing.assert_allclose(flat, [0, 1 / 3, 2 / 3, 0], atol=1e-6)


def test_state_index_ids_are_panel_haplotypes():
    rng = np.random.default_rng(8)
    ref_typed = rng.integers(0, 2, size=(30, 20)).astype(np.uint8)
    idx = StateIndex.build(ref_typed, np.linspace(0, 1, 30), 0.1, 3, seed=3)
    q = ref_typed[:, [7, 11]].T  # two reference haplotypes as queries: each is its own nearest
    cand = idx.candidates(q, 1)
    assert cand.shape == (2, idx.n_steps, 1)
    for i, h in enumerate((7, 11)):
        for s, (a, b) in enumerate(idx.span):  # a panel haplotype at distance 0 from the query
            assert (ref_typed[a:b, cand[i, s, 0]] == ref_typed[a:b, h]).all()


@pytest.mark.parametrize(
    "states,candidates,min_post,renormalise",
    [(100, 40, 0.0, False), (12, 4, 1e-3, False), (100, 40, 0.005, True)],
)
def test_torch_engine_equals_the_numba_kernel(states, candidates, min_post, renormalise):
    """The GPU code path (torch) run on the CPU gives what the CPU kernel gives, missing calls and
    excluded haplotypes included."""
    from ragimpute.engine_torch import impute_torch

    ref, tgt, pos, cm, typed = random_panel(9, n_typed=70)
    chunk = Chunk.from_alleles(ref, typed, cm, pos)
    params = EngineParams(
        states=states, candidates=candidates, min_posterior=min_post, renormalise=renormalise,
        block_sites=16, error=0.01,
    )  # fmt: skip
    engine = Engine(chunk, params)
    q = np.concatenate([tgt[typed].T, ref[typed].T[:2]]).astype(np.int8)
    q[1, [3, 40]] = -1
    exclude = np.array([[-1, -1]] * (len(q) - 2) + [[0, 1], [0, 1]])
    want, want_stats = engine.impute(q, exclude, error=0.01)
    got, got_stats = impute_torch(engine, q, 0.01, "cpu", exclude)
    np.testing.assert_allclose(got, want, atol=2e-5)
    np.testing.assert_allclose(got_stats, want_stats, rtol=1e-4, atol=1e-6)


def test_torch_engine_slices_long_untyped_runs_and_can_skip_interpolation(monkeypatch):
    """Untyped sites interpolated a few at a time give the same P(ALT); without interpolation (the
    error estimate) the statistics are the same and no P(ALT) is returned, as on the CPU."""
    from ragimpute import engine_torch

    ref, tgt, pos, cm, typed = random_panel(9, n_typed=70)
    engine = Engine(
        Chunk.from_alleles(ref, typed, cm, pos), EngineParams(block_sites=16, error=0.01)
    )
    q = tgt[typed].T.astype(np.int8)
    whole, stats = engine_torch.impute_torch(engine, q, 0.01, "cpu")
    assert np.diff(typed).max() > 4  # runs of untyped sites longer than a slice below
    monkeypatch.setattr(engine_torch, "INTERVAL_SITES", 3)
    sliced, sliced_stats = engine_torch.impute_torch(engine, q, 0.01, "cpu")
    np.testing.assert_array_equal(sliced, whole)
    bare, bare_stats = engine_torch.impute_torch(engine, q, 0.01, "cpu", interpolate=False)
    cpu_bare, cpu_stats = engine.impute(q, error=0.01, interpolate=False)
    assert bare.shape == cpu_bare.shape == (len(q), 0)
    np.testing.assert_array_equal(bare_stats, stats)
    np.testing.assert_allclose(bare_stats, cpu_stats, rtol=1e-4, atol=1e-6)


def test_engine_batches_shrink_to_the_memory_cap_with_the_same_output(tmp_path, monkeypatch):
    from ragimpute import prior

    ref, tgt, pos, cm, typed = random_panel(6, n_ref=36)  # 4 target haplotypes: batches of 3, 1
    chunk = Chunk.from_alleles(ref, typed, cm, pos)
    engine = Engine(chunk, EngineParams(states=20, candidates=5, error=0.01))
    q = np.ascontiguousarray(tgt[typed].T, dtype=np.int8)
    whole = prior.run_engine(engine, q, tmp_path / "whole", batch_haplotypes=1024)
    monkeypatch.setattr(prior, "ENGINE_BATCH_BYTES", 6 * chunk.n_sites * 3)  # room for 3
    capped = prior.run_engine(engine, q, tmp_path / "capped", batch_haplotypes=1024)
    assert whole.stats["batch_haplotypes"] == 1024 and capped.stats["batch_haplotypes"] == 3
    n = chunk.n_sites
    np.testing.assert_array_equal(capped.store.read_codes(0, n), whole.store.read_codes(0, n))
    assert whole.store.read_codes(0, n).shape == (n, len(q))
    whole.store.close()
    capped.store.close()


def test_gpu_batches_count_their_state_tables():
    """On a GPU a batch also holds its state table over every step (``engine_torch``: int64 on the
    host and the device, a validity byte): the per-haplotype memory the batch cap divides counts it,
    measured here on the table itself."""
    from ragimpute import prior
    from ragimpute.engine_torch import composite_tables

    ref, tgt, pos, cm, typed = random_panel(6, n_ref=36)
    engine = Engine(
        Chunk.from_alleles(ref, typed, cm, pos), EngineParams(states=20, candidates=5, error=0.01)
    )
    q = np.ascontiguousarray(tgt[typed].T, dtype=np.int8)
    table = composite_tables(engine, q, None)
    cpu = prior.batch_bytes_per_haplotype(engine, "cpu")
    gpu = prior.batch_bytes_per_haplotype(engine, "cuda")
    assert cpu == 6 * engine.chunk.n_sites
    per_hap_table = table.nbytes / len(q)  # int64 on the host; as much again on the device
    assert gpu - cpu >= 2 * per_hap_table + table[0].size  # + the validity bytes
    assert prior.ENGINE_GPU_BATCH_BYTES // gpu >= 4096  # a large batch still fits a small chunk
