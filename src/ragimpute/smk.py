"""Glue for ``workflow/scripts``: log to Snakemake's ``log:`` and turn user errors into one clear line."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from typing import Any

from .cli import USER_ERRORS
from .logs import log, setup_logging


def run(snakemake: Any, fn: Callable[..., Any], **kwargs: Any) -> Any:
    setup_logging(snakemake.log[0] if snakemake.log else None)
    log.info("rule %s: %s", snakemake.rule, ", ".join(f"{k}={v}" for k, v in kwargs.items()))
    try:
        return fn(**kwargs)
    except USER_ERRORS as e:
        log.error("%s%s", _chunk_prefix(snakemake), e)
        sys.exit(1)


def _chunk_prefix(snakemake: Any) -> str:
    """``chunk 20.c003: `` for a job on a chunk (its ``unit`` wildcard), so that an error names it."""
    from .chunks import chrom_of

    unit = getattr(getattr(snakemake, "wildcards", None), "unit", None)
    return f"chunk {unit}: " if isinstance(unit, str) and chrom_of(unit) != unit else ""


def known_inputs(snakemake: Any, *names: str) -> Any:
    """The job's inputs, which must include ``names``. Snakemake can start a job whose input
    function hangs on a checkpoint before it knows them (``input: <TBD>``, seen after ``--forcerun
    mask``): such a job gets only the checkpoint's output, and it stops here with what to do instead
    of failing on the first input it reads."""
    missing = [n for n in names if n not in snakemake.input.keys()]
    if missing:
        setup_logging(snakemake.log[0] if snakemake.log else None)
        log.error(
            "rule %s was started before Snakemake knew its inputs (%s missing; they depend on a "
            "checkpoint that this run re-made, a Snakemake limitation after --forcerun of mask or "
            "target_mask). Nothing was written: run snakemake again without --forcerun",
            snakemake.rule,
            ", ".join(missing),
        )
        sys.exit(1)
    return snakemake.input


def engine_settings(snakemake: Any) -> dict:
    """The rule's engine settings with those it leaves out of its parameters (they do not change
    the output: ``ENGINE_OUTPUT_NEUTRAL``) added back from the config; empty for a method that does
    not run the engine."""
    from .methods import ENGINE_OUTPUT_NEUTRAL

    given = dict(snakemake.params.engine)
    if not given:
        return given
    config = snakemake.config["engine"]
    return {**given, **{k: config[k] for k in ENGINE_OUTPUT_NEUTRAL if k in config}}


def config_sources(
    configfiles: list[str], cli: dict | None, given: list[str] | None = None
) -> list[tuple[str, dict]]:
    """What each source of a workflow's config sets, in the order of precedence Snakemake gives
    them: the Snakefile's ``configfile:``, then the ``--configfile`` files (``given``, in their
    order), then ``--config``. ``configfiles`` is every file the workflow read (Snakemake lists the
    ``--configfile`` ones first and the Snakefile's after them, though the latter yields to them)."""
    from .schema import read_yaml

    def key(f: str) -> str:
        return os.path.realpath(f)

    cli_files = {key(f): str(f) for f in given or []}
    own = {key(f): str(f) for f in configfiles if key(f) not in cli_files}
    out = [(name, read_yaml(name) or {}) for name in [*own.values(), *cli_files.values()]]
    return out + [("--config", cli or {})]


def _set_by(keys: list[str], sources: list[tuple[str, dict]]) -> str | None:
    """The last source that sets the key path ``keys`` (the one whose value the config holds)."""
    found = None
    for name, cfg in sources:
        node = cfg
        for k in keys:
            if isinstance(node, dict) and k in node:
                node = node[k]
            elif isinstance(node, list) and str(k).isdigit() and int(k) < len(node):
                node = node[int(k)]
            else:
                break
        else:
            found = name
    return found


# schema checks whose own message says less than the key's description (what the key may be)
_DESCRIBED = ("minLength", "pattern", "oneOf")


_TEXT_NUMBER = re.compile(r"([-+]?)([0-9]+)(?:\.([0-9]*))?[eE]([-+]?)([0-9]+)")


def _yaml11_number(text: str) -> str | None:
    """How to write ``text`` as a number YAML 1.1 reads (PyYAML, hence Snakemake), where it reads a
    string instead: ``1e-05`` and ``2.0E3`` are strings to it (a decimal point and a signed exponent
    are needed: ``1.0e-05``, ``2.0E+3``); None if ``text`` is not such a number."""
    m = _TEXT_NUMBER.fullmatch(text.strip())
    if not m:
        return None
    sign, whole, frac, esign, exp = m.groups()
    return f"{sign}{whole}.{frac or 0}e{esign or '+'}{exp}"


def config_problems(
    config: dict, schema_path: str | os.PathLike, sources: list[tuple[str, dict]] | None = None
) -> list[str]:
    """What is wrong with a workflow config, one short line per problem (empty: nothing).

    Snakemake's own validation prints the whole schema after the first error; this names the key
    (``train.model.d_modle``), says what is wrong and, for a misspelt key, which key was meant. With
    ``sources`` (``config_sources``) it also names the file (or ``--config``) that set the key:
    Snakemake merges them before we see the config.
    """
    import difflib

    import jsonschema
    import numpy as np

    from .schema import read_yaml

    def origin(keys: list[str]) -> str:
        name = _set_by(keys, sources) if sources else None
        return f" in {name}" if name else ""

    schema = read_yaml(schema_path)
    validator = jsonschema.Draft202012Validator(schema)
    out = []
    seen = set()
    for err in sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.path))):
        path = [str(k) for k in err.absolute_path]
        where = ".".join(path)
        if err.validator == "additionalProperties":
            known = list(err.schema.get("properties", {}))
            given = err.instance if isinstance(err.instance, dict) else {}
            for key in sorted(set(given) - set(known)):
                name = f"{where}.{key}" if where else str(key)
                guess = difflib.get_close_matches(str(key), known, n=1)
                hint = f"did you mean {guess[0]!r}?" if guess else f"known keys: {', '.join(known)}"
                out.append(f"unknown config key {name!r}{origin([*path, str(key)])} ({hint})")
            continue
        if where in seen:  # one line per key: e.g. an empty `results` fails minLength and pattern
            continue
        seen.add(where)
        message = err.message
        if err.validator in _DESCRIBED and "description" in err.schema:
            message = f"{err.instance!r} is not allowed: {err.schema['description']}"
        if err.validator == "type" and "enum" in err.schema:
            message += f" (one of: {', '.join(map(str, err.schema['enum']))})"
        if err.instance is None and err.validator == "type":
            # `genetic_map:` with nothing after it reads as "no value" to its writer, as null to YAML
            message += (
                '; YAML reads a key with no value as null: write "" for an empty value, or leave '
                "the key out for its default"
            )
        if isinstance(err.instance, bool) and err.validator in ("type", "enum"):
            message += "; YAML reads yes, no, on and off as true or false: quote the value"
        if err.validator == "type" and isinstance(err.instance, str):
            if origin(path) == " in --config":
                message += (
                    "; --config passes the values inside a nested key as text: set it in a "
                    "--configfile"
                )
            elif fixed := _yaml11_number(err.instance):
                plain = np.format_float_positional(float(err.instance), trim="-")
                message += (
                    f"; YAML reads {err.instance} as text (it needs a decimal point and a signed "
                    f"exponent): write {fixed} or {plain}"
                )
        out.append(
            f"config key {where or '(top level)'!r}{origin(path) if path else ''}: {message}"
        )
    if not out:  # the types hold: the checks that span two keys
        out += [
            f"config key '{section}.overlap'{origin([section, 'overlap'])}: {o} is not less than "
            f"{section}.length ({n}); consecutive {section} must overlap by less than their length"
            for section in ("windows", "chunks")
            for n, o in [(config.get(section, {}).get(k) for k in ("length", "overlap"))]
            if n and o is not None and o >= n
        ]
        out += _engine_problems(config, schema, origin)
    return out


