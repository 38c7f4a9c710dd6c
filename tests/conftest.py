"""The usual cast, built once per test: alice manages project Alpha (amy is a
member), bob manages Beta, mallory belongs to nothing, and a staff user sees all.

Tests run on PostgreSQL (the test bed's DATABASE_URL); running them on the
zero-setup SQLite would hide locking and constraint behaviour, so refuse.
"""
import pytest
from django.conf import settings
from django.core.servers.basehttp import WSGIServer
from django.contrib.auth import get_user_model
from rest_framework.test import APIClient

from projects import services
from projects.models import Membership

PASSWORD = "correct-horse-battery-staple"

# The live test server's listen backlog (5 by default) would reset the 50
# simultaneous clients of the quota race tests; a real server has more.
WSGIServer.request_queue_size = 128


def pytest_configure(config):
    # The live test server runs each request in a new thread, and the race
    # tests start 50 threads: persistent connections would pile up until
    # PostgreSQL refuses more. Close them at the end of each request.
    settings.DATABASES["default"]["CONN_MAX_AGE"] = 0
    engine = settings.DATABASES["default"]["ENGINE"]
    if "postgresql" not in engine:
        raise pytest.UsageError(
            f"Tests run on PostgreSQL, not {engine}: use `make test` (or source .testbed/env first)."
        )


@pytest.fixture(autouse=True)
def _fast_hashing_and_mail(settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"


@pytest.fixture(autouse=True)
def celery_eager():
    """Tasks run inline in unit tests (Celery reads its config once, so set it
    on the app, not in Django settings). The worker tests turn this off."""
    from portal.celery import app

    app.conf.task_always_eager = True
    app.conf.task_eager_propagates = True
    yield app
    app.conf.task_always_eager = False


def make_user(username, *, email=None, staff=False, password=PASSWORD, **extra):
    User = get_user_model()
    user = User.objects.create_user(
        username=username,
        email=email or f"{username}@example.org",
        password=password,
        is_staff=staff,
        is_superuser=staff,
        **extra,
    )
    return user


@pytest.fixture
def cast(db):
    class Cast:
        pass

    c = Cast()
    c.staff = make_user("stella", staff=True, first_name="Stella", last_name="Staff")
    c.alice = make_user("alice", first_name="Alice", last_name="Archer")
    c.amy = make_user("amy", first_name="Amy", last_name="Adams")
    c.bob = make_user("bob", first_name="Bob", last_name="Baker")
    c.mallory = make_user("mallory", first_name="Mallory", last_name="Outsider")
    c.alpha = services.project_create(
        slug="alpha", name="Alpha", description="Project A", limits={"cores": 10, "instances": 3}, manager=c.alice
    )
    services.membership_set(project=c.alpha, user=c.amy, role=Membership.Role.MEMBER)
    c.beta = services.project_create(slug="beta", name="Beta", limits={"cores": 20}, manager=c.bob)
    return c


@pytest.fixture
def client_for(client):
    """client_for(user) -> a Django test client logged in as user."""
    from django.test import Client

    def _make(user):
        c = Client()
        c.force_login(user, backend="django.contrib.auth.backends.ModelBackend")
        return c

    return _make


@pytest.fixture
def api_for():
    def _make(user):
        c = APIClient()
        c.force_authenticate(user)
        return c

    return _make
