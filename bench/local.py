"""The local backend on the real FLUX.1-schnell and SDXL architectures, with random weights (no hub access).

Each component is built from its published configuration (written out below) on the meta device, allocated on the
target device in the dtype it runs there (``to_empty``), then initialised in place: normal(0, 0.02) weights, zero
biases, unit norm weights (finite in bf16/fp16, so the pipelines make finite, noisy images). The tokenizers are the
local ones of ``tests/tiny_models.py``. A GPU run so builds FLUX.1-schnell (12B transformer, T5-XXL, CLIP-L, VAE) in
seconds, and hands the pipeline to ``LocalBackend.from_pipeline``: the same dtype cast, placement (offload),
speed-ups and compile warm-up as a load from disk, without writing 33 GB. Random weights cost exactly what trained
ones do; the images are noise.

The figures, per section (a model with a set of speed-ups):
- ``build_s``: meta device → target device → initialised (no disk; not a load time);
- ``ready_s``: ``LocalBackend.from_pipeline`` (placement, speed-ups, and the compile warm-up when ``compile``);
- ``latency_s``: median of ``repeats`` images at batch 1, after one warm-up image; ``peak_gb``: peak GPU memory then;
- ``images_per_s``: at batch 1 (from the latency), 2 and 4 (one pipeline call each, after a warm-up call);
- ``disk_load``: save with ``save_pretrained`` (SDXL as the ``fp16`` variant), then ``LocalBackend.load`` from disk,
  right after writing (warm page cache): where it is cheap (SDXL-Turbo, the tiny models), never the 33 GB FLUX;
- checks: ``cancel`` (a generation cancelled at its first step, and one cancelled mid-run from the event loop, stop
  within one step; the next generation works), ``oom`` (CUDA: with the allocator capped just above the weights,
  8 images at the largest size fail with the user message, and the next generation works).

Run (from the repository root; PYTHONPATH=lib:.):
  python bench/local.py --quick                    # tiny sizes, eager, on the CPU: seconds (part of make test)
  python bench/local.py                            # CPU: SDXL-Turbo at 512x512, 1-4 steps (real size, fp32)
  python bench/local.py --plan gpu --device cuda   # issue 14's GPU matrix, time-boxed (bench/gpu.sh runs it)
  python bench/local.py --plan gpu --tiny          # the same matrix at tiny sizes on the CPU (the dry run)
Options: --models flux,sdxl-turbo,sdxl  --speedups fuse_qkv,channels_last,compile,fp8  --steps 1,4  --repeats N
         --group NAME (one group of the GPU plan)  --deadline EPOCH  --jsonl FILE (rows as they come)  --json FILE
         --markdown FILE
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import dataclasses
import gc
import itertools
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import init_empty_weights
from diffusers import (
    AutoencoderKL,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from report import markdown
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    T5Config,
    T5EncoderModel,
)

from tests.tiny_models import tiny_clip_tokenizer
from tests.tiny_models import tiny_t5_tokenizer as tiny_t5
from text2image_hub.backends import GenerationControl, ResolvedRequest
from text2image_hub.backends.catalog import FLUX_SCHNELL, SDXL_BASE, SDXL_TURBO, LocalModelSpec, local_model
from text2image_hub.backends.local import MAX_BATCH, LocalBackend
from text2image_hub.errors import GenerationCancelledError, GpuOutOfMemoryError
from text2image_hub.imaging import ImageSize

# --- The published configurations (config.json of each component), trimmed to the non-default keys ---------------

CLIP_L: dict[str, Any] = {  # openai/clip-vit-large-patch14 text tower: text_encoder of FLUX and SDXL
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "max_position_embeddings": 77,
    "vocab_size": 49408,
    "hidden_act": "quick_gelu",
    "projection_dim": 768,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}
CLIP_BIG_G: dict[str, Any] = {  # laion/CLIP-ViT-bigG-14 text tower: SDXL's text_encoder_2 (with projection)
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "max_position_embeddings": 77,
    "vocab_size": 49408,
    "hidden_act": "gelu",
    "projection_dim": 1280,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "pad_token_id": 1,
}
T5_XXL: dict[str, Any] = {  # google/t5-v1_1-xxl encoder: FLUX's text_encoder_2
    "d_model": 4096,
    "d_ff": 10240,
    "d_kv": 64,
    "num_heads": 64,
    "num_layers": 24,
    "vocab_size": 32128,
    "feed_forward_proj": "gated-gelu",
    "relative_attention_num_buckets": 32,
    "relative_attention_max_distance": 128,
    "layer_norm_epsilon": 1e-6,
    "pad_token_id": 0,
    "eos_token_id": 1,
}
FLUX_TRANSFORMER: dict[str, Any] = {
    "patch_size": 1,
    "in_channels": 64,
    "num_layers": 19,
    "num_single_layers": 38,
    "attention_head_dim": 128,
    "num_attention_heads": 24,
    "joint_attention_dim": 4096,
    "pooled_projection_dim": 768,
    "guidance_embeds": False,
    "axes_dims_rope": [16, 56, 56],
}
FLUX_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 16,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.3611,
    "shift_factor": 0.1159,
    "use_quant_conv": False,
    "use_post_quant_conv": False,
    "force_upcast": True,
}
FLUX_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "use_dynamic_shifting": False,
    "base_shift": 0.5,
    "max_shift": 1.15,
    "base_image_seq_len": 256,
    "max_image_seq_len": 4096,
}
SDXL_UNET: dict[str, Any] = {
    "sample_size": 128,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [320, 640, 1280],
    "layers_per_block": 2,
    "attention_head_dim": [5, 10, 20],
    "transformer_layers_per_block": [1, 2, 10],
    "cross_attention_dim": 2048,
    "use_linear_projection": True,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 2816,
    "norm_num_groups": 32,
}
SDXL_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 1024,
    "scaling_factor": 0.13025,
    "force_upcast": True,
}
SDXL_BETAS: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
}
SDXL_TURBO_SCHEDULER = SDXL_BETAS | {"steps_offset": 1, "timestep_spacing": "trailing"}
SDXL_BASE_SCHEDULER = SDXL_BETAS | {"steps_offset": 1, "timestep_spacing": "leading", "interpolation_type": "linear"}

# --- Tiny sizes: the same classes and block types, narrow and shallow (--quick, --tiny) ---------------------------

_TINY_CLIP: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 37,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "projection_dim": 32,
    "vocab_size": 1000,
}
_TINY_VAE: dict[str, Any] = {"block_out_channels": [8, 8, 8, 8], "layers_per_block": 1, "norm_num_groups": 4}
TINY: dict[str, dict[str, Any]] = {
    "clip_l": _TINY_CLIP,
    "clip_big_g": _TINY_CLIP,
    "t5_xxl": {
        "d_model": 32,
        "d_ff": 37,
        "d_kv": 8,
        "num_heads": 4,
        "num_layers": 2,
        "vocab_size": 1000,
        "relative_attention_num_buckets": 8,
    },
    "flux_transformer": {
        "num_layers": 1,
        "num_single_layers": 1,
        "attention_head_dim": 16,
        "num_attention_heads": 2,
        "joint_attention_dim": 32,
        "pooled_projection_dim": 32,
        "axes_dims_rope": [4, 4, 8],
    },
    "flux_vae": _TINY_VAE | {"sample_size": 64},
    "sdxl_unet": {
        "sample_size": 8,
        "block_out_channels": [32, 64, 64],
        "layers_per_block": 1,
        "attention_head_dim": [2, 4, 4],
        "transformer_layers_per_block": [1, 1, 1],
        "cross_attention_dim": 64,  # the two text encoders' hidden sizes
        "addition_time_embed_dim": 8,
        "projection_class_embeddings_input_dim": 80,  # 6 * 8 + text_encoder_2's projection
        "norm_num_groups": 8,
    },
    "sdxl_vae": _TINY_VAE | {"sample_size": 64},
}
TINY_SIZES = (ImageSize(64, 64), ImageSize(128, 64))
"""Multiples of 32: the VAE's factor 8 times FLUX's 2x2 packing and the tiny UNet's two downsamplings."""

