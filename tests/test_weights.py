from __future__ import annotations

import fnmatch
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import huggingface_hub
import pytest

from text2image_hub.backends import weights
from text2image_hub.backends.catalog import FLUX_SCHNELL, SDXL_BASE, SDXL_TURBO, local_model
from text2image_hub.backends.weights import (
    FolderClasses,
    download_weights,
    folder_classes,
    selected_files,
    weights_dir,
    weights_present,
)
from text2image_hub.errors import BackendUnavailableError

# The files of the real repositories (abridged where a folder repeats the same pattern).
SDXL_BASE_FILES = [
    ".gitattributes",
    "01.png",
    "LICENSE.md",
    "README.md",
    "model_index.json",
    "sd_xl_base_1.0.safetensors",
    "sd_xl_base_1.0_0.9vae.safetensors",
    "sd_xl_offset_example-lora_1.0.safetensors",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/flax_model.msgpack",
    "text_encoder/model.fp16.safetensors",
    "text_encoder/model.onnx",
    "text_encoder/model.safetensors",
    "text_encoder/openvino_model.bin",
    "text_encoder/openvino_model.xml",
    "text_encoder_2/config.json",
    "text_encoder_2/model.fp16.safetensors",
    "text_encoder_2/model.onnx",
    "text_encoder_2/model.onnx_data",
    "text_encoder_2/model.safetensors",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "tokenizer_2/merges.txt",
    "tokenizer_2/special_tokens_map.json",
    "tokenizer_2/tokenizer_config.json",
    "tokenizer_2/vocab.json",
    "unet/config.json",
    "unet/diffusion_flax_model.msgpack",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "unet/diffusion_pytorch_model.safetensors",
    "unet/model.onnx",
    "unet/openvino_model.bin",
    "vae/config.json",
    "vae/diffusion_pytorch_model.bin",
    "vae/diffusion_pytorch_model.fp16.safetensors",
    "vae/diffusion_pytorch_model.safetensors",
    "vae_1_0/config.json",
    "vae_1_0/diffusion_pytorch_model.fp16.safetensors",
    "vae_decoder/model.onnx",
    "vae_encoder/model.onnx",
]

SDXL_BASE_NEEDED = [
    "model_index.json",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.fp16.safetensors",
    "text_encoder_2/config.json",
    "text_encoder_2/model.fp16.safetensors",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "tokenizer_2/merges.txt",
    "tokenizer_2/special_tokens_map.json",
    "tokenizer_2/tokenizer_config.json",
    "tokenizer_2/vocab.json",
    "unet/config.json",
    "unet/diffusion_pytorch_model.fp16.safetensors",
    "vae/config.json",
    "vae/diffusion_pytorch_model.fp16.safetensors",
]

FLUX_SCHNELL_FILES = [
    ".gitattributes",
    "README.md",
    "ae.safetensors",
    "flux1-schnell.safetensors",
    "model_index.json",
    "schnell_grid.jpeg",
    "scheduler/scheduler_config.json",
    "text_encoder/config.json",
    "text_encoder/model.safetensors",
    "text_encoder_2/config.json",
    "text_encoder_2/model-00001-of-00002.safetensors",
    "text_encoder_2/model-00002-of-00002.safetensors",
    "text_encoder_2/model.safetensors.index.json",
    "tokenizer/merges.txt",
    "tokenizer/special_tokens_map.json",
    "tokenizer/tokenizer_config.json",
    "tokenizer/vocab.json",
    "tokenizer_2/special_tokens_map.json",
    "tokenizer_2/spiece.model",
    "tokenizer_2/tokenizer.json",
    "tokenizer_2/tokenizer_config.json",
    "transformer/config.json",
    "transformer/diffusion_pytorch_model-00001-of-00003.safetensors",
    "transformer/diffusion_pytorch_model-00002-of-00003.safetensors",
    "transformer/diffusion_pytorch_model-00003-of-00003.safetensors",
    "transformer/diffusion_pytorch_model.safetensors.index.json",
    "vae/config.json",
    "vae/diffusion_pytorch_model.safetensors",
]

