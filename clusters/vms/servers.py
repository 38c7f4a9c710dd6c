"""Servers: create, start/stop/reboot, resize, protect and delete requests
(checked and quota-reserved here, sent by Celery tasks), the cloud work the
tasks run, and `server_apply`, which mirrors what nova reports."""

from django.db import transaction
from django.utils import timezone

from projects import services as project_services

from ..backends.base import BackendError, BackendUnavailable, NotFound, QuotaRefused
from ..catalog import profiles_offered
from ..models import ProfileFlavor
from ..vm_models import FloatingIP, NOVA_STATUS, Server, ServerEvent, ServerInterval, Volume
from .common import (
    F,
    FLOATING_IP_COST,
    METADATA_KEY,
    RequestRefused,
    S,
    V,
    _add,
    _client,
    _commit,
    _event,
    _field_error,
    _flavor_of,
    _locked_server,
    _on_commit,
    _release,
    _volume_cost,
    log,
    server_validate,
)
from .volumes import volume_refresh


# --------------------------------------------------------------------------- servers: requests


@transaction.atomic
def server_request(*, owner, project, cloud, profile, image, name, ssh_key=None, user_data="",
                   floating_ip=False, volume_gb=None, volume_name=""):
    """Validate, reserve the quota of the server (and of its optional volume
    and floating IP) in one locked step, record them and boot on commit.
    Raises ValidationError (naming the field) or QuotaExceeded; in both
    cases nothing is recorded and nothing reaches the cloud."""
    server_validate(owner=owner, project=project, cloud=cloud, profile=profile, image=image, name=name,
                    volume_name=volume_name,
                    ssh_key=ssh_key, user_data=user_data, volume_gb=volume_gb)
    server_cost = profile.cost()
    total = dict(server_cost)
    if floating_ip:
        total = _add(total, FLOATING_IP_COST)
    if volume_gb:
        total = _add(total, _volume_cost(volume_gb))
    project_services.quota_reserve_many(project=project, user=owner, amounts=total)
    server = Server.objects.create(
        project=project, owner=owner, cloud=cloud, name=name, profile=profile, image=image,
        image_ref=image.image_id, image_name=image.name, ssh_key=ssh_key,
        key_name=ssh_key.nova_name if ssh_key else "", user_data=user_data or "",
        network=cloud.default_network, want_floating_ip=bool(floating_ip), quota_reserved=server_cost,
        state_changed=timezone.now(),
    )
    _event(server, f"Create requested: {profile.name} from {image.name or image.image_id} on {cloud.name}",
           kind=ServerEvent.Kind.ACTION, actor=owner)
    if floating_ip:
        FloatingIP.objects.create(project=project, owner=owner, cloud=cloud, server=server,
                                  quota_reserved=FLOATING_IP_COST, state_changed=timezone.now())
    if volume_gb:
        volume = Volume.objects.create(project=project, owner=owner, cloud=cloud, server=server,
                                       name=volume_name or f"{name}-data", size_gb=int(volume_gb),
                                       quota_reserved=_volume_cost(volume_gb), state_changed=timezone.now())
        from .. import tasks

        _on_commit(tasks.volume_create, volume.pk)
    from .. import tasks

    _on_commit(tasks.server_boot, server.pk)
    return server


def _check_can(server, transition, what):
    if server.state == S.DELETED:
        raise RequestRefused(f"Server {server.name} is deleted.")
    if not server.openstack_id:
        raise RequestRefused(f"Server {server.name} is still being created; {what} once it is up.")
    if transition and not server.can(transition):
        raise RequestRefused(f"Cannot {what} server {server.name} while it is {server.get_state_display().lower()}.")


ACTIONS = {
    # action: (state required, task_state shown until nova answers, verb)
    "start": ((S.SHUTOFF,), "powering-on", "start"),
    "stop": ((S.ACTIVE,), "powering-off", "stop"),
    "reboot": ((S.ACTIVE,), "rebooting", "reboot"),
}


