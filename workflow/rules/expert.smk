rule expert:
    """I-LLMP binned densities: one job per shard of tasks (SHARDS["expert"]), the model loaded
    once per job, a <task>.zarr per task in the shard's folder. Finished tasks are also cached
    (by task data and settings), so a rerun after a killed job recomputes only what is missing."""
    input:
        tasks=shard_tasks("expert"),
        model=LLM_FOLDER,
    output:
        directory(RESULT_FOLDER["i-llmp"]),
    log:
        f"logs/expert/{MODEL_LABEL}/shard-{{shard}}.log",
    wildcard_constraints:
        shard="|".join(map(str, SHARDS["expert"])),
    params:
        stores=shard_tasks("expert", "i-llmp"),
        llm=config["llm"],
        expert=result_settings("expert"),
        cache=CACHE["expert"],
    resources:
        gpu=1 if config["llm"]["device"] == "cuda" else 0,
    conda:
        "../../envs/llmflow.yaml"
    script:
        "../scripts/expert.py"
