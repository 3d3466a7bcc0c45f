import pytest

from tests.instant_backend import instant_model
from text2image_hub.errors import InvalidRequestError
from text2image_hub.imaging import ImageSize
from text2image_hub.provider import PROVIDER_ID, TaskInput, provider_declaration


def test_parse_accepts_what_nextcloud_delivers_as_strings():
    parsed = TaskInput.parse({"input": "  a cat  ", "numberOfImages": "2", "size": "512x512", "seed": "7"})
    assert (parsed.prompt, parsed.count, parsed.size, parsed.seed) == ("a cat", 2, ImageSize(512, 512), 7)


def test_parse_minus_one_seed_means_random():
    assert TaskInput.parse({"input": "x", "numberOfImages": 1, "seed": -1}).seed is None


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ({"input": "", "numberOfImages": 1}, "MISSING_PROMPT"),
        ({"input": "   ", "numberOfImages": 1}, "MISSING_PROMPT"),
        ({"numberOfImages": 1}, "MISSING_PROMPT"),
        ({"input": "x", "numberOfImages": 0}, "INVALID_N"),
        ({"input": "x", "numberOfImages": 13}, "INVALID_N"),
        ({"input": "x", "numberOfImages": 500}, "INVALID_N"),
        ({"input": "x", "numberOfImages": "two"}, "INVALID_N"),
        ({"input": "x", "numberOfImages": 1.5}, "INVALID_N"),
        ({"input": "x", "numberOfImages": True}, "INVALID_N"),
        ({"input": "x", "numberOfImages": 1, "size": "huge"}, "INVALID_SIZE"),
        ({"input": "x", "numberOfImages": 1, "seed": "abc"}, "INVALID_SEED"),
        ({"input": "x", "numberOfImages": 1, "seed": 1.5}, "INVALID_SEED"),
        ({"input": "x", "numberOfImages": 1, "seed": -5}, "INVALID_SEED"),
    ],
)
def test_parse_rejects_bad_input_with_a_code(raw, code):
    with pytest.raises(InvalidRequestError) as caught:
        TaskInput.parse(raw)
    assert caught.value.code == code
    assert caught.value.user_message


def test_declaration_lists_the_backend_sizes_with_defaults():
    declaration = provider_declaration(instant_model(), ImageSize(512, 512))
    assert declaration.id == PROVIDER_ID
    assert declaration.task_type == "core:text2image"
    assert [shape.name for shape in declaration.optional_input_shape] == ["size", "style", "seed"]
    values = [value.value for value in declaration.optional_input_shape_enum_values["size"]]
    assert values == ["256x256", "512x512", "1024x1024", "1024x768"]
    styles = [value.value for value in declaration.optional_input_shape_enum_values["style"]]
    assert styles[0] == "none"
    assert {"photograph", "watercolour", "pixel_art"} <= set(styles)
    assert declaration.optional_input_shape_defaults == {"size": "512x512", "style": "none", "seed": -1}
    assert declaration.input_shape_defaults == {"numberOfImages": 1}
    assert declaration.expected_runtime >= 1


def test_declaration_without_styles_when_the_admin_turned_them_off():
    declaration = provider_declaration(instant_model(), ImageSize(512, 512), styles=False)
    assert [shape.name for shape in declaration.optional_input_shape] == ["size", "seed"]
    assert "style" not in declaration.optional_input_shape_enum_values


def test_parse_keeps_the_style_for_the_service_to_check():
    assert TaskInput.parse({"input": "x", "style": "watercolour"}).style == "watercolour"
    assert TaskInput.parse({"input": "x", "style": ""}).style is None