@transaction.atomic
def server_action_request(*, server, action, actor, hard=False):
    """start / stop / reboot: checked here, sent by a task."""
    if action not in ACTIONS:
        raise _field_error("action", f"Unknown action {action!r}.")
    states, task_state, verb = ACTIONS[action]
    server = _locked_server(server.pk)
    _check_can(server, None, verb)
    if server.state not in states or server.task_state:
        raise RequestRefused(f"Cannot {verb} server {server.name} while it is "
                             f"{server.task_state or server.get_state_display().lower()}.")
    Server.objects.filter(pk=server.pk).update(task_state=task_state)
    _event(server, f"{verb.capitalize()} requested" + (" (hard)" if hard and action == "reboot" else ""),
           kind=ServerEvent.Kind.ACTION, actor=actor)
    from .. import tasks

    _on_commit(tasks.server_action, server.pk, action, bool(hard))
    return server


@transaction.atomic
def server_resize_request(*, server, profile, actor):
    """Reserve what the new profile takes beyond the current one, then resize."""
    server = _locked_server(server.pk)
    _check_can(server, "mark_resizing", "resize")
    if server.task_state or server.resize_to_id:
        raise RequestRefused(f"Server {server.name} is busy ({server.task_state or 'resizing'}).")
    if profile.pk == server.profile_id:
        raise _field_error("profile", f"Server {server.name} already has profile {profile.name}.")
    if not profiles_offered(server.cloud).filter(pk=profile.pk).exists():
        raise _field_error("profile", f"Profile {profile.name} is not offered on {server.cloud.name}.")
    grow = _growth(server.profile, profile)
    project_services.quota_reserve_many(project=server.project, user=server.owner, amounts=grow)
    Server.objects.filter(pk=server.pk).update(
        resize_to=profile, task_state="resize_prep", quota_reserved=_add(server.quota_reserved, grow))
    _event(server, f"Resize requested: {server.profile.name} -> {profile.name}", kind=ServerEvent.Kind.ACTION,
           actor=actor)
    from .. import tasks

    _on_commit(tasks.server_resize, server.pk)
    return server


@transaction.atomic
def server_protect(*, server, protected, actor):
    server = _locked_server(server.pk)
    if server.state == S.DELETED:
        raise RequestRefused(f"Server {server.name} is deleted.")
    Server.objects.filter(pk=server.pk).update(protected=bool(protected))
    _event(server, "Protected from deletion" if protected else "Protection removed", kind=ServerEvent.Kind.ACTION,
           actor=actor)
    server.protected = bool(protected)
    return server


@transaction.atomic
def server_delete_request(*, server, actor, force=False):
    """Mark the server deleting and delete it on the cloud (task). A
    protected server is refused; `force` (staff) skips the protection."""
    server = _locked_server(server.pk)
    if server.state == S.DELETED:
        raise RequestRefused(f"Server {server.name} is already deleted.")
    if server.protected and not force:
        raise RequestRefused(f"Server {server.name} is protected; remove the protection before deleting it.")
    server.transition("begin_delete", task_state="deleting")
    _event(server, "Delete requested" + (" (forced)" if force else ""), kind=ServerEvent.Kind.ACTION, actor=actor)
    from .. import tasks

    _on_commit(tasks.server_delete, server.pk)
    return server


# --------------------------------------------------------------------------- servers: cloud work


def _find_adoptable(client, server):
    """A server this record already created (a retried boot after a crash):
    found by the portal's uid in the server's metadata."""
    for rec in client.list_servers():
        if rec.metadata.get(METADATA_KEY) == str(server.uid):
            return rec
    return None


