"""Command-line entry point: every pipeline stage as a subcommand, for use outside Snakemake.

ragimpute demo --vcf panel.vcf.gz --array array.tsv
ragimpute split --panel panel.vcf.gz --out split.tsv
ragimpute window --panel panel.vcf.gz --split split.tsv --chrom 20 --out windows/20
ragimpute mask --windows windows/20 --strategy array --array array.tsv --store masks/20
ragimpute tokenize --windows windows/20 --store masks/20 --hash H --split train --out tokens/train.parquet
ragimpute index --tokens tokens/train.parquet --out index/20/H
ragimpute retrieve --tokens tokens/val.parquet --index index/20/H -k 8 --out val.parquet
ragimpute impute --results results --chrom 20 --split results/split/samples.tsv --target my.vcf.gz \
    --method retrieval --out imputed.vcf.gz
ragimpute evaluate --imputed imputed.vcf.gz --truth truth.vcf.gz --results results --chrom 20 \
    --typed imputed.vcf.gz.aligned/target.vcf.gz --method retrieval --out evaluation/20/retrieval
ragimpute compare --tables evaluation/20/*/sites.tsv.gz --out evaluation
"""

from __future__ import annotations

import argparse
import sys

from . import __version__
from .errors import ArtifactError, InputError, MaskMismatchError, ToolError
from .logs import log, setup_logging
from .schema import choices, default, section_defaults

USER_ERRORS = (InputError, ArtifactError, MaskMismatchError, ToolError)


def _key_values(items: list[str] | None) -> dict:
    """``--set KEY=VALUE`` options, each value read as YAML (``2`` is a number, ``[a, b]`` a list)."""
    import yaml

    out = {}
    for item in items or []:
        key, _, value = item.partition("=")
        out[key] = yaml.safe_load(value)
    return out


def _demo(a: argparse.Namespace) -> None:
    from .demo import DemoSpec, make_demo

    spec = DemoSpec(
        seed=a.seed, n_samples=a.samples, chromosomes=a.chromosomes, sequence_length=a.length
    )
    make_demo(spec, a.vcf, a.array)


def _split(a: argparse.Namespace) -> None:
    from .split import run_split_stage

    fractions = dict(zip(("train", "val", "test"), a.fractions, strict=True))
    run_split_stage(a.panel, a.out, fractions, a.seed, a.table)


def _window(a: argparse.Namespace) -> None:
    from .windows import run_window_stage

    run_window_stage(
        a.panel,
        a.split,
        a.chrom,
        a.length,
        a.overlap,
        a.out,
        pass_only=not a.keep_filtered,
        genetic_map=a.genetic_map,
        indels=a.indels,
    )


def _mask(a: argparse.Namespace) -> None:
    from .masks import run_mask_stage_dir

    cfg = {
        "strategy": a.strategy,
        "rate": a.rate,
        "seed": a.seed,
        "maf_threshold": a.maf_threshold,
        "array_dropout": a.array_dropout,
        "schedule": a.schedule,
    }
    current = a.current or f"{a.store}/current.json"
    hashes = run_mask_stage_dir(a.windows, cfg, a.store, current, a.array)
    print("\n".join(hashes))


def _tokenize(a: argparse.Namespace) -> None:
    from .tokens import run_tokenize_stage

    run_tokenize_stage(a.windows, a.store, a.hash, a.split, a.out)


def _index(a: argparse.Namespace) -> None:
    from .index import build_index

    build_index(a.tokens, a.out, kind=a.kind, hnsw_m=a.hnsw_m, threads=a.threads)


def _retrieve(a: argparse.Namespace) -> None:
    from .retrieval import retrieve

    retrieve(a.tokens, a.index, a.k, a.out)


