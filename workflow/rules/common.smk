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
USER_TASKS = [t for t in TASKS if t.startswith("user-")]
BUILTIN_TASKS = [t for t in TASKS if not t.startswith("user-")]
USER_CSVS = {f"user-{u['name']}": [u["csv"]] for u in config["tasks"]["user"]}

from llmflow.evaluate import METHODS, SAMPLE_METHODS, allmp_tasks
from llmflow.llm import model_label

MODEL_LABEL = model_label(config["llm"]["model"])


def shards(tasks):
    """Tasks dealt round-robin over expert.shards jobs, one model load per job: the built-in
    tasks over shards 0, 1, ..., the user tasks over their own shards numbered after them, so
    `predict` runs the LLM on the user tasks alone."""
    n = config["expert"]["shards"]
    out = {}
    for group in ([t for t in tasks if t in BUILTIN_TASKS], [t for t in tasks if t in USER_TASKS]):
        for k in range(min(n, len(group))):
            out[len(out)] = group[k::n]
    return out


EXPERT_SHARDS = shards(TASKS)
# A-LLMP samples only the tasks matching allmp.tasks (its cost on CPU: README, "Run time").
ALLMP_TASKS = allmp_tasks(TASKS, config["allmp"]["tasks"])
ALLMP_SHARDS = shards(ALLMP_TASKS)
# Methods of each task (A-LLMP only where it ran), and those of them with sample stores.
TASK_METHODS = {t: [m for m in METHODS if m != "a-llmp" or t in ALLMP_TASKS] for t in TASKS}
TASK_SAMPLES = {t: [m for m in TASK_METHODS[t] if m in SAMPLE_METHODS] for t in TASKS}
