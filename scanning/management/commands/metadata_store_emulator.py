"""``manage.py metadata_store_emulator``: serve the metadata-store emulator over HTTP.

A thin wrapper over :func:`scanning.emulator.server.run`; files default to the bundled
real answers in ``scanning/emulator/data/``.
"""
from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand

from scanning.emulator.server import FIXTURE_FILES, run


class Command(BaseCommand):
    help = "Serve the metadata-store emulator (GraphQL over HTTP) loaded with answer files."
    requires_system_checks: list[str] = []  # a standalone server: needs neither database nor project checks

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("files", nargs="*", default=[str(p) for p in FIXTURE_FILES],
                            help="JSON answer files (datasetInventories or experimentDescriptions); "
                                 "default: the bundled fixtures")
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8765)
        parser.add_argument("--token", default=None,
                            help="require this exact Authorization header (default: no auth)")

    def handle(self, *args: Any, **options: Any) -> None:
        run(options["host"], options["port"], options["files"], options["token"],
            announce=lambda line: (self.stdout.write(line), self.stdout.flush()))
