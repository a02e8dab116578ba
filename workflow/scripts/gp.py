"""Rule `gp`: the fitted-GP baseline of every task of one shard, its predictive and samples."""

from llmflow.cache import run_cached
from llmflow.frame import TaskFrame
from llmflow.gpfit import fit_gp, gp_dataset
from llmflow.logs import log_errors
from llmflow.tasks import Task

with log_errors(snakemake.log[0], snakemake.threads) as log:
    p = snakemake.params

    def compute(datasets):
        task = Task.from_dataset(datasets[0])  # group 1: one task a call
        fit = fit_gp(task, TaskFrame.fit(task, tuple(p.x_range), p.y_scale_min))
        log.info("fitted the GP to %s (%d context points, optimised: %s): %s; %d samples at %d targets", task.name,
                 len(task.y_context), fit.optimised, fit.attrs(), p.n_samples, len(task.y_target))
        return [{"gp": gp_dataset(task, fit, p.n_samples, p.seed)}]

    run_cached(snakemake.input.tasks, {"gp": p.stores},
               {"n_samples": p.n_samples, "y_scale_min": p.y_scale_min, "x_range": p.x_range, "seed": p.seed},
               compute, p.cache, log)
