"""Request timeouts: a client that sends its request too slowly gets 408, not a held connection.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) but has no limit on
how long a request takes to arrive: a client that trickles header bytes, or opens a
connection and sends nothing, holds it forever. Two pieces bound that:

* :func:`timed_h11_protocol` arms a timer when a request's first byte is expected (a new
  connection, or the first byte after a finished response) and disarms it once the
  request's headers have arrived. When it fires, the server writes a 408 in the API's
  JSON error shape and closes the connection (RFC 9110 allows a 408 before a request).
* :class:`BodyTimeout` bounds each wait for a piece of the body: a client that stops
  sending mid-body for longer than the limit gets 408 ``request_timeout``. It bounds the
  gap between pieces, not the whole body, so a large upload on a slow but live link is
  never cut off.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from .errors import RequestTimeout


def has_body(scope: Scope) -> bool:
    """Whether the request announces a body (``Content-Length`` > 0 or ``Transfer-Encoding``).

    HTTP/1.1 has no other way to send one, so the body middlewares let the others
    (most GETs) through without reading or timing a body that cannot come.
    """
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() not in (b"", b"0")):
            return True
    return False


def _timeout_error(limit: float, what: str) -> RequestTimeout:
    return RequestTimeout(
        f"the request's {what} did not arrive within the server's {limit:g} s request timeout; "
        "the connection is closed.",
        limit=limit,
    )


HEALTH_PATH = b"/api/v1/health"


def raise_file_limit() -> int:
    """Raise this process's open-file limit to its hard limit where allowed; return the soft limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def _refusal(message: str) -> bytes:
    body = json.dumps({"error": {"code": "unavailable", "message": message}}).encode()
    return (
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 5\r\n"
        b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )


def http_protocol_base(name: str) -> type[H11Protocol]:
    """uvicorn's protocol class for ``--http``: ``h11`` (pure Python), ``httptools`` (C parser), or
    ``auto`` (httptools when installed). Raises ImportError for ``httptools`` without the package."""
    if name in ("auto", "httptools"):
        try:
            from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
        except ImportError:
            if name == "httptools":
                raise
        else:
            return HttpToolsProtocol  # type: ignore[return-value]  # same hooks as H11Protocol
    return H11Protocol


def timed_h11_protocol(
    head_timeout: float,
    *,
    max_connections: int | None = None,
    per_client: int | None = None,
    reserve: int = 0,
    exempt: frozenset[str] = frozenset(),
    base: type[H11Protocol] = H11Protocol,
) -> type[H11Protocol]:
    """uvicorn's h11 (or ``base``: httptools) protocol with a deadline of ``head_timeout`` seconds for request headers,
    and connection caps.

    A client address may hold ``per_client`` connections (trusted proxies, ``exempt``, are
    not capped), and the process ``max_connections``, of which the last ``reserve`` only
    serve ``/api/v1/health``: a connection past a cap is answered 503 ``unavailable`` with
    ``Retry-After`` at once and closed, so a flood of idle sockets from one client, or
    from many, never keeps health checks (or other clients) out.
    """
    per_address: dict[str, int] = {}
    open_total = [0]

    class TimedH11Protocol(base):  # type: ignore[valid-type,misc]  # h11 or httptools
        _head_timer: asyncio.TimerHandle | None = None
        _peer: str | None = None
        _health_only = False

        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(transport)
            peer = transport.get_extra_info("peername")
            address = peer[0] if peer else "unknown"
            held = per_address.get(address, 0)
            refuse = None
            if per_client is not None and address not in exempt and held >= per_client:
                refuse = f"this client already holds {held} connections, the server's limit per client."
            elif max_connections is not None and open_total[0] >= max_connections:
                refuse = "the server holds its maximum of connections; retry shortly."
            if refuse is not None:
                transport.write(_refusal(refuse))
                transport.close()
                return
            self._peer = address
            per_address[address] = held + 1
            open_total[0] += 1
            self._health_only = max_connections is not None and open_total[0] > max_connections - reserve
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self._peer is not None:
                left = per_address.get(self._peer, 1) - 1
                if left > 0:
                    per_address[self._peer] = left
                else:
                    per_address.pop(self._peer, None)
                open_total[0] -= 1
                self._peer = None
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            if self._health_only:
                parts = data.split(b" ", 2)
                if len(parts) < 2 or not parts[1].startswith(HEALTH_PATH):
                    self.transport.write(
                        _refusal("the server's last connections are kept for health checks; retry shortly.")
                    )
                    self.transport.close()
                    return
            if self._head_timer is None and (self.cycle is None or self.cycle.response_complete):
                self._arm()  # the first byte of the next request on a kept-alive connection
            before = self.cycle
            super().data_received(data)
            if self.cycle is not before:
                self._disarm()  # the headers are in; the body has its own limit

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(head_timeout, self._head_timed_out)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timed_out(self) -> None:
            self._head_timer = None
            if self.transport.is_closing() or not (self.cycle is None or self.cycle.response_complete):
                return
            body = json.dumps(_timeout_error(head_timeout, "headers").body()).encode()
            self.transport.write(
                b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\n"
                b"connection: close\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            self.transport.close()

    return TimedH11Protocol


class BodyTimeout:
    """Answer 408 ``request_timeout`` when the next piece of a request body takes over ``limit`` s.

    The timeout surfaces inside the application as :class:`RequestTimeout` from
    ``receive()`` (an upload in progress keeps nothing of the interrupted chunk, like any
    failed PATCH); when the application lets it escape before answering, it is answered here.
    """

    def __init__(self, app: ASGIApp, *, limit: float) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not has_body(scope):
            await self.app(scope, receive, send)
            return
        started = False
        body_done = False

        async def timed_receive() -> Message:
            nonlocal body_done
            if body_done:
                return await receive()  # waiting for a disconnect, not for the client's bytes
            try:
                message = await asyncio.wait_for(receive(), self.limit)
            except asyncio.TimeoutError:
                raise _timeout_error(self.limit, "body") from None
            if message["type"] != "http.request" or not message.get("more_body", False):
                body_done = True
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, timed_receive, tracked_send)
        except RequestTimeout as exc:
            if started:
                raise
            await _send_error(exc, send)


async def _send_error(exc: RequestTimeout, send: Send) -> None:
    body = json.dumps(exc.body()).encode()
    headers: list[Any] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
