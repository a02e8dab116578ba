"""Rule `sample`: NDP and LLM-NDP samples of one task."""

import xarray as xr

from llmflow.io import write_zarr
from llmflow.logs import log_errors
from llmflow.ndp import TrainedNDP
from llmflow.predict import TaskFrame, sample_llm_ndp, sample_task, samples_dataset
from llmflow.tasks import Task, task_seed

with log_errors(snakemake.log[0], snakemake.threads) as log:
    p = snakemake.params
    task = Task.from_dataset(xr.open_zarr(snakemake.input.task))
    model = TrainedNDP.load(snakemake.input.model)
    frame = TaskFrame.fit(task, tuple(p.x_range), p.sample["y_scale_min"])
    seed = task_seed(p.seed, task.name)
    n = p.sample["n_samples"]
    ndp = sample_task(model, task, frame, n, p.sampler, seed)
    llm_ndp = sample_llm_ndp(model, task, frame, xr.open_zarr(p.expert), n, p.sample, p.sampler, seed)
    write_zarr(samples_dataset(task, ndp, "ndp"), snakemake.output.ndp)
    write_zarr(samples_dataset(task, llm_ndp, "llm-ndp", expert_weight=p.sample["expert_weight"], expert_fade=p.sample["expert_fade"]),
               snakemake.output.llm_ndp)
    log.info("sampled %s: %d samples at %d targets", task.name, n, len(task.y_target))
