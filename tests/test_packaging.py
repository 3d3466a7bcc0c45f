"""What ships beside the code: appinfo/info.xml, the Dockerfile and the image's locks (requirements/), ex_app/
(start.sh, healthcheck.sh, icons) and scripts/register.sh. Static checks, plus the shell scripts run against fakes
(no Docker, no Nextcloud)."""

from __future__ import annotations

import contextlib
import fnmatch
import http.server
import json
import os
import re
import shutil
import socket
import socketserver
import stat
import subprocess
import sys
import tempfile
import threading
import tomllib
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version
from pydantic import AliasChoices

from text2image_hub.admin import RuntimeConfig, config_from_values
from text2image_hub.settings import Settings, load_settings

REPO = Path(__file__).resolve().parent.parent
INFO_XML = REPO / "appinfo" / "info.xml"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
MAKEFILE = REPO / "Makefile"
FLAVOURS = ("cpu", "cuda")
START_SH = REPO / "ex_app" / "start.sh"
HEALTHCHECK_SH = REPO / "ex_app" / "healthcheck.sh"
REGISTER_SH = REPO / "scripts" / "register.sh"
ICONS = (REPO / "ex_app" / "img" / "app.svg", REPO / "ex_app" / "img" / "app-dark.svg")
SH = shutil.which("sh") or "/bin/sh"

# The keys of the --json-info document of a real registration (Nextcloud 34.0.1, AppAPI 34.0.0), copied from the
# recorded `occ app_api:app:register` call of the Nextcloud contract, scenario 01.
RECORDED_JSON_INFO_KEYS = {"id", "name", "daemon_config_name", "version", "secret", "port", "routes"}
RECORDED_ROUTE_KEYS = {"url", "verb", "access_level", "headers_to_exclude"}


@pytest.fixture(scope="module")
def info() -> ET.Element:
    return ET.parse(INFO_XML).getroot()


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return DOCKERFILE.read_text()


def text(element: ET.Element, path: str) -> str:
    found = element.find(path)
    assert found is not None, f"info.xml has no <{path}>"
    return (found.text or "").strip()


def pyproject() -> dict[str, Any]:
    with (REPO / "pyproject.toml").open("rb") as file:
        return tomllib.load(file)


def pyproject_version() -> str:
    value = pyproject()["project"]["version"]
    assert isinstance(value, str)
    return value


def environment_variables(info: ET.Element) -> dict[str, ET.Element]:
    return {
        text(variable, "name"): variable for variable in info.iterfind("external-app/environment-variables/variable")
    }


# --- appinfo/info.xml -------------------------------------------------------------------------------------------------


def test_info_xml_identity_is_text2image_hub(info: ET.Element) -> None:
    assert text(info, "id") == "text2image_hub"
    assert text(info, "name") == "Text2Image Hub"
    assert text(info, "namespace") == "Text2ImageHub"
    assert text(info, "licence") == "agpl"
    assert [category.text for category in info.iterfind("category")] == ["ai"]
    assert text(info, "summary")
    assert info.find("author") is not None


def test_info_xml_description_names_the_provider_and_the_api(info: ET.Element) -> None:
    description = text(info, "description")
    for phrase in ("core:text2image", "FLUX.1-schnell", "IONOS", "OpenAI-compatible", "/v1/images/generations"):
        assert phrase in description


def test_info_xml_links_are_https_urls(info: ET.Element) -> None:
    for path in ("website", "bugs", "repository", "screenshot"):
        assert text(info, path).startswith("https://"), path


def test_versions_agree_across_info_xml_pyproject_and_image_tag(info: ET.Element) -> None:
    app_version = text(info, "version")
    assert re.fullmatch(r"\d+\.\d+\.\d+", app_version)
    assert app_version == pyproject_version()
    assert text(info, "external-app/docker-install/image-tag") == app_version


def test_installed_package_version_matches_info_xml(info: ET.Element) -> None:
    try:
        installed = version("text2image_hub")
    except PackageNotFoundError:
        pytest.skip("text2image_hub is not installed (pip install -e .); running from the source tree")
    assert installed == text(info, "version")


