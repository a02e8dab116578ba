"""Logging for workflow jobs: every job writes a log; a failure ends it with one error line."""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def deterministic_torch() -> None:
    """Bitwise-reproducible torch: on CPU only deterministic kernels (an op without one raises);
    on CUDA the deterministic ones where they exist (warning for the rest), cuBLAS included.

    Must run before the first CUDA call (cuBLAS reads its workspace setting once).
    """
    import torch

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=torch.cuda.is_available())


@contextmanager
def log_errors(log_path: str, threads: int = 1) -> Iterator[logging.Logger]:
    """Route the job's logging to ``log_path``; on an exception, write it as the log's last line.

    Jobs that compute with torch (imported before entering) get :func:`deterministic_torch` and
    ``threads`` intra-op threads (the rule's ``threads``): torch's default of one thread per core
    in each of ``-j`` parallel jobs oversubscribes the cores, which made small-tensor work up to
    ~100x slower on a 2-core machine.

    The full traceback goes to the log before that line, the one-line message to stderr, and
    the process exits non-zero, so ``--show-failed-logs`` shows the cause at the end.
    """
    Path(log_path).parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_path, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    logger = logging.getLogger("llmflow")
    if "torch" in sys.modules:  # a job that computes with torch imported it before entering
        deterministic_torch()
        sys.modules["torch"].set_num_threads(threads)
    # Where the job ran: on a cluster, the scheduler's job id and the GPUs it was given.
    logger.info("host %s, SLURM job %s, CUDA_VISIBLE_DEVICES=%s", socket.gethostname(),
                os.environ.get("SLURM_JOB_ID", "-"), os.environ.get("CUDA_VISIBLE_DEVICES", "-"))
    try:
        yield logger
    except Exception as err:  # noqa: BLE001 - every failure must reach the log as one line
        message = f"{type(err).__name__}: {err}".splitlines()[0]
        logger.error("job failed", exc_info=True)
        handler.flush()
        with open(log_path, "a") as fh:
            fh.write(f"ERROR {message}\n")
        print(f"ERROR {message}", file=sys.stderr)
        sys.exit(1)
    finally:
        root.removeHandler(handler)
        handler.close()
