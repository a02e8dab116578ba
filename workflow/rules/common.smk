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
