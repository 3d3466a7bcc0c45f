import subprocess
import sys

import pytest

from text2image_hub.backends.catalog import (
    FLUX_SCHNELL,
    LOCAL_SPEEDUPS,
    SDXL_BASE,
    SDXL_TURBO,
    check_speedups,
    default_local_model,
    local_model,
    local_models,
)
from text2image_hub.errors import ConfigurationError
from text2image_hub.imaging import ImageSize


def test_local_models_lists_flux_first_then_sdxl() -> None:
    assert [spec.id for spec in local_models()] == [FLUX_SCHNELL, SDXL_TURBO, SDXL_BASE]


@pytest.mark.parametrize("spec", local_models(), ids=lambda spec: spec.id)
def test_local_models_defaults_are_within_their_own_limits(spec) -> None:
    assert spec.default_size in spec.sizes
    assert len(set(spec.sizes)) == len(spec.sizes)
    assert spec.steps.minimum <= spec.steps.default <= spec.steps.maximum
    assert 0.0 <= spec.default_guidance <= spec.max_guidance
    assert 0 < spec.offload_memory_gb < spec.memory_gb
    assert spec.denoiser in spec.components
    assert spec.seconds_per_image_cuda < spec.seconds_per_image_cpu
    assert spec.license


@pytest.mark.parametrize(("model_id", "multiple"), [(FLUX_SCHNELL, 16), (SDXL_TURBO, 64), (SDXL_BASE, 64)])
def test_local_models_sizes_are_multiples_the_model_needs(model_id: str, multiple: int) -> None:
    for size in local_model(model_id).sizes:
        assert size.width % multiple == 0
        assert size.height % multiple == 0
        assert 512 <= min(size.width, size.height) <= max(size.width, size.height) <= 1536


def test_local_model_flux_schnell_is_four_steps_without_guidance_in_bf16() -> None:
    spec = local_model(FLUX_SCHNELL)

    assert spec.steps.default == 4
    assert spec.default_guidance == spec.max_guidance == 0.0
    assert spec.max_sequence_length == 256
    assert spec.cuda_dtype == "bfloat16"
    assert spec.default_size == ImageSize(1024, 1024)
    assert not spec.supports_negative_prompt
    assert spec.license == "apache-2.0"
    assert spec.pipeline_class == "FluxPipeline"


def test_local_model_sdxl_turbo_is_one_step_at_512_non_commercial() -> None:
    spec = local_model(SDXL_TURBO)

    assert (spec.steps.minimum, spec.steps.default, spec.steps.maximum) == (1, 1, 4)
    assert spec.default_guidance == 0.0
    assert spec.default_size == ImageSize(512, 512)
    assert spec.variant == "fp16"
    assert "non-commercial" in spec.license


def test_local_model_sdxl_base_takes_guidance_and_negative_prompt() -> None:
    spec = local_model(SDXL_BASE)

    assert spec.steps.default == 30
    assert 5.0 <= spec.default_guidance <= 7.0
    assert spec.supports_negative_prompt
    assert spec.default_size == ImageSize(1024, 1024)
    assert spec.license == "openrail++"


def test_local_model_unknown_is_configuration_error_listing_known() -> None:
    with pytest.raises(ConfigurationError) as caught:
        local_model("runwayml/stable-diffusion-v1-5")

    assert caught.value.field == "local_model"
    assert FLUX_SCHNELL in str(caught.value)


@pytest.mark.parametrize(
    ("device", "expected"), [("cuda", FLUX_SCHNELL), ("cuda:1", FLUX_SCHNELL), ("cpu", SDXL_TURBO)]
)
def test_default_local_model_is_flux_on_cuda_and_turbo_on_cpu(device: str, expected: str) -> None:
    assert default_local_model(device).id == expected


def test_model_info_uses_the_device_timing() -> None:
    spec = local_model(SDXL_TURBO)

    on_gpu = spec.model_info("cuda:0")
    on_cpu = spec.model_info("cpu")

    assert on_gpu.seconds_per_image == spec.seconds_per_image_cuda
    assert on_cpu.seconds_per_image == spec.seconds_per_image_cpu
    assert on_cpu.backend == "local"
    assert on_cpu.id == SDXL_TURBO
    assert on_cpu.sizes == spec.sizes
    assert on_cpu.steps == spec.steps
    assert on_cpu.license == spec.license


def test_check_speedups_accepts_known_names_and_ignores_blanks() -> None:
    assert check_speedups([" compile", "fp8", ""]) == frozenset({"compile", "fp8"})
    assert check_speedups(LOCAL_SPEEDUPS) == LOCAL_SPEEDUPS
    assert check_speedups([]) == frozenset()


def test_check_speedups_unknown_is_configuration_error() -> None:
    with pytest.raises(ConfigurationError) as caught:
        check_speedups(["compile", "turbo-mode"])

    assert caught.value.field == "local_speedups"
    assert "turbo-mode" in str(caught.value)


def test_catalog_and_weights_import_without_torch() -> None:
    code = (
        "import sys\n"
        "import text2image_hub.backends.catalog, text2image_hub.backends.weights\n"
        "heavy = {'torch', 'diffusers', 'transformers', 'huggingface_hub'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)

    assert result.returncode == 0, result.stderr
