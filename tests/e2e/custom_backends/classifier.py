"""A keyword classifier, version 1: a text naming a complaint word is a ``complaint``, anything
else ``other``; the score is the share of its words that are complaint words."""

from __future__ import annotations

import re
from typing import Any

from inferencekey.backend import BackendContext, CustomBackend, InvalidInput, Job, Result

COMPLAINT_WORDS = frozenset({"broken", "refund", "late", "angry"})


def words_of(job: Job) -> list[str]:
    """The words of the caller's ``input`` (the classification job's body, passed through)."""
    body: Any = job.input.get("passthrough_body")
    text = body.get("input") if isinstance(body, dict) else None
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput("the body needs an input text")
    return re.findall(r"[a-z']+", text.lower())


class KeywordClassifier(CustomBackend):
    name = "keyword-classifier"
    version = "1.0.0"
    task_type = "classification"
    cpu_only = True

    def setup(self, ctx: BackendContext) -> None:
        self.complaint_words = COMPLAINT_WORDS

    def process(self, job: Job) -> Result:
        words = words_of(job)
        hits = sum(word in self.complaint_words for word in words)
        label = "complaint" if hits else "other"
        return Result({"label": label, "score": round(hits / len(words), 4), "version": "1.0.0"})
