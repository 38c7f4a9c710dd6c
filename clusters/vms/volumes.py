"""Volumes: create, attach to a server of the same project and cloud,
detach, delete; `volume_apply` mirrors what cinder reports."""

from django.db import transaction
from django.utils import timezone

from projects import services as project_services

from ..backends.base import BackendError, BackendUnavailable, NotFound, QuotaRefused
from ..vm_models import CINDER_STATUS, Server, ServerEvent, Volume
from .common import (
    volume_size,
    RequestRefused,
    S,
    V,
    _check_member,
    _check_name,
    _client,
    _commit,
    _event,
    _field_error,
    _locked_server,
    _locked_volume,
    _on_commit,
    _release,
    _volume_cost,
)


# --------------------------------------------------------------------------- volumes


@transaction.atomic
def volume_request(*, owner, project, cloud, name, size_gb):
    _check_member(owner, project)
    _check_name("name", name)
    if not cloud.enabled:
        raise _field_error("cloud", f"Cloud {cloud.name} is not enabled.")
    size_gb = volume_size(size_gb)
    cost = _volume_cost(size_gb)
    project_services.quota_reserve_many(project=project, user=owner, amounts=cost)
    volume = Volume.objects.create(project=project, owner=owner, cloud=cloud, name=name, size_gb=size_gb,
                                   quota_reserved=cost, state_changed=timezone.now())
    from .. import tasks

    _on_commit(tasks.volume_create, volume.pk)
    return volume


def volume_create_run(*, volume_id):
    volume = Volume.objects.select_related("cloud", "project").get(pk=volume_id)
    if volume.openstack_id or volume.state != V.CREATING:
        return volume
    client = _client(volume)
    existing = [v for v in client.list_volumes() if v.name == _cloud_volume_name(volume)]
    try:
        rec = existing[0] if existing else client.create_volume(volume.size_gb, _cloud_volume_name(volume))
    except BackendUnavailable:
        raise
    except BackendError as exc:
        message = f"The cloud refused the volume: {exc if isinstance(exc, QuotaRefused) else exc.stderr or exc}"
        with transaction.atomic():
            volume = _locked_volume(volume_id)
            _release(volume)
            volume.transition("mark_error", fault=message, server=None)
        return volume
    with transaction.atomic():
        locked = _locked_volume(volume_id)
        if not locked.openstack_id:
            Volume.objects.filter(pk=locked.pk).update(openstack_id=rec.id)
    return volume_refresh(volume_id=volume_id)


def _cloud_volume_name(volume):
    """Unique on the cloud, so a retried create finds the volume it made."""
    return f"{volume.name}-{volume.uid.hex[:8]}"


def volume_gave_up(*, volume_id, error):
    with transaction.atomic():
        volume = _locked_volume(volume_id)
        if not volume.openstack_id and volume.state == V.CREATING:
            _release(volume)
            volume.transition("mark_error", fault=f"The cloud could not be reached: {error}", server=None)


def volume_refresh(*, volume_id):
    volume = Volume.objects.select_related("cloud", "project").get(pk=volume_id)
    if volume.state == V.DELETED or not volume.openstack_id:
        return volume
    try:
        rec = _client(volume).get_volume(volume.openstack_id)
    except NotFound:
        return _mark_volume_deleted(volume, "Gone from the cloud")
    return volume_apply(volume_id=volume_id, rec=rec)


def _mark_volume_deleted(volume, message):
    with transaction.atomic():
        volume = _locked_volume(volume.pk)
        if volume.state != V.DELETED:
            _release(volume)
            volume.transition("mark_deleted", deleted_at=timezone.now(), server=None, device="", fault=message)
    return volume


def volume_apply(*, volume_id, rec):
    from .. import tasks

    with transaction.atomic():
        volume = _locked_volume(volume_id)
        if volume.state == V.DELETED:
            return volume
        transition = CINDER_STATUS.get((rec.status or "").lower())
        if transition == "mark_deleted":
            _release(volume)
            volume.transition("mark_deleted", deleted_at=timezone.now(), server=None, device="")
            return volume
        fields = {"cloud_status": rec.status, "last_seen": timezone.now()}
        old_state = volume.state
        in_flight = (old_state == V.ATTACHING and transition == "mark_available" and volume.device) or (
            old_state == V.DETACHING and transition == "mark_in_use")  # our call is ahead of cinder's status
        if transition and transition != "mark_creating" and volume.can(transition) and not in_flight:
            volume.transition(transition, save=False)
        if transition == "mark_error" and volume.quota_reserved:
            _release(volume, used=False)  # never created: the reservation goes
            fields["fault"] = "The cloud could not create the volume."
        elif volume.state != V.CREATING and volume.quota_reserved:
            _commit(volume)
        if rec.attachments:
            att = rec.attachments[0]
            server = Server.objects.filter(cloud=volume.cloud, openstack_id=att.get("server_id")).first()
            fields["server"] = server
            fields["device"] = att.get("device") or volume.device
        elif volume.state == V.AVAILABLE and old_state in (V.DETACHING, V.IN_USE):
            fields["server"], fields["device"] = None, ""  # detached
        elif volume.state == V.AVAILABLE:
            fields["device"] = ""
            if volume.server_id and volume.server.state not in (S.ACTIVE, S.SHUTOFF):
                pass  # created with its server: attached once the server is up
            elif volume.server_id:
                _on_commit(tasks.volume_attach, volume.pk)
        for name, value in fields.items():
            setattr(volume, name, value)
        volume.save(update_fields=["state", "state_changed", *fields])
    return volume


