"""A tiny llama-architecture GGUF with random weights and a real vocabulary, small enough to
travel to a GPU machine that can download nothing (scripts/gpu_check_kit.sh).

It answers gibberish, but llama.cpp loads it and runs every layer on the GPU like any llama
model. Usage: python tiny_gguf.py VOCAB.gguf OUT.gguf, with VOCAB one of llama.cpp's
models/ggml-vocab-*.gguf (a vocabulary and no weights) and gguf-py on PYTHONPATH.
"""

from __future__ import annotations

import sys
from typing import Any

import gguf
import numpy as np

N_EMBD, N_LAYER, N_HEAD, N_FF, CONTEXT = 128, 4, 4, 384, 2048


def main(vocab_path: str, out_path: str) -> None:
    fields = gguf.GGUFReader(vocab_path).fields

    def array(name: str) -> list[Any]:
        field = fields[name]
        return [field.parts[i] for i in field.data]

    def scalar(name: str) -> int:
        field = fields[name]
        return int(field.parts[field.data[0]][0])

    tokens = [bytes(part).decode() for part in array("tokenizer.ggml.tokens")]
    scores = [float(part[0]) for part in array("tokenizer.ggml.scores")]
    types = [int(part[0]) for part in array("tokenizer.ggml.token_type")]

    writer = gguf.GGUFWriter(out_path, "llama")
    writer.add_name("tiny-random-llama")
    writer.add_context_length(CONTEXT)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_dimension_count(N_EMBD // N_HEAD)
    writer.add_vocab_size(len(tokens))
    writer.add_file_type(1)  # mostly F16
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(scalar("tokenizer.ggml.bos_token_id"))
    writer.add_eos_token_id(scalar("tokenizer.ggml.eos_token_id"))
    writer.add_unk_token_id(scalar("tokenizer.ggml.unknown_token_id"))
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_chat_template(
        "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}assistant: {% endif %}"
    )

    rng = np.random.default_rng(0)

    def weight(*shape: int) -> Any:
        return (rng.standard_normal(shape) * 0.02).astype(np.float16)

    def ones() -> Any:
        return np.ones(N_EMBD, dtype=np.float32)

    # No output.weight: llama.cpp then reads the logits through the token embedding.
    writer.add_tensor("token_embd.weight", weight(len(tokens), N_EMBD))
    writer.add_tensor("output_norm.weight", ones())
    for layer in range(N_LAYER):
        block = f"blk.{layer}"
        writer.add_tensor(f"{block}.attn_norm.weight", ones())
        for name in ("attn_q", "attn_k", "attn_v", "attn_output"):
            writer.add_tensor(f"{block}.{name}.weight", weight(N_EMBD, N_EMBD))
        writer.add_tensor(f"{block}.ffn_norm.weight", ones())
        writer.add_tensor(f"{block}.ffn_gate.weight", weight(N_FF, N_EMBD))
        writer.add_tensor(f"{block}.ffn_up.weight", weight(N_FF, N_EMBD))
        writer.add_tensor(f"{block}.ffn_down.weight", weight(N_EMBD, N_FF))

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(f"{out_path}: {len(tokens)} tokens, {N_LAYER} layers of {N_EMBD}")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
