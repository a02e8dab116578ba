"""The paper's figures, the calibration plot and the NDP's training curve (matplotlib, deterministic)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from llmflow.binned import BinnedDensity  # noqa: E402
from llmflow.io import write_file  # noqa: E402
from llmflow.metrics import sample_quantiles  # noqa: E402
from llmflow.tasks import Task  # noqa: E402

# A colour per method, in the order of the task figures' panels.
COLORS = {"ndp": "tab:gray", "i-llmp": "tab:orange", "a-llmp": "tab:green", "llm-ndp": "tab:blue",
          "llm-ndp-cal": "tab:purple", "gp": "tab:brown"}
LEVELS = np.array([0.05, 0.25, 0.5, 0.75, 0.95])
# Fixed metadata keeps PNG/PDF bytes identical across runs.
PNG_META = {"Software": None}
PDF_META = {"Creator": None, "Producer": None, "CreationDate": None}


def save(fig: plt.Figure, png: str | Path) -> None:
    """Write ``png`` and the PDF next to it."""
    png = Path(png)
    write_file(png, lambda p: fig.savefig(p, format="png", dpi=120, metadata=PNG_META))
    write_file(png.with_suffix(".pdf"), lambda p: fig.savefig(p, format="pdf", metadata=PDF_META))
    plt.close(fig)


def _context(ax: plt.Axes, task: Task) -> None:
    ax.plot(task.x_context[:, 0], task.y_context, "k*", ms=9, zorder=5, label="context")


def _band(ax: plt.Axes, x: np.ndarray, quant: np.ndarray, color: str, label: str,
          x_context: np.ndarray | None = None) -> None:
    """Quantile bands (quant (m, 5) at LEVELS) over the targets x (m,). With ``x_context`` the
    band breaks wherever a context point lies between two neighbouring targets (a band drawn
    across the data would hide them), and a target alone between context points gets an
    interval bar."""
    order = np.argsort(x)
    xs, q = x[order], quant[order]
    cuts = [] if x_context is None else [
        k + 1 for k in range(len(xs) - 1) if np.any((x_context > xs[k]) & (x_context < xs[k + 1]))]
    for i, (seg_x, seg_q) in enumerate(zip(np.split(xs, cuts), np.split(q, cuts))):
        name = label if i == 0 else None
        if len(seg_x) == 1:
            ax.errorbar(seg_x, seg_q[:, 2], yerr=[seg_q[:, 2] - seg_q[:, 0], seg_q[:, 4] - seg_q[:, 2]],
                        fmt="o", ms=3, color=color, lw=1, label=name)
            continue
        ax.fill_between(seg_x, seg_q[:, 0], seg_q[:, 4], color=color, alpha=0.2, lw=0)
        ax.fill_between(seg_x, seg_q[:, 1], seg_q[:, 3], color=color, alpha=0.35, lw=0)
        ax.plot(seg_x, seg_q[:, 2], color=color, lw=1.5, label=name)


def _trajectories(ax: plt.Axes, x: np.ndarray, samples: np.ndarray, color: str, n: int = 12) -> None:
    order = np.argsort(x)
    for s in samples[:n]:
        ax.plot(x[order], s[order], color=color, lw=0.8, alpha=0.7)


def figure1(task: Task, samples: dict[str, np.ndarray], bins: BinnedDensity, x_prior: np.ndarray, prior_samples: np.ndarray, path: str | Path) -> None:
    """Quantile bands of I-LLMP, A-LLMP, LLM-NDP and the fitted GP; their samples; unconditional
    NDP samples. The bands of sample methods are their samples' quantiles."""
    x = task.x_target[:, 0]
    drawn = ("a-llmp", "llm-ndp", "gp")
    fig, axes = plt.subplots(2, 4, figsize=(17, 6.5), sharex=False)
    bands = {"i-llmp": bins.quantiles(LEVELS)[0]} | {m: sample_quantiles(samples[m], LEVELS) for m in drawn}
    for ax, (method, quant) in zip(axes[0], bands.items()):
        _band(ax, x, quant, COLORS[method], method)
        _context(ax, task)
        ax.set_title(f"{method}: quantiles 5/25/50/75/95")
    for ax, method in zip(axes[1][:3], drawn):
        _trajectories(ax, x, samples[method], COLORS[method])
        _context(ax, task)
        ax.set_title(f"{method}: samples")
    _trajectories(axes[1][3], x_prior[:, 0], prior_samples, COLORS["ndp"])
    axes[1][3].set_title("NDP: unconditional samples")
    ylim = axes[0][2].get_ylim()  # LLM-NDP's
    for ax in axes.flat[:7]:
        ax.set_ylim(ylim)
    fig.suptitle(f"{task.name}: “{task.text}”", fontsize=11)
    fig.tight_layout()
    save(fig, path)


