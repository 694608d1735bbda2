"""Errors as OpenAI sends them: `{"error": {"message", "type", "code"}}` with a 4xx/5xx status.

Every bad input is an APIError raised where it is found; the app turns it (and pydantic's
validation errors, and any unexpected exception of one request) into this shape, so one
request's failure never reaches another request or the server.
"""

from __future__ import annotations

from starlette.responses import JSONResponse


class APIError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def bad_request(message: str, code: str = "invalid_value") -> APIError:
    return APIError(400, message, "invalid_request_error", code)


def unauthorized() -> APIError:
    return APIError(401, "invalid or missing API key", "authentication_error", "invalid_api_key")


def not_found(message: str) -> APIError:
    return APIError(404, message, "not_found_error", "not_found")


def too_large(limit: int) -> APIError:
    return APIError(413, f"request body larger than {limit} bytes", "invalid_request_error", "request_too_large")


def server_error(message: str) -> APIError:
    return APIError(500, message, "server_error", "internal_error")


def unavailable(message: str) -> APIError:
    return APIError(503, message, "server_error", "unavailable")


def describe_validation(error) -> str:
    """pydantic's ValidationError as one line: where, and what is wrong (the first few)."""
    parts = []
    for e in error.errors()[:3]:
        where = ".".join(str(p) for p in e.get("loc", ()) if p not in ("function-after",))
        kind = e.get("type", "")
        if kind == "json_invalid":
            return f"malformed JSON: {e.get('ctx', {}).get('error', e.get('msg'))}"
        msg = "unknown field" if kind == "extra_forbidden" else e.get("msg", "invalid")
        parts.append(f"{where}: {msg}" if where else msg)
    more = len(error.errors()) - 3
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")
