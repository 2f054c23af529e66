"""The errors requests raise, and how a validation error is worded: shared by every stage and both front doors."""

from __future__ import annotations

from typing import Any



class RequestError(ValueError):
    """A problem with what the client sent; `status` is the HTTP status a server answers with."""

    def __init__(self, message: str, status: int = 400, field: str | None = None):
        super().__init__(message)
        self.message, self.status, self.field = message, status, field

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.message, "field": self.field} if self.field else {"error": self.message}


class Cancelled(Exception):
    """The request was given up (its timeout passed): work on it stops at the next check, nobody awaits the result."""


def redact(text: str, secret: str | None) -> str:
    """Remove a secret from text headed for logs or clients (library errors can echo tokens)."""
    return text.replace(secret, "***") if secret else text


def invalid_parameter(errors: list[Any], whole_path: bool = False) -> RequestError:
    """A 422 naming the first invalid field of a pydantic error list. `whole_path`: FastAPI's errors, whose location
    starts with the request part (body, query, ...) and may go deeper; else a model's, whose first item is the field
    (a union adds its branch to the path)."""
    first = errors[0]
    loc = [str(part) for part in first["loc"]]
    if whole_path:
        field = ".".join(loc[1:] if loc and loc[0] in ("body", "query", "header", "path") else loc) or "body"
    else:
        field = loc[0] if loc else "parameters"
    message = first["msg"].removeprefix("Value error, ")
    return RequestError(f"invalid parameter {field}: {message}", 422, field)


def empty_is_none(value: Any) -> Any:
    """An env var or form field set to blank means unset."""
    return None if isinstance(value, str) and not value.strip() else value
