"""Token usage: the gateway records what the engines report, per workload, key and day, and the
API and `inferencekey usage` show it (real llama.cpp)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from ik_command import main
from tests.e2e.serving import CHAT, Serve, chat_spec, embed_spec, endpoint
from tests.support import (
    RunningManager,
    TestProject,
    bearer,
    create_live_key,
    wait_until,
)


def usage(api: httpx.Client, project: TestProject, **params: str) -> dict[str, Any]:
    response = api.get(f"/api/projects/{project.slug}/usage", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def events(stream: httpx.Response) -> list[dict[str, Any]]:
    lines = [line for line in stream.iter_lines() if line.startswith("data: ")]
    return [json.loads(line[6:]) for line in lines if line != "data: [DONE]"]


def rows_by(report: dict[str, Any], key: str) -> dict[str, dict[str, Any]]:
    return {row[key]: row for row in report["rows"]}


def test_usage_is_what_the_engine_reported_per_workload_key_and_day(
    serve: Serve,
    gguf_model: Path,
    manager: RunningManager,
    project: TestProject,
    admin: httpx.Client,
    api: httpx.Client,
    live_key: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    serve(chat_spec(gguf_model), embed_spec(gguf_model))
    # Keys of the test's own: the serve fixture's warm-up requests are counted under its key.
    chat_key, emb_key = create_live_key(admin, project.slug), create_live_key(admin, project.slug)
    seen = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0}

    def add(reported: dict[str, int]) -> None:
        for name in seen:
            seen[name] += reported.get(name, 0)

    with endpoint(manager, project, "chat", chat_key) as chat:
        for _ in range(2):
            answer = chat.post("/v1/chat/completions", json=CHAT)
            assert answer.status_code == 200, answer.text
            add(answer.json()["usage"])
        streamed = {**CHAT, "stream": True}
        with chat.stream("POST", "/v1/chat/completions", json=streamed) as stream:
            unasked = events(stream)
        asked_for = {**streamed, "stream_options": {"include_usage": True}}
        with chat.stream("POST", "/v1/chat/completions", json=asked_for) as stream:
            asked = events(stream)
        # The gateway asked llama.cpp for the first stream's usage too, and kept the usage chunk
        # from the client that did not ask: it gets what llama.cpp sends it unasked.
        assert all("usage" not in chunk and chunk["choices"] for chunk in unasked)
        assert unasked[-1]["choices"][0]["finish_reason"] == "length"
        # The client that asked gets it as the engine sent it, and both are counted.
        assert asked[-1]["choices"] == [] and asked[-1]["usage"]["completion_tokens"] == 8
        add(asked[-1]["usage"])
        add(asked[-1]["usage"])  # the same prompt and max_tokens: the same counts
    with endpoint(manager, project, "emb", emb_key) as emb:
        answer = emb.post("/v1/embeddings", json={"input": ["one", "two"]})
        assert answer.status_code == 200, answer.text
        embedded = answer.json()["usage"]
        assert embedded["prompt_tokens"] > 0

    chat_display, emb_display = (f"ik_live_{key.split('_')[2]}…" for key in (chat_key, emb_key))

    def recorded() -> dict[str, dict[str, Any]] | None:
        by_key = rows_by(usage(api, project, group_by="key"), "key")
        counted = [by_key.get(k, {}).get("requests") for k in (chat_display, emb_display)]
        return by_key if counted == [4, 1] else None

    by_key = wait_until(recorded, 15, "the usage of 5 requests was never recorded")
    assert {name: by_key[chat_display][name] for name in seen} == seen
    assert seen["completion_tokens"] > 0
    assert by_key[emb_display]["prompt_tokens"] == embedded["prompt_tokens"]
    assert by_key[emb_display]["completion_tokens"] == 0
    assert "workload" not in by_key[emb_display] and "day" not in by_key[emb_display]

    report = usage(api, project)
    assert report["group_by"] == "workload"
    workloads = rows_by(report, "workload")
    assert workloads["emb"]["requests"] == 1
    assert workloads["emb"]["prompt_tokens"] == embedded["prompt_tokens"]
    assert workloads["chat"]["requests"] >= 4  # with the warm-up requests
    assert report["total"]["total_tokens"] == sum(r["total_tokens"] for r in report["rows"])

    today = datetime.now(UTC).date().isoformat()
    by_day = usage(api, project, group_by="day")
    assert [row["day"] for row in by_day["rows"]] == [today]
    assert by_day["total"] == report["total"]

    earlier = datetime.now(UTC).date() - timedelta(days=2)
    before_today = {"from": earlier.isoformat(), "to": (earlier + timedelta(days=2)).isoformat()}
    empty = usage(api, project, **before_today)
    assert empty["rows"] == [] and empty["total"]["requests"] == 0

    cli = ["--base-url", manager.url, "--admin-token", manager.admin_token or ""]
    assert main(["usage", project.slug, *cli]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith(f"Usage of {project.slug} from ")
    header = "WORKLOAD  REQUESTS  PROMPT TOKENS  COMPLETION TOKENS  TOTAL TOKENS"
    assert " ".join(table[1].split("  ")).split() == header.split()
    assert any(line.split()[:2] == ["emb", "1"] for line in table)
    assert table[-1].split()[0] == "TOTAL"
    assert main(["usage", project.slug, "--group-by", "day", "--json", *cli]) == 0
    assert json.loads(capsys.readouterr().out)["total"] == report["total"]


def test_usage_routes_refuse_bad_ranges_and_groupings_and_other_projects(
    manager: RunningManager, project: TestProject, api: httpx.Client, admin: httpx.Client
) -> None:
    path = f"/api/projects/{project.slug}/usage"
    for params, words in (
        ({"group_by": "model"}, "group_by must be one of workload, key, day"),
        ({"from": "yesterday"}, "from must be an ISO 8601"),
        ({"to": "2026-13-01"}, "to must be an ISO 8601"),
        ({"from": "2026-11-02", "to": "2026-11-01"}, "must be before to"),
    ):
        answer = api.get(path, params=params)
        assert answer.status_code == 400, answer.text
        assert answer.json()["code"] == "validation_error"
        assert words in answer.json()["message"]
    assert api.get("/api/projects/someone-else/usage").status_code == 403
    with httpx.Client(
        base_url=manager.url, headers=bearer(create_live_key(admin, project.slug))
    ) as k:
        assert k.get(path).status_code == 403  # a data-plane key is the wrong plane
    assert admin.get(path).status_code == 403  # the admin reads it under /api/admin
    answer = admin.get(f"/api/admin/projects/{project.slug}/usage", params={"group_by": "key"})
    assert answer.status_code == 200, answer.text
    assert answer.json()["project"] == project.slug
    missing = admin.get("/api/admin/projects/no-such-project/usage")
    assert missing.status_code == 404 and missing.json()["code"] == "project_not_found"
