"""The ``phase`` stage: the harmonised target phased against the imputation reference.

Array genotypes arrive unphased (``0/1``). Imputation servers and nf-core/phaseimpute phase them for
the user before imputing; so does the workflow (``impute.phase``: ``auto`` phases when any
heterozygote is unphased, ``always`` phases every target, ``never`` refuses unphased input):

- Beagle 5.4 (the default; ``impute=false``: phasing only) or SHAPEIT5 ``phase_common``
  (``impute.phaser: shapeit5``, when installed), with the same reference samples and sites that every
  method imputes from, and the genetic map when one is configured;
- the markers must come back as they went in (same positions and alleles, none dropped: our mask
  and typed sites must not change through phasing), with the same samples, and every called
  genotype with the same two alleles: only their order (the phase) may change. Anything else is an
  error naming the record;
- missing calls stay missing: the phaser fills them, and the phased target puts them back
  (``.|.``), so that every method imputes them itself (ours writes them ``TYPED`` with the imputed
  allele and counts them in its report). A call with one missing allele (``./1``) is written
  fully missing;
- a sample given phased (no unphased heterozygote: phased by trio, read-backed or an earlier run),
  in a target where others are not, keeps the phase it came with (``keep_given_phase``; not with
  ``impute.phase: always``), as a target given phased is not phased again: Beagle re-phases every
  sample of its input, and changed 13 % of such a sample's heterozygote orientations on our demo.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from . import __version__
from .atomic import scratch_dir, write_json
from .errors import InputError, ToolError
from .logs import log
from .procs import dies_with_parent
from .vcf_io import htslib_verbosity, query_lines, vcf_samples
from .vcf_write import contig_lengths, write_phased_vcf

PHASERS = ("beagle", "shapeit5")
# SHAPEIT5's phasing tool, as its releases name the binary (static build, bioconda).
FILLED_KEY = "##ragimpute_filled=<"  # the header line of the phased target with the phaser's fills
SHAPEIT5_BINARIES = ("phase_common", "phase_common_static", "SHAPEIT5_phase_common")


# The phasers' arguments the workflow sets itself, and what sets each: the same one in
# impute.phase_args makes Beagle stop with "duplicate arguments" only once the run reaches phasing.
SET_BY_THE_WORKFLOW = {
    "beagle": {
        "gt": "the harmonised target",
        "ref": "the imputation reference",
        "out": "the phased target's path",
        "impute": "phasing only (impute=false)",
        "nthreads": "impute.threads",
        "seed": "baselines.beagle.seed",
        "map": "panel.genetic_map",
    },
    "shapeit5": {
        **dict.fromkeys(("--input", "-I"), "the harmonised target"),
        **dict.fromkeys(("--reference", "-H"), "the imputation reference"),
        **dict.fromkeys(("--output", "-O"), "the phased target's path"),
        **dict.fromkeys(("--region", "-R"), "the chromosome or chunk"),
        **dict.fromkeys(("--thread", "-T"), "impute.threads"),
        "--seed": "baselines.beagle.seed",
        **dict.fromkeys(("--map", "-M"), "panel.genetic_map"),
    },
}


def phase_args_problems(phaser: str, args: str) -> list[str]:
    """The arguments of ``impute.phase_args`` that the workflow already gives ``phaser``, each with
    what sets it (empty when there are none)."""
    taken = SET_BY_THE_WORKFLOW.get(phaser, {})
    out = []
    for arg in shlex.split(args or ""):
        name = arg.split("=", 1)[0] if phaser == "beagle" or arg.startswith("--") else arg
        if name in taken:
            out.append(f"{name} (set from {taken[name]})")
    return out


def check_phase_args(phaser: str, args: str) -> None:
    """Refuse ``impute.phase_args`` that name an argument the workflow gives the phaser."""
    problems = phase_args_problems(phaser, args)
    if problems:
        raise InputError(
            "config",
            f"impute.phase_args names what the workflow gives {phaser} itself: "
            + ", ".join(problems),
            "Remove them from impute.phase_args and set the config key named instead",
        )


def shapeit5_binary() -> str | None:
    """The SHAPEIT5 ``phase_common`` binary on PATH, or None."""
    for name in SHAPEIT5_BINARIES:
        path = shutil.which(name)
        if path:
            return path
    return None


def phaser_binary(phaser: str) -> str | None:
    if phaser == "beagle":
        return shutil.which("beagle")
    if phaser == "shapeit5":
        return shapeit5_binary()
    raise InputError("config", f"impute.phaser is {phaser!r}", f"Use one of {', '.join(PHASERS)}")


@dataclass
class Calls:
    """Genotype calls of a GT VCF: ``alleles`` (sites, 2 * samples) int8, -1 missing;
    ``unphased`` (sites, samples): heterozygotes written unphased."""

    path: str
    sites: pd.DataFrame  # chrom, pos, id, ref, alt
    samples: list[str]
    alleles: np.ndarray
    unphased: np.ndarray


def read_calls(path: str | os.PathLike) -> Calls:
    """Every record's GT (bcftools: independent of the FORMAT order the tool wrote)."""
    from .targets import decode_target_calls

    path = str(path)
    samples = vcf_samples(path)
    rows, gts = [], []
    # errors only: Beagle writes no ##contig lines, and htslib warns of each contig it meets
    with htslib_verbosity(1):
        lines = list(query_lines(path, "%CHROM\t%POS\t%ID\t%REF\t%ALT\t[%GT\t]\n"))
    for line in lines:
        if line:
            c, pos, vid, ref, alt, gt = line.split("\t", 5)
            rows.append((c, int(pos), vid, ref.upper(), alt.upper()))
            gts.append(gt)
    sites = pd.DataFrame(rows, columns=["chrom", "pos", "id", "ref", "alt"])
    where = [f"{c}:{p}" for c, p, *_ in rows]
    alleles, unphased = decode_target_calls(gts, path, where, samples, allow_unphased=True)
    return Calls(path, sites, samples, alleles, unphased)