FLUX_SCHNELL_NEEDED = [
    name
    for name in FLUX_SCHNELL_FILES
    if "/" in name or name == "model_index.json"
    if not name.endswith((".gitattributes",))
]


def write_pipeline(folder: Path, files: list[str]) -> Path:
    """A fake diffusers folder: ``files`` with a little content; index files list their shards."""
    components = sorted({name.split("/")[0] for name in files if "/" in name})
    index = {"_class_name": "FluxPipeline", "_diffusers_version": "0.42.1", "image_encoder": [None, None]}
    index |= {name: ["diffusers", "Something"] for name in components}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "model_index.json").write_text(json.dumps(index), encoding="utf-8")
    for name in files:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if name.endswith(".safetensors.index.json"):
            shards = sorted(
                Path(other).name for other in files if other.startswith(path.parent.name + "/") and "-of-" in other
            )
            path.write_text(json.dumps({"weight_map": {f"layer.{i}": shard for i, shard in enumerate(shards)}}))
        elif name != "model_index.json":
            path.write_bytes(b"x" * 10)
    return folder


def test_weights_dir_is_per_model_under_storage(tmp_path: Path) -> None:
    assert weights_dir(tmp_path, FLUX_SCHNELL) == tmp_path / "models" / "black-forest-labs--FLUX.1-schnell"


def test_selected_files_sdxl_takes_fp16_safetensors_of_pipeline_components_only() -> None:
    assert sorted(selected_files(local_model(SDXL_BASE), SDXL_BASE_FILES)) == SDXL_BASE_NEEDED
    assert sorted(selected_files(local_model(SDXL_TURBO), SDXL_BASE_FILES)) == SDXL_BASE_NEEDED


def test_selected_files_flux_takes_sharded_weights_but_not_root_checkpoints() -> None:
    chosen = selected_files(local_model(FLUX_SCHNELL), FLUX_SCHNELL_FILES)

    assert sorted(chosen) == sorted(FLUX_SCHNELL_NEEDED)
    assert "flux1-schnell.safetensors" not in chosen
    assert "ae.safetensors" not in chosen


def test_selected_files_never_takes_pickles_or_other_runtimes() -> None:
    for spec_id, files in ((SDXL_BASE, SDXL_BASE_FILES), (FLUX_SCHNELL, FLUX_SCHNELL_FILES)):
        for name in selected_files(local_model(spec_id), files):
            assert not name.endswith((".bin", ".ckpt", ".onnx", ".onnx_data", ".msgpack", ".xml"))


def test_weights_present_complete_folder(tmp_path: Path) -> None:
    assert weights_present(write_pipeline(tmp_path / "flux", FLUX_SCHNELL_NEEDED))


def test_weights_present_missing_shard_is_incomplete(tmp_path: Path) -> None:
    folder = write_pipeline(tmp_path / "flux", FLUX_SCHNELL_NEEDED)
    (folder / "transformer" / "diffusion_pytorch_model-00002-of-00003.safetensors").unlink()

    assert not weights_present(folder)


def test_weights_present_component_without_weights_is_incomplete(tmp_path: Path) -> None:
    folder = write_pipeline(tmp_path / "sdxl", SDXL_BASE_NEEDED)
    (folder / "vae" / "diffusion_pytorch_model.fp16.safetensors").unlink()

    assert not weights_present(folder)


def test_weights_present_missing_component_folder_is_incomplete(tmp_path: Path) -> None:
    folder = write_pipeline(tmp_path / "sdxl", SDXL_BASE_NEEDED)
    for item in (folder / "tokenizer_2").iterdir():
        item.unlink()
    (folder / "tokenizer_2").rmdir()

    assert not weights_present(folder)


@pytest.mark.parametrize("index_text", [None, "not json", "[]", '{"_class_name": "FluxPipeline"}'])
def test_weights_present_without_usable_model_index_is_false(tmp_path: Path, index_text: str | None) -> None:
    if index_text is not None:
        (tmp_path / "model_index.json").write_text(index_text, encoding="utf-8")

    assert not weights_present(tmp_path)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("the hub must not be contacted")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", refuse)


