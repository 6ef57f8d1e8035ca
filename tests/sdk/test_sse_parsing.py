"""Reading the readiness stream's SSE text, and the default progress display."""

from __future__ import annotations

import io

import inferencekey
import pytest
from inferencekey import ProgressRenderer, ReadinessEvent
from inferencekey._sse import SseDecoder


class Terminal(io.StringIO):
    """Captured output that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def decode(*chunks: str) -> list[str]:
    decoder = SseDecoder()
    events = [data for chunk in chunks for data in decoder.feed(chunk)]
    return events + decoder.flush()


def test_frames_split_on_lf_and_crlf_alike() -> None:
    assert decode('data: {"a": 1}\r\n\r\ndata: {"b": 2}\n\n') == ['{"a": 1}', '{"b": 2}']


def test_comments_blank_lines_and_other_fields_are_ignored() -> None:
    stream = ": keep-alive\n\nevent: readiness\nid: 7\nretry: 1000\ndata: x\n\n\n: ping\r\n\r\n"
    assert decode(stream) == ["x"]


def test_one_leading_space_is_stripped_and_no_more() -> None:
    assert decode("data:tight\n\ndata:  two spaces\n\n") == ["tight", " two spaces"]


def test_multi_line_data_is_joined_with_newlines() -> None:
    assert decode('data: {\r\ndata:   "phase": 1\r\ndata: }\r\n\r\n') == ['{\n  "phase": 1\n}']


def test_frames_cut_anywhere_across_chunks_decode_the_same() -> None:
    text = 'data: {"phase": "ready"}\r\n\r\n'
    assert decode(*text) == ['{"phase": "ready"}']
    assert decode(text[:9], text[9:26], text[26:]) == ['{"phase": "ready"}']


def test_an_unterminated_last_line_is_delivered_at_the_end() -> None:
    decoder = SseDecoder()
    assert decoder.feed('data: {"a": 1}\n\ndata: {"b": 2}') == ['{"a": 1}']
    assert decoder.flush() == ['{"b": 2}']
    assert decoder.flush() == []


def test_an_unterminated_comment_delivers_nothing() -> None:
    assert decode(": keep-al") == []


def event(phase: str, message: str, elapsed_ms: int = 0, step: str | None = None) -> ReadinessEvent:
    return ReadinessEvent(phase=phase, message=message, elapsed_ms=elapsed_ms, step=step)


def test_off_a_terminal_each_event_is_one_line_with_seconds_phase_step_and_message() -> None:
    log = io.StringIO()
    render = ProgressRenderer(log)

    render(event("scheduling", "waiting for a worker", 0))
    render(event("bootstrapping", "loading weights", 12500, step="model_load"))
    render.tick()
    render(event("ready", "serving", 61000))
    render.close()

    assert log.getvalue().splitlines() == [
        "[0.0s] scheduling: waiting for a worker",
        "[12.5s] bootstrapping [model_load]: loading weights",
        "[61.0s] ready: serving",
    ]


def test_on_a_terminal_one_line_is_redrawn_with_phase_dots() -> None:
    screen = Terminal()
    render = ProgressRenderer(screen)

    render(event("scheduling", "waiting for a worker", 0))
    render(event("bootstrapping", "loading weights", 3000, step="model_load"))
    drawn = screen.getvalue()
    assert "\n" not in drawn
    assert drawn.count("\r") == 2
    last = drawn.rsplit("\r", 1)[1]
    assert "● ● ● ○  3s  bootstrapping [model_load]: loading weights" in last

    render.tick()
    assert screen.getvalue().count("\r") == 3

    render(event("ready", "serving", 4000))
    render.close()
    output = screen.getvalue()
    assert "● ● ● ●" in output.rsplit("\r", 1)[1]
    assert output.endswith("\n")


def test_on_a_terminal_an_error_marks_the_phase_that_failed() -> None:
    screen = Terminal()
    render = ProgressRenderer(screen)

    render(event("scheduling", "waiting for a worker"))
    render(event("provisioning", "pulling the image"))
    render(event("error", "image not found"))
    render.close()

    last = screen.getvalue().rsplit("\r", 1)[1]
    assert "● ● ✗ ○" in last
    assert "error: image not found" in last


def test_on_a_terminal_a_long_message_is_cut_to_the_width(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "40")
    screen = Terminal()
    render = ProgressRenderer(screen)

    render(event("scheduling", "cannot be placed yet: " + "no worker " * 20))

    last = screen.getvalue().rsplit("\r", 1)[1].removeprefix("\x1b[2K")
    assert len(last) == 39
    assert last.endswith("…")


def test_a_terminal_renderer_that_drew_nothing_prints_nothing() -> None:
    screen = Terminal()
    render = ProgressRenderer(screen)
    render.tick()
    render.close()
    assert screen.getvalue() == ""


def test_renderer_and_event_are_exported_from_the_package() -> None:
    assert "ProgressRenderer" in inferencekey.__all__
    assert "ReadinessEvent" in inferencekey.__all__
