"""Rule `gp`: the fitted-GP baseline of every task of one shard, its predictive and samples."""

import xarray as xr

from llmflow.frame import TaskFrame
from llmflow.gpfit import fit_gp, gp_dataset
from llmflow.io import write_zarr
from llmflow.logs import log_errors
from llmflow.tasks import Task

with log_errors(snakemake.log[0], snakemake.threads) as log:
    p = snakemake.params
    for task_path, out_path in zip(snakemake.input.tasks, p.stores, strict=True):
        task = Task.from_dataset(xr.open_zarr(task_path))
        fit = fit_gp(task, TaskFrame.fit(task, tuple(p.x_range), p.y_scale_min))
        write_zarr(gp_dataset(task, fit, p.n_samples, p.seed), out_path)
        log.info("fitted the GP to %s (%d context points, optimised: %s): %s; %d samples at %d targets", task.name,
                 len(task.y_context), fit.optimised, fit.attrs(), p.n_samples, len(task.y_target))
