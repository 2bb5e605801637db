"""Train / val / test sample split: disjoint, seeded, or given by the user.

Train samples are the reference panel (the retrieval database and the training data); val samples
choose the best model; test samples are the held-out imputation targets. No sample is in two splits.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from .atomic import read_artifact_json, reading, write_json, write_tsv
from .errors import ArtifactError, InputError, UnreadableArtifactError, rebuild_hint

SPLITS = ("train", "val", "test")


def random_split(samples: list[str], fractions: dict[str, float], seed: int) -> pd.DataFrame:
    """Shuffle with ``seed`` and cut by ``fractions``; every split gets at least one sample."""
    fr = {s: float(fractions.get(s, 0.0)) for s in SPLITS}
    if any(v < 0 for v in fr.values()) or not np.isclose(sum(fr.values()), 1.0):
        raise InputError(
            "split.fractions",
            f"split fractions must be >= 0 and sum to 1, got {fr}",
            "Fix split.fractions in the config (--fractions on the command line)",
        )
    n = len(samples)
    if n < 3:
        raise InputError(
            "split", f"{n} samples cannot be split three ways", "A panel needs >= 3 samples"
        )
    counts = {s: max(1, int(round(fr[s] * n))) for s in ("val", "test")}
    counts["train"] = n - counts["val"] - counts["test"]
    if counts["train"] < 1:
        raise InputError(
            "split", f"no training samples left of {n}", "Lower split.fractions val/test"
        )
    order = np.random.default_rng(seed).permutation(n)
    labels = np.empty(n, dtype=object)
    cut = np.cumsum([counts["train"], counts["val"]])
    labels[order[: cut[0]]] = "train"
    labels[order[cut[0] : cut[1]]] = "val"
    labels[order[cut[1] :]] = "test"
    return pd.DataFrame({"sample": samples, "split": labels})


def population_split(
    samples: list[str],
    populations: dict[str, str],
    targets: str,
    fractions: dict[str, float],
    seed: int,
) -> pd.DataFrame:
    """Every sample of population ``targets`` is a held-out target (test); the others are split into
    train and val in the proportions of ``fractions`` (the admixed demo: reference from the source
    populations, admixed targets)."""
    is_target = np.array([populations.get(s) == targets for s in samples])
    if not is_target.any() or is_target.all():
        raise InputError(
            "split",
            f"population {targets!r} holds {int(is_target.sum())} of {len(samples)} samples",
            "The targets' population must hold some samples, and not all of them",
        )
    rest = [s for s, t in zip(samples, is_target, strict=True) if not t]
    fr = {k: float(fractions.get(k, 0.0)) for k in ("train", "val")}
    total = fr["train"] + fr["val"]
    if total <= 0:
        raise InputError("split.fractions", "train and val fractions are both 0", "Fix them")
    n_val = max(1, int(round(fr["val"] / total * len(rest))))
    if n_val >= len(rest):
        raise InputError("split", f"no training samples left of {len(rest)}", "Lower val")
    order = np.random.default_rng(seed).permutation(len(rest))
    label = dict.fromkeys(rest, "train")
    for i in order[:n_val]:
        label[rest[i]] = "val"
    return pd.DataFrame(
        {
            "sample": samples,
            "split": ["test" if t else label[s] for s, t in zip(samples, is_target, strict=True)],
        }
    )


def read_split_table(path: str | os.PathLike, vcf_samples: list[str]) -> pd.DataFrame:
    """A user's TSV with columns ``sample`` and ``split``; panel samples it leaves out are not used."""
    p = Path(path)
    if not p.exists():
        raise InputError(p, "split table not found", "Set split.table in the config, or remove it")
    # No NA parsing: an empty cell must be reported, not turned into NaN (which crashed the checks
    # below), and sample names such as "NA" or "null" must stay names.
    df = pd.read_csv(p, sep="\t", dtype=str, keep_default_na=False)
    if not {"sample", "split"} <= set(df.columns):
        raise InputError(p, f"needs columns 'sample' and 'split', has {list(df.columns)}")
    for i, (sample, label) in enumerate(zip(df["sample"], df["split"], strict=True)):
        if not sample.strip():
            raise InputError(p, "a row has no sample name", record=f"line {i + 2}")
        if not label.strip():
            raise InputError(
                p,
                f"sample {sample} has no split label",
                f"Use {', '.join(SPLITS)}",
                f"line {i + 2}",
            )
    bad = sorted(set(df["split"]) - set(SPLITS))
    if bad:
        raise InputError(p, f"unknown split labels {bad}", f"Use {', '.join(SPLITS)}")
    dup = df.loc[df["sample"].duplicated(keep=False)]
    if len(dup):
        first = dup.iloc[0]["sample"]
        labels = sorted(set(dup.loc[dup["sample"] == first, "split"]))
        what = "in two splits" if len(labels) > 1 else "listed twice"
        raise InputError(
            p, f"sample {first} is {what} ({', '.join(labels)})", "Each sample goes in one split"
        )
    unknown = sorted(set(df["sample"]) - set(vcf_samples))
    if unknown:
        raise InputError(
            p,
            f"{len(unknown)} samples are not in the panel VCF: {', '.join(unknown[:5])}",
            "Check sample names (bcftools query -l panel.vcf.gz)",
        )
    missing = [s for s in SPLITS if not (df["split"] == s).any()]
    if missing:
        raise InputError(
            p, f"no samples in split(s) {missing}", "Every split needs at least one sample"
        )
    # Keep the VCF's sample order so that haplotype columns are in file order within each split.
    order = {s: i for i, s in enumerate(vcf_samples)}
    return (
        df.assign(_o=df["sample"].map(order))
        .sort_values("_o")
        .drop(columns="_o")
        .reset_index(drop=True)
    )


