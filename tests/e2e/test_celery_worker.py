"""A real Celery worker on the test bed's Redis broker runs the portal's
tasks against the test database."""
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.core import mail
from django.utils import timezone

from projects import services
from projects.models import Invitation

from ..conftest import make_user

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def worker(celery_eager, tmp_path):
    assert settings.CELERY_BROKER_URL.startswith("redis://"), "the test bed gives a Redis broker"
    celery_eager.conf.task_always_eager = False
    db = settings.DATABASES["default"]
    env = dict(os.environ)
    env["DATABASE_URL"] = f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}"
    env["EMAIL_BACKEND"] = "django.core.mail.backends.filebased.EmailBackend"
    env["EMAIL_FILE_PATH"] = str(tmp_path)
    env["CELERY_TASK_ALWAYS_EAGER"] = "false"
    env["CELERY_TASK_DEFAULT_QUEUE"] = f"test-{os.getpid()}"  # tasks the worker sends itself come back to it
    log = open(tmp_path / "worker.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "portal", "worker", "--pool", "solo", "--loglevel", "INFO",
         "-Q", f"test-{os.getpid()}", "-n", f"test-{os.getpid()}@%h"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
    )
    celery_eager.conf.task_default_queue = f"test-{os.getpid()}"
    yield tmp_path
    proc.terminate()
    proc.wait(timeout=20)
    celery_eager.conf.task_default_queue = "celery"


def _wait_for(predicate, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_worker_sends_the_invitation_mail_after_commit(worker):
    alice = make_user("alice")
    project = services.project_create(slug="alpha", name="Alpha", manager=alice)

    invitation = services.invitation_create(project=project, email="new@uni.example", role="member", actor=alice)

    sent = lambda: [p for p in worker.iterdir() if p.suffix == ".log" and p.name != "worker.log"]  # noqa: E731
    assert _wait_for(sent), (worker / "worker.log").read_text()[-2000:]
    text = sent()[0].read_text()
    assert "new@uni.example" in text
    assert invitation.get_absolute_url() in text
    assert mail.outbox == []  # it went through the worker, not this process


def test_worker_runs_the_periodic_expiry_task(worker):
    from projects.tasks import expire_invitations

    project = services.project_create(slug="alpha", name="Alpha")
    old = Invitation.objects.create(project=project, email="late@uni.example",
                                    expires_at=timezone.now() - timedelta(days=1))

    expire_invitations.delay()

    assert _wait_for(lambda: Invitation.objects.get(pk=old.pk).status == Invitation.Status.EXPIRED), (
        (worker / "worker.log").read_text()[-2000:]
    )
