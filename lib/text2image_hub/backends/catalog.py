"""The models the local backend can run, and what each needs and allows.

This module imports neither torch nor diffusers: remote-only deployments import it to list and validate settings.
Every number here is per image at the model's default size; the CUDA timings are H100 estimates, the CPU timings
are for an 8-core x86 server in fp32 (``bench/local.py`` measures both).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import ConfigurationError
from ..imaging import ImageSize
from . import MAX_IMAGES, ModelInfo, StepRange

FLUX_SCHNELL = "black-forest-labs/FLUX.1-schnell"
SDXL_TURBO = "stabilityai/sdxl-turbo"
SDXL_BASE = "stabilityai/stable-diffusion-xl-base-1.0"

LOCAL_SPEEDUPS = frozenset({"compile", "channels_last", "fuse_qkv", "fp8"})
"""Opt-in speed-ups of the local backend; all are off by default."""


def _sizes(*pairs: tuple[int, int]) -> tuple[ImageSize, ...]:
    return tuple(ImageSize(width, height) for width, height in pairs)


@dataclass(frozen=True)
class LocalModelSpec:
    """One diffusers text-to-image model: how to fetch it, load it, call it, and what it costs.

    Tests build specs for tiny random pipelines with ``dataclasses.replace`` of a real spec (smaller ``sizes``,
    ``default_size`` and ``max_sequence_length``); nothing else here depends on the weights' real size.
    """

    id: str
    pipeline_class: str
    """The diffusers pipeline class named in the repository's ``model_index.json``."""
    scheduler_class: str
    """The scheduler class its ``model_index.json`` names: tells SDXL-Turbo's folder from SDXL base's."""
    components: tuple[str, ...]
    """Sub-folders of the repository that the pipeline loads (nothing else is downloaded)."""
    denoiser: str
    """The component that runs once per step: ``transformer`` or ``unet``."""
    variant: str | None
    """The weight-file variant to download and load (``fp16``), or ``None`` for the plain files."""
    cuda_dtype: str
    """``torch`` dtype name on CUDA (``bfloat16`` or ``float16``); the CPU always runs ``float32``."""
    sizes: tuple[ImageSize, ...]
    default_size: ImageSize
    steps: StepRange
    default_guidance: float
    max_guidance: float
    """Guidance scales from 0 to this are accepted; 0 for guidance-distilled models, which ignore it."""
    supports_negative_prompt: bool
    max_sequence_length: int | None
    """The T5 prompt length in tokens (FLUX), ``None`` for CLIP-only models."""
    memory_gb: float
    """GPU memory to hold every component on the GPU and make one image at the default size."""
    offload_memory_gb: float
    """GPU memory with model CPU offload (one component on the GPU at a time)."""
    image_memory_gb: float
    """Extra GPU memory for each further image in a batch, at the default size (scales with pixels)."""
    seconds_per_image_cuda: float
    seconds_per_image_cpu: float
    license: str
    max_images_per_request: int = MAX_IMAGES

    def model_info(self, device: str) -> ModelInfo:
        """What clients see of this model on ``device`` (``cpu``, ``cuda`` or ``cuda:N``)."""
        on_cuda = device.startswith("cuda")
        return ModelInfo(
            id=self.id,
            backend="local",
            sizes=self.sizes,
            default_size=self.default_size,
            steps=self.steps,
            default_guidance=self.default_guidance,
            supports_negative_prompt=self.supports_negative_prompt,
            seconds_per_image=self.seconds_per_image_cuda if on_cuda else self.seconds_per_image_cpu,
            max_guidance=self.max_guidance,
            accepts_seed=True,
            max_images_per_request=self.max_images_per_request,
            license=self.license,
        )


_FLUX_SIZES = _sizes(
    (1024, 1024),
    (512, 512),
    (768, 768),
    (1280, 1280),
    (1536, 1536),
    (1024, 768),
    (768, 1024),
    (1152, 896),
    (896, 1152),
    (1216, 832),
    (832, 1216),
    (1280, 720),
    (720, 1280),
    (1344, 768),
    (768, 1344),
    (1536, 640),
    (640, 1536),
)

# SDXL's training buckets (about one megapixel each); smaller sizes give broken images with the base model.
_SDXL_SIZES = _sizes(
    (1024, 1024),
    (1152, 896),
    (896, 1152),
    (1216, 832),
    (832, 1216),
    (1344, 768),
    (768, 1344),
    (1536, 640),
    (640, 1536),
)

# SDXL-Turbo was distilled at 512x512 and degrades quickly above about 768 pixels a side.
_SDXL_TURBO_SIZES = _sizes((512, 512), (768, 512), (512, 768), (640, 640), (768, 768))

_SDXL_COMPONENTS = ("scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet", "vae")