@transaction.atomic
def volume_attach_request(*, volume, server, actor):
    volume = _locked_volume(volume.pk)
    server = _locked_server(server.pk)
    if server.project_id != volume.project_id:
        raise _field_error("server", "The server belongs to another project.")
    if server.cloud_id != volume.cloud_id:
        raise _field_error("server", f"The server runs on {server.cloud.name}, the volume is on {volume.cloud.name}.")
    if server.state not in (S.ACTIVE, S.SHUTOFF) or not server.openstack_id:
        raise RequestRefused(f"Server {server.name} must be active or shut off to attach a volume.")
    if volume.state != V.AVAILABLE:
        raise RequestRefused(f"Volume {volume.name} is {volume.get_state_display().lower()}, not available.")
    volume.transition("begin_attach", server=server)
    _event(server, f"Attach of volume {volume.name} requested", kind=ServerEvent.Kind.ACTION, actor=actor)
    from .. import tasks

    _on_commit(tasks.volume_attach, volume.pk)
    return volume


def volume_attach_run(*, volume_id):
    volume = Volume.objects.select_related("cloud", "project", "server").get(pk=volume_id)
    server = volume.server
    if server is None or not volume.openstack_id or not server.openstack_id or volume.device:
        return volume
    if volume.state not in (V.AVAILABLE, V.ATTACHING):
        return volume
    try:
        att = _client(volume).attach_volume(server.openstack_id, volume.openstack_id)
    except BackendUnavailable:
        raise
    except BackendError as exc:
        with transaction.atomic():
            locked = _locked_volume(volume_id)
            if locked.can("mark_available"):
                locked.transition("mark_available", server=None, fault=f"Attach refused: {exc.stderr or exc}")
            _event(server, f"Attach of volume {volume.name} refused: {exc.stderr or exc}",
                   kind=ServerEvent.Kind.ERROR)
        return locked
    with transaction.atomic():
        locked = _locked_volume(volume_id)
        if locked.can("begin_attach") and locked.state != V.IN_USE:
            locked.transition("begin_attach", device=att.device or "")
        else:
            Volume.objects.filter(pk=locked.pk).update(device=att.device or "")
        _event(server, f"Volume {volume.name} attached as {att.device or '(device pending)'}")
    return volume_refresh(volume_id=volume_id)


@transaction.atomic
def volume_detach_request(*, volume, actor):
    volume = _locked_volume(volume.pk)
    if volume.state != V.IN_USE or volume.server is None:
        raise RequestRefused(f"Volume {volume.name} is not attached.")
    volume.transition("begin_detach")
    _event(volume.server, f"Detach of volume {volume.name} requested", kind=ServerEvent.Kind.ACTION, actor=actor)
    from .. import tasks

    _on_commit(tasks.volume_detach, volume.pk)
    return volume


def volume_detach_run(*, volume_id):
    volume = Volume.objects.select_related("cloud", "project", "server").get(pk=volume_id)
    if volume.server is None or volume.state != V.DETACHING:
        return volume
    try:
        _client(volume).detach_volume(volume.server.openstack_id, volume.openstack_id)
    except NotFound:
        pass  # already detached
    except BackendUnavailable:
        raise
    except BackendError as exc:
        with transaction.atomic():
            locked = _locked_volume(volume_id)
            if locked.can("mark_in_use"):
                locked.transition("mark_in_use", fault=f"Detach refused: {exc.stderr or exc}")
        return locked
    return volume_refresh(volume_id=volume_id)


@transaction.atomic
def volume_delete_request(*, volume, actor, force=False):
    volume = _locked_volume(volume.pk)
    if volume.state == V.DELETED:
        raise RequestRefused(f"Volume {volume.name} is already deleted.")
    if volume.state in (V.IN_USE, V.ATTACHING, V.DETACHING) and not force:
        raise RequestRefused(f"Volume {volume.name} is attached; detach it first.")
    if not volume.openstack_id and volume.state == V.CREATING and not force:
        raise RequestRefused(f"Volume {volume.name} is still being created.")
    if not volume.openstack_id:
        _release(volume)
        volume.transition("mark_deleted", deleted_at=timezone.now(), server=None)
        return volume
    if volume.can("begin_delete"):
        volume.transition("begin_delete", server=None)
    else:  # forced while attached: cinder refuses unless it is detached, the refresh shows the outcome
        volume.transition("mark_error", save=False)
        volume.transition("begin_delete", server=None)
    from .. import tasks

    _on_commit(tasks.volume_delete, volume.pk)
    return volume


def volume_delete_run(*, volume_id):
    volume = Volume.objects.select_related("cloud", "project").get(pk=volume_id)
    if volume.state == V.DELETED:
        return volume
    _client(volume).delete_volume(volume.openstack_id)
    return volume_refresh(volume_id=volume_id)