MODELS = {"flux": FLUX_SCHNELL, "sdxl-turbo": SDXL_TURBO, "sdxl": SDXL_BASE}
_NORMS = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.RMSNorm)
_MIB = 1024**2


def model_spec(key: str, *, tiny: bool) -> LocalModelSpec:
    """The catalog's spec of ``MODELS[key]``; at tiny sizes, the sizes the tiny components can make."""
    spec = local_model(MODELS[key])
    if not tiny:
        return spec
    return dataclasses.replace(
        spec,
        sizes=TINY_SIZES,
        default_size=TINY_SIZES[0],
        max_sequence_length=32 if spec.max_sequence_length is not None else None,
    )


def _config(name: str, published: dict[str, Any], tiny: bool) -> dict[str, Any]:
    return published | TINY[name] if tiny else dict(published)


def _make(cls: Any, *args: Any, **kwargs: Any) -> Any:
    return cls(*args, **kwargs)


@torch.no_grad()
def _initialise(module: torch.nn.Module) -> None:
    """Fast, deterministic, plausible weights, in place: normal(0, 0.02), zero biases, unit norm weights."""
    for sub in module.modules():
        norm = isinstance(sub, _NORMS) or "Norm" in type(sub).__name__
        for name, param in sub.named_parameters(recurse=False):
            if name == "bias":
                param.zero_()
            elif norm:
                param.fill_(1.0)
            else:
                param.normal_(0.0, 0.02)


