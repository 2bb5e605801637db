"""masks: every strategy against a set-based version; content hashes change exactly when content does."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import needs_bcftools, vcf_text, write_vcf

from ragimpute.atomic import read_json, write_json
from ragimpute.errors import ArtifactError, InputError
from ragimpute.masks import (
    expand_specs,
    load_mask,
    make_mask,
    mask_hash,
    match_sites,
    read_site_list,
    run_mask_stage,
    store_mask,
)
from ragimpute.windows import sites_with_hash


@pytest.fixture(scope="module")
def sites(demo_windows) -> tuple[pd.DataFrame, str]:
    return sites_with_hash(demo_windows)


def hidden(masked: np.ndarray) -> set[int]:
    return {int(i) for i in np.flatnonzero(masked)}


# -- strategies against sets ------------------------------------------------------------------------


@pytest.mark.parametrize("rate", [0.0, 0.1, 0.37, 0.5, 1.0])
def test_random_hides_exactly_rate_of_sites(sites, rate):
    df, _ = sites
    (spec,) = expand_specs({"strategy": "random", "rate": rate, "seed": 3})
    m = make_mask(spec, df)
    assert m.dtype == bool and m.shape == (len(df),)
    assert len(hidden(m)) == round(rate * len(df))


def test_random_depends_on_seed_only_through_the_draw(sites):
    df, _ = sites
    a = make_mask({"strategy": "random", "rate": 0.3, "seed": 1}, df)
    b = make_mask({"strategy": "random", "rate": 0.3, "seed": 1}, df)
    c = make_mask({"strategy": "random", "rate": 0.3, "seed": 2}, df)
    assert hidden(a) == hidden(b) != hidden(c)
    assert len(hidden(a)) == len(hidden(c))


@pytest.mark.parametrize("threshold,rate", [(0.05, 0.5), (0.1, 0.0), (0.2, 1.0), (0.0, 0.3)])
def test_af_hides_every_rare_site_and_rate_of_the_common(sites, threshold, rate):
    df, _ = sites
    (spec,) = expand_specs({"strategy": "af", "rate": rate, "maf_threshold": threshold, "seed": 9})
    m = hidden(make_mask(spec, df))
    rare = {i for i, maf in enumerate(df["maf"]) if maf < threshold}
    common = set(range(len(df))) - rare
    assert rare <= m
    assert len(m & common) == round(rate * len(common))
    if threshold >= 0.05:
        assert rare  # the demo has rare variants; the check above is not vacuous


def _with_indels(df: pd.DataFrame, every: int = 6) -> tuple[pd.DataFrame, set[int]]:
    """The sites with every ``every``-th rewritten as an insertion (as ``panel.indels`` keeps them)."""
    out = df.copy()
    rows = list(range(2, len(df), every))
    out.loc[rows, "alt"] = out.loc[rows, "ref"] + "T"
    return out, set(rows)


def test_random_and_af_on_snvs_alone_draw_as_over_every_site(sites):
    """No indels: the draws among the SNVs are the draws among all sites (masks of earlier
    versions keep their hashes)."""
    df, _ = sites
    for seed, rate in ((1, 0.3), (5, 0.77)):
        expected = np.random.default_rng([seed, 0]).choice(
            len(df), int(round(rate * len(df))), replace=False
        )
        got = make_mask({"strategy": "random", "rate": rate, "seed": seed}, df)
        assert hidden(got) == set(expected.tolist())


@pytest.mark.parametrize(
    "spec",
    [
        {"strategy": "random", "rate": 0.3, "seed": 1},
        {"strategy": "random", "rate": 0.0, "seed": 1},
        {"strategy": "af", "rate": 0.5, "maf_threshold": 0.05, "seed": 9},
        {"strategy": "af", "rate": 0.0, "maf_threshold": 0.0, "seed": 9},
    ],
)
def test_training_masks_never_observe_an_indel(sites, spec):
    """Inference never types an indel, so no training mask may observe one; the rate applies to
    the SNVs."""
    df, _ = sites
    df, indels = _with_indels(df)
    m = hidden(make_mask(spec, df))
    assert indels <= m
    snvs = set(range(len(df))) - indels
    if spec["strategy"] == "random":
        assert len(m & snvs) == round(spec["rate"] * len(snvs))
    else:
        common = {i for i in snvs if df["maf"].iloc[i] >= spec["maf_threshold"]}
        assert len(m & common) == round(spec["rate"] * len(common))
        assert snvs - common <= m
    if spec["rate"] == 0.0:
        assert m == indels | {i for i in snvs if df["maf"].iloc[i] < spec.get("maf_threshold", 0)}


def _manifest_rows(df: pd.DataFrame, idx: list[int], chrom: str = "20", swap: bool = False):
    rows = []
    for i in idx:
        r = df.iloc[i]
        ref, alt = (r["alt"], r["ref"]) if swap and i % 2 else (r["ref"], r["alt"])
        rows.append((chrom, int(r["pos"]), ref, alt))
    return rows


def _write_manifest(path, rows, columns=("chrom", "pos", "ref", "alt")):
    pd.DataFrame(rows, columns=list(columns)).to_csv(path, sep="\t", index=False)
    return path


@pytest.mark.parametrize("chrom", ["20", "chr20", "Chr20"])
@pytest.mark.parametrize("swap", [False, True])
def test_array_hides_exactly_the_sites_not_on_the_manifest(sites, tmp_path, chrom, swap):
    df, _ = sites
    on = list(range(0, len(df), 7))
    rows = _manifest_rows(df, on, chrom, swap)
    # Sites that must not match: a panel position with other alleles, an off-panel position, another
    # chromosome.
    r = df.iloc[3]
    other = next(b for b in "ACGT" if b not in (r["ref"], r["alt"]))
    rows += [
        (chrom, int(r["pos"]), r["ref"], other),
        (chrom, 1, "A", "C"),
        ("21", int(df.iloc[5]["pos"]), df.iloc[5]["ref"], df.iloc[5]["alt"]),
    ]
    path = _write_manifest(tmp_path / "array.tsv", rows)
    on_array = match_sites(df, read_site_list(path), path)
    # set-based: (pos, {ref, alt}) of manifest rows on this chromosome
    wanted = {
        (p, frozenset((a, b))) for c, p, a, b in rows if c.lower().removeprefix("chr") == "20"
    }
    expected = {
        i for i, r in enumerate(df.itertuples()) if (r.pos, frozenset((r.ref, r.alt))) in wanted
    }
    assert expected == set(on)
    (spec,) = expand_specs({"strategy": "array", "seed": 4})
    assert hidden(make_mask(spec, df, on_array)) == set(range(len(df))) - expected


def test_array_manifest_without_alleles_matches_on_position(sites, tmp_path):
    df, _ = sites
    on = [1, 2, 50, 100]
    path = _write_manifest(
        tmp_path / "a.tsv", [("chr20", int(df.iloc[i]["pos"])) for i in on], ("chrom", "pos")
    )
    assert set(np.flatnonzero(match_sites(df, read_site_list(path), path))) == set(on)


@needs_bcftools
def test_array_manifest_as_vcf(sites, tmp_path):
    df, _ = sites
    on = [0, 10, 20, 30]
    recs = [
        ("chr20", int(df.iloc[i]["pos"]), df.iloc[i]["alt"], df.iloc[i]["ref"], "PASS", ["0|0"])
        for i in on
    ]
    path = write_vcf(tmp_path / "array.vcf.gz", vcf_text(recs, ["X"], contigs=("chr20",)))
    assert set(np.flatnonzero(match_sites(df, read_site_list(path), path))) == set(on)


@pytest.mark.parametrize("dropout", [0.1, 0.5, 1.0])
def test_array_dropout_hides_a_seeded_fraction_of_the_array(sites, dropout):
    df, _ = sites
    on_array = np.zeros(len(df), dtype=bool)
    on_array[::5] = True
    (spec,) = expand_specs({"strategy": "array", "array_dropout": dropout, "seed": 2})
    m = hidden(make_mask(spec, df, on_array))
    arr = set(np.flatnonzero(on_array).tolist())
    assert set(range(len(df))) - arr <= m
    assert len(m & arr) == round(dropout * len(arr))
    other = hidden(make_mask({**spec, "seed": 3}, df, on_array))
    assert (m == other) == (dropout == 1.0)


def test_manifest_on_another_chromosome_is_a_clear_error(sites, tmp_path):
    df, _ = sites
    path = _write_manifest(tmp_path / "a.tsv", [("chr7", 100, "A", "C"), ("7", 200, "A", "G")])
    with pytest.raises(
        InputError,
        match=r"a\.tsv: no manifest site is on chromosome 20 \(manifest chromosomes: 7, chr7\)",
    ):
        match_sites(df, read_site_list(path), path)


def test_manifest_with_no_overlap_is_a_clear_error(sites, tmp_path):
    df, _ = sites
    path = _write_manifest(tmp_path / "a.tsv", [("20", 1, "A", "C"), ("20", 2, "A", "G")])
    with pytest.raises(
        InputError,
        match=r"a\.tsv: none of its 2 sites on chromosome 20 is a panel site.*genome build",
    ):
        match_sites(df, read_site_list(path), path)


def test_a_chunk_between_two_array_sites_says_so(sites, tmp_path):
    """A chunk's sites with array sites only on either side: not another genome build."""
    df, _ = sites
    chunk = df.iloc[100:120].reset_index(drop=True)
    outside = [df.iloc[10], df.iloc[300]]
    path = _write_manifest(tmp_path / "a.tsv", [("20", int(r["pos"]), r["ref"], r["alt"])
                                                for r in outside])  # fmt: skip
    with pytest.raises(
        InputError, match="none of its sites lies within 20:.*Lengthen chunks.length"
    ):
        match_sites(chunk, read_site_list(path), path)


