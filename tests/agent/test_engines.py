"""Engine recipes: the user's command runs verbatim except for the host and port the agent owns."""

from __future__ import annotations

import json

import pytest

from ik_contracts.engines import (
    ENGINES,
    BackendInstall,
    CustomBackendEngine,
    EngineCommandError,
    container_entrypoints,
    engine_for,
)
from ik_contracts.engines.llamacpp import LlamaCppEngine
from ik_contracts.protocol import CustomBackendRef
from manager.task_backends import ALLOWED_BACKENDS


def test_every_built_in_backend_has_an_engine() -> None:
    assert set(ENGINES) == {
        "ollama", "vllm", "vllm-omni", "sglang", "llamacpp", "stablediffusioncpp",
    }  # fmt: skip
    for backend, engine in ENGINES.items():
        assert engine_for(backend) is engine
        assert engine.health_path.startswith("/")
        assert any(backend in allowed for allowed in ALLOWED_BACKENDS.values())


def test_unknown_backend_is_a_clear_value_error() -> None:
    with pytest.raises(ValueError, match="unknown backend 'tgi'"):
        engine_for("tgi")


def test_verbatim_command_is_kept_and_agent_host_and_port_appended() -> None:
    argv, notices = engine_for("llamacpp").build_argv(
        "llama-server -m '/models/my model.gguf' -c 2048 -ngl 99", "unused", "127.0.0.1", 41000
    )
    # llama.cpp serves its load figures (/metrics) only when asked: the agent asks.
    assert argv == [
        "llama-server", "-m", "/models/my model.gguf", "-c", "2048", "-ngl", "99", "--metrics",
        "--host", "127.0.0.1", "--port", "41000",
    ]  # fmt: skip
    assert notices == []
    again, _ = engine_for("llamacpp").build_argv("llama-server -m m.gguf --metrics", "", "h", 1)
    assert again.count("--metrics") == 1


