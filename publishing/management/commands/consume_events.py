"""Consume "inverted" messages from the event bus (the science cluster's announcements)."""
from __future__ import annotations

from django.core.management.base import BaseCommand

from publishing.consumer import DEAD_QUEUE, QUEUE, Consumer


class Command(BaseCommand):
    help = (f"Read the {QUEUE} queue of the event bus and report each program inverted, like the API; "
            f"messages that cannot be accepted go to {DEAD_QUEUE} with the reason. Runs until stopped.")

    def add_arguments(self, parser):
        parser.add_argument("--limit", type=int, default=None, help="stop after this many messages")
        parser.add_argument("--timeout", type=float, default=None, help="stop after this many seconds")
        parser.add_argument("--idle-timeout", type=float, default=None,
                            help="stop when no message came for this many seconds")

    def handle(self, *args, limit, timeout, idle_timeout, **options):
        consumer = Consumer()
        self.stdout.write(f"consuming {QUEUE} (dead letters: {DEAD_QUEUE})")
        try:
            consumer.run(limit=limit, timeout=timeout, idle_timeout=idle_timeout)
        except KeyboardInterrupt:
            pass
        self.stdout.write(f"handled {consumer.processed} message(s), {consumer.dead} dead-lettered")