def server_boot_run(*, server_id):
    """Create the server on its cloud, exactly once: a retry first looks for
    a server carrying this record's uid. Refusals release the quota. A
    record deleted meanwhile is never created; one that nova created while
    it was being deleted here is deleted there too."""
    server = Server.objects.select_related("project", "owner", "cloud", "profile", "ssh_key").get(pk=server_id)
    if server.openstack_id or server.state not in (S.BUILDING, S.DELETING, S.DELETED):
        return server
    client = _client(server)
    found = _find_adoptable(client, server)
    if found is not None:
        openstack_id = found.id
    elif server.state != S.BUILDING:
        return server  # deleted before anything reached the cloud: nothing to create or clean up
    else:
        flavor = _flavor_of(server.cloud, server.profile)
        if flavor is None:
            return _boot_failed(server, f"Profile {server.profile.name} has no flavor on {server.cloud.name}.")
        try:
            if server.ssh_key is not None:
                client.ensure_keypair(server.key_name, server.ssh_key.public_key)
            openstack_id = client.create_server(
                server.name, flavor, server.image_ref, key_name=server.key_name or None,
                user_data=server.user_data or None, network=server.network or None,
                metadata={METADATA_KEY: str(server.uid), "nephele_project": server.project.slug},
            )
        except BackendUnavailable:
            raise  # the task retries; the next attempt adopts a server that did get created
        except QuotaRefused as exc:
            return _boot_failed(server, f"The cloud refused the server: {exc}")
        except BackendError as exc:
            return _boot_failed(server, f"The cloud refused the server: {exc.stderr or exc}")
    with transaction.atomic():
        server = _locked_server(server_id)
        orphan = server.state in (S.DELETING, S.DELETED) and not server.openstack_id
        if orphan:  # deleted here while nova was creating it: nothing may keep running there
            Server.objects.filter(pk=server.pk).update(openstack_id=openstack_id)
            _event(server, f"Created on {server.cloud.name} after it was deleted here; deleting it there")
        elif not server.openstack_id:
            Server.objects.filter(pk=server.pk).update(openstack_id=openstack_id, task_state="scheduling")
            _event(server, f"Accepted by {server.cloud.name} (id {openstack_id})")
    if orphan:
        client.delete_server(openstack_id)  # unreachable -> the task retries, and the retry adopts and deletes
    return Server.objects.get(pk=server_id)


def _boot_failed(server, message):
    with transaction.atomic():
        server = _locked_server(server.pk)
        if server.state == S.DELETED:
            return server
        _release(server)
        server.transition("mark_error", fault=message, task_state="")
        _event(server, message, kind=ServerEvent.Kind.ERROR)
        _cascade_gone(server, reason=message)
    return server


def server_boot_gave_up(*, server_id, error):
    """The cloud stayed unreachable through every retry."""
    server = Server.objects.get(pk=server_id)
    if not server.openstack_id and server.state == S.BUILDING:
        _boot_failed(server, f"The cloud could not be reached: {error}")


def server_action_run(*, server_id, action, hard=False):
    server = Server.objects.select_related("cloud", "project").get(pk=server_id)
    client = _client(server)
    try:
        if action == "start":
            client.start_server(server.openstack_id)
        elif action == "stop":
            client.stop_server(server.openstack_id)
        elif action == "reboot":
            client.reboot_server(server.openstack_id, hard=hard)
    except BackendUnavailable:
        raise
    except BackendError as exc:
        Server.objects.filter(pk=server.pk).update(task_state="")
        _event(server, f"{action.capitalize()} refused by the cloud: {exc.stderr or exc}",
               kind=ServerEvent.Kind.ERROR)
        return server_refresh(server_id=server_id)
    return server_refresh(server_id=server_id)


def server_resize_run(*, server_id):
    server = Server.objects.select_related("cloud", "project", "resize_to").get(pk=server_id)
    if server.resize_to is None:
        return server
    flavor = _flavor_of(server.cloud, server.resize_to)
    try:
        if flavor is None:
            raise BackendError(f"profile {server.resize_to.name} has no flavor on {server.cloud.name}")
        _client(server).resize_server(server.openstack_id, flavor)
    except BackendUnavailable:
        raise
    except BackendError as exc:
        return _resize_failed(server, f"Resize refused by the cloud: {exc.stderr or exc}")
    return server_refresh(server_id=server_id)


def _growth(old, new):
    """What a resize from profile `old` to `new` takes beyond the current
    cost: the positive part of the difference, {resource: amount}."""
    return {k: v for k, v in _add(new.cost(), old.cost(), -1).items() if v > 0}


def _growth_held(server):
    """The part of the running resize's growth the server still holds as reserved."""
    return {k: min(v, server.quota_reserved.get(k, 0)) for k, v in _growth(server.profile, server.resize_to).items()}


