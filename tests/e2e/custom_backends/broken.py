"""A backend whose weights are missing: ``setup()`` raises, so it never becomes ready."""

from __future__ import annotations

from inferencekey.backend import BackendContext, CustomBackend, Job, Result


class NoWeights(CustomBackend):
    name = "no-weights"
    version = "1.0.0"
    task_type = "text2text"
    cpu_only = True

    def setup(self, ctx: BackendContext) -> None:
        raise ValueError("no weights here")

    def process(self, job: Job) -> Result:
        raise AssertionError("never ready, never called")