def write_shapeit_map(plink_map: str | os.PathLike, out: str | os.PathLike) -> None:
    """A PLINK ``.map`` (chrom id cM bp) in SHAPEIT5's format (header ``pos chr cM``)."""
    rows = pd.read_csv(plink_map, sep=r"\s+", header=None, names=["chr", "id", "cM", "pos"])
    rows[["pos", "chr", "cM"]].to_csv(out, sep="\t", index=False)


def _tool_failed(phaser: str, command: list[str], rc: int, output: str, log_path: str) -> ToolError:
    lines = [ln.strip() for ln in output.splitlines() if ln.strip()]
    said = next(
        (ln for ln in lines if any(w in ln for w in ("Exception", "ERROR", "Error", "error"))),
        lines[-1] if lines else "",
    )
    if "OutOfMemoryError" in output:
        fix = "Raise baselines.beagle.mem_mb (the memory of the phase and beagle jobs)"
    elif rc < 0 or rc in (137, 143):
        fix = "It was killed (memory or time limit?): run it again with more"
    else:
        fix = (
            f"See {log_path or 'the log'}; or phase the target yourself and give it phased "
            "(impute.phase: never)"
        )
    return ToolError(
        f"phasing the target with {phaser} failed (exit status {rc}: {said[:300]}); "
        f"command: {shlex.join(command)}. {fix}"
    )


