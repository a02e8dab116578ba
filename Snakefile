# LLM Flow Processes: the whole pipeline. Each stage lives in workflow/rules/<stage>.smk;
# the logic lives in the llmflow library (src/llmflow).
import sys

from snakemake.utils import min_version

from llmflow.config import ConfigError, check_consistency, validate_config
from llmflow.expert.budget import check_prompt_lengths
from llmflow.tasks import TaskInputError, check_user_tasks

min_version("9.0")


configfile: "config.yaml"


try:
    validate_config(config)
    check_consistency(config)
    check_user_tasks(config)
    check_prompt_lengths(config)
except (ConfigError, TaskInputError) as err:
    # One line naming the key, before any job runs or any output is touched.
    sys.exit(str(err))


include: "workflow/rules/common.smk"
include: "workflow/rules/prior.smk"
include: "workflow/rules/tasks.smk"
include: "workflow/rules/llm.smk"
include: "workflow/rules/expert.smk"
include: "workflow/rules/allmp.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/bench.smk"


rule all:
    default_target: True
    input:
        PRIOR_SHARDS["train"],
        PRIOR_SHARDS["val"],
        PRIOR_SHARDS["test"],
        TASK_STORES,
        NDP_MODEL,
        GP_ORACLE["csv"],
        SUMMARY["csv"],
        figure("fig1"),
        USER_OUTPUTS,


rule predict:
    """`snakemake -j4 predict`: only your tasks (the NDP, their LLM expert, A-LLMP and samples);
    no GP-oracle benchmark, no built-in task, no metrics table."""
    input:
        USER_OUTPUTS,
