from pathlib import Path

from ragimpute.smk import run
from ragimpute.train import TrainConfig, train
from ragimpute.train_data import iter_inputs

# Several training processes (train.processes) are spawned: each imports this script as its main
# module again, where Snakemake's `snakemake` object does not exist, so the run starts only here.
if __name__ == "__main__":
    settings = {**snakemake.config["train"], **snakemake.params.cfg}
    cfg = TrainConfig(**{**settings, "k": snakemake.params.k, "threads": snakemake.threads})
    out_dir = Path(snakemake.output.model).parent
    results = out_dir.parent
    run(
        snakemake,
        train,
        cfg=cfg,
        inputs=list(iter_inputs(results, snakemake.params.masks, cfg.mode, cfg.prior)),
        out_dir=out_dir,
        # Outside the rule's outputs, which Snakemake deletes before a re-run: a killed job resumes
        # from here.
        state_dir=results / "model_state",
    )