def test_nextcloud_dependency_is_31_to_34(info: ET.Element) -> None:
    nextcloud = info.find("dependencies/nextcloud")
    assert nextcloud is not None
    assert nextcloud.get("min-version") == "31"
    assert nextcloud.get("max-version") == "34"


def test_docker_install_names_the_ghcr_image(info: ET.Element) -> None:
    assert text(info, "external-app/docker-install/registry") == "ghcr.io"
    assert text(info, "external-app/docker-install/image") == "text2image-hub/text2image_hub"


def test_v1_route_is_public_for_get_post_and_delete(info: ET.Element) -> None:
    routes = list(info.iterfind("external-app/routes/route"))
    assert len(routes) == 1
    route = routes[0]
    assert text(route, "url") == "^/v1/.*"
    assert set(text(route, "verb").split(",")) == {"GET", "POST", "DELETE"}  # DELETE: cancelling a /v1 job
    assert text(route, "access_level") == "PUBLIC"
    # AppAPI decodes this element as a JSON list of header names.
    assert json.loads(text(route, "headers_to_exclude")) == []


@pytest.mark.parametrize(
    ("path", "method", "matches"),
    [
        ("/v1/images/generations", "POST", True),
        ("/v1/models", "GET", True),
        ("/heartbeat", "GET", False),
        ("/admin/v1/x", "GET", False),
        ("/v1/images/jobs/abc", "DELETE", True),
        ("/v1/models", "PUT", False),
    ],
)
def test_v1_route_matches_only_the_api(info: ET.Element, path: str, method: str, matches: bool) -> None:
    route = info.find("external-app/routes/route")
    assert route is not None
    # AppAPI: preg_match on the path with its leading slash, and the method as a substring of the verb list.
    hit = re.search(text(route, "url"), path) is not None and method.lower() in text(route, "verb").lower()
    assert hit is matches


def test_environment_variables_are_prefixed_and_documented(info: ET.Element) -> None:
    variables = list(info.iterfind("external-app/environment-variables/variable"))
    names = [text(variable, "name") for variable in variables]
    assert len(names) == len(set(names))
    for variable in variables:
        name = text(variable, "name")
        assert name.startswith("T2I_"), name
        assert re.fullmatch(r"T2I_[A-Z0-9_]+", name), name
        assert text(variable, "display-name"), name
        assert text(variable, "description"), name
        assert variable.find("default") is not None, name


def test_environment_variables_include_the_deploy_time_settings(info: ET.Element) -> None:
    names = set(environment_variables(info))
    expected = {"T2I_BACKEND", "T2I_REMOTE_PRESET", "T2I_REMOTE_BASE_URL", "T2I_REMOTE_MODEL", "T2I_LOCAL_MODEL"}
    expected |= {"T2I_DEFAULT_SIZE", "T2I_MODEL_PATH", "T2I_POLL_INTERVAL", "T2I_LOCAL_SPEEDUPS", "T2I_IMAGE_TTL"}
    assert expected <= names


def test_environment_variables_hold_no_secrets(info: ET.Element) -> None:
    # Deploy options are stored and shown in plain text; keys belong on the admin page (a sensitive field).
    for name in environment_variables(info):
        assert not re.search(r"KEY|SECRET|TOKEN|PASSWORD", name), name


def test_environment_variables_are_read_by_the_app(info: ET.Element) -> None:
    known: set[str] = {f"T2I_{field.upper()}" for field in RuntimeConfig.model_fields}
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        if isinstance(alias, str):
            known.add(alias)
        elif isinstance(alias, AliasChoices):
            known.update(choice for choice in alias.choices if isinstance(choice, str))
    assert set(environment_variables(info)) <= known