def _constraint(ax: plt.Axes, task: Task) -> None:
    """Shade the band the text allows at each target (where it says anything)."""
    if task.constraint_lo is None:
        return
    x = task.x_target[:, 0]
    order = np.argsort(x)
    lo, hi = task.constraint_lo[order], task.constraint_hi[order]
    stated = np.isfinite(lo) | np.isfinite(hi)
    ylo, yhi = ax.get_ylim()
    ax.fill_between(x[order], np.where(np.isfinite(lo), lo, ylo), np.where(np.isfinite(hi), hi, yhi), where=stated,
                    color="tab:red", alpha=0.12, lw=0, label="text allows")
    ax.set_ylim(ylo, yhi)


def _robust_ylim(task: Task, samples: list[np.ndarray]) -> tuple[float, float]:
    """y-range holding the context and the central 96% of the given samples (outliers clipped)."""
    values = [task.y_context, *(np.quantile(s, [0.02, 0.98]) for s in samples)]
    if task.constraint_lo is not None:
        values += [task.constraint_lo[np.isfinite(task.constraint_lo)], task.constraint_hi[np.isfinite(task.constraint_hi)]]
    flat = np.concatenate([np.ravel(v) for v in values])
    lo, hi = flat.min(), flat.max()
    pad = 0.1 * (hi - lo) + 1e-9
    return lo - pad, hi + pad


def figure2(task: Task, samples: dict[str, np.ndarray], bins: BinnedDensity, path: str | Path) -> None:
    """Two-point text conditioning: NDP, A-LLMP, LLM-NDP trajectories; I-LLMP log-density.

    Titles carry each method's constraint-satisfaction rate when the text states one.
    """
    x = task.x_target[:, 0]
    fig, axes = plt.subplots(1, 4, figsize=(16, 3.8), sharey=True)
    ylim = _robust_ylim(task, [samples["ndp"], samples["llm-ndp"]])
    for ax, method in zip(axes[:3], ("ndp", "a-llmp", "llm-ndp")):
        ax.set_ylim(ylim)
        _trajectories(ax, x, samples[method], COLORS[method], n=20)
        _context(ax, task)
        _constraint(ax, task)
        rate = f", satisfies text: {task.satisfies(samples[method]).mean():.0%}" if task.constraint_lo is not None else ""
        ax.set_title(method + rate, fontsize=10)
    grid = np.linspace(*ylim, 200)
    at_grid = torch.as_tensor(np.repeat(grid[:, None], len(x), axis=1))
    dens = bins.log_density(at_grid, torch.zeros(len(grid), dtype=torch.long)).numpy()  # (grid, m)
    order = np.argsort(x)
    mesh = axes[3].pcolormesh(x[order], grid, np.maximum(dens[:, order], -10), shading="nearest", cmap="viridis")
    _context(axes[3], task)
    axes[3].set_title("I-LLMP log density", fontsize=10)
    axes[3].set_ylim(ylim)
    fig.colorbar(mesh, ax=axes[3])
    fig.suptitle(f"{task.name}: “{task.text}”", fontsize=11)
    fig.tight_layout()
    save(fig, path)