def run_phaser(
    phaser: str,
    target_vcf: str,
    reference_vcf: str,
    out_prefix: Path,
    chrom: str,
    genetic_map: str | None,
    threads: int,
    seed: int,
    java_mb: int | None,
    args: str,
    log_path: str = "",
) -> tuple[Path, list[str], str]:
    """Run the phaser; returns its phased VCF, the command and its output (also logged)."""
    binary = phaser_binary(phaser)
    if binary is None:
        what = "Beagle 5.4 (`beagle`)" if phaser == "beagle" else "SHAPEIT5 (`phase_common`)"
        raise ToolError(
            f"the target has unphased genotypes and impute.phaser is {phaser}, but {what} is not on "
            "PATH. Install it (Debian/Ubuntu: `apt-get install beagle`; conda: bioconda's beagle or "
            "shapeit5), choose the other phaser, or phase the target yourself (impute.phase: never)"
        )
    env = dict(os.environ)
    extra = shlex.split(args or "")
    if phaser == "beagle":
        if java_mb:
            env["JAVA_TOOL_OPTIONS"] = f"-Xmx{int(java_mb)}m"
        command = [
            binary,
            f"gt={target_vcf}",
            f"ref={reference_vcf}",
            f"out={out_prefix}",
            "impute=false",
            f"nthreads={threads}",
            f"seed={seed}",
            *([f"map={genetic_map}"] if genetic_map else []),
            *extra,
        ]
        produced = Path(f"{out_prefix}.vcf.gz")
    else:
        gmap = []
        if genetic_map:
            converted = Path(f"{out_prefix}.gmap.txt")
            write_shapeit_map(genetic_map, converted)
            gmap = ["--map", str(converted)]
        bcf = Path(f"{out_prefix}.bcf")
        command = [
            binary,
            "--input",
            target_vcf,
            "--reference",
            reference_vcf,
            "--region",
            chrom,
            "--output",
            str(bcf),
            "--thread",
            str(threads),
            "--seed",
            str(seed),
            *gmap,
            *extra,
        ]
        produced = Path(f"{out_prefix}.vcf.gz")
    log.info("phasing: %s", shlex.join(command))
    r = subprocess.run(
        command, capture_output=True, text=True, env=env, preexec_fn=dies_with_parent()
    )
    # Beagle prints its log and also writes it beside its output: the file once, or else what it
    # printed (a run that died before writing it); and what went to stderr (Java's own errors)
    own_log = Path(f"{out_prefix}.log")
    output = (own_log.read_text() if own_log.exists() else r.stdout) + r.stderr
    for line in output.splitlines():
        log.info("%s: %s", phaser, line)
    if r.returncode != 0 or (phaser == "beagle" and "OutOfMemoryError" in output):
        raise _tool_failed(phaser, command, r.returncode, output, log_path)
    if phaser == "shapeit5":
        conv = subprocess.run(
            ["bcftools", "view", "-Oz", "-o", str(produced), str(bcf)],
            capture_output=True,
            text=True,
        )
        if conv.returncode != 0:
            raise ToolError(f"bcftools could not read SHAPEIT5's output {bcf}: {conv.stderr[:300]}")
    if not produced.exists():
        raise ToolError(f"{phaser} exited without writing {produced}; see {log_path or 'the log'}")
    return produced, command, output


def _version(phaser: str, output: str) -> str:
    for line in output.splitlines():
        if phaser == "beagle" and "beagle." in line and ".jar" in line:
            return line.split("(")[0].strip()
        if phaser == "shapeit5" and "Version" in line:
            return line.split(":", 1)[-1].strip()
    return "unknown"