def build_in_place(factory: Callable[[], Any], device: torch.device, dtype: torch.dtype) -> Any:
    """``factory()`` constructed on the meta device, allocated on ``device`` in ``dtype``, initialised there.

    Buffers (CLIP's position ids) are made on the CPU as usual and copied over; tied weights (T5's embeddings) are
    tied again after allocation.
    """
    with init_empty_weights(include_buffers=False):
        module = factory()
    buffers = {name: buffer.clone() for name, buffer in module.named_buffers()}
    # free on the meta device: the weights are allocated once, in their final dtype (nn.Module's own ``to``:
    # diffusers' warns about fp32 modules on every dtype cast, even with none to keep)
    torch.nn.Module.to(module, dtype)
    module.to_empty(device=device)
    with torch.no_grad():
        for name, value in buffers.items():
            module.get_buffer(name).copy_(value)
    if hasattr(module, "tie_weights"):
        module.tie_weights()
    _initialise(module)
    return module.eval()


def build_pipeline(key: str, device: torch.device, *, tiny: bool, seed: int = 0) -> Any:
    """``MODELS[key]``'s pipeline with random weights, built in place on ``device`` in the dtype it runs there."""
    spec = model_spec(key, tiny=tiny)
    dtype: torch.dtype = getattr(torch, spec.cuda_dtype) if device.type == "cuda" else torch.float32
    torch.manual_seed(seed)

    def on_device(factory: Callable[[], Any]) -> Any:
        return build_in_place(factory, device, dtype)

    clip_l = CLIPTextConfig(**_config("clip_l", CLIP_L, tiny))
    if key == "flux":
        t5 = T5Config(**_config("t5_xxl", T5_XXL, tiny))
        return _make(
            FluxPipeline,
            scheduler=_make(FlowMatchEulerDiscreteScheduler, **FLUX_SCHEDULER),
            vae=on_device(lambda: _make(AutoencoderKL, **_config("flux_vae", FLUX_VAE, tiny))),
            text_encoder=on_device(lambda: _make(CLIPTextModel, clip_l)),
            tokenizer=tiny_clip_tokenizer(),
            text_encoder_2=on_device(lambda: _make(T5EncoderModel, t5)),
            tokenizer_2=tiny_t5(),
            transformer=on_device(
                lambda: _make(FluxTransformer2DModel, **_config("flux_transformer", FLUX_TRANSFORMER, tiny))
            ),
        )
    turbo = key == "sdxl-turbo"
    unet = _config("sdxl_unet", SDXL_UNET | ({"sample_size": 64} if turbo else {}), tiny)
    vae = _config("sdxl_vae", SDXL_VAE | ({"sample_size": 512} if turbo else {}), tiny)
    clip_big_g = CLIPTextConfig(**_config("clip_big_g", CLIP_BIG_G, tiny))
    scheduler = (
        _make(EulerAncestralDiscreteScheduler, **SDXL_TURBO_SCHEDULER)
        if turbo
        else _make(EulerDiscreteScheduler, **SDXL_BASE_SCHEDULER)
    )
    return _make(
        StableDiffusionXLPipeline,
        vae=on_device(lambda: _make(AutoencoderKL, **vae)),
        text_encoder=on_device(lambda: _make(CLIPTextModel, clip_l)),
        text_encoder_2=on_device(lambda: _make(CLIPTextModelWithProjection, clip_big_g)),
        tokenizer=tiny_clip_tokenizer(),
        tokenizer_2=tiny_clip_tokenizer(),
        unet=on_device(lambda: _make(UNet2DConditionModel, **unet)),
        scheduler=scheduler,
    )


