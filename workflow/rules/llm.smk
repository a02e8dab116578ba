rule llm_model:
    """Materialise an embedded GGUF model (from pip packages) into a plain HF folder, the
    LLM_FOLDER of the LLM stages when llm.model is an embedded name."""
    output:
        directory(LLM_MODELS),
    log:
        "logs/llm_model/{model}.log",
    wildcard_constraints:
        model="|".join(EMBEDDED),
    conda:
        "../../envs/llmflow.yaml"
    script:
        "../scripts/llm_model.py"
