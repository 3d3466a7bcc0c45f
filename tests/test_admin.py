import pytest
from nc_py_api.ex_app.ui.settings import SettingsField

from text2image_hub.admin import FIELD_IDS, FORM_ID, SENSITIVE_FIELDS, ConfigReader, config_from_values, settings_form
from text2image_hub.errors import ConfigurationError
from text2image_hub.imaging import ImageSize

CIPHERTEXT = "a" * 64 + "|" + "b" * 32 + "|" + "c" * 128 + "|3"


def test_saved_value_wins_over_environment_default():
    config = config_from_values({"backend": "remote"}, {"backend": "local", "remote_model": "m"})
    assert config.backend == "remote"
    assert config.remote_model == "m"


def test_unsaved_fields_use_builtin_defaults():
    config = config_from_values({}, {})
    assert config.backend == "local"
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
    assert set(_options(fields["backend"])) == {"local", "remote", "local_then_remote"}
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
    assert config.backend == "local"
