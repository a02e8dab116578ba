"""Rule `sample`: NDP, LLM-NDP and LLM-NDP-cal samples of every task of one shard."""

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
    model = TrainedNDP.load(snakemake.input.model)
    for i, (task_path, expert_path) in enumerate(zip(snakemake.input.tasks, p.experts, strict=True)):
        task = Task.from_dataset(xr.open_zarr(task_path))
        frame = TaskFrame.fit(task, tuple(p.x_range), cfg.y_scale_min)
        seed = task_seed(p.seed, task.name)  # per task: shards may be regrouped freely
        ndp = sample_task(model, task, frame, cfg.n_samples, sampler, seed)
        expert = ExpertTerm.from_store(expert_path, task, cfg)
        llm_ndp = sample_task(model, task, frame, cfg.n_samples, sampler, seed, expert)
        cal, fit = sample_calibrated(model, task, frame, expert_path, cfg, sampler, seed, ndp)
        write_zarr(samples_dataset(task, ndp, "ndp"), p.stores["ndp"][i])
        write_zarr(samples_dataset(task, llm_ndp, "llm-ndp", expert_weight=cfg.expert_weight, expert_fade=cfg.expert_fade),
                   p.stores["llm-ndp"][i])
        write_zarr(samples_dataset(task, cal, "llm-ndp-cal", expert_weight=fit.weight, expert_smoothing=fit.smoothing,
                                   loo_score=fit.score, loo_score_ndp=fit.ndp_score, n_held=fit.n_held),
                   p.stores["llm-ndp-cal"][i])
        log.info("llm-ndp-cal of %s: λ = %g, smoothing %.3g (leave-one-out score %.3f vs the NDP's %.3f over %d points)",
                 task.name, fit.weight, fit.smoothing, fit.score, fit.ndp_score, fit.n_held)
        log.info("sampled %s (%d of %d): %d samples at %d targets", task.name, i + 1, len(p.experts),
                 cfg.n_samples, len(task.y_target))
