"""Ours against Beagle 5.4 and Minimac4 on a real phased panel, by leaving samples out in turn.

Every other accuracy figure of ours is on simulated panels. This one takes a real phased panel (and
a real array's sites and a real genetic map) and splits its samples into ``--folds`` folds. For each
fold the other samples are the reference panel, and the fold's samples are the targets: typed at the
array's sites that the panel holds, and scored at every other site against their own genotypes. The
workflow runs as "Bring your own array data" tells a user to (``panel.vcf``, ``panel.array_manifest``,
``panel.genetic_map``, ``impute.target_vcf``, ``impute.truth_vcf``; every other key the shipped
default), and the per-site scores of every fold are pooled into one ``comparison.tsv`` by the
workflow's own ``compare``: aggregate dosage r² per MAF bin (of each fold's reference) over every
sample of the panel, each imputed from a reference that does not hold it.

The panel we measured (not in this repository; public test data of the Michigan Imputation Server,
https://github.com/genepi/imputationserver at commit 77866aa, under ``test-data/``):
HapMap release 22 CEU chr20 (GRCh37; 60 trio parents, phased by transmission: 120 haplotypes,
63,407 SNVs), the sites of an Illumina 330k array on chr20 (``data/chr20-phased/
chr20.R50.merged.1.330k.recode.small.vcf.gz``: only its positions and alleles are used) and the
HapMap PLINK map of chr20 (``configs/beagle/ref-panels/plink.chr20.GRCh37.map``):

    python benchmarks/bench_real.py --panel hapmap_r22.chr20.CEU.hg19.recode.bcf \\
        --array chr20.R50.merged.1.330k.recode.small.vcf.gz --map plink.chr20.GRCh37.map

A panel with indels (1000 Genomes phase 1 chrX PAR1, expanded from the server's m3vcf by
``m3vcf_to_vcf.py``) takes ``--indels``: ``panel.indels`` on, and the pooled table printed again for
the SNVs and for the indels apart (without it ``panel.indels: false``, as the HapMap and PAR2
figures were measured, before indels were on by default):

    python benchmarks/bench_real.py --panel par1.vcf.gz --array-kb 5 --indels

Writes benchmarks/results/real.json (per panel: the pooled table, every fold's, the inputs' facts,
the machine) and prints the pooled table in Markdown.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pysam
import yaml

from ragimpute.demo import thin_common_sites
from ragimpute.evaluate import COUNTS, SUMS, bin_table, compare
from ragimpute.metrics import BIN_LABELS
from ragimpute.vcf_io import snv_sites

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"
BINS = [*BIN_LABELS, "all"]  # the rows of comparison.tsv


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def array_manifest(args: argparse.Namespace, out: Path) -> int:
    """The array's sites (chrom, pos, ref, alt) as the workflow's TSV manifest; how many. Without
    ``--array``: the panel's biallelic SNVs of MAF >= 5 % (over every sample), thinned to one per
    ``--array-kb``."""
    columns = ["chrom", "pos", "ref", "alt"]
    if args.array:
        text = pysam.bcftools.query("-f", "%CHROM\t%POS\t%REF\t%ALT\n", str(args.array))
        table = pd.DataFrame([line.split("\t") for line in text.splitlines()], columns=columns)
    else:
        text = pysam.bcftools.query(
            "-f", "%CHROM\t%POS\t%REF\t%ALT\t[%GT]\n", "-i", 'TYPE="snp" && N_ALT=1',
            str(args.panel),
        )  # fmt: skip
        rows = [line.split("\t") for line in text.splitlines()]
        table = pd.DataFrame([r[:4] for r in rows], columns=columns)
        af = np.array([r[4].count("1") / max(1, r[4].count("1") + r[4].count("0")) for r in rows])
        pos = pd.to_numeric(table["pos"]).to_numpy()
        keep = thin_common_sites(pos, np.minimum(af, 1 - af), int(args.array_kb * 1000), 0.05)
        table = table.iloc[keep]
    table.to_csv(out, sep="\t", index=False)
    return len(table)


def unphase(vcf: Path) -> None:
    """Rewrite a bgzipped GT-only VCF as an array delivers its calls: 0/1, not 1|0 (the workflow
    phases them)."""
    plain = vcf.with_suffix("")
    with gzip.open(vcf, "rt") as src, open(plain, "w") as dst:
        for line in src:
            if not line.startswith("#"):
                fields = line.rstrip("\n").split("\t")
                fields[9:] = ["/".join(sorted(gt.split("|"))) for gt in fields[9:]]
                line = "\t".join(fields) + "\n"
            dst.write(line)
    pysam.tabix_compress(str(plain), str(vcf), force=True)
    plain.unlink()


def write_fold(
    panel: Path, fold: list[str], manifest: Path, work: Path, unphased: bool = False
) -> None:
    """The reference panel without the fold, the fold's truth (every site) and its typed target
    (``unphased``: as an array delivers it)."""
    work.mkdir(parents=True, exist_ok=True)
    names = ",".join(fold)
    ref, truth, target = work / "panel.vcf.gz", work / "truth.vcf.gz", work / "target.vcf.gz"
    pysam.bcftools.view("-s", "^" + names, "-Oz", "-o", str(ref), str(panel), catch_stdout=False)
    pysam.bcftools.view("-s", names, "-Oz", "-o", str(truth), str(panel), catch_stdout=False)
    pysam.bcftools.index("-t", str(truth), catch_stdout=False)
    regions = work / "array_regions.tsv"
    sites = pd.read_csv(manifest, sep="\t", dtype=str)
    sites[["chrom", "pos"]].to_csv(regions, sep="\t", index=False, header=False)
    pysam.bcftools.view(
        "-R", str(regions), "-Oz", "-o", str(target), str(truth), catch_stdout=False
    )
    if unphased:
        unphase(target)
    for path in (ref, target):
        pysam.bcftools.index("-t", str(path), catch_stdout=False)


def run_fold(work: Path, manifest: Path, genetic_map: Path | None, args) -> float:
    """The workflow on one fold, as a user runs it; its wall seconds."""
    config = {
        "results": str(work / "results"),
        "panel": {
            "vcf": str(work / "panel.vcf.gz"),
            "array_manifest": str(manifest),
            "genetic_map": str(genetic_map) if genetic_map else "",
            "indels": args.indels,
        },
        "impute": {
            "target_vcf": str(work / "target.vcf.gz"),
            "truth_vcf": str(work / "truth.vcf.gz"),
        },
        "evaluate": {"methods": args.methods},
    }
    path = work / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    cmd = [sys.executable, "-m", "snakemake", "--cores", args.cores]
    cmd += ["--configfile", "config/config.yaml", str(path)]
    t0 = time.time()
    with open(work / "workflow.log", "w") as log:
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=log, stderr=subprocess.STDOUT)
    return time.time() - t0


def by_kind(site_tables: list[str], methods: list[str]) -> dict[str, pd.DataFrame]:
    """Pooled r² per method and MAF bin of the SNVs and of the indels apart (``--indels``): the
    per-site rows of every fold, split as the window stage counts them (``snv_sites``)."""
    columns = ["method", "ref", "alt", "bin", "info_r2", "true_r2", *SUMS, *COUNTS]
    # alleles as written: pandas would read an allele spelled NA as missing
    sites = pd.concat(
        pd.read_csv(p, sep="\t", usecols=columns, dtype={"ref": str, "alt": str},
                    keep_default_na=False, na_values={"info_r2": [""], "true_r2": [""]})
        for p in site_tables
    )  # fmt: skip
    snv = snv_sites(sites)  # a scored site that is no SNV is an indel (panel.indels)
    out = {}
    for kind, rows in (("SNVs", sites[snv]), ("indels", sites[~snv])):
        parts = []
        for m in methods:
            t = bin_table(rows[rows["method"] == m])
            t.insert(0, "method", m)
            parts.append(t)
        out[kind] = pd.concat(parts, ignore_index=True)
    return out


def markdown(table: pd.DataFrame) -> str:
    """comparison.tsv as a method x MAF bin table of r² (and the scored sites of each bin)."""
    wide = table.pivot(index="method", columns="maf_bin", values="r2")[BINS]
    wide = wide.reindex(table["method"].unique())
    sites = table.drop_duplicates("maf_bin").set_index("maf_bin")["n_sites"]
    lines = ["| method | " + " | ".join(f"{b} ({sites[b]:,})" for b in BINS) + " |"]
    lines.append("|---" * (len(BINS) + 1) + "|")
    for method, row in wide.iterrows():
        lines.append(f"| {method} | " + " | ".join(f"{v:.4f}" for v in row) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--panel", type=Path, required=True, help="phased reference panel (VCF/BCF)")
    sites = ap.add_mutually_exclusive_group(required=True)
    sites.add_argument("--array", type=Path, help="VCF of the array's sites")
    sites.add_argument(
        "--array-kb", type=float, help="no array: the panel's common SNVs, one per this many kb"
    )
    ap.add_argument("--map", type=Path, default=None, help="PLINK genetic map (optional)")
    ap.add_argument("--unphased", action="store_true", help="targets as unphased calls (0/1)")
    ap.add_argument(
        "--indels", action="store_true", help="panel.indels: true; SNVs and indels scored apart"
    )
    ap.add_argument("--folds", type=int, default=6)
    ap.add_argument("--seed", type=int, default=1, help="which samples go to which fold")
    ap.add_argument("--methods", nargs="+", default=["af", "copying", "beagle", "minimac4"])
    ap.add_argument("--cores", default="all")
    ap.add_argument("--work", type=Path, default=OUT / "real_work")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    manifest = args.work / "array.tsv"
    n_array = array_manifest(args, manifest)
    with pysam.VariantFile(str(args.panel)) as vcf:
        samples = list(vcf.header.samples)
    order = np.random.default_rng(args.seed).permutation(len(samples))
    folds = [[samples[i] for i in part] for part in np.array_split(order, args.folds)]
    per_fold, tables = [], []
    for f, fold in enumerate(folds):
        work = args.work / f"fold{f}"
        write_fold(args.panel, fold, manifest, work, args.unphased)
        wall = run_fold(work, manifest, args.map, args)
        evaluation = work / "results" / "evaluation"
        table = pd.read_csv(evaluation / "comparison.tsv", sep="\t")
        per_fold.append(
            {"fold": f, "samples": fold, "workflow_wall_s": round(wall, 1)}
            | {"comparison": table.to_dict(orient="records")}
        )
        tables += sorted(str(p) for p in evaluation.glob("*/*/sites.tsv.gz"))
        print(f"fold {f}: {len(fold)} targets, workflow {wall:.0f} s", flush=True)
    pooled = compare(tables, args.work / "pooled", methods=args.methods)
    facts = {
        "panel": str(args.panel),
        "panel_sha256": sha256(args.panel),
        "array": str(args.array) if args.array else f"common SNVs, one per {args.array_kb} kb",
        "array_sites": n_array,
        "map": str(args.map) if args.map else None,
        "samples": len(samples),
        "folds": args.folds,
        "seed": args.seed,
        "unphased_targets": args.unphased,
        "indels": args.indels,
    }
    print(f"\n## pooled over {args.folds} folds ({len(samples)} samples)\n" + markdown(pooled))
    kinds = by_kind(tables, args.methods) if args.indels else {}
    for kind, table in kinds.items():
        print(f"\n### {kind}\n" + markdown(table))
    machine = {"machine": platform.platform(), "cpus": os.cpu_count(), "load": os.getloadavg()}
    result = {**machine, **facts, "pooled": pooled.to_dict(orient="records"), "folds": per_fold}
    result |= {f"pooled_{k}": t.to_dict(orient="records") for k, t in kinds.items()}
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / "real.json"
    runs = json.loads(out.read_text())["runs"] if out.exists() else {}
    key = args.panel.name + " unphased" * args.unphased + " indels" * args.indels
    runs[key] = result  # one entry per panel, the latest run of each
    out.write_text(json.dumps({"runs": runs}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
