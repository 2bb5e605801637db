"""index: FAISS neighbours against a brute-force numpy Hamming search on the observed sites."""

from __future__ import annotations

import faiss
import numpy as np
import pandas as pd
import pytest

from ragimpute.atomic import read_json
from ragimpute.errors import ArtifactError, MaskMismatchError
from ragimpute.index import KINDS, HaplotypeIndex, QueryBlock, build_index, query_block
from ragimpute.tokens import MASK, TokenTable, alleles_from_tokens
from ragimpute.windows import write_windowed

K = 6
HNSW_RECALL_MIN = 0.95  # distance-based recall@K of binary_hnsw against exact search, every split


@pytest.fixture(scope="module")
def indexes(demo_tokens, tmp_path_factory) -> dict[str, HaplotypeIndex]:
    base = tmp_path_factory.mktemp("index")
    out = {}
    for kind in KINDS:
        build_index(demo_tokens["paths"]["train"], base / kind, kind=kind, hnsw_m=8, threads=1)
        out[kind] = HaplotypeIndex(base / kind)
    return out


def one_window_tokens(path, tokens: np.ndarray, samples: list[str], mask_hash: str):
    """A hand-made train token table of one window (rows: both haplotypes of each sample)."""
    meta = {
        "mask_hash": mask_hash,
        "site_list_hash": "d" * 16,
        "split": "train",
        "format_version": 1,
    }
    write_windowed(path, iter([tokens]), "tokens", samples, meta, {"mask_hash": mask_hash})
    return path


def brute_force(query_tokens: np.ndarray, ref_tokens: np.ndarray) -> np.ndarray:
    """(n_query, n_ref) Hamming distances on the sites that are not masked."""
    obs = query_tokens[0] != MASK
    q = alleles_from_tokens(query_tokens)[:, obs]
    r = alleles_from_tokens(ref_tokens)[:, obs]
    return (q[:, None, :] != r[None, :, :]).sum(axis=2)


