"""Server-side commands: serve, db upgrade, users, tokens, gc."""
from __future__ import annotations

import click

from hub.errors import HubError


def _settings():
    from hub.config import Settings

    return Settings.from_env()


def _fail(error: HubError) -> click.ClickException:
    return click.ClickException(f"{error.detail} ({error.code})")


def _in_session(action):
    """Run `action(session)` in one unit of work on a migrated database; errors in one line."""
    from hub.db import Database, upgrade

    settings = _settings()
    upgrade(settings.database_url)
    db = Database(settings.database_url)
    try:
        with db.session() as session:
            return action(session)
    except HubError as error:
        raise _fail(error) from None
    finally:
        db.dispose()


@click.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option("--port", type=int, default=None, help="Port (default: PORT or 8000).")
@click.option("--workers", type=click.IntRange(min=1), default=None,
              help="Web processes (default: one per core).")
@click.option("--threads", type=click.IntRange(min=1), default=8, show_default=True,
              help="Request threads per process.")
@click.option("--debug", is_flag=True, help="Flask's development server with the debugger.")
def serve(host: str, port: int | None, workers: int | None, threads: int, debug: bool) -> None:
    """Apply migrations, then serve the hub (gunicorn processes reading requests with
    waitress: a slow client never holds a thread; see hub.cli.serving)."""
    from hub import create_app
    from hub.cli.serving import WaitressWorker, default_workers
    from hub.db import upgrade

    settings = _settings()
    port = port or settings.port
    workers = workers or default_workers()
    upgrade(settings.database_url)
    click.echo(f"lorastack serving on http://{host}:{port} (database {_redact(settings.database_url)},"
               f" storage {settings.storage_url}; {workers} process(es) x {threads} threads)")
    if debug:
        create_app(settings).run(host=host, port=port, debug=True)
        return
    if workers > 1 and settings.ratelimit_storage_url.startswith("memory"):
        click.echo("note: rate limits count in each process's memory; set"
                   " LORASTACK_RATELIMIT_STORAGE_URL (Redis) for one count across them", err=True)
    from gunicorn.app.base import BaseApplication

    class _Gunicorn(BaseApplication):
        def load_config(self) -> None:
            self.cfg.set("bind", f"{host}:{port}")
            self.cfg.set("workers", workers)
            self.cfg.set("threads", threads)
            self.cfg.set("worker_class", WaitressWorker)
            # Requests are read whole before a thread runs them, and a multi-GB upload may
            # take its time in the app: no worker is killed for being slow.
            self.cfg.set("timeout", 0)
            self.cfg.set("accesslog", "-")

        def load(self):
            return create_app(settings)

    _Gunicorn().run()


def _redact(url: str) -> str:
    if "@" in url and "://" in url:
        scheme, rest = url.split("://", 1)
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


@click.group("db")
def db_group() -> None:
    """Database maintenance."""


@db_group.command("upgrade")
@click.option("--revision", default="head", show_default=True)
def db_upgrade(revision: str) -> None:
    """Apply the Alembic migrations."""
    from hub.db import upgrade

    settings = _settings()
    upgrade(settings.database_url, revision)
    click.echo(f"database at {revision}: {_redact(settings.database_url)}")


@click.group("users")
def users_group() -> None:
    """Manage users."""


@users_group.command("create")
@click.argument("name")
@click.option("--admin", is_flag=True, help="Make the user an administrator.")
@click.option("--password", "with_password", is_flag=True,
              help="Prompt for a password (twice, hidden) to sign in to the web pages.")
def users_create(name: str, admin: bool, with_password: bool) -> None:
    """Create a user; prints a write token on the last line."""
    from hub.services.accounts import (check_user_name_free, create_token, create_user,
                                       set_password)

    password = None
    if with_password:
        # Before the prompt: a refused name costs no typing.
        _in_session(lambda session: check_user_name_free(session, name))
        password = _prompt_password()

    def _create(session):
        create_user(session, name, is_admin=admin)
        if password is not None:
            set_password(session, name, password)
        return create_token(session, name, scope="write")

    token = _in_session(_create)
    click.echo(f"created user {name}{' (admin)' if admin else ''}"
               f"{' with a password' if password is not None else ''};"
               " write token (shown once):")
    click.echo(token)


@users_group.command("set-password")
@click.argument("name")
def users_set_password(name: str) -> None:
    """Set NAME's password (prompted twice, hidden); their open web sessions end."""
    from sqlalchemy import select

    from hub.errors import NotFound
    from hub.models import User
    from hub.services.accounts import set_password

    def _exists(session):
        if session.scalar(select(User.id).where(User.name == name)) is None:
            raise NotFound(f"No user named {name!r}; create it with"
                           " `lorastack users create NAME --password`.")

    _in_session(_exists)  # before the prompt, as for create
    password = _prompt_password()
    _in_session(lambda session: set_password(session, name, password))
    click.echo(f"password set for {name}")


