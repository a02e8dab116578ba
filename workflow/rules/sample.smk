rule sample:
    """NDP, LLM-NDP and LLM-NDP-cal joint samples: one job per shard of tasks
    (SHARDS["sample"]), the network loaded once per job, a <task>.zarr per task and method in
    the shard's folders (A-LLMP's come from rule allmp); finished tasks cached (CACHE)."""
    input:
        model=NDP_MODEL,
        tasks=shard_tasks("sample"),
        # the expert shards' folders, for the dependency; params.experts are the stores read
        expert_folders=lambda wc: list(dict.fromkeys(made_by(t, "i-llmp") for t in SHARDS["sample"][int(wc.shard)])),
    output:
        ndp=directory(RESULT_FOLDER["ndp"]),
        llm_ndp=directory(RESULT_FOLDER["llm-ndp"]),
        llm_ndp_cal=directory(RESULT_FOLDER["llm-ndp-cal"]),
    log:
        "logs/sample/shard-{shard}.log",
    wildcard_constraints:
        shard="|".join(map(str, SHARDS["sample"])),
    params:
        experts=shard_tasks("sample", "i-llmp"),
        stores=lambda wc: {m: shard_tasks("sample", m)(wc) for m in ("ndp", "llm-ndp", "llm-ndp-cal")},
        cache=CACHE["sample"],
        seed=config["seed"],
        sample=result_settings("sample"),
        sampler=config["sampler"],
        x_range=config["prior"]["x_range"],
    conda:
        "../../envs/llmflow.yaml"
    script:
        "../scripts/sample.py"


rule gp:
    """The fitted-GP baseline (llmflow.gpfit): each task's exact predictive (mean, covariance)
    and joint samples, in a sample store like the other methods'; one job per shard of tasks
    (SHARDS["gp"]), finished tasks cached (CACHE)."""
    input:
        tasks=shard_tasks("gp"),
    output:
        directory(RESULT_FOLDER["gp"]),
    log:
        "logs/gp/shard-{shard}.log",
    wildcard_constraints:
        shard="|".join(map(str, SHARDS["gp"])),
    params:
        stores=shard_tasks("gp", "gp"),
        cache=CACHE["gp"],
        seed=config["seed"],
        # only what the fit reads: a change to the LLM-NDP settings leaves the fitted GP as it is
        n_samples=config["sample"]["n_samples"],
        y_scale_min=config["sample"]["y_scale_min"],
        x_range=config["prior"]["x_range"],
    conda:
        "../../envs/llmflow.yaml"
    script:
        "../scripts/gp.py"
