"""The exception tree of text2image_hub.

Every error we raise on purpose derives from ``Text2ImageError`` and knows how it is shown:

- ``str(error)`` is the admin-facing message (logs, ``errorMessage`` of a failed task, nextcloud.log), in English;
- ``error.user_text`` is what a Nextcloud user or an API client reads, as a translatable ``i18n.Message``
  (``userFacingErrorMessage`` in the user's language; ``error.user_message`` is its English, for the OpenAI
  envelope's ``message``); it never holds a secret;
- ``error.http_status``, ``error.error_type`` and ``error.code`` build the OpenAI error envelope.

    Text2ImageError
    ├── InvalidRequestError        400  bad input (prompt, size, n, seed, …); code names the problem
    ├── AuthenticationError        401  no or wrong credentials for /v1
    ├── NotFoundError              404  unknown model, expired image, unknown (or another caller's) job
    ├── RateLimitError             429  a per-user/per-key limit or the remote service said "too many"
    │   ├── RemoteBusyError             the remote image service is still busy after our retries
    │   └── TooManyJobsError            the caller already has the most /v1 jobs running at once
    ├── ConfigurationError         500  an admin setting is missing or invalid (the message names the field)
    ├── BackendUnavailableError    503  the backend is loading, missing or unreachable
    │   └── BackendBusyError            the GPU stayed busy longer than the fallback waits
    ├── GenerationError            500  the backend failed to make the image
    │   ├── GpuOutOfMemoryError         the GPU ran out of memory for this size / count
    │   └── RemoteServiceError     502  the remote service answered with an error
    │       ├── RemoteAuthError         the remote service rejected our token
    │       ├── RemoteRejectedError 400  the remote service refused the request itself (e.g. the prompt)
    │       └── RemoteTimeoutError  504  no complete answer within the deadline
    ├── GenerationCancelledError   409  the user cancelled the task while it ran
    └── NextcloudUnavailableError  503  Nextcloud did not answer, is in maintenance or rejected our secret

Foreign exceptions are wrapped once, where the foreign library is called (``raise … from exc``).
"""

from __future__ import annotations

from .i18n import Message, _


class Text2ImageError(Exception):
    """Base of every error text2image_hub raises on purpose."""

    http_status = 500
    error_type = "server_error"
    code = "INTERNAL_ERROR"
    default_user_message: Message = _("The image could not be generated because of an internal error.")

    def __init__(
        self,
        message: str | Message,
        *,
        user_message: str | Message | None = None,
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(str(message))
        self.user_text: Message | str = user_message if user_message is not None else self.default_user_message
        if code is not None:
            self.code = code
        self.param = param

    @property
    def user_message(self) -> str:
        """The user's message in English."""
        return str(self.user_text)


class InvalidRequestError(Text2ImageError):
    """The request or task input is invalid; the message is safe to show to the user."""

    http_status = 400
    error_type = "invalid_request_error"
    code = "INVALID_REQUEST"

    def __init__(self, message: str | Message, *, code: str, param: str | None = None) -> None:
        super().__init__(message, user_message=message, code=code, param=param)


class AuthenticationError(Text2ImageError):
    http_status = 401
    error_type = "authentication_error"
    code = "INVALID_API_KEY"

    def __init__(self, message: str | Message) -> None:
        super().__init__(message, user_message=message)


class NotFoundError(Text2ImageError):
    http_status = 404
    error_type = "not_found_error"
    code = "NOT_FOUND"

    def __init__(self, message: str | Message, *, code: str = "NOT_FOUND", param: str | None = None) -> None:
        super().__init__(message, user_message=message, code=code, param=param)


class RateLimitError(Text2ImageError):
    http_status = 429
    error_type = "rate_limit_error"
    code = "RATE_LIMITED"
    default_user_message = _("Too many image requests; try again in a minute.")

    def __init__(self, message: str, *, retry_after: float, user_message: str | Message | None = None) -> None:
        super().__init__(message, user_message=user_message)
        self.retry_after = retry_after


class RemoteBusyError(RateLimitError):
    code = "REMOTE_BUSY"
    default_user_message = _("The image service is busy, try again in a minute.")


class TooManyJobsError(RateLimitError):
    code = "TOO_MANY_JOBS"


class ConfigurationError(Text2ImageError):
    """An admin setting is missing or invalid; ``field`` names it."""

    code = "CONFIGURATION_ERROR"
    default_user_message = _(
        "Image generation is not set up correctly on this server. Please ask your administrator to check the "
        "settings of the Text2Image Hub app."
    )

    def __init__(self, message: str, *, field: str) -> None:
        super().__init__(message)
        self.field = field


class BackendUnavailableError(Text2ImageError):
    http_status = 503
    error_type = "service_unavailable"
    code = "BACKEND_UNAVAILABLE"
    default_user_message = _("The image generator is starting or unavailable right now; try again in a few minutes.")


class BackendBusyError(BackendUnavailableError):
    """The local GPU did not become free within the fallback's wait limit."""

    code = "BACKEND_BUSY"


class GenerationError(Text2ImageError):
    code = "GENERATION_FAILED"
    default_user_message = _("The image could not be generated. Try again, or try another prompt.")


class GpuOutOfMemoryError(GenerationError):
    code = "GPU_OUT_OF_MEMORY"
    default_user_message = _("Image too large for this server's GPU, try a smaller size or fewer images.")


class RemoteServiceError(GenerationError):
    http_status = 502
    code = "REMOTE_ERROR"
    default_user_message = _("The image service reported an error. Try again later.")


class RemoteAuthError(RemoteServiceError):
    code = "REMOTE_AUTH_FAILED"
    default_user_message = _(
        "The image service refused this server's access: please ask your administrator to check the remote "
        "service token in the Text2Image Hub settings."
    )


class RemoteRejectedError(RemoteServiceError):
    """The service refused the request itself (a 4xx other than 401/403/429): not retried, the user told why."""

    http_status = 400
    error_type = "invalid_request_error"
    code = "REMOTE_REJECTED"
    default_user_message = _("The image service refused this request. Please change it and try again.")


class RemoteTimeoutError(RemoteServiceError):
    """No complete answer within the account's deadline (late, or trickling)."""

    http_status = 504
    code = "REMOTE_TIMEOUT"
    default_user_message = _("The image service did not answer in time. Please try again later.")


class GenerationCancelledError(Text2ImageError):
    http_status = 409
    error_type = "invalid_request_error"
    code = "CANCELLED"
    default_user_message = _("The task was cancelled.")


class NextcloudUnavailableError(Text2ImageError):
    http_status = 503
    error_type = "service_unavailable"
    code = "NEXTCLOUD_UNAVAILABLE"
    default_user_message = _("Nextcloud is not reachable right now.")