def _train(a: argparse.Namespace) -> None:
    import json
    from pathlib import Path

    import yaml

    from .train import TrainConfig, train
    from .train_data import iter_inputs

    # k: the neighbours retrieved for training are those retrieved for imputation (retrieval.k,
    # from the config file as the workflow passes it)
    settings = {**section_defaults("train"), "k": default("retrieval.k")}
    if a.config:
        config = yaml.safe_load(Path(a.config).read_text()) or {}
        settings.update(config.get("train", {}))
        if "k" in (config.get("retrieval") or {}):
            settings["k"] = config["retrieval"]["k"]
    settings.update(_key_values(a.set))
    cfg = TrainConfig(**settings)
    masks_root = Path(a.results) / "masks"
    chroms = a.chromosomes or sorted(
        p.name for p in masks_root.iterdir() if (p / "current.json").exists()
    )
    if not chroms:
        raise InputError(
            masks_root, "no chromosome has masks yet", "Run the pipeline up to `retrieve` first"
        )
    masks = {c: json.loads((masks_root / c / "current.json").read_text())["hashes"] for c in chroms}
    train(
        cfg,
        list(iter_inputs(a.results, masks, cfg.mode)),
        a.out or f"{a.results}/model",
        a.state or f"{a.results}/model_state",
    )


def _impute(a: argparse.Namespace) -> None:
    from .impute import impute_target

    if a.method == "model" and not a.checkpoint:
        raise SystemExit(
            "ragimpute impute: --method model needs --checkpoint (the trained model.pt, e.g. "
            "results/model/model.pt)"
        )
    _refuse_chunks(a.results, a.chrom)
    _name_the_runs_chrom(a.results, a.chrom)
    options = _key_values(a.set)
    engine = {**section_defaults("engine"), **_key_values(a.engine)}
    impute_target(
        a.results,
        a.chrom,
        a.split,
        a.target,
        a.method,
        a.out,
        report_json=a.report,
        aligned_dir=a.aligned,
        options=options,
        k=a.k,
        max_missing=a.max_missing,
        batch_haplotypes=a.batch,
        gp=a.gp,
        hds=a.hds,
        panel_vcf=a.panel,
        checkpoint=a.checkpoint,
        device=a.device,
        threads=a.threads,
        index_kind=a.index_kind,
        engine=engine,
        reference_splits=tuple(a.reference),
    )


def _refuse_chunks(results: str, chrom: str) -> None:
    """A run with chunks.length keeps its tables per chunk (windows/20.c000/, ...). ``--chrom 20``
    then failed with "windows/20/sites.parquet is missing; run the window stage first", and
    ``--chrom 20.c001`` looked for records on a chromosome called 20.c001: neither said that this
    command imputes whole chromosomes only."""
    from pathlib import Path

    from .chunks import UNIT_SEPARATOR, chrom_of
    from .layout import Layout

    whole = chrom_of(chrom)
    windows = Path(Layout(results).windows(whole)).parent
    chunks = sorted(p.name for p in windows.glob(f"{whole}{UNIT_SEPARATOR}*") if p.is_dir())
    chunks = [c for c in chunks if chrom_of(c) == whole]
    if chunks and (chrom != whole or not (windows / whole).is_dir()):
        raise InputError(
            results,
            f"this run is cut into chunks (chunks.length): {whole} is {', '.join(chunks)}, and "
            "`ragimpute impute` imputes whole chromosomes only",
            "Impute through the workflow, which imputes every chunk and ligates them into "
            f"impute/{whole}/<method>.vcf.gz, or give --results a run with chunks.length: 0",
        )


def _name_the_runs_chrom(results: str, chrom: str) -> None:
    """``--chrom 20`` on a run whose config says ``chr20`` (or the other way round): the tables are
    under windows/chr20/, and the error was that windows/20/sites.parquet is missing, with the
    command to rebuild it. Say which name the run uses instead."""
    from pathlib import Path

    from .layout import Layout
    from .vcf_io import normalize_chrom

    windows = Path(Layout(results).windows(chrom)).parent
    if (windows / chrom).is_dir() or not windows.is_dir():
        return
    same = [
        p.name
        for p in sorted(windows.iterdir())
        if p.is_dir() and normalize_chrom(p.name) == normalize_chrom(chrom)
    ]
    if same:
        raise InputError(
            results,
            f"this run has no chromosome named {chrom}: its tables are under windows/{same[0]}/",
            f"Give --chrom {same[0]} (the chromosome as the run's config names it)",
        )


