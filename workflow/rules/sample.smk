rule sample:
    """NDP, LLM-NDP and LLM-NDP-cal joint samples for one task (A-LLMP's come from rule allmp)."""
    input:
        model=NDP_MODEL,
        task=TASK_STORE,
        expert=lambda wc: made_by(wc.task, "i-llmp"),
    output:
        ndp=directory(SAMPLE_STORE.format(task="{task}", method="ndp")),
        llm_ndp=directory(SAMPLE_STORE.format(task="{task}", method="llm-ndp")),
        llm_ndp_cal=directory(SAMPLE_STORE.format(task="{task}", method="llm-ndp-cal")),
    log:
        "logs/sample/{task}.log",
    wildcard_constraints:
        task="|".join(map(re.escape, TASKS)),
    params:
        expert=lambda wc: store(wc.task, "i-llmp"),
        seed=config["seed"],
        sample=config["sample"],
        sampler=config["sampler"],
        x_range=config["prior"]["x_range"],
    conda:
        "../../envs/llmflow.yaml"
    script:
        "../scripts/sample.py"