LLAMACPP_METRICS = """\
# HELP llamacpp:prompt_tokens_total Number of prompt tokens processed.
# TYPE llamacpp:prompt_tokens_total counter
llamacpp:prompt_tokens_total 6886
# HELP llamacpp:requests_processing Number of requests processing.
# TYPE llamacpp:requests_processing gauge
llamacpp:requests_processing 3
# HELP llamacpp:requests_deferred Number of requests deferred.
# TYPE llamacpp:requests_deferred gauge
llamacpp:requests_deferred 2
"""
VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="Qwen/Qwen2.5-0.5B"} 7.0
vllm:num_requests_running{engine="1",model_name="Qwen/Qwen2.5-0.5B"} 1.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="Qwen/Qwen2.5-0.5B"} 4.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="Qwen/Qwen2.5-0.5B"} 0.42
"""


def test_engines_load_figures_are_read_from_their_prometheus_pages() -> None:
    llamacpp = engine_for("llamacpp").read_load(LLAMACPP_METRICS)
    assert llamacpp is not None
    assert (llamacpp.running, llamacpp.waiting, llamacpp.kv_cache_usage) == (3, 2, None)
    vllm = engine_for("vllm").read_load(VLLM_METRICS)
    assert vllm is not None
    assert (vllm.running, vllm.waiting, vllm.kv_cache_usage) == (8, 4, 0.42)
    assert engine_for("vllm").read_load(LLAMACPP_METRICS) is None  # none of its figures
    assert engine_for("vllm").read_load("not { a metrics page") is None
    assert engine_for("ollama").metrics_path is None


def test_user_port_and_host_are_removed_with_a_notice_each() -> None:
    argv, notices = engine_for("vllm").build_argv(
        "vllm serve Qwen/Qwen2.5-0.5B --port 8000 --max-model-len 4096 --host 0.0.0.0",
        "Qwen/Qwen2.5-0.5B",
        "0.0.0.0",
        41001,
    )
    assert argv == [
        "vllm", "serve", "Qwen/Qwen2.5-0.5B", "--max-model-len", "4096",
        "--host", "0.0.0.0", "--port", "41001",
    ]  # fmt: skip
    assert notices == [
        "removed --port 8000 from the command: the agent assigns the port",
        "removed --host 0.0.0.0 from the command: the agent sets the listen address",
    ]


def test_equals_form_of_port_flag_is_removed() -> None:
    argv, notices = engine_for("sglang").build_argv(
        "sglang serve --model-path m --port=80 --host=::", "m", "127.0.0.1", 41002
    )
    assert argv == [
        "sglang",
        "serve",
        "--model-path",
        "m",
        "--host",
        "127.0.0.1",
        "--port",
        "41002",
    ]
    assert notices == [
        "removed --port=80 from the command: the agent assigns the port",
        "removed --host=:: from the command: the agent sets the listen address",
    ]


def test_default_commands_come_from_the_model_name() -> None:
    def argv(backend: str, model: str) -> list[str]:
        return engine_for(backend).build_argv(None, model, "127.0.0.1", 9)[0]

    assert argv("vllm", "org/m") == ["vllm", "serve", "org/m", "--host", "127.0.0.1", "--port", "9"]
    assert argv("vllm-omni", "org/m")[:3] == ["vllm-omni", "serve", "org/m"]
    assert argv("sglang", "org/m")[:5] == [
        "python3", "-m", "sglang.launch_server", "--model-path", "org/m",
    ]  # fmt: skip
    assert argv("llamacpp", "/models/x.gguf")[:3] == ["llama-server", "-m", "/models/x.gguf"]
    assert argv("llamacpp", "ggml-org/gemma-3-270m-GGUF")[:3] == [
        "llama-server", "-hf", "ggml-org/gemma-3-270m-GGUF",
    ]  # fmt: skip


def test_sglang_accepts_both_command_spellings() -> None:
    sglang = engine_for("sglang")
    for command in ("sglang serve --model-path m", "python -m sglang.launch_server --model-path m"):
        assert sglang.build_argv(command, "m", "h", 1)[0][:2] == command.split()[:2]


def test_command_for_another_program_is_rejected() -> None:
    with pytest.raises(EngineCommandError, match="must start with `llama-server`"):
        engine_for("llamacpp").build_argv("vllm serve m", "m", "h", 1)
    with pytest.raises(EngineCommandError, match="cannot parse"):
        engine_for("vllm").build_argv("vllm serve 'unclosed", "m", "h", 1)


def test_tensor_parallel_size_from_the_command() -> None:
    vllm, sglang = engine_for("vllm"), engine_for("sglang")
    assert vllm.tensor_parallel_size(["vllm", "serve", "m"]) == 1
    assert vllm.tensor_parallel_size(["vllm", "serve", "m", "--tensor-parallel-size", "4"]) == 4
    assert vllm.tensor_parallel_size(["vllm", "serve", "m", "-tp", "2"]) == 2
    assert vllm.tensor_parallel_size(["vllm", "serve", "m", "--tensor-parallel-size=8"]) == 8
    assert sglang.tensor_parallel_size(["sglang", "serve", "--tp-size", "2"]) == 2
    assert sglang.tensor_parallel_size(["sglang", "serve", "--tp=4"]) == 4
    with pytest.raises(EngineCommandError):
        vllm.tensor_parallel_size(["vllm", "serve", "m", "-tp", "two"])


def test_gpu_claims() -> None:
    claims = {backend: engine.gpu_claim for backend, engine in ENGINES.items()}
    assert claims == {
        "vllm": "whole", "vllm-omni": "whole", "sglang": "whole",
        "ollama": "shared", "llamacpp": "shared", "stablediffusioncpp": "shared",
    }  # fmt: skip


def test_vllm_image_tag_follows_the_pinned_version() -> None:
    vllm = engine_for("vllm")
    assert vllm.image(None, {}) == "vllm/vllm-openai:latest"
    assert vllm.image("0.6.3", {}) == "vllm/vllm-openai:v0.6.3"
    assert vllm.image("v0.8.5", {}) == "vllm/vllm-openai:v0.8.5"
    assert vllm.image("0.6.3", {"vllm": "registry.local/vllm:mine"}) == "registry.local/vllm:mine"
    assert engine_for("vllm-omni").image("0.11.0", {}) == "vllm/vllm-omni:v0.11.0"
    assert engine_for("llamacpp").image(None, {}) == "ghcr.io/ggml-org/llama.cpp:server"
    assert engine_for("llamacpp").image(None, {"llamacpp": "local:cpu"}) == "local:cpu"


def test_ollama_takes_no_command_and_listens_where_ollama_host_says() -> None:
    ollama = engine_for("ollama")
    argv, notices = ollama.build_argv(None, "llama3.2:1b", "0.0.0.0", 41003)
    assert (argv, notices) == (["ollama", "serve"], [])
    assert ollama.env("0.0.0.0", 41003) == {"OLLAMA_HOST": "0.0.0.0:41003"}
    argv, notices = ollama.build_argv("ollama run llama3.2", "llama3.2:1b", "0.0.0.0", 41003)
    assert argv == ["ollama", "serve"]
    assert notices and notices[0].startswith("ignored the command")
    assert engine_for("vllm").env("0.0.0.0", 1) == {}


def test_llamacpp_model_path_for_memory_estimates() -> None:
    llamacpp = LlamaCppEngine()
    assert llamacpp.model_path(["llama-server", "-m", "/models/a.gguf"]) == "/models/a.gguf"
    assert llamacpp.model_path(["llama-server", "--model=/models/b.gguf"]) == "/models/b.gguf"
    assert llamacpp.model_path(["llama-server", "-hf", "org/repo"]) is None


def test_container_entrypoints_are_the_binaries_inside_the_images() -> None:
    entrypoints = container_entrypoints()
    assert entrypoints["llama-server"] == "/app/llama-server"
    assert entrypoints["ollama"] == "/bin/ollama"


# --- stable-diffusion.cpp ---


def test_sd_server_gets_the_agents_listen_address_in_its_own_flags() -> None:
    sdcpp = engine_for("stablediffusioncpp")
    argv, notices = sdcpp.build_argv(
        "sd-server --diffusion-model /models/z.gguf --vae /models/ae.safetensors --steps 8 "
        "--listen-port 1234 -l 0.0.0.0 --cfg-scale 1.0",
        "z-image",
        "127.0.0.1",
        41005,
    )
    assert argv == [
        "sd-server", "--diffusion-model", "/models/z.gguf", "--vae", "/models/ae.safetensors",
        "--steps", "8", "--cfg-scale", "1.0", "--listen-ip", "127.0.0.1", "--listen-port", "41005",
    ]  # fmt: skip
    assert notices == [
        "removed --listen-port 1234 from the command: the agent assigns the port",
        "removed -l 0.0.0.0 from the command: the agent sets the listen address",
    ]


def test_sd_server_runs_the_model_file_when_no_command_is_given() -> None:
    sdcpp = engine_for("stablediffusioncpp")
    argv, _ = sdcpp.build_argv(None, "/models/sd-turbo.gguf", "0.0.0.0", 41006)
    assert argv == [
        "sd-server", "-m", "/models/sd-turbo.gguf", "--listen-ip", "0.0.0.0", "--listen-port",
        "41006",
    ]  # fmt: skip
    assert sdcpp.model_path(argv) == "/models/sd-turbo.gguf"
    assert sdcpp.model_path(["sd-server", "--diffusion-model", "/m/f.gguf"]) == "/m/f.gguf"
    with pytest.raises(EngineCommandError, match="must start with `sd-server`"):
        sdcpp.build_argv("sd-cli -m x.gguf -p cat", "x", "h", 1)


def test_sd_server_serves_image_generation_and_is_ready_once_it_lists_its_model() -> None:
    sdcpp = engine_for("stablediffusioncpp")
    assert sdcpp.health_path == "/v1/models"  # it loads the model before it listens
    assert not sdcpp.stream_usage_on_request
    assert sdcpp.image(None, {}) == "ghcr.io/leejet/stable-diffusion.cpp:master-cuda"
    assert container_entrypoints()["sd-server"] == "/sd.cpp/bin/sd-server"


# --- custom backends ---

REF = CustomBackendRef(
    id="cbv_1",
    slug="my-backend",
    version="1.2.0",
    sha256="a" * 64,
    size_bytes=10,
    entrypoint="my_backend:MyBackend",
    config={"model": "small", "device": "cpu"},
)
INSTALL = BackendInstall(
    python="/state/custom-backends/my-backend/1.2.0-aaaaaaaaaaaa/venv/bin/python",
    pythonpath=("/state/custom-backends/my-backend/1.2.0-aaaaaaaaaaaa/src", "/state/sdk/x"),
    entrypoint="my_backend:MyBackend",
)


def test_a_custom_backend_is_the_recipe_of_an_unknown_backend_that_comes_with_a_package() -> None:
    engine = engine_for("my-backend", REF)
    assert isinstance(engine, CustomBackendEngine)
    assert engine.ref == REF
    assert engine_for("llamacpp", REF) is ENGINES["llamacpp"]  # a built-in name stays built in
    with pytest.raises(ValueError, match="unknown backend 'my-backend'"):
        engine_for("my-backend")


def test_a_custom_backend_runs_the_sdk_runtime_from_its_venv_on_the_agents_port() -> None:
    engine = CustomBackendEngine(REF, INSTALL)
    argv, notices = engine.build_argv(None, "small", "0.0.0.0", 41007)
    assert argv == [
        INSTALL.python, "-m", "inferencekey.backend.serve", "--port", "41007",
        "--backend", "my_backend:MyBackend",
    ]  # fmt: skip
    assert notices == []
    env = engine.env("0.0.0.0", 41007)
    assert env["PYTHONPATH"] == ":".join(INSTALL.pythonpath)
    assert json.loads(env["IK_BACKEND_CONFIG"]) == {"model": "small", "device": "cpu"}
    assert env["IK_BACKEND_ENTRYPOINT"] == "my_backend:MyBackend"
    assert env["PYTHONNOUSERSITE"] == "1"
    assert engine.health_path == "/healthz"
    assert engine.served_model_name(argv, "small") == "small"
    _, notices = engine.build_argv("python serve.py", "small", "0.0.0.0", 41007)
    assert notices == ["ignored the command: a custom backend serves its package's entrypoint"]


def test_a_custom_backend_takes_jobs_of_the_async_only_kinds_and_never_asks_for_usage() -> None:
    engine = engine_for("my-backend", REF)
    assert engine.job_routes == {"classification": "classify", "reward": "pooling"}
    assert not engine.stream_usage_on_request
    with pytest.raises(NotImplementedError, match="plain process"):
        engine.image(None, {})