def test_environment_defaults_are_accepted_by_the_app(info: ET.Element) -> None:
    defaults = {name: (variable.findtext("default") or "") for name, variable in environment_variables(info).items()}
    settings = load_settings({**defaults, "APP_PORT": "9033"}, field_ids=tuple(RuntimeConfig.model_fields))
    assert settings.config_defaults["backend"] == "auto"  # AppAPI deploys with these: "auto" must survive it
    assert config_from_values({}, settings.config_defaults, automatic="remote").backend == "remote"
    config = config_from_values({}, settings.config_defaults, automatic="local")
    assert config.backend == "local"
    assert config.remote_preset == "ionos"
    assert settings.poll_interval == 5
    assert settings.image_ttl == 3600
    assert settings.model_path is None


# --- Dockerfile and .dockerignore -------------------------------------------------------------------------------------


def instructions(dockerfile: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with continuation lines joined and comments dropped."""
    joined = re.sub(
        r"\\\n", " ", "\n".join(line for line in dockerfile.splitlines() if not line.lstrip().startswith("#"))
    )
    pairs = []
    for line in joined.splitlines():
        if line.strip():
            keyword, _, rest = line.strip().partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def final_stage(dockerfile: str) -> list[tuple[str, str]]:
    pairs = instructions(dockerfile)
    last_from = max(index for index, (keyword, _) in enumerate(pairs) if keyword == "FROM")
    return pairs[last_from:]


def test_dockerfile_is_multi_stage_on_python_311_slim(dockerfile: str) -> None:
    stages = [rest for keyword, rest in instructions(dockerfile) if keyword == "FROM"]
    assert len(stages) >= 2
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in dockerfile
    assert stages[-1].split()[-1] == "runtime"
    assert any(stage.split()[-1] == "builder" for stage in stages[:-1])


def test_dockerfile_runs_as_a_non_root_user(dockerfile: str) -> None:
    users = [rest for keyword, rest in final_stage(dockerfile) if keyword == "USER"]
    assert users
    assert users[-1] not in {"root", "0", "0:0"}
    assert "--uid 1000" in dockerfile


def test_dockerfile_enters_through_start_sh_and_checks_health(dockerfile: str) -> None:
    stage = final_stage(dockerfile)
    entrypoints = [rest for keyword, rest in stage if keyword == "ENTRYPOINT"]
    assert [json.loads(rest) for rest in entrypoints] == [["/app/ex_app/start.sh"]]
    healthchecks = [rest for keyword, rest in stage if keyword == "HEALTHCHECK"]
    assert len(healthchecks) == 1
    assert "CMD" in healthchecks[0]
    assert "/app/ex_app/healthcheck.sh" in healthchecks[0]
    copies = " ".join(rest for keyword, rest in stage if keyword == "COPY")
    assert "ex_app/start.sh" in copies
    assert "ex_app/healthcheck.sh" in copies


def test_dockerfile_flavour_selects_cpu_or_cuda_torch(dockerfile: str) -> None:
    assert "ARG FLAVOUR=cpu" in dockerfile
    assert re.search(r"^\s*cpu\) set -- --find-links \"\$\{CPU_TORCH_LINKS\}\" ;;", dockerfile, re.MULTILINE)
    assert re.search(r"^\s*cuda\) set -- ;;", dockerfile, re.MULTILINE)  # PyPI's torch is the CUDA build
    assert "ARG CPU_TORCH_LINKS=https://download.pytorch.org/whl/cpu/torch/" in dockerfile


def builder_runs(dockerfile: str) -> list[str]:
    pairs = instructions(dockerfile)
    last_from = max(index for index, (keyword, _) in enumerate(pairs) if keyword == "FROM")
    return [rest for keyword, rest in pairs[:last_from] if keyword == "RUN"]


def test_dockerfile_installs_every_package_from_the_flavours_lock_with_hashes(dockerfile: str) -> None:
    copies = [rest.split() for keyword, rest in instructions(dockerfile) if keyword == "COPY"]
    assert ["requirements/image-cpu.txt", "requirements/image-cuda.txt", "/src/requirements/"] in copies
    installs = [run for run in builder_runs(dockerfile) if "pip install" in run]
    assert len(installs) == 2
    from_lock, app = installs
    lock = '-r "/src/requirements/image-${FLAVOUR}.txt"'
    for option in ("--require-hashes", "--no-deps", "--only-binary :all:", lock):
        assert option in from_lock, option
    # The app from its source tree, with nothing resolved: its dependencies and setuptools came from the lock.
    assert "pip install --no-deps --no-build-isolation --no-index /src" in app
    assert "pip check" in app
    assert "import text2image_hub, torch, diffusers" in app


def test_dockerfile_builds_only_for_the_architecture_the_locks_cover(dockerfile: str) -> None:
    from_lock = next(run for run in builder_runs(dockerfile) if "--require-hashes" in run)
    assert 'if [ "${arch}" != amd64 ]; then' in from_lock


def test_dockerfile_pins_frpc_and_always_checks_its_sha256(dockerfile: str) -> None:
    version = re.search(r"^ARG FRP_VERSION=(\d+\.\d+\.\d+)$", dockerfile, re.MULTILINE)
    assert version
    for arch in ("AMD64", "ARM64"):
        assert re.search(rf"^ARG FRP_SHA256_{arch}=[0-9a-f]{{64}}$", dockerfile, re.MULTILINE), arch
    frp = next(run for run in builder_runs(dockerfile) if "frpc" in run)
    assert 'amd64) sha256="${FRP_SHA256_AMD64}" ;;' in frp
    assert 'arm64) sha256="${FRP_SHA256_ARM64}" ;;' in frp
    assert "exit 1" in frp  # any other architecture: no checksum, no frpc
    # Unconditional (no "if"), and before the archive is unpacked.
    assert "if " not in frp
    assert frp.index("sha256sum -c") < frp.index("tar -xzf")


def test_dockerfile_sets_the_runtime_environment(dockerfile: str, info: ET.Element) -> None:
    envs = " ".join(rest for keyword, rest in final_stage(dockerfile) if keyword == "ENV")
    volume = f"/nc_app_{text(info, 'id')}_data"  # where AppAPI mounts the app's volume
    assert "PYTHONUNBUFFERED=1" in envs
    assert "HF_HUB_DISABLE_TELEMETRY=1" in envs
    assert "HF_HUB_DISABLE_PROGRESS_BARS=1" in envs  # no tqdm bars in the container log
    assert f"HF_HOME={volume}/huggingface" in envs
    assert f"APP_PERSISTENT_STORAGE={volume}" in envs
    assert volume in dockerfile.split("USER")[0]  # created (and chowned) before dropping root


def test_dockerfile_fetches_frpc_for_the_target_architecture(dockerfile: str) -> None:
    assert "ARG TARGETARCH" in dockerfile
    assert "frpc" in dockerfile
    assert re.search(r"linux_\$\{arch\}", dockerfile)


def dockerignore_includes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches the path or one of its parents decides; '!' re-includes."""
    parts = path.split("/")
    candidates = ["/".join(parts[: index + 1]) for index in range(len(parts))]
    included = True
    for pattern in patterns:
        negated = pattern.startswith("!")
        cleaned = pattern.lstrip("!").strip("/")
        if any(fnmatch.fnmatchcase(candidate, cleaned) for candidate in candidates):
            included = negated
    return included


def test_dockerignore_keeps_what_the_dockerfile_copies(dockerfile: str) -> None:
    patterns = [line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and line[0] != "#"]
    sources = []
    for keyword, rest in instructions(dockerfile):
        if keyword == "COPY" and "--from=" not in rest:
            words = [word for word in rest.split() if not word.startswith("--")]
            sources.extend(words[:-1])
    assert sources
    for source in sources:
        assert (REPO / source).exists(), source
        assert dockerignore_includes(source, patterns), source
    for excluded in (".venv/bin/python", "tests/test_packaging.py", ".git/HEAD", "lib/text2image_hub/__pycache__/x"):
        assert not dockerignore_includes(excluded, patterns), excluded


# --- requirements/: the image's locks --------------------------------------------------------------------------------


def lock_path(flavour: str) -> Path:
    return REPO / "requirements" / f"image-{flavour}.txt"


def lock_entries(flavour: str) -> dict[str, tuple[str, list[str]]]:
    """{canonical name: (version, sha256 digests)} of a lock, failing on any line that is not `name==version` with
    hashes (an index option, an unpinned or editable requirement)."""
    lines = [line for line in lock_path(flavour).read_text().splitlines() if not line.lstrip().startswith("#")]
    entries: dict[str, tuple[str, list[str]]] = {}
    for entry in re.sub(r"\\\n", " ", "\n".join(lines)).splitlines():
        if not entry.strip():
            continue
        pin, *options = entry.split()
        found = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!-]+)", pin)
        assert found, entry
        digests = [option.removeprefix("--hash=sha256:") for option in options]
        assert digests, f"{pin} has no hash"
        assert all(re.fullmatch(r"[0-9a-f]{64}", digest) for digest in digests), entry
        name = canonicalize_name(found.group(1))
        assert name not in entries, f"{name} twice"
        entries[name] = (found.group(2), digests)
    return entries


