"""Rule `evaluate`: metrics per task × method (tasks.csv), their summary per family (summary.csv,
summary.md), predictions CSVs of the built-in tasks (a user task's come from its rule
`user_<name>`)."""

import pandas as pd
import xarray as xr

from llmflow.binned import BinnedDensity
from llmflow.evaluate import read_samples, summarise, summary_markdown, task_rows, write_predictions
from llmflow.io import write_file
from llmflow.logs import log_errors
from llmflow.tasks import Task

with log_errors(snakemake.log[0], snakemake.threads) as log:
    params = snakemake.params
    rows = []
    for name, task_path, expert in zip(params.tasks, snakemake.input.tasks, params.experts):
        task = Task.from_dataset(xr.open_zarr(task_path))
        samples, gaussians = read_samples(params.samples[name])
        bins = BinnedDensity.from_store(expert, task)
        rows += task_rows(task, samples, bins, gaussians)
        if name in params.predictions:
            write_predictions(task, samples, bins, gaussians, params.predictions[name])
    tasks = pd.DataFrame(rows, columns=["task", "family", "method", "metric", "value"])
    summary = summarise(tasks)
    write_file(snakemake.output.tasks, lambda p: tasks.to_csv(p, index=False, float_format="%.6g"))
    write_file(snakemake.output.summary, lambda p: summary.to_csv(p, index=False, float_format="%.6g"))
    write_file(snakemake.output.table, lambda p: p.write_text(summary_markdown(summary)))
    log.info("scored %d tasks: %d rows, %d summary rows", len(params.tasks), len(tasks), len(summary))
