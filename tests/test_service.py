import pytest

from tests.instant_backend import InstantBackend, StaticBackends
from tests.pngs import open_png
from text2image_hub.admin import config_from_values
from text2image_hub.backends import GenerationControl
from text2image_hub.errors import (
    BackendUnavailableError,
    GenerationCancelledError,
    GpuOutOfMemoryError,
    InvalidRequestError,
    NotFoundError,
)
from text2image_hub.imaging import ImageSize
from text2image_hub.service import GenerationSpec, ImageService


def _service(**kwargs) -> tuple[ImageService, StaticBackends]:
    backends = StaticBackends(**kwargs)
    return ImageService(backends, "1.0.0"), backends


async def test_generate_makes_pngs_with_metadata_and_seeds():
    service, _ = _service()
    result = await service.generate(
        GenerationSpec("a cat", count=2, size=ImageSize(256, 256), seeds=(5, 6)),
        config_from_values({}, {}, automatic="local"),
    )
    assert result.seeds == (5, 6)
    assert (result.backend, result.model) == ("local", "test/instant")
    for rendered in result.images:
        image = open_png(rendered.png)
        assert image.size == (256, 256)
        assert image.text["Seed"] == str(rendered.seed)


async def test_generate_uses_admin_default_size_then_model_default():
    service, _ = _service()
    config = config_from_values({"default_size": "1024x768"}, {}, automatic="local")
    assert (await service.generate(GenerationSpec("x"), config)).size == ImageSize(1024, 768)
    assert (
        await service.generate(GenerationSpec("x"), config_from_values({}, {}, automatic="local"))
    ).size == ImageSize(512, 512)


async def test_random_seeds_differ():
    service, _ = _service()
    result = await service.generate(GenerationSpec("x", count=3), config_from_values({}, {}, automatic="local"))
    assert len(set(result.seeds)) == 3


async def test_unsupported_size_names_supported_sizes():
    service, _ = _service()
    with pytest.raises(InvalidRequestError) as caught:
        await service.generate(
            GenerationSpec("x", size=ImageSize(640, 480)), config_from_values({}, {}, automatic="local")
        )
    assert caught.value.code == "INVALID_SIZE"
    assert "512x512" in caught.value.user_message


async def test_negative_prompt_rejected_where_unsupported():
    service, _ = _service(local_backend=None, remote_backend=InstantBackend(backend_name="remote"))
    config = config_from_values({"backend": "remote"}, {}, automatic="local")
    with pytest.raises(InvalidRequestError) as caught:
        await service.generate(GenerationSpec("x", negative_prompt="blur"), config)
    assert caught.value.code == "UNSUPPORTED_PARAMETER"


async def test_unknown_model_is_not_found():
    service, _ = _service()
    with pytest.raises(NotFoundError):
        await service.generate(GenerationSpec("x", model="nope"), config_from_values({}, {}, automatic="local"))


async def test_local_without_model_is_unavailable():
    service, _ = _service(local_backend=None)
    with pytest.raises(BackendUnavailableError):
        await service.generate(GenerationSpec("x"), config_from_values({}, {}, automatic="local"))


async def test_failover_runs_on_remote_when_local_fails():
    local = InstantBackend(fail_with=GpuOutOfMemoryError("oom"))
    remote = InstantBackend(backend_name="remote", model_id="test/remote")
    service, _ = _service(local_backend=local, remote_backend=remote)
    result = await service.generate(
        GenerationSpec("x"), config_from_values({"backend": "local_then_remote"}, {}, automatic="local")
    )
    assert result.backend == "remote"
    assert len(local.calls) == 1
    assert len(remote.calls) == 1
    assert open_png(result.images[0].png).text["Backend"] == "remote"


async def test_failover_does_not_hide_bad_input():
    remote = InstantBackend(backend_name="remote")
    service, _ = _service(remote_backend=remote)
    with pytest.raises(InvalidRequestError):
        await service.generate(
            GenerationSpec("x", size=ImageSize(9, 9)),
            config_from_values({"backend": "local_then_remote"}, {}, automatic="local"),
        )
    assert remote.calls == []


async def test_cancelled_control_stops_generation():
    service, _ = _service()
    control = GenerationControl()
    control.cancel()
    with pytest.raises(GenerationCancelledError):
        await service.generate(GenerationSpec("x"), config_from_values({}, {}, automatic="local"), control)


async def test_prompt_too_long_is_rejected_or_truncated_by_policy():
    service, _ = _service()
    model = InstantBackend().model
    long_model = model.__class__(**{**model.__dict__, "max_prompt_length": 10})
    with pytest.raises(InvalidRequestError) as caught:
        service.resolve(GenerationSpec("x" * 11), config_from_values({}, {}, automatic="local"), long_model)
    assert "10" in caught.value.user_message
    request = service.resolve(
        GenerationSpec("x" * 11),
        config_from_values({"prompt_length_policy": "truncate"}, {}, automatic="local"),
        long_model,
    )
    assert request.prompt == "x" * 10
