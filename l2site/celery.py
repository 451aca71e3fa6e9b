"""The Celery app: tasks are discovered in the apps; settings come from Django (CELERY_*)."""
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "l2site.settings")

app = Celery("l2site")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
