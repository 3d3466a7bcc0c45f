import pytest

from tests.instant_backend import InstantBackend, StaticBackends
from tests.pngs import open_png
from text2image_hub.admin import config_from_values
from text2image_hub.backends import GenerationControl
from text2image_hub.backends.catalog import FLUX_SCHNELL, SDXL_BASE, local_model
from text2image_hub.backends.presets import IONOS, RemoteAccount
from text2image_hub.errors import (
    BackendUnavailableError,
    GenerationCancelledError,
    GpuOutOfMemoryError,
    InvalidRequestError,
)
from text2image_hub.imaging import ImageSize
from text2image_hub.service import ImageRequest, ImageService


def _service(**kwargs) -> tuple[ImageService, StaticBackends]:
    backends = StaticBackends(**kwargs)
    return ImageService(backends, "1.0.0"), backends


async def test_generate_makes_pngs_with_metadata_and_seeds():
    service, _ = _service()
    result = await service.generate(
        ImageRequest("a cat", count=2, size=ImageSize(256, 256), seeds=(5, 6)),
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
    assert (await service.generate(ImageRequest("x"), config)).size == ImageSize(1024, 768)
    assert (await service.generate(ImageRequest("x"), config_from_values({}, {}, automatic="local"))).size == ImageSize(
        512, 512
    )


async def test_random_seeds_differ():
    service, _ = _service()
    result = await service.generate(ImageRequest("x", count=3), config_from_values({}, {}, automatic="local"))
    assert result.seeds is not None
    assert len(set(result.seeds)) == 3


async def test_unsupported_size_names_supported_sizes():
    service, _ = _service()
    with pytest.raises(InvalidRequestError) as caught:
        await service.generate(
            ImageRequest("x", size=ImageSize(640, 480)), config_from_values({}, {}, automatic="local")
        )
    assert caught.value.code == "INVALID_SIZE"
    assert "512x512" in caught.value.user_message


async def test_negative_prompt_rejected_where_unsupported():
    service, _ = _service(local_backend=None, remote_backend=InstantBackend(backend_name="remote"))
    config = config_from_values({"backend": "remote"}, {}, automatic="local")
    with pytest.raises(InvalidRequestError) as caught:
        await service.generate(ImageRequest("x", negative_prompt="blur"), config)
    assert caught.value.code == "UNSUPPORTED_PARAMETER"


async def test_unknown_model_is_a_bad_request_naming_the_models():
    service, _ = _service()
    with pytest.raises(InvalidRequestError) as caught:
        await service.generate(ImageRequest("x", model="nope"), config_from_values({}, {}, automatic="local"))
    assert caught.value.code == "MODEL_NOT_FOUND"
    assert "test/instant" in caught.value.user_message


async def test_openai_model_names_mean_the_primary_model():
    service, _ = _service()
    result = await service.generate(ImageRequest("x", model="dall-e-3"), config_from_values({}, {}, automatic="local"))
    assert result.model == "test/instant"


async def test_local_without_model_is_unavailable():
    service, _ = _service(local_backend=None)
    with pytest.raises(BackendUnavailableError):
        await service.generate(ImageRequest("x"), config_from_values({}, {}, automatic="local"))


async def test_failover_runs_on_remote_when_local_fails():
    local = InstantBackend(fail_with=GpuOutOfMemoryError("oom"))
    remote = InstantBackend(backend_name="remote", model_id="test/remote")
    service, _ = _service(local_backend=local, remote_backend=remote)
    result = await service.generate(
        ImageRequest("x"), config_from_values({"backend": "local_then_remote"}, {}, automatic="local")
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
            ImageRequest("x", size=ImageSize(9, 9)),
            config_from_values({"backend": "local_then_remote"}, {}, automatic="local"),
        )
    assert remote.calls == []


async def test_cancelled_control_stops_generation():
    service, _ = _service()
    control = GenerationControl()
    control.cancel()
    with pytest.raises(GenerationCancelledError):
        await service.generate(ImageRequest("x"), config_from_values({}, {}, automatic="local"), control)


async def test_prompt_too_long_is_rejected_or_truncated_by_policy():
    service, _ = _service()
    model = InstantBackend().model
    long_model = model.__class__(**{**model.__dict__, "max_prompt_length": 10})
    with pytest.raises(InvalidRequestError) as caught:
        service.resolve(ImageRequest("x" * 11), config_from_values({}, {}, automatic="local"), long_model)
    assert "10" in caught.value.user_message
    request = service.resolve(
        ImageRequest("x" * 11),
        config_from_values({"prompt_length_policy": "truncate"}, {}, automatic="local"),
        long_model,
    )
    assert request.prompt == "x" * 10


FLUX_ON_CPU = local_model(FLUX_SCHNELL).model_info("cpu")
SDXL_BASE_ON_CPU = local_model(SDXL_BASE).model_info("cpu")
IONOS_MODEL = RemoteAccount.from_preset(IONOS, "token").model_info()
TASK = config_from_values({}, {}, automatic="local")


@pytest.mark.parametrize(
    ("model", "asked", "code", "param"),
    [
        (FLUX_ON_CPU, ImageRequest("x", size=ImageSize(640, 480)), "INVALID_SIZE", "size"),
        (
            FLUX_ON_CPU,
            ImageRequest("x", negative_prompt="blur", source="api"),
            "UNSUPPORTED_PARAMETER",
            "negative_prompt",
        ),
        (FLUX_ON_CPU, ImageRequest("x", steps=50, source="api"), "INVALID_STEPS", "steps"),
        (FLUX_ON_CPU, ImageRequest("x", guidance_scale=3.5, source="api"), "UNSUPPORTED_PARAMETER", "guidance_scale"),
        (SDXL_BASE_ON_CPU, ImageRequest("x", guidance_scale=20, source="api"), "INVALID_GUIDANCE", "guidance_scale"),
        (FLUX_ON_CPU, ImageRequest("x", count=13), "INVALID_N", "n"),
        (IONOS_MODEL, ImageRequest("x", steps=4, source="api"), "UNSUPPORTED_PARAMETER", "steps"),
        (IONOS_MODEL, ImageRequest("x", guidance_scale=0.5, source="api"), "UNSUPPORTED_PARAMETER", "guidance_scale"),
        (
            IONOS_MODEL,
            ImageRequest("x", negative_prompt="blur", source="api"),
            "UNSUPPORTED_PARAMETER",
            "negative_prompt",
        ),
        (IONOS_MODEL, ImageRequest("x", seeds=(7,), source="api"), "UNSUPPORTED_PARAMETER", "seed"),
        (IONOS_MODEL, ImageRequest("x" * 257), "PROMPT_TOO_LONG", "prompt"),
    ],
)
def test_resolve_refuses_what_the_model_cannot_take(model, asked, code, param):
    service, _ = _service()
    with pytest.raises(InvalidRequestError) as caught:
        service.resolve(asked, TASK, model)
    assert (caught.value.code, caught.value.param) == (code, param)


def test_resolve_accepts_twelve_images_and_what_the_model_takes():
    service, _ = _service()
    request = service.resolve(ImageRequest("x", count=12, steps=8, guidance_scale=0.0), TASK, FLUX_ON_CPU)
    assert request.count == 12
    assert request.seeds is not None
    assert len(request.seeds) == 12
    assert request.steps == 8


def test_resolve_drops_a_task_seed_for_a_model_that_takes_none():
    service, _ = _service()
    request = service.resolve(ImageRequest("x", count=2, seeds=(7, 8), source="task"), TASK, IONOS_MODEL)
    assert request.seeds is None


async def test_remote_images_claim_no_seed_in_their_metadata():
    service, _ = _service(remote_backend=InstantBackend(backend_name="remote", model_id="test/remote"))
    result = await service.generate(ImageRequest("x", count=2), config_from_values({"backend": "remote"}, {}))
    assert result.seeds is None
    assert all("Seed" not in open_png(image.png).text for image in result.images)