# --- What is measured and how it is reported ----------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """One model with one set of speed-ups: its latency, batch throughput and checks."""

    key: str
    speedups: frozenset[str]
    sizes: tuple[ImageSize, ...] | None  # None: the spec's default size
    steps: tuple[int | None, ...]
    batches: tuple[int, ...]
    checks: tuple[str, ...] = ()
    group: str = ""
    estimate_s: float = 0.0
    """A guess of its GPU cost, only to skip what cannot finish before the deadline (not a reported figure)."""
    reserve_s: float = 0.0
    """Seconds its batch sweep leaves to the sections after it in its group (compile and fp8 after compile+fp8)."""

    @property
    def label(self) -> str:
        return "+".join(sorted(self.speedups)) or "eager"

    @property
    def name(self) -> str:
        return f"{self.key}:{self.label}"


class Sink:
    """Prints each row as it comes and appends it to a JSON-lines file, so a run cut short keeps what it measured."""

    def __init__(self, jsonl: Path | None) -> None:
        self.rows: list[dict[str, Any]] = []
        self._jsonl = jsonl

    def emit(self, row: dict[str, Any], line: str) -> None:
        self.rows.append(row)
        print(line, flush=True)
        if self._jsonl is not None:
            with self._jsonl.open("a", encoding="utf-8") as file:
                file.write(json.dumps(row) + "\n")


def _version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def environment(device: torch.device) -> dict[str, Any]:
    env: dict[str, Any] = {
        "kind": "env",
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "device": str(device),
        **{name: _version(name) for name in ("torch", "diffusers", "transformers", "accelerate", "torchao")},
    }
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        env |= {
            "gpu": properties.name,
            "gpu_memory_gb": round(properties.total_memory / 1024**3, 1),
            "capability": ".".join(map(str, torch.cuda.get_device_capability(device))),
            "cuda": torch.version.cuda,
        }
    return env


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gb(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 1024**3, 2) if device.type == "cuda" else None


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif sys.platform == "linux":
        # glibc keeps freed tensors of a worker thread's arena; without this, a second full-size pipeline loaded
        # on another thread (the disk load) comes on top of the first one's memory on the CPU
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def _request(size: ImageSize, count: int, steps: int | None, seed: int) -> ResolvedRequest:
    seeds = tuple(range(seed, seed + count))
    return ResolvedRequest(
        prompt="a watercolor fox in a snowy forest", size=size, count=count, seeds=seeds, steps=steps
    )


async def _timed(backend: LocalBackend, size: ImageSize, count: int, steps: int | None, seed: int) -> tuple[float, Any]:
    device = torch.device(backend.device)
    _sync(device)
    start = time.perf_counter()
    images = await backend.generate(_request(size, count, steps, seed), GenerationControl())
    _sync(device)
    return time.perf_counter() - start, images


def _left(deadline: float) -> float:
    return deadline - time.time()


