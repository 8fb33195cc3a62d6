"""`canaryd`: serve, worker, migrate, token create, demo."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated

import typer

from canaryd.settings import Settings

app = typer.Typer(help="canaryd: canary deployments for applications behind nginx.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens.", no_args_is_help=True)
app.add_typer(token_app, name="token")


def _settings() -> Settings:
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return settings


@app.command()
def migrate() -> None:
    """Creates or upgrades the database schema (Alembic)."""
    from canaryd.db.migrate import upgrade

    upgrade(_settings().database_url)
    typer.echo("database is at the latest schema")


@app.command()
def serve(
    host: Annotated[str, typer.Option(envvar="CANARYD_HOST", help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(envvar="CANARYD_PORT", help="Port to listen on.")] = 8080,
) -> None:
    """Runs the HTTP API (and, in embedded mode, the scheduler that advances deployments)."""
    import uvicorn

    from canaryd.api.app import create_app

    settings = _settings()
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        log_level=settings.log_level.lower(),
        ws="websockets-sansio",
    )


@app.command()
def worker() -> None:
    """Runs an arq worker that advances deployments (production mode, needs CANARYD_REDIS_URL)."""
    from canaryd.worker.arq_worker import run_worker

    settings = _settings()
    if not settings.redis_url:
        typer.echo(
            "canaryd worker needs CANARYD_REDIS_URL (without it, `canaryd serve` runs deployments itself)",
            err=True,
        )
        raise typer.Exit(2)
    asyncio.run(run_worker(settings))


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Option(help="Who or what uses the token.")],
    scope: Annotated[
        str, typer.Option(help="read, deploy, operate or admin (each includes the ones before).")
    ],
) -> None:
    """Creates an API token and prints it; only its hash is stored."""
    from canaryd.db.engine import make_engine, make_sessionmaker, unit_of_work
    from canaryd.services.tokens import SCOPES, create_token

    if scope not in SCOPES:
        typer.echo(f"scope must be one of: {', '.join(SCOPES)}", err=True)
        raise typer.Exit(2)
    settings = _settings()

    async def run() -> str:
        engine = make_engine(settings.database_url)
        try:
            async with unit_of_work(make_sessionmaker(engine)) as session:
                return await create_token(session, name, scope)
        finally:
            await engine.dispose()

    typer.echo(asyncio.run(run()))


@app.command()
def demo(
    keep: Annotated[bool, typer.Option(help="Leave the temporary directory in place.")] = False,
) -> None:
    """Runs a real nginx and five sample app instances on loopback, then a good and a bad canary."""
    from canaryd.demo.run import run_demo

    raise typer.Exit(run_demo(keep=keep))
