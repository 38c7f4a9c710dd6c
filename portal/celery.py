"""Celery application. Tasks live in each app's tasks.py and are dispatched
from services with transaction.on_commit, so a worker never sees a row that
was rolled back."""
import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "portal.settings")

app = Celery("nephele")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