async def measure(
    backend: LocalBackend,
    section: Section,
    sink: Sink,
    *,
    repeats: int,
    deadline: float,
    extra: dict[str, Any],
    scale: float,
) -> None:
    """Latency at batch 1 for each size and step count, then images/s at the section's batches."""
    spec = backend.spec
    device = torch.device(backend.device)
    for size in section.sizes or (spec.default_size,):
        for steps in section.steps:
            warm_up_s, _images = await _timed(backend, size, 1, steps, seed=0)  # warm-up (compilation for this size)
            _reset_peak(device)
            runs = [await _timed(backend, size, 1, steps, seed=i) for i in range(repeats)]
            latency = statistics.median(elapsed for elapsed, _images in runs)
            pixels = np.asarray(runs[-1][1][0].image.convert("RGB"), dtype=np.float32)
            row: dict[str, Any] = {
                "kind": "latency",
                "model": spec.id,
                "speedups": section.label,
                "size": str(size),
                "steps": steps if steps is not None else spec.steps.default,
                **extra,
                "latency_s": round(latency, 4),
                "repeats": repeats,
                "peak_gb": _peak_gb(device),
                "pixel_std": round(float(pixels.std()), 1),
                "images_per_s": {"1": round(1 / latency, 3)},
                "peak_gb_batch": {"1": _peak_gb(device)},
                "warm_up_s": {"1": round(warm_up_s, 3)},
            }
            for batch in section.batches:
                if batch == 1:
                    continue
                recompile_s = extra["ready_s"] if "compile" in section.speedups else 0.0  # a new batch size
                if _left(deadline) - section.reserve_s * scale < recompile_s + 3 * batch * latency + 5:
                    row.setdefault("notes", []).append(f"batch {batch} skipped: deadline")
                    continue
                warm_up_s, _images = await _timed(backend, size, batch, steps, seed=100)  # a recompile when compiled
                row["warm_up_s"][str(batch)] = round(warm_up_s, 3)
                _reset_peak(device)
                elapsed, _images = await _timed(backend, size, batch, steps, seed=200)
                row["images_per_s"][str(batch)] = round(batch / elapsed, 3)
                row["peak_gb_batch"][str(batch)] = _peak_gb(device)
            peak = f", peak {row['peak_gb']} GB" if row["peak_gb"] is not None else ""
            rates = ", ".join(f"b{batch}: {rate}/s" for batch, rate in row["images_per_s"].items())
            sink.emit(
                row,
                f"    {spec.id} [{section.label}] {size} {row['steps']} step(s): {latency:.3f} s/image "
                f"(median of {repeats}){peak}; images/s {rates}",
            )


class _CancelAtFirstStep(GenerationControl):
    def report_progress(self, fraction: float) -> None:
        self.cancel()
        super().report_progress(fraction)


async def check_cancel(backend: LocalBackend, sink: Sink, *, slow_steps: bool) -> None:
    """A generation cancelled at its first step runs one step; one cancelled mid-run from the event loop starts at
    most one step after ``cancel()``; the next generation works. ``slow_steps`` makes each step last 20 ms at least
    (tiny models, whose steps take a millisecond, would finish before the cancellation lands)."""
    spec = backend.spec
    device = torch.device(backend.device)
    size = spec.default_size
    starts: list[float] = []

    def on_step(_module: Any, _args: Any) -> None:
        _sync(device)  # the step before has run on the GPU, not just been queued: the times are the GPU's
        if slow_steps:
            time.sleep(0.02)
        starts.append(time.perf_counter())

    denoiser = getattr(backend.pipeline, spec.denoiser)
    hook = denoiser.register_forward_pre_hook(on_step)
    steps = min(spec.steps.maximum, 8)
    try:
        _elapsed, _images = await _timed(backend, size, 1, steps, seed=0)
        step_s = statistics.median(later - earlier for earlier, later in itertools.pairwise(starts))
        starts.clear()
        first_ok = False
        try:
            await backend.generate(_request(size, 2, steps, 1), _CancelAtFirstStep())
        except GenerationCancelledError:
            first_ok = len(starts) == 1
        first_steps = len(starts)

        starts.clear()
        control = GenerationControl()
        task = asyncio.ensure_future(backend.generate(_request(size, 1, steps, 2), control))
        await asyncio.sleep(2.5 * step_s)
        cancelled_at = time.perf_counter()
        control.cancel()
        mid_ok = False
        try:
            await task
        except GenerationCancelledError:
            mid_ok = True
        _sync(device)
        stop_s = time.perf_counter() - cancelled_at
        after = sum(1 for start in starts if start > cancelled_at)
        next_ok = len((await _timed(backend, size, 1, None, seed=3))[1]) == 1
    finally:
        hook.remove()
    passed = first_ok and mid_ok and after <= 1 and next_ok
    row = {
        "kind": "check",
        "check": "cancel",
        "model": spec.id,
        "passed": passed,
        "step_s": round(step_s, 4),
        "stop_s": round(stop_s, 4),
        "steps_started_after_cancel": after,
        "detail": (
            f"cancelled at the first step: {first_steps} step(s) ran; cancelled mid-run ({size}, {steps} steps, "
            f"{step_s * 1000:.0f} ms a step{' (slowed to 20 ms)' if slow_steps else ''}): "
            f"{'stopped' if mid_ok else 'NOT stopped'} {stop_s * 1000:.0f} ms after cancel() (GPU queue drained), "
            f"{after} step(s) started after it; next generation {'works' if next_ok else 'FAILED'}"
        ),
    }
    sink.emit(row, f"    check cancel [{spec.id}]: {'passed' if passed else 'FAILED'}: {row['detail']}")


