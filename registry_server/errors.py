"""Every answer the registry gives that is not a success, one class per HTTP family.

The tree::

    ApiError                    base; ``status``, ``code`` and the one-sentence ``message``
    ├── BadRequest              400 bad_request: malformed name, version, body or header
    │   ├── DigestMismatch      400 digest_mismatch: the bytes hash to another digest
    │   ├── SizeMismatch        400 size_mismatch: an upload received N of M bytes
    │   ├── InvalidArtifact     400 invalid_artifact: not a tvskill, or its manifest disagrees
    │   ├── InvalidSketch       400 invalid_sketch: not a sketch, or not of this version's artifact
    │   └── InvalidSignature    400 invalid_signature: a bundle that does not cover the artifact or
    │                           is not signed by a registered, unrevoked key of the publisher
    ├── Unauthenticated         401 unauthenticated: no, bad, expired or revoked token
    ├── Forbidden               403 forbidden: authenticated, role too low (names the role)
    ├── NotFound                404 not_found: also for private skills the caller cannot read
    │   └── NoSketch            404 no_sketch: the version was published without a sketch
    ├── RequestTimeout          408 request_timeout: the client sent its request too slowly
    ├── Conflict                409 conflict: immutability, name collisions, upload offsets
    ├── TooLarge                413 too_large: names the limit
    ├── RangeNotSatisfiable     416 range_not_satisfiable: a Range past the end (``Content-Range``)
    ├── TooManyRequests         429 too_many_requests: failed-token throttling (``Retry-After``)
    ├── ServerFault             500 internal: the registry's own data is inconsistent
    ├── Unavailable             503 unavailable: the database is down or busy (``Retry-After``)
    └── InsufficientStorage     507 insufficient_storage: the registry's disk is full (``Retry-After``)
        └── QuotaExceeded       507 quota_exceeded: the namespace's storage quota (``limit``, ``used``)

Why one module: routes raise these and never build responses by hand, so every
non-2xx body has the shape ``{"error": {"code", "message"}}`` that docs/registry-api.md
promises, and foreign exceptions (SQLAlchemy, OSError, tvreg's ArtifactError) are
translated into one of them at one boundary per subsystem with ``raise ... from exc``.
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """An error answer: ``status`` and ``code`` are fixed per class, ``message`` per instance.

    ``extra`` fields are added inside the ``error`` object, ``top_level`` fields beside it
    (the current offset of an upload, which the API contract puts in the body itself),
    and ``headers`` are sent with the answer.
    """

    status = 500
    code = "internal"

    def __init__(
        self,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
        top_level: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})
        self.top_level = dict(top_level or {})

    def __str__(self) -> str:
        return self.message

    def body(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message, **self.extra}, **self.top_level}


class BadRequest(ApiError):
    status = 400
    code = "bad_request"


class DigestMismatch(BadRequest):
    """The bytes received do not hash to the digest the client declared."""

    code = "digest_mismatch"

    def __init__(self, message: str, *, expected: str, found: str) -> None:
        super().__init__(message, extra={"expected": expected, "found": found})
        self.expected = expected
        self.found = found


class SizeMismatch(BadRequest):
    """An upload is shorter (or longer) than the size declared when it was created."""

    code = "size_mismatch"

    def __init__(self, message: str, *, expected: int, received: int) -> None:
        super().__init__(message, extra={"expected": expected, "received": received})
        self.expected = expected
        self.received = received


class InvalidArtifact(BadRequest):
    code = "invalid_artifact"


class InvalidSketch(BadRequest):
    code = "invalid_sketch"


class InvalidSignature(BadRequest):
    code = "invalid_signature"


class Unauthenticated(ApiError):
    status = 401
    code = "unauthenticated"

    def __init__(self, message: str) -> None:
        super().__init__(message, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ApiError):
    status = 403
    code = "forbidden"


class NotFound(ApiError):
    status = 404
    code = "not_found"


class NoSketch(NotFound):
    """The version exists but was published without an interference sketch."""

    code = "no_sketch"


class RequestTimeout(ApiError):
    """The client took longer than the server's request timeout to send headers or body."""

    status = 408
    code = "request_timeout"

    def __init__(self, message: str, *, limit: float) -> None:
        super().__init__(message, headers={"Connection": "close"}, extra={"limit": limit})
        self.limit = limit


class Conflict(ApiError):
    status = 409
    code = "conflict"


class TooLarge(ApiError):
    status = 413
    code = "too_large"

    def __init__(self, message: str, *, limit: int) -> None:
        super().__init__(message, extra={"limit": limit})
        self.limit = limit


class RangeNotSatisfiable(ApiError):
    """A ``Range`` that starts past the end of the blob; ``Content-Range`` names its size."""

    status = 416
    code = "range_not_satisfiable"

    def __init__(self, message: str, *, size: int) -> None:
        super().__init__(message, headers={"Content-Range": f"bytes */{size}"}, extra={"size": size})
        self.size = size


class TooManyRequests(ApiError):
    """Too many failed authentications, or open uploads; ``Retry-After`` says when to retry."""

    status = 429
    code = "too_many_requests"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after


class ServerFault(ApiError):
    status = 500
    code = "internal"


class Unavailable(ApiError):
    status = 503
    code = "unavailable"

    def __init__(self, message: str, *, retry_after: int = 5) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after


class InsufficientStorage(ApiError):
    """The registry's disk is full (ENOSPC, EDQUOT, EFBIG): transient from the client's side."""

    status = 507
    code = "insufficient_storage"

    def __init__(self, message: str, *, retry_after: int = 60) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after


class QuotaExceeded(InsufficientStorage):
    """A namespace's storage quota would be exceeded: 507 without ``Retry-After`` (waiting does not help)."""

    code = "quota_exceeded"

    def __init__(self, message: str, *, limit: int, used: int) -> None:
        ApiError.__init__(self, message, extra={"limit": limit, "used": used})
        self.limit = limit
        self.used = used


class SchemaOutdated(Exception):
    """The database schema is not at this server's migration head; not an HTTP answer.

    Raised at startup (the server refuses to run) and by the admin CLI.
    """


__all__ = [
    "ApiError",
    "BadRequest",
    "Conflict",
    "DigestMismatch",
    "Forbidden",
    "InsufficientStorage",
    "InvalidArtifact",
    "InvalidSketch",
    "NoSketch",
    "NotFound",
    "QuotaExceeded",
    "RangeNotSatisfiable",
    "RequestTimeout",
    "SchemaOutdated",
    "ServerFault",
    "SizeMismatch",
    "TooLarge",
    "TooManyRequests",
    "Unauthenticated",
    "Unavailable",
]
