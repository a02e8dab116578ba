"""Rule `allmp`: A-LLMP autoregressive samples for every task of one shard (wildcard `shard`)."""

from llmflow.allmp import AllmpConfig, sample_allmp_tasks
from llmflow.device import choose_device
from llmflow.cache import run_cached
from llmflow.expert import ExpertConfig
from llmflow.llm import LLMConfig, load_model, model_label
from llmflow.logs import log_errors
from llmflow.tasks import task_seed

with log_errors(snakemake.log[0], snakemake.threads) as log:
    llm_cfg = LLMConfig.from_config(snakemake.params.llm)
    expert_cfg = ExpertConfig.from_config(snakemake.params.expert)
    cfg = AllmpConfig.from_config({**snakemake.params.allmp, "tasks_per_forward": snakemake.params.tasks_per_forward})
    device = choose_device(llm_cfg.device, shard=int(snakemake.wildcards.shard))
    model, tokenizer = load_model(llm_cfg.model, dtype=llm_cfg.dtype, device=device)
    name = model_label(llm_cfg.model)
    log.info("model %s on %s, writing %s", name, device, " ".join(snakemake.params.stores))

    def sample(tasks):
        # A seed per task (root seed + task name), so shards may be regrouped freely.
        seeds = [task_seed(snakemake.params.seed, task.attrs["name"]) for task in tasks]
        return [{"a-llmp": ds} for ds in sample_allmp_tasks(model, tokenizer, tasks, expert_cfg, cfg, name, seeds)]

    run_cached(
        snakemake.input.tasks,
        {"a-llmp": snakemake.params.stores},
        {"model": name, "dtype": llm_cfg.dtype, "expert": snakemake.params.expert, "allmp": snakemake.params.allmp,
         "seed": snakemake.params.seed},
        sample,
        snakemake.params.cache,
        log,
        group=cfg.tasks_per_forward,
    )
