"""Logging for the Manager and the agent: plain lines by default, one JSON object per line with
``--log-format json`` (INFERENCEKEY_LOG_FORMAT=json).

A line about a workload, replica, worker or request carries its ids as fields, given with
``extra=ids(...)``, so a log pipeline can select every line of one workload.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any

LOG_FORMATS = ("text", "json")
ID_FIELDS = ("project", "workload", "workload_id", "replica_id", "worker_id", "method", "path")


def ids(**fields: object) -> dict[str, object]:
    """The ``extra`` of a log call: the ids of what the line is about (None values left out)."""
    return {name: value for name, value in fields.items() if value is not None}


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "message", <ids>..., "exception"?}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in ID_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class TextFormatter(logging.Formatter):
    """The plain line, with the ids appended as ``key=value``."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = " ".join(
            f"{name}={record.__dict__[name]}"
            for name in ID_FIELDS
            if record.__dict__.get(name) is not None
        )
        if not fields:
            return line
        head, newline, rest = line.partition("\n")  # keep a traceback below the line
        return f"{head} [{fields}]{newline}{rest}"


def log_format(value: str | None) -> str:
    """The chosen format: the flag's value, else INFERENCEKEY_LOG_FORMAT, else text."""
    chosen = (value or os.environ.get("INFERENCEKEY_LOG_FORMAT") or "text").strip().lower()
    if chosen not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {chosen!r}")
    return chosen


def configure_logging(format_name: str, level: int = logging.INFO) -> None:
    """Our loggers and uvicorn's, on stderr, in one format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if format_name == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        uvicorn_logger = logging.getLogger(name)
        uvicorn_logger.handlers[:] = []
        uvicorn_logger.propagate = True


def add_log_format_option(parser: argparse.ArgumentParser) -> None:
    """``--log-format`` as the Manager and the agent both take it."""
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        help="text lines, or one JSON object per line with the ids of what each line is about "
        "(default text) [INFERENCEKEY_LOG_FORMAT]",
    )
