rule gp_oracle:
    """GP-oracle benchmark: NDP vs the exact GP posterior (and the Bayes mixture on prior draws)."""
    input:
        model=NDP_MODEL,
        mixture=PRIOR_SHARDS["test"],
    output:
        csv=report(GP_ORACLE["csv"], caption="../report/gp_oracle.rst", category="Benchmark"),
        table=GP_ORACLE["table"],
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