def input_requirements(flavour: str) -> list[Requirement]:
    lines = (REPO / "requirements" / f"image-{flavour}.in").read_text().splitlines()
    return [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]


def app_requirements() -> list[Requirement]:
    config = pyproject()
    specs = [*config["project"]["dependencies"], *config["project"]["optional-dependencies"]["local"]]
    return [Requirement(spec) for spec in [*specs, *config["build-system"]["requires"]]]


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_lock_pins_every_package_to_one_version_with_hashes(flavour: str) -> None:
    entries = lock_entries(flavour)
    assert len(entries) > 50
    assert "text2image-hub" not in entries  # the app is installed from its source, not from the lock


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_lock_satisfies_pyproject_and_its_input(flavour: str) -> None:
    entries = lock_entries(flavour)
    requirements = [*app_requirements(), *input_requirements(flavour)]
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        assert name in entries, f"{name} is missing from {lock_path(flavour).name}"
        locked = Version(entries[name][0])
        assert requirement.specifier.contains(locked, prereleases=True), f"{name}=={locked} outside {requirement}"
    assert {"torch", "setuptools", "diffusers", "nc-py-api"} <= {canonicalize_name(r.name) for r in requirements}


def test_cpu_lock_takes_the_cpu_build_of_torch_without_cuda() -> None:
    entries = lock_entries("cpu")
    assert Version(entries["torch"][0]).local == "cpu"
    assert not [name for name in entries if re.match(r"nvidia-|cuda-|triton", name)]


