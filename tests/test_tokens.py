"""tokens: VCF -> tokens -> alleles is the identity on observed sites; the mask hash travels along."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from ragimpute.atomic import read_json
from ragimpute.errors import ArtifactError, MaskMismatchError
from ragimpute.masks import Mask
from ragimpute.tokens import (
    ALT,
    MASK,
    PAD,
    REF,
    VOCAB,
    TokenTable,
    alleles_from_tokens,
    tokenize,
    tokenize_block,
)
from ragimpute.vcf_io import read_panel


def test_vocabulary():
    assert (PAD, MASK, REF, ALT) == (0, 1, 2, 3)
    assert VOCAB == {"PAD": 0, "MASK": 1, "REF": 2, "ALT": 3}


def test_tokenize_block_known():
    alleles = np.array([[0, 1, 1, 0], [1, 0, 1, 1]], dtype=np.uint8)
    masked = np.array([False, True, False, True])
    expected = [[REF, MASK, ALT, MASK], [ALT, MASK, ALT, MASK]]
    tok = tokenize_block(alleles, masked)
    assert tok.dtype == np.uint8 and tok.tolist() == expected
    assert alleles_from_tokens(tok).tolist() == [[0, -1, 1, -1], [1, -1, 1, -1]]
    assert alleles_from_tokens(np.array([[PAD, REF]], dtype=np.uint8)).tolist() == [[-1, 0]]


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_vcf_to_tokens_to_alleles_is_identity_on_observed_sites(
    demo, demo_windows, demo_tokens, split_dict, split
):
    panel = read_panel(demo.vcf, "20")
    masked = demo_tokens["mask"].masked
    windows = pd.read_parquet(demo_windows / "windows.parquet")
    table = TokenTable(demo_tokens["paths"][split])
    assert table.samples == split_dict[split]
    assert table.n_windows == len(windows)
    cols = [2 * panel.samples.index(s) + p for s in split_dict[split] for p in (0, 1)]
    n_checked = 0
    for w, tokens in table:
        a, b = windows.loc[w, "first_site"], windows.loc[w, "last_site"] + 1
        truth = panel.haplotypes[a:b, cols].T
        back = alleles_from_tokens(tokens)
        obs = ~masked[a:b]
        np.testing.assert_array_equal(back[:, obs], truth[:, obs])
        assert (tokens[:, ~obs] == MASK).all()
        assert (back[:, ~obs] == -1).all()
        assert not (tokens == PAD).any()
        n_checked += int(obs.sum())
    assert n_checked > 100


def test_token_metadata_and_column_carry_the_hash(demo_tokens):
    h = demo_tokens["hash"]
    path = demo_tokens["paths"]["val"]
    table = TokenTable(path)
    assert table.mask_hash == h and table.split == "val"
    assert table.site_list_hash == demo_tokens["mask"].site_list_hash
    t = pq.read_table(path)
    assert set(t.column("mask_hash").to_pylist()) == {h}
    assert t.schema.metadata[b"mask_hash"] == h.encode()
    assert pq.ParquetFile(path).num_row_groups == table.n_windows
    assert read_json(path.parent / "vocab.json") == VOCAB


def test_require_mask(demo_tokens):
    table = TokenTable(demo_tokens["paths"]["train"])
    table.require_mask(demo_tokens["hash"])
    with pytest.raises(
        MaskMismatchError,
        match=rf"tokenized with mask {demo_tokens['hash']}.*built with mask ffffffffffffffff",
    ):
        table.require_mask("ffffffffffffffff")


def test_tokenize_refuses_a_mask_for_another_site_list(demo_windows, demo_tokens, tmp_path):
    m = demo_tokens["mask"]
    other = Mask(m.hash, m.spec, m.masked, "0" * 16)
    with pytest.raises(ArtifactError, match="re-run windowing and masking"):
        tokenize(
            demo_windows / "haplotypes" / "train.parquet",
            pd.read_parquet(demo_windows / "windows.parquet"),
            other,
            tmp_path / "t.parquet",
        )
    assert not (tmp_path / "t.parquet").exists()


def test_token_table_refuses_a_haplotype_table(demo_windows):
    with pytest.raises(ArtifactError, match="is not a token table"):
        TokenTable(demo_windows / "haplotypes" / "train.parquet")
