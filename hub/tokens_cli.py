"""``diasyndesi token issue|list|revoke|rotate``: bearer tokens against ``DATABASE_URL``.

A new token is the only thing written to standard output (so
``TOKEN=$(diasyndesi token issue …)`` works); what it is and how to use it go to standard
error. It is never shown again: the database keeps its digest only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, TypeVar

import typer

from hub.errors import DiasyndesiError
from hub.token_lifetimes import DEFAULT_LIFETIME, MAX_GRACE, parse_duration

if TYPE_CHECKING:  # the database side is imported when a token command runs, not by `up`
    from hub.auth import Kind
    from hub.db import Database
    from hub.registry import Registry
    from hub.tokens import IssuedToken, TokenInfo

T = TypeVar("T")

token_app = typer.Typer(
    no_args_is_help=True,
    help="Bearer tokens for centres, agencies and operators (stored as digests, with expiry).",
)

CentreOpt = Annotated[str | None, typer.Option(help="a centre code, e.g. KK-KOZANI")]
AgencyOpt = Annotated[str | None, typer.Option(help="an agency id, e.g. dypa")]
OperatorOpt = Annotated[str | None, typer.Option(help="an operator's name, e.g. maria.k")]
ExpiresOpt = Annotated[
    str, typer.Option(help="lifetime: 30m, 12h, 90d or 8w (at most 365d; `never` is refused)")
]


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


def _with_db(work: Callable[[Database, Registry], Awaitable[T]]) -> T:
    """Run ``work`` against the hub's database (migrated in development, see open_database)."""
    from hub.registry import Registry
    from hub.schema import open_database
    from hub.settings import load_settings

    try:
        settings = load_settings()
    except DiasyndesiError as exc:
        raise _fail(str(exc)) from None

    async def main() -> T:
        db = await open_database(settings)
        try:
            return await work(db, Registry.load(settings.registry_dir))
        finally:
            await db.dispose()

    try:
        return asyncio.run(main())
    except DiasyndesiError as exc:
        raise _fail(str(exc)) from None


def _duration(text: str, *, grace: bool = False) -> timedelta:
    try:
        if grace:
            return parse_duration(text, maximum=MAX_GRACE, allow_zero=True)
        return parse_duration(text)
    except DiasyndesiError as exc:
        raise _fail(str(exc)) from None


def _principal(
    centre: str | None, agency: str | None, operator: str | None
) -> tuple[Kind, str] | None:
    given: list[tuple[Kind, str]] = []
    if centre is not None:
        given.append(("centre", centre))
    if agency is not None:
        given.append(("agency", agency))
    if operator is not None:
        given.append(("operator", operator))
    if len(given) > 1:
        raise _fail("give only one of --centre, --agency or --operator")
    return given[0] if given else None


def _when(moment: datetime | None) -> str:
    return f"{moment:%Y-%m-%d %H:%M}" if moment else "never"


def _show_issued(issued: IssuedToken) -> None:
    info = issued.info
    typer.echo(issued.token)
    typer.echo(
        f"issued token {info.id} for {info.kind} {info.principal}, "
        f"expires {_when(info.expires_at)} UTC.\n"
        "This is the only time it is shown (the hub keeps its digest only). Use it as\n"
        '  curl -H "Authorization: Bearer $TOKEN" <hub URL>/v1/agencies\n'
        f"and revoke it with `diasyndesi token revoke {info.id}`.",
        err=True,
    )


@token_app.command("issue")
def issue(
    centre: CentreOpt = None,
    agency: AgencyOpt = None,
    operator: OperatorOpt = None,
    expires: ExpiresOpt = DEFAULT_LIFETIME,
    label: Annotated[str | None, typer.Option(help="a note shown in listings")] = None,
) -> None:
    """Issue a token for one centre, agency or operator; prints it once."""
    who = _principal(centre, agency, operator)
    if who is None:
        raise _fail("give one of --centre, --agency or --operator")
    lifetime = _duration(expires)
    kind, principal = who
    from hub.tokens import issue_token

    issued = _with_db(
        lambda db, registry: issue_token(db, registry, kind, principal, lifetime, label=label)
    )
    _show_issued(issued)


@token_app.command("list")
def list_(
    centre: CentreOpt = None,
    agency: AgencyOpt = None,
    operator: OperatorOpt = None,
    all_: Annotated[bool, typer.Option("--all", help="include expired and revoked")] = False,
) -> None:
    """Tokens, oldest first (ids and dates; never a token or its digest)."""
    who = _principal(centre, agency, operator)
    kind, principal = who if who else (None, None)
    from hub.tokens import list_tokens

    tokens = _with_db(
        lambda db, _registry: list_tokens(db, kind=kind, principal=principal, include_inactive=all_)
    )
    now = datetime.now(UTC)
    typer.echo(
        f"{'ID':<10}  {'KIND':<8}  {'PRINCIPAL':<26}  {'CREATED (UTC)':<16}  "
        f"{'EXPIRES (UTC)':<16}  {'STATE':<7}  NOTE"
    )
    for t in tokens:
        typer.echo(
            f"{t.id:<10}  {t.kind:<8}  {t.principal:<26}  {_when(t.created_at):<16}  "
            f"{_when(t.expires_at):<16}  {t.state(now):<7}  {_note(t)}".rstrip()
        )
    hidden = "" if all_ else " (--all adds expired and revoked ones)"
    typer.echo(f"{len(tokens)} token(s){hidden}")


def _note(info: TokenInfo) -> str:
    parts = [info.label] if info.label else []
    if info.replaced_by:
        parts.append(f"replaced by {info.replaced_by}")
    if info.revoked_at:
        parts.append(f"revoked {_when(info.revoked_at)}")
    return "; ".join(parts)


@token_app.command("revoke")
def revoke(
    token_id: Annotated[str, typer.Argument(help="the token's id (see `token list`)")],
) -> None:
    """Revoke a token: every API process refuses it within a second."""
    from hub.tokens import revoke_token

    info, revoked = _with_db(lambda db, _registry: revoke_token(db, token_id))
    if not revoked:
        typer.echo(f"token {info.id} was already revoked at {_when(info.revoked_at)} UTC")
        return
    typer.echo(f"revoked token {info.id} ({info.kind} {info.principal})")


@token_app.command("rotate")
def rotate(
    token_id: Annotated[str, typer.Argument(help="the token to replace")],
    expires: ExpiresOpt = DEFAULT_LIFETIME,
    grace: Annotated[
        str, typer.Option(help="keep the old token working this long, e.g. 1h (at most 7d)")
    ] = "0",
) -> None:
    """A new token for the same principal; the old one is revoked (now, or after --grace)."""
    lifetime = _duration(expires)
    grace_period = _duration(grace, grace=True)
    from hub.tokens import rotate_token

    issued, old = _with_db(
        lambda db, registry: rotate_token(db, registry, token_id, lifetime, grace=grace_period)
    )
    _show_issued(issued)
    if old.revoked_at is not None:
        typer.echo(f"token {old.id} is revoked.", err=True)
    else:
        typer.echo(f"token {old.id} keeps working until {_when(old.expires_at)} UTC.", err=True)
