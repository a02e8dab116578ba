rule gp_oracle:
    """GP-oracle benchmark of one kernel: the NDP vs the exact GP posterior and the Bayes-optimal
    predictor under the training prior (whose config the held-out prior shards carry; kernel
    `mixture` also draws its tasks from them). One job per kernel, so the kernels run side by
    side (one GPU each on a cluster)."""
    input:
        model=NDP_MODEL,
        prior=PRIOR_SHARDS["test"],
    output:
        GP_ORACLE_KERNEL,
    log:
        "logs/bench/gp_oracle/{kernel}.log",
    wildcard_constraints:
        kernel="|".join(ORACLE_KERNELS),
    params:
        bench=lambda w: kernel_settings(config["bench"]["gp_oracle"], w.kernel),
        sampler=config["sampler"],
        seed=config["seed"],
        device=config["device"],
        # run locally on several GPUs, the kernels spread over them like the LLM stage's shards
        shard=lambda w: ORACLE_KERNELS.index(w.kernel),
    threads: 1
    resources:
        gpu=1 if config["device"] == "cuda" else 0,
    conda:
        "../../envs/llmflow.yaml"
    script:
        "../scripts/gp_oracle.py"


rule gp_oracle_table:
    """The GP-oracle benchmark's table: the kernels' rows in one CSV, an aligned text table and a
    figure of every row's gap."""
    input:
        [GP_ORACLE_KERNEL.format(kernel=k) for k in ORACLE_KERNELS],
    output:
        csv=report(GP_ORACLE["csv"], caption="../report/gp_oracle.rst", category="Benchmark"),
        table=GP_ORACLE["table"],
        png=report(GP_ORACLE["png"], caption="../report/gp_oracle.rst", category="Benchmark"),
    log:
        "logs/bench/gp_oracle_table.log",
    conda:
        "../../envs/llmflow.yaml"
    script:
        "../scripts/gp_oracle_table.py"
