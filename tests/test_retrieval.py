"""retrieval: the Parquet table holds, per query haplotype window, what the index answers."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ragimpute.errors import MaskMismatchError
from ragimpute.index import HaplotypeIndex, build_index, query_block
from ragimpute.masks import run_mask_stage_dir
from ragimpute.retrieval import retrieve
from ragimpute.tokens import TokenTable, run_tokenize_stage

K = 5


@pytest.fixture(scope="module")
def index_dir(demo_tokens, tmp_path_factory):
    out = tmp_path_factory.mktemp("retrieval") / "index"
    build_index(demo_tokens["paths"]["train"], out)
    return out


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_retrieval_table(demo_tokens, index_dir, tmp_path, split):
    out = tmp_path / f"{split}.parquet"
    stats = retrieve(demo_tokens["paths"][split], index_dir, K, out)
    table = TokenTable(demo_tokens["paths"][split])
    index = HaplotypeIndex(index_dir)
    t = pq.read_table(out)
    assert t.column_names == ["window", "sample", "hap", "neighbours", "distances"]
    assert t.schema.field("neighbours").type == pa.list_(pa.int32(), K)
    assert t.schema.field("distances").type == pa.list_(pa.float32(), K)
    n_rows = table.n_windows * table.n_haplotypes
    assert t.num_rows == n_rows
    df = t.to_pandas()
    assert df["window"].tolist() == [
        w for w in range(table.n_windows) for _ in range(table.n_haplotypes)
    ]
    assert df["sample"].tolist() == [s for s in table.samples for _ in (0, 1)] * table.n_windows
    assert df["hap"].tolist() == [0, 1] * (n_rows // 2)
    top1 = []
    for w in range(table.n_windows):
        ids, dist = index.search(query_block(table, w), K)
        rows = df[df["window"] == w]
        np.testing.assert_array_equal(np.stack(rows["neighbours"].to_numpy()), ids)
        np.testing.assert_array_equal(np.stack(rows["distances"].to_numpy()), dist)
        top1.append(dist[:, 0])
    # a training haplotype never retrieves its own sample
    neigh_sample = np.array(index.samples)[np.stack(df["neighbours"].to_numpy()) // 2]
    assert not (neigh_sample == df["sample"].to_numpy()[:, None]).any()
    meta = t.schema.metadata
    assert meta[b"mask_hash"] == demo_tokens["hash"].encode()
    assert meta[b"index_kind"] == b"binary_flat" and meta[b"k"] == str(K).encode()
    assert meta[b"split"] == split.encode()
    assert stats == {
        "k": K,
        "mean_top1_distance": pytest.approx(float(np.mean(np.concatenate(top1)))),
    }


def test_retrieval_refuses_tokens_of_another_mask(demo_windows, demo_tokens, index_dir, tmp_path):
    store = tmp_path / "masks"  # the session store stays as the fixtures left it
    (other,) = run_mask_stage_dir(
        demo_windows, {"strategy": "random", "rate": 0.4, "seed": 12}, store, tmp_path / "c.json"
    )
    assert other != demo_tokens["hash"]
    run_tokenize_stage(demo_windows, store, other, "val", tmp_path / "val.parquet")
    out = tmp_path / "out.parquet"
    with pytest.raises(
        MaskMismatchError,
        match=rf"built with mask {demo_tokens['hash']}; the queries were tokenized with mask {other}",
    ):
        retrieve(tmp_path / "val.parquet", index_dir, K, out)
    assert not out.exists()
