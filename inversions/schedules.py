"""Periodic tasks that beat runs (settings.L2_PERIODIC_TASKS), created once after migrate.

An existing task is left as it is, so intervals edited in the admin survive deploys.
"""
from __future__ import annotations

from django.conf import settings


def ensure_periodic_tasks(**kwargs) -> None:
    from django_celery_beat.models import IntervalSchedule, PeriodicTask

    for name, (task, seconds) in settings.L2_PERIODIC_TASKS.items():
        if PeriodicTask.objects.filter(name=name).exists():
            continue
        schedule, _ = IntervalSchedule.objects.get_or_create(every=max(int(seconds), 1), period=IntervalSchedule.SECONDS)
        PeriodicTask.objects.create(name=name, task=task, interval=schedule)
