"""Floating IPs: reserved with a server or added later, bound once the
server is up, released on request or with their server."""

from django.db import transaction
from django.utils import timezone

from projects import services as project_services

from ..backends.base import BackendError, BackendUnavailable, QuotaRefused
from ..vm_models import FloatingIP, ServerEvent
from .common import (
    F,
    FLOATING_IP_COST,
    RequestRefused,
    S,
    _client,
    _commit,
    _event,
    _locked_server,
    _on_commit,
    _release,
)
from .servers import _check_can


# --------------------------------------------------------------------------- floating IPs


@transaction.atomic
def floating_ip_request(*, server, actor):
    """Reserve a public IP and bind it to the server (task)."""
    server = _locked_server(server.pk)
    _check_can(server, None, "add a floating IP to")
    if server.state not in (S.ACTIVE, S.SHUTOFF):
        raise RequestRefused(f"Server {server.name} must be active or shut off to get a floating IP.")
    if FloatingIP.objects.filter(server=server).exclude(state__in=[F.RELEASED, F.RELEASING]).exists():
        raise RequestRefused(f"Server {server.name} already has a floating IP.")
    project_services.quota_reserve_many(project=server.project, user=server.owner, amounts=FLOATING_IP_COST)
    fip = FloatingIP.objects.create(project=server.project, owner=server.owner, cloud=server.cloud, server=server,
                                    quota_reserved=FLOATING_IP_COST, state_changed=timezone.now())
    _event(server, "Floating IP requested", kind=ServerEvent.Kind.ACTION, actor=actor)
    from .. import tasks

    _on_commit(tasks.floating_ip_allocate, fip.pk)
    return fip


def floating_ip_allocate_run(*, fip_id):
    fip = FloatingIP.objects.select_related("cloud", "project", "server").get(pk=fip_id)
    if fip.state != F.ALLOCATING or fip.server is None or not fip.server.openstack_id:
        return fip
    client = _client(fip)
    try:
        if not fip.openstack_id:
            rec = client.allocate_floating_ip(fip.cloud.external_network or "public")
            with transaction.atomic():
                locked = FloatingIP.objects.select_for_update().get(pk=fip.pk)
                locked.openstack_id, locked.address = rec.id, rec.address
                locked.save(update_fields=["openstack_id", "address"])
                _commit(locked)
            fip.openstack_id, fip.address = rec.id, rec.address
        client.associate_floating_ip(fip.openstack_id, fip.server.openstack_id)
    except BackendUnavailable:
        raise
    except BackendError as exc:
        message = f"Floating IP refused by the cloud: {exc if isinstance(exc, QuotaRefused) else exc.stderr or exc}"
        with transaction.atomic():
            locked = FloatingIP.objects.select_for_update().get(pk=fip.pk)
            if locked.openstack_id:
                locked.transition("begin_release", fault=message[:500])
                from .. import tasks

                _on_commit(tasks.floating_ip_release, locked.pk)
            else:
                _release(locked)
                locked.transition("mark_released", fault=message[:500], released_at=timezone.now())
            _event(fip.server, message, kind=ServerEvent.Kind.ERROR)
        return locked
    with transaction.atomic():
        locked = FloatingIP.objects.select_for_update().get(pk=fip.pk)
        if locked.can("mark_allocated") and locked.state != F.RELEASING:
            locked.transition("mark_allocated")
            _event(fip.server, f"Floating IP {locked.address} bound")
    return locked


@transaction.atomic
def floating_ip_release_request(*, server, actor):
    server = _locked_server(server.pk)
    fips = list(FloatingIP.objects.select_for_update().filter(server=server)
                .exclude(state__in=[F.RELEASED, F.RELEASING]))
    if not fips:
        raise RequestRefused(f"Server {server.name} has no floating IP.")
    from .. import tasks

    for fip in fips:
        if fip.openstack_id:
            fip.transition("begin_release")
            _on_commit(tasks.floating_ip_release, fip.pk)
        else:
            _release(fip)
            fip.transition("mark_released", released_at=timezone.now())
        _event(server, f"Release of floating IP {fip.address or ''} requested".replace("  ", " "),
               kind=ServerEvent.Kind.ACTION, actor=actor)
    return fips


def floating_ip_release_run(*, fip_id):
    fip = FloatingIP.objects.select_related("cloud", "project").get(pk=fip_id)
    if fip.state == F.RELEASED:
        return fip
    if fip.openstack_id:
        _client(fip).release_floating_ip(fip.openstack_id)  # idempotent; unreachable -> retry
    with transaction.atomic():
        fip = FloatingIP.objects.select_for_update().get(pk=fip_id)
        if fip.state != F.RELEASED:
            _release(fip)
            fip.transition("mark_released", server=None, released_at=timezone.now())
    return fip
