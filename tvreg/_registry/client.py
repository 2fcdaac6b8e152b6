"""The registry's HTTP API (docs/registry-api.md) as Python methods, over ``httpx``.

This is the one boundary where HTTP becomes tvreg: every transport failure and every
non-2xx answer turns into a :class:`~tvreg.errors.RegistryError` subclass here (the
``{"error": {"code", "message"}}`` body supplies the sentence), so no ``httpx``
exception escapes to callers. Path segments are always validated names
(:mod:`tvreg._registry.refs`), never raw user input.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json as jsonlib
import os
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpcore
import httpx

from .._names import validate_name, validate_tag, validate_version
from .._version import __version__
from ..errors import (
    AuthError,
    Conflict,
    DownloadError,
    NotFound,
    RegistryError,
    RegistryUnavailable,
    SketchMissing,
)
from .config import API_PREFIX, normalize_url, redact_url, resolve
from .refs import SkillRef

DEFAULT_TIMEOUT = 60.0
MAX_RESPONSE_BYTES = 32 << 20
DEFAULT_MAX_VERSIONS = 10_000
"""The most versions :meth:`RegistryClient.skill` reads across pages (``TVREG_MAX_VERSIONS``)."""
VERSIONS_PER_PAGE = 100
"""The most a metadata answer (JSON) may hold; a registry sending more is refused, not buffered."""
_MAX_ERROR_BYTES = 64 << 10
# httpcore asks for 64 KiB per read; reads take whatever the socket holds up to 120 KiB (they never
# wait for more), fewer parses and Python trips per artifact. Not more: at or above glibc's mmap
# threshold (128 KiB) every recv buffer and h11's growing bytearray are mapped, faulted in and
# unmapped per read; measured on a 256 MiB ranged download, 1 MiB reads halved user CPU but doubled
# system CPU (1.18 CPU-s against 1.10 at 64 KiB and 0.86 at 120 KiB; benchmarks/README.md).
_READ_BYTES = 120 << 10


# -- a deadline on every call, not only on every read --------------------------------------------
#
# httpx's timeouts bound each socket operation, so a registry that sends one byte every
# 59 s never times out. Every read, write and connect of the client's sockets goes
# through these wrappers, which cap its timeout by what is left of the calling thread's
# deadline: a call ends within its deadline however the bytes trickle, headers included.

_local = threading.local()


def _left(kind: type[Exception]) -> float | None:
    deadline = getattr(_local, "deadline", None)
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise kind("the call's deadline passed")
    return left


def _cap(timeout: float | None, kind: type[Exception]) -> float | None:
    left = _left(kind)
    if left is None:
        return timeout
    return left if timeout is None else min(timeout, left)


@contextlib.contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Every socket operation of the client in this thread finishes within ``seconds`` from now (None: no cap).

    Nested deadlines keep the earlier one.
    """
    before = getattr(_local, "deadline", None)
    if seconds is not None:
        mine = time.monotonic() + seconds
        _local.deadline = mine if before is None else min(before, mine)
    try:
        yield
    finally:
        _local.deadline = before


