"""What the serving tests share: a chat request, the llama.cpp specs, and a client of a workload's
endpoint that waits until the gateway routes to it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
from inferencekey import Backend, WorkloadSpec

from tests.support import RunningAgent, RunningManager, TestProject, bearer, wait_until

CHAT = {"messages": [{"role": "user", "content": "Say hi"}], "max_tokens": 8}


def chat_spec(
    gguf: Path, *, slug: str = "chat", replicas: int = 1, context: int = 512
) -> WorkloadSpec:
    return WorkloadSpec(
        name=slug,
        slug=slug,
        model="gemma-3-270m",
        backend=Backend.LLAMACPP,
        command=f"llama-server -m {gguf} -c {context}",
        execution_policy_config={"replicas": replicas},
    )


def embed_spec(gguf: Path) -> WorkloadSpec:
    return WorkloadSpec(
        name="emb",
        slug="emb",
        model="gemma-3-270m",
        backend=Backend.LLAMACPP,
        task_type="embedding",
        command=f"llama-server -m {gguf} -c 512 --embedding --pooling mean",
    )


def endpoint(
    manager: RunningManager, project: TestProject, workload: str, key: str
) -> httpx.Client:
    return httpx.Client(
        base_url=f"{manager.url}/endpoint/{project.slug}/{workload}",
        headers=bearer(key),
        timeout=30,
    )


def wait_routable(client: httpx.Client) -> None:
    """Ready in the API and in the gateway's route table (reloaded within a second)."""
    wait_until(
        lambda: client.post("/v1/chat/completions", json=CHAT).status_code == 200,
        30,
        "the gateway never routed to the workload",
        interval=0.3,
    )


Serve = Callable[..., RunningAgent]
