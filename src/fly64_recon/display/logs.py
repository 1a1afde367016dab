"""Where log records go besides the console: the run's log file, worker records to the
``kedro run`` process, and the warnings a person cannot act on.

``conf/logging.yml`` sets the console (warnings and errors only) and the loggers'
levels; Kedro 1.7 accepts only ``logging`` and ``kedro.logging`` classes there, so the
handlers below are added in code, by the hooks (the run's log file) and the project's
runner (the workers' queue).
"""

from __future__ import annotations

import io
import logging
import logging.config
import sys
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, redirect_stderr
from datetime import datetime
from logging.handlers import QueueHandler
from pathlib import Path
from typing import Any

FILE_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
STDOUT_LOGGER = "fly64_recon.stdout"
STDERR_LOGGER = "fly64_recon.stderr"

# Warnings from other packages that a person running the study cannot act on:
# (message regex, category, module regex).
WARNING_FILTERS = (
    # Kedro 1.7's config loader calls OmegaConf's deprecated register_new_resolver.
    (r"register_new_resolver\(\) is deprecated", UserWarning, r"kedro\.config"),
    # Kedro 1.x warns when a node outside a namespace reads a namespaced dataset. The
    # study summary reads every job's metrics (dose_1e4.dense.test.metrics): a fan-in
    # across namespaces has no other name for them (kedro-org/kedro#5021, open).
    (r"One or more dataset names contain '\.' characters", UserWarning, r""),
    # pty-chi reads a loss that still requires grad; torch warns inside pty-chi.
    (r"Converting a tensor with requires_grad=True to a scalar", UserWarning, r""),
)


def install_warning_filters() -> None:
    """Silence :data:`WARNING_FILTERS` in this process (settings and each worker)."""
    for message, category, module in WARNING_FILTERS:
        warnings.filterwarnings(
            "ignore", message=message, category=category, module=module
        )


class RunLog:
    """The whole run's log, INFO and up from every logger, in ``folder/run-<time>.log``."""

    def __init__(self, folder: Path) -> None:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        self.path = folder / f"run-{stamp}.log"
        self._handler: logging.Handler | None = None

    def open(self) -> None:
        """Start writing: the root logger gets a file handler."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(self.path, encoding="utf-8")
        handler.setLevel(logging.INFO)
        handler.setFormatter(logging.Formatter(FILE_FORMAT))
        logging.getLogger().addHandler(handler)
        self._handler = handler

    def close(self) -> None:
        """Stop writing and close the file."""
        if self._handler is not None:
            logging.getLogger().removeHandler(self._handler)
            self._handler.close()
            self._handler = None


def forward_logs(queue: Any, config: Mapping[str, Any]) -> None:
    """In a worker: the loggers' levels of ``config``, every record put on ``queue``,
    and what the worker prints logged line by line (nothing reaches the terminal)."""
    levels = {
        "version": 1,
        "disable_existing_loggers": False,
        "loggers": {
            name: {"level": spec["level"]}
            for name, spec in config.get("loggers", {}).items()
            if "level" in spec
        },
        "root": {"level": config.get("root", {}).get("level", "WARNING")},
    }
    logging.config.dictConfig(levels)
    logging.getLogger().addHandler(QueueHandler(queue))
    logging.captureWarnings(True)
    sys.stdout = LineLog(logging.getLogger(STDOUT_LOGGER))
    sys.stderr = LineLog(logging.getLogger(STDERR_LOGGER))


class LineLog(io.TextIOBase):
    """A text stream that logs each line written to it, as a terminal would keep it.

    What follows the last carriage return of a line is the line (a progress bar's last
    state); a line left empty is dropped, so pty-chi's per-epoch progress bars, which
    erase themselves, leave nothing.
    """

    def __init__(self, logger: logging.Logger, level: int = logging.INFO) -> None:
        super().__init__()
        self._logger = logger
        self._level = level
        self._pending = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        *lines, pending = (self._pending + text).split("\n")
        self._pending = pending.rsplit("\r", 1)[-1]
        for line in lines:
            kept = line.rsplit("\r", 1)[-1].rstrip()
            if kept:
                self._logger.log(self._level, "%s", kept)
        return len(text)


@contextmanager
def stderr_logged() -> Iterator[None]:
    """While the block runs, what is written to ``sys.stderr`` goes to the log instead."""
    with redirect_stderr(LineLog(logging.getLogger(STDERR_LOGGER))):
        yield


class WorkerRecords(logging.Handler):
    """Hand a worker's record to the logger of the same name in this process, as the
    logging cookbook's multiprocessing recipe does (the console, the run's log file, the
    study's progress display).

    A warning that several workers give once each (each is a process of its own) is
    handled once per run.
    """

    def __init__(self) -> None:
        super().__init__()
        self._warned: set[tuple[str, str]] = set()

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.WARNING:
            key = (record.name, record.getMessage())
            if key in self._warned:
                return
            self._warned.add(key)
        logging.getLogger(record.name).handle(record)