def _resize_failed(server, message):
    with transaction.atomic():
        server = _locked_server(server.pk)
        if server.resize_to_id:
            grow = _growth_held(server)
            project_services.quota_move_many(project=server.project, user=server.owner,
                                             reserved={k: -v for k, v in grow.items()})
            Server.objects.filter(pk=server.pk).update(
                resize_to=None, task_state="", quota_reserved=_add(server.quota_reserved, grow, -1))
        _event(server, message, kind=ServerEvent.Kind.ERROR)
    return server


def server_delete_run(*, server_id):
    server = Server.objects.select_related("cloud", "project").get(pk=server_id)
    if server.state == S.DELETED:
        return server
    if server.openstack_id:
        _client(server).delete_server(server.openstack_id)  # idempotent; unreachable -> task retries
        return server_refresh(server_id=server_id)
    return _mark_server_deleted(server, "Deleted before the cloud created it")


def server_refresh(*, server_id):
    """Read one server from its cloud and mirror it."""
    server = Server.objects.select_related("cloud", "project").get(pk=server_id)
    if server.state == S.DELETED or not server.openstack_id:
        return server
    try:
        rec = _client(server).get_server(server.openstack_id)
    except NotFound:
        return _mark_server_deleted(server, "Gone from the cloud")
    server = server_apply(server_id=server_id, rec=rec)
    # the volumes the cloud is working on for this server are followed with it
    for volume_id in Volume.objects.filter(server=server, state__in=[V.CREATING, V.ATTACHING, V.DETACHING]) \
            .exclude(openstack_id="").values_list("pk", flat=True):
        volume_refresh(volume_id=volume_id)
    return server


def _mark_server_deleted(server, message):
    with transaction.atomic():
        server = _locked_server(server.pk)
        if server.state == S.DELETED:
            return server
        _release(server)
        now = timezone.now()
        server.transition("mark_deleted", deleted_at=now, task_state="", resize_to=None)
        _close_interval(server, now)
        _event(server, message)
        _cascade_gone(server, reason=message)
    return server


def _cascade_gone(server, *, reason):
    """A server that is gone (or never came) frees its pending volume
    attachment and its floating IPs: the floating IPs asked for with the
    server are released, attached volumes become available again."""
    from .. import tasks

    for fip in FloatingIP.objects.select_for_update().filter(server=server).exclude(state=F.RELEASED):
        if fip.openstack_id:
            fip.transition("begin_release", server=None)
            _on_commit(tasks.floating_ip_release, fip.pk)
        else:
            _release(fip)
            fip.transition("mark_released", server=None, released_at=timezone.now(), fault=reason[:500])
    for vol in Volume.objects.select_for_update().filter(server=server).exclude(state=V.DELETED):
        fields = {"server": None, "device": ""}
        if vol.state in (V.ATTACHING, V.IN_USE, V.DETACHING) and vol.can("mark_available"):
            vol.transition("mark_available", **fields)
        else:
            Volume.objects.filter(pk=vol.pk).update(**fields)


def _close_interval(server, when):
    ServerInterval.objects.filter(server=server, ended__isnull=True).update(ended=when)


def _open_interval(server, *, running, when, profile=None):
    """Start a new billing interval unless the open one already matches."""
    profile = profile or server.profile
    current = ServerInterval.objects.filter(server=server, ended__isnull=True).first()
    if current is not None and current.running == running and current.profile_id == profile.pk:
        return
    _close_interval(server, when)
    ServerInterval.objects.create(server=server, profile=profile, running=running, started=when)


def _is_quota_fault(rec):
    return rec.fault_code == 413 or "quota" in (rec.fault or "").lower()


