"""Log lines name what they are about: JSON objects with ids, or text lines with them appended."""

from __future__ import annotations

import json
import logging
import sys

import pytest

from ik_contracts.logs import JsonFormatter, TextFormatter, ids, log_format


def _record(message: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord(
        "inferencekey.agent", logging.WARNING, __file__, 1, message, (), None
    )
    record.__dict__.update(extra)
    return record


def test_a_json_line_carries_the_ids_of_what_it_is_about() -> None:
    line = JsonFormatter().format(
        _record("replica failed", **ids(workload_id="wl_1", replica_id="rep_1", worker_id=None))
    )

    entry = json.loads(line)
    assert entry["message"] == "replica failed"
    assert (entry["level"], entry["logger"]) == ("warning", "inferencekey.agent")
    assert (entry["workload_id"], entry["replica_id"]) == ("wl_1", "rep_1")
    assert "worker_id" not in entry
    assert "\n" not in line


def test_a_json_line_holds_its_traceback_in_one_field() -> None:
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), None)
        record.exc_info = sys.exc_info()
    entry = json.loads(JsonFormatter().format(record))
    assert "RuntimeError: boom" in entry["exception"]


def test_a_text_line_appends_the_ids() -> None:
    line = TextFormatter().format(_record("started", **ids(project="acme", workload="chat")))
    assert line.endswith("started [project=acme workload=chat]")


def test_the_format_comes_from_the_flag_then_the_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("INFERENCEKEY_LOG_FORMAT", "json")
    assert log_format(None) == "json"
    assert log_format("text") == "text"
    with pytest.raises(ValueError, match="one of text, json"):
        log_format("yaml")
