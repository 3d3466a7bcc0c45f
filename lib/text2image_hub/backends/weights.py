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
from dataclasses import dataclass
from pathlib import Path

import httpx2

from ..errors import BackendUnavailableError
from .catalog import LocalModelSpec

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


@dataclass(frozen=True)
class FolderClasses:
    """What a weights folder's ``model_index.json`` says it holds."""

    pipeline: str
    scheduler: str


def _model_index(path: Path) -> dict[str, object] | None:
    try:
        index = json.loads((path / MODEL_INDEX).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return index if isinstance(index, dict) else None


def folder_classes(path: Path) -> FolderClasses | None:
    """The pipeline and scheduler classes named in ``path/model_index.json``; None when it is missing or unreadable."""
    index = _model_index(path)
    if index is None:
        return None
    scheduler = index.get("scheduler")
    scheduler_class = scheduler[1] if isinstance(scheduler, list) and len(scheduler) == 2 else ""
    return FolderClasses(str(index.get("_class_name") or ""), str(scheduler_class or ""))


def weights_present(path: Path) -> bool:
    """Whether ``path`` holds ``model_index.json`` and every component it names, weights included."""
    index = _model_index(path) or {}
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


def _expected_bytes(spec: LocalModelSpec) -> int:
    from huggingface_hub import HfApi

    info = HfApi().model_info(spec.id, files_metadata=True)
    sizes = {sibling.rfilename: sibling.size or 0 for sibling in info.siblings or []}
    return sum(sizes[name] for name in selected_files(spec, list(sizes)))


def _snapshot(spec: LocalModelSpec, target: Path) -> None:
    from huggingface_hub import snapshot_download

    snapshot_download(
        spec.id,
        local_dir=target,
        allow_patterns=allow_patterns(spec),
        max_workers=4,
    )


async def download_weights(spec: LocalModelSpec, target: Path, progress: Callable[[int], Awaitable[None]]) -> None:
    """Fetch ``spec``'s weights from the hub into ``target`` (resuming what is there), reporting 0..99 percent.

    Raises ``BackendUnavailableError`` with the reason when the hub cannot be reached, refuses (401, 404), the disk
    is full, or the files are incomplete afterwards.
    """
    await progress(0)
    try:
        await asyncio.to_thread(target.mkdir, parents=True, exist_ok=True)
        expected = await asyncio.to_thread(_expected_bytes, spec)
        download = asyncio.create_task(asyncio.to_thread(_snapshot, spec, target))
        reported = 0
        while not download.done():
            await asyncio.wait({download}, timeout=_POLL_SECONDS)
            on_disk = await asyncio.to_thread(_bytes_on_disk, target)
            percent = min(99, on_disk * 99 // expected) if expected > 0 else 0
            if percent > reported:
                reported = percent
                await progress(percent)
        await download
    except ImportError as exc:
        raise BackendUnavailableError(
            f"Downloading {spec.id} needs the local backend's packages ({exc.name}): install text2image_hub[local], "
            "or use the remote backend."
        ) from exc
    except _download_errors() as exc:
        raise BackendUnavailableError(f"Downloading the weights of {spec.id} failed: {_reason(exc)}") from exc
    if not await asyncio.to_thread(weights_present, target):
        raise BackendUnavailableError(f"The weights of {spec.id} at {target} are incomplete after the download.")
    await progress(99)


def _reason(exc: Exception) -> str:
    """One line for the admin: the exception's type and first line (hub errors carry long multi-line bodies)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:300]}" if text else type(exc).__name__
