"""Rule `sample`: NDP, LLM-NDP and LLM-NDP-cal samples of every task of one shard."""

from pathlib import Path

from llmflow.cache import content_hash, run_cached
from llmflow.frame import TaskFrame
from llmflow.logs import log_errors
from llmflow.ndp import TrainedNDP
from llmflow.predict import SampleConfig, sample_methods
from llmflow.sampler import SamplerConfig
from llmflow.tasks import Task, task_seed

with log_errors(snakemake.log[0], snakemake.threads) as log:
    p = snakemake.params
    cfg, sampler = SampleConfig.from_config(p.sample), SamplerConfig.from_config(p.sampler)
    model = TrainedNDP.load(snakemake.input.model)
    experts = {Path(path).stem: path for path in p.experts}

    def compute(datasets):
        task = Task.from_dataset(datasets[0])  # group 1: one task a call
        frame = TaskFrame.fit(task, tuple(p.x_range), cfg.y_scale_min)
        # a seed per task (root seed + task name): shards may be regrouped freely
        stores, fit = sample_methods(model, task, frame, experts[task.name], cfg, sampler, task_seed(p.seed, task.name))
        log.info("llm-ndp-cal of %s: λ = %g, smoothing %.3g (leave-one-out score %.3f vs the NDP's %.3f over %d points)",
                 task.name, fit.weight, fit.smoothing, fit.score, fit.ndp_score, fit.n_held)
        log.info("sampled %s: %d samples at %d targets", task.name, cfg.n_samples, len(task.y_target))
        return [stores]

    run_cached(
        snakemake.input.tasks,
        p.stores,
        # what a task's draws depend on besides its data and its own expert store (inputs)
        {"model": content_hash(snakemake.input.model), "sample": p.sample, "sampler": p.sampler, "seed": p.seed,
         "x_range": p.x_range},
        compute,
        p.cache,
        log,
        # each task's own expert store, found by name as compute finds it
        inputs=[{"i-llmp": experts[Path(path).stem]} for path in snakemake.input.tasks],
    )
