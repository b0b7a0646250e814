"""Logging setup: the server log, the access log and the model (worker output) log."""
from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Optional

SERVER_LOGGER = "modelserve"
ACCESS_LOGGER = "modelserve.access"
MODEL_LOGGER = "modelserve.model"
METRICS_LOGGER = "modelserve.metrics"

_FILES = {SERVER_LOGGER: "modelserve_log.log", ACCESS_LOGGER: "access_log.log", MODEL_LOGGER: "model_log.log",
          METRICS_LOGGER: "model_metrics.log"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        return json.dumps(out)


def setup_logging(log_dir: str, console: bool, level: str = "INFO", fmt: str = "text",
                  access_log: bool = True) -> None:
    """Route each logger to its own file under ``log_dir`` and, with ``console``, to stdout."""
    os.makedirs(log_dir, exist_ok=True)
    formatter: logging.Formatter
    if fmt == "json":
        formatter = JsonFormatter()
    else:
        formatter = logging.Formatter("%(asctime)s [%(levelname)s] %(name)s - %(message)s")
    plain = logging.Formatter("%(asctime)s %(message)s")
    console_handler: Optional[logging.Handler] = None
    if console:
        console_handler = logging.StreamHandler(sys.stdout)
        console_handler.setFormatter(formatter)
    for name, filename in _FILES.items():
        logger = logging.getLogger(name)
        for h in list(logger.handlers):
            logger.removeHandler(h)
            h.close()
        logger.propagate = False
        logger.setLevel(level.upper() if name == SERVER_LOGGER else logging.INFO)
        if name == ACCESS_LOGGER:
            global _access
            if _access is not None:
                _access.close()
            _access = AccessLog(os.path.join(log_dir, filename), console) if access_log else None
            continue
        fh = logging.FileHandler(os.path.join(log_dir, filename), encoding="utf-8")
        fh.setFormatter(formatter if name not in (ACCESS_LOGGER, METRICS_LOGGER) or fmt == "json" else plain)
        logger.addHandler(fh)
        if console_handler is not None and name != METRICS_LOGGER:
            logger.addHandler(console_handler)


def get_logger(name: str = SERVER_LOGGER) -> logging.Logger:
    return logging.getLogger(name)


class AccessLog:
    """The access log, kept off the logging module: a line is one f-string into a buffer.

    Lines are written when ``flush`` runs (the server calls it a few times a second and at stop),
    so a request costs about a microsecond of logging instead of a LogRecord and a syscall.
    """

    def __init__(self, path: str, console: bool = False) -> None:
        self._file = open(path, "a", encoding="utf-8", buffering=1 << 16)
        self._console = console
        self._pending: list[str] = []
        self._stamp_second = -1
        self._stamp = ""

    def line(self, remote: str, request_line: str, status: int, millis: float) -> None:
        now = time.time()
        second = int(now)
        if second != self._stamp_second:
            self._stamp_second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(now))
        self._pending.append(f'{self._stamp} {remote} "{request_line}" {status} {millis:.3f}\n')
        if len(self._pending) > 4096:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        text = "".join(self._pending)
        self._pending.clear()
        self._file.write(text)
        self._file.flush()
        if self._console:
            sys.stdout.write(text)
            sys.stdout.flush()

    def close(self) -> None:
        self.flush()
        self._file.close()


_access: Optional[AccessLog] = None


def access_log() -> Optional[AccessLog]:
    """The server's access log, or None when it is turned off."""
    return _access