async def check_oom(backend: LocalBackend, sink: Sink) -> None:
    """With the allocator capped 128 MiB above what it holds, 8 images at the largest size fail with the user
    message (the batch first, then one by one); with the cap lifted, the next generation works."""
    spec = backend.spec
    device = torch.device(backend.device)
    largest = max(spec.sizes, key=lambda size: size.pixels)
    _free(device)
    total = torch.cuda.get_device_properties(device).total_memory
    cap = (torch.cuda.memory_reserved(device) + 128 * _MIB) / total
    caught: GpuOutOfMemoryError | None = None
    start = time.perf_counter()
    torch.cuda.set_per_process_memory_fraction(min(cap, 1.0), device)
    try:
        await backend.generate(_request(largest, 8, None, 0), GenerationControl())
    except GpuOutOfMemoryError as exc:
        caught = exc
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, device)
    failed_s = time.perf_counter() - start
    elapsed, images = await _timed(backend, spec.default_size, 1, None, seed=1)
    message = caught.user_message if caught is not None else ""
    passed = message.startswith("Image too large for this server's GPU") and len(images) == 1
    row = {
        "kind": "check",
        "check": "oom",
        "model": spec.id,
        "passed": passed,
        "detail": (
            f"8 x {largest} under a cap of {cap:.3f} of the GPU: "
            + (f"failed in {failed_s:.1f} s with {message!r}" if caught is not None else "did NOT fail")
            + f"; next {spec.default_size} image in {elapsed:.2f} s"
        ),
    }
    sink.emit(row, f"    check oom [{spec.id}]: {'passed' if passed else 'FAILED'}: {row['detail']}")


async def measure_disk_load(
    backend: LocalBackend, key: str, sink: Sink, *, scratch: Path, tiny: bool, deadline: float
) -> None:
    """Save the pipeline as the hub lays it out (the spec's CUDA dtype and variant), close ``backend`` (so that two
    copies never share the memory), then time ``LocalBackend.load`` from those files. The section's last check."""
    spec = backend.spec
    device = torch.device(backend.device)
    folder = scratch / f"disk-{key}"
    start = time.perf_counter()
    for component in backend.pipeline.components.values():
        if isinstance(component, torch.nn.Module):
            torch.nn.Module.to(component, getattr(torch, spec.cuda_dtype))  # no diffusers warning (see above)
    backend.pipeline.save_pretrained(folder, variant=spec.variant)
    save_s = time.perf_counter() - start
    await backend.aclose()
    _free(device)
    size_mb = sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) / _MIB
    try:
        if _left(deadline) < 2 * save_s + 10:
            sink.emit({"kind": "skipped", "name": f"{key}:disk_load", "reason": "deadline"}, "    disk load skipped")
            return
        start = time.perf_counter()
        loaded = await LocalBackend.load(spec, folder, device=str(device), max_batch=MAX_BATCH)
        _sync(device)
        load_s = time.perf_counter() - start
        try:
            first_s, _images = await _timed(loaded, spec.default_size, 1, None, seed=0)
        finally:
            await loaded.aclose()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        _free(device)
    row = {
        "kind": "disk_load",
        "model": spec.id,
        "tiny": tiny,
        "files_mb": round(size_mb, 1),
        "dtype": spec.cuda_dtype,
        "save_s": round(save_s, 2),
        "load_s": round(load_s, 2),
        "first_image_s": round(first_s, 3),
    }
    sink.emit(
        row,
        f"    disk load [{spec.id}]: {size_mb:.1f} MB of {spec.cuda_dtype} files saved in {save_s:.1f} s, "
        f"LocalBackend.load {load_s:.2f} s (warm page cache), first image {first_s:.2f} s",
    )


