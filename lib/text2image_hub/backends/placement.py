"""Getting a diffusers pipeline onto its device: read from disk (or adopted when built in memory), cast, placed on
the GPU (or with model CPU offload when the GPU has too little free memory), and the opt-in speed-ups applied.

bf16 (FLUX) or fp16 (SDXL) on CUDA, fp32 on the CPU. Everything here runs on the local backend's own thread.
This module imports torch and diffusers: import it only when the local backend is used.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch
from diffusers import DiffusionPipeline

from ..errors import BackendUnavailableError, ConfigurationError
from .catalog import LocalModelSpec

logger = logging.getLogger(__name__)

GIB = 1024**3
_LOAD_ERRORS: tuple[type[Exception], ...] = (OSError, ValueError, ImportError)


def resolve_device(device: str) -> torch.device:
    """``auto`` (CUDA when available, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    name = device.strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(name)
    except RuntimeError as exc:
        raise ConfigurationError(
            f"Unknown device {device[:40]!r}: use auto, cpu, cuda or cuda:N.", field="compute_device"
        ) from exc
    if resolved.type == "cpu":
        return resolved
    if resolved.type != "cuda":
        raise ConfigurationError(
            f"Unsupported device {device[:40]!r}: use auto, cpu, cuda or cuda:N.", field="compute_device"
        )
    if not torch.cuda.is_available():
        raise ConfigurationError(
            f"Device {name} was asked for (COMPUTE_DEVICE), but this container sees no CUDA GPU: enable the GPU on "
            "the deploy daemon, or choose the remote backend.",
            field="compute_device",
        )
    if resolved.index is not None and resolved.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ConfigurationError(
            f"Device {name} does not exist: this machine has {count} GPU(s).", field="compute_device"
        )
    return resolved


def route_library_logging() -> None:
    """diffusers and transformers log to stderr through handlers of their own and draw progress bars: route them
    through the app's logging instead, at ERROR (their warnings are for developers: "kept in float32", "install
    torchvision", …), with no bars. Called at the first load, not at import."""
    import diffusers.utils.logging as diffusers_logging
    import transformers.utils.logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):
        library.disable_default_handler()
        library.enable_propagation()
        library.disable_progress_bar()
        library.set_verbosity_error()


def _variant_on_disk(model_dir: Path, variant: str | None) -> str | None:
    """The spec's variant when its files are there (hub downloads); ``None`` for plain ``save_pretrained`` folders."""
    if variant is None:
        return None
    return variant if any(model_dir.glob(f"*/*.{variant}*.safetensors")) else None


def check_fp8(device: torch.device) -> None:
    if device.type != "cuda":
        raise ConfigurationError("The fp8 speed-up needs a CUDA GPU.", field="local_speedups")
    if torch.cuda.get_device_capability(device) < (8, 9):
        raise ConfigurationError(
            "The fp8 speed-up needs a GPU with compute capability 8.9 or newer (Ada, Hopper).", field="local_speedups"
        )
    try:
        import torchao  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError("The fp8 speed-up needs the torchao package.", field="local_speedups") from exc


def _quantize_fp8(module: torch.nn.Module) -> None:
    from torchao.quantization import quantize_

    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig

        config: Any = Float8DynamicActivationFloat8WeightConfig()
    except ImportError:  # torchao before 0.9 names it as a function
        from torchao.quantization import float8_dynamic_activation_float8_weight

        config = float8_dynamic_activation_float8_weight()
    quantize_(module, config)


def _apply_speedups(pipe: Any, spec: LocalModelSpec, speedups: frozenset[str], device: torch.device) -> None:
    denoiser = getattr(pipe, spec.denoiser)
    if "fuse_qkv" in speedups:
        denoiser.fuse_qkv_projections()
    if "channels_last" in speedups:
        if spec.denoiser == "unet":  # a transformer has no convolutions to speed up
            denoiser.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if "fp8" in speedups:
        _quantize_fp8(denoiser)
    if "compile" in speedups:
        if spec.denoiser == "transformer":
            # regional compilation: the same speed as compiling the whole transformer, in a fraction of the time
            denoiser.compile_repeated_blocks(fullgraph=True)
        else:
            denoiser.compile(fullgraph=True)
    logger.info("Speed-ups for %s on %s: %s", spec.id, device, ", ".join(sorted(speedups)) or "none")


