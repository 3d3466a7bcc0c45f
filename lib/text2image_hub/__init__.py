"""text2image_hub: a Nextcloud core:text2image provider (local diffusers and remote OpenAI-compatible backends)."""

from importlib.metadata import PackageNotFoundError, version


def app_version() -> str:
    """The installed package version (equal to info.xml's version and the image tag)."""
    try:
        return version("text2image_hub")
    except PackageNotFoundError:  # running from a source tree that was never installed
        return "0.0.0"
