"""The ``diasyndesi`` command: up, serve, worker, sandbox, demo, schemas, bench."""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from hub import event_loop
from hub.errors import ConfigurationError, DiasyndesiError
from hub.logs import configure_logging
from hub.settings import Settings, load_settings
from hub.tokens_cli import token_app

if TYPE_CHECKING:
    from hub.db import Database

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Diasyndesi: the Community Centre integration hub.",
    # An unexpected exception's traceback must not print local variables: they can hold a
    # referral's personal data (typer shows them by default).
    pretty_exceptions_show_locals=False,
)
schemas_app = typer.Typer(no_args_is_help=True, help="Canonical schema files.")
app.add_typer(schemas_app, name="schemas")
dlq_app = typer.Typer(
    no_args_is_help=True,
    help="Dead letters: list, show, replay (works on the database; a running hub publishes).",
)
app.add_typer(dlq_app, name="dlq")
db_app = typer.Typer(no_args_is_help=True, help="The database schema (Alembic migrations).")
app.add_typer(db_app, name="db")
app.add_typer(token_app, name="token")


def _settings() -> Settings:
    """Settings from the environment; a refused setting is one ``error:`` line naming it
    (exit 2), never a traceback."""
    try:
        settings = load_settings()
    except ConfigurationError as exc:
        for line in str(exc).splitlines():
            typer.echo(f"error: {line}", err=True)
        raise typer.Exit(2) from None
    configure_logging(settings.log_level, json=settings.log_json)
    return settings


async def _until_signal() -> None:
    await _stop_event().wait()


