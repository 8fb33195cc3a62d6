"""Errors services raise; the API maps each to one HTTP status."""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    status_code = 400

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(ServiceError):  # noqa: N818 - reads better at the raise site
    status_code = 404


class Conflict(ServiceError):  # noqa: N818
    status_code = 409


class Invalid(ServiceError):  # noqa: N818
    """422 with a list of problems in the same shape as FastAPI's validation errors."""

    status_code = 422

    def __init__(self, problems: list[dict[str, Any]]) -> None:
        super().__init__("; ".join(str(p.get("msg")) for p in problems))
        self.problems = problems


def problem(loc: list[str | int], msg: str, kind: str = "value_error") -> dict[str, Any]:
    return {"loc": loc, "msg": msg, "type": kind}


class ProxyFailed(ServiceError):  # noqa: N818
    """502: the proxy refused or could not be reached; what it served before is what it serves now."""

    status_code = 502
