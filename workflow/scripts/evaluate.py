"""Rule `evaluate`: metrics per task × method, summary CSV + markdown, predictions CSVs of the
built-in tasks (a user task's come from its rule `user_<name>`)."""

import pandas as pd
import xarray as xr

from llmflow.binned import BinnedDensity
from llmflow.evaluate import summary_markdown, task_rows, write_predictions
from llmflow.io import write_file
from llmflow.logs import log_errors
from llmflow.tasks import Task

with log_errors(snakemake.log[0], snakemake.threads) as log:
    rows = []
    for i, name in enumerate(snakemake.params.tasks):
        task = Task.from_dataset(xr.open_zarr(snakemake.input.tasks[i]))
        samples = {m: xr.open_zarr(f"results/samples/{name}/{m}.zarr")["y"].values for m in snakemake.params.methods[name]}
        bins = BinnedDensity.from_store(snakemake.input.experts[i], task)
        rows += task_rows(task, samples, bins)
        if name in snakemake.params.export:
            write_predictions(task, samples, bins, f"results/predictions/{name}")
    summary = pd.DataFrame(rows, columns=["task", "family", "method", "metric", "value"])
    write_file(snakemake.output.summary, lambda p: summary.to_csv(p, index=False, float_format="%.6g"))
    write_file(snakemake.output.table, lambda p: p.write_text(summary_markdown(summary)))
    log.info("scored %d tasks: %d rows", len(snakemake.params.tasks), len(summary))