@pytest.mark.parametrize(
    "text,pattern",
    [
        ("chrom\tposition\n20\t5\n", "needs columns chrom and pos"),
        ("chrom\tpos\n", "lists no sites"),
    ],
)
def test_bad_manifests(tmp_path, text, pattern):
    p = tmp_path / "a.tsv"
    p.write_text(text)
    with pytest.raises(InputError, match=pattern):
        read_site_list(p)
    with pytest.raises(InputError, match=r"array manifest not found.*panel\.array_manifest"):
        read_site_list(tmp_path / "missing.tsv")


def test_array_strategy_without_manifest(sites, tmp_path):
    df, slh = sites
    with pytest.raises(InputError, match=r"no array manifest is configured.*panel\.array_manifest"):
        run_mask_stage(df, slh, {"strategy": "array"}, tmp_path / "s", tmp_path / "c.json")


# -- hashes -----------------------------------------------------------------------------------------


def test_same_inputs_same_hash_any_change_new_hash(sites):
    df, slh = sites
    spec = {"strategy": "random", "rate": 0.3, "seed": 5}
    m = make_mask(spec, df)
    h = mask_hash(m, spec, slh)
    assert len(h) == 16 and all(c in "0123456789abcdef" for c in h)
    assert mask_hash(make_mask(dict(spec), df), dict(reversed(spec.items())), slh) == h
    flipped = m.copy()
    flipped[123] = ~flipped[123]
    changed = {
        mask_hash(flipped, spec, slh),
        mask_hash(m, {**spec, "rate": 0.30000001}, slh),
        mask_hash(m, {**spec, "seed": 6}, slh),
        mask_hash(m, {**spec, "strategy": "af"}, slh),
        mask_hash(m, {**spec, "epoch": 0}, slh),
        mask_hash(m, spec, "0" * 16),
        mask_hash(m[:-1], spec, slh),
        mask_hash(np.r_[m, False], spec, slh),
    }
    assert h not in changed and len(changed) == 8


