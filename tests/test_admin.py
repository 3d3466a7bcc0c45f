import pytest
from nc_py_api.ex_app.ui.settings import SettingsField

from text2image_hub.admin import (
    FIELD_IDS,
    FORM_ID,
    SENSITIVE_FIELDS,
    ConfigReader,
    RuntimeConfig,
    config_from_values,
    form_defaults,
    settings_form,
)
from text2image_hub.errors import ConfigurationError
from text2image_hub.imaging import ImageSize

CIPHERTEXT = "a" * 64 + "|" + "b" * 32 + "|" + "c" * 128 + "|3"


def test_saved_value_wins_over_environment_default():
    config = config_from_values({"backend": "remote"}, {"backend": "local", "remote_model": "m"})
    assert config.backend == "remote"
    assert config.remote_model == "m"


def test_unsaved_fields_use_builtin_defaults():
    config = config_from_values({}, {})
    assert config.backend == "remote"  # auto, on a machine without a GPU
    assert config.remote_preset == "ionos"
    assert config.watermark is True
    assert config.default_size is None


def test_strings_are_coerced():
    config = config_from_values(
        {"watermark": "0", "include_prompt_in_metadata": "true", "default_size": "512x512", "default_steps": "4"}, {}
    )
    assert config.watermark is False
    assert config.include_prompt_in_metadata is True
    assert config.default_size == ImageSize(512, 512)
    assert config.default_steps == 4


@pytest.mark.parametrize(
    ("saved", "field"),
    [
        ({"backend": "gpu"}, "backend"),
        ({"remote_base_url": "ftp://x"}, "remote_base_url"),
        ({"default_size": "big"}, "default_size"),
        ({"default_steps": "-3"}, "default_steps"),
        ({"remote_api_key": CIPHERTEXT}, "remote_api_key"),
    ],
)
def test_invalid_value_names_the_field(saved, field):
    with pytest.raises(ConfigurationError) as caught:
        config_from_values(saved, {})
    assert caught.value.field == field
    assert field in str(caught.value)
    assert "administrator" in caught.value.user_message


def test_invalid_secret_is_not_echoed():
    with pytest.raises(ConfigurationError) as caught:
        config_from_values({"remote_api_key": CIPHERTEXT}, {})
    assert CIPHERTEXT not in str(caught.value)


def test_api_key_list_splits_on_commas():
    assert config_from_values({"api_keys": " k1, ,k2 "}, {}).api_key_list() == ("k1", "k2")


async def test_config_reader_standalone_uses_environment_only():
    config = await ConfigReader(None, {"backend": "remote"}).load()
    assert config.backend == "remote"


def _options(field: SettingsField) -> list[object]:
    assert isinstance(field.options, dict)
    return list(field.options.values())


def test_form_fields_and_types():
    form = settings_form(("black-forest-labs/FLUX.1-schnell",), ("512x512", "1024x1024"))
    assert form.id == FORM_ID
    assert "text2image_hub_" not in form.id
    assert (form.section_type, form.section_id) == ("admin", "ai")
    fields = {field.id: field for field in form.fields}
    assert set(fields) == set(FIELD_IDS)
    assert fields["backend"].type.value == "select"
    assert set(_options(fields["backend"])) == {"auto", "local", "remote", "local_then_remote"}
    assert fields["backend"].default == "auto"
    assert set(_options(fields["remote_preset"])) == {"ionos", "openai", "custom"}
    for secret in SENSITIVE_FIELDS:
        assert fields[secret].type.value == "password"
        assert fields[secret].sensitive is True
    assert fields["watermark"].type.value == "checkbox"
    assert "black-forest-labs/FLUX.1-schnell" in _options(fields["local_model"])
    assert all(field.title for field in form.fields)


def test_empty_saved_value_falls_back_to_the_environment_default():
    config = config_from_values({"remote_api_key": "", "backend": ""}, {"remote_api_key": "env-token"})
    assert config.remote_api_key.get_secret_value() == "env-token"
    assert config.backend == "remote"


@pytest.mark.parametrize(
    ("saved", "automatic", "backend"),
    [
        ({}, "local", "local"),
        ({}, "remote", "remote"),
        ({"backend": "auto"}, "local", "local"),
        ({"backend": "local"}, "remote", "local"),  # an admin may still choose local on a CPU
        ({"backend": "local_then_remote"}, "remote", "local_then_remote"),
    ],
)
def test_auto_backend_is_what_the_machine_can_run(saved, automatic, backend):
    assert config_from_values(saved, {}, automatic=automatic).backend == backend


def test_environment_variable_set_empty_means_unset():
    assert config_from_values({}, {"backend": "", "default_steps": ""}).default_steps == 0


def test_form_defaults_are_the_environment_defaults_over_the_builtin_ones():
    environment = {
        "backend": "remote",
        "default_size": "768x768",
        "watermark": "off",
        "local_wait_limit": "12",
        "remote_api_key": "env-secret",
        "default_steps": "not a number",
    }
    form = settings_form(("m",), ("768x768",), environment)
    defaults = {field.id: field.default for field in form.fields}
    assert defaults["backend"] == "remote"
    assert defaults["default_size"] == "768x768"
    assert defaults["watermark"] is False
    assert defaults["local_wait_limit"] == 12.0
    assert defaults["remote_api_key"] == "", "a secret is never shown in the form"
    assert defaults["default_steps"] == 0, "an invalid environment value shows the built-in default"
    unchanged = set(defaults) - set(environment)
    assert {name: defaults[name] for name in unchanged} == {name: form_defaults({})[name] for name in unchanged}


def test_form_defaults_match_the_runtime_config_defaults():
    config = RuntimeConfig.model_validate({})
    for name, value in form_defaults({}).items():
        expected = getattr(config, name)
        assert value == ("" if expected is None or hasattr(expected, "get_secret_value") else expected), name


def test_form_shows_the_status_line():
    form = settings_form(("m",), ("512x512",), status="the remote service is not set up yet")
    assert form.description.endswith("Status: the remote service is not set up yet")