_MODELS = (
    LocalModelSpec(
        id=FLUX_SCHNELL,
        pipeline_class="FluxPipeline",
        scheduler_class="FlowMatchEulerDiscreteScheduler",
        components=("scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "transformer", "vae"),
        denoiser="transformer",
        variant=None,
        cuda_dtype="bfloat16",
        sizes=_FLUX_SIZES,
        default_size=ImageSize(1024, 1024),
        steps=StepRange(minimum=1, maximum=8, default=4),
        default_guidance=0.0,
        max_guidance=0.0,
        supports_negative_prompt=False,
        max_sequence_length=256,
        memory_gb=36.0,
        offload_memory_gb=26.0,
        image_memory_gb=2.5,
        seconds_per_image_cuda=1.1,
        seconds_per_image_cpu=900.0,
        license="apache-2.0",
    ),
    LocalModelSpec(
        id=SDXL_TURBO,
        pipeline_class="StableDiffusionXLPipeline",
        scheduler_class="EulerAncestralDiscreteScheduler",
        components=_SDXL_COMPONENTS,
        denoiser="unet",
        variant="fp16",
        cuda_dtype="float16",
        sizes=_SDXL_TURBO_SIZES,
        default_size=ImageSize(512, 512),
        steps=StepRange(minimum=1, maximum=4, default=1),
        default_guidance=0.0,
        max_guidance=0.0,
        supports_negative_prompt=False,
        max_sequence_length=None,
        memory_gb=9.0,
        offload_memory_gb=6.0,
        image_memory_gb=0.7,
        seconds_per_image_cuda=0.2,
        seconds_per_image_cpu=8.0,
        license="sai-nc-community (non-commercial)",
    ),
    LocalModelSpec(
        id=SDXL_BASE,
        pipeline_class="StableDiffusionXLPipeline",
        scheduler_class="EulerDiscreteScheduler",
        components=_SDXL_COMPONENTS,
        denoiser="unet",
        variant="fp16",
        cuda_dtype="float16",
        sizes=_SDXL_SIZES,
        default_size=ImageSize(1024, 1024),
        steps=StepRange(minimum=10, maximum=50, default=30),
        default_guidance=6.0,
        max_guidance=15.0,
        supports_negative_prompt=True,
        max_sequence_length=None,
        memory_gb=12.0,
        offload_memory_gb=8.0,
        image_memory_gb=2.5,
        seconds_per_image_cuda=4.0,
        seconds_per_image_cpu=450.0,
        license="openrail++",
    ),
)


def local_models() -> tuple[LocalModelSpec, ...]:
    """Every model the local backend can run, the CUDA default first."""
    return _MODELS


def local_model(model_id: str) -> LocalModelSpec:
    """The spec of ``model_id``; an unknown id is a ``ConfigurationError`` naming the known ones."""
    for spec in _MODELS:
        if spec.id == model_id:
            return spec
    known = ", ".join(spec.id for spec in _MODELS)
    raise ConfigurationError(
        f"Unknown local model {model_id[:100]!r}; choose one of: {known}.",
        field="local_model",
    )


def default_local_model(device: str) -> LocalModelSpec:
    """FLUX.1-schnell on CUDA; SDXL-Turbo on the CPU.

    ``bench/local.py`` measured SDXL-Turbo at 512x512, one step, fp32: 19 s on 2 cores (text encoders ~1 s, UNet step
    ~7 s, VAE decode ~11.5 s), so about 6-8 s on an 8-core server. FLUX.1-schnell needs ~48 GB of RAM in fp32 and
    on the order of ten minutes per image there; SDXL base, 30 steps with guidance at 1024x1024, several minutes.
    """
    return local_model(FLUX_SCHNELL if device.startswith("cuda") else SDXL_TURBO)


def model_for_folder(pipeline_class: str, scheduler_class: str, chosen: str = "") -> LocalModelSpec:
    """The catalog entry a weights folder holds, from the classes its ``model_index.json`` names.

    ``chosen`` is the admin's ``local_model`` ("" for none): it must be a model of the folder's pipeline class. Without
    it, SDXL-Turbo and SDXL base (one pipeline class) are told apart by their schedulers. Anything that matches no
    entry, or more than one, is a ``ConfigurationError`` on ``model_path`` (or on ``local_model`` when it contradicts
    the folder) that says what the folder holds.
    """
    candidates = [spec for spec in _MODELS if spec.pipeline_class == pipeline_class]
    held = f"a {pipeline_class or 'folder without a pipeline class'}"
    if chosen:
        spec = local_model(chosen)
        if spec in candidates:
            return spec
        raise ConfigurationError(
            f"The local model is set to {spec.id}, but the folder in T2I_MODEL_PATH holds {held} "
            f"(not the {spec.pipeline_class} of {spec.id}): set local_model to match the folder, or point "
            "T2I_MODEL_PATH at the right folder.",
            field="local_model",
        )
    if len(candidates) > 1:
        by_scheduler = [spec for spec in candidates if spec.scheduler_class == scheduler_class]
        candidates = by_scheduler if len(by_scheduler) == 1 else candidates
    if len(candidates) == 1:
        return candidates[0]
    supported = ", ".join(f"{spec.id} ({spec.pipeline_class})" for spec in _MODELS)
    problem = "could be several models" if candidates else "matches no supported model"
    raise ConfigurationError(
        f"The folder in T2I_MODEL_PATH holds {held} with a {scheduler_class or 'unknown'} scheduler, which "
        f"{problem}. Supported: {supported}; set local_model to say which it is.",
        field="model_path",
    )


def check_speedups(names: Iterable[str]) -> frozenset[str]:
    """The speed-up names as a set; an unknown name is a ``ConfigurationError`` on ``local_speedups``."""
    chosen = frozenset(name.strip() for name in names if name.strip())
    unknown = sorted(chosen - LOCAL_SPEEDUPS)
    if unknown:
        raise ConfigurationError(
            f"Unknown local speed-up(s) {', '.join(unknown)}; choose from: {', '.join(sorted(LOCAL_SPEEDUPS))}.",
            field="local_speedups",
        )
    return chosen