def test_array_mask_hash_ignores_seed_and_rate(sites, tmp_path, demo):
    df, slh = sites
    hashes = set()
    for i, cfg in enumerate([{"seed": 1}, {"seed": 2, "rate": 0.9}, {"seed": 3, "schedule": 4}]):
        hashes.update(
            run_mask_stage(
                df,
                slh,
                {"strategy": "array", **cfg},
                tmp_path / "s",
                tmp_path / f"{i}.json",
                demo.array,
            )
        )
    assert len(hashes) == 1
    with_dropout = {
        run_mask_stage(
            df,
            slh,
            {"strategy": "array", "array_dropout": 0.2, "seed": s},
            tmp_path / "s",
            tmp_path / "d.json",
            demo.array,
        )[0]
        for s in (1, 2)
    }
    assert len(with_dropout) == 2 and not with_dropout & hashes


def test_expand_specs_are_canonical():
    assert expand_specs({"strategy": "random", "rate": 1, "seed": "3", "maf_threshold": 0.2}) == [
        {"strategy": "random", "rate": 1.0, "seed": 3}
    ]
    assert expand_specs(
        {"strategy": "af", "rate": 0.5, "maf_threshold": 0.01, "seed": 1, "array_dropout": 0.3}
    ) == [{"strategy": "af", "rate": 0.5, "maf_threshold": 0.01, "seed": 1}]
    assert expand_specs({"strategy": "array", "seed": 1, "rate": 0.2}) == [
        {"strategy": "array", "array_dropout": 0.0}
    ]
    with pytest.raises(ValueError, match="strategy"):
        expand_specs({"strategy": "chip"})
    with pytest.raises(ValueError, match=r"mask\.rate must be in \[0, 1\]"):
        expand_specs({"strategy": "random", "rate": 1.5})


