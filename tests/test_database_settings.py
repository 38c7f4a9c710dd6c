"""PostgreSQL statements prepared on the server (DB_PREPARE_THRESHOLD): a
query a connection runs repeatedly is parsed and planned once."""
import os
import subprocess
import sys

from django.conf import settings
from django.db import connection

from projects.models import Project


def _prepared_count():
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_prepared_statements")
        return cursor.fetchone()[0]


def test_a_query_run_repeatedly_is_prepared_on_the_server(db):
    connection.ensure_connection()
    assert connection.connection.prepare_threshold == 2
    before = _prepared_count()
    for slug in ("a", "b", "c"):  # the same statement, other parameters
        list(Project.objects.filter(slug=slug).values_list("pk", flat=True))
    assert _prepared_count() > before


def _options_in_subprocess(value):
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="portal.settings")
    env.pop("DB_PREPARE_THRESHOLD", None)
    if value is not None:
        env["DB_PREPARE_THRESHOLD"] = value
    code = ("import django; django.setup(); from django.conf import settings; "
            "o = settings.DATABASES['default'].get('OPTIONS', {}); "
            "print(o.get('server_side_binding'), o.get('prepare_threshold'))")
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=settings.BASE_DIR, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def test_the_threshold_follows_the_environment():
    assert _options_in_subprocess(None) == ["True", "2"]
    assert _options_in_subprocess("5") == ["True", "5"]
    assert _options_in_subprocess("0") == ["None", "None"]  # off, e.g. behind PgBouncer
