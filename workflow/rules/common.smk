# Names shared by the rules: every output path is computed here from the validated config.
import re

from llmflow.prior import SPLITS
from llmflow.tasks import task_names

PRIOR_SHARDS = {
    split: [f"results/prior/{split}/shard-{k}.zarr" for k in range(config["prior"]["shards"][split])]
    for split in SPLITS
}

TASKS = task_names(config)
TASK_STORES = [f"results/tasks/{task}.zarr" for task in TASKS]
USER_CSVS = {f"user-{u['name']}": [u["csv"]] for u in config["tasks"]["user"]}

from llmflow.evaluate import METHODS, SAMPLE_METHODS
from llmflow.llm import model_label

MODEL_LABEL = model_label(config["llm"]["model"])
# Tasks dealt round-robin over the expert jobs; one model load per job.
EXPERT_SHARDS = {
    k: TASKS[k :: config["expert"]["shards"]]
    for k in range(min(config["expert"]["shards"], len(TASKS)))
}