def _engine_problems(config: dict, schema: dict, origin) -> list[str]:
    """engine.candidates must stay below engine.states (either may be left at its default): checked
    here, not first in the states job after the stages before it have run."""
    defaults = {
        k: v.get("default") for k, v in schema["properties"]["engine"]["properties"].items()
    }
    engine = {**defaults, **config.get("engine", {})}
    states, candidates = engine.get("states"), engine.get("candidates")
    if states is None or candidates is None or candidates < states:
        return []
    return [
        f"config key 'engine.candidates'{origin(['engine', 'candidates'])}: {candidates} is not "
        f"less than engine.states ({states}); a step takes fewer candidates than there are states"
    ]


def config_warnings(config: dict) -> list[str]:
    """What in a valid config is likely a mistake, one line each (the run goes on)."""
    out = []
    target = config.get("impute", {}).get("target_vcf")
    if target and not config.get("panel", {}).get("vcf"):
        out.append(
            f"impute.target_vcf is set ({target}) but panel.vcf is empty: the targets are imputed "
            "from the simulated demo panel, which suits only the demo's own cohort "
            "(demo.cohort_samples). For your own targets, set panel.vcf to your reference panel"
        )
    return out


def own_target_chromosomes(
    configured: list[str], panel_vcf: str, target_vcf: str, cache_dir: str | None = None
) -> tuple[list[str], list[str]]:
    """The chromosomes of a run on your own target, and notes for the log.

    Empty ``configured``: the panel's chromosomes that the target has records on (a whole-genome
    panel with a one-chromosome target is the usual case, not an error). A configured chromosome the
    target has no record on is refused here, before any job runs: otherwise the run failed minutes
    later in its mask job, with a hint at the build rather than at ``chromosomes:``. Raises
    ``InputError`` naming the target, what it lacks and what to do.

    This runs whenever the DAG is built, on a cluster in every job: an unindexed target is read
    through once (CHROM, POS, REF, ALT) and what it holds kept in ``cache_dir``, keyed on its path,
    size and modification time, as the chunk plan keeps an unindexed panel's positions."""
    from .errors import InputError
    from .vcf_io import normalize_chrom, vcf_records_contigs

    in_target, lacking = _contigs_lacking(target_vcf, configured, cache_dir)
    have = {normalize_chrom(c) for c in in_target}
    if configured:
        if lacking:
            raise InputError(
                target_vcf,
                f"the target (impute.target_vcf) has no records on {', '.join(lacking)}, which "
                f"`chromosomes:` names (the target's chromosomes: {', '.join(in_target) or 'none'})",
                f"Remove {', '.join(lacking)} from `chromosomes:`, or leave it empty to impute "
                "every chromosome of the panel that the target has",
            )
        return list(configured), []
    in_panel = vcf_records_contigs(panel_vcf)
    chosen = [c for c in in_panel if normalize_chrom(c) in have]
    if not chosen:
        raise InputError(
            target_vcf,
            f"the target (impute.target_vcf) has records on no chromosome of the panel "
            f"{panel_vcf} (the target's: {', '.join(in_target) or 'none'}; the panel's: "
            f"{', '.join(in_panel) or 'none'})",
            "Check that both are of the same genome build and name the same chromosomes "
            "(chr20 and 20 match)",
        )
    left = [c for c in in_panel if c not in chosen]
    notes = (
        [f"panel chromosomes without target records are not imputed: {', '.join(left)}"]
        if left
        else []
    )
    return chosen, notes


