rule train:
    """Train the NDP on the prior's train split; resumes from its last checkpoint after a kill.

    Wants one GPU at paper scale (the slurm-gpu profile gives it one); CPU otherwise.
    The checkpoint folder is deliberately not an output, so a failed job keeps it for the retry.
    """
    input:
        train=PRIOR_SHARDS["train"],
        val=PRIOR_SHARDS["val"],
    output:
        model=NDP_MODEL,
        curve_csv=TRAIN_CURVE["csv"],
        curve_png=report(TRAIN_CURVE["png"], caption="../report/train_curve.rst", category="Training"),
    log:
        "logs/ndp/train.log",
    params:
        ndp=config["ndp"],
        train=config["train"],
        x_dim=config["prior"]["x_dim"],
        seed=config["seed"],
        device=config["device"],
        checkpoint_dir=NDP_CHECKPOINTS,
    threads: config["train"]["threads"]
    conda:
        "../../envs/llmflow.yaml"
    script:
        "../scripts/train.py"
