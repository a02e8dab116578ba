# LLM Flow Processes: the whole pipeline. Each stage lives in workflow/rules/<stage>.smk;
# the logic lives in the llmflow library (src/llmflow).
import sys

from snakemake.utils import min_version

from llmflow.config import ConfigError, validate_config

min_version("9.0")


configfile: "config.yaml"


try:
    validate_config(config)
except ConfigError as err:
    # One line naming the key, before any job runs or any output is touched.
    sys.exit(str(err))


include: "workflow/rules/common.smk"
include: "workflow/rules/prior.smk"


rule all:
    default_target: True
    input:
        PRIOR_SHARDS["train"],
        PRIOR_SHARDS["val"],
        PRIOR_SHARDS["test"],
