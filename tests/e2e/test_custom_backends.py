"""Custom backends end to end: packaged from tests/e2e/custom_backends/ with the SDK, published
to the session's Manager, run by a real agent (process runtime, each from a uv venv it builds),
and called through the gateway's public routes with the SDK, the official OpenAI client and raw
HTTP (contract sections 1c, 1d, 8, 9 and 11; README "Custom backends").

One agent and one workload per route family serve the whole module (building and starting them
is most of its time); the tests that change them (the agent restart, the new classifier
version) come last, in file order.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import os
import secrets
import shutil
import statistics
import struct
import wave
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from inferencekey import (
    ApiError,
    DataClient,
    ManagementClient,
    ValidationError,
    WorkloadSpec,
    publish_custom_backend,
)
from inferencekey.backend import BackendPackage, package_backend

from tests.e2e.conftest import replicas
from tests.e2e.serving import endpoint
from tests.support import (
    RunningAgent,
    RunningManager,
    TestProject,
    bearer,
    create_live_key,
    create_project,
    create_sdk_token,
    free_port,
    wait_until,
)
from worker_agent.config import AgentConfig

TENANT = "default"
SOURCES = Path(__file__).with_name("custom_backends")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SEASON = 4
# Four seasons of a weekly-ish series: its season-on-season residuals are 2 1 3 1 -1 -2 -2 3.
SERIES = [10.0, 20.0, 30.0, 40.0, 12.0, 21.0, 33.0, 41.0, 11.0, 19.0, 31.0, 44.0]


@dataclass
class Deployment:
    """What the module's tests share: the project, its credentials and clients, the published
    backends' slugs, and the agent serving them (replaced when a test restarts it)."""

    manager: RunningManager
    project: TestProject
    live_key: str
    api: httpx.Client
    mgmt: ManagementClient
    data: DataClient
    worker_token: str
    state_dir: Path
    dist: Path
    tag: str
    packages: dict[str, BackendPackage]
    # Engine ports of its own: agents of tests running beside it (pytest-xdist) allocate from
    # the default range, and a port two agents both find free is lost by one engine for good
    # (an agent relaunches a failed replica on the same port).
    port_range: tuple[int, int]
    agents: list[RunningAgent] = field(default_factory=list)

    @property
    def agent(self) -> RunningAgent:
        return self.agents[-1]

    def slug(self, backend: str) -> str:
        return f"{backend}-{self.tag}"

    def start_agent(self) -> RunningAgent:
        """An agent for the module's worker, on its state dir (a restart is another of these)."""
        port = self.agents[-1].config.listen_port if self.agents else free_port()
        config = AgentConfig(
            manager_url=self.manager.url,
            token=self.worker_token,
            runtime="process",
            state_dir=self.state_dir,
            model_dir=self.state_dir / "models",
            listen_host="127.0.0.1",
            listen_port=port,
            advertise_url=f"http://127.0.0.1:{port}",
            port_range=self.port_range,
            health_interval_s=0.5,
            restart_backoff_initial_s=0.5,
        )
        self.agents.append(RunningAgent(config))
        return self.agents[-1]

    def package(
        self,
        source: Path,
        backend: str,
        entrypoint: str,
        *,
        task_type: str = "",
        version: str = "1.0.0",
    ) -> Path:
        """Package ``source`` (a backend's module) as this module's ``backend``."""
        built = package_backend(
            source,
            entrypoint=entrypoint,
            name=self.slug(backend),
            version=version,
            task_type=task_type,
            out=self.dist,
            requirements=[],  # nothing to install: no network needed
            cpu_only=True,
        )
        self.packages[f"{backend} {built.manifest.version}"] = built
        return built.path

    def publish(self, package: Path) -> dict[str, Any]:
        return publish_custom_backend(
            TENANT, package, token=self.project.sdk_token, base_url=self.manager.url
        )

    def declare(self, spec: WorkloadSpec) -> None:
        """``ensure()`` the workload: a custom backend's spec carries its config on the wire."""
        assert self.mgmt.ensure(spec).workload_slug == spec.slug

    def endpoint_url(self, workload: str) -> str:
        return f"{self.manager.url}/endpoint/{self.project.slug}/{workload}"

    def openai(self, workload: str) -> openai.OpenAI:
        return openai.OpenAI(
            base_url=f"{self.endpoint_url(workload)}/v1", api_key=self.live_key, max_retries=0
        )

    def package_dir(self, backend: str, version: str = "1.0.0") -> Path:
        """Where the agent keeps this package version: its src, venv and install marker."""
        sha256 = self.packages[f"{backend} {version}"].sha256
        return self.state_dir / "custom-backends" / self.slug(backend) / f"{version}-{sha256[:12]}"


