"""`canaryd`: serve, worker, migrate, token create/list/revoke, demo."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

import typer
from sqlalchemy.engine import make_url

from canaryd.observability import configure_logging
from canaryd.settings import Settings

app = typer.Typer(
    help="canaryd: canary deployments for applications behind nginx, HAProxy or Traefik.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
token_app = typer.Typer(help="API tokens.", no_args_is_help=True)
app.add_typer(token_app, name="token")
log = logging.getLogger("canaryd")
T = TypeVar("T")


def _settings() -> Settings:
    settings = Settings()
    configure_logging(settings.log_level, settings.log_format)
    return settings


def _where(settings: Settings) -> str:
    """The database, for messages: the file for SQLite, the URL without its password otherwise."""
    if settings.sqlite_path is not None:
        return str(settings.sqlite_path)
    try:
        return make_url(settings.database_url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL: say nothing of it rather than leak a password
        return "the configured database"


def _require_schema(settings: Settings) -> None:
    """Exits with one line (no traceback) when the database has no schema or an old one."""
    from canaryd.db.migrate import schema_status

    try:
        status = asyncio.run(schema_status(settings.database_url))
    except Exception as exc:
        typer.echo(f"error: cannot open the database {_where(settings)}: {exc}", err=True)
        raise typer.Exit(2) from None
    problem = status.problem(_where(settings))
    if problem is not None:
        typer.echo(f"error: {problem}", err=True)
        raise typer.Exit(2)


def _run_db(settings: Settings, work: Callable[..., Awaitable[T]]) -> T:
    """Runs `work(session)` in one unit of work against the configured database."""
    from canaryd.db.engine import make_engine, make_sessionmaker, unit_of_work

    _require_schema(settings)

    async def run() -> T:
        engine = make_engine(settings.database_url)
        try:
            async with unit_of_work(make_sessionmaker(engine)) as session:
                return await work(session)
        finally:
            await engine.dispose()

    return asyncio.run(run())


@app.command()
def migrate() -> None:
    """Creates or upgrades the database schema (Alembic)."""
    from canaryd.db.migrate import current_revision, head_revision, upgrade

    settings = _settings()
    where = _where(settings)
    try:
        before = asyncio.run(current_revision(settings.database_url))
        upgrade(settings.database_url)
    except Exception as exc:
        typer.echo(f"error: cannot migrate the database {where}: {exc}", err=True)
        raise typer.Exit(2) from None
    head = head_revision()
    if before == head:
        typer.echo(f"the database {where} was already at the latest schema ({head}); nothing to do")
    elif before is None:
        typer.echo(f"created the schema ({head}) in {where}")
    else:
        typer.echo(f"upgraded the schema of {where} from {before} to {head}")


@app.command()
def serve(
    host: Annotated[str, typer.Option(envvar="CANARYD_HOST", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="CANARYD_PORT", help="Port to listen on.")] = 8080,
) -> None:
    """Runs the HTTP API (and, in embedded mode, the scheduler that advances deployments), in the foreground."""
    # Settings and schema first: a wrong setting is reported before seconds of importing the web app.
    settings = _settings()
    _require_schema(settings)

    import uvicorn

    from canaryd.api.app import SERVER_OPTIONS, create_app

    log.info(
        "canaryd serving on http://%s:%d (%s mode, database %s)",
        host,
        port,
        "embedded" if settings.embedded else "production",
        _where(settings),
    )
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_config": None,  # configure_logging() already set the format and levels
        "access_log": settings.log_level.upper() == "DEBUG",
        **SERVER_OPTIONS,
    }
    if settings.api_workers == 1:
        uvicorn.run(create_app(settings, own_process=True), **options)
    else:
        # Each worker process builds the app from the same environment (uvicorn imports the factory).
        uvicorn.run(
            "canaryd.api.app:create_app_from_environment",
            factory=True,
            workers=settings.api_workers,
            **options,
        )


@app.command()
def worker() -> None:
    """Runs a worker that advances deployments (production mode, needs CANARYD_REDIS_URL)."""
    from canaryd.worker.tick_worker import run_worker

    settings = _settings()
    if not settings.redis_url:
        typer.echo(
            "canaryd worker needs CANARYD_REDIS_URL (without it, `canaryd serve` runs deployments itself)",
            err=True,
        )
        raise typer.Exit(2)
    _require_schema(settings)
    asyncio.run(run_worker(settings))


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option(help="Who or what uses the token.")],
    scope: Annotated[
        str, typer.Option(help="read, deploy, operate or admin (each includes the ones before).")
    ],
    expires_in: Annotated[
        int | None, typer.Option("--expires-in", min=1, help="Seconds until the token stops working.")
    ] = None,
) -> None:
    """Creates an API token and prints it; only its hash is stored."""
    from canaryd.services.tokens import SCOPES, create_token

    if scope not in SCOPES:
        typer.echo(f"scope must be one of: {', '.join(SCOPES)}", err=True)
        raise typer.Exit(2)
    settings = _settings()
    typer.echo(_run_db(settings, lambda s: create_token(s, name, scope, expires_in=expires_in)))


@token_app.command("list")
def token_list() -> None:
    """Lists tokens (id, name, scope, created, expires, revoked); never the tokens themselves."""
    from canaryd.services.tokens import list_tokens

    settings = _settings()
    for t in _run_db(settings, lambda s: list_tokens(s, include_revoked=True)):
        typer.echo(
            f"{t['id']:>4}  {t['name']:<24} {t['scope']:<8} created {t['created_at']}"
            f"  expires {t['expires_at'] or '-'}  revoked {t['revoked_at'] or '-'}"
        )


@token_app.command("revoke")
def token_revoke(
    token_id: Annotated[int, typer.Argument(help="Token id (see `canaryd token list`).")],
) -> None:
    """Revokes a token: every canaryd process refuses it within CANARYD_TOKEN_CACHE_SECONDS (2 s)."""
    from canaryd.services.errors import ServiceError
    from canaryd.services.tokens import revoke_token

    settings = _settings()
    try:
        _run_db(settings, lambda s: revoke_token(s, token_id))
    except ServiceError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"token {token_id} revoked")


@app.command()
def demo(
    keep: Annotated[bool, typer.Option(help="Leave the temporary directory in place.")] = False,
) -> None:
    """Runs a real nginx and five sample app instances on loopback, then a good and a bad canary."""
    from canaryd.demo.run import run_demo

    raise typer.Exit(run_demo(keep=keep))
