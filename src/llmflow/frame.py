"""A task in the NDP's frame, and the sanity bound of draws mapped back from it.

The NDP was trained on the prior's domain (x in the prior's box, y of about unit scale), so
every non-GP task is mapped into that frame by an affine :class:`TaskFrame`: x's span onto the
prior's ``x_range``, y centred on the context mean and divided by
``max(std(context y), y_scale_min)``. Held-out GP tasks already live in the prior's frame and
are left as they are. The fitted-GP baseline fits in the same frame (:mod:`llmflow.gpfit`).

The NDP-based methods' draws (NDP, LLM-NDP, LLM-NDP-cal) are checked in data units before they
reach a sample store (:func:`check_samples`, called by :func:`llmflow.predict.sample_task`): a
non-finite value, or one ``SANE_SCALES`` data scales beyond the context's range, stops the job.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from llmflow.tasks import Task


@dataclass(frozen=True)
class TaskFrame:
    """``x_model = (x − x_shift) / x_scale`` per dimension, ``y_model = (y − y_shift) / y_scale``."""

    x_shift: np.ndarray
    x_scale: np.ndarray
    y_shift: float
    y_scale: float

    @classmethod
    def identity(cls, x_dim: int) -> TaskFrame:
        return cls(np.zeros(x_dim), np.ones(x_dim), 0.0, 1.0)

    @classmethod
    def fit(cls, task: Task, x_range: tuple[float, float], y_scale_min: float) -> TaskFrame:
        if task.family == "gp":
            return cls.identity(task.x_context.shape[1])
        x_all = np.concatenate([task.x_context, task.x_target])
        lo, hi = x_all.min(axis=0), x_all.max(axis=0)
        span = np.where(hi > lo, hi - lo, 1.0)
        x_scale = span / (x_range[1] - x_range[0])
        x_shift = lo - x_range[0] * x_scale
        y_scale = max(float(np.std(task.y_context)), y_scale_min)
        return cls(x_shift, x_scale, float(np.mean(task.y_context)), y_scale)

    def x(self, x: np.ndarray) -> np.ndarray:
        return (x - self.x_shift) / self.x_scale

    def y(self, y: np.ndarray) -> np.ndarray:
        return (y - self.y_shift) / self.y_scale

    def y_back(self, y: np.ndarray) -> np.ndarray:
        return y * self.y_scale + self.y_shift


# Draws this many data scales beyond the context's y range are a failed integration, not a
# prediction: the NDP's draws stay within a few prior standard deviations, and the LLM's bins
# within about 100 times the context's largest |y| (expert.max_int_digits: one digit more).
SANE_SCALES = 1000.0


def check_samples(task: Task, samples: np.ndarray, method: str, frame: TaskFrame) -> None:
    """Raise ValueError, one line naming the task and method, unless every draw (S, m) is finite
    and inside ``[lo − K·w, hi + K·w]``: ``lo, hi`` the context's y range, ``K = SANE_SCALES``
    and ``w = max(hi − lo, max |y_context|, frame.y_scale)`` the data's own scale (data units).
    """
    where = f"task {task.name!r}, method {method!r}"
    bad = ~np.isfinite(samples)
    if bad.any():
        raise ValueError(f"{where}: {int(bad.sum())} of {samples.size} draws are not finite; nothing is written")
    y = np.asarray(task.y_context, dtype=float)
    lo, hi = (float(y.min()), float(y.max())) if len(y) else (0.0, 0.0)
    w = max(hi - lo, float(np.abs(y).max()) if len(y) else 0.0, frame.y_scale)
    low, high = lo - SANE_SCALES * w, hi + SANE_SCALES * w
    worst = float(samples.flat[np.argmax(np.maximum(low - samples, samples - high))])
    if not low <= worst <= high:
        raise ValueError(f"{where}: a draw of {worst:.3g} lies outside the sane range [{low:.3g}, {high:.3g}] "
                         f"(the context's y range widened by {SANE_SCALES:g} times the data's scale {w:.3g}); "
                         "the sampler failed, nothing is written")
