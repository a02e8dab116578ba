"""Rule `prior`: write one GP prior shard."""

from llmflow.io import write_zarr
from llmflow.logs import log_errors
from llmflow.prior import PriorConfig, make_shard, prior_config_json

with log_errors(snakemake.log[0], snakemake.threads) as log:
    section = snakemake.params.prior
    seed = snakemake.params.seed
    ds = make_shard(
        PriorConfig.from_config(section),
        seed=seed,
        split=snakemake.wildcards.split,
        shard=int(snakemake.wildcards.shard),
        config_json=prior_config_json(section, seed),
    )
    write_zarr(ds, snakemake.output[0])
    log.info("wrote %s: %d functions", snakemake.output[0], ds.sizes["function"])
