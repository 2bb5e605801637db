"""Site masks with content hashes.

A mask says, for every site of a chromosome, whether it is hidden (to be predicted) or observed. It is
the same for every haplotype, so queries and the reference live in one feature space: the observed
sites. Its hash covers the canonical mask bytes, the strategy spec, the site list and a format version;
every token table and index carries it, and an index refuses queries with another hash.

Strategies:
- ``random``: hide ``rate`` of the sites, chosen uniformly (seeded);
- ``af``: allele-frequency aware, like a genotyping chip: sites with reference MAF < ``maf_threshold``
  are always hidden, and ``rate`` of the common sites are hidden;
- ``array``: hide every site not on an array manifest (the honest imputation setting); with
  ``array_dropout`` > 0 a seeded fraction of the array sites is hidden too.
A ``schedule`` of E > 0 gives E masks, one per epoch, each with its own seed, hash and index.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from . import __version__
from .atomic import file_sha256, read_artifact_json, read_parquet_df, write_json, write_parquet
from .errors import ArtifactError, InputError, UnreadableArtifactError
from .logs import log
from .vcf_io import normalize_chrom, snv_sites, upper_alleles, vcf_records_sites

FORMAT_VERSION = 1
STRATEGIES = ("random", "af", "array")
HASH_CHARS = 16


@dataclass
class Mask:
    hash: str
    spec: dict
    masked: np.ndarray  # (n_sites,) bool, True = hidden
    site_list_hash: str

    @property
    def observed(self) -> np.ndarray:
        return ~self.masked


def expand_specs(cfg: dict) -> list[dict]:
    """The canonical spec of each mask the config asks for (E of them with a schedule)."""
    strategy = cfg.get("strategy", "random")
    if strategy not in STRATEGIES:
        raise InputError(
            "mask.strategy", f"mask.strategy must be one of {STRATEGIES}, got {strategy!r}"
        )
    # Only what changes the mask goes in the spec, so that the same mask always has the same hash
    # (an array mask with no dropout draws nothing at random: its seed is left out).
    base: dict = {"strategy": strategy}
    if strategy in ("random", "af"):
        base["rate"] = float(cfg.get("rate", 0.5))
    if strategy == "af":
        base["maf_threshold"] = float(cfg.get("maf_threshold", 0.05))
    if strategy == "array":
        base["array_dropout"] = float(cfg.get("array_dropout", 0.0))
    for key in ("rate", "array_dropout"):
        if key in base and not 0.0 <= base[key] <= 1.0:
            raise InputError(f"mask.{key}", f"mask.{key} must be in [0, 1], got {base[key]}")
    random = strategy != "array" or base["array_dropout"] > 0
    if random:
        base["seed"] = int(cfg.get("seed", 0))
    epochs = int(cfg.get("schedule", 0) or 0)
    if epochs <= 0 or not random:
        if epochs > 0:
            log.warning(
                "mask.schedule=%d ignored: an array mask without dropout is the same every epoch",
                epochs,
            )
        return [base]
    return [{**base, "epoch": e} for e in range(epochs)]


def read_site_list(path: str | os.PathLike) -> pd.DataFrame:
    """An array manifest (TSV: chrom, pos[, ref, alt]) or the sites of a VCF/BCF."""
    p = Path(path)
    if not p.exists():
        raise InputError(
            p,
            "array manifest not found",
            "Check panel.array_manifest in the config (--array on the command line)",
        )
    if p.name.endswith((".vcf", ".vcf.gz", ".bcf", ".vcf.bgz")):
        return vcf_records_sites(p)
    layout = "a TSV with the header line `chrom pos ref alt` (ref, alt optional), or a VCF"
    if p.stat().st_size == 0:
        raise InputError(
            p, "array manifest is empty (0 bytes)", f"Give the array's sites: {layout}"
        )
    try:
        df = pd.read_csv(p, sep="\t", dtype={"chrom": str}, comment=None)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise InputError(
            p, f"cannot be read as a TSV ({str(e).strip()[:200]})", f"It must be {layout}"
        ) from e
    if not {"chrom", "pos"} <= set(df.columns):
        hint = None
        if len(df.columns) >= 2 and str(df.columns[1]).strip().isdigit():
            hint = (
                "The first line looks like a site, not a header: add a header line "
                "(chrom, pos, ref, alt; tab-separated) above it"
            )
        raise InputError(
            p,
            f"needs columns chrom and pos (and optionally ref, alt); has {list(df.columns)}",
            hint,
        )
    if df.empty:
        raise InputError(p, "array manifest lists no sites")
    pos = pd.to_numeric(df["pos"], errors="coerce")
    bad = np.flatnonzero(pos.isna().to_numpy() | (pos < 1).to_numpy() | (pos % 1 != 0).to_numpy())
    if len(bad):
        i = int(bad[0])
        raise InputError(
            p,
            f"position {str(df['pos'].iloc[i])!r} is not a positive whole number"
            + (f" ({len(bad)} such rows)" if len(bad) > 1 else ""),
            "Fix or remove that line (positions are 1-based, as in a VCF)",
            record=f"line {i + 2}",
        )
    df["pos"] = pos.astype(np.int64)
    return df


def match_sites(sites: pd.DataFrame, manifest: pd.DataFrame, manifest_path: object) -> np.ndarray:
    """Boolean per panel site: is it on the manifest? Chromosome names match with or without ``chr``;
    where the manifest gives alleles, REF/ALT may be swapped (the same SNV, other orientation)."""
    chrom = normalize_chrom(str(sites["chrom"].iloc[0]))
    m = manifest.loc[manifest["chrom"].astype(str).map(normalize_chrom) == chrom]
    if m.empty:
        raise InputError(
            manifest_path,
            f"no manifest site is on chromosome {sites['chrom'].iloc[0]} (manifest chromosomes: "
            f"{', '.join(sorted(manifest['chrom'].astype(str).unique())[:10])})",
            "The target or array does not overlap the reference: check the build and chromosome names",
        )
    alleles = {"ref", "alt"} <= set(m.columns)
    if alleles:
        m = upper_alleles(m.copy())  # bases are case-insensitive, as in the panel
        m = _without_non_snvs(m, manifest_path)
    # typed sites are SNVs: a panel indel (``panel.indels``) at an array position is imputed
    snv = snv_sites(sites)
    if not snv.any():
        raise InputError(
            manifest_path,
            f"the panel sites here ({sites['chrom'].iloc[0]}:{sites['pos'].min()}-"
            f"{sites['pos'].max()}) hold no SNV to type, only indels",
            "Lengthen chunks.length, or check the panel",
        )
    sites = sites.loc[snv]
    # The same site listed twice is one site: counted once, and said so (not as "not a panel SNV").
    dup = m.duplicated(subset=["pos", "ref", "alt"] if alleles else ["pos"])
    n_dup = int(dup.sum())
    m = m.loc[~dup]
    if alleles:
        mp, mr, ma = m["pos"].astype(np.int64), m["ref"].astype(str), m["alt"].astype(str)
        wanted = set(zip(mp, mr, ma, strict=True)) | set(zip(mp, ma, mr, strict=True))
        keys = zip(sites["pos"].astype(np.int64), sites["ref"], sites["alt"], strict=True)
        hit = np.fromiter((k in wanted for k in keys), dtype=bool, count=len(sites))
        panel = set(zip(sites["pos"].astype(np.int64), sites["ref"], sites["alt"], strict=True))
        row_hit = np.fromiter(
            ((p, r, a) in panel or (p, a, r) in panel for p, r, a in zip(mp, mr, ma, strict=True)),
            dtype=bool,
            count=len(m),
        )
    else:
        hit = sites["pos"].astype(np.int64).isin(set(m["pos"].astype(np.int64))).to_numpy()
        row_hit = m["pos"].astype(np.int64).isin(set(sites["pos"].astype(np.int64))).to_numpy()
    # A manifest site beyond the first or last panel site here is another chunk's (or beyond the
    # panel's end), not a site the panel lacks: said apart, so that every chunk does not warn of the
    # rest of the array.
    mpos = m["pos"].astype(np.int64).to_numpy()
    first, last = int(sites["pos"].min()), int(sites["pos"].max())
    inside = (mpos >= first) & (mpos <= last)
    name = sites["chrom"].iloc[0]
    if not hit.any():
        # array sites on either side and none among these panel sites: a chunk between two of them
        if (mpos < first).any() and (mpos > last).any() and not inside.any():
            raise InputError(
                manifest_path,
                f"none of its sites lies within {name}:{first}-{last}, the panel "
                "sites here (a chunk's), so there is nothing to impute them from",
                "Lengthen chunks.length (chunks of a few cM hold many array sites)",
            )
        raise InputError(
            manifest_path,
            f"none of its {len(m)} sites on chromosome {chrom} is a panel site (position and alleles)",
            "The target or array does not overlap the reference: check the genome build",
        )
    if n_dup:
        log.warning(
            "%s: %d rows repeat a site listed before on chromosome %s (each site counts once)",
            manifest_path,
            n_dup,
            chrom,
        )
    n_unmatched = int((~row_hit & inside).sum())
    if n_unmatched:
        shown = mpos[~row_hit & inside][:5]
        log.warning(
            "%s: %d of %d manifest sites within %s:%d-%d are not panel SNVs (ignored): %s%s. A site "
            "whose position the panel has is one with other alleles (or on the other strand)",
            manifest_path, n_unmatched, int(inside.sum()), name, first, last,
            ", ".join(f"{name}:{p}" for p in shown), ", ..." if n_unmatched > len(shown) else "",
        )  # fmt: skip
    if not inside.all():
        log.info(
            "%s: %d manifest sites on chromosome %s lie outside %d-%d, the panel sites here "
            "(another chunk's, or beyond the panel)",
            manifest_path, int((~inside).sum()), name, first, last,
        )  # fmt: skip
    out = np.zeros(len(snv), dtype=bool)
    out[snv] = hit
    return out


def _without_non_snvs(m: pd.DataFrame, manifest_path: object) -> pd.DataFrame:
    """The manifest's SNV rows: an indel (or other non-SNV) on it would be typed in the mask while
    every target skips its indel records, so it is left out, and said so."""
    snv = snv_sites(m)
    if not snv.all():
        rows = m.loc[~snv].head(5)
        shown = ", ".join(f"{c}:{p}" for c, p in zip(rows["chrom"], rows["pos"], strict=True))
        log.warning(
            "%s: %d rows are not SNVs (%s%s); typed sites are SNVs only (a target's indel records "
            "are skipped), so they are left out of the array (an indel the panel has is imputed)",
            manifest_path, int((~snv).sum()), shown, ", ..." if (~snv).sum() > 5 else "",
        )  # fmt: skip
    return m.loc[snv]


def make_mask(spec: dict, sites: pd.DataFrame, on_array: np.ndarray | None = None) -> np.ndarray:
    """Boolean per site, True = hidden. Deterministic in (spec, sites, array)."""
    n = len(sites)
    rng = np.random.default_rng([spec.get("seed", 0), spec.get("epoch", 0)])
    strategy = spec["strategy"]
    masked = np.zeros(n, dtype=bool)
    # a panel's indels (``panel.indels``) are never typed, so no mask observes them: the network
    # would otherwise train on contexts that inference never gives it. Draws are among the SNVs,
    # which on a panel without indels are the draws among all sites, as before.
    snv = snv_sites(sites)
    masked[~snv] = True
    if strategy == "random":
        candidates = np.flatnonzero(snv)
        size = int(round(spec["rate"] * len(candidates)))
        masked[rng.choice(candidates, size=size, replace=False)] = True
    elif strategy == "af":
        maf = sites["maf"].to_numpy()
        common = np.flatnonzero((maf >= spec["maf_threshold"]) & snv)
        masked[maf < spec["maf_threshold"]] = True
        masked[rng.choice(common, size=int(round(spec["rate"] * len(common))), replace=False)] = (
            True
        )
    elif strategy == "array":
        if on_array is None:
            raise ValueError("the array strategy needs an array manifest")
        masked = ~on_array
        arr = np.flatnonzero(on_array)
        drop = int(round(spec.get("array_dropout", 0.0) * len(arr)))
        if drop:
            masked[rng.choice(arr, size=drop, replace=False)] = True
    else:
        raise ValueError(f"unknown mask strategy {strategy!r}")
    return masked


def canonical_spec(spec: dict) -> str:
    return json.dumps(spec, sort_keys=True, separators=(",", ":"))


def mask_hash(masked: np.ndarray, spec: dict, site_list_hash: str) -> str:
    h = hashlib.sha256()
    for part in (
        b"ragimpute-mask",
        str(FORMAT_VERSION).encode(),
        canonical_spec(spec).encode(),
        site_list_hash.encode(),
    ):
        h.update(part + b"\0")
    h.update(len(masked).to_bytes(8, "little"))
    h.update(np.packbits(masked.astype(bool)).tobytes())
    return h.hexdigest()[:HASH_CHARS]


def store_mask(
    store: str | os.PathLike,
    masked: np.ndarray,
    spec: dict,
    sites: pd.DataFrame,
    site_list_hash: str,
    provenance: dict | None = None,
) -> str:
    """Write ``store/<hash>/{spec.json,mask.parquet}`` unless already there; return the hash.

    An existing store entry is left untouched (its mtime too), so that artifacts keyed on it, such as
    the index, are not rebuilt when an earlier mask setting comes back. The hash does not cover the
    windows (``sites["window"]``): an entry written under other windows (windows.length changed) is
    written again, so that its ``window`` column and per-window counts are those of the windows now.
    """
    h = mask_hash(masked, spec, site_list_hash)
    d = Path(store) / h
    existing = None
    if (d / "mask.parquet").exists():
        try:
            existing = load_mask(store, h)
        except UnreadableArtifactError as e:  # corrupt or half gone: written again below
            log.warning("%s; writing mask %s again", e, h)
    if existing is not None:
        if not np.array_equal(existing.masked, masked) or existing.spec != spec:
            raise ArtifactError(
                f"{d}: stored mask differs from the one with the same hash; delete {d}"
            )
        if _same_windows(d / "mask.parquet", sites):
            return h
        log.info("mask %s was stored for other windows: its window column is written again", h)
    windows = sites["window"].to_numpy()
    n_win = int(windows.max()) + 1 if len(windows) else 0
    observed_per_window = np.bincount(windows[~masked], minlength=n_win)
    empty = np.flatnonzero(observed_per_window == 0).tolist()
    if empty:
        log.warning(
            "mask %s: %d windows have no observed site (%s...); retrieval there has nothing to match on",
            h,
            len(empty),
            empty[:5],
        )
    info = {
        "hash": h,
        "format_version": FORMAT_VERSION,
        "spec": spec,
        "site_list_hash": site_list_hash,
        "chrom": str(sites["chrom"].iloc[0]),
        "n_sites": len(masked),
        "n_masked": int(masked.sum()),
        "n_observed": int((~masked).sum()),
        "observed_per_owned_window": {
            "min": int(observed_per_window.min()) if n_win else 0,
            "median": float(np.median(observed_per_window)) if n_win else 0.0,
        },
        "windows_without_observed": empty,
        "seed": spec.get("seed"),
        "ragimpute": __version__,
        **({"provenance": provenance} if provenance else {}),
    }
    table = pa.table(
        {
            "site": sites["site"].to_numpy(),
            "pos": sites["pos"].to_numpy(),
            "window": sites["window"].to_numpy(),
            "masked": masked,
        }
    )
    write_json(d / "spec.json", info)
    write_parquet(
        d / "mask.parquet",
        table,
        {
            "mask_hash": h,
            "site_list_hash": site_list_hash,
            "format_version": FORMAT_VERSION,
            "spec": canonical_spec(spec),
        },
    )
    return h


def _same_windows(path: Path, sites: pd.DataFrame) -> bool:
    """Whether a stored mask's ``window`` column is that of ``sites`` (the windows now)."""
    stored = read_parquet_df(path, "mask", columns=["window"])["window"].to_numpy()
    return np.array_equal(stored, sites["window"].to_numpy())


