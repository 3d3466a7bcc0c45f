"""Tiny random-weight diffusers pipelines, built from config with no hub access.

The shapes follow diffusers' own pipeline tests (``get_dummy_components``); the tokenizers are built in memory from
a byte-level vocabulary (CLIP) and a small unigram vocabulary (T5), so nothing is downloaded. ``save_*`` writes a
``save_pretrained`` directory that ``LocalBackend.load`` reads like real weights.
"""

from __future__ import annotations

import argparse
import dataclasses
import string
import sys
from pathlib import Path
from typing import Any

import torch
from diffusers import (
    AutoencoderKL,
    EulerAncestralDiscreteScheduler,
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
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

from text2image_hub.backends import StepRange
from text2image_hub.backends.catalog import FLUX_SCHNELL, SDXL_BASE, LocalModelSpec, local_model
from text2image_hub.imaging import ImageSize

CLIP_MAX_LENGTH = 77
TEXT_VOCAB_SIZE = 1000


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character map, which CLIP's byte-level BPE uses."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(code) for code in codes), strict=True))


def tiny_clip_tokenizer() -> CLIPTokenizer:
    """A CLIP tokenizer with one token per byte (and per end-of-word byte) and no merges."""
    vocab: dict[str, int] = {}
    for char in _bytes_to_unicode().values():
        vocab[char] = len(vocab)
    for char in _bytes_to_unicode().values():
        vocab[char + "</w>"] = len(vocab)
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=CLIP_MAX_LENGTH)


def tiny_t5_tokenizer() -> T5Tokenizer:
    """A T5 (unigram) tokenizer over letters, digits and a few punctuation marks."""
    pieces: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    for char in string.ascii_lowercase + string.ascii_uppercase + string.digits + ".,!?'-":
        pieces.append((char, -3.0))
        pieces.append(("▁" + char, -3.5))
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def _clip_config(*, projection_dim: int = 32) -> CLIPTextConfig:
    return CLIPTextConfig(
        bos_token_id=0,
        eos_token_id=2,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=2,
        pad_token_id=1,
        vocab_size=TEXT_VOCAB_SIZE,
        hidden_act="gelu",
        projection_dim=projection_dim,
        max_position_embeddings=CLIP_MAX_LENGTH,
    )


def tiny_flux_pipeline() -> FluxPipeline:
    """A FluxPipeline (FLUX.1-schnell layout: no guidance embedding) with a few thousand random weights."""
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1,
        in_channels=4,
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=32,
        pooled_projection_dim=32,
        guidance_embeds=False,
        axes_dims_rope=[4, 4, 8],
    )
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(_clip_config())
    torch.manual_seed(0)
    text_encoder_2 = T5EncoderModel(
        T5Config(
            vocab_size=TEXT_VOCAB_SIZE,
            d_model=32,
            d_kv=8,
            d_ff=37,
            num_layers=2,
            num_heads=4,
            relative_attention_num_buckets=8,
            pad_token_id=0,
            eos_token_id=1,
        )
    )
    torch.manual_seed(0)
    vae = AutoencoderKL(  # four blocks: the real VAE scale factor of 8
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(4, 4, 4, 4),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=1,
        latent_channels=1,
        norm_num_groups=1,
        use_quant_conv=False,
        use_post_quant_conv=False,
        shift_factor=0.0609,
        scaling_factor=1.5035,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)
    return FluxPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tiny_clip_tokenizer(),
        text_encoder_2=text_encoder_2,
        tokenizer_2=tiny_t5_tokenizer(),
        transformer=transformer,
    )


def tiny_sdxl_pipeline() -> StableDiffusionXLPipeline:
    """A StableDiffusionXLPipeline (SDXL-Turbo's scheduler) with two tiny CLIP encoders and a tiny UNet."""
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(16, 32),
        layers_per_block=1,
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=80,  # 6 * 8 + 32
        cross_attention_dim=64,  # 32 + 32 from the two text encoders
        norm_num_groups=4,
    )
    torch.manual_seed(0)
    vae = AutoencoderKL(  # four blocks: the real VAE scale factor of 8, so a 512x512 image has a 64x64 latent
        block_out_channels=[4, 4, 4, 4],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        layers_per_block=1,
        latent_channels=4,
        sample_size=32,
        norm_num_groups=2,
    )
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(_clip_config())
    torch.manual_seed(0)
    text_encoder_2 = CLIPTextModelWithProjection(_clip_config())
    scheduler = EulerAncestralDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        steps_offset=1,
        timestep_spacing="trailing",
    )
    tokenizer = tiny_clip_tokenizer()
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tiny_clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
    )


def save_tiny_flux(directory: Path) -> Path:
    pipeline: Any = tiny_flux_pipeline()  # diffusers' partial annotations miss save_pretrained
    pipeline.save_pretrained(directory)
    return directory


def save_tiny_sdxl(directory: Path, *, variant: str | None = None) -> Path:
    """``variant="fp16"`` names the files as the SDXL repositories on the hub do (the weights stay fp32)."""
    pipeline: Any = tiny_sdxl_pipeline()
    pipeline.save_pretrained(directory, variant=variant)
    return directory


TINY_FLUX_SIZES = (ImageSize(32, 32), ImageSize(48, 32))
TINY_SDXL_SIZES = (ImageSize(32, 32), ImageSize(64, 32))


def tiny_flux_spec() -> LocalModelSpec:
    """FLUX.1-schnell's spec, cut to the tiny pipeline's sizes and prompt length."""
    return dataclasses.replace(
        local_model(FLUX_SCHNELL), sizes=TINY_FLUX_SIZES, default_size=TINY_FLUX_SIZES[0], max_sequence_length=32
    )


def tiny_sdxl_spec() -> LocalModelSpec:
    """SDXL base's spec (guidance, negative prompt), cut to the tiny pipeline's sizes and a few steps."""
    return dataclasses.replace(
        local_model(SDXL_BASE),
        sizes=TINY_SDXL_SIZES,
        default_size=TINY_SDXL_SIZES[0],
        steps=StepRange(minimum=1, maximum=8, default=2),
    )


def main() -> None:
    """``python -m tests.tiny_models DIR [sdxl|flux]``: a tiny random-weights model for trying ``make run`` offline."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("directory", type=Path)
    parser.add_argument("kind", nargs="?", choices=("sdxl", "flux"), default="sdxl")
    args = parser.parse_args()
    if args.kind == "sdxl":
        save_tiny_sdxl(args.directory, variant="fp16")  # named like stabilityai/sdxl-turbo's files
    else:
        save_tiny_flux(args.directory)
    sys.stdout.write(f"tiny random-weights {args.kind} pipeline written to {args.directory} (a smoke test)\n")


if __name__ == "__main__":
    main()
