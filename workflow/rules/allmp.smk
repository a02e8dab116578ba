rule allmp:
    """A-LLMP samples, drawn digit by digit: sharded like rule expert, over the tasks matching
    allmp.tasks (SHARDS["allmp"]), with the same per-task cache."""
    input:
        tasks=shard_tasks("allmp"),
        model=LLM_FOLDER,
    output:
        directory(RESULT_FOLDER["a-llmp"]),
    log:
        f"logs/allmp/{MODEL_LABEL}/shard-{{shard}}.log",
    wildcard_constraints:
        shard="|".join(map(str, SHARDS["allmp"])),
    params:
        stores=shard_tasks("allmp", "a-llmp"),
        llm=config["llm"],
        expert=result_settings("expert"),
        allmp=result_settings("allmp"),
        tasks_per_forward=config["allmp"]["tasks_per_forward"],
        seed=config["seed"],
        cache=CACHE["allmp"],
    resources:
        gpu=1 if config["llm"]["device"] == "cuda" else 0,
    conda:
        "../../envs/llmflow.yaml"
    script:
        "../scripts/allmp.py"
