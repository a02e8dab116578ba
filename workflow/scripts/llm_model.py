"""Rule `llm_model`: materialise an embedded model into a plain Hugging Face folder."""

from llmflow.llm import materialise
from llmflow.logs import log_errors

with log_errors(snakemake.log[0], snakemake.threads) as log:
    path = materialise(snakemake.wildcards.model, snakemake.output[0])
    log.info("materialised %s into %s", snakemake.wildcards.model, path)
