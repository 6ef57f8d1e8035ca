"""A keyword classifier, version 2 (packaged as ``classifier.py``, so its entrypoint is the same
as version 1's): it also knows praise, which version 1 calls ``other``."""

from __future__ import annotations

import re
from typing import Any

from inferencekey.backend import BackendContext, CustomBackend, InvalidInput, Job, Result

COMPLAINT_WORDS = frozenset({"broken", "refund", "late", "angry"})
PRAISE_WORDS = frozenset({"great", "thanks", "love", "perfect"})


def words_of(job: Job) -> list[str]:
    body: Any = job.input.get("passthrough_body")
    text = body.get("input") if isinstance(body, dict) else None
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput("the body needs an input text")
    return re.findall(r"[a-z']+", text.lower())


class KeywordClassifier(CustomBackend):
    name = "keyword-classifier"
    version = "2.0.0"
    task_type = "classification"
    cpu_only = True

    def setup(self, ctx: BackendContext) -> None:
        self.labels = {"complaint": COMPLAINT_WORDS, "praise": PRAISE_WORDS}

    def process(self, job: Job) -> Result:
        words = words_of(job)
        counts = {
            label: sum(word in vocabulary for word in words)
            for label, vocabulary in self.labels.items()
        }
        label, hits = max(counts.items(), key=lambda item: item[1])
        if not hits:
            label = "other"
        return Result({"label": label, "score": round(hits / len(words), 4), "version": "2.0.0"})
