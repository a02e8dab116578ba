"""Rule `tasks`: build one evaluation task and write it to zarr."""

from llmflow.io import write_zarr
from llmflow.logs import log_errors
from llmflow.tasks import build_task

with log_errors(snakemake.log[0], snakemake.threads) as log:
    task = build_task(snakemake.wildcards.task, snakemake.params.config)
    write_zarr(task.to_dataset(), snakemake.output[0])
    log.info("wrote %s: %d context, %d target points", snakemake.output[0], len(task.y_context), len(task.y_target))
