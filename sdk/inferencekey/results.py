"""What the data plane returns: frozen dataclasses over the OpenAI-compatible answers and
over async jobs.

Each keeps the decoded answer in ``raw`` (left out of the repr) for fields the SDK does not
model, such as ``usage``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .enums import FINISHED_JOB_STATUSES


@dataclass(frozen=True)
class TextResult:
    """A chat completion: ``text`` is ``choices[0].message.content``, ``model`` the answer's.

    >>> out = ep.generate_text(prompt="Hola", temperature=0.2, max_tokens=300)  # doctest: +SKIP
    >>> out.text, out.finish_reason  # doctest: +SKIP
    ('¡Hola! ¿En qué puedo ayudarte?', 'stop')
    """

    text: str
    model: str
    finish_reason: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class TextChunk:
    """One streamed delta; ``finish_reason`` is set only on the last one.

    >>> for chunk in ep.generate_text_stream(prompt="Hola"):  # doctest: +SKIP
    ...     print(chunk.text, end="", flush=True)
    """

    text: str
    finish_reason: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class EmbedResult:
    """One vector per input, in input order.

    >>> ep.embed(input=["hola", "adiós"]).embeddings[0][:3]  # doctest: +SKIP
    [0.0123, -0.0456, 0.0789]
    """

    embeddings: list[list[float]]
    model: str
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class RerankItem:
    """A document's position in the request's ``documents`` and its relevance."""

    index: int
    relevance_score: float


@dataclass(frozen=True)
class RerankResult:
    """The documents' relevance, best first.

    >>> ep.rerank(query="refund policy", documents=docs, top_n=2).results  # doctest: +SKIP
    [RerankItem(index=2, relevance_score=0.91), RerankItem(index=0, relevance_score=0.12)]
    """

    results: list[RerankItem]
    model: str
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class JobData:
    """A finished job's outcome: the ``data`` object its webhook delivery carries.

    ``status`` is ``"ok"`` or ``"error"`` (then ``error`` says why). The result is ``payload``
    (JSON: chat, embeddings, rerank, forecast), ``output`` (plain text) or ``binary_b64`` with
    its ``content_type`` (audio, images).

    >>> job.data.payload["choices"][0]["message"]["content"]  # doctest: +SKIP
    '¡Hola!'
    """

    job_id: str
    status: str
    payload: Any = None
    output: str | None = None
    binary_b64: str | None = None
    content_type: str | None = None
    usage: dict[str, Any] | None = None
    units: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    error: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class Job:
    """An async job as the Manager reports it.

    ``status`` is a ``JobStatus`` value: ``queued``, ``running``, ``succeeded`` or ``failed``;
    ``data`` is set once the job is done. ``context`` is what the submitter sent, verbatim
    (None when none was sent). Times are RFC 3339 strings.

    >>> job = ep.wait_job(ep.submit_job("embeddings", body={"input": ["hola"]}))  # doctest: +SKIP
    >>> job.status, job.data.payload["data"][0]["embedding"][:2]  # doctest: +SKIP
    ('succeeded', [0.0123, -0.0456])
    """

    job_id: str
    kind: str
    status: str
    attempts: int
    created_at: str
    started_at: str | None = None
    finished_at: str | None = None
    context: Any = None
    data: JobData | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def done(self) -> bool:
        """True once the job succeeded or failed: it will not change any more."""
        return self.status in FINISHED_JOB_STATUSES
