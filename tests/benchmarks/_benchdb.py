"""Shared by the dashboard and pick-next benchmarks: an own database, created, migrated, dropped.

The server is the one ``DATABASE_URL`` names (default ``postgres://postgres@127.0.0.1:5432/postgres``);
the database it names is never written. ``python manage.py migrate`` runs with ``DATABASE_URL``
pointing at the benchmark's database; the caller then sets up Django in-process against it.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

ROOT = Path(__file__).resolve().parents[2]
SERVER_URL = os.environ.get("DATABASE_URL") or "postgres://postgres@127.0.0.1:5432/postgres"


def url_for(database: str, server_url: str = SERVER_URL) -> str:
    """The server URL with its database name replaced."""
    parts = urlsplit(server_url)
    return urlunsplit(parts._replace(path="/" + database))


def bench_env(database: str, **extra: str) -> dict[str, str]:
    """The environment the app runs with in a benchmark (plain HTTP, no relay kick, own database)."""
    env = dict(os.environ)
    env.update(
        DATABASE_URL=url_for(database),
        SECRET_KEY=env.get("SECRET_KEY") or "bench",
        CELERY_BROKER_URL=env.get("CELERY_BROKER_URL") or "redis://127.0.0.1:6379/0",
        EVENT_RELAY_ON_COMMIT="false",
        L2_HTTPS="false",
        L2_MANIFEST_STATIC="false",
        DEBUG="false",
        ALLOWED_HOSTS="127.0.0.1,localhost,testserver",
        DJANGO_SETTINGS_MODULE="l2site.settings",
        LOG_LEVEL=env.get("LOG_LEVEL") or "WARNING",
    )
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def _admin() -> psycopg.Connection:
    return psycopg.connect(SERVER_URL, autocommit=True)


def drop_database(database: str) -> None:
    with _admin() as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()",
            [database],
        )
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(database)))


def create_database(database: str) -> float:
    """Drop (if left over), create and migrate ``database``; returns the seconds it took."""
    t = time.perf_counter()
    drop_database(database)
    with _admin() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        try:  # the dashboard's trigram indexes need it (migration 0005 skips them otherwise)
            with psycopg.connect(url_for(database), autocommit=True) as db:
                db.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm")
        except psycopg.Error:
            pass
    migrate(database)
    return time.perf_counter() - t


def migrate(database: str) -> None:
    """``manage.py migrate`` against ``database`` (a kept database gets the migrations added since)."""
    subprocess.run(
        [sys.executable, str(ROOT / "manage.py"), "migrate", "--verbosity", "0"],
        cwd=ROOT, env=bench_env(database), check=True,
    )


def setup_django(database: str, settings_module: str = "l2site.settings", **extra: str) -> None:
    """Point this process at the benchmark database and set Django up (``extra``: more environment)."""
    env = bench_env(database, DJANGO_SETTINGS_MODULE=settings_module, **extra)
    os.environ.update({k: v for k, v in env.items() if k != "PYTHONPATH"})
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of ``values``."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]
