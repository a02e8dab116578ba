rule evaluate:
    """Metrics of every method on every task, the summary tables, and the predictions export."""
    input:
        tasks=TASK_STORES,
        samples=[f"results/samples/{t}/{m}.zarr" for t in TASKS for m in TASK_SAMPLES[t]],
        experts=[f"results/expert/{MODEL_LABEL}/{t}.zarr" for t in TASKS],
    output:
        summary=report("results/metrics/summary.csv", category="Metrics"),
        table="results/metrics/summary.md",
        predictions=[f"results/predictions/{t}/{m}.csv" for t in TASKS for m in TASK_METHODS[t]],
    log:
        "logs/evaluate.log",
    params:
        tasks=TASKS,
        methods=TASK_SAMPLES,
    conda:
        "../../envs/llmflow.yaml"
    script:
        "../scripts/evaluate.py"


rule figures:
    """Fig. 1, Fig. 2, calibration, and one figure per user task (PNG + PDF)."""
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
        user=[f"results/figures/{t}.png" for t in TASKS if t.startswith("user-")],
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