def _contigs_with_records(path: str, cache_dir: str | None) -> list[str]:
    """Contigs with records, through the index; an unindexed file read once and cached."""
    from .vcf_io import _all_site_positions, check_readable, is_indexed, vcf_records_contigs

    check_readable(path)
    if is_indexed(path):
        return vcf_records_contigs(path)
    return list(_all_site_positions(path, False, cache_dir))


def _contigs_lacking(
    path: str, chromosomes: list[str], cache_dir: str | None
) -> tuple[list[str], list[str]]:
    """The contigs ``path`` has records on, and those of ``chromosomes`` it has none on (chr20 and
    20 the same)."""
    from .vcf_io import normalize_chrom

    held = _contigs_with_records(path, cache_dir)
    have = {normalize_chrom(c) for c in held}
    return held, [c for c in chromosomes if normalize_chrom(c) not in have]


def check_truth_chromosomes(
    chromosomes: list[str], truth_vcf: str, cache_dir: str | None = None
) -> None:
    """A truth VCF without records on a chromosome of the run failed that chromosome's evaluate
    jobs after every imputation had run; refused before any job runs instead. Raises
    ``InputError`` naming the truth, the chromosomes it lacks and what to do."""
    from .errors import InputError

    in_truth, lacking = _contigs_lacking(truth_vcf, chromosomes, cache_dir)
    if lacking:
        raise InputError(
            truth_vcf,
            f"the truth (impute.truth_vcf) has no records on {', '.join(lacking)}, which this run "
            f"imputes (the truth's chromosomes: {', '.join(in_truth) or 'none'})",
            "Give a truth VCF of every chromosome of the run (`bcftools concat` joins per-"
            'chromosome files), set impute.truth_vcf: "" to stop at the imputed VCFs, or run the '
            f"chromosomes without truth apart (leave {', '.join(lacking)} out of `chromosomes:`)",
        )
