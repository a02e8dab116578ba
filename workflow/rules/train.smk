rule train:
    """Train the NDP on the prior's train split; resumes from results/ndp/checkpoints after a kill.

    Wants one GPU at paper scale (the slurm-gpu profile gives it one); CPU otherwise.
    The checkpoint folder is deliberately not an output, so a failed job keeps it for the retry.
    """
    input:
        train=PRIOR_SHARDS["train"],
        val=PRIOR_SHARDS["val"],
    output:
        model="results/ndp/model.pt",
        curve_csv="results/ndp/train_curve.csv",
        curve_png="results/ndp/train_curve.png",
    log:
        "logs/ndp/train.log",
    params:
        ndp=config["ndp"],
        train=config["train"],
        x_dim=config["prior"]["x_dim"],
        seed=config["seed"],
        device=config["device"],
        checkpoint_dir="results/ndp/checkpoints",
    threads: config["train"]["threads"]
    conda:
        "../../envs/llmflow.yaml"
    script:
        "../scripts/train.py"