async def run_section(
    section: Section,
    sink: Sink,
    *,
    device: torch.device,
    tiny: bool,
    repeats: int,
    deadline: float,
    scratch: Path,
) -> None:
    scale = 0.2 if tiny else 1.0  # tiny models: a fifth of the GPU guesses (a guess too)
    estimate = section.estimate_s * scale
    if _left(deadline) < estimate:
        sink.emit(
            {"kind": "skipped", "name": section.name, "reason": f"deadline (needs ~{estimate:.0f} s)"},
            f"  {section.name} skipped: {_left(deadline):.0f} s left, it needs ~{estimate:.0f} s",
        )
        return
    spec = model_spec(section.key, tiny=tiny)
    _free(device)
    backend: LocalBackend | None = None
    try:
        start = time.perf_counter()
        pipe = build_pipeline(section.key, device, tiny=tiny)
        _sync(device)
        build_s = time.perf_counter() - start
        start = time.perf_counter()
        backend = await LocalBackend.from_pipeline(
            spec, pipe, device=str(device), speedups=section.speedups, max_batch=MAX_BATCH
        )
        del pipe
        _sync(device)
        ready_s = time.perf_counter() - start
        print(
            f"  {section.name}: built in {build_s:.1f} s, ready in {ready_s:.1f} s on {backend.device} "
            f"(offload: {backend.offloaded})",
            flush=True,
        )
        extra = {"build_s": round(build_s, 2), "ready_s": round(ready_s, 2), "offload": backend.offloaded}
        await measure(backend, section, sink, repeats=repeats, deadline=deadline, extra=extra, scale=scale)
        for check in section.checks:
            if _left(deadline) < 20 * scale:
                sink.emit({"kind": "skipped", "name": f"{section.name}:{check}", "reason": "deadline"}, "    skipped")
            elif check == "cancel":
                await check_cancel(backend, sink, slow_steps=tiny)
            elif check == "oom" and device.type == "cuda":
                await check_oom(backend, sink)
            elif check == "oom":
                sink.emit(
                    {"kind": "skipped", "name": f"{section.name}:oom", "reason": "needs CUDA"},
                    "    check oom skipped: needs CUDA",
                )
            elif check == "disk_load":
                await measure_disk_load(backend, section.key, sink, scratch=scratch, tiny=tiny, deadline=deadline)
    except Exception as exc:  # noqa: BLE001 - a section that fails (fp8 on the CPU, a compile error) is a result
        sink.emit(
            {"kind": "error", "name": section.name, "error": f"{type(exc).__name__}: {str(exc)[:500]}"},
            f"  {section.name} failed: {type(exc).__name__}: {str(exc)[:500]}",
        )
    finally:
        if backend is not None:
            await backend.aclose()
        if "compile" in section.speedups:
            torch._dynamo.reset()  # drop the compiled graphs (and what they hold) before the next section
        _free(device)


# --- The plans ----------------------------------------------------------------------------------------------------

_BOTH = frozenset({"compile", "fp8"})


def gpu_plan(*, tiny: bool) -> list[Section]:
    """Issue 14's matrix, most important first: FLUX.1-schnell 1024² 4 steps (eager, compile+fp8, compile, fp8),
    then SDXL-Turbo 512² (1 and 4 steps) and SDXL base 1024² (30 steps) eager, then their speed-ups."""
    flux_size = (TINY_SIZES[0],) if tiny else (ImageSize(1024, 1024),)

    def flux(speedups: frozenset[str], batches: tuple[int, ...], estimate_s: float, *checks: str) -> Section:
        reserve_s = {_BOTH: 90.0, frozenset({"compile"}): 30.0}.get(speedups, 0.0)
        return Section("flux", speedups, flux_size, (4,), batches, checks, "flux", estimate_s, reserve_s)

    def turbo(
        speedups: frozenset[str], batches: tuple[int, ...], group: str, estimate_s: float, *checks: str
    ) -> Section:
        return Section("sdxl-turbo", speedups, None, (1, 4), batches, checks, group, estimate_s)

    def sdxl(speedups: frozenset[str], batches: tuple[int, ...], group: str, estimate_s: float) -> Section:
        return Section("sdxl", speedups, None, (30,), batches, (), group, estimate_s)

    compile_only, fp8_only = frozenset({"compile"}), frozenset({"fp8"})
    return [
        flux(frozenset(), (1, 2, 4), 45, "cancel", "oom"),
        flux(_BOTH, (1, 2, 4), 100),
        flux(compile_only, (1,), 60),
        flux(fp8_only, (1,), 30),
        turbo(frozenset(), (1, 2, 4), "sdxl", 40, "disk_load"),
        sdxl(frozenset(), (1, 2, 4), "sdxl", 45),
        turbo(_BOTH, (1, 4), "sdxl-speedups", 80),
        sdxl(_BOTH, (1,), "sdxl-speedups", 90),
        turbo(compile_only, (1,), "sdxl-speedups", 70),
        sdxl(compile_only, (1,), "sdxl-speedups", 80),
        turbo(fp8_only, (1,), "sdxl-speedups", 20),
        sdxl(fp8_only, (1,), "sdxl-speedups", 30),
    ]