def engine_ports() -> tuple[int, int]:
    """A hundred ports outside the agents' default range, one block per pytest-xdist worker (each
    runs a deployment of its own when it gets tests of this module)."""
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    low = 43000 + 100 * (worker % 20)
    return low, low + 99


def media_spec(slug: str, task_type: str, modality: str, backend: str) -> WorkloadSpec:
    return WorkloadSpec(
        name=slug,
        slug=slug,
        model=f"{slug}-model",
        backend=backend,
        task_type=task_type,
        config={"modality": modality, "default_size": "16x12"},
    )


@pytest.fixture(scope="module")
def deployment(
    manager: RunningManager, admin: httpx.Client, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    created = create_project(admin)
    project = TestProject(
        id=created["id"], slug=created["slug"], sdk_token=create_sdk_token(admin, created["slug"])
    )
    worker = admin.post(
        "/api/admin/workers", json={"project": project.slug, "name": "custom-backends"}
    )
    assert worker.status_code == 201, worker.text
    root = tmp_path_factory.mktemp("custom-backends")
    with (
        httpx.Client(base_url=manager.url, headers=bearer(project.sdk_token)) as api,
        ManagementClient(
            base_url=manager.url, sdk_token=project.sdk_token, project=project.slug
        ) as mgmt,
        DataClient(
            base_url=manager.url,
            project=project.slug,
            api_key=(live_key := create_live_key(admin, project.slug)),
            timeout=60,
        ) as data,
    ):
        deployment = Deployment(
            manager=manager,
            project=project,
            live_key=live_key,
            api=api,
            mgmt=mgmt,
            data=data,
            worker_token=worker.json()["token"],
            state_dir=root / "agent",
            dist=root / "dist",
            # Backends are the tenant's: other tests publish to it too.
            tag=secrets.token_hex(3),
            packages={},
            port_range=engine_ports(),
        )
        forecaster = deployment.slug("forecaster")
        classifier = deployment.slug("classifier")
        media = deployment.slug("media")
        published = [
            deployment.publish(
                deployment.package(
                    SOURCES / "forecaster.py",
                    "forecaster",
                    "forecaster:SeasonalNaive",
                    task_type="forecast",
                )
            ),
            deployment.publish(
                deployment.package(
                    SOURCES / "classifier.py",
                    "classifier",
                    "classifier:KeywordClassifier",
                    task_type="classification",
                )
            ),
            # No task type: one package serves the image, audio, transcription and chat
            # workloads, which are of different task types.
            deployment.publish(deployment.package(SOURCES / "media.py", "media", "media:Media")),
        ]
        assert [record["slug"] for record in published] == [forecaster, classifier, media]
        deployment.start_agent()
        specs = [
            WorkloadSpec(
                name="forecast",
                slug="forecast",
                model="seasonal-naive",
                backend=forecaster,
                task_type="forecast",
                config={"season_length": SEASON},
            ),
            WorkloadSpec(
                name="triage",
                slug="triage",
                model="keywords",
                backend=classifier,
                task_type="classification",
            ),
            media_spec("images", "text2image", "image", media),
            media_spec("voice", "text2audio", "audio", media),
            media_spec("transcribe", "audio2text", "transcription", media),
            media_spec("echo", "text2text", "chat", media),
        ]
        try:
            for spec in specs:
                deployment.declare(spec)
            for spec in specs:
                mgmt.wait_until_ready(spec.slug, timeout=90, silent=True)
            for spec in specs:
                wait_routable(deployment, spec.slug)
            yield deployment
        finally:
            for spec in specs:
                mgmt.delete(spec.slug)
            deployment.agent.stop_for_good()
            for backend in (forecaster, classifier, media):
                api.delete(f"/api/tenants/{TENANT}/custom-backends/{backend}")


def wait_routable(deployment: Deployment, workload: str) -> None:
    """Ready in the API and in the gateway's route table (reloaded within a second)."""
    url = f"{deployment.endpoint_url(workload)}/v1/models"
    wait_until(
        lambda: httpx.get(url, headers=bearer(deployment.live_key)).status_code == 200,
        30,
        f"the gateway never routed to {workload}",
        interval=0.2,
    )


# --- helpers that read what the backends answered -------------------------------------------


def png_chunks(picture: bytes) -> list[tuple[bytes, bytes]]:
    """The (type, data) of each chunk of a PNG, every CRC checked."""
    assert picture.startswith(PNG_SIGNATURE), picture[:16]
    chunks, offset = [], len(PNG_SIGNATURE)
    while offset < len(picture):
        (length,) = struct.unpack(">I", picture[offset : offset + 4])
        kind = picture[offset + 4 : offset + 8]
        data = picture[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", picture[offset + 8 + length : offset + 12 + length])
        assert crc == zlib.crc32(kind + data), f"bad CRC in {kind!r}"
        chunks.append((kind, data))
        offset += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    return chunks


def png_facts(picture: bytes) -> tuple[int, int, dict[str, str]]:
    """Width, height and tEXt entries of a real RGB PNG (its pixels decompress to that size)."""
    chunks = png_chunks(picture)
    width, height, depth, colour = struct.unpack(">IIBB", chunks[0][1][:10])
    assert (depth, colour) == (8, 2)  # 8-bit RGB
    pixels = zlib.decompress(b"".join(data for kind, data in chunks if kind == b"IDAT"))
    assert len(pixels) == height * (1 + 3 * width)
    texts = dict(
        data.decode("latin-1").split("\x00", 1) for kind, data in chunks if kind == b"tEXt"
    )
    return width, height, texts


def wav_facts(audio: bytes) -> tuple[int, int, int]:
    """Frame count, rate and channels of a real WAV."""
    assert audio[:4] == b"RIFF" and audio[8:12] == b"WAVE", audio[:16]
    with wave.open(io.BytesIO(audio)) as sound:
        return sound.getnframes(), sound.getframerate(), sound.getnchannels()


def a_wav(seconds: float) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as sound:
        sound.setnchannels(1)
        sound.setsampwidth(2)
        sound.setframerate(16000)
        sound.writeframes(secrets.token_bytes(int(seconds * 16000) * 2))
    return out.getvalue()


def seasonal_naive(series: list[float], season: int, horizon: int, level: float) -> list[float]:
    """What the forecaster should answer, worked out here from the definition."""
    residuals = [series[t] - series[t - season] for t in range(season, len(series))]
    spread = statistics.pstdev(residuals)
    z = statistics.NormalDist().inv_cdf(level)
    return [
        series[len(series) - season + step % season] + z * spread * math.sqrt(step // season + 1)
        for step in range(horizon)
    ]


# --- forecast -------------------------------------------------------------------------------


def test_a_forecast_repeats_the_last_season_with_quantiles_from_the_residual_spread(
    deployment: Deployment,
) -> None:
    levels = [0.1, 0.5, 0.9]
    body = {"target": SERIES, "horizon": 6, "quantile_levels": levels}

    answer = httpx.post(
        f"{deployment.endpoint_url('forecast')}/forecast",
        json=body,
        headers=bearer(deployment.live_key),
        timeout=30,
    )

    assert answer.status_code == 200, answer.text
    forecast = answer.json()["forecast"]
    # The season length (4) is the workload's config, read by setup().
    assert forecast["median"] == [11.0, 19.0, 31.0, 44.0, 11.0, 19.0]
    assert set(forecast["quantiles"]) == {"0.1", "0.5", "0.9"}
    for level in levels:
        expected = seasonal_naive(SERIES, SEASON, 6, level)
        assert forecast["quantiles"][str(level)] == pytest.approx(expected, abs=1e-9)
    low, high = forecast["quantiles"]["0.1"], forecast["quantiles"]["0.9"]
    assert forecast["quantiles"]["0.5"] == pytest.approx(forecast["median"])
    # Wider one season further out.
    assert high[4] - low[4] == pytest.approx((high[0] - low[0]) * math.sqrt(2))

    bad = httpx.post(
        f"{deployment.endpoint_url('forecast')}/forecast",
        json={"target": [1.0, 2.0], "horizon": 3},
        headers=bearer(deployment.live_key),
        timeout=30,
    )
    assert bad.status_code == 400 and bad.json()["code"] == "invalid_input", bad.text
    assert "at least one season" in bad.json()["message"]


# --- classification: async only --------------------------------------------------------------


def test_classification_is_a_job_with_label_and_score_and_has_no_sync_route(
    deployment: Deployment,
) -> None:
    triage = deployment.data.endpoint("triage")
    text = "The blender arrived broken and I want a refund"
    context = {"ticket": 7, "tags": ["kitchen"]}

    job = triage.wait_job(
        triage.submit_job("classification", body={"input": text}, context=context), timeout=60
    )

    assert job.status == "succeeded", job.raw
    assert job.kind == "classification" and job.context == context
    assert job.data is not None and job.data.status == "ok"
    # 2 complaint words of 9
    assert job.data.payload == {"label": "complaint", "score": 0.2222, "version": "1.0.0"}
    praise = triage.wait_job(
        triage.submit_job("classification", body={"input": "Thanks, it works great"})
    )
    assert praise.data is not None
    assert praise.data.payload == {"label": "other", "score": 0.0, "version": "1.0.0"}

    with pytest.raises(ValidationError, match="served as async jobs"):
        triage.generate_text(prompt=text)
    with endpoint(deployment.manager, deployment.project, "triage", deployment.live_key) as raw:
        for route in ("v1/chat/completions", "classify"):
            refused = raw.post(f"/{route}", json={"input": text})
            assert refused.status_code == 400, refused.text
            assert refused.json()["code"] == "route_not_served"


# --- images ---------------------------------------------------------------------------------


def test_images_are_generated_as_real_pngs_of_the_asked_size(deployment: Deployment) -> None:
    client = deployment.openai("images")

    generated = client.images.generate(
        model="images", prompt="a red fox in the snow", n=2, size="24x16"
    )

    assert generated.data is not None and len(generated.data) == 2
    pictures = [base64.b64decode(item.b64_json or "") for item in generated.data]
    assert all(png_facts(picture)[:2] == (24, 16) for picture in pictures)
    assert pictures[0] != pictures[1]  # each image of n its own
    assert {item.revised_prompt for item in generated.data} == {"a red fox in the snow"}


@pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")  # OpenAI's variations
def test_image_edits_and_variations_get_the_upload_byte_for_byte(deployment: Deployment) -> None:
    client = deployment.openai("images")
    # A real PNG, with bytes a multipart parser could trip on after its end.
    upload = (
        base64.b64decode(
            client.images.generate(model="images", prompt="source", size="9x7").data[0].b64_json  # type: ignore[index, arg-type]
        )
        + b"\r\n--not-the-boundary\r\n\x00\xff" * 3
    )
    digest = hashlib.sha256(upload).hexdigest()

    edited = client.images.edit(
        model="images", image=("fox.png", upload, "image/png"), prompt="make it blue"
    )
    varied = client.images.create_variation(model="images", image=("fox.png", upload, "image/png"))

    for result, action in ((edited, "edit"), (varied, "variation")):
        assert result.data is not None and len(result.data) == 1
        item = result.data[0]
        assert item.model_extra == {"upload_bytes": len(upload), "upload_sha256": digest}
        width, height, texts = png_facts(base64.b64decode(item.b64_json or ""))
        assert (width, height) == (16, 12)  # the workload's default_size
        assert texts == {
            "action": action,
            "upload-bytes": str(len(upload)),
            "upload-sha256": digest,
        }
    assert edited.data[0].revised_prompt == f"edit of {len(upload)} bytes: make it blue"  # type: ignore[index]


# --- audio ----------------------------------------------------------------------------------


def test_speech_and_generated_audio_are_real_wavs_and_voices_are_listed(
    deployment: Deployment,
) -> None:
    client = deployment.openai("voice")
    voice_url = f"{deployment.endpoint_url('voice')}/v1/audio"
    headers = bearer(deployment.live_key)

    voices = httpx.get(f"{voice_url}/voices", headers=headers, timeout=30)
    speech = client.audio.speech.create(
        model="voice", voice="alto", input="Hello there", response_format="wav"
    )
    generated = httpx.post(
        f"{voice_url}/generate",
        json={"prompt": "rain on a tin roof", "duration_s": 0.5},
        headers=headers,
        timeout=30,
    )

    assert voices.status_code == 200, voices.text
    assert voices.json() == {
        "voices": [{"voice_id": "alto", "name": "Alto"}, {"voice_id": "bass", "name": "Bass"}]
    }
    assert speech.response.headers["content-type"] == "audio/wav"
    assert wav_facts(speech.content) == (len("Hello there") * 200, 8000, 1)
    assert generated.status_code == 200, generated.text
    assert generated.headers["content-type"] == "audio/wav"
    assert wav_facts(generated.content) == (4000, 8000, 1)

    with pytest.raises(openai.BadRequestError) as refused:
        client.audio.speech.create(model="voice", voice="soprano", input="Hi")
    problem = refused.value.response.json()
    assert problem["code"] == "invalid_input" and "no voice 'soprano'" in problem["message"]


def test_a_transcription_reports_the_exact_bytes_of_the_uploaded_file(
    deployment: Deployment,
) -> None:
    client = deployment.openai("transcribe")
    audio = a_wav(0.2)

    transcript = client.audio.transcriptions.create(
        model="transcribe", file=("clip.wav", audio, "audio/wav"), language="en"
    )

    assert transcript.text == f"{len(audio)} bytes starting {audio[:8].hex()}"
    extra = transcript.model_extra or {}
    assert extra["sha256"] == hashlib.sha256(audio).hexdigest()
    assert extra["fields"] == {"model": "transcribe", "language": "en"}


# --- chat -----------------------------------------------------------------------------------


def test_chat_through_the_sdk_and_the_openai_client_whole_and_streamed(
    deployment: Deployment,
) -> None:
    echo = deployment.data.endpoint("echo")
    client = deployment.openai("echo")
    messages = [
        {"role": "system", "content": "Repeat after me."},
        {"role": "user", "content": "hello there"},
    ]

    whole = echo.generate_text(messages=messages)
    with echo.generate_text_stream(prompt="one two three") as stream:
        chunks = list(stream)
    completion = client.chat.completions.create(model="echo", messages=messages)  # type: ignore[arg-type]
    streamed = client.chat.completions.create(
        model="echo",
        messages=[{"role": "user", "content": "streamed"}],
        stream=True,
    )

    assert whole.text == "echo: hello there" and whole.finish_reason == "stop"
    assert whole.model == "echo-model"  # the workload's model, not the backend's name
    assert whole.raw["usage"] == {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}
    assert "".join(chunk.text for chunk in chunks) == "echo: one two three"
    assert chunks[-1].finish_reason == "stop"
    assert completion.choices[0].message.content == "echo: hello there"
    assert completion.model == "echo-model"
    assert "".join(chunk.choices[0].delta.content or "" for chunk in streamed) == "echo: streamed"


# --- the agent and the registry over time ---------------------------------------------------


def engine_pid(deployment: Deployment, replica_id: str) -> int:
    record = deployment.state_dir / "process" / "replicas" / f"{replica_id}.json"
    return int(json.loads(record.read_text())["pid"])


def serving(deployment: Deployment, workload: str) -> list[dict[str, Any]]:
    return replicas(deployment.api, workload)


def test_a_restarted_agent_adopts_its_backends_and_reuses_their_venvs(
    deployment: Deployment,
) -> None:
    workloads = ("forecast", "triage", "images", "voice", "transcribe", "echo")
    before = {w: [r["id"] for r in serving(deployment, w)] for w in workloads}
    assert all(len(ids) == 1 for ids in before.values()), before
    pids = {w: engine_pid(deployment, ids[0]) for w, ids in before.items()}
    built = {}
    for backend in ("forecaster", "classifier", "media"):
        home = deployment.package_dir(backend)
        marker = (home / "installed.json").stat()
        built[backend] = (marker.st_ino, marker.st_mtime_ns, (home / "venv").stat().st_ino)
    # The media package was built once for its four workloads.
    assert deployment.agent.agent.custom_backends.builds == 3

    deployment.agent.stop()  # engines keep running under the process runtime
    restarted = deployment.start_agent()

    def all_back() -> bool:
        local = restarted.agent.replicas
        return all(
            ids[0] in local and local[ids[0]].state == "ready" for ids in before.values()
        ) and all(
            [(r["id"], r["state"]) for r in serving(deployment, w)] == [(ids[0], "ready")]
            for w, ids in before.items()
        )

    wait_until(all_back, 30, "the restarted agent did not take its replicas back")
    assert {w: engine_pid(deployment, ids[0]) for w, ids in before.items()} == pids
    assert restarted.agent.custom_backends.builds == 0
    for backend, (inode, mtime_ns, venv_inode) in built.items():
        home = deployment.package_dir(backend)
        marker = (home / "installed.json").stat()
        assert (marker.st_ino, marker.st_mtime_ns, (home / "venv").stat().st_ino) == (
            inode,
            mtime_ns,
            venv_inode,
        ), f"the venv of {backend} was built again"
    assert deployment.data.endpoint("echo").generate_text(prompt="again").text == "echo: again"


def test_a_backend_whose_setup_raises_fails_with_its_words(deployment: Deployment) -> None:
    broken = deployment.slug("no-weights")
    deployment.publish(deployment.package(SOURCES / "broken.py", "no-weights", "broken:NoWeights"))
    spec = WorkloadSpec(
        name="broken", slug="broken", model="nothing", backend=broken, task_type="text2text"
    )
    try:
        deployment.mgmt.ensure(spec)

        with pytest.raises(ApiError, match="no weights here"):
            deployment.mgmt.wait_until_ready("broken", timeout=60, silent=True)

        failed = wait_until(
            lambda: [r for r in serving(deployment, "broken") if r["state"] == "failed"],
            30,
            "the replica never failed",
        )[0]
        assert "engine exited with code 1" in failed["reason"]
        assert "no weights here" in failed["reason"]
        assert "ValueError: no weights here" in failed["log_tail"]
        events = deployment.api.get("/api/workloads/broken/events").json()["events"]
        assert any(
            e["kind"] == "replica_failed" and "no weights here" in e["message"] for e in events
        ), events
    finally:
        deployment.mgmt.delete("broken")
        wait_until(
            lambda: (
                "broken"
                not in {
                    r.assignment.workload_slug for r in deployment.agent.agent.replicas.values()
                }
            ),
            30,
            "the agent kept the broken replica",
        )
        deployment.api.delete(f"/api/tenants/{TENANT}/custom-backends/{broken}")


def test_a_new_classifier_version_rolls_the_workload_onto_it(
    deployment: Deployment, tmp_path: Path
) -> None:
    first = deployment.api.get("/api/workloads/triage").json()
    old_ids = {r["id"] for r in serving(deployment, "triage")}
    # Version 2's module under version 1's name: the same entrypoint, new behaviour.
    source = tmp_path / "classifier.py"
    shutil.copyfile(SOURCES / "classifier_v2.py", source)
    package = deployment.package(
        source,
        "classifier",
        "classifier:KeywordClassifier",
        task_type="classification",
        version="2.0.0",
    )

    record = deployment.publish(package)

    assert record["version"] == "2.0.0"
    rolled = deployment.api.get("/api/workloads/triage").json()
    assert rolled["generation"] == first["generation"] + 1

    def rolled_out() -> list[dict[str, Any]] | None:
        now = serving(deployment, "triage")
        done = now and all(
            r["generation"] == rolled["generation"] and r["state"] == "ready" for r in now
        )
        return now if done else None

    now = wait_until(rolled_out, 60, "triage never rolled onto version 2")
    assert not old_ids & {r["id"] for r in now}
    assert (deployment.package_dir("classifier", "2.0.0") / "installed.json").exists()
    versions = deployment.api.get(
        f"/api/tenants/{TENANT}/custom-backends/{deployment.slug('classifier')}"
    ).json()
    assert [v["version"] for v in versions["versions"]] == ["2.0.0", "1.0.0"]

    triage = deployment.data.endpoint("triage")

    def classify(text: str) -> Any:
        job = triage.wait_job(triage.submit_job("classification", body={"input": text}))
        assert job.status == "succeeded" and job.data is not None, job.raw
        return job.data.payload

    # The gateway's route table follows within a second of the old replica going.
    wait_until(lambda: classify("ok")["version"] == "2.0.0", 30, "jobs still reached version 1")
    assert classify("Thanks, it works great") == {
        "label": "praise",
        "score": 0.5,
        "version": "2.0.0",
    }
    assert classify("It came late and broken")["label"] == "complaint"


def test_ensure_gives_a_custom_backend_workload_its_config(deployment: Deployment) -> None:
    spec = WorkloadSpec(
        name="configured",
        slug="configured",
        model="seasonal-naive",
        backend=deployment.slug("forecaster"),
        task_type="forecast",
        config={"season_length": 3},
        execution_policy="fixed",
        execution_policy_config={"replicas": 0},
    )
    try:
        deployment.mgmt.ensure(spec)
        assert deployment.api.get("/api/workloads/configured").json()["config"] == spec.config
    finally:
        deployment.mgmt.delete("configured")
