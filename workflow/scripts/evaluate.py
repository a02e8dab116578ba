"""Rule `evaluate`: metrics per task × method, summary CSV + markdown, predictions CSVs."""

import pandas as pd
import xarray as xr

from llmflow.evaluate import bins_from_dataset, predictions, summary_markdown, task_rows
from llmflow.io import write_file
from llmflow.logs import log_errors
from llmflow.tasks import Task

with log_errors(snakemake.log[0], snakemake.threads) as log:
    rows = []
    for i, name in enumerate(snakemake.params.tasks):
        task = Task.from_dataset(xr.open_zarr(snakemake.input.tasks[i]))
        samples = {m: xr.open_zarr(f"results/samples/{name}/{m}.zarr")["y"].values for m in snakemake.params.methods[name]}
        bins = bins_from_dataset(xr.open_zarr(snakemake.input.experts[i]))
        rows += task_rows(task, samples, bins)
        for method, frame in predictions(task, samples, bins).items():
            write_file(f"results/predictions/{name}/{method}.csv", lambda p, f=frame: f.to_csv(p, index=False, float_format="%.6g"))
    summary = pd.DataFrame(rows, columns=["task", "family", "method", "metric", "value"])
    write_file(snakemake.output.summary, lambda p: summary.to_csv(p, index=False, float_format="%.6g"))
    write_file(snakemake.output.table, lambda p: p.write_text(summary_markdown(summary)))
    log.info("scored %d tasks: %d rows", len(snakemake.params.tasks), len(summary))
