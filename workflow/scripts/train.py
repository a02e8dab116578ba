"""Rule `train`: train (or resume) the NDP and write model.pt and its training curve."""

from llmflow.logs import log_errors
from llmflow.ndp import NDPConfig
from llmflow.train import train_config_from, run_training

with log_errors(snakemake.log[0], snakemake.threads) as log:
    cfg = train_config_from(snakemake.params.train, snakemake.params.seed)
    model_cfg = NDPConfig.from_config(snakemake.params.ndp, x_dim=snakemake.params.x_dim)
    log.info("training %s with %s on device=%s", model_cfg, cfg, snakemake.params.device)
    result = run_training(
        snakemake.input.train, model_cfg, cfg,
        model_path=snakemake.output.model, checkpoint_dir=snakemake.params.checkpoint_dir,
        curve_csv=snakemake.output.curve_csv, curve_png=snakemake.output.curve_png,
        device=snakemake.params.device, val_shard_paths=snakemake.input.val,
    )
    last = result.curve.iloc[-1]
    log.info("done in %.0f s (resumed from step %s): loss %.4f, validation loss %.4f",
             result.seconds, result.resumed_from, last["loss"], last["val_loss"])