def test_schedule_gives_distinct_masks_and_hashes(sites, tmp_path):
    df, slh = sites
    cfg = {"strategy": "random", "rate": 0.4, "seed": 8, "schedule": 5}
    hashes = run_mask_stage(df, slh, cfg, tmp_path / "store", tmp_path / "current.json")
    assert len(set(hashes)) == 5
    masks = [load_mask(tmp_path / "store", h) for h in hashes]
    assert [m.spec["epoch"] for m in masks] == list(range(5))
    assert len({tuple(np.flatnonzero(m.masked)) for m in masks}) == 5
    assert all(m.masked.sum() == round(0.4 * len(df)) for m in masks)
    current = read_json(tmp_path / "current.json")
    assert current["hashes"] == hashes and current["chrom"] == "20"
    # the same schedule again gives the same hashes
    assert run_mask_stage(df, slh, cfg, tmp_path / "store", tmp_path / "c2.json") == hashes


# -- the store -------------------------------------------------------------------------------------


def test_store_is_idempotent_and_keeps_mtime(sites, tmp_path):
    df, slh = sites
    spec = {"strategy": "random", "rate": 0.2, "seed": 1}
    m = make_mask(spec, df)
    h = store_mask(tmp_path, m, spec, df, slh, {"note": "first"})
    d = tmp_path / h
    old = 1_000_000_000
    for f in ("mask.parquet", "spec.json"):
        os.utime(d / f, (old, old))
    assert store_mask(tmp_path, m, spec, df, slh, {"note": "second"}) == h
    assert (d / "mask.parquet").stat().st_mtime == old
    assert (d / "spec.json").stat().st_mtime == old
    loaded = load_mask(tmp_path, h)
    np.testing.assert_array_equal(loaded.masked, m)
    assert loaded.spec == spec and loaded.site_list_hash == slh and loaded.hash == h
    info = read_json(d / "spec.json")
    assert (
        info["n_masked"] == int(m.sum())
        and info["seed"] == 1
        and info["provenance"] == {"note": "first"}
    )
    table = pq.read_table(d / "mask.parquet")
    assert table.column_names == ["site", "pos", "window", "masked"]
    assert table.schema.metadata[b"mask_hash"] == h.encode()
    np.testing.assert_array_equal(table.column("pos").to_numpy(), df["pos"].to_numpy())


