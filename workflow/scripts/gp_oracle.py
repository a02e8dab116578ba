"""Rule `gp_oracle`: one kernel's rows of the GP-oracle benchmark (CSV)."""

from llmflow.logs import log_errors
from llmflow.oracle import OracleConfig, format_table, run_gp_oracle, write_table
from llmflow.ndp import TrainedNDP
from llmflow.sampler import SamplerConfig
from llmflow.device import choose_device

with log_errors(snakemake.log[0], snakemake.threads) as log:
    kernel = snakemake.wildcards.kernel
    model = TrainedNDP.load(snakemake.input.model, choose_device(snakemake.params.device, shard=snakemake.params.shard))
    table = run_gp_oracle(model, OracleConfig.from_config(snakemake.params.bench), SamplerConfig.from_config(snakemake.params.sampler),
                          prior_shards=snakemake.input.prior, seed=snakemake.params.seed,
                          kernels=[kernel], log=log.info)
    write_table(table, snakemake.output[0])
    log.info("GP-oracle benchmark, %s (per target, nats):\n%s", kernel, format_table(table))