class _DeadlineStream(httpcore.NetworkStream):
    def __init__(self, inner: httpcore.NetworkStream) -> None:
        self._inner = inner

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max(max_bytes, _READ_BYTES), _cap(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, _cap(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(self, ssl_context, server_hostname=None, timeout=None) -> httpcore.NetworkStream:  # noqa: ANN001
        return _DeadlineStream(self._inner.start_tls(ssl_context, server_hostname, _cap(timeout, httpcore.ConnectTimeout)))

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore.NetworkBackend):
    def __init__(self) -> None:
        self._inner = httpcore.SyncBackend()

    def connect_tcp(self, host, port, timeout=None, local_address=None, socket_options=None):  # noqa: ANN001
        return _DeadlineStream(
            self._inner.connect_tcp(host, port, _cap(timeout, httpcore.ConnectTimeout), local_address, socket_options)
        )

    def connect_unix_socket(self, path, timeout=None, socket_options=None):  # noqa: ANN001
        return _DeadlineStream(self._inner.connect_unix_socket(path, _cap(timeout, httpcore.ConnectTimeout), socket_options))

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


@functools.cache
def _ssl_context() -> ssl.SSLContext:
    """httpx's default verifying context, built once per process: loading the CA bundle costs ~50 ms of CPU."""
    return httpx.create_ssl_context(trust_env=False)


def _transport() -> httpx.HTTPTransport:
    transport = httpx.HTTPTransport(verify=_ssl_context(), trust_env=False)
    transport._pool._network_backend = _DeadlineBackend()  # httpx has no public hook for the network backend
    return transport


@dataclass(frozen=True)
class Answer:
    """A registry's answer to one metadata call, read whole under :data:`MAX_RESPONSE_BYTES`."""

    status_code: int
    reason_phrase: str
    headers: httpx.Headers
    content: bytes

    @property
    def is_success(self) -> bool:
        return 200 <= self.status_code < 300

    def json(self) -> Any:
        return jsonlib.loads(self.content)


def _sentence(text: str) -> str:
    text = " ".join(str(text).split())
    return text if text.endswith((".", "!", "?")) else text + "."


def _segment(ref: SkillRef | str) -> str:
    if isinstance(ref, SkillRef):
        return f"{ref.namespace}/{ref.skill}"
    namespace, _, skill = ref.partition("/")
    validate_name(namespace)
    validate_name(skill)
    return f"{namespace}/{skill}"


class RegistryClient:
    """A session with one registry: base URL, optional bearer token, connection pool.

    Args:
        url: the registry's address (``https://host``; a trailing ``/api/v1`` is accepted).
        token: a ``tvr_...`` token, or None for anonymous reads.
        timeout: seconds to wait for a connection or for the next bytes of an answer.
        call_timeout: seconds one metadata call may take in all, however slowly the registry
            trickles its bytes (default: twice ``timeout``); a chunk upload gets one more
            second per 64 KiB it sends.
        max_response: the most bytes a metadata answer may hold.
        max_versions: the most versions of one skill read across pages (default
            ``TVREG_MAX_VERSIONS`` or 10,000); a skill with more is refused in one sentence.
        versions_per_page: versions asked for per page (the registry's maximum is 100).

    Example:
        >>> with RegistryClient("http://127.0.0.1:9", timeout=1) as c:
        ...     c.url
        'http://127.0.0.1:9'
    """

    def __init__(
        self,
        url: str,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        call_timeout: float | None = None,
        max_response: int = MAX_RESPONSE_BYTES,
        max_versions: int | None = None,
        versions_per_page: int = VERSIONS_PER_PAGE,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        full = normalize_url(url)
        self.url = redact_url(full)
        """The registry's address as it may be shown: credentials in it are redacted (``***@``)."""
        self.token = token
        self.call_timeout = call_timeout if call_timeout is not None else 2 * timeout
        self.max_response = max_response
        self.max_versions = max_versions or int(os.environ.get("TVREG_MAX_VERSIONS") or DEFAULT_MAX_VERSIONS)
        self.versions_per_page = versions_per_page
        headers = {"User-Agent": f"tvreg/{__version__}", "Accept-Encoding": "identity"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=full + API_PREFIX,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            transport=transport or _transport(),
            follow_redirects=False,
            trust_env=False,
        )

    @classmethod
    def from_config(
        cls, registry: str | None = None, token: str | None = None, **kwargs: Any
    ) -> RegistryClient:
        """A client for the configured registry (see :func:`tvreg._registry.config.resolve`)."""
        settings = resolve(registry, token)
        return cls(settings.url, settings.token, **kwargs)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the one translation boundary --------------------------------------------------------

    def _transport_error(self, exc: httpx.HTTPError) -> RegistryError:
        if isinstance(exc, httpx.TimeoutException):
            return RegistryUnavailable(
                f"the registry at {self.url} did not answer in time.",
                hints=["check the network, or try again later"],
            )
        if isinstance(exc, httpx.ConnectError):
            return RegistryUnavailable(
                f"cannot connect to the registry at {self.url}.",
                hints=["check the URL (`tvreg login --registry URL`) and that the registry is running"],
            )
        return RegistryUnavailable(
            f"the connection to the registry at {self.url} failed ({type(exc).__name__}: {redact_url(str(exc))}).",
            hints=["try again; downloads resume where they stopped"],
        )

    def _error(self, resp: httpx.Response | Answer, what: str | None) -> RegistryError:
        status = resp.status_code
        code, message = None, None
        with contextlib.suppress(ValueError, KeyError, TypeError, httpx.ResponseNotRead):
            body = resp.json()["error"]
            code, message = body.get("code"), body.get("message")
        text = _sentence(message) if message else f"HTTP {status} {resp.reason_phrase}."
        if status == 401:
            if not self.token:
                return AuthError(
                    f"the registry at {self.url} needs a login for this.",
                    status=status,
                    code=code,
                    hints=[f"log in: `tvreg login --registry {self.url}`"],
                )
            return AuthError(
                f"the registry at {self.url} rejected the token: {text}",
                status=status,
                code=code,
                hints=[f"log in again: `tvreg login --registry {self.url}`"],
            )
        if status == 403:
            return AuthError(
                text, status=status, code=code, hints=["ask an admin of the team for a higher role"]
            )
        if status == 404 and code == "no_sketch":
            return SketchMissing(text, status=status, code=code)
        if status == 404:
            sentence = f"{what} was not found on the registry at {self.url}." if what else text
            hints = [] if self.token else ["if it is private, log in first: `tvreg login`"]
            return NotFound(sentence, status=status, code=code, hints=hints)
        if status == 409:
            return Conflict(text, status=status, code=code)
        if status in (429, 503, 507):
            retry = resp.headers.get("Retry-After")
            seconds = float(retry) if retry and retry.strip().isdigit() else None
            later = f"try again in {int(seconds)} s" if seconds is not None else "try again later"
            return RegistryUnavailable(
                f"the registry at {self.url} is unavailable: {text}",
                status=status,
                code=code,
                retry_after=seconds,
                hints=[later],
            )
        if status >= 500:
            return RegistryError(
                f"the registry at {self.url} failed with HTTP {status}: {text}", status=status, code=code
            )
        return RegistryError(text, status=status, code=code)

    def request(
        self,
        method: str,
        path: str,
        *,
        what: str | None = None,
        json: Any = None,
        content: bytes | None = None,
        params: dict | None = None,
        headers: dict | None = None,
    ) -> Answer:
        """Send one request under ``/api/v1``; return the 2xx answer or raise a tvreg error.

        ``what`` names the object for a 404 sentence ("skill `nlp/science`"). The whole
        call, connect to last byte, ends within :attr:`call_timeout` (plus a second per
        64 KiB sent), and an answer over :attr:`max_response` bytes (64 KiB for an error),
        or one compressed though identity was asked for, is refused as it arrives.
        """
        seconds = self.call_timeout + len(content or b"") / 65536
        try:
            with deadline(seconds), self._http.stream(
                method, path, json=json, content=content, params=params, headers=headers
            ) as resp:
                limit = self.max_response if resp.is_success else _MAX_ERROR_BYTES
                encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
                if encoding not in ("", "identity"):
                    raise RegistryError(
                        f"the registry at {self.url} sent a `{encoding}`-compressed answer to {method} {path}, "
                        "which tvreg did not ask for; refusing it."
                    )
                declared = resp.headers.get("Content-Length", "")
                if declared.strip().isdigit() and int(declared) > limit:
                    body = None
                else:
                    body = bytearray()
                    for chunk in resp.iter_raw():
                        body += chunk
                        if len(body) > limit:
                            body = None
                            break
                if body is None:
                    if not resp.is_success:
                        body = bytearray()  # an oversized error body: report the status alone
                    else:
                        raise RegistryError(
                            f"the answer of the registry at {self.url} to {method} {path} is over "
                            f"{limit} bytes; refusing it.",
                            hints=["if this registry is trusted, raise the limit: `TVREG_MAX_RESPONSE=<bytes>`"],
                        )
                answer = Answer(resp.status_code, resp.reason_phrase, resp.headers, bytes(body))
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from exc
        if answer.is_success:
            return answer
        raise self._error(answer, what)

    def _json(self, resp: Answer) -> Any:
        try:
            return resp.json()
        except ValueError as exc:
            raise RegistryError(
                f"the registry at {self.url} sent an answer that is not JSON (HTTP {resp.status_code})."
            ) from exc

    def int_field(self, body: Any, key: str) -> int:
        """An integer field of a JSON answer; anything else is the registry's fault, said in one sentence."""
        value = body.get(key) if isinstance(body, dict) else None
        if type(value) is not int:
            raise RegistryError(f"the registry at {self.url} sent an answer without a whole-number `{key}`.")
        return value

    # -- identity -----------------------------------------------------------------------------

    def whoami(self) -> dict:
        """``{"user", "teams": [{"team", "role"}], "namespaces"}``; AuthError when anonymous."""
        return self._json(self.request("GET", "/whoami"))

    # -- reading ------------------------------------------------------------------------------

    def search(
        self,
        query: str | None = None,
        *,
        base: str | None = None,
        tag: str | None = None,
        namespace: str | None = None,
        page: int = 1,
        per_page: int = 20,
    ) -> dict:
        """One page of skill summaries: ``{"items", "page", "per_page", "total"}``."""
        params: dict[str, Any] = {"page": page, "per_page": per_page}
        for key, value in (("q", query), ("base", base), ("tag", tag), ("namespace", namespace)):
            if value:
                params[key] = value
        return self._json(self.request("GET", "/skills", params=params))

    def skill(self, ref: SkillRef | str) -> dict:
        """A skill with every version (ascending semver) and its dist-tags.

        The registry answers one page of versions at a time; every page is read (following
        ``Link: rel="next"``) and joined, up to :attr:`max_versions`. A registry whose pages
        do not advance, or that lists more versions than the cap, is refused in one sentence.
        """
        seg = _segment(ref)
        what = f"skill `{seg}`"
        page, per_page = 1, self.versions_per_page
        answer = self.request("GET", f"/skills/{seg}", params={"page": page, "per_page": per_page}, what=what)
        info = self._json(answer)
        if not isinstance(info, dict) or not isinstance(info.get("versions"), list):
            raise RegistryError(f"the registry at {self.url} sent {what} without a list of versions.")
        versions: list = info["versions"]
        total = self.int_field(info, "total_versions") if "total_versions" in info else len(versions)
        while True:
            if max(total, len(versions)) > self.max_versions:
                raise RegistryError(
                    f"{what} has {max(total, len(versions))} versions on the registry at {self.url}, "
                    f"more than the {self.max_versions} tvreg reads.",
                    hints=[f"raise the cap if this registry is trusted: `TVREG_MAX_VERSIONS={max(total, len(versions))}`"],
                )
            if len(versions) >= total:
                break
            following = _next_page(answer.headers.get("Link"))
            if following != page + 1:
                raise RegistryError(
                    f"the registry at {self.url} listed {len(versions)} of the {total} versions of {what} "
                    "and no next page.",
                )
            page = following
            answer = self.request("GET", f"/skills/{seg}", params={"page": page, "per_page": per_page}, what=what)
            more = self._json(answer)
            got = more.get("versions") if isinstance(more, dict) else None
            if not isinstance(got, list) or not got:
                raise RegistryError(
                    f"the registry at {self.url} sent page {page} of {what} without versions "
                    f"({len(versions)} of {total} read)."
                )
            versions += got
        info["versions"] = versions
        return info

    def version(self, ref: SkillRef | str, version: str) -> dict:
        """One version object (digest, size, base fingerprint, manifest, yanked, ...)."""
        seg = _segment(ref)
        validate_version(version)
        return self._json(self.request("GET", f"/skills/{seg}/versions/{version}", what=f"`{seg}@{version}`"))

    @contextlib.contextmanager
    def open_artifact(
        self,
        ref: SkillRef | str,
        version: str,
        *,
        start: int = 0,
        end: int | None = None,
        expected_digest: str | None = None,
        piece: str | None = None,
    ) -> Iterator[tuple[int, Iterator[bytes]]]:
        """Stream an artifact's bytes from ``start`` (``Range``); yields ``(offset, chunks)``.

        ``offset`` is ``start`` when the registry answered 206 with a matching
        ``Content-Range``, and 0 when it ignored the range (200): the caller restarts.
        With ``end`` (exclusive) only ``[start, end)`` is asked for, and a 200 answer raises
        :class:`~tvreg.ranged_fetch.RangeIgnored` before any byte is read.
        A body that ends early raises :class:`~tvreg.errors.DownloadError`.
        ``piece`` (``"first"`` or ``"more"``) marks a piece of a ranged download, so the
        registry counts the download once however it is cut (``X-Tvreg-Download``).
        """
        seg = _segment(ref)
        validate_version(version)
        label = f"`{seg}@{version}`"
        headers = {"Accept-Encoding": "identity"}
        if end is not None:
            headers["Range"] = f"bytes={start}-{end - 1}"
        elif start > 0:
            headers["Range"] = f"bytes={start}-"
        if piece is not None:
            headers["X-Tvreg-Download"] = piece
        try:
            with contextlib.ExitStack() as stack:
                with deadline(self.call_timeout):  # until the headers are in: the body may take long
                    resp = stack.enter_context(
                        self._http.stream("GET", f"/skills/{seg}/versions/{version}/artifact", headers=headers)
                    )
                    if not resp.is_success:
                        body = bytearray()
                        for chunk in resp.iter_raw():
                            body += chunk
                            if len(body) > _MAX_ERROR_BYTES:
                                body.clear()
                                break
                        answer = Answer(resp.status_code, resp.reason_phrase, resp.headers, bytes(body))
                        raise self._error(answer, f"the artifact of {label}")
                offset = 0
                if end is not None and resp.status_code != 206:
                    from .ranged_fetch import RangeIgnored

                    raise RangeIgnored(f"the registry answered a ranged download of {label} with the whole artifact.")
                if resp.status_code == 206:
                    offset = _content_range_start(resp.headers.get("Content-Range"))
                    if offset != start:
                        raise RegistryError(
                            f"the registry answered a download of {label} from byte {start} with bytes "
                            f"from {offset}."
                        )
                announced = resp.headers.get("X-Tvreg-Digest")
                if expected_digest and announced and announced != expected_digest:
                    raise DownloadError(
                        f"the registry announces {label} as {announced} in the download but as "
                        f"{expected_digest} in its metadata.",
                        expected=expected_digest,
                        found=announced,
                    )
                yield offset, self._chunks(resp, label)
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from exc

    def _chunks(self, resp: httpx.Response, label: str) -> Iterator[bytes]:
        try:
            # No chunk_size: re-chunking would hold back (and lose, on a cut) a partial chunk.
            yield from resp.iter_raw()
        except (httpx.RemoteProtocolError, httpx.ReadError) as exc:
            raise DownloadError(
                f"the download of {label} from {self.url} ended early ({exc}).",
                expected="",
                hints=["run the command again: the download resumes where it stopped"],
            ) from exc
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from exc

    def sketch(self, ref: SkillRef | str, version: str, *, max_bytes: int = 64 << 20) -> bytes:
        """The raw bytes of a version's sketch; :class:`SketchMissing` when it has none."""
        seg = _segment(ref)
        validate_version(version)
        label = f"`{seg}@{version}`"
        try:
            with deadline(self.call_timeout + max_bytes / 65536), self._http.stream(
                "GET", f"/skills/{seg}/versions/{version}/sketch"
            ) as resp:
                if not resp.is_success:
                    body = bytearray()
                    for chunk in resp.iter_raw():
                        body += chunk
                        if len(body) > _MAX_ERROR_BYTES:
                            body.clear()
                            break
                    raise self._error(Answer(resp.status_code, resp.reason_phrase, resp.headers, bytes(body)), label)
                data = bytearray()
                for chunk in resp.iter_raw():
                    data += chunk
                    if len(data) > max_bytes:
                        raise RegistryError(
                            f"the sketch of {label} from {self.url} is over {max_bytes} bytes; refusing it."
                        )
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from exc
        announced = resp.headers.get("X-Tvreg-Digest")
        if announced and announced != "sha256:" + hashlib.sha256(data).hexdigest():
            raise DownloadError(
                f"the sketch of {label} from {self.url} does not hash to {announced}.", expected=announced
            )
        return bytes(data)

    def put_sketch(self, ref: SkillRef | str, version: str, data: bytes) -> tuple[dict, bool]:
        """Attach a sketch to a published version; returns (version object, created?)."""
        seg = _segment(ref)
        validate_version(version)
        resp = self.request(
            "PUT",
            f"/skills/{seg}/versions/{version}/sketch",
            content=data,
            headers={"Content-Type": "application/octet-stream"},
            what=f"`{seg}@{version}`",
        )
        return self._json(resp), resp.status_code == 201

    def put_card(self, ref: SkillRef | str, version: str, text: str) -> dict:
        """Set a version's skill card (Markdown, its project's README.md); returns ``{"digest", "size"}``."""
        seg = _segment(ref)
        validate_version(version)
        resp = self.request(
            "PUT",
            f"/skills/{seg}/versions/{version}/card",
            content=text.encode("utf-8"),
            headers={"Content-Type": "text/markdown; charset=utf-8"},
            what=f"`{seg}@{version}`",
        )
        return self._json(resp)

    def card(self, ref: SkillRef | str, version: str, *, max_bytes: int = 1024 * 1024) -> str | None:
        """A version's skill card, or None when it was published without one (or the registry has no cards)."""
        seg = _segment(ref)
        validate_version(version)
        label = f"`{seg}@{version}`"
        try:
            with self._http.stream("GET", f"/skills/{seg}/versions/{version}/card") as resp:
                if resp.status_code in (404, 405):
                    return None
                if not resp.is_success:
                    resp.read()
                    raise self._error(resp, label)
                data = bytearray()
                for chunk in resp.iter_bytes():
                    data += chunk
                    if len(data) > max_bytes:
                        raise RegistryError(f"the card of {label} from {self.url} is over {max_bytes} bytes; refusing it.")
        except httpx.HTTPError as exc:
            raise self._transport_error(exc) from exc
        return data.decode("utf-8", "replace")

    # -- uploads ------------------------------------------------------------------------------

    def create_upload(self, size: int, digest: str) -> dict:
        """Start a resumable upload: ``{"id", "offset", "chunk_size"}``."""
        return self._json(self.request("POST", "/uploads", json={"size": size, "digest": digest}))

    def upload_status(self, upload_id: str) -> dict:
        """``{"id", "offset", "size", "digest"}`` of an upload, to resume it."""
        return self._json(self.request("GET", f"/uploads/{_uuid(upload_id)}", what=f"upload `{upload_id}`"))

    def upload_chunk(self, upload_id: str, offset: int, data: bytes) -> int:
        """Send ``data`` at ``offset``; returns the registry's new offset."""
        resp = self.request(
            "PATCH",
            f"/uploads/{_uuid(upload_id)}",
            content=data,
            headers={"Upload-Offset": str(offset), "Content-Type": "application/octet-stream"},
            what=f"upload `{upload_id}`",
        )
        return self.int_field(self._json(resp), "offset")

    def delete_upload(self, upload_id: str) -> None:
        self.request("DELETE", f"/uploads/{_uuid(upload_id)}", what=f"upload `{upload_id}`")

    # -- writing ------------------------------------------------------------------------------

    def put_version(
        self, ref: SkillRef | str, version: str, upload_id: str, *, tag: str | None = "latest"
    ) -> tuple[dict, bool]:
        """Publish a completed upload as ``version``; returns (version object, created?).

        ``created`` is False when the registry already had these exact bytes (200).
        """
        seg = _segment(ref)
        validate_version(version)
        resp = self.request(
            "PUT",
            f"/skills/{seg}/versions/{version}",
            json={"upload_id": upload_id, "tag": tag},
        )
        return self._json(resp), resp.status_code == 201

    def yank(self, ref: SkillRef | str, version: str, reason: str) -> dict:
        seg = _segment(ref)
        validate_version(version)
        return self._json(
            self.request(
                "POST",
                f"/skills/{seg}/versions/{version}/yank",
                json={"reason": reason},
                what=f"`{seg}@{version}`",
            )
        )

    def unyank(self, ref: SkillRef | str, version: str) -> dict | None:
        seg = _segment(ref)
        validate_version(version)
        resp = self.request("DELETE", f"/skills/{seg}/versions/{version}/yank", what=f"`{seg}@{version}`")
        return self._json(resp) if resp.content else None

    def set_tag(self, ref: SkillRef | str, tag: str, version: str) -> dict:
        seg = _segment(ref)
        validate_version(version)
        validate_tag(tag)
        return self._json(
            self.request(
                "PUT", f"/skills/{seg}/tags/{tag}", json={"version": version}, what=f"`{seg}@{version}`"
            )
        )

    def delete_tag(self, ref: SkillRef | str, tag: str) -> dict | None:
        seg = _segment(ref)
        _tag(tag)
        resp = self.request("DELETE", f"/skills/{seg}/tags/{tag}", what=f"tag `{tag}` of `{seg}`")
        return self._json(resp) if resp.content else None


def _next_page(link: str | None) -> int | None:
    """The page number of a ``Link`` header's ``rel="next"`` target, or None.

    Only the number is taken: the client asks its own registry for that page, so a
    ``Link`` naming another host cannot redirect it.
    """
    for part in (link or "").split(","):
        target, _, params = part.partition(";")
        if 'rel="next"' not in params.replace(" ", ""):
            continue
        query = parse_qs(urlsplit(target.strip().strip("<>")).query)
        value = (query.get("page") or [""])[0]
        return int(value) if value.isdigit() and len(value) < 10 else None
    return None


def _content_range_start(value: str | None) -> int:
    # "bytes 100-199/200"
    try:
        unit, _, rest = (value or "").partition(" ")
        if unit != "bytes":
            raise ValueError
        return int(rest.split("-", 1)[0])
    except ValueError:
        return -1


def _uuid(value: str) -> str:
    if not value or not all(c in "0123456789abcdefABCDEF-" for c in value) or len(value) > 64:
        raise RegistryError(f"`{value}` is not an upload id.")
    return value


def _tag(tag: str) -> str:
    """A tag to remove: any safe name, so that a range-like tag made before the rule can still go."""
    return validate_name(tag, what="tag")


def client_for(registry: str | None = None, token: str | None = None) -> RegistryClient:
    """A :class:`RegistryClient` for the configured registry.

    Honours ``TVREG_TIMEOUT`` (seconds per read or connect), ``TVREG_CALL_TIMEOUT`` (seconds
    per metadata call; default twice ``TVREG_TIMEOUT``) and ``TVREG_MAX_RESPONSE`` (bytes).
    """
    timeout = float(os.environ.get("TVREG_TIMEOUT") or DEFAULT_TIMEOUT)
    call = os.environ.get("TVREG_CALL_TIMEOUT")
    limit = int(os.environ.get("TVREG_MAX_RESPONSE") or MAX_RESPONSE_BYTES)
    return RegistryClient.from_config(
        registry, token, timeout=timeout, call_timeout=float(call) if call else None, max_response=limit
    )
