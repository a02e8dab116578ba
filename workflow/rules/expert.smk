# Stage `expert`: one job per shard of tasks (EXPERT_SHARDS, from common.smk), the model loaded
# once per job. Outputs are one zarr per task; finished tasks are also kept in a cache keyed
# by (task data, settings), so a rerun after a killed job recomputes only what is missing.
# Rules are generated per shard because a job's outputs are the shard's own task list.
for _shard, _tasks in EXPERT_SHARDS.items():

    rule:
        name:
            f"expert_{_shard}"
        input:
            tasks=[f"results/tasks/{t}.zarr" for t in _tasks],
            model=LLM_FOLDER,
        output:
            [directory(f"results/expert/{MODEL_LABEL}/{t}.zarr") for t in _tasks],
        log:
            f"logs/expert/{MODEL_LABEL}/shard-{_shard}.log",
        params:
            shard=_shard,
            llm=config["llm"],
            expert=config["expert"],
            cache=f"results/expert/{MODEL_LABEL}/.cache",
        resources:
            gpu=1 if config["llm"]["device"] == "cuda" else 0,
        conda:
            "../../envs/llmflow.yaml"
        script:
            "../scripts/expert.py"


# A-LLMP: the same sharding over the tasks it samples.
for _shard, _tasks in ALLMP_SHARDS.items():

    rule:
        name:
            f"allmp_{_shard}"
        input:
            tasks=[f"results/tasks/{t}.zarr" for t in _tasks],
            model=LLM_FOLDER,
        output:
            [directory(f"results/samples/{t}/a-llmp.zarr") for t in _tasks],
        log:
            f"logs/allmp/{MODEL_LABEL}/shard-{_shard}.log",
        params:
            shard=_shard,
            llm=config["llm"],
            expert=config["expert"],
            allmp=config["allmp"],
            seed=config["seed"],
            cache=f"results/samples/.cache-a-llmp/{MODEL_LABEL}",
        resources:
            gpu=1 if config["llm"]["device"] == "cuda" else 0,
        conda:
            "../../envs/llmflow.yaml"
        script:
            "../scripts/allmp.py"