def check_phased(raw: Calls, phased: Calls, phaser: str) -> Calls:
    """The phaser's output against its input: the same markers and samples, every called genotype
    with the same alleles. Returns the output with its samples in the input's order."""
    key = ["pos", "ref", "alt"]
    got = phased.sites[key].reset_index(drop=True)
    want = raw.sites[key].reset_index(drop=True)
    if len(got) != len(want) or not got.equals(want):
        merged = want.merge(got, how="left", on=key, indicator=True)
        lost = merged[merged["_merge"] == "left_only"]
        extra = len(
            got.merge(want, how="left", on=key, indicator=True).query("_merge == 'left_only'")
        )
        first = ", ".join(f"{p} {r}>{a}" for p, r, a in lost[key].head(5).itertuples(index=False))
        raise ToolError(
            f"{phaser} returned {len(got)} markers for the {len(want)} typed sites of {raw.path}: "
            f"{len(lost)} dropped{f' (first: {first})' if first else ''}, {extra} added or "
            "reordered. Every method must read the same typed sites (the target's mask), so the "
            "run stops here: check the phaser's log, or phase the target yourself (impute.phase: "
            "never)"
        )
    if sorted(phased.samples) != sorted(raw.samples):
        raise ToolError(
            f"{phaser} returned other samples than {raw.path} holds "
            f"({len(phased.samples)} for {len(raw.samples)})"
        )
    if phased.samples != raw.samples:
        order = pd.Index(phased.samples).get_indexer(raw.samples)
        cols = np.stack([2 * order, 2 * order + 1], axis=1).ravel()
        phased = Calls(
            phased.path,
            phased.sites,
            raw.samples,
            phased.alleles[:, cols],
            phased.unphased[:, order],
        )
    r0, r1 = raw.alleles[:, 0::2], raw.alleles[:, 1::2]
    p0, p1 = phased.alleles[:, 0::2], phased.alleles[:, 1::2]
    called = (r0 >= 0) & (r1 >= 0)
    bad = called & (((p0 < 0) | (p1 < 0)) | (p0 + p1 != r0 + r1))
    if bad.any():
        i, j = np.argwhere(bad)[0]
        where = f"{raw.sites['chrom'].iloc[i]}:{raw.sites['pos'].iloc[i]}"
        raise ToolError(
            f"{phaser} changed {int(bad.sum())} called genotypes of {raw.path} (first: sample "
            f"{raw.samples[j]} at {where}: {r0[i, j]}/{r1[i, j]} became {p0[i, j]}|{p1[i, j]}); "
            "phasing must keep every call"
        )
    if phased.unphased.any():
        i, j = np.argwhere(phased.unphased)[0]
        raise ToolError(
            f"{phaser} left {int(phased.unphased.sum())} heterozygotes unphased (first: sample "
            f"{raw.samples[j]} at {raw.sites['chrom'].iloc[i]}:{raw.sites['pos'].iloc[i]})"
        )
    return phased


def _write_filled(
    filled_vcf, filled: np.ndarray, raw: Calls, chrom, length, target_vcf, phaser
) -> None:
    """The phased target with the phaser's fills of missing calls (the given-phase samples' calls
    as they came, their missing ones filled by the phaser): Minimac4 4.1 aborts on a missing call
    at a typed site, and imputation servers give it the output of the pre-phasing (Eagle), which
    fills them. Only Minimac4 reads it: every other method imputes missing calls itself."""
    n = int(((raw.alleles < 0) & (filled >= 0)).sum())
    meta = [f"{FILLED_KEY}phaser={phaser},source={target_vcf},missing_alleles_filled={n}>"]
    write_phased_vcf(filled_vcf, chrom, raw.sites, raw.samples, filled, length, meta)


def _phaser_alleles(
    raw: Calls, phaser, target_vcf, reference_vcf, out_vcf, chrom, genetic_map, threads, seed,
    java_mb, args, log_path,
) -> tuple[np.ndarray, list[str], str]:  # fmt: skip
    """The phaser's alleles of every call (its fills of missing calls included), checked against
    the input, with its command and version."""
    if len(raw.sites) == 1:
        # One typed site has no phase to find (there is no other site to phase it against), and
        # Beagle stops on it ("Window has only one position"): its heterozygotes are written 0|1.
        r0, r1 = raw.alleles[:, 0::2], raw.alleles[:, 1::2]
        alleles = raw.alleles.copy()
        alleles[:, 0::2], alleles[:, 1::2] = np.minimum(r0, r1), np.maximum(r0, r1)
        return alleles, [], "not run: one typed site"
    with scratch_dir(out_vcf) as tmp:
        produced, command, output = run_phaser(
            phaser, target_vcf, reference_vcf, Path(tmp) / "phased", chrom,
            str(genetic_map) if genetic_map else None, threads, seed, java_mb, args, log_path,
        )  # fmt: skip
        alleles = check_phased(raw, read_calls(produced), phaser).alleles.copy()
    return alleles, command, _version(phaser, output)


