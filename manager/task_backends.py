"""Which built-in backends may serve which task type: the one allow-list table.

A tenant's custom backends are allowed for every task type; the one a custom backend declares
(its newest version's manifest) must match the workload's (`manager.validation`).
"""

from __future__ import annotations

from inferencekey.enums import Backend, TaskType

B = Backend
ALLOWED_BACKENDS: dict[str, tuple[str, ...]] = {
    TaskType.TEXT2TEXT.value: (B.VLLM, B.VLLM_OMNI, B.SGLANG, B.OLLAMA, B.LLAMACPP),
    TaskType.EMBEDDING.value: (B.VLLM, B.SGLANG, B.OLLAMA, B.LLAMACPP),
    TaskType.TEXT2IMAGE.value: (B.VLLM_OMNI, B.STABLE_DIFFUSION_CPP),
    TaskType.TEXT2VIDEO.value: (B.VLLM_OMNI,),
    TaskType.TEXT2AUDIO.value: (B.VLLM_OMNI,),
    TaskType.IMAGE2IMAGE.value: (B.VLLM_OMNI,),
    TaskType.IMAGE2VIDEO.value: (B.VLLM_OMNI,),
    TaskType.AUDIO2TEXT.value: (B.VLLM_OMNI, B.SGLANG),
    TaskType.OMNI.value: (B.VLLM_OMNI,),
    TaskType.RERANKER.value: (B.VLLM, B.SGLANG, B.LLAMACPP),
    TaskType.CLASSIFICATION.value: (B.VLLM, B.SGLANG),
    TaskType.REWARD.value: (B.VLLM, B.SGLANG),
    # Forecast models run on custom backends only.
    TaskType.FORECAST.value: (),
}  # type: ignore[dict-item]


def allowed_backends(task_type: str) -> tuple[str, ...]:
    return tuple(Backend(b).value for b in ALLOWED_BACKENDS.get(task_type, ()))
