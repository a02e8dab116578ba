rule evaluate:
    """Metrics of every method on every task, the summary tables, and the predictions export of
    the built-in tasks (a user task's comes from its rule user_<name>, below)."""
    input:
        tasks=TASK_STORES,
        samples=[f"results/samples/{t}/{m}.zarr" for t in TASKS for m in TASK_SAMPLES[t]],
        experts=[f"results/expert/{MODEL_LABEL}/{t}.zarr" for t in TASKS],
    output:
        summary=report("results/metrics/summary.csv", category="Metrics"),
        table="results/metrics/summary.md",
        predictions=[f"results/predictions/{t}/{m}.csv" for t in BUILTIN_TASKS for m in TASK_METHODS[t]],
    log:
        "logs/evaluate.log",
    params:
        tasks=TASKS,
        methods=TASK_SAMPLES,
        export=BUILTIN_TASKS,
    conda:
        "../../envs/llmflow.yaml"
    script:
        "../scripts/evaluate.py"


rule figures:
    """Fig. 1, Fig. 2 and calibration (PNG + PDF)."""
    input:
        model="results/ndp/model.pt",
        summary="results/metrics/summary.csv",
        tasks=TASK_STORES,
        samples=[f"results/samples/{t}/{m}.zarr" for t in TASKS for m in TASK_SAMPLES[t]],
        experts=[f"results/expert/{MODEL_LABEL}/{t}.zarr" for t in TASKS],
    output:
        fig1=report("results/figures/fig1.png", category="Figures"),
        fig2=report("results/figures/fig2.png", category="Figures"),
        calibration=report("results/figures/calibration.png", category="Figures"),
    log:
        "logs/figures.log",
    params:
        tasks=TASKS,
        methods=TASK_SAMPLES,
        figure_task=config["figures"]["task"],
        sampler=config["sampler"],
        x_range=config["prior"]["x_range"],
        seed=config["seed"],
    conda:
        "../../envs/llmflow.yaml"
    script:
        "../scripts/figures.py"


# One rule per user task: its predictions and figure from its own samples and expert store, so
# `snakemake predict` needs nothing of the other tasks (no evaluate, no figures).
for _task in USER_TASKS:

    rule:
        name:
            f"user_{_task.removeprefix('user-')}"
        input:
            task=f"results/tasks/{_task}.zarr",
            samples=[f"results/samples/{_task}/{m}.zarr" for m in TASK_SAMPLES[_task]],
            expert=f"results/expert/{MODEL_LABEL}/{_task}.zarr",
        output:
            predictions=[f"results/predictions/{_task}/{m}.csv" for m in TASK_METHODS[_task]],
            figure=report(f"results/figures/{_task}.png", category="Your tasks"),
            pdf=f"results/figures/{_task}.pdf",
        log:
            f"logs/predict/{_task}.log",
        params:
            methods=TASK_SAMPLES[_task],
            folder=f"results/predictions/{_task}",
        conda:
            "../../envs/llmflow.yaml"
        script:
            "../scripts/predict.py"
