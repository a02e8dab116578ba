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


rule gp:
    """The fitted-GP baseline of one task (llmflow.gpfit): its exact predictive (mean,
    covariance) and joint samples, in a sample store like the other methods'."""
    input:
        task=TASK_STORE,
    output:
        directory(SAMPLE_STORE.format(task="{task}", method="gp")),
    log:
        "logs/gp/{task}.log",
    wildcard_constraints:
        task="|".join(map(re.escape, TASKS)),
    params:
        seed=config["seed"],
        # only what the fit reads: a change to the LLM-NDP settings leaves the fitted GP as it is
        n_samples=config["sample"]["n_samples"],
        y_scale_min=config["sample"]["y_scale_min"],
        x_range=config["prior"]["x_range"],
    conda:
        "../../envs/llmflow.yaml"
    script:
        "../scripts/gp.py"