class Progress:
    def __init__(self) -> None:
        self.values: list[int] = []

    async def __call__(self, percent: int) -> None:
        self.values.append(percent)


@pytest.mark.parametrize(
    ("index", "expected"),
    [
        (
            {"_class_name": "FluxPipeline", "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]},
            FolderClasses("FluxPipeline", "FlowMatchEulerDiscreteScheduler"),
        ),
        ({"_class_name": "StableDiffusionXLPipeline"}, FolderClasses("StableDiffusionXLPipeline", "")),
        ({"scheduler": "odd"}, FolderClasses("", "")),
    ],
)
def test_folder_classes_reads_the_model_index(tmp_path: Path, index: dict[str, Any], expected: FolderClasses) -> None:
    (tmp_path / "model_index.json").write_text(json.dumps(index), encoding="utf-8")

    assert folder_classes(tmp_path) == expected


@pytest.mark.parametrize("index_text", [None, "not json", "[]"])
def test_folder_classes_without_a_readable_index_is_none(tmp_path: Path, index_text: str | None) -> None:
    if index_text is not None:
        (tmp_path / "model_index.json").write_text(index_text, encoding="utf-8")

    assert folder_classes(tmp_path) is None


@pytest.mark.usefixtures("no_network")
async def test_download_weights_unreachable_hub_is_unavailable_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def unreachable(*_args: Any, **_kwargs: Any) -> Any:
        raise OSError("[Errno 101] Network is unreachable\nmore lines of detail")

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", unreachable)

    with pytest.raises(BackendUnavailableError) as caught:
        await download_weights(local_model(SDXL_TURBO), tmp_path / "sdxl-turbo", Progress())

    assert str(caught.value) == (
        "Downloading the weights of stabilityai/sdxl-turbo failed: OSError: [Errno 101] Network is unreachable"
    )


@dataclass
class Sibling:
    rfilename: str
    size: int


@dataclass
class RepoInfo:
    siblings: list[Sibling]


async def test_download_weights_fetches_only_needed_files_with_progress(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = {name: (4000 if name.endswith(".safetensors") else 10) for name in SDXL_BASE_FILES}
    requested: dict[str, Any] = {}

    def model_info(_self: Any, repo_id: str, **kwargs: Any) -> RepoInfo:
        assert kwargs["files_metadata"] is True
        return RepoInfo([Sibling(name, size) for name, size in sizes.items()])

    def snapshot_download(repo_id: str, *, local_dir: Path, allow_patterns: list[str], **kwargs: Any) -> str:
        requested.update(repo_id=repo_id, allow_patterns=allow_patterns)
        for name, size in sizes.items():
            if any(fnmatch.fnmatch(name, pattern) for pattern in allow_patterns):
                path = Path(local_dir) / name
                path.parent.mkdir(parents=True, exist_ok=True)
                if name == "model_index.json":
                    components = ["scheduler", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2"]
                    index = {part: ["x", "Y"] for part in [*components, "unet", "vae"]}
                    path.write_text(json.dumps(index), encoding="utf-8")
                else:
                    path.write_bytes(b"x" * size)
                time.sleep(0.01)
        return str(local_dir)

    monkeypatch.setattr(huggingface_hub.HfApi, "model_info", model_info)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setattr(weights, "_POLL_SECONDS", 0.02)
    progress = Progress()

    target = weights_dir(tmp_path, SDXL_BASE)
    await download_weights(local_model(SDXL_BASE), target, progress)

    assert requested["repo_id"] == SDXL_BASE
    on_disk = sorted(str(path.relative_to(target)) for path in target.rglob("*") if path.is_file())
    assert on_disk == SDXL_BASE_NEEDED
    assert progress.values[0] == 0
    assert progress.values[-1] == 99
    assert len(progress.values) > 3
    assert progress.values == sorted(progress.values)
    assert weights_present(target)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning")
def test_weights_present_on_a_real_save_pretrained_folder(tmp_path: Path) -> None:
    from tests.tiny_models import save_tiny_flux

    folder = save_tiny_flux(tmp_path / "flux")
    assert weights_present(folder)

    (folder / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    assert not weights_present(folder)
