rule prior:
    """One shard of GP prior draws (deterministic per seed, split and shard index)."""
    output:
        directory(PRIOR_SHARD),
    log:
        "logs/prior/{split}/shard-{shard}.log",
    wildcard_constraints:
        split="|".join(SPLITS),
        shard=r"\d+",
    params:
        seed=config["seed"],
        prior=config["prior"],
    conda:
        "../../envs/llmflow.yaml"
    script:
        "../scripts/prior.py"
