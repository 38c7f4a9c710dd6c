"""A real Celery worker boots a server on the REAL OpenStack test bed and
follows it on its own (server_watch re-reads the busy server every few
seconds): the test only reads the database, as a page would."""
import time

import pytest

from clusters import vms
from clusters.models import Server
from projects.models import Quota

from ..clouds.vmbed import os_bed, vmbed  # noqa: F401 - fixtures
from .test_celery_worker import worker  # noqa: F401 - fixture

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def wait_db(server, predicate, timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        server = Server.objects.get(pk=server.pk)
        if predicate(server):
            return server
        time.sleep(0.5)
    raise AssertionError(f"{server}: {server.state}/{server.task_state}, events: "
                         f"{list(server.events.values_list('message', flat=True))}")


def test_the_worker_boots_and_follows_a_server_until_it_is_up(worker, vmbed):
    v = vmbed
    server = vms.server_request(owner=v.member, project=v.project, cloud=v.cloud, profile=v.small, image=v.image,
                                name="worked", floating_ip=True)

    server = wait_db(server, lambda s: s.state == "active" and s.floating_ip_set.filter(state="allocated").exists())
    assert server.openstack_id and server.launched_at
    cores = Quota.objects.get(project=v.project, resource="cores")
    assert (cores.used, cores.reserved) == (1, 0)

    vms.server_delete_request(server=server, actor=v.member)
    server = wait_db(server, lambda s: s.state == "deleted")
    # its floating IP is released by a task of its own, a moment later
    wait_db(server, lambda s: s.project.floating_ips.filter(state="released").exists())
    assert not Quota.objects.filter(project=v.project, used__gt=0).exists()
    assert not Quota.objects.filter(project=v.project, reserved__gt=0).exists()
