"""The local backend on the real FLUX.1-schnell and SDXL architectures, with random weights (no hub access).

Each model is built from its published configuration (written out below), saved with ``save_pretrained`` in the
layout the hub has (FLUX in bf16, SDXL as the ``fp16`` variant), then loaded through ``LocalBackend.load``: the load
time is the real one. Random weights cost exactly what trained ones do; the images are noise.

Prints per model and size: load time, median latency of one image (eager, then with each speed-up), images/s at
batch 1-4 and, on CUDA, peak GPU memory.

Run (from the repository root):
  PYTHONPATH=lib:. .venv/bin/python bench/local.py --quick            # tiny pipelines, seconds: the code path works
  PYTHONPATH=lib:. .venv/bin/python bench/local.py                    # CPU default (SDXL-Turbo) at 512x512, 1-4 steps
  PYTHONPATH=lib:. .venv/bin/python bench/local.py --device cuda      # everything, on the GPU
Options: --models flux,sdxl-turbo,sdxl  --workdir DIR (keeps the built weights between runs)  --repeats N
         --speedups fuse_qkv,channels_last,compile,fp8  --json FILE
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import torch
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
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    T5Config,
    T5EncoderModel,
)

from tests.tiny_models import save_tiny_flux, save_tiny_sdxl, tiny_clip_tokenizer, tiny_flux_spec, tiny_sdxl_spec
from tests.tiny_models import tiny_t5_tokenizer as tiny_t5
from text2image_hub.backends import GenerationControl, ResolvedRequest
from text2image_hub.backends.catalog import FLUX_SCHNELL, SDXL_BASE, SDXL_TURBO, LocalModelSpec, local_model
from text2image_hub.backends.local import MAX_BATCH, LocalBackend
from text2image_hub.errors import Text2ImageError
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

MODELS = {"flux": FLUX_SCHNELL, "sdxl-turbo": SDXL_TURBO, "sdxl": SDXL_BASE}


def _make(cls: Any, *args: Any, **kwargs: Any) -> Any:
    return cls(*args, **kwargs)


def _built(cls: Any, *args: Any, device: torch.device, dtype: torch.dtype, **kwargs: Any) -> Any:
    """Construct a module on ``device`` (fast random init there) and cast it to ``dtype``."""
    with torch.device(device):
        module = cls(*args, **kwargs)
    return module.to(dtype)


def build_real(key: str, folder: Path, device: torch.device) -> None:
    """Save the real architecture of ``MODELS[key]`` with random weights, as the hub lays it out."""
    if (folder / "model_index.json").is_file():
        return
    torch.manual_seed(0)
    if key == "flux":
        dtype = torch.bfloat16
        pipe: Any = _make(
            FluxPipeline,
            scheduler=_make(FlowMatchEulerDiscreteScheduler, **FLUX_SCHEDULER),
            vae=_built(AutoencoderKL, device=device, dtype=dtype, **FLUX_VAE),
            text_encoder=_built(CLIPTextModel, CLIPTextConfig(**CLIP_L), device=device, dtype=dtype),
            tokenizer=tiny_clip_tokenizer(),
            text_encoder_2=_built(T5EncoderModel, T5Config(**T5_XXL), device=device, dtype=dtype),
            tokenizer_2=tiny_t5(),
            transformer=_built(FluxTransformer2DModel, device=device, dtype=dtype, **FLUX_TRANSFORMER),
        )
        variant = None
    else:
        dtype = torch.float16
        scheduler = (
            _make(EulerAncestralDiscreteScheduler, **SDXL_TURBO_SCHEDULER)
            if key == "sdxl-turbo"
            else _make(EulerDiscreteScheduler, **SDXL_BASE_SCHEDULER)
        )
        unet = SDXL_UNET | ({"sample_size": 64} if key == "sdxl-turbo" else {})
        vae = SDXL_VAE | ({"sample_size": 512} if key == "sdxl-turbo" else {})
        pipe = _make(
            StableDiffusionXLPipeline,
            vae=_built(AutoencoderKL, device=device, dtype=dtype, **vae),
            text_encoder=_built(CLIPTextModel, CLIPTextConfig(**CLIP_L), device=device, dtype=dtype),
            text_encoder_2=_built(
                CLIPTextModelWithProjection, CLIPTextConfig(**CLIP_BIG_G), device=device, dtype=dtype
            ),
            tokenizer=tiny_clip_tokenizer(),
            tokenizer_2=tiny_clip_tokenizer(),
            unet=_built(UNet2DConditionModel, device=device, dtype=dtype, **unet),
            scheduler=scheduler,
        )
        variant = "fp16"
    start = time.perf_counter()
    pipe.save_pretrained(folder, variant=variant)
    print(f"  built and saved {MODELS[key]} to {folder} ({time.perf_counter() - start:.0f} s to save)")
    del pipe
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def build_real_apart(key: str, folder: Path, device: torch.device) -> None:
    """``build_real`` in a child process, so that the memory of building is back to the system before loading."""
    if (folder / "model_index.json").is_file():
        return
    child = multiprocessing.get_context("spawn").Process(target=build_real, args=(key, folder, device))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise SystemExit(f"building {MODELS[key]} failed (exit code {child.exitcode})")


def _peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 1024**3 if device.type == "cuda" else None


async def _timed(backend: LocalBackend, size: ImageSize, count: int, steps: int | None, seed: int) -> float:
    seeds = tuple(range(seed, seed + count))
    request = ResolvedRequest(
        prompt="a watercolor fox in a snowy forest", size=size, count=count, seeds=seeds, steps=steps
    )
    if backend.device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    await backend.generate(request, GenerationControl())
    return time.perf_counter() - start


async def measure(
    spec: LocalModelSpec,
    folder: Path,
    *,
    device: str,
    speedups: frozenset[str],
    sizes: list[ImageSize],
    steps_list: list[int | None],
    batches: list[int],
    repeats: int,
) -> list[dict[str, Any]]:
    torch_device = torch.device(device)
    start = time.perf_counter()
    backend = await LocalBackend.load(spec, folder, device=device, speedups=speedups, max_batch=MAX_BATCH)
    load_s = time.perf_counter() - start
    label = "+".join(sorted(speedups)) or "eager"
    print(f"  {spec.id} [{label}] loaded in {load_s:.1f} s on {backend.device} (offload: {backend.offloaded})")
    rows: list[dict[str, Any]] = []
    try:
        for size in sizes:
            for steps in steps_list:
                await _timed(backend, size, 1, steps, seed=0)  # warm-up (and compilation for this size)
                if torch_device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(torch_device)
                latencies = [await _timed(backend, size, 1, steps, seed=i) for i in range(repeats)]
                row: dict[str, Any] = {
                    "model": spec.id,
                    "speedups": label,
                    "size": str(size),
                    "steps": steps if steps is not None else spec.steps.default,
                    "load_s": round(load_s, 2),
                    "latency_s": round(statistics.median(latencies), 3),
                    "peak_gb": _peak_gb(torch_device),
                    "images_per_s": {},
                }
                for batch in batches:
                    elapsed = await _timed(backend, size, batch, steps, seed=100)
                    row["images_per_s"][batch] = round(batch / elapsed, 3)
                rows.append(row)
                peak = f", peak {row['peak_gb']:.1f} GB" if row["peak_gb"] is not None else ""
                rates = ", ".join(f"b{b}: {r}/s" for b, r in row["images_per_s"].items())
                print(f"    {size} {row['steps']} step(s): {row['latency_s']:.3f} s/image (median of {repeats}){peak}")
                if rates:
                    print(f"      images/s {rates}")
    finally:
        await backend.aclose()
        gc.collect()
    return rows


def _speedup_sets(names: list[str]) -> list[frozenset[str]]:
    sets: list[frozenset[str]] = [frozenset()]
    sets += [frozenset({name}) for name in names]
    if len(names) > 1:
        sets.append(frozenset(names))
    return sets


async def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="tiny pipelines only (seconds)")
    parser.add_argument("--models", default="", help="comma-separated: flux, sdxl-turbo, sdxl")
    parser.add_argument("--workdir", type=Path, default=None, help="where the built weights stay (default: a temp dir)")
    parser.add_argument("--repeats", type=int, default=0, help="timed runs per point (default 3 on CPU, 5 on CUDA)")
    parser.add_argument(
        "--speedups", default="", help="speed-ups to compare with eager (CUDA default: all; CPU default: none)"
    )
    parser.add_argument("--steps", default="", help="comma-separated step counts (default: the CPU default's 1-4)")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this file")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="__array__ implementation", category=DeprecationWarning)

    if args.device == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available: skipping the GPU benchmark (run on a machine with a GPU).")
        return 0
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, device {args.device}")
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="t2i-bench-") as scratch:
        workdir = args.workdir or Path(scratch)
        if args.quick:
            repeats = args.repeats or 3
            tiny = [
                (tiny_flux_spec(), save_tiny_flux(workdir / "tiny-flux")),
                (tiny_sdxl_spec(), save_tiny_sdxl(workdir / "tiny-sdxl")),
            ]
            for spec, folder in tiny:
                rows += await measure(
                    spec,
                    folder,
                    device=args.device,
                    speedups=frozenset(),
                    sizes=list(spec.sizes),
                    steps_list=[None],
                    batches=[1, 2, 4],
                    repeats=repeats,
                )
        elif args.device == "cpu":
            repeats = args.repeats or 3
            keys = [key for key in args.models.split(",") if key] or ["sdxl-turbo"]
            for key in keys:
                spec = local_model(MODELS[key])
                folder = workdir / key
                build_real_apart(key, folder, torch.device("cpu"))
                chosen_steps = [int(steps) for steps in args.steps.split(",") if steps]
                steps_list: list[int | None] = list(chosen_steps or range(spec.steps.minimum, spec.steps.maximum + 1))
                rows += await measure(
                    spec,
                    folder,
                    device="cpu",
                    speedups=frozenset(),
                    sizes=[spec.default_size],
                    steps_list=steps_list if key == "sdxl-turbo" else [None],
                    batches=[1, 2],
                    repeats=repeats,
                )
                for speedups in _speedup_sets([name for name in args.speedups.split(",") if name]):
                    rows += await measure(  # --speedups on the CPU: each against the eager figures above
                        spec,
                        folder,
                        device="cpu",
                        speedups=speedups,
                        sizes=[spec.default_size],
                        steps_list=steps_list[:1],
                        batches=[],
                        repeats=repeats,
                    )
        else:
            repeats = args.repeats or 5
            keys = [key for key in args.models.split(",") if key] or list(MODELS)
            names = [name for name in args.speedups.split(",") if name] or [
                "fuse_qkv",
                "channels_last",
                "compile",
                "fp8",
            ]
            for key in keys:
                spec = local_model(MODELS[key])
                folder = workdir / key
                build_real_apart(key, folder, torch.device("cuda"))
                larger = [size for size in spec.sizes if size.pixels > spec.default_size.pixels]
                sizes = [spec.default_size, *larger[:1]]
                for speedups in _speedup_sets(names):
                    try:
                        rows += await measure(
                            spec,
                            folder,
                            device="cuda",
                            speedups=speedups,
                            sizes=sizes,
                            steps_list=[None],
                            batches=[1, 2, 3, 4] if not speedups else [],
                            repeats=repeats,
                        )
                    except (Text2ImageError, RuntimeError, ImportError, ValueError) as exc:  # report it and go on
                        print(f"  {spec.id} [{'+'.join(sorted(speedups))}] failed: {exc}")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main(sys.argv[1:])))
