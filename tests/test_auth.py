import base64

from text2image_hub.auth import appapi_user, bearer_token, matching_key


def _headers(user: str = "", secret: str = "s3cret", app: str = "text2image_hub") -> dict[str, str]:
    signature = base64.b64encode(f"{user}:{secret}".encode()).decode()
    return {"ex-app-id": app, "ex-app-version": "1.0.0", "authorization-app-api": signature}


def test_appapi_user_returns_the_user_for_valid_headers():
    assert appapi_user(_headers("alice"), "text2image_hub", "s3cret") == "alice"
    assert appapi_user(_headers(""), "text2image_hub", "s3cret") == ""


def test_appapi_user_rejects_wrong_secret_app_or_missing_headers():
    assert appapi_user(_headers(secret="nope"), "text2image_hub", "s3cret") is None
    assert appapi_user(_headers(app="other"), "text2image_hub", "s3cret") is None
    assert appapi_user({}, "text2image_hub", "s3cret") is None
    assert appapi_user({**_headers(), "authorization-app-api": "%%%"}, "text2image_hub", "s3cret") is None
    assert appapi_user(_headers(secret=""), "text2image_hub", "") is None


def test_bearer_token_and_matching_key():
    assert bearer_token({"authorization": "Bearer abc"}) == "abc"
    assert bearer_token({"authorization": "Basic abc"}) is None
    assert matching_key("k2", ["k1", "k2"]) == "k2"
    assert matching_key("k3", ["k1", "k2"]) is None