def pipeline_dtype(spec: LocalModelSpec, device: torch.device) -> torch.dtype:
    dtype: torch.dtype = getattr(torch, spec.cuda_dtype) if device.type == "cuda" else torch.float32
    return dtype


def _check_pipeline_class(pipe: Any, spec: LocalModelSpec, where: object) -> None:
    if type(pipe).__name__ != spec.pipeline_class:
        raise ConfigurationError(
            f"{where} holds a {type(pipe).__name__}, not the {spec.pipeline_class} of {spec.id}.",
            field="local_model",
        )


def load_pipeline(
    spec: LocalModelSpec, model_dir: Path, device: torch.device, speedups: frozenset[str]
) -> tuple[Any, bool]:
    """Load on the worker thread; return the pipeline and whether model CPU offload is on."""
    dtype = pipeline_dtype(spec, device)
    start = time.perf_counter()
    if not (model_dir / "model_index.json").is_file():
        raise BackendUnavailableError(f"No diffusers weights (model_index.json) for {spec.id} in {model_dir}.")
    try:
        variant = _variant_on_disk(model_dir, spec.variant)
        pipe = DiffusionPipeline.from_pretrained(str(model_dir), local_files_only=True, dtype=dtype, variant=variant)  # type: ignore[no-untyped-call]
    except _LOAD_ERRORS as exc:
        raise BackendUnavailableError(f"Loading {spec.id} from {model_dir} failed: {exc}") from exc
    _check_pipeline_class(pipe, spec, model_dir)
    offloaded = place_pipeline(pipe, spec, device, speedups)
    logger.info(
        "Loaded %s on %s in %s (CPU offload: %s) in %.1f s",
        spec.id,
        device,
        str(dtype).removeprefix("torch."),
        offloaded,
        time.perf_counter() - start,
    )
    return pipe, offloaded


def _bytes_on(pipe: Any, device: torch.device) -> int:
    """The bytes of the pipeline's weights that already lie on ``device`` (0 for a pipeline read from disk)."""
    total = 0
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            for tensor in (*component.parameters(), *component.buffers()):
                if tensor.device.type == device.type and device.index in (None, tensor.device.index):
                    total += tensor.numel() * tensor.element_size()
    return total


def place_pipeline(pipe: Any, spec: LocalModelSpec, device: torch.device, speedups: frozenset[str]) -> bool:
    """Move the pipeline to ``device`` (or turn on model CPU offload) and apply the speed-ups; return whether
    offload is on. Weights already on the device count as free memory (``LocalBackend.from_pipeline``)."""
    pipe.set_progress_bar_config(disable=True)
    offloaded = False
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        free += _bytes_on(pipe, device)
        if free < spec.memory_gb * GIB:
            if free < spec.offload_memory_gb * GIB:
                logger.warning(
                    "%s needs about %.0f GB of GPU memory even with CPU offload; %s has %.1f GB free of %.1f GB",
                    spec.id,
                    spec.offload_memory_gb,
                    device,
                    free / GIB,
                    total / GIB,
                )
            pipe.enable_model_cpu_offload(device=device)
            offloaded = True
        else:
            pipe.to(device)
    _apply_speedups(pipe, spec, speedups, device)
    return offloaded


def adopt_pipeline(pipe: Any, spec: LocalModelSpec, device: torch.device, speedups: frozenset[str]) -> tuple[Any, bool]:
    """``load_pipeline`` for a pipeline built in memory: inference mode (no dropout, as ``from_pretrained`` leaves
    it), the device's dtype, then the same placement."""
    _check_pipeline_class(pipe, spec, "The pipeline")
    dtype = pipeline_dtype(spec, device)
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
            if getattr(component, "dtype", dtype) != dtype:
                component.to(dtype=dtype)
    return pipe, place_pipeline(pipe, spec, device, speedups)