def _evaluate(a: argparse.Namespace) -> None:
    from pathlib import Path

    from .evaluate import evaluate

    _name_the_runs_chrom(a.results, a.chrom)
    sites = Path(a.results) / "windows" / a.chrom / "sites.parquet"
    evaluate(
        a.imputed, a.truth, sites, a.typed, a.method, a.out,
        reference_splits=a.reference, indels=a.indels,
    )  # fmt: skip


def _compare(a: argparse.Namespace) -> None:
    from .evaluate import compare

    table = compare(a.tables, a.out, a.methods)
    print(table.to_string(index=False))


def build_parser() -> argparse.ArgumentParser:
    """Every default comes from config/schema.yaml (``ragimpute.schema``), as the workflow's do."""
    p = argparse.ArgumentParser(prog="ragimpute", description=__doc__.split("\n")[0])
    p.add_argument("--version", action="version", version=f"ragimpute {__version__}")
    p.add_argument("--log", help="also write the log to this file")
    sub = p.add_subparsers(dest="command", required=True)
    for add in (
        _demo_parser,
        _split_parser,
        _window_parser,
        _mask_parser,
        _tokenize_parser,
        _index_parser,
        _retrieve_parser,
        _train_parser,
        _impute_parser,
        _evaluate_parser,
        _compare_parser,
    ):
        add(sub)
    return p


Subparsers = argparse._SubParsersAction


def _demo_parser(sub: Subparsers) -> None:
    s = sub.add_parser("demo", help="simulate the demo panel (msprime) and its array manifest")
    s.add_argument("--vcf", required=True, help="output panel .vcf.gz (indexed)")
    s.add_argument("--array", required=True, help="output array manifest TSV")
    s.add_argument("--seed", type=int, default=default("demo.seed"))
    s.add_argument("--samples", type=int, default=default("demo.n_samples"), help="diploid samples")
    s.add_argument(
        "--length", type=int, default=default("demo.sequence_length"), help="bp per chromosome"
    )
    s.add_argument("--chromosomes", nargs="+", default=default("demo.chromosomes"))
    s.set_defaults(func=_demo)


def _split_parser(sub: Subparsers) -> None:
    s = sub.add_parser("split", help="train/val/test sample split")
    s.add_argument("--panel", required=True)
    s.add_argument("--out", required=True, help="output TSV (sample, split)")
    fractions = default("split.fractions")
    s.add_argument(
        "--fractions",
        type=float,
        nargs=3,
        default=[fractions[k] for k in ("train", "val", "test")],
        metavar=("TRAIN", "VAL", "TEST"),
    )
    s.add_argument("--seed", type=int, default=default("split.seed"))
    s.add_argument("--table", help="use this TSV (sample, split) instead of a random split")
    s.set_defaults(func=_split)


def _window_parser(sub: Subparsers) -> None:
    s = sub.add_parser(
        "window", help="sites, windows and per-split haplotype tables of one chromosome"
    )
    s.add_argument("--panel", required=True)
    s.add_argument("--split", required=True)
    s.add_argument("--chrom", required=True)
    s.add_argument(
        "--length", type=int, default=default("windows.length"), help="window length in sites"
    )
    s.add_argument(
        "--overlap",
        type=int,
        default=default("windows.overlap"),
        help="sites shared by consecutive windows",
    )
    s.add_argument(
        "--keep-filtered",
        action="store_true",
        default=not default("panel.pass_only"),
        help="keep records whose FILTER is not PASS",
    )
    s.add_argument(
        "--indels",
        action=argparse.BooleanOptionalAction,
        default=default("panel.indels"),
        help="keep the panel's biallelic indels as sites to impute (panel.indels); --no-indels: SNVs only",
    )
    s.add_argument("--genetic-map", help="PLINK .map or HapMap genetic map (default 1 cM/Mb)")
    s.add_argument("--out", required=True, help="output directory")
    s.set_defaults(func=_window)