def quick_plan() -> list[Section]:
    """Every model at tiny sizes, eager: the code path works (batches, disk load, cancellation), in seconds."""
    return [
        Section("flux", frozenset(), TINY_SIZES, (None,), (1, 2), checks=("cancel", "disk_load")),
        Section("sdxl-turbo", frozenset(), TINY_SIZES[:1], (1,), (1, 2), checks=("disk_load",)),
        Section("sdxl", frozenset(), TINY_SIZES[:1], (10,), (1,)),
    ]


def cpu_plan(keys: list[str], speedups: list[str], steps: list[int]) -> list[Section]:
    """The CPU default: SDXL-Turbo at 512x512, 1-4 steps, fp32; ``--speedups`` each against eager."""
    sections: list[Section] = []
    for key in keys:
        spec = local_model(MODELS[key])
        steps_list: tuple[int | None, ...] = tuple(steps or range(spec.steps.minimum, spec.steps.maximum + 1))
        if key != "sdxl-turbo" and not steps:
            steps_list = (None,)
        sections.append(Section(key, frozenset(), None, steps_list, (1, 2), checks=("disk_load",)))
        for names in [{name} for name in speedups] + ([set(speedups)] if len(speedups) > 1 else []):
            sections.append(Section(key, frozenset(names), None, steps_list[:1], (1,)))
    return sections


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--quick", action="store_true", help="every model at tiny sizes, eager (seconds)")
    parser.add_argument("--plan", choices=["cpu", "gpu"], default="cpu", help="cpu: the CPU default; gpu: issue 14")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes of the same architectures")
    parser.add_argument("--group", default="", help="only this group of the GPU plan: flux, sdxl, sdxl-speedups")
    parser.add_argument("--models", default="", help="comma-separated: flux, sdxl-turbo, sdxl (CPU plan)")
    parser.add_argument("--speedups", default="", help="speed-ups to compare with eager (CPU plan)")
    parser.add_argument("--steps", default="", help="comma-separated step counts (CPU plan; default 1-4)")
    parser.add_argument("--repeats", type=int, default=0, help="timed images per point (default 3; 2 quick, 5 CUDA)")
    parser.add_argument("--deadline", type=float, default=0.0, help="epoch seconds: skip what cannot finish by then")
    parser.add_argument("--jsonl", type=Path, default=None, help="append each row to this file as it comes")
    parser.add_argument("--json", type=Path, default=None, help="write all rows to this file at the end")
    parser.add_argument("--markdown", type=Path, default=None, help="write the rows as Markdown tables at the end")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available: skipping the GPU benchmark (run on a machine with a GPU).")
        return 0
    tiny = args.tiny or args.quick
    if args.quick:
        sections = quick_plan()
    elif args.plan == "gpu":
        sections = [section for section in gpu_plan(tiny=tiny) if args.group in ("", section.group)]
    else:
        sections = cpu_plan(
            [key for key in args.models.split(",") if key] or ["sdxl-turbo"],
            [name for name in args.speedups.split(",") if name],
            [int(steps) for steps in args.steps.split(",") if steps],
        )
    repeats = args.repeats or (5 if device.type == "cuda" else 2 if args.quick else 3)
    deadline = args.deadline or time.time() + 24 * 3600
    sink = Sink(args.jsonl)
    env = environment(device)
    sink.emit(env, f"torch {env['torch']}, diffusers {env['diffusers']}, {env['cpu_threads']} CPU threads, {device}")
    with tempfile.TemporaryDirectory(prefix="t2i-bench-") as scratch:
        for section in sections:
            await run_section(
                section, sink, device=device, tiny=tiny, repeats=repeats, deadline=deadline, scratch=Path(scratch)
            )
    if args.json is not None:
        args.json.write_text(json.dumps(sink.rows, indent=2), encoding="utf-8")
    if args.markdown is not None:
        args.markdown.write_text(markdown(sink.rows), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