def calibration(tasks: pd.DataFrame, path: str | Path) -> None:
    """Empirical coverage of the central 50% and 90% intervals against nominal, per method: the
    mean over tasks of ``tasks`` (the per-task rows, ``results/metrics/tasks.csv``)."""
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot([0, 1], [0, 1], "k--", lw=1)
    for method, color in COLORS.items():
        rows = tasks[tasks["method"] == method]
        cov = [rows.loc[rows["metric"] == f"coverage{p}", "value"].mean() for p in (50, 90)]
        if not np.all(np.isnan(cov)):
            ax.plot([0.5, 0.9], cov, "o-", color=color, label=method)
    ax.set_xlabel("nominal coverage")
    ax.set_ylabel("empirical coverage (mean over tasks)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend()
    fig.tight_layout()
    save(fig, path)


def _band_ylim(task: Task, quant: dict[str, np.ndarray]) -> tuple[float, float]:
    """y-range holding the context, the known truth and every method's central 50% band (quant
    (m, 5) at LEVELS), capped at two data ranges beyond the data (context and known truth) and
    padded by a quarter: wild draws and coarse bins (A-LLMP's and I-LLMP's digit slips, 20x a
    GDP series) run off the panel instead of flattening the data and every other band."""
    data = np.concatenate([task.y_context, task.y_target[np.isfinite(task.y_target)]])
    bands = np.concatenate([data, *(np.ravel(q[:, 1:4]) for q in quant.values())])
    bands = bands[np.isfinite(bands)]
    if len(data):
        reach = 2.0 * (np.ptp(data) or max(np.abs(data).max(), 1.0))
        lo, hi = max(bands.min(), data.min() - reach), min(bands.max(), data.max() + reach)
    else:
        lo, hi = bands.min(), bands.max()
    pad = 0.25 * (hi - lo) + 1e-9
    return lo - pad, hi + pad


def task_figure(task: Task, samples: dict[str, np.ndarray], bins: BinnedDensity, path: str | Path) -> None:
    """One panel per method with quantile bands, context and the truth where it is known (targets
    with an empty y get bands only)."""
    x = task.x_target[:, 0]
    known = np.isfinite(task.y_target)
    fig, axes = plt.subplots(1, len(COLORS), figsize=(4 * len(COLORS), 3.8), sharey=True)
    quant = {"i-llmp": bins.quantiles(LEVELS)[0]} | {m: sample_quantiles(s, LEVELS) for m, s in samples.items()}
    for ax, method in zip(axes, COLORS):
        _context(ax, task)
        if method not in quant:  # A-LLMP runs on the tasks of allmp.tasks only
            why = "\n(allmp.tasks)" if method == "a-llmp" else ""
            ax.text(0.5, 0.5, "not sampled" + why, transform=ax.transAxes, ha="center", va="center")
            ax.set_title(method)
            continue
        _band(ax, x, quant[method], COLORS[method], method, task.x_context[:, 0])
        if known.any():
            ax.plot(x[known], task.y_target[known], "r.", ms=5, label="truth")
        ax.set_title(method)
    axes[0].set_ylim(_band_ylim(task, quant))
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{task.name}: “{task.text}”", fontsize=11)
    fig.tight_layout()
    save(fig, path)


def training_curve(curve: pd.DataFrame, path: str | Path) -> None:
    """PNG of the NDP's training and validation loss (log scale) and the learning rate against
    step, written atomically; ``curve`` has the columns of :class:`llmflow.train.TrainResult`'s."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(curve["step"], curve["loss"], lw=1.2, label="train")
    val = curve.dropna(subset=["val_loss"])
    if len(val):
        ax.plot(val["step"], val["val_loss"], "o-", ms=3, lw=1.2, label="validation (EMA)")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (normalised y)")
    lr_ax = ax.twinx()
    lr_ax.plot(curve["step"], curve["lr"], color="tab:gray", lw=0.8, ls="--")
    lr_ax.set_ylabel("learning rate", color="tab:gray")
    ax.set_title("NDP training curve")
    fig.tight_layout()
    write_file(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


# The GP-oracle rows drawn, bottom to top of each panel: exact densities dark, sample rows light.
ORACLE_ROWS = {"ndp_exact": "tab:blue", "bayes_mixture": "tab:green", "ndp": "lightsteelblue",
               "bayes_samples_gaussfit": "lightgreen", "gp_samples_gaussfit": "lightgray"}


def gp_oracle(table: pd.DataFrame, path: str | Path) -> None:
    """PNG of the GP-oracle benchmark (the table of :func:`llmflow.oracle.run_gp_oracle`): per
    kernel, each row's paired gap to ``gp_optimum`` in nats per target ± its standard error, on
    the kernel's own scale. Written atomically, the same bytes for the same table."""
    kernels = list(dict.fromkeys(table["kernel"]))
    fig, axes = plt.subplots(1, len(kernels), figsize=(3.2 * len(kernels), 2.8), squeeze=False, sharey=True)
    position = {m: k for k, m in enumerate(ORACLE_ROWS)}  # a row sits at the same height in every panel
    for ax, kernel in zip(axes[0], kernels):
        rows = table[table["kernel"] == kernel].set_index("method")
        shown = [m for m in ORACLE_ROWS if m in rows.index]
        ax.barh([position[m] for m in shown], rows.loc[shown, "gap"], xerr=rows.loc[shown, "gap_stderr"].fillna(0.0),
                color=[ORACLE_ROWS[m] for m in shown], edgecolor="black", lw=0.5, capsize=2)
        ax.axvline(0.0, color="black", lw=0.8)
        ax.set_title(f"{kernel} ({int(rows['n_tasks'].iloc[0])} tasks)", fontsize=9)
        ax.set_xlabel("gap to gp_optimum (nats / target)", fontsize=8)
        ax.tick_params(axis="x", labelsize=8)
    axes[0][0].set_yticks(range(len(ORACLE_ROWS)), list(ORACLE_ROWS), fontsize=8)
    fig.tight_layout()
    write_file(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120, metadata=PNG_META))
    plt.close(fig)