def _mask_parser(sub: Subparsers) -> None:
    s = sub.add_parser("mask", help="make and store masks; prints their hashes")
    s.add_argument("--windows", required=True, help="window stage directory")
    s.add_argument("--store", required=True, help="mask store directory (masks/<chrom>)")
    s.add_argument(
        "--current", help="where to write the list of hashes (default STORE/current.json)"
    )
    s.add_argument("--strategy", choices=choices("mask.strategy"), default=default("mask.strategy"))
    s.add_argument("--rate", type=float, default=default("mask.rate"))
    s.add_argument("--seed", type=int, default=default("mask.seed"))
    s.add_argument("--maf-threshold", type=float, default=default("mask.maf_threshold"))
    s.add_argument("--array", help="array manifest (TSV chrom,pos[,ref,alt] or a VCF)")
    s.add_argument("--array-dropout", type=float, default=default("mask.array_dropout"))
    s.add_argument(
        "--schedule", type=int, default=default("mask.schedule"), help="E > 0: one mask per epoch"
    )
    s.set_defaults(func=_mask)


def _tokenize_parser(sub: Subparsers) -> None:
    s = sub.add_parser("tokenize", help="tokenize one split under one mask")
    s.add_argument("--windows", required=True)
    s.add_argument("--store", required=True)
    s.add_argument("--hash", required=True)
    s.add_argument("--split", required=True, choices=("train", "val", "test"))
    s.add_argument("--out", required=True)
    s.set_defaults(func=_tokenize)


def _index_parser(sub: Subparsers) -> None:
    s = sub.add_parser("index", help="build the FAISS index of the train tokens")
    s.add_argument("--tokens", required=True, help="train split token table")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--kind", choices=choices("index.kind"), default=default("index.kind"))
    s.add_argument("--hnsw-m", type=int, default=default("index.hnsw_m"))
    s.add_argument("--threads", type=int, default=default("index.threads"))
    s.set_defaults(func=_index)


def _retrieve_parser(sub: Subparsers) -> None:
    s = sub.add_parser("retrieve", help="top-K neighbours of every query haplotype window")
    s.add_argument("--tokens", required=True)
    s.add_argument("--index", required=True)
    s.add_argument("-k", type=int, default=default("retrieval.k"))
    s.add_argument("--out", required=True)
    s.set_defaults(func=_retrieve)


def _train_parser(sub: Subparsers) -> None:
    s = sub.add_parser(
        "train", help="train the model on a results directory's tokens and retrieval tables"
    )
    s.add_argument("--results", required=True, help="results directory of a pipeline run")
    s.add_argument("--chromosomes", nargs="+", help="default: every chromosome with masks")
    s.add_argument(
        "--config",
        help="YAML file whose `train:` section sets the options, and `retrieval.k` the neighbours "
        "(config/config.yaml; k must be what the retrieve stage ran with)",
    )
    s.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override one option, e.g. --set epochs=2",
    )
    s.add_argument("--out", help="output directory (default RESULTS/model)")
    s.add_argument("--state", help="resumable state directory (default RESULTS/model_state)")
    s.set_defaults(func=_train)