def phase_target(
    target_vcf: str | os.PathLike,
    reference_vcf: str | os.PathLike,
    out_vcf: str | os.PathLike,
    report_json: str | os.PathLike,
    phaser: str = "beagle",
    genetic_map: str | os.PathLike | None = None,
    threads: int = 1,
    seed: int = 1,
    java_mb: int | None = None,
    args: str = "",
    log_path: str = "",
    keep_given_phase: bool = True,
    filled_vcf: str | os.PathLike | None = None,
) -> dict:
    """Phase the harmonised target ``target_vcf`` against ``reference_vcf`` (the imputation
    reference, at the reference sites) into ``out_vcf`` (+ .tbi), with the report ``report_json``.
    ``filled_vcf`` (+ .tbi): the same with the missing calls the phaser filled left filled
    (Minimac4's target, as imputation servers give it the pre-phasing's output).
    With ``keep_given_phase`` a sample without an unphased heterozygote keeps its own phase."""
    t0 = time.perf_counter()
    target_vcf, reference_vcf = str(target_vcf), str(reference_vcf)
    if phaser not in PHASERS:
        raise InputError(
            "config", f"impute.phaser is {phaser!r}", f"Use one of {', '.join(PHASERS)}"
        )
    check_phase_args(phaser, args)
    raw = read_calls(target_vcf)
    if not len(raw.sites):
        raise InputError(target_vcf, "no typed site to phase", "Check the target_mask stage's log")
    chrom = str(raw.sites["chrom"].iloc[0])
    alleles, command, version = _phaser_alleles(
        raw, phaser, target_vcf, reference_vcf, out_vcf, chrom, genetic_map, threads, seed,
        java_mb, args, log_path,
    )  # fmt: skip
    r0, r1 = raw.alleles[:, 0::2], raw.alleles[:, 1::2]
    # Missing calls stay missing: every method imputes them itself.
    missing = (r0 < 0) | (r1 < 0)
    half = (r0 < 0) != (r1 < 0)
    # A sample given phased keeps its phase: the phaser re-phased it with the others.
    given = ~raw.unphased.any(axis=0) if keep_given_phase else np.zeros(len(raw.samples), bool)
    cols = np.repeat(given, 2)
    kept = alleles.copy()
    kept[:, cols] = raw.alleles[:, cols]
    length = contig_lengths(target_vcf).get(chrom)
    if filled_vcf:  # where a kept call is missing, the phaser's fill
        _write_filled(filled_vcf, np.where(kept < 0, alleles, kept), raw, chrom, length, target_vcf,
                      phaser)  # fmt: skip
    alleles = kept
    a0, a1 = alleles[:, 0::2], alleles[:, 1::2]
    a0[missing], a1[missing] = -1, -1
    alleles[:, 0::2], alleles[:, 1::2] = a0, a1
    het = (r0 >= 0) & (r1 >= 0) & (r0 != r1)
    meta = [
        f"##ragimpute_phased=<phaser={phaser},version={version},source={target_vcf},"
        f"reference={reference_vcf},map={genetic_map or 'none'},missing_calls_kept={int(missing.sum())}>"
    ]
    write_phased_vcf(out_vcf, chrom, raw.sites, raw.samples, alleles, length, meta)
    report = {
        "ragimpute": __version__,
        "phaser": phaser,
        "phaser_version": version,
        "command": command,
        "target": target_vcf,
        "reference": reference_vcf,
        "genetic_map": str(genetic_map) if genetic_map else None,
        "output": str(out_vcf),
        "samples": len(raw.samples),
        "sites": len(raw.sites),
        "heterozygotes": int(het.sum()),
        "unphased_heterozygotes_in": int(raw.unphased.sum()),
        "missing_calls_kept_missing": int(missing.sum()),
        "half_missing_calls_set_missing": int(half.sum()),
        "samples_given_phased_kept": int((given & (r0 != r1).any(axis=0)).sum()),
        "seconds": round(time.perf_counter() - t0, 3),
    }
    write_json(report_json, report)
    log.info(
        "%s phased %d heterozygotes (%d unphased in the input) of %d samples at %d sites; %d missing "
        "calls kept missing",
        phaser,
        report["heterozygotes"],
        report["unphased_heterozygotes_in"],
        report["samples"],
        report["sites"],
        report["missing_calls_kept_missing"],
    )
    return report