def server_apply(*, server_id, rec):
    """Mirror a `ServerRecord` onto the portal's server: state transition,
    quota, billing intervals, resize confirmation, floating IP and volume
    follow-ups. Returns the server."""
    from .. import tasks

    with transaction.atomic():
        server = _locked_server(server_id)
        if server.state == S.DELETED:
            return server
        now = timezone.now()
        old_state = server.state
        transition = NOVA_STATUS.get((rec.status or "").upper())
        fields = {"cloud_status": rec.status, "task_state": rec.task_state or "", "addresses": rec.addresses,
                  "last_seen": now}
        if transition == "mark_deleted":
            return _mark_server_deleted(server, "Deleted on the cloud")
        if transition == "mark_error":
            fields["fault"] = rec.fault or "The cloud reports an error."
            if server.state == S.BUILDING and _is_quota_fault(rec):
                # accepted, then refused by nova's quota recheck: a refusal
                _release(server)
                server.transition("mark_error", **fields)
                _event(server, f"The cloud refused the server: {fields['fault']}", kind=ServerEvent.Kind.ERROR)
                _cascade_gone(server, reason=fields["fault"])
                _on_commit(tasks.server_delete, server.pk)  # remove the dead server from the cloud
                return server
            if server.resize_to_id:
                _resize_failed(server, f"Resize failed: {fields['fault']}")
                server.refresh_from_db()
        if transition and server.can(transition) and transition != "mark_building":
            server.transition(transition, save=False)
        if server.state in (S.ACTIVE, S.SHUTOFF, S.ERROR) and server.quota_reserved and not server.resize_to_id:
            _commit(server)  # the cloud has the server: the reservation becomes usage
        if rec.status.upper() == "VERIFY_RESIZE" and server.cloud_status != "VERIFY_RESIZE":
            _on_commit(tasks.server_confirm_resize, server.pk)  # once, when nova gets there
        if server.resize_to_id and server.state == S.ACTIVE and _has_flavor(server, rec, server.resize_to):
            _finish_resize(server, now)
            fields["resize_to"] = None
        if server.state in (S.ACTIVE, S.SHUTOFF) and server.launched_at is None:
            fields["launched_at"] = now
        for name, value in fields.items():
            setattr(server, name, value)
        server.save(update_fields=["state", "state_changed", *fields])
        if server.state != old_state:
            _event(server, f"{server.get_state_display()}" + (f": {server.fault}" if server.state == S.ERROR else ""),
                   kind=ServerEvent.Kind.ERROR if server.state == S.ERROR else ServerEvent.Kind.STATE)
        if server.state == S.ACTIVE:
            _open_interval(server, running=True, when=now)
        elif server.state in (S.SHUTOFF, S.ERROR):
            _open_interval(server, running=False, when=now)
        if server.state in (S.ACTIVE, S.SHUTOFF):
            _follow_ups(server)
    return server


def _has_flavor(server, rec, profile):
    mapping = ProfileFlavor.objects.filter(cloud=server.cloud, profile=profile).first()
    names = {profile.name, mapping.flavor_name if mapping else None} - {None, ""}
    if rec.flavor_name in names:
        return True
    return (rec.flavor_vcpus, rec.flavor_ram_mb) == (profile.vcpus, profile.ram_mb) and rec.flavor_name == ""


def _finish_resize(server, now):
    """The cloud runs the new flavor: used moves from the old cost to the
    new one, the resize's reservation is consumed."""
    held = _growth_held(server)
    delta = _add(server.resize_to.cost(), server.profile.cost(), -1)
    project_services.quota_move_many(project=server.project, user=server.owner,
                                     reserved={k: -v for k, v in held.items()}, used=delta)
    server.quota_reserved = _add(server.quota_reserved, held, -1)
    server.quota_used = _add(server.quota_used, delta)
    Server.objects.filter(pk=server.pk).update(quota_reserved=server.quota_reserved, quota_used=server.quota_used,
                                               profile=server.resize_to)
    _event(server, f"Resized: {server.profile.name} -> {server.resize_to.name}")
    server.profile = server.resize_to
    _open_interval(server, running=True, when=now, profile=server.resize_to)


def _follow_ups(server):
    """Work that waits for the server to be up: bind its floating IP and
    attach the volume created with it."""
    from .. import tasks

    for fip in FloatingIP.objects.filter(server=server, state=F.ALLOCATING):
        _on_commit(tasks.floating_ip_allocate, fip.pk)
    for vol in Volume.objects.filter(server=server, state=V.AVAILABLE, device=""):
        _on_commit(tasks.volume_attach, vol.pk)


def server_confirm_resize_run(*, server_id):
    server = Server.objects.select_related("cloud", "project").get(pk=server_id)
    try:
        _client(server).confirm_resize(server.openstack_id)
    except BackendUnavailable:
        raise
    except BackendError as exc:  # already confirmed (409) is fine: the refresh shows the result
        log.info("confirm resize of %s: %s", server, exc)
    return server_refresh(server_id=server_id)
