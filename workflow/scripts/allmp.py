"""Rule `allmp`: A-LLMP autoregressive samples for every task of one shard (wildcard `shard`)."""

from llmflow.allmp import AllmpConfig, sample_allmp
from llmflow.device import choose_device
from llmflow.expert import ExpertConfig, run_cached
from llmflow.llm import LLMConfig, load_model, model_label
from llmflow.logs import log_errors
from llmflow.tasks import task_seed

with log_errors(snakemake.log[0], snakemake.threads) as log:
    llm_cfg = LLMConfig.from_config(snakemake.params.llm)
    expert_cfg = ExpertConfig.from_config(snakemake.params.expert)
    cfg = AllmpConfig.from_config(snakemake.params.allmp)
    device = choose_device(llm_cfg.device, shard=int(snakemake.wildcards.shard))
    model, tokenizer = load_model(llm_cfg.model, dtype=llm_cfg.dtype, device=device)
    name = model_label(llm_cfg.model)
    log.info("model %s on %s, writing %s", name, device, " ".join(snakemake.params.stores))

    def sample(task):
        # A seed per task (root seed + task name), so shards may be regrouped freely.
        return sample_allmp(model, tokenizer, task, expert_cfg, cfg, name, task_seed(snakemake.params.seed, task.attrs["name"]))

    run_cached(
        snakemake.input.tasks,
        snakemake.params.stores,
        {"model": name, "dtype": llm_cfg.dtype, "expert": snakemake.params.expert,
         "allmp": snakemake.params.allmp, "seed": snakemake.params.seed},
        sample,
        snakemake.params.cache,
        log,
    )
