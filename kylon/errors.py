"""Kylon's own error bodies in OpenAI's shape: the default, for Kylon's own
routes and for every provider that declares no other (SPEC §4). A provider
whose SDK expects another shape overrides `Provider.error_body`, so every SDK
raises its usual exception class."""

OPENAI_TYPES = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("invalid_request_error", "invalid_api_key"),
    402: ("insufficient_quota", "insufficient_credits"),
    403: ("permission_error", "missing_skill"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    500: ("server_error", "internal_error"),
    502: ("server_error", "upstream_unreachable"),
    503: ("server_error", "provider_not_configured"),
    504: ("server_error", "upstream_timeout"),
}


def error_code(status):
    """Kylon's machine-readable code for a status (insufficient_credits …)."""
    return OPENAI_TYPES.get(status, ("", "error"))[1]


def openai_error_body(status, message, code=None):
    err_type, default_code = OPENAI_TYPES.get(status, ("server_error", "error"))
    return {"error": {"message": message, "type": err_type, "param": None, "code": code or default_code}}