def _impute_parser(sub: Subparsers) -> None:
    s = sub.add_parser(
        "impute",
        help="impute a phased target VCF from a pipeline run's reference panel: VCF.gz + .tbi",
    )
    s.add_argument("--results", required=True, help="results directory of a pipeline run")
    s.add_argument(
        "--chrom",
        required=True,
        help="chromosome as the run's config names it (its folder under windows/; a chunked run's "
        "chunks cannot be imputed this way: use the workflow)",
    )
    s.add_argument("--split", required=True, help="the run's split/samples.tsv")
    s.add_argument("--target", required=True, help="phased target VCF/BCF (array sites)")
    s.add_argument("--method", default="copying", help="copying (default), af, retrieval or model")
    s.add_argument(
        "--reference",
        nargs="+",
        default=["train", "val", "test"],
        choices=("train", "val", "test"),
        help="splits whose samples form the copying model's reference (default: the whole panel)",
    )
    s.add_argument(
        "--engine",
        action="append",
        metavar="KEY=VALUE",
        help="copying-model setting, e.g. --engine states=800 (config `engine:` keys)",
    )
    s.add_argument("--out", required=True, help="output .vcf.gz (indexed; report beside it)")
    s.add_argument("--report", help="JSON report (default OUT.json)")
    s.add_argument("--aligned", help="harmonised target directory (default OUT.aligned)")
    s.add_argument("--panel", help="panel VCF, for ##contig lengths")
    s.add_argument("--checkpoint", help="model checkpoint (method model)")
    s.add_argument(
        "--device", default=default("impute.device"), help="auto, cpu or cuda (method model)"
    )
    s.add_argument(
        "-k",
        type=int,
        default=default("retrieval.k"),
        help="neighbours for predictors that do not set K",
    )
    s.add_argument("--max-missing", type=float, default=default("impute.max_missing"))
    s.add_argument(
        "--batch",
        type=int,
        default=default("impute.batch_haplotypes"),
        help="target haplotypes per predictor call",
    )
    s.add_argument("--threads", type=int, default=default("impute.threads"))
    s.add_argument(
        "--gp",
        action=argparse.BooleanOptionalAction,
        default=default("impute.gp"),
        help="write GP (GT:DS:GP); --no-gp writes GT:DS, as Beagle does by default",
    )
    s.add_argument(
        "--hds",
        action=argparse.BooleanOptionalAction,
        default=default("impute.hds"),
        help="write each haplotype's ALT dosage after DS (GT:DS:HDS:GP), as Minimac4 does",
    )
    s.add_argument("--index-kind", choices=choices("index.kind"), default=default("index.kind"))
    s.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="predictor option, e.g. --set flank=16 (retrieval: k, flank, decay, tau, prior)",
    )
    s.set_defaults(func=_impute)


def _evaluate_parser(sub: Subparsers) -> None:
    s = sub.add_parser("evaluate", help="score an imputed VCF (any tool) against true genotypes")
    s.add_argument("--imputed", required=True)
    s.add_argument("--truth", required=True)
    s.add_argument("--results", required=True, help="results directory (reference MAF)")
    s.add_argument("--chrom", required=True)
    s.add_argument(
        "--typed", required=True, help="the (harmonised) target: its sites are not scored"
    )
    s.add_argument("--method", required=True, help="name of the method in the tables")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument(
        "--reference",
        nargs="+",
        default=["train", "val", "test"],
        choices=("train", "val", "test"),
        help="splits whose samples were the imputation reference, as given to impute: their MAF "
        "bins the sites (default: the whole panel; train for the panel's own held-out samples)",
    )
    s.add_argument(
        "--indels",
        action=argparse.BooleanOptionalAction,
        default=default("panel.indels"),
        help="score the truth's biallelic indels too (panel.indels); --no-indels: SNVs only",
    )
    s.set_defaults(func=_evaluate)


def _compare_parser(sub: Subparsers) -> None:
    s = sub.add_parser("compare", help="pool evaluations: comparison.tsv, calibration.tsv, plots")
    s.add_argument("--tables", nargs="+", required=True, help="sites.tsv.gz of each evaluation")
    s.add_argument("--methods", nargs="+", help="method order (default: as found)")
    s.add_argument("--out", required=True, help="output directory")
    s.set_defaults(func=_compare)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log)
    try:
        args.func(args)
    except USER_ERRORS as e:
        log.error("%s", _name_the_option(e, args))
        return 1
    return 0


def _name_the_option(e: Exception, args: argparse.Namespace) -> Exception:
    """A missing file given on the command line: say which option gave it (the package's message
    cannot know whether the path came from the config or from, say, ``--target``)."""
    if not isinstance(e, InputError) or e.problem != "file not found":
        return e
    flags = [
        "--" + key.replace("_", "-")
        for key, value in vars(args).items()
        if key not in ("func", "command", "log")
        and any(str(v) == e.path for v in (value if isinstance(value, list) else [value]))
    ]
    if not flags:
        return e
    return InputError(e.path, e.problem, f"Check the path given to {' / '.join(flags)}", e.record)


if __name__ == "__main__":
    sys.exit(main())
