"""API errors rendered as the real server's `Status` objects, so clients parse them unchanged."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error answered as a `Status` body with the HTTP code of the real API server."""

    def __init__(
        self, code: int, reason: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details

    def status(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        }
        if self.details is not None:
            body["details"] = self.details
        return body

    @classmethod
    def not_found(cls, plural: str, group: str, name: str) -> ApiError:
        what = f"{plural}.{group}" if group else plural
        return cls(404, "NotFound", f'{what} "{name}" not found',
                   {"name": name, "group": group, "kind": plural})

    @classmethod
    def already_exists(cls, plural: str, group: str, name: str) -> ApiError:
        what = f"{plural}.{group}" if group else plural
        return cls(409, "AlreadyExists", f'{what} "{name}" already exists',
                   {"name": name, "group": group, "kind": plural})

    @classmethod
    def conflict(cls, plural: str, group: str, name: str) -> ApiError:
        what = f"{plural}.{group}" if group else plural
        return cls(409, "Conflict",
                   f'Operation cannot be fulfilled on {what} "{name}": the object has been '
                   "modified; please apply your changes to the latest version and try again",
                   {"name": name, "group": group, "kind": plural})

    @classmethod
    def invalid(cls, kind: str, name: str, message: str) -> ApiError:
        return cls(422, "Invalid", f'{kind} "{name}" is invalid: {message}',
                   {"name": name, "kind": kind})

    @classmethod
    def refused(cls, group: str, kind: str, name: str, message: str,
                causes: list[dict[str, str]]) -> ApiError:
        """A 422 listing every field the schema or a CEL rule refuses, as the real server does."""
        return cls(422, "Invalid", message,
                   {"name": name, "group": group, "kind": kind, "causes": causes})

    @classmethod
    def bad_request(cls, message: str) -> ApiError:
        return cls(400, "BadRequest", message)

    @classmethod
    def gone(cls, requested: int, oldest: int) -> ApiError:
        return cls(410, "Expired", f"too old resource version: {requested} ({oldest})")