def test_store_rewrites_an_entry_made_for_other_windows(sites, tmp_path):
    """The hash covers the sites, not the windows: after windows.length changes, the same mask's
    stored window column and per-window counts are those of the new windows, as a fresh run's."""
    df, slh = sites
    spec = {"strategy": "random", "rate": 0.2, "seed": 1}
    m = make_mask(spec, df)
    h = store_mask(tmp_path, m, spec, df, slh)
    other = df.assign(window=df["window"] // 2)  # the same sites in longer windows
    assert store_mask(tmp_path, m, spec, other, slh) == h
    stored = pq.read_table(tmp_path / h / "mask.parquet").column("window").to_numpy()
    np.testing.assert_array_equal(stored, other["window"].to_numpy())
    fresh = tmp_path / "fresh"
    store_mask(fresh, m, spec, other, slh)
    assert read_json(tmp_path / h / "spec.json") == read_json(fresh / h / "spec.json")
    np.testing.assert_array_equal(load_mask(tmp_path, h).masked, m)


def test_load_mask_detects_a_tampered_mask(sites, tmp_path):
    df, slh = sites
    spec = {"strategy": "random", "rate": 0.2, "seed": 1}
    h = store_mask(tmp_path, make_mask(spec, df), spec, df, slh)
    path = tmp_path / h / "mask.parquet"
    t = pq.read_table(path)
    masked = t.column("masked").to_numpy(zero_copy_only=False).copy()
    masked[7] = ~masked[7]
    pq.write_table(
        t.set_column(3, "masked", pa.array(masked)).replace_schema_metadata(t.schema.metadata), path
    )
    with pytest.raises(ArtifactError, match=rf"does not match its hash {h}; it was modified"):
        load_mask(tmp_path, h)
    # making the same mask again does not silently re-use the tampered entry
    with pytest.raises(ArtifactError, match="it was modified. Delete it and re-run"):
        store_mask(tmp_path, make_mask(spec, df), spec, df, slh)


def test_load_mask_detects_an_edited_spec(sites, tmp_path):
    df, slh = sites
    spec = {"strategy": "random", "rate": 0.2, "seed": 1}
    h = store_mask(tmp_path, make_mask(spec, df), spec, df, slh)
    info = read_json(tmp_path / h / "spec.json")
    info["spec"]["rate"] = 0.3
    write_json(tmp_path / h / "spec.json", info)
    with pytest.raises(ArtifactError, match="it was modified"):
        load_mask(tmp_path, h)


def test_load_mask_missing_says_how_to_restore(tmp_path):
    with pytest.raises(ArtifactError, match=r"snakemake --forcerun mask"):
        load_mask(tmp_path, "0123456789abcdef")


def test_run_mask_stage_records_the_manifest(sites, tmp_path, demo):
    df, slh = sites
    (h,) = run_mask_stage(
        df, slh, {"strategy": "array"}, tmp_path / "s", tmp_path / "c.json", demo.array
    )
    info = read_json(tmp_path / "s" / h / "spec.json")
    import hashlib

    assert (
        info["provenance"]["array_manifest_sha256"]
        == hashlib.sha256(demo.array.read_bytes()).hexdigest()
    )
    manifest = pd.read_csv(demo.array, sep="\t", dtype={"chrom": str})
    # the demo's array sites are panel sites
    assert info["provenance"]["array_sites_matched"] == len(manifest) == info["n_observed"]


def test_manifest_sites_beyond_a_chunks_sites_are_not_called_missing_from_the_panel(
    sites, tmp_path, caplog
):
    """A chunk's sites cover part of the chromosome: the array's sites elsewhere are another
    chunk's, not panel SNVs that are missing, and only those within its span are warned of."""
    df, _ = sites
    chunk = df.iloc[100:200]
    rows = _manifest_rows(df, list(range(0, len(df), 5)), "20", False)
    r = chunk.iloc[10]
    other = next(b for b in "ACGT" if b not in (r["ref"], r["alt"]))
    rows.append(("20", int(r["pos"]), r["ref"], other))  # inside the chunk, not a panel SNV
    path = _write_manifest(tmp_path / "array.tsv", rows)
    caplog.set_level("INFO", logger="ragimpute")
    on_array = match_sites(chunk.reset_index(drop=True), read_site_list(path), path)
    assert on_array.sum() == 20  # every fifth of the chunk's 100 sites
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "1 of 21 manifest sites within 20:" in warnings[0], warnings
    assert f"(ignored): 20:{int(r['pos'])}. A site" in warnings[0]  # named, to be looked up
    assert f"{len(rows) - 21} manifest sites on chromosome 20 lie outside" in caplog.text