def test_cuda_lock_takes_pypis_cuda_12_8_build_of_torch() -> None:
    entries = lock_entries("cuda")
    assert Version(entries["torch"][0]).local is None  # PyPI's own wheel: its hashes are PyPI's
    assert entries["nvidia-cuda-runtime-cu12"][0].startswith("12.8.")
    assert "triton" in entries


def test_locks_agree_on_everything_but_torch_and_its_cuda_libraries() -> None:
    cpu, cuda = lock_entries("cpu"), lock_entries("cuda")
    differing = {name for name in cpu.keys() & cuda.keys() if cpu[name][0] != cuda[name][0]}
    assert differing == {"torch"}
    assert not cpu.keys() - cuda.keys()


def test_locks_come_from_make_lock_with_the_pinned_uv() -> None:
    makefile = MAKEFILE.read_text()
    uv_version = re.search(r"^UV_VERSION\s*:= (\d+\.\d+\.\d+)$", makefile, re.MULTILINE)
    assert uv_version
    assert "pip install --quiet uv==$(UV_VERSION)" in makefile
    assert re.search(r"^lock: .*## ", makefile, re.MULTILINE)  # listed by `make help`
    for option in ("--generate-hashes", "--python-version 3.11", "--python-platform x86_64-manylinux_2_28"):
        assert option in makefile, option
    for flavour in FLAVOURS:
        header = lock_path(flavour).read_text().splitlines()[:2]
        assert header[1] == f"#    make lock (uv {uv_version.group(1)}; CPython 3.11, linux x86_64 only)"


