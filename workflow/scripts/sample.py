"""Rule `sample`: NDP, LLM-NDP and LLM-NDP-cal samples of one task."""

import xarray as xr

from llmflow.frame import TaskFrame
from llmflow.io import write_zarr
from llmflow.logs import log_errors
from llmflow.ndp import TrainedNDP
from llmflow.poe import ExpertTerm
from llmflow.predict import SampleConfig, sample_calibrated, sample_task
from llmflow.sampler import SamplerConfig
from llmflow.tasks import Task, samples_dataset, task_seed

with log_errors(snakemake.log[0], snakemake.threads) as log:
    p = snakemake.params
    cfg, sampler = SampleConfig.from_config(p.sample), SamplerConfig.from_config(p.sampler)
    task = Task.from_dataset(xr.open_zarr(snakemake.input.task))
    model = TrainedNDP.load(snakemake.input.model)
    frame = TaskFrame.fit(task, tuple(p.x_range), cfg.y_scale_min)
    seed = task_seed(p.seed, task.name)
    ndp = sample_task(model, task, frame, cfg.n_samples, sampler, seed)
    expert = ExpertTerm.from_store(p.expert, task, cfg)
    llm_ndp = sample_task(model, task, frame, cfg.n_samples, sampler, seed, expert)
    cal, fit = sample_calibrated(model, task, frame, p.expert, cfg, sampler, seed, ndp)
    write_zarr(samples_dataset(task, ndp, "ndp"), snakemake.output.ndp)
    write_zarr(samples_dataset(task, llm_ndp, "llm-ndp", expert_weight=cfg.expert_weight, expert_fade=cfg.expert_fade),
               snakemake.output.llm_ndp)
    write_zarr(samples_dataset(task, cal, "llm-ndp-cal", expert_weight=fit.weight, expert_smoothing=fit.smoothing,
                               loo_score=fit.score, loo_score_ndp=fit.ndp_score, n_held=fit.n_held), snakemake.output.llm_ndp_cal)
    log.info("llm-ndp-cal of %s: λ = %g, smoothing %.3g (leave-one-out score %.3f vs the NDP's %.3f over %d points)",
             task.name, fit.weight, fit.smoothing, fit.score, fit.ndp_score, fit.n_held)
    log.info("sampled %s: %d samples at %d targets", task.name, cfg.n_samples, len(task.y_target))
