# Names shared by the rules, computed from the validated config. Every path under results/ is
# spelled here once; rules hand the paths to scripts (snakemake.input/output/params), so no
# script builds one.
import re

from llmflow.evaluate import METHODS, SAMPLE_METHODS, allmp_tasks
from llmflow.llm import EMBEDDED, model_label
from llmflow.oracle import OracleConfig, kernel_settings, oracle_kernels
from llmflow.prior import SPLITS
from llmflow.tasks import task_config, task_names

TASKS = task_names(config)
USER_TASKS = [t for t in TASKS if t.startswith("user-")]
BUILTIN_TASKS = [t for t in TASKS if not t.startswith("user-")]
USER_CSVS = {f"user-{u['name']}": [u["csv"]] for u in config["tasks"]["user"]}
# A-LLMP samples only the tasks matching allmp.tasks (its cost on CPU: docs/run-time.md).
ALLMP_TASKS = allmp_tasks(TASKS, config["allmp"]["tasks"])
# Methods of each task (A-LLMP only where it ran), and those of them with sample stores.
TASK_METHODS = {t: [m for m in METHODS if m != "a-llmp" or t in ALLMP_TASKS] for t in TASKS}
TASK_SAMPLES = {t: [m for m in TASK_METHODS[t] if m in SAMPLE_METHODS] for t in TASKS}
MODEL_LABEL = model_label(config["llm"]["model"])

# --- paths ------------------------------------------------------------------------------------
PRIOR_SHARD = "results/prior/{split}/shard-{shard}.zarr"
PRIOR_SHARDS = {
    split: [PRIOR_SHARD.format(split=split, shard=k) for k in range(config["prior"]["shards"][split])]
    for split in SPLITS
}
TASK_STORE = "results/tasks/{task}.zarr"
TASK_STORES = [TASK_STORE.format(task=t) for t in TASKS]
NDP_MODEL = "results/ndp/model.pt"
NDP_CHECKPOINTS = "results/ndp/checkpoints"
TRAIN_CURVE = {"csv": "results/ndp/train_curve.csv", "png": "results/ndp/train_curve.png"}
# The GP-oracle benchmark: one CSV per kernel (rule gp_oracle), joined into the table.
GP_ORACLE_KERNEL = "results/bench/gp_oracle/{kernel}.csv"
GP_ORACLE = {"csv": "results/bench/gp_oracle.csv", "table": "results/bench/gp_oracle.txt", "png": "results/bench/gp_oracle.png"}
ORACLE_KERNELS = oracle_kernels(OracleConfig.from_config(config["bench"]["gp_oracle"]))
# An embedded LLM is materialised into LLM_MODELS; any other llm.model is a local folder.
LLM_MODELS = "results/models/{model}"
LLM_FOLDER = LLM_MODELS.format(model=config["llm"]["model"]) if config["llm"]["model"] in EMBEDDED else config["llm"]["model"]
# Every stage after `tasks` runs one job per shard of tasks (SHARDS, below): the LLM stages
# (rules expert and allmp, expert.shards jobs) load the model once a job, the NDP stages (rules
# sample and gp, sample.shards jobs) the network and the imports once a job (about 4 CPU-s a
# job, more than a small task's work: docs/run-time.md). A rule's outputs must follow from its wildcards and a
# shard's task list does not, so a job writes one folder per method, shard-<k>, with a
# <task>.zarr per task (made_by and store find a task's). Every stage also caches finished
# tasks (CACHE, llmflow.cache): a killed job redoes only the rest.
RESULT_FOLDER = {
    "i-llmp": f"results/expert/{MODEL_LABEL}/shard-{{shard}}",
    **{m: f"results/samples/{m}/shard-{{shard}}" for m in ("ndp", "llm-ndp", "llm-ndp-cal", "a-llmp", "gp")},
}
STAGE = {"i-llmp": "expert", "a-llmp": "allmp", "ndp": "sample", "llm-ndp": "sample", "llm-ndp-cal": "sample", "gp": "gp"}
CACHE = {"expert": f"results/expert/{MODEL_LABEL}/.cache", "allmp": f"results/samples/.cache-a-llmp/{MODEL_LABEL}",
         "sample": "results/samples/.cache-ndp", "gp": "results/samples/.cache-gp"}
PREDICTIONS = "results/predictions/{task}"  # llmflow.evaluate.write_predictions writes PREDICTION files into it
PREDICTION = "results/predictions/{task}/{method}.csv"
# The evaluate stage's tables: per task and method (tasks.csv), per family and method (summary.*)
SUMMARY = {"tasks": "results/metrics/tasks.csv", "csv": "results/metrics/summary.csv", "md": "results/metrics/summary.md"}


def figure(name, ext="png"):
    """A figure's path (llmflow.plots.save writes the PDF next to each PNG)."""
    return f"results/figures/{name}.{ext}"


def shards(tasks, n):
    """Tasks dealt round-robin over n jobs: the built-in tasks over shards 0, 1, ..., the user
    tasks over their own shards numbered after them, so `predict` runs only the user tasks."""
    out = {}
    for group in ([t for t in tasks if t in BUILTIN_TASKS], [t for t in tasks if t in USER_TASKS]):
        for k in range(min(n, len(group))):
            out[len(out)] = group[k::n]
    return out


# Settings that only deal tasks into jobs, not what a task's result is. Rules hand a stage its
# section without them (result_settings): its cache key hashes what it is handed, so a run dealt
# otherwise (more shards on a cluster, more tasks a forward) reuses every finished task.
DEALING = {"expert": ("shards",), "allmp": ("tasks_per_forward",), "sample": ("shards",)}


def result_settings(section):
    """config[section] less its DEALING keys."""
    return {k: v for k, v in config[section].items() if k not in DEALING.get(section, ())}


SHARDS = {
    "expert": shards(TASKS, config["expert"]["shards"]),
    "allmp": shards(ALLMP_TASKS, config["expert"]["shards"]),
    "sample": shards(TASKS, config["sample"]["shards"]),
}
SHARDS["gp"] = SHARDS["sample"]  # rule gp deals the tasks as rule sample does (sample.shards)
SHARD_OF = {stage: {t: k for k, ts in s.items() for t in ts} for stage, s in SHARDS.items()}


def made_by(task, method):
    """The output of the job that writes `task`'s `method` result: its shard's folder."""
    return RESULT_FOLDER[method].format(shard=SHARD_OF[STAGE[method]][task])


def store(task, method):
    """The zarr store of `task`'s `method` result: I-LLMP densities ("i-llmp") or samples."""
    return f"{made_by(task, method)}/{task}.zarr"


def results_of(tasks):
    """Every job output holding a method result of `tasks`, once each (a shard folder holds several)."""
    return list(dict.fromkeys(made_by(t, m) for t in tasks for m in TASK_METHODS[t]))


def shard_tasks(stage, method=None):
    """Input/params function of a sharded job (wildcard `shard`): its tasks' stores, or with
    `method` the stores it writes, in the same order."""
    return lambda wc: [store(t, method) if method else TASK_STORE.format(task=t) for t in SHARDS[stage][int(wc.shard)]]


# What your tasks (tasks.user) need: predictions CSVs and a figure per task.
USER_OUTPUTS = [PREDICTION.format(task=t, method=m) for t in USER_TASKS for m in TASK_METHODS[t]] + [
    figure(t) for t in USER_TASKS
]
