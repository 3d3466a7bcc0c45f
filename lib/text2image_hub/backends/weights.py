"""Where a local model's weights live, whether they are complete, and fetching them from the Hugging Face Hub.

Only the files the pipeline loads are fetched: ``model_index.json``, each component's configs and tokenizer files,
and its safetensors weights in the spec's variant (never ``.bin``, ``.ckpt``, ONNX, OpenVINO or the single-file
checkpoints at the repository root). Downloads resume from what is already on disk. ``huggingface_hub`` is imported
only when a download really happens.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import logging
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx2

from ..errors import BackendUnavailableError, ConfigurationError
from .catalog import LocalModelSpec, local_model

logger = logging.getLogger(__name__)

MODEL_INDEX = "model_index.json"
_POLL_SECONDS = 1.0


def weights_dir(storage: Path, model_id: str) -> Path:
    """The folder that holds ``model_id``'s weights under the app's persistent storage."""
    return storage / "models" / model_id.replace("/", "--")


def allow_patterns(spec: LocalModelSpec) -> list[str]:
    """The ``snapshot_download`` patterns that select exactly the files the pipeline loads."""
    weights = f"*.{spec.variant}.safetensors" if spec.variant else "*.safetensors"
    sharded = f"*.{spec.variant}-*-of-*.safetensors" if spec.variant else "*-of-*.safetensors"
    patterns = [MODEL_INDEX]
    for component in spec.components:
        patterns += [f"{component}/*.json", f"{component}/*.txt", f"{component}/*.model"]
        patterns += [f"{component}/{weights}", f"{component}/{sharded}"]
    return patterns


def selected_files(spec: LocalModelSpec, repo_files: list[str]) -> list[str]:
    """The files of ``repo_files`` that ``allow_patterns(spec)`` selects (``fnmatch``, as the hub client does)."""
    patterns = allow_patterns(spec)
    return [name for name in repo_files if any(fnmatch.fnmatch(name, pattern) for pattern in patterns)]


def _component_complete(folder: Path) -> bool:
    if not folder.is_dir():
        return False
    if not (folder / "config.json").is_file():
        # schedulers and tokenizers: configuration only
        return any(folder.glob("*.json"))
    for index in folder.glob("*.safetensors.index*.json"):
        try:
            shards = set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values())
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return all((folder / shard).is_file() for shard in shards)
    return any(folder.glob("*.safetensors"))


def weights_present(path: Path) -> bool:
    """Whether ``path`` holds ``model_index.json`` and every component it names, weights included."""
    try:
        index = json.loads((path / MODEL_INDEX).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(index, dict):
        return False
    components = [
        name
        for name, value in index.items()
        if not name.startswith("_") and isinstance(value, list) and len(value) == 2 and value[0] is not None
    ]
    return bool(components) and all(_component_complete(path / name) for name in components)


def _bytes_on_disk(folder: Path) -> int:
    """Finished files plus the partial downloads the hub client keeps under ``.cache``."""
    total = 0
    for item in folder.rglob("*"):
        try:
            if item.is_file():
                total += item.stat().st_size
        except OSError:
            continue
    return total


def _download_errors() -> tuple[type[Exception], ...]:
    """What the hub client raises for network and HTTP failures (its HTTP library depends on its version)."""
    errors: list[type[Exception]] = [OSError, ValueError, httpx2.HTTPError]
    httpx = sys.modules.get("httpx")
    if httpx is not None:
        errors.append(httpx.HTTPError)
    return tuple(errors)


def _expected_bytes(spec: LocalModelSpec, token: str | None) -> int:
    from huggingface_hub import HfApi

    info = HfApi().model_info(spec.id, files_metadata=True, token=token)
    sizes = {sibling.rfilename: sibling.size or 0 for sibling in info.siblings or []}
    return sum(sizes[name] for name in selected_files(spec, list(sizes)))


def _snapshot(spec: LocalModelSpec, target: Path, token: str | None) -> None:
    from huggingface_hub import snapshot_download

    snapshot_download(
        spec.id,
        local_dir=target,
        allow_patterns=allow_patterns(spec),
        token=token,
        max_workers=4,
    )


async def download_weights(
    model_id: str,
    storage: Path,
    progress: Callable[[int], Awaitable[None]],
    *,
    model_path: Path | None = None,
    token: str | None = None,
) -> Path:
    """Make ``model_id``'s weights available on disk and return their folder.

    ``model_path`` (the admin's ``T2I_MODEL_PATH``) is used as it is, with no network; it must hold complete
    weights. Otherwise the weights go to ``weights_dir(storage, model_id)``; nothing is fetched when they are
    already complete there. ``progress`` receives 0..99 while downloading (the caller reports 100 once the model
    is loaded).
    """
    spec = local_model(model_id)
    if model_path is not None:
        if not weights_present(model_path):
            raise ConfigurationError(
                f"{model_path} does not hold complete diffusers weights (model_index.json and every component).",
                field="T2I_MODEL_PATH",
            )
        logger.info("Using the local weights of %s at %s", model_id, model_path)
        return model_path
    target = weights_dir(storage, model_id)
    if weights_present(target):
        logger.info("Weights of %s already present at %s", model_id, target)
        return target
    target.mkdir(parents=True, exist_ok=True)
    logger.info("Downloading the weights of %s to %s", model_id, target)
    await progress(0)
    try:
        expected = await asyncio.to_thread(_expected_bytes, spec, token)
        download = asyncio.create_task(asyncio.to_thread(_snapshot, spec, target, token))
        reported = 0
        while not download.done():
            await asyncio.wait({download}, timeout=_POLL_SECONDS)
            on_disk = await asyncio.to_thread(_bytes_on_disk, target)
            percent = min(99, on_disk * 99 // expected) if expected > 0 else 0
            if percent > reported:
                reported = percent
                await progress(percent)
        await download
    except _download_errors() as exc:
        raise BackendUnavailableError(f"Downloading the weights of {model_id} failed: {exc}") from exc
    if not weights_present(target):
        raise BackendUnavailableError(f"The weights of {model_id} at {target} are incomplete after the download.")
    await progress(99)
    return target