def exact_topk(d: np.ndarray, k: int, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The k smallest by (distance, id), ids of the excluded sample per row left out."""
    ids, dist = [], []
    for r in range(len(d)):
        cand = [(int(d[r, j]), j) for j in range(d.shape[1]) if j // 2 != exclude[r]]
        cand.sort()
        ids.append([j for _, j in cand[:k]])
        dist.append([x for x, _ in cand[:k]])
    return np.array(ids), np.array(dist)


def _own(table: TokenTable, index: HaplotypeIndex) -> np.ndarray:
    pos = {s: i for i, s in enumerate(index.samples)}
    return np.array([pos.get(s, -1) for s in table.samples for _ in (0, 1)])


@pytest.mark.parametrize("split", ["train", "val", "test"])
@pytest.mark.parametrize("kind", ["binary_flat", "float_l2"])
def test_exact_kinds_equal_brute_force(demo_tokens, indexes, split, kind):
    index = indexes[kind]
    ref = TokenTable(demo_tokens["paths"]["train"])
    table = TokenTable(demo_tokens["paths"][split])
    own = _own(table, index)
    assert (own >= 0).all() == (split == "train")
    n_ties = 0
    for w in range(table.n_windows):
        d = brute_force(table.read(w), ref.read(w))
        ids, dist = index.search(query_block(table, w), K)
        want_ids, want_d = exact_topk(d, K, own)
        # distances exactly equal, and every returned id has the distance reported
        np.testing.assert_array_equal(dist, want_d)
        np.testing.assert_array_equal(np.take_along_axis(d, ids, axis=1), dist)
        # sorted by (distance, id), no duplicates, never the query's own sample
        for r in range(len(ids)):
            assert list(zip(dist[r], ids[r], strict=True)) == sorted(
                zip(dist[r], ids[r], strict=True)
            )
            assert len(set(ids[r])) == K
        assert not (ids // 2 == own[:, None]).any()
        # ties: the neighbours strictly nearer than the K-th distance are exactly the brute-force ones;
        # those at the K-th distance are some of the tied ones
        for r in range(len(ids)):
            kth = want_d[r, -1]
            assert set(ids[r][dist[r] < kth]) == set(want_ids[r][want_d[r] < kth])
            tied = {j for j in range(d.shape[1]) if d[r, j] == kth and j // 2 != own[r]}
            assert set(ids[r][dist[r] == kth]) <= tied
            n_ties += len(tied) > (dist[r] == kth).sum()
    assert n_ties > 0  # the data do have ties at the K-th neighbour, so the checks above bite


@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.parametrize("kind", ["binary_flat", "float_l2"])
def test_exact_kinds_break_ties_by_lowest_id(demo_tokens, indexes, split, kind):
    """Reproducible neighbour lists: among equally distant haplotypes the lower id wins."""
    table = TokenTable(demo_tokens["paths"][split])
    ref = TokenTable(demo_tokens["paths"]["train"])
    own = _own(table, indexes[kind])
    for w in range(table.n_windows):
        d = brute_force(table.read(w), ref.read(w))
        ids, _ = indexes[kind].search(query_block(table, w), K)
        want_ids, _ = exact_topk(d, K, own)
        np.testing.assert_array_equal(ids, want_ids)


def test_float_l2_and_binary_flat_agree(demo_tokens, indexes):
    table = TokenTable(demo_tokens["paths"]["test"])
    for w in range(table.n_windows):
        q = query_block(table, w)
        ids_b, d_b = indexes["binary_flat"].search(q, K)
        ids_f, d_f = indexes["float_l2"].search(q, K)
        np.testing.assert_array_equal(d_b, d_f)  # squared L2 on 0/1 vectors = Hamming


def test_binary_hnsw_recall(demo_tokens, indexes):
    ref = TokenTable(demo_tokens["paths"]["train"])
    hits = total = 0
    for split in ("train", "val", "test"):
        table = TokenTable(demo_tokens["paths"][split])
        own = _own(table, indexes["binary_hnsw"])
        for w in range(table.n_windows):
            d = brute_force(table.read(w), ref.read(w))
            ids, dist = indexes["binary_hnsw"].search(query_block(table, w), K)
            _, want_d = exact_topk(d, K, own)
            np.testing.assert_array_equal(np.take_along_axis(d, ids, axis=1), dist)
            assert not (ids // 2 == own[:, None]).any()
            hits += int((dist <= want_d[:, -1:]).sum())
            total += dist.size
    assert hits / total >= HNSW_RECALL_MIN


def test_own_sample_never_returned_even_when_identical(tmp_path):
    """A training query's two haplotypes are its nearest (distance 0): both must be skipped."""
    rng = np.random.default_rng(0)
    samples = ["A", "B", "C", "D", "E"]
    tokens = (rng.integers(0, 2, size=(10, 40)) + 2).astype(np.uint8)
    tokens[:, ::3] = MASK
    path = one_window_tokens(tmp_path / "train.parquet", tokens, samples, "a" * 16)
    build_index(path, tmp_path / "idx")
    index = HaplotypeIndex(tmp_path / "idx")
    ids, dist = index.search(query_block(TokenTable(path), 0), 8)  # all 8 others
    for r in range(10):
        assert sorted(ids[r] // 2) == sorted([s for s in range(5) if s != r // 2] * 2)
    # k larger than what is left after excluding the query's own sample
    with pytest.raises(ValueError, match="k=9 neighbours"):
        index.search(query_block(TokenTable(path), 0), 9)


def test_mask_mismatch_is_refused(demo_tokens, indexes):
    table = TokenTable(demo_tokens["paths"]["val"])
    q = query_block(table, 0)
    foreign = QueryBlock(q.window, q.tokens, q.samples, "0123456789abcdef")
    for index in indexes.values():
        with pytest.raises(
            MaskMismatchError,
            match=rf"built with mask {demo_tokens['hash']}.*mask 0123456789abcdef",
        ):
            index.search(foreign, K)
    # same hash but other masked columns (a corrupt or hand-edited table) is refused too
    tokens = q.tokens.copy()
    col = int(np.flatnonzero(tokens[0] != MASK)[0])
    tokens[:, col] = MASK
    with pytest.raises(MaskMismatchError, match="queries observe"):
        indexes["binary_flat"].search(QueryBlock(q.window, tokens, q.samples, q.mask_hash), K)


def test_index_meta_and_files(demo_tokens, indexes):
    train = TokenTable(demo_tokens["paths"]["train"])
    masked = demo_tokens["mask"].masked
    for kind, index in indexes.items():
        meta = read_json(index.dir / "meta.json")
        assert meta["mask_hash"] == demo_tokens["hash"] and meta["kind"] == kind
        assert meta["site_list_hash"] == demo_tokens["mask"].site_list_hash
        assert meta["metric"] == ("l2" if kind == "float_l2" else "hamming")
        assert meta["n_haplotypes"] == train.n_haplotypes and meta["samples"] == train.samples
        assert meta["n_windows"] == train.n_windows
        assert meta["faiss_version"] == faiss.__version__
        files = sorted((index.dir / "windows").iterdir())
        assert [f.name for f in files] == [f"w{w:05d}.faiss" for w in range(train.n_windows)]
        assert meta["bytes"] == sum(f.stat().st_size for f in files)
        for w in range(train.n_windows):
            assert meta["n_observed"][w] == int((train.read(w)[0] != MASK).sum())
            assert index.window_index(w).ntotal == train.n_haplotypes
        assert sum(meta["n_observed"]) >= int((~masked).sum())  # overlaps count twice
    # a bit-packed index is much smaller than float vectors
    assert indexes["binary_flat"].meta["bytes"] * 8 < indexes["float_l2"].meta["bytes"]


def test_index_errors(tmp_path, demo_tokens):
    with pytest.raises(ArtifactError, match="meta.json is missing"):
        HaplotypeIndex(tmp_path)
    with pytest.raises(ValueError, match="index kind"):
        build_index(demo_tokens["paths"]["train"], tmp_path / "x", kind="ivf")
    assert not (tmp_path / "x").exists()


def test_window_without_observed_sites(tmp_path):
    """A window the mask hides entirely still answers (every reference at distance 0)."""
    samples = ["A", "B", "C", "D"]
    tokens = np.full((8, 12), MASK, dtype=np.uint8)
    path = one_window_tokens(tmp_path / "t.parquet", tokens, samples, "c" * 16)
    for kind in KINDS:
        build_index(path, tmp_path / kind, kind=kind, hnsw_m=4)
        q = QueryBlock(0, tokens[:2], ["Z", "Z"], "c" * 16)
        ids, dist = HaplotypeIndex(tmp_path / kind).search(q, 3)
        assert (dist == 0).all() and ids.shape == (2, 3)
        assert pd.Series(ids.ravel()).between(0, 7).all()
