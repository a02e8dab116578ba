"""Rule `gp_oracle_table`: the per-kernel GP-oracle CSVs as one table (CSV + aligned text) and its figure."""

from llmflow import plots
from llmflow.logs import log_errors
from llmflow.oracle import format_table, read_tables, write_table

with log_errors(snakemake.log[0], snakemake.threads) as log:
    table = read_tables(snakemake.input)
    write_table(table, snakemake.output.csv, snakemake.output.table)
    plots.gp_oracle(table, snakemake.output.png)
    log.info("GP-oracle benchmark (per target, nats):\n%s", format_table(table))
