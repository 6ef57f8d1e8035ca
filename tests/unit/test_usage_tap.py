"""Reading token usage out of relayed answers (manager/gateway/usage.py), on the engines' bytes."""

from __future__ import annotations

import json

import pytest

from manager.gateway.usage import TokenCounts, UsageTap, ask_for_stream_usage, read_usage

USAGE = {"completion_tokens": 5, "prompt_tokens": 11, "total_tokens": 16}
COUNTS = TokenCounts(prompt_tokens=11, completion_tokens=5, total_tokens=16)


def sse(*chunks: dict[str, object], crlf: bool = False) -> bytes:
    end = b"\r\n\r\n" if crlf else b"\n\n"
    events = [b"data: " + json.dumps(c, separators=(",", ":")).encode() + end for c in chunks]
    return b"".join(events) + b"data: [DONE]" + end


def token(word: str) -> dict[str, object]:
    return {"id": "c1", "choices": [{"index": 0, "delta": {"content": word}}]}


USAGE_CHUNK = {"id": "c1", "choices": [], "usage": USAGE}


def test_a_json_answer_gives_its_last_usage_object() -> None:
    # llama.cpp's keys come sorted; the message may itself talk about "usage".
    body = json.dumps(
        {
            "choices": [{"message": {"content": 'a "usage": {"total_tokens": 99} trap'}}],
            "timings": {"prompt_n": 11},
            "usage": USAGE,
        }
    ).encode()
    assert read_usage(body) == COUNTS


def test_null_usage_and_answers_without_usage_give_none() -> None:
    assert read_usage(b'{"choices": [], "usage": null}') is None
    assert read_usage(b'{"data": [{"embedding": [0.1]}]}') is None
    assert read_usage(b'{"usage": {"unrelated": 1}}') is None
    assert read_usage(b'{"usage": {"prompt_tokens": 3, "total_tokens": 3}}') == TokenCounts(3, 0, 3)
    assert read_usage(b'{"usage": {"input_tokens": 2, "output_tokens": 4}}') == TokenCounts(2, 4, 6)


def test_a_stream_that_always_ends_with_usage_passes_unchanged() -> None:
    stream = sse(token("Hi"), token("!"), USAGE_CHUNK)
    tap = UsageTap()
    tap.answered_with(b"text/event-stream", None)
    assert b"".join(tap.feed(stream[i : i + 7]) for i in range(0, len(stream), 7)) == stream
    assert tap.rest() == b""
    assert tap.usage() == COUNTS


@pytest.mark.parametrize("crlf", [False, True])
def test_the_usage_chunk_asked_for_on_the_clients_behalf_is_kept_back_wherever_chunks_split(
    crlf: bool,
) -> None:
    stream = sse(token("Hi"), token("!"), USAGE_CHUNK, crlf=crlf)
    unchanged = sse(token("Hi"), token("!"), crlf=crlf)
    for cut in range(1, len(stream)):
        for second_cut in (cut + 1, cut + 9, len(stream)):
            tap = UsageTap(hide_usage_chunk=True)
            tap.answered_with(b"text/event-stream; charset=utf-8", None)
            pieces = [stream[:cut], stream[cut:second_cut], stream[second_cut:]]
            sent = b"".join(tap.feed(piece) for piece in pieces) + tap.rest()
            assert sent == unchanged, (cut, second_cut)
            assert tap.usage() == COUNTS


def test_whole_events_are_sent_at_once_while_hiding() -> None:
    tap = UsageTap(hide_usage_chunk=True)
    tap.answered_with(b"text/event-stream", None)
    first = sse(token("Hi"))[: -len(b"data: [DONE]\n\n")]
    assert tap.feed(first + b"data: {") == first  # a token is never held back
    assert tap.rest() == b"data: {"


def test_answers_other_than_event_streams_are_never_filtered() -> None:
    tap = UsageTap(hide_usage_chunk=True)
    tap.answered_with(b"application/json", b"120")
    body = json.dumps({"choices": [], "usage": USAGE}).encode()
    assert tap.feed(body) == body and tap.usage() == COUNTS


def test_only_a_stream_the_client_left_to_the_engine_is_asked_for_usage() -> None:
    asked = ask_for_stream_usage(b'{"stream": true, "messages": [{"content": "\\u00e9t\\u00e9"}]}')
    assert asked is not None
    assert json.loads(asked) == {
        "stream": True,
        "messages": [{"content": "été"}],
        "stream_options": {"include_usage": True},
    }
    kept = {"stream": True, "stream_options": {"continuous_usage_stats": True}}
    assert json.loads(ask_for_stream_usage(json.dumps(kept).encode()) or b"") == {
        "stream": True,
        "stream_options": {"continuous_usage_stats": True, "include_usage": True},
    }
    for left_alone in (
        b'{"messages": []}',
        b'{"stream": false}',
        b'{"stream": true, "stream_options": {"include_usage": false}}',
        b'{"stream": true, "stream_options": "odd"}',
        b'{"stream": true',  # malformed: the engine answers it
        b'["stream"]',
    ):
        assert ask_for_stream_usage(left_alone) is None