def _stop_event() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM (handlers installed now, in the running loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _run(coro_factory: object) -> None:
    try:
        event_loop.run(coro_factory)  # type: ignore[arg-type]
    except DiasyndesiError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def up() -> None:
    """Production in miniature on embedded defaults: the broker, `serve`, the workers and
    the sandbox agencies, each a supervised child process (restarted if it dies); SQLite
    under ./var. Ctrl+C stops them all."""
    from hub.up import run_up

    settings = _settings()
    if not settings.embedded:
        typer.echo(
            "error: `up` runs the embedded broker; unset KAFKA_BOOTSTRAP_SERVERS "
            "or use `serve` and `worker`",
            err=True,
        )
        raise typer.Exit(2)
    from hub.families import load_registry

    try:
        agencies = [a.id for a in load_registry(settings).active_agencies]
    except DiasyndesiError as exc:  # a family plugin missing or broken: one line, no traceback
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    _run(run_up(settings, agencies, say=typer.echo))


@app.command()
def serve() -> None:
    """Production API + relay + projector (no connectors) against KAFKA_BOOTSTRAP_SERVERS."""
    from hub.runtime import Hub

    settings = _settings()
    if settings.embedded:
        typer.echo("error: set KAFKA_BOOTSTRAP_SERVERS (or use `up` for development)", err=True)
        raise typer.Exit(2)

    async def main() -> None:
        if settings.writes_dev_credentials:
            await _dev_credentials(settings)
        hub = Hub(settings, settings.kafka_bootstrap_servers, connectors=[])
        await hub.start()
        event_loop.freeze_startup_objects()
        try:
            await hub.wait_consumers_assigned()
            typer.echo(f"Diasyndesi API ready at {hub.api_url}")
            await _until_signal()
        finally:
            await hub.stop()

    _run(main())


@app.command()
def worker(agencies: Annotated[list[str], typer.Argument(help="agency ids, e.g. dypa")]) -> None:
    """Run the connectors of the given agencies (one consumer group each), with /metrics,
    /healthz and /readyz on OBSERVABILITY_PORT (default 9100; 0 = any free port)."""
    from hub.runtime import Hub

    settings = _settings()
    if settings.embedded:
        typer.echo("error: set KAFKA_BOOTSTRAP_SERVERS (or use `up` for development)", err=True)
        raise typer.Exit(2)

    async def main() -> None:
        # A worker may start before `serve` on a fresh folder: the SQLite file's folder too.
        settings.var_dir.mkdir(parents=True, exist_ok=True)
        hub = Hub(
            settings,
            settings.kafka_bootstrap_servers,
            connectors=agencies,
            serve_api=False,
            run_relay=False,
            run_projector=False,
            observability=True,
        )
        unknown = set(agencies) - set(hub.mappings)
        if unknown:
            raise DiasyndesiError(f"no active agency {sorted(unknown)} in the registry")
        stop = _stop_event()  # before the start: a SIGTERM while joining still stops cleanly
        await hub.start()
        event_loop.freeze_startup_objects()
        try:
            # No deadline: a worker started while the broker is away (e.g. restarted by `up`
            # when its broker died) joins once it is back; /readyz says how far it got.
            joined = asyncio.ensure_future(hub.wait_consumers_assigned(float("inf")))
            stopped = asyncio.ensure_future(stop.wait())
            await asyncio.wait({joined, stopped}, return_when=asyncio.FIRST_COMPLETED)
            joined.cancel()
            if not stop.is_set():
                typer.echo(
                    f"Diasyndesi worker ready: {', '.join(agencies)} "
                    f"(metrics and health at {hub.health_url})"
                )
            await stopped
        finally:
            await hub.stop()

    _run(main())


async def _dev_credentials(settings: Settings) -> None:
    """Development only: the sample tokens of `up` (``$VAR_DIR/dev-credentials.json``), so a
    split ``serve`` + ``worker`` + ``sandbox`` setup on one machine works like ``up``."""
    from hub.auth import ensure_dev_credentials
    from hub.registry import Registry

    db = await _open_db(settings)
    try:
        path = settings.var_dir / "dev-credentials.json"
        await ensure_dev_credentials(db, Registry.load(settings.registry_dir), path)
        typer.echo(f"development credentials: {path}")
    finally:
        await db.dispose()


@app.command()
def sandbox(
    status_push: Annotated[
        bool, typer.Option(help="push statuses to the hub at API_URL/PUBLIC_URL")
    ] = True,
) -> None:
    """The simulated agencies alone, one server per installed family (ports from
    SANDBOX_PORT_BASE / SANDBOX_PORTS__<FAMILY>); prints the AGENCIES__* settings to give
    the workers."""
    from hub.sandboxes import start_sandboxes

    settings = _settings()

    async def main() -> None:
        path = settings.var_dir / "dev-credentials.json"
        tokens = json.loads(path.read_text())["agencies"] if path.exists() else {}
        hub_url = settings.api_url if status_push else None
        sandboxes = await start_sandboxes(settings, hub_url, tokens)
        event_loop.freeze_startup_objects()
        typer.echo("sandbox agencies:\n" + sandboxes.describe())
        for agency, connection in sandboxes.connections.items():
            key = agency.upper().replace("-", "_")
            fields = connection.model_dump(exclude_defaults=True, exclude={"secret"})
            for name, value in {**fields, "secret": connection.secret.get_secret_value()}.items():
                typer.echo(f"  AGENCIES__{key}__{name.upper()}={value}")
        try:
            await _until_signal()
        finally:
            await sandboxes.stop()

    _run(main())


@app.command()
def demo(
    count: Annotated[int, typer.Option(help="how many referrals")] = 3,
    url: Annotated[str | None, typer.Option(help="hub URL")] = None,
) -> None:
    """Submit sample referrals to a running hub and show them propagate."""
    from hub.demo import run_demo

    settings = _settings()
    _run(run_demo(url or settings.api_url, settings.var_dir / "dev-credentials.json", count))


@app.command()
def bench(
    duration: Annotated[float, typer.Option(help="seconds of each measured phase")] = 20.0,
    in_flight: Annotated[int, typer.Option(help="referrals in flight, closed loop")] = 32,
    rate: Annotated[float, typer.Option(help="referrals per second, open loop")] = 10.0,
    bare: Annotated[bool, typer.Option(help="also measure the bare baseline")] = True,
) -> None:
    """The hub as `make run` starts it (throughput, latency, ready time, memory) next to a
    bare producer → consumer → connector → sandbox pipeline measured in the same run."""
    from hub.bench import run_bench

    _run(run_bench(in_flight, rate, duration, bare))


@schemas_app.command("export")
def schemas_export(
    out: Annotated[Path | None, typer.Option(help="output folder")] = None,
    check: Annotated[bool, typer.Option(help="fail if the files are not up to date")] = False,
) -> None:
    """Write the JSON Schema files generated from the canonical models, and the AsyncAPI
    document of ``kk.status.v1`` (``schemas/asyncapi.yaml``, or ``asyncapi.yaml`` in ``out``)."""
    from schemas.asyncapi import ASYNCAPI_PATH, asyncapi_stale, export_asyncapi
    from schemas.export import DEFAULT_OUT_DIR, export_json_schemas, stale_json_schemas

    target = out or DEFAULT_OUT_DIR
    asyncapi = ASYNCAPI_PATH if out is None else out / ASYNCAPI_PATH.name
    if check:
        stale = stale_json_schemas(target)
        if asyncapi_stale(asyncapi):
            stale.append(asyncapi.name)
        if stale:
            typer.echo(
                f"out of date: {', '.join(stale)} (run `diasyndesi schemas export`)", err=True
            )
            raise typer.Exit(1)
        typer.echo("schemas up to date")
        return
    for path in export_json_schemas(target):
        typer.echo(f"wrote {path}")
    typer.echo(f"wrote {export_asyncapi(asyncapi)}")


async def _open_db(settings: Settings) -> Database:
    from hub.schema import open_database

    return await open_database(settings)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Migrate the database at DATABASE_URL to this release's schema (safe to repeat)."""
    from hub.schema import upgrade

    settings = _settings()

    async def main() -> None:
        if not settings.database_url:
            settings.var_dir.mkdir(parents=True, exist_ok=True)
        from hub.db import Database

        db = Database(settings.database)
        try:
            before = await upgrade(db)
        finally:
            await db.dispose()
        if before.up_to_date:
            typer.echo(f"{db.display_url}: already at revision {before.head}")
        else:
            was = before.current or ("pre-migration tables" if before.legacy else "empty")
            typer.echo(f"{db.display_url}: upgraded from {was} to revision {before.head}")

    _run(main())


@db_app.command("current")
def db_current() -> None:
    """Show the database's schema revision and this release's; exit 1 if they differ."""
    from hub.schema import schema_state

    settings = _settings()

    async def main() -> bool:
        from hub.db import Database

        db = Database(settings.database)
        try:
            state = await schema_state(db)
        finally:
            await db.dispose()
        typer.echo(
            f"{db.display_url}: revision {state.current or 'none'} (release needs {state.head})"
        )
        return state.up_to_date

    try:
        current = asyncio.run(main())
    except DiasyndesiError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if not current:
        raise typer.Exit(1)


@dlq_app.command("list")
def dlq_list(
    agency: Annotated[str | None, typer.Option(help="only this agency")] = None,
    error_class: Annotated[str | None, typer.Option(help="only this error class")] = None,
    all_: Annotated[bool, typer.Option("--all", help="include replayed ones")] = False,
) -> None:
    """Open dead letters, oldest first (ids, agencies, reasons: no personal data)."""
    from hub.dlq import list_dead_letters

    settings = _settings()

    async def main() -> None:
        db = await _open_db(settings)
        try:
            letters = await list_dead_letters(
                db, agency=agency, error_class=error_class, include_replayed=all_, limit=1000
            )
        finally:
            await db.dispose()
        for d in letters:
            replayed = f" replayed {d.replays}x by {d.replayed_by}" if d.replays else ""
            typer.echo(
                f"{d.id:>6}  {d.dead_lettered_at:%Y-%m-%d %H:%M}  {d.agency:<26} "
                f"{d.error_class:<20} attempts {d.attempts}  referral {d.referral_id}{replayed}"
            )
        typer.echo(f"{len(letters)} dead letter(s)")

    _run(main())


@dlq_app.command("show")
def dlq_show(dead_letter_id: int) -> None:
    """One dead letter in full (JSON)."""
    from hub.dlq import get_dead_letter

    settings = _settings()

    async def main() -> None:
        db = await _open_db(settings)
        try:
            letter = await get_dead_letter(db, dead_letter_id)
        finally:
            await db.dispose()
        if letter is None:
            raise DiasyndesiError(f"no dead letter {dead_letter_id}")
        typer.echo(letter.model_dump_json(indent=2))

    _run(main())


@dlq_app.command("replay")
def dlq_replay(
    dead_letter_id: Annotated[int | None, typer.Argument(help="one dead letter")] = None,
    agency: Annotated[str | None, typer.Option(help="all open ones of this agency")] = None,
    error_class: Annotated[str | None, typer.Option(help="all open ones of this class")] = None,
    operator: Annotated[str, typer.Option(help="who is replaying (audited)")] = "cli",
) -> None:
    """Queue dead letters for redelivery (same event id, so the agency can deduplicate)."""
    from hub.dlq import replay, replay_many

    settings = _settings()
    if dead_letter_id is None and agency is None and error_class is None:
        typer.echo("error: give a dead letter id, --agency or --error-class", err=True)
        raise typer.Exit(2)

    async def main() -> None:
        db = await _open_db(settings)
        try:
            if dead_letter_id is not None:
                ids = [(await replay(db, dead_letter_id, operator)).id]
            else:
                ids = await replay_many(
                    db,
                    operator,
                    agency=agency,
                    error_class=error_class,
                    rate_per_s=settings.replay_rate_per_s,
                )
        finally:
            await db.dispose()
        typer.echo(f"queued {len(ids)} replay(s): {ids}")

    _run(main())
