"""The HTML routes: front page, search, skill, version, base, namespace, sign-in/out and ``/docs``.

A page view reads the registry generation, resolves the browser's session, and takes the
page's content from the same per-replica read cache as the API (key: the page and the
teams whose private namespaces the caller sees); only the thin layout around it (who is
signed in, the sign-out form's CSRF secret) is rendered per request. Pages never change
state: the sign-in and sign-out forms are the only POSTs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException

from ..errors import ApiError, NotFound, TooLarge, TooManyRequests, Unauthenticated
from ..fields import MAX_PAGE
from ..gate import read_capped
from ..names import RESERVED_NAMES
from ..readcache import read_generation
from ..routes.skills import MAX_PER_PAGE
from . import data
from .render import environment
from .sessions import (
    CSRF_COOKIE,
    WebPrincipal,
    clear_session_cookie,
    csrf_matches,
    new_csrf,
    same_origin,
    secure,
    set_session_cookie,
    sign_in,
    sign_out,
    signed_in,
)

router = APIRouter(include_in_schema=False)
ENV = environment()
_SEP = b"\x00"
MAX_FORM = 8 * 1024
RESERVED = RESERVED_NAMES | {"-", "openapi.json"}  # no namespace can be named so (tvreg._names)


def _layout(
    request: Request, title: str, content: Markup, who: WebPrincipal | None, status: int = 200
) -> HTMLResponse:
    html = ENV.get_template("layout.html").render(
        title=title, content=content, who=who, path=request.url.path
    )
    return HTMLResponse(
        html, status_code=status, headers={"Cache-Control": "no-store" if who else "no-cache"}
    )


def error_page(request: Request, error: ApiError, who: WebPrincipal | None = None) -> HTMLResponse:
    """An API error as a page: same status and sentence, no trace of what the caller may not see."""
    content = Markup(ENV.get_template("error.html").render(error=error))
    titles = {404: "Not found", 429: "Too many attempts", 503: "Unavailable"}
    response = _layout(request, titles.get(error.status, "Error"), content, who, error.status)
    for k, v in error.headers.items():
        response.headers[k] = v
    return response


def _page(
    request: Request, key: tuple, build: Callable[[Session, WebPrincipal | None], tuple[str, str]]
) -> Response:
    ctx = request.app.state.context
    with ctx.sessions() as s:
        generation = read_generation(s)
        who = signed_in(ctx, request, s, generation)
        visible = tuple(sorted(who.roles)) if who is not None else ()
        full_key = ("page", key, visible)
        body = ctx.read_cache.body(generation, full_key)
        if body is None:
            try:
                title, content = build(s, who)
            except ApiError as exc:
                return error_page(request, exc, who)
            body = title.encode() + _SEP + content.encode()
            ctx.read_cache.keep_body(generation, full_key, body)
    title_b, _, content_b = body.partition(_SEP)
    return _layout(request, title_b.decode(), Markup(content_b.decode()), who)


def _render(template: str, **values: Any) -> str:
    return ENV.get_template(template).render(**values)


@router.api_route("/", methods=["GET", "HEAD"], response_class=HTMLResponse)
def front_page(request: Request) -> Response:
    return _page(
        request, ("front",), lambda s, who: ("tvreg registry", _render("front.html", **data.front(s, who)))
    )


@router.api_route("/search", methods=["GET", "HEAD"], response_class=HTMLResponse)
def search_page(
    request: Request,
    q: str = "",
    base: str = "",
    tag: str = "",
    namespace: str = "",
    page: Annotated[int, Query(ge=1, le=10_000)] = 1,
) -> Response:
    q, base, tag, namespace = (v[:200] for v in (q, base, tag, namespace))
    query = {"q": q, "base": base, "tag": tag, "namespace": namespace}

    def build(s: Session, who: WebPrincipal | None) -> tuple[str, str]:
        found = data.search(s, who, q, base.strip().lower(), tag, namespace, page)
        return "Search · tvreg", _render("search.html", query=query, found=found, page=page)

    return _page(request, ("search", q, base, tag, namespace, page), build)


@router.api_route("/bases/{fingerprint}", methods=["GET", "HEAD"], response_class=HTMLResponse)
def base_page(
    request: Request,
    fingerprint: str,
    pick: Annotated[list[str], Query()] = [],  # noqa: B006
    page: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1,
    per_page: Annotated[int, Query(ge=1, le=MAX_PER_PAGE)] = data.BASE_PER_PAGE,
) -> Response:
    picks = [p[:300] for p in pick[: data.MAX_PICKS + 1]]

    def build(s: Session, who: WebPrincipal | None) -> tuple[str, str]:
        values = data.base_page(s, who, fingerprint, picks, page, per_page)
        return f"Base {fingerprint[:12]} · tvreg", _render("base.html", **values)

    return _page(request, ("base", fingerprint, tuple(picks), page, per_page), build)


@router.api_route("/docs", methods=["GET", "HEAD"], response_class=HTMLResponse)
def api_docs(request: Request) -> Response:
    spec = request.app.openapi()

    def build(_s: Session, _who: WebPrincipal | None) -> tuple[str, str]:
        return "API reference · tvreg", _render("docs.html", spec=spec)

    return _page(request, ("docs",), build)


@router.api_route("/-/sign-in", methods=["GET", "HEAD"], response_class=HTMLResponse)
def sign_in_form(request: Request, next: str = "/") -> Response:
    return _sign_in_page(request, _local(next), None, 200)


def _local(target: str) -> str:
    """``target`` when it is a path on this site, else ``/`` (no open redirect)."""
    # Browsers drop tabs and newlines inside URLs and read a backslash as a slash, so
    # "/\t/evil.example" would become "//evil.example": refuse all of them.
    if not target.startswith("/") or target.startswith("//") or any(c == "\\" or ord(c) < 0x21 for c in target):
        return "/"
    return target


def _sign_in_page(request: Request, next_url: str, message: str | None, status: int) -> Response:
    csrf = new_csrf()
    content = Markup(_render("sign_in.html", csrf=csrf, next=next_url, message=message))
    response = _layout(request, "Sign in · tvreg", content, None, status)
    response.headers["Cache-Control"] = "no-store"
    response.set_cookie(
        CSRF_COOKIE, csrf, path="/-/", httponly=True, samesite="strict", secure=secure(request)
    )
    return response


async def _form(request: Request) -> dict[str, str]:
    try:
        body = await read_capped(request, MAX_FORM, "a form")
    except TooLarge:
        return {}
    fields = parse_qs(body.decode("utf-8", "replace"), max_num_fields=10)
    return {k: v[0] for k, v in fields.items()}


@router.post("/-/sign-in")
async def sign_in_submit(request: Request) -> Response:
    form = await _form(request)
    next_url = _local(form.get("next", "/"))
    if not same_origin(request) or not csrf_matches(form.get("csrf"), request.cookies.get(CSRF_COOKIE)):
        return _sign_in_page(
            request, next_url, "The form expired or came from another site; sign in again.", 403
        )
    try:
        cookie, web = await run_in_threadpool(
            sign_in, request.app.state.context, request, form.get("token", "")
        )
    except Unauthenticated as exc:
        return _sign_in_page(request, next_url, exc.message, 401)
    except TooManyRequests as exc:
        response = _sign_in_page(request, next_url, exc.message, 429)
        response.headers.update(exc.headers)
        return response
    response = RedirectResponse(next_url, status_code=303)
    set_session_cookie(response, request, cookie, web)
    response.delete_cookie(CSRF_COOKIE, path="/-/", httponly=True, samesite="strict", secure=secure(request))
    return response


@router.post("/-/sign-out")
async def sign_out_submit(request: Request) -> Response:
    form = await _form(request)
    ctx = request.app.state.context

    def current() -> WebPrincipal | None:
        with ctx.sessions() as s:
            return signed_in(ctx, request, s, read_generation(s))

    who = await run_in_threadpool(current)
    if who is not None:
        if not same_origin(request) or not csrf_matches(form.get("csrf"), who.csrf):
            return error_page(
                request, _Forbidden("the sign-out form expired or came from another site; try again."), who
            )
        await run_in_threadpool(sign_out, ctx, who.session_id)
    response = RedirectResponse("/", status_code=303)
    clear_session_cookie(response, request)
    return response


class _Forbidden(ApiError):
    status = 403
    code = "forbidden"


@router.api_route("/{namespace}", methods=["GET", "HEAD"], response_class=HTMLResponse)
def namespace_page(
    request: Request,
    namespace: str,
    page: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1,
    per_page: Annotated[int, Query(ge=1, le=MAX_PER_PAGE)] = data.PER_PAGE,
) -> Response:
    if namespace in RESERVED:
        return error_page(request, NotFound("no such page."))

    def build(s: Session, who: WebPrincipal | None) -> tuple[str, str]:
        values = data.namespace_page(s, who, namespace, page, per_page)
        return f"{namespace} · tvreg", _render("namespace.html", **values)

    return _page(request, ("ns", namespace, page, per_page), build)


_PAGE = Annotated[int, Query(ge=1, le=MAX_PAGE)]
_PER_PAGE = Annotated[int, Query(ge=1, le=MAX_PER_PAGE)]


@router.api_route("/{namespace}/{skill}", methods=["GET", "HEAD"], response_class=HTMLResponse)
def skill_page(
    request: Request, namespace: str, skill: str, page: _PAGE = 1, per_page: _PER_PAGE = data.VERSIONS_PER_PAGE
) -> Response:
    return _skill(request, namespace, skill, None, page, per_page)


@router.api_route("/{namespace}/{skill}/{version}", methods=["GET", "HEAD"], response_class=HTMLResponse)
def version_page(
    request: Request,
    namespace: str,
    skill: str,
    version: str,
    page: _PAGE = 1,
    per_page: _PER_PAGE = data.VERSIONS_PER_PAGE,
) -> Response:
    return _skill(request, namespace, skill, version, page, per_page)


def _skill(
    request: Request, namespace: str, skill: str, version: str | None, page: int, per_page: int
) -> Response:
    if namespace == "api":
        raise HTTPException(404)  # an unknown API path: the API's JSON 404
    if namespace in RESERVED:
        return error_page(request, NotFound("no such page."))

    def build(s: Session, who: WebPrincipal | None) -> tuple[str, str]:
        values = data.skill_page(s, who, namespace, skill, version, page, per_page)
        title = f"{namespace}/{skill}" + (f"@{version}" if version else "") + " · tvreg"
        return title, _render("skill.html", **values)

    return _page(request, ("skill", namespace, skill, version, page, per_page), build)
