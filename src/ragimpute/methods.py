"""The names of the imputation methods and the engine's version, without importing what runs them (the
workflow reads these when it builds its DAG; ``ragimpute.impute.PREDICTOR_FACTORIES`` maps ours to
their predictors)."""

# Ours: imputed by the `impute` rule (ragimpute.impute).
OUR_METHODS = ("af", "retrieval", "copying", "model")
# Ours that run the copying-model engine (``model`` refines its P(ALT)).
ENGINE_METHODS = ("copying", "model")
# Run by other tools on the same reference and harmonised target (workflow rules of their own).
EXTERNAL_METHODS = ("beagle", "minimac4")

# The copying-model engine's version: raised whenever the same inputs and settings give other output
# (2: step windows centred at a chunk's ends; 3: centred only for a reference larger than the states).
# The state index records it, and the workflow passes it as a parameter of the jobs that run the
# engine, so that Snakemake reruns them after an upgrade instead of keeping results the new version
# would not produce.
ENGINE_VERSION = 3
ENGINE_PARAM = f"ragimpute-engine-{ENGINE_VERSION}"

# What the artifacts made from the haplotype tables record of them (1: ``haplotypes_digest``, which
# the tokens, the index, the state index and model.pt carry, and imputation checks against the
# reference; the prior tables too, which training checks). A parameter of the rules that write them,
# so that Snakemake rebuilds those an earlier version wrote (which record none, and imputation or
# training would refuse) instead of keeping them.
REFERENCE_RECORD_PARAM = "ragimpute-haplotypes-digest-1"

# The engine settings a state index is built with (another value needs another index), and those the
# workflow's `states` rule is given: these, with `states` (an auto span_steps depends on it) and
# `candidates` (which the settings check against it: without it the rule met the default 64).
INDEX_SETTINGS = ("step_cm", "span_steps", "seed")
# Engine settings that leave its output as it is (memory only): not parameters of the workflow's
# rules, whose scripts read them from the config, so that a change reruns nothing.
ENGINE_OUTPUT_NEUTRAL = ("block_sites",)
# Train settings that change how a run uses the machine, not what it computes: not in a training
# checkpoint's identity, and not parameters of the train rule (its script reads them from the config).
TRAIN_MACHINE_SETTINGS = ("log_every", "threads", "device", "cache_windows")
STATES_RULE_SETTINGS = ("states", "candidates", *INDEX_SETTINGS)
