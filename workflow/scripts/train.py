from ragimpute.smk import run
from ragimpute.train import TrainConfig, iter_inputs, train

cfg = TrainConfig(**{**snakemake.params.cfg, "k": snakemake.params.k, "threads": snakemake.threads})
run(
    snakemake,
    train,
    cfg=cfg,
    inputs=list(iter_inputs(snakemake.params.results, snakemake.params.masks, cfg.mode)),
    out_dir=snakemake.params.results + "/model",
    state_dir=snakemake.params.state_dir,
)
