"""Ours against Beagle 5.4 on panels that are not our demo, run as a user runs the workflow.

stdpopsim (HomSap, a stretch of chr20, the species' uniform recombination rate) simulates published
demographies that our demo does not: out-of-Africa (Gutenkunst et al. 2009) CEU, YRI or CHB alone, and
American admixture (Browning et al. 2018) with admixed targets. For each panel, the reference samples
become a phased panel VCF with random REF/ALT letters (A/T and C/G records included, as on real
arrays), the targets a VCF of the array's sites (common sites, one per ``--array-kb``) and their truth
a VCF of every site. Then the workflow runs as "Bring your own array data" tells a user to
(``panel.vcf``, ``panel.array_manifest``, ``impute.target_vcf``, ``impute.truth_vcf``; every other key
the shipped default) and its ``comparison.tsv`` is collected: aggregate dosage r² per MAF bin of the
untyped sites, every method on the same reference and targets.

``--as-arrays`` writes the targets as an array delivers them: unphased, 0.2 % genotype errors and
0.5 % missing calls at the typed sites (the workflow phases them).

    pip install stdpopsim                                # not a dependency of the package
    python benchmarks/bench_panels.py                    # 4 panels, ~10 min on 2 cores
    python benchmarks/bench_panels.py --panels yri --as-arrays --seed 2
    python benchmarks/bench_panels.py --panels ceu --reference-samples 1500 --engine states=1000

Writes benchmarks/results/panels.json (every run's table, the configs and the machine) and prints a
Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ragimpute.demo import ArrayNoise, add_array_noise, thin_common_sites
from ragimpute.metrics import BIN_LABELS
from ragimpute.vcf_write import write_phased_vcf

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results"
CHROM = "20"
# panel -> (stdpopsim model, reference samples per population, target population, target samples)
PANELS = {
    "ceu": ("OutOfAfrica_3G09", {"CEU": 900}, "CEU", 100),
    "yri": ("OutOfAfrica_3G09", {"YRI": 900}, "YRI", 100),
    "chb": ("OutOfAfrica_3G09", {"CHB": 900}, "CHB", 100),
    "admixed": ("AmericanAdmixture_4B18", {"AFR": 270, "EUR": 270, "ASIA": 270}, "ADMIX", 100),
}
BASES = np.array([list(p) for p in "AC AG AT CA CG CT GA GC GT TA TC TG".split()])  # REF, ALT
BINS = [*BIN_LABELS, "all"]  # the rows of comparison.tsv
ARRAY_NOISE = ArrayNoise(unphased=True, genotype_error=0.002, missing_rate=0.005)


def simulate(panel: str, length: int, seed: int, reference_samples: int = 0) -> dict:
    """Biallelic sites of the reference and target samples: positions, alleles (sites, haplotypes).
    ``reference_samples``: reference samples per source population (0: the panel's own)."""
    try:
        import stdpopsim
    except ImportError:
        raise SystemExit(
            "bench_panels.py simulates with stdpopsim: pip install stdpopsim"
        ) from None

    model_id, reference, target_pop, n_targets = PANELS[panel]
    if reference_samples:
        reference = {pop: reference_samples for pop in reference}
    species = stdpopsim.get_species("HomSap")
    model = species.get_demographic_model(model_id)
    left = 10_000_000
    contig = species.get_contig(
        "chr20", left=left, right=left + length, mutation_rate=model.mutation_rate
    )
    samples = dict(reference)
    samples[target_pop] = samples.get(target_pop, 0) + n_targets
    ts = stdpopsim.get_engine("msprime").simulate(model, contig, samples, seed=seed)
    genotypes = ts.genotype_matrix().astype(np.int8)
    pos = ts.tables.sites.position.astype(np.int64) + 1
    biallelic = np.array([len(v.alleles) == 2 for v in ts.variants()])
    unique = np.diff(pos, prepend=-1) > 0  # msprime's discrete sites may share a position
    keep = biallelic & unique
    population = np.array([ts.node(u).population for u in ts.samples()])
    names = [p.metadata["name"] for p in ts.populations()]
    is_target = population == names.index(target_pop)
    # the target population's last n_targets samples are the targets (all of them when it is not
    # also a reference population)
    target_haps = np.flatnonzero(is_target)[-2 * n_targets :]
    ref_haps = np.setdiff1d(np.arange(ts.num_samples), target_haps)
    return {
        "pos": pos[keep],
        "ref": genotypes[keep][:, ref_haps],
        "target": genotypes[keep][:, target_haps],
    }


def write_vcf(
    path: Path,
    pos: np.ndarray,
    alleles: np.ndarray,
    haps: np.ndarray,
    names: list[str],
    phased: bool = True,
) -> None:
    """A bgzipped, indexed VCF of (sites, 2 * samples) alleles (-1: missing); unphased as an array
    writes its calls (0/1)."""
    sites = pd.DataFrame({"pos": pos, "ref": alleles[:, 0], "alt": alleles[:, 1]})
    unphased = None if phased else np.ones((len(pos), len(names)), dtype=bool)
    write_phased_vcf(path, CHROM, sites, names, haps, unphased=unphased)


def prepare(panel: str, args: argparse.Namespace, work: Path) -> tuple[Path, dict]:
    """The inputs a user would have and the config file that points at them."""
    d = simulate(panel, args.length, args.seed, args.reference_samples)
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(args.seed)
    alleles = BASES[rng.integers(0, len(BASES), len(d["pos"]))]
    polymorphic = (d["ref"].sum(1) > 0) & (d["ref"].sum(1) < d["ref"].shape[1])
    af = d["ref"].mean(1)
    typed = thin_common_sites(d["pos"], np.minimum(af, 1 - af), args.array_kb * 1000, 0.05)
    n_ref, n_tgt = d["ref"].shape[1] // 2, d["target"].shape[1] // 2
    ref_names = [f"R{i}" for i in range(n_ref)]
    tgt_names = [f"T{i}" for i in range(n_tgt)]
    write_vcf(work / "panel.vcf.gz", d["pos"], alleles, d["ref"], ref_names)
    write_vcf(work / "truth.vcf.gz", d["pos"], alleles, d["target"], tgt_names)
    calls, drawn = d["target"][typed], {}
    if args.as_arrays:
        calls, drawn = add_array_noise(calls, ARRAY_NOISE, CHROM)
    write_vcf(
        work / "target.vcf.gz",
        d["pos"][typed],
        alleles[typed],
        calls,
        tgt_names,
        phased=not args.as_arrays,
    )
    manifest = pd.DataFrame(
        {"chrom": CHROM, "pos": d["pos"][typed], "ref": alleles[typed, 0], "alt": alleles[typed, 1]}
    )
    manifest.to_csv(work / "array.tsv", sep="\t", index=False)
    config = {
        "results": str(work / "results"),
        "panel": {"vcf": str(work / "panel.vcf.gz"), "array_manifest": str(work / "array.tsv")},
        "chromosomes": [CHROM],
        "impute": {
            "target_vcf": str(work / "target.vcf.gz"),
            "truth_vcf": str(work / "truth.vcf.gz"),
        },
        "evaluate": {"methods": args.methods},
    }
    if args.engine:
        config["engine"] = args.engine
    (work / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    facts = {
        "reference_haplotypes": 2 * n_ref,
        "targets": n_tgt,
        "sites": int(len(d["pos"])),
        "sites_polymorphic_in_reference": int(polymorphic.sum()),
        "typed_sites": int(len(typed)),
        "array_noise": drawn,
    }
    return work / "config.yaml", facts


def run(config: Path, cores: str, log: Path) -> float:
    """The workflow on one panel, as a user runs it; its wall seconds."""
    cmd = [sys.executable, "-m", "snakemake", "--cores", cores]
    cmd += ["--configfile", "config/config.yaml"]
    cmd.append(str(config))
    t0 = time.time()
    with open(log, "w") as f:
        subprocess.run(cmd, cwd=ROOT, check=True, stdout=f, stderr=subprocess.STDOUT)
    return time.time() - t0


def markdown(table: pd.DataFrame) -> str:
    """comparison.tsv as a method x MAF bin table of r²."""
    wide = table.pivot(index="method", columns="maf_bin", values="r2")[BINS]
    lines = ["| method | " + " | ".join(BINS) + " |", "|---" * (len(BINS) + 1) + "|"]
    for method, row in wide.iterrows():
        lines.append(f"| {method} | " + " | ".join(f"{v:.4f}" for v in row) + " |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--panels", nargs="+", choices=list(PANELS), default=list(PANELS))
    ap.add_argument("--length", type=int, default=5_000_000, help="bp of chr20 simulated")
    ap.add_argument("--seed", type=int, default=1, help="simulation, alleles and array noise")
    ap.add_argument("--array-kb", type=int, default=11, help="one array site per this many kb")
    ap.add_argument("--as-arrays", action="store_true", help="unphased, noisy targets")
    ap.add_argument("--methods", nargs="+", default=["af", "copying", "beagle"])
    ap.add_argument("--cores", default="all")
    ap.add_argument("--work", type=Path, default=OUT / "panels_work")
    ap.add_argument(
        "--reference-samples",
        type=int,
        default=0,
        help="reference samples per source population (default: the panel's, 900 or 270)",
    )
    ap.add_argument(
        "--engine",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="engine settings instead of the shipped defaults, e.g. states=1000",
    )
    args = ap.parse_args()
    args.engine = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.engine)}
    runs = []
    for panel in args.panels:
        name = f"{panel}_{args.length / 1e6:g}mb{'_arrays' if args.as_arrays else ''}_{args.seed}"
        if args.reference_samples:
            name += f"_ref{args.reference_samples}"
        name += "".join(f"_{k}{v}" for k, v in args.engine.items())
        config, facts = prepare(panel, args, args.work / name)
        wall = run(config, args.cores, args.work / f"{name}.log")
        table = pd.read_csv(
            args.work / name / "results" / "evaluation" / "comparison.tsv", sep="\t"
        )
        runs.append(
            {
                "panel": panel,
                "name": name,
                "length_bp": args.length,
                "as_arrays": args.as_arrays,
                "seed": args.seed,
                "engine": args.engine,
                **facts,
                "workflow_wall_s": round(wall, 1),
                "comparison": table.to_dict(orient="records"),
            }
        )
        print(
            f"## {name}: {facts['reference_haplotypes']} reference haplotypes, "
            f"{facts['targets']} targets, {facts['typed_sites']} typed of {facts['sites']} sites, "
            f"workflow {wall:.0f} s"
        )
        print(markdown(table) + "\n")
    OUT.mkdir(parents=True, exist_ok=True)
    out = OUT / "panels.json"
    previous = json.loads(out.read_text())["runs"] if out.exists() else []
    names = {r["name"] for r in runs}
    kept = [r for r in previous if r["name"] not in names]
    machine = {"machine": platform.platform(), "cpus": os.cpu_count(), "load": os.getloadavg()}
    out.write_text(json.dumps({**machine, "runs": kept + runs}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