def _prompt_password() -> str:
    """Ask twice without echo; a password the rule refuses is asked for again."""
    from hub.services.accounts import check_new_password

    def _checked(value: str) -> str:
        try:
            return check_new_password(value)
        except HubError as error:
            raise click.UsageError(error.detail) from None

    return click.prompt("Password", hide_input=True, confirmation_prompt=True,
                        value_proc=_checked)


@click.group("tokens")
def tokens_group() -> None:
    """Manage API tokens."""


@tokens_group.command("create")
@click.argument("user")
@click.option("--scope", type=click.Choice(["read", "write"]), default="write",
              show_default=True)
def tokens_create(user: str, scope: str) -> None:
    """Create a token for USER; prints it once."""
    from hub.services.accounts import create_token

    token = _in_session(lambda session: create_token(session, user, scope=scope))
    click.echo(f"{scope} token for {user} (shown once):")
    click.echo(token)


@tokens_group.command("list")
@click.argument("user")
def tokens_list(user: str) -> None:
    """List USER's live tokens: prefix, scope, created, last used."""
    from sqlalchemy import select

    from hub.errors import NotFound
    from hub.models import User
    from hub.services.accounts import list_tokens

    def _list(session):
        user_id = session.scalar(select(User.id).where(User.name == user))
        if user_id is None:
            raise NotFound(f"No user named {user!r}.")
        return [(t.prefix, t.scope, _when(t.created_at), _when(t.last_used_at))
                for t in list_tokens(session, user_id)]

    rows = _in_session(_list)
    click.echo(f"{'PREFIX':<14}{'SCOPE':<7}{'CREATED':<22}LAST USED")
    for prefix, scope, created, used in rows:
        click.echo(f"{prefix:<14}{scope:<7}{created:<22}{used}")


@tokens_group.command("revoke")
@click.argument("prefix")
def tokens_revoke(prefix: str) -> None:
    """Revoke the token shown as PREFIX (see `tokens list`); it is refused at once."""
    from hub.services.accounts import revoke_token

    user = _in_session(lambda session: revoke_token(session, prefix).user.name)
    click.echo(f"revoked token {prefix} of {user}")


def _when(moment) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC") if moment else "never"


@click.command("gc")
@click.option("--grace-hours", type=float, default=24.0, show_default=True,
              help="Only remove orphan blobs and leftovers older than this.")
@click.option("--dry-run", is_flag=True, help="List what would be removed.")
def gc(grace_hours: float, dry_run: bool) -> None:
    """Remove blobs that no file row names, and what crashed uploads and merges left
    (temporary files under DATA_DIR, unfinished S3 multipart uploads), after a grace period."""
    from datetime import timedelta

    from hub.db import Database
    from hub.models import utcnow
    from hub.runtime import open_settings_store
    from hub.services.maintenance import (collect_garbage, expire_merges,
                                          remove_stale_work_files)

    settings = _settings()
    store = open_settings_store(settings)
    db = Database(settings.database_url)
    before = utcnow() - timedelta(hours=grace_hours)
    try:
        expired = expire_merges(db, dry_run=dry_run)
        for merge_id in expired:
            click.echo(("would expire" if dry_run else "expired") + f" merge {merge_id}")
        removed = collect_garbage(db, store, grace_hours=grace_hours, dry_run=dry_run)
        aborted = store.remove_incomplete_uploads(before, dry_run=dry_run)
    except HubError as error:
        raise _fail(error) from None
    finally:
        db.dispose()
    leftovers = remove_stale_work_files(settings.data_dir, before, dry_run=dry_run)
    for key in removed:
        click.echo(("would remove " if dry_run else "removed ") + key)
    for item in [*aborted, *map(str, leftovers)]:
        click.echo(("would remove leftover " if dry_run else "removed leftover ") + item)
    click.echo(f"{len(removed)} orphan blob(s) {'found' if dry_run else 'removed'}")
    click.echo(f"{len(aborted) + len(leftovers)} leftover(s) of unfinished writes"
               f" {'found' if dry_run else 'removed'}")


@click.command("worker")
@click.option("--device", default=None,
              help="auto, cpu, cuda or cuda:N (default: LORASTACK_DEVICE, else auto).")
@click.option("--name", default=None, help="The worker's name (default: device@host-pid).")
def worker(device: str | None, name: str | None) -> None:
    """Run merges from the Celery queue, one at a time (LORASTACK_QUEUE=celery)."""
    from hub.config import parse_device
    from hub.db import upgrade
    from hub.jobs.worker import run_worker

    settings = _settings()
    if settings.queue != "celery":
        raise click.ClickException("`lorastack worker` serves the Celery queue: set"
                                   " LORASTACK_QUEUE=celery and LORASTACK_BROKER_URL (with"
                                   " the inline queue, `lorastack serve` runs merges itself)")
    try:
        upgrade(settings.database_url)
    except HubError as error:
        raise _fail(error) from None
    run_worker(settings, parse_device(device) if device else None, name)


def register(group: click.Group) -> None:
    """Add the server commands to the `lorastack` group."""
    for command in (serve, db_group, users_group, tokens_group, gc, worker):
        group.add_command(command)
