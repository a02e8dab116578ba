"""Rule `figures`: the paper's Fig. 1 and Fig. 2 and the calibration plot."""

import numpy as np
import pandas as pd
import xarray as xr

from llmflow import plots
from llmflow.binned import BinnedDensity
from llmflow.evaluate import read_samples
from llmflow.logs import log_errors
from llmflow.ndp import TrainedNDP
from llmflow.predict import unconditional_samples
from llmflow.sampler import SamplerConfig
from llmflow.tasks import Task

with log_errors(snakemake.log[0], snakemake.threads) as log:
    p = snakemake.params

    def load(name):
        i = p.tasks.index(name)
        task = Task.from_dataset(xr.open_zarr(snakemake.input.tasks[i]))
        samples, _ = read_samples(p.samples[name])
        return task, samples, BinnedDensity.from_store(p.experts[i], task)

    if p.figure_task not in p.tasks:
        raise ValueError(f"figures.task: {p.figure_task!r} is not one of the configured tasks")
    task, samples, bins = load(p.figure_task)
    model = TrainedNDP.load(snakemake.input.model)
    x_prior = np.linspace(*p.x_range, 64)[:, None]
    prior = unconditional_samples(model, x_prior, 12, SamplerConfig.from_config(p.sampler), p.seed)
    plots.figure1(task, samples, bins, x_prior, prior, snakemake.output.fig1)
    plots.figure2(task, samples, bins, snakemake.output.fig2)
    plots.calibration(pd.read_csv(snakemake.input.tasks_csv), snakemake.output.calibration)
    log.info("wrote figures for %s", p.figure_task)
