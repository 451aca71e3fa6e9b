from django.apps import AppConfig


class InversionsConfig(AppConfig):
    default_auto_field = "django.db.models.BigAutoField"
    name = "inversions"
    verbose_name = "Inversions"

    def ready(self):
        from django.db.models.signals import post_migrate

        from inversions.schedules import ensure_periodic_tasks

        post_migrate.connect(ensure_periodic_tasks, sender=self)

        from l2site.auth import connect_signals  # every change of a user's roles is logged

        connect_signals()

        from inversions import lifecycle, relay  # the life-cycle gets its relay as a hook (it imports no tasks)

        lifecycle.on_outbox_commit(relay.wake)