def load_mask(store: str | os.PathLike, h: str) -> Mask:
    d = Path(store) / h
    path = d / "mask.parquet"
    if not path.exists():
        raise ArtifactError(
            f"{path} is missing. It is written by the `mask` checkpoint; run `snakemake --forcerun mask` "
            "(or `ragimpute mask`) to restore it"
        )
    info = read_artifact_json(d / "spec.json", "mask")
    if info.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(
            f"{d}: mask format {info.get('format_version')}, this version reads {FORMAT_VERSION}"
        )
    masked = read_parquet_df(path, "mask", columns=["masked"])["masked"].to_numpy()
    mask = Mask(h, info["spec"], masked, info["site_list_hash"])
    if mask_hash(masked, mask.spec, mask.site_list_hash) != h:
        raise ArtifactError(
            f"{d}: content does not match its hash {h}; it was modified. Delete it and re-run"
        )
    return mask


def load_mask_for(
    store: str | os.PathLike, h: str, site_list_hash: str, stage: str = "mask"
) -> Mask:
    """``load_mask``, refused when the mask was made for another site list than the windows' one
    (``site_list_hash``); ``stage`` is the one to re-run."""
    mask = load_mask(store, h)
    if mask.site_list_hash != site_list_hash:
        raise ArtifactError(
            f"mask {h} was made for site list {mask.site_list_hash}, the windows are "
            f"{site_list_hash}; re-run the {stage} stage"
        )
    return mask


