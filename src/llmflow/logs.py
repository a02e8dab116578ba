"""Logging for workflow jobs: every job writes a log; a failure ends it with one error line."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def log_errors(log_path: str) -> Iterator[logging.Logger]:
    """Route the job's logging to ``log_path``; on an exception, write it as the log's last line.

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
