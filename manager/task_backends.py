"""Which backends may serve which task type: the one allow-list table."""

from __future__ import annotations

from inferencekey.enums import Backend, TaskType

B = Backend
ALLOWED_BACKENDS: dict[str, tuple[str, ...]] = {
    TaskType.TEXT2TEXT.value: (B.VLLM, B.VLLM_OMNI, B.SGLANG, B.OLLAMA, B.LLAMACPP),
    TaskType.EMBEDDING.value: (B.VLLM, B.SGLANG, B.OLLAMA, B.LLAMACPP),
    TaskType.TEXT2IMAGE.value: (B.VLLM_OMNI,),
    TaskType.TEXT2VIDEO.value: (B.VLLM_OMNI,),
    TaskType.TEXT2AUDIO.value: (B.VLLM_OMNI,),
    TaskType.IMAGE2IMAGE.value: (B.VLLM_OMNI,),
    TaskType.IMAGE2VIDEO.value: (B.VLLM_OMNI,),
    TaskType.AUDIO2TEXT.value: (B.VLLM_OMNI, B.SGLANG),
    TaskType.OMNI.value: (B.VLLM_OMNI,),
    TaskType.RERANKER.value: (B.VLLM, B.SGLANG, B.LLAMACPP),
    TaskType.CLASSIFICATION.value: (B.VLLM, B.SGLANG),
    TaskType.REWARD.value: (B.VLLM, B.SGLANG),
    # Forecast models run on custom backends, which this Manager does not host yet.
    TaskType.FORECAST.value: (),
}  # type: ignore[dict-item]


def allowed_backends(task_type: str) -> tuple[str, ...]:
    return tuple(Backend(b).value for b in ALLOWED_BACKENDS.get(task_type, ()))
