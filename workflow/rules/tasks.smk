rule tasks:
    """One evaluation task: context/target split, text, and any checkable constraint."""
    output:
        directory(TASK_STORE),
    log:
        "logs/tasks/{task}.log",
    wildcard_constraints:
        task="|".join(map(re.escape, TASKS)),
    input:
        # user tasks depend on their CSV, so editing it rebuilds the task
        lambda wc: USER_CSVS.get(wc.task, []),
    params:
        config=lambda wc: task_config(wc.task, config),
    conda:
        "../../envs/llmflow.yaml"
    script:
        "../scripts/tasks.py"
