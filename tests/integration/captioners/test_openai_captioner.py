"""The openai: captioner against a real local OpenAI-compatible server: request shapes of vLLM,
Ollama and llama.cpp, failover, timeouts, retries, concurrency and readiness."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from dependency_injector import providers
from PIL import Image

from captioner.adapters.captioners.openai_compatible import OpenAICompatibleCaptioner
from captioner.adapters.imaging.decoder import PillowImageDecoder
from captioner.config import Settings
from captioner.container import build_container, opened
from captioner.domain.errors import CaptionerUnavailable, CaptioningFailed
from captioner.domain.model import DecodedImage
from tests.conftest import png_bytes
from tests.support.openai_server import (
    FLAVOURS,
    RunningServer,
    answer_for,
    closed_port_url,
    openai_server,
)

INSTRUCTION = "Describe this image in one sentence."


def decoded(size: tuple[int, int] = (64, 48), exif_orientation: int = 0) -> DecodedImage:
    buffer = io.BytesIO()
    image = Image.new("RGB", size, (200, 30, 30))
    exif = Image.Exif()
    if exif_orientation:
        exif[0x0112] = exif_orientation
    image.save(buffer, "JPEG", exif=exif)
    buffer.seek(0)
    return PillowImageDecoder().decode(buffer)


def captioner_for(*urls: str, **settings: object) -> OpenAICompatibleCaptioner:
    options: dict[str, object] = {"retries": 1, "backoff_s": 0.01, "timeout_s": 5.0}
    options.update(settings)
    return OpenAICompatibleCaptioner("openai:tiny-vlm", ",".join(urls), **options)  # type: ignore[arg-type]


@pytest.fixture
def server() -> Iterator[RunningServer]:
    with openai_server() as running:
        yield running


@pytest.fixture
def spare() -> Iterator[RunningServer]:
    with openai_server() as running:
        yield running


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_each_engine_shape_is_ready_and_answers_a_clean_caption(flavour: str) -> None:
    with openai_server(flavour=flavour) as running:
        captioner = captioner_for(running.base_url, max_tokens=40)

        assert captioner.wait_until_ready(timeout=5).ready
        text = captioner.describe(decoded(), "").text

        assert text == answer_for(INSTRUCTION, (64, 48))  # no <|im_end|> left in
        assert running.state.problems == []
        (seen,) = running.state.requests
        assert (seen.model, seen.temperature, seen.max_tokens) == ("tiny-vlm", 0.0, 40)
        assert [m.id for m in captioner.served_models] == ["tiny-vlm"]


def test_provenance_says_what_the_server_reports_and_the_request_settings(
    server: RunningServer,
) -> None:
    captioner = captioner_for(server.base_url, max_tokens=40)
    assert captioner.wait_until_ready(timeout=5).ready

    caption = captioner.describe(decoded(), "")
    provenance = captioner.provenance

    assert caption.duration_ms > 0
    assert provenance.model_revision == "openai:vllm/tiny-vlm@1700000000"
    assert provenance.settings == {
        "instruction": INSTRUCTION,
        "max_side": 1024,
        "max_tokens": 40,
        "temperature": 0,
    }


def test_an_upload_before_any_readiness_probe_still_records_the_served_revision(
    tmp_path: Path, server: RunningServer
) -> None:
    from captioner.entrypoints.http import create_app

    settings = Settings(model="openai:tiny-vlm", openai_base_url=server.base_url, data_dir=tmp_path)
    client = create_app(build_container(settings)).test_client()

    first = client.post("/upload", data={"image": (io.BytesIO(png_bytes()), "a.png")})

    assert first.status_code == 200
    assert first.get_json()["model_revision"] == "openai:vllm/tiny-vlm@1700000000"
    assert first.get_json()["duration_ms"] > 0


def test_readiness_and_errors_name_a_server_without_its_url_password() -> None:
    down = closed_port_url().replace("http://", "http://me:hunter2@")
    captioner = captioner_for(down, retries=0)

    readiness = captioner.readiness()
    with pytest.raises(CaptionerUnavailable) as refused:
        captioner.describe(decoded(), "")

    assert not readiness.ready
    assert "me:***@127.0.0.1" in readiness.reason
    assert "hunter2" not in readiness.reason
    assert "hunter2" not in str(refused.value)


def test_the_prompt_replaces_the_instruction(server: RunningServer) -> None:
    captioner = captioner_for(server.base_url)
    text = captioner.describe(decoded(), "What colour is it?").text
    assert text == answer_for("What colour is it?", (64, 48))
    assert server.state.requests[0].instruction == "What colour is it?"


def test_big_images_are_sent_no_larger_than_the_longest_side_setting(server: RunningServer) -> None:
    captioner_for(server.base_url).describe(decoded((2000, 1000)), "")
    captioner_for(server.base_url, max_side=100).describe(decoded((300, 600)), "")
    assert [r.image_size for r in server.state.requests] == [(1024, 512), (50, 100)]


def test_a_big_photo_decoded_at_the_servers_edge_is_still_sent_at_the_longest_side(
    server: RunningServer,
) -> None:
    captioner = captioner_for(server.base_url, max_side=200)
    buffer = io.BytesIO()
    Image.new("RGB", (1600, 1200), (20, 90, 200)).save(buffer, "JPEG")
    buffer.seek(0)
    photo = PillowImageDecoder(min_edge=captioner.wanted_edge).decode(buffer)

    captioner.describe(photo, "")

    assert photo.pixels.size == (400, 300)  # type: ignore[attr-defined]  # not 2 MP
    assert server.state.requests[0].image_size == (200, 150)


def test_the_image_sent_is_upright_per_its_exif(server: RunningServer) -> None:
    # Orientation 6: stored landscape, shown portrait (rotated 90 degrees).
    captioner_for(server.base_url).describe(decoded((80, 40), exif_orientation=6), "")
    assert server.state.requests[0].image_size == (40, 80)


def test_the_api_key_goes_as_a_bearer_token(server: RunningServer) -> None:
    captioner_for(server.base_url, api_key="sk-test").describe(decoded(), "")
    assert server.state.requests[0].authorization == "Bearer sk-test"


def test_a_server_that_is_down_fails_over_to_the_next(spare: RunningServer) -> None:
    down = closed_port_url()
    captioner = captioner_for(down, spare.base_url)

    assert captioner.describe(decoded(), "").text.startswith("an image of 64 by 48")
    readiness = captioner.readiness()

    assert readiness.ready
    assert f"{down} down" in readiness.reason
    assert f"{spare.base_url} up" in readiness.reason


def test_a_failing_server_goes_to_the_back_of_the_line(
    server: RunningServer, spare: RunningServer
) -> None:
    server.state.mode = "fail"
    captioner = captioner_for(server.base_url, spare.base_url)

    captioner.describe(decoded(), "")
    captioner.describe(decoded(), "")

    assert server.state.completions_asked == 1  # tried once, then the healthy one first
    assert len(spare.state.requests) == 2


def test_a_busy_server_is_asked_again_after_its_retry_after(server: RunningServer) -> None:
    server.state.busy_times = 2
    captioner = captioner_for(server.base_url, retries=3)

    assert captioner.describe(decoded(), "").text.startswith("an image of")
    assert server.state.completions_asked == 3


def test_a_stalled_server_times_out_and_the_next_one_answers(
    server: RunningServer, spare: RunningServer
) -> None:
    server.state.mode, server.state.stall_s = "stall", 3.0
    captioner = captioner_for(server.base_url, spare.base_url, timeout_s=0.5)

    assert captioner.describe(decoded(), "").text.startswith("an image of")
    assert len(spare.state.requests) == 1


def test_when_every_server_is_down_captions_are_unavailable_with_the_reason(
    server: RunningServer,
) -> None:
    server.state.mode, server.state.stall_s = "stall", 2.0
    captioner = captioner_for(server.base_url, closed_port_url(), timeout_s=0.3, retries=1)

    with pytest.raises(CaptionerUnavailable, match="No OpenAI-compatible server answered"):
        captioner.describe(decoded(), "")
    server.state.mode = "fail"
    readiness = captioner.readiness()
    assert not readiness.ready
    assert "HTTP 500" in readiness.reason
    assert "unreachable" in readiness.reason


def test_a_request_the_server_refuses_fails_without_retrying(server: RunningServer) -> None:
    server.state.mode = "refuse"
    with pytest.raises(CaptioningFailed, match="image too large for context"):
        captioner_for(server.base_url, retries=3).describe(decoded(), "")
    assert server.state.completions_asked == 1


def test_a_server_without_the_model_is_not_ready(server: RunningServer) -> None:
    captioner = OpenAICompatibleCaptioner("openai:other-model", server.base_url)
    readiness = captioner.readiness()
    assert not readiness.ready
    assert "serves tiny-vlm, not other-model" in readiness.reason


def test_requests_run_concurrently_up_to_the_limit(server: RunningServer) -> None:
    server.state.answer_delay_s = 0.3
    captioner = captioner_for(server.base_url, concurrency=3)
    threads = [threading.Thread(target=captioner.describe, args=(decoded(), "")) for _ in range(7)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)

    assert len(server.state.requests) == 7
    assert server.state.most_in_flight == 3


def test_one_setting_switches_the_service_to_the_server(tmp_path: Path) -> None:
    with openai_server() as running:
        settings = Settings(
            model="openai:tiny-vlm", openai_base_url=running.base_url, data_dir=tmp_path
        )
        with opened(build_container(settings)) as container:
            service = container.service()
            assert isinstance(container.captioner(), OpenAICompatibleCaptioner)
            assert service.wait_until_ready(timeout=5).ready
            in_process = container.captioner.providers["in_process"]
            assert isinstance(in_process, providers.Resource)
            assert not in_process.initialized  # the branch not chosen was never built


def test_an_openai_model_without_a_server_url_is_refused() -> None:
    with pytest.raises(ValueError, match="openai_base_url"):
        Settings.from_mapping({"model": "openai:tiny-vlm"})


def test_when_the_server_is_down_uploads_get_503_and_readyz_says_why(tmp_path: Path) -> None:
    from captioner.entrypoints.http import create_app

    down = closed_port_url()
    settings = Settings(
        model="openai:tiny-vlm", openai_base_url=down, openai_retries=0, data_dir=tmp_path
    )
    client = create_app(build_container(settings)).test_client()

    upload = client.post("/upload", data={"image": (io.BytesIO(png_bytes()), "a.png")})
    ready = client.get("/readyz")

    assert upload.status_code == 503
    assert "No OpenAI-compatible server answered" in upload.get_json()["error"]
    assert ready.status_code == 503
    assert f"{down} down" in ready.get_json()["reason"]


def test_the_http_api_captions_through_the_server_that_is_up(
    tmp_path: Path, server: RunningServer
) -> None:
    from captioner.entrypoints.http import create_app

    down = closed_port_url()
    settings = Settings(
        model="openai:tiny-vlm", openai_base_url=f"{down},{server.base_url}", data_dir=tmp_path
    )
    client = create_app(build_container(settings)).test_client()

    first = client.post("/upload", data={"image": (io.BytesIO(png_bytes()), "a.png")})
    again = client.post("/upload", data={"image": (io.BytesIO(png_bytes()), "b.png")})
    ready = client.get("/readyz")

    assert first.status_code == 200
    assert first.get_json()["description"] == answer_for(INSTRUCTION, (64, 48))
    assert first.get_json()["model"] == "openai:tiny-vlm"  # the dedup key: as given
    assert again.get_json()["duplicate"] is True
    assert len(server.state.requests) == 1
    assert ready.status_code == 200
    assert f"{down} down" in ready.get_json()["detail"]
    assert f"{server.base_url} up" in ready.get_json()["detail"]


def test_the_cli_and_the_library_caption_through_the_server(
    tmp_path: Path,
    server: RunningServer,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import captioner
    from captioner.entrypoints.cli import main

    photo = tmp_path / "red.png"
    photo.write_bytes(png_bytes())
    monkeypatch.setenv("CAPTIONER_OPENAI_BASE_URL", server.base_url)
    code = main(
        [
            "caption",
            "--json",
            "--model",
            "openai:tiny-vlm",
            "--data-dir",
            str(tmp_path / "cli"),
            str(photo),
        ]
    )
    line = json.loads(capsys.readouterr().out)
    with captioner.open_service(
        model="openai:tiny-vlm", openai_base_url=server.base_url, data_dir=tmp_path / "lib"
    ) as service:
        result = service.describe(
            captioner.ImageUpload(content=io.BytesIO(png_bytes()), original_name="red.png")
        )

    assert code == 0
    assert line["description"] == answer_for(INSTRUCTION, (64, 48))
    assert result.record.description == line["description"]


def test_the_cli_says_why_when_no_server_is_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from captioner.entrypoints.cli import main

    down = closed_port_url()
    photo = tmp_path / "red.png"
    photo.write_bytes(png_bytes())
    monkeypatch.setenv("CAPTIONER_OPENAI_BASE_URL", down)

    code = main(["caption", "--model", "openai:tiny-vlm", "--data-dir", str(tmp_path), str(photo)])

    assert code == 1
    assert f"{down} down" in capsys.readouterr().err


def test_waiting_with_a_timeout_sees_a_server_come_up(server: RunningServer) -> None:
    server.state.mode = "fail"
    captioner = captioner_for(server.base_url, health_ttl_s=0.05)
    assert not captioner.wait_until_ready().ready

    threading.Timer(0.3, lambda: setattr(server.state, "mode", "ok")).start()

    assert captioner.wait_until_ready(timeout=10).ready