# --- ex_app/ scripts and icons ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("script", [START_SH, HEALTHCHECK_SH, REGISTER_SH], ids=lambda path: path.name)
def test_shell_script_is_executable_posix_sh(script: Path) -> None:
    assert script.stat().st_mode & stat.S_IXUSR
    assert script.read_text().startswith("#!/bin/sh\n")
    result = subprocess.run([SH, "-n", str(script)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("icon", ICONS, ids=lambda path: path.name)
def test_icon_is_an_svg_document(icon: Path) -> None:
    root = ET.parse(icon).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert root.get("viewBox")


def test_dark_icon_is_white_and_light_icon_is_not() -> None:
    light, dark = (ET.parse(icon).getroot() for icon in ICONS)
    dark_fills = {element.get("fill") for element in dark.iter() if element.get("fill")}
    light_fills = {element.get("fill") for element in light.iter() if element.get("fill")}
    assert dark_fills
    assert dark_fills <= {"#fff", "#ffffff", "white"}
    assert not light_fills & {"#fff", "#ffffff", "white"}


@pytest.fixture
def fake_bin(tmp_path: Path) -> Path:
    """A PATH folder whose `python3` records its arguments and whose `frpc` records its config file."""
    folder = tmp_path / "bin"
    folder.mkdir()
    (folder / "python3").write_text(
        "#!/bin/sh\n"
        'printf "%s\\n" "$@" > "$MARKERS/python3.args"\n'
        # frpc runs in the background: wait (at most 5 s) until it has recorded its config.
        'if [ -n "${HP_SHARED_KEY:-}" ]; then i=0; while [ ! -f "$MARKERS/frpc.toml" ] && [ $i -lt 50 ]; do'
        " sleep 0.1; i=$((i + 1)); done; fi\n"
    )
    (folder / "frpc").write_text(
        "#!/bin/sh\n"
        '[ "$1" = "-c" ] && cp "$2" "$MARKERS/frpc.toml.part" && mv "$MARKERS/frpc.toml.part" "$MARKERS/frpc.toml"\n'
    )
    for name in ("python3", "frpc"):
        (folder / name).chmod(0o755)
    return folder


def run_start_sh(fake_bin: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    markers = tmp_path / "markers"
    markers.mkdir(exist_ok=True)
    environ = {"PATH": f"{fake_bin}:/usr/bin:/bin", "MARKERS": str(markers), "FRPC_CONFIG": str(tmp_path / "frpc.toml")}
    environ["FRP_CERTS_DIR"] = str(tmp_path / "no-certs")
    environ.update(env)
    return subprocess.run(
        [str(START_SH), "--extra", "arg"], env=environ, capture_output=True, text=True, timeout=30, check=False
    )


def test_start_sh_without_harp_runs_the_app_without_frpc(fake_bin: Path, tmp_path: Path) -> None:
    result = run_start_sh(fake_bin, tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "markers" / "python3.args").read_text().split("\n")[:4] == [
        "-m",
        "text2image_hub",
        "--extra",
        "arg",
    ]
    assert not (tmp_path / "markers" / "frpc.toml").exists()
    assert not (tmp_path / "frpc.toml").exists()


HARP_ENV = {
    "HP_SHARED_KEY": "shared-key-123",
    "HP_FRP_ADDRESS": "appapi-harp",
    "HP_FRP_PORT": "8782",
    "APP_PORT": "23000",
    "APP_ID": "text2image_hub",
}


def test_start_sh_under_harp_tunnels_the_unix_socket_without_tls(fake_bin: Path, tmp_path: Path) -> None:
    result = run_start_sh(fake_bin, tmp_path, **HARP_ENV)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "markers" / "python3.args").read_text().startswith("-m\ntext2image_hub\n")
    config = tomllib.loads((tmp_path / "markers" / "frpc.toml").read_text())
    assert config["serverAddr"] == "appapi-harp"
    assert config["serverPort"] == 8782
    assert config["loginFailExit"] is False
    assert config["metadatas"] == {"token": "shared-key-123"}
    assert config["transport"]["tls"] == {"enable": False}
    assert config["proxies"] == [
        {
            "remotePort": 23000,
            "type": "tcp",
            "name": "text2image_hub",
            "plugin": {"type": "unix_domain_socket", "unixPath": "/tmp/exapp.sock"},  # noqa: S108 - nc_py_api's default
        }
    ]
    assert stat.S_IMODE((tmp_path / "frpc.toml").stat().st_mode) == 0o600  # it holds the shared key
    assert "shared-key-123" not in result.stdout + result.stderr


def test_start_sh_under_harp_uses_tls_when_certificates_exist(fake_bin: Path, tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    for name in ("client.crt", "client.key", "ca.crt"):
        (certs / name).write_text("-----BEGIN-----\n")
    result = run_start_sh(fake_bin, tmp_path, **HARP_ENV, FRP_CERTS_DIR=str(certs), HP_EXAPP_SOCK=str(tmp_path / "s"))
    assert result.returncode == 0, result.stderr
    config = tomllib.loads((tmp_path / "markers" / "frpc.toml").read_text())
    assert config["transport"]["tls"] == {
        "enable": True,
        "certFile": f"{certs}/client.crt",
        "keyFile": f"{certs}/client.key",
        "trustedCaFile": f"{certs}/ca.crt",
        "serverName": "harp.nc",
    }
    assert config["proxies"][0]["plugin"]["unixPath"] == str(tmp_path / "s")


def test_start_sh_under_harp_waits_then_goes_without_tls_for_an_empty_certs_folder(
    fake_bin: Path, tmp_path: Path
) -> None:
    certs = tmp_path / "certs"
    certs.mkdir()
    result = run_start_sh(fake_bin, tmp_path, **HARP_ENV, FRP_CERTS_DIR=str(certs), FRP_CERTS_WAIT="1")
    assert result.returncode == 0, result.stderr
    config = tomllib.loads((tmp_path / "markers" / "frpc.toml").read_text())
    assert config["transport"]["tls"] == {"enable": False}


class HeartbeatHandler(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/heartbeat" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


class FailingHeartbeatHandler(HeartbeatHandler):
    status = 503


class UnixHTTPServer(socketserver.ThreadingUnixStreamServer):
    daemon_threads = True


@contextlib.contextmanager
def serve(server: socketserver.BaseServer) -> Iterator[None]:
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture
def python_bin(tmp_path: Path) -> Path:
    folder = tmp_path / "python-bin"
    folder.mkdir()
    (folder / "python3").symlink_to(sys.executable)
    return folder


def run_healthcheck(python_bin: Path, **env: str) -> int:
    environ = {"PATH": f"{python_bin}:/usr/bin:/bin", **env}
    return subprocess.run([str(HEALTHCHECK_SH)], env=environ, capture_output=True, timeout=30, check=False).returncode


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.mark.parametrize(("handler", "expected"), [(HeartbeatHandler, 0), (FailingHeartbeatHandler, 1)])
def test_healthcheck_reflects_the_heartbeat_over_tcp(
    python_bin: Path, handler: type[HeartbeatHandler], expected: int
) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    port = server.server_address[1]
    with serve(server):
        assert run_healthcheck(python_bin, APP_HOST="0.0.0.0", APP_PORT=str(port)) == expected  # noqa: S104


def test_healthcheck_fails_when_nothing_listens(python_bin: Path) -> None:
    assert run_healthcheck(python_bin, APP_HOST="127.0.0.1", APP_PORT=str(free_port())) == 1


def test_healthcheck_fails_without_app_port(python_bin: Path) -> None:
    assert run_healthcheck(python_bin) == 1


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A short folder for unix sockets (their paths are limited to about 100 bytes)."""
    with tempfile.TemporaryDirectory(prefix="t2i-") as folder:
        yield Path(folder)


def test_healthcheck_under_harp_needs_the_socket_and_frpc(python_bin: Path, short_tmp: Path) -> None:
    sock = short_tmp / "exapp.sock"
    env = {"HP_SHARED_KEY": "k", "HP_EXAPP_SOCK": str(sock)}
    server = UnixHTTPServer(str(sock), HeartbeatHandler)
    with serve(server):
        assert run_healthcheck(python_bin, **env) == 1  # the app answers, but no frpc runs
        sleep = shutil.which("sleep")
        assert sleep is not None
        fake_frpc = short_tmp / "frpc"
        shutil.copy(sleep, fake_frpc)  # a process whose name is "frpc"
        with subprocess.Popen([str(fake_frpc), "30"]) as frpc:
            try:
                assert run_healthcheck(python_bin, **env) == 0
            finally:
                frpc.terminate()
    assert run_healthcheck(python_bin, **env) == 1  # socket gone


# --- scripts/register.sh ----------------------------------------------------------------------------------------------


@pytest.fixture
def fake_occ(tmp_path: Path) -> Path:
    occ = tmp_path / "occ"
    occ.write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        "with open(os.environ['OCC_LOG'], 'a') as f:\n"
        "    f.write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    occ.chmod(0o755)
    return occ


def run_register(fake_occ: Path, tmp_path: Path, *args: str, **env: str) -> tuple[int, list[list[str]], str]:
    log = tmp_path / "occ.log"
    environ = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "OCC": str(fake_occ), "OCC_LOG": str(log)}
    environ["PYTHON"] = sys.executable
    environ.update(env)
    result = subprocess.run(
        [str(REGISTER_SH), *args], env=environ, capture_output=True, text=True, timeout=30, check=False
    )
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return result.returncode, calls, result.stderr


def test_register_sh_registers_the_daemon_and_the_app(fake_occ: Path, tmp_path: Path, info: ET.Element) -> None:
    code, calls, stderr = run_register(fake_occ, tmp_path, APP_SECRET="s3cret", APP_PORT="9100", APP_HOST="0.0.0.0")  # noqa: S104
    assert code == 0, stderr
    daemon, unregister, register = calls
    assert daemon == [
        "app_api:daemon:register", "manual_install", "Manual Install", "manual-install", "http", "127.0.0.1",
        "http://127.0.0.1:8080",
    ]  # fmt: skip
    assert unregister == ["app_api:app:unregister", "text2image_hub", "--silent", "--force"]
    assert register[:4] == ["app_api:app:register", "text2image_hub", "manual_install", "--json-info"]
    assert register[5:] == ["--wait-finish"]
    json_info = json.loads(register[4])
    assert set(json_info) == RECORDED_JSON_INFO_KEYS
    assert json_info["id"] == "text2image_hub"
    assert json_info["version"] == text(info, "version")
    assert json_info["daemon_config_name"] == "manual_install"
    assert json_info["secret"] == "s3cret"
    assert json_info["port"] == 9100
    assert json_info["routes"] == [
        {"url": "^/v1/.*", "verb": "GET,POST,DELETE", "access_level": 0, "headers_to_exclude": []}
    ]
    assert set(json_info["routes"][0]) == RECORDED_ROUTE_KEYS
    assert "s3cret" not in stderr


def test_register_sh_without_secret_calls_no_occ(fake_occ: Path, tmp_path: Path) -> None:
    code, calls, stderr = run_register(fake_occ, tmp_path)
    assert code == 2
    assert calls == []
    assert "APP_SECRET" in stderr


def test_register_sh_rejects_a_non_numeric_port(fake_occ: Path, tmp_path: Path) -> None:
    code, calls, _ = run_register(fake_occ, tmp_path, APP_SECRET="s", APP_PORT="90x")
    assert code == 2
    assert calls == []


def test_register_sh_unregister_tolerates_a_missing_app(fake_occ: Path, tmp_path: Path) -> None:
    code, calls, stderr = run_register(fake_occ, tmp_path, "unregister")
    assert code == 0, stderr
    assert calls == [["app_api:app:unregister", "text2image_hub", "--silent", "--force"]]


def test_register_sh_honours_daemon_host_and_nextcloud_url(fake_occ: Path, tmp_path: Path) -> None:
    code, calls, stderr = run_register(
        fake_occ, tmp_path, APP_SECRET="s", DAEMON_HOST="exapp.local", NEXTCLOUD_URL="https://cloud.example"
    )
    assert code == 0, stderr
    assert calls[0][-2:] == ["exapp.local", "https://cloud.example"]
