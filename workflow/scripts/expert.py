"""Rule `expert`: I-LLMP binned densities for every task of one shard (wildcard `shard`)."""

from llmflow.device import choose_device
from llmflow.cache import run_cached
from llmflow.expert import ExpertConfig, task_expert
from llmflow.llm import LLMConfig, load_model, model_label
from llmflow.logs import log_errors

with log_errors(snakemake.log[0], snakemake.threads) as log:
    llm_cfg, cfg = LLMConfig.from_config(snakemake.params.llm), ExpertConfig.from_config(snakemake.params.expert)
    device = choose_device(llm_cfg.device, shard=int(snakemake.wildcards.shard))
    model, tokenizer = load_model(llm_cfg.model, dtype=llm_cfg.dtype, device=device)
    name = model_label(llm_cfg.model)
    log.info("model %s on %s, writing %s", name, device, " ".join(snakemake.params.stores))
    run_cached(
        snakemake.input.tasks,
        {"i-llmp": snakemake.params.stores},
        {"model": name, "dtype": llm_cfg.dtype, "expert": snakemake.params.expert},
        lambda tasks: [{"i-llmp": task_expert(model, tokenizer, task, cfg, name)} for task in tasks],
        snakemake.params.cache,
        log,
    )
