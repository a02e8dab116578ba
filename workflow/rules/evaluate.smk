rule evaluate:
    """Metrics of every method on every task, their summary per family, and the predictions export of
    the built-in tasks (a user task's comes from its rule user_<name>, below)."""
    input:
        tasks=TASK_STORES,
        results=results_of(TASKS),
    output:
        tasks=SUMMARY["tasks"],
        summary=report(SUMMARY["csv"], caption="../report/summary.rst", category="Metrics"),
        table=SUMMARY["md"],
        predictions=[PREDICTION.format(task=t, method=m) for t in BUILTIN_TASKS for m in TASK_METHODS[t]],
    log:
        "logs/evaluate.log",
    params:
        tasks=TASKS,
        samples={t: {m: store(t, m) for m in TASK_SAMPLES[t]} for t in TASKS},
        experts=[store(t, "i-llmp") for t in TASKS],
        predictions={t: PREDICTIONS.format(task=t) for t in BUILTIN_TASKS},
    conda:
        "../../envs/llmflow.yaml"
    script:
        "../scripts/evaluate.py"


rule figures:
    """Fig. 1, Fig. 2 and calibration (PNG + PDF)."""
    input:
        model=NDP_MODEL,
        tasks_csv=SUMMARY["tasks"],
        tasks=TASK_STORES,
        results=results_of(TASKS),
    output:
        fig1=report(figure("fig1"), caption="../report/fig1.rst", category="Figures"),
        fig2=report(figure("fig2"), caption="../report/fig2.rst", category="Figures"),
        calibration=report(figure("calibration"), caption="../report/calibration.rst", category="Figures"),
    log:
        "logs/figures.log",
    params:
        tasks=TASKS,
        samples={t: {m: store(t, m) for m in TASK_SAMPLES[t]} for t in TASKS},
        experts=[store(t, "i-llmp") for t in TASKS],
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
            task=TASK_STORE.format(task=_task),
            results=results_of([_task]),
        output:
            predictions=[PREDICTION.format(task=_task, method=m) for m in TASK_METHODS[_task]],
            figure=report(figure(_task), caption="../report/user_task.rst", category="Your tasks"),
            pdf=figure(_task, "pdf"),
        log:
            f"logs/predict/{_task}.log",
        params:
            samples={m: store(_task, m) for m in TASK_SAMPLES[_task]},
            expert=store(_task, "i-llmp"),
            predictions=PREDICTIONS.format(task=_task),
        conda:
            "../../envs/llmflow.yaml"
        script:
            "../scripts/predict.py"
