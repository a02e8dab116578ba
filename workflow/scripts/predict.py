"""Rule `user_<name>`: one user task's predictions CSVs (every method) and its figure."""

import xarray as xr

from llmflow import plots
from llmflow.binned import BinnedDensity
from llmflow.evaluate import read_samples, write_predictions
from llmflow.logs import log_errors
from llmflow.tasks import Task

with log_errors(snakemake.log[0], snakemake.threads) as log:
    task = Task.from_dataset(xr.open_zarr(snakemake.input.task))
    samples, gaussians = read_samples(snakemake.params.samples)
    bins = BinnedDensity.from_store(snakemake.params.expert, task)
    write_predictions(task, samples, bins, gaussians, snakemake.params.predictions)
    plots.task_figure(task, samples, bins, snakemake.output.figure)
    log.info("wrote %d predictions CSVs and %s for %s (%d targets)", len(snakemake.output.predictions),
             snakemake.output.figure, task.name, len(task.y_target))
