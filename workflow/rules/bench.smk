rule gp_oracle:
    """GP-oracle benchmark: NDP vs the exact GP posterior (and the Bayes mixture on prior draws)."""
    input:
        model="results/ndp/model.pt",
        mixture=PRIOR_SHARDS["test"],
    output:
        csv="results/bench/gp_oracle.csv",
        table="results/bench/gp_oracle.txt",
    log:
        "logs/bench/gp_oracle.log",
    params:
        bench=config["bench"]["gp_oracle"],
        sampler=config["sampler"],
        seed=config["seed"],
        device=config["device"],
    threads: 1
    conda:
        "../../envs/llmflow.yaml"
    script:
        "../scripts/gp_oracle.py"