def write_split(df: pd.DataFrame, out_tsv: str | os.PathLike, provenance: dict) -> None:
    write_tsv(out_tsv, df[["sample", "split"]])
    counts = df["split"].value_counts().reindex(SPLITS, fill_value=0).to_dict()
    write_json(Path(out_tsv).with_suffix(".json"), {**provenance, "counts": counts})


def load_split(path: str | os.PathLike) -> dict[str, list[str]]:
    """The samples of each split, as the split stage wrote them (``write_split``): a table that is
    cut short or otherwise does not match the counts in its ``samples.json`` is refused."""
    if not Path(path).exists():
        raise ArtifactError(f"{path} is missing; run the split stage first (`ragimpute split`)")
    with reading(path, "split"):
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    problem = _split_table_problem(df)
    record = Path(path).with_suffix(".json")
    if problem is None and record.exists():
        written = read_artifact_json(record, "split").get("counts")
        counts = df["split"].value_counts().reindex(SPLITS, fill_value=0).to_dict()
        if written is not None and counts != written:
            problem = (
                f"its counts per split, {_counts(counts)}, are not those its record {record} "
                f"gives, {_counts(written)}"
            )
    if problem is not None:
        raise UnreadableArtifactError(
            f"{path}: {problem}: it is truncated or corrupted. {rebuild_hint('split')}"
        )
    return {s: df.loc[df["split"] == s, "sample"].tolist() for s in SPLITS}


def _counts(counts: dict) -> str:
    return ", ".join(f"{s} {counts.get(s, 0)}" for s in SPLITS)


def _split_table_problem(df: pd.DataFrame) -> str | None:
    """What is wrong with a split table read back (None: nothing): columns, a row cut short, an
    unknown label, a sample twice."""
    if list(df.columns) != ["sample", "split"]:
        return f"its columns are {list(df.columns)}, not sample and split"
    for i, (sample, label) in enumerate(zip(df["sample"], df["split"], strict=True)):
        if not sample or label not in SPLITS:
            return f"line {i + 2} ({sample!r}, {label!r}) is not a sample and its split"
    dup = df["sample"][df["sample"].duplicated()]
    if len(dup):
        return f"sample {dup.iloc[0]} is listed twice"
    return None


def check_disjoint(reference: list[str], target: list[str], target_path: str | os.PathLike) -> None:
    """A target sample that is also in the reference would be scored against its own haplotypes."""
    shared = sorted(set(reference) & set(target))
    if shared:
        raise InputError(
            target_path,
            f"{len(shared)} target samples are also in the reference panel: {', '.join(shared[:5])}",
            "Remove them from the reference (bcftools view -s ^NAMES) or from the targets. To "
            "impute samples of the panel itself, leave impute.target_vcf empty and set "
            "panel.array_manifest: the workflow then keeps the split's test samples out of the "
            "reference and imputes them at the array's sites (outside the "
            "workflow: `ragimpute impute --reference train`)",
        )


def run_split_stage(
    panel_vcf: str | os.PathLike,
    out_tsv: str | os.PathLike,
    fractions: dict[str, float],
    seed: int,
    table: str | os.PathLike | None = None,
    populations: str | os.PathLike | None = None,
    target_population: str | None = None,
) -> pd.DataFrame:
    """Write the split: the user's table, or every sample of ``target_population`` (in the
    ``populations`` TSV: sample, population) as test and the rest at random, or all at random."""
    from .vcf_io import vcf_samples

    samples = vcf_samples(panel_vcf)
    if table:
        df = read_split_table(table, samples)
        provenance = {"source": str(table)}
    elif populations and target_population:
        pops = pd.read_csv(populations, sep="\t", dtype=str, keep_default_na=False)
        df = population_split(
            samples,
            dict(zip(pops["sample"], pops["population"], strict=True)),
            target_population,
            fractions,
            seed,
        )
        provenance = {
            "seed": seed,
            "fractions": fractions,
            "populations": str(populations),
            "targets": target_population,
        }
    else:
        df = random_split(samples, fractions, seed)
        provenance = {"seed": seed, "fractions": fractions}
    write_split(df, out_tsv, {**provenance, "panel": str(panel_vcf)})
    return df
