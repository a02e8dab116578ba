rule sample:
    """NDP and LLM-NDP joint samples for one task (A-LLMP samples come from the expert stage)."""
    input:
        model="results/ndp/model.pt",
        task="results/tasks/{task}.zarr",
        expert=f"results/expert/{MODEL_LABEL}/{{task}}.zarr",
    output:
        ndp=directory("results/samples/{task}/ndp.zarr"),
        llm_ndp=directory("results/samples/{task}/llm-ndp.zarr"),
    log:
        "logs/sample/{task}.log",
    params:
        seed=config["seed"],
        sample=config["sample"],
        sampler=config["sampler"],
        x_range=config["prior"]["x_range"],
    conda:
        "../../envs/llmflow.yaml"
    script:
        "../scripts/sample.py"
