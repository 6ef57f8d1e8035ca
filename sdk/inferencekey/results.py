"""What the data plane returns: frozen dataclasses over the OpenAI-compatible answers.

Each keeps the decoded answer in ``raw`` (left out of the repr) for fields the SDK does not
model, such as ``usage``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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