def run_mask_stage(
    sites: pd.DataFrame,
    site_list_hash: str,
    cfg: dict,
    store: str | os.PathLike,
    current_json: str | os.PathLike,
    array_manifest: str | os.PathLike | None = None,
) -> list[str]:
    """Make every mask the config asks for, store them by hash, and write the list to ``current_json``."""
    specs = expand_specs(cfg)
    on_array = None
    provenance = None
    if specs[0]["strategy"] == "array":
        if not array_manifest:
            raise InputError(
                "config",
                "mask.strategy is 'array' but no array manifest is configured",
                "Set panel.array_manifest (--array on the command line; the demo writes one), "
                "or choose mask.strategy random or af",
            )
        on_array = match_sites(sites, read_site_list(array_manifest), array_manifest)
        provenance = {
            "array_manifest": str(array_manifest),
            "array_manifest_sha256": file_sha256(array_manifest),
            "array_sites_matched": int(on_array.sum()),
        }
    hashes = []
    for spec in specs:
        masked = make_mask(spec, sites, on_array)
        hashes.append(store_mask(store, masked, spec, sites, site_list_hash, provenance))
        log.info(
            "mask %s: %s, %d of %d sites hidden",
            hashes[-1],
            canonical_spec(spec),
            masked.sum(),
            len(masked),
        )
    write_json(
        current_json, {"chrom": str(sites["chrom"].iloc[0]), "hashes": hashes, "specs": specs}
    )
    return hashes


def run_mask_stage_dir(
    windows_dir: str | os.PathLike,
    cfg: dict,
    store: str | os.PathLike,
    current_json: str | os.PathLike,
    array_manifest: str | os.PathLike | None = None,
) -> list[str]:
    from .windows import sites_with_hash

    sites, slh = sites_with_hash(windows_dir)
    return run_mask_stage(sites, slh, cfg, store, current_json, array_manifest)
