"""The periodic mirror of each cloud, the quota recount of VM resources,
and the tenant-filtered reads pages and the API start from."""

from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from projects.models import Project, Resource
from projects.selectors import owned_or_managed

from ..catalog import images_for, profiles_offered
from ..clouds import openstack_client
from ..vm_models import FloatingIP, Server, SSHKey, Volume
from .common import METADATA_KEY, S, V, _event, _locked_server
from .servers import _mark_server_deleted, server_apply
from .volumes import _mark_volume_deleted, volume_apply


# --------------------------------------------------------------------------- periodic sync


STRANDED_AFTER = timedelta(minutes=2)  # a boot normally records the cloud's id within seconds
REBOOT_AFTER = timedelta(minutes=10)  # no server on the cloud by then: the boot task was lost


def cloud_sync(cloud):
    """Mirror every live server and volume of `cloud`: one server list and
    one volume list call per OpenStack project, never one call per record.
    Records the cloud no longer lists are marked deleted (deleted outside
    the portal) and give their quota back. A server whose boot never got
    recorded (the worker died after nova accepted it) is adopted from the
    same list by the uid in its metadata; one still missing after
    REBOOT_AFTER gets its boot task again. Returns counts."""
    from .. import tasks

    counts = {"servers": 0, "volumes": 0, "servers_gone": 0, "volumes_gone": 0, "servers_adopted": 0}
    now = timezone.now()
    live_servers = Server.objects.filter(cloud=cloud).exclude(state=S.DELETED).exclude(openstack_id="")
    stranded_servers = Server.objects.filter(cloud=cloud, state=S.BUILDING, openstack_id="",
                                             created__lt=now - STRANDED_AFTER)
    live_volumes = Volume.objects.filter(cloud=cloud).exclude(state=V.DELETED).exclude(openstack_id="")
    projects = (set(live_servers.values_list("project_id", flat=True))
                | set(stranded_servers.values_list("project_id", flat=True))
                | set(live_volumes.values_list("project_id", flat=True)))
    for project in Project.objects.filter(pk__in=projects):
        # snapshot first: records given an id after this point may be missing from the lists below
        servers = {s.openstack_id: s.pk for s in live_servers.filter(project=project)}
        stranded = {str(s.uid): s for s in stranded_servers.filter(project=project)}
        volumes = {v.openstack_id: v.pk for v in live_volumes.filter(project=project)}
        client = openstack_client(cloud, project)
        if servers or stranded:
            listed = {rec.id: rec for rec in client.list_servers()}
            for openstack_id, pk in servers.items():
                rec = listed.get(openstack_id)
                if rec is None:
                    _mark_server_deleted(Server.objects.get(pk=pk), "Deleted outside the portal")
                    counts["servers_gone"] += 1
                else:
                    server_apply(server_id=pk, rec=rec)
                    counts["servers"] += 1
            by_uid = {rec.metadata.get(METADATA_KEY): rec for rec in listed.values()}
            for uid, server in stranded.items():
                rec = by_uid.get(uid)
                if rec is not None and adopt(server, rec.id):
                    server_apply(server_id=server.pk, rec=rec)
                    counts["servers_adopted"] += 1
                elif rec is None and server.created < now - REBOOT_AFTER:
                    tasks.server_boot.delay(server.pk)  # boots, or adopts what appeared meanwhile
        if volumes:
            listed = {rec.id: rec for rec in client.list_volumes()}
            for openstack_id, pk in volumes.items():
                rec = listed.get(openstack_id)
                if rec is None:
                    _mark_volume_deleted(Volume.objects.get(pk=pk), "Deleted outside the portal")
                    counts["volumes_gone"] += 1
                else:
                    volume_apply(volume_id=pk, rec=rec)
                    counts["volumes"] += 1
    return counts


def adopt(server, openstack_id):
    """Record the cloud's id on a server whose boot never recorded it.
    False when something else recorded one (or deleted it) meanwhile."""
    with transaction.atomic():
        locked = _locked_server(server.pk)
        if locked.openstack_id or locked.state != S.BUILDING:
            return False
        Server.objects.filter(pk=server.pk).update(openstack_id=openstack_id)
        _event(locked, f"Adopted by the periodic sync: found on {locked.cloud.name} (id {openstack_id})")
    return True


# --------------------------------------------------------------------------- recount


def _held(model, project, resources):
    """{user_id: (used, reserved)} per resource, from the records' holdings."""
    per = {r: {} for r in resources}
    rows = model.objects.filter(project=project).values_list("owner_id", "quota_used", "quota_reserved")
    for owner_id, used, reserved in rows:
        for r in resources:
            u, res = (used or {}).get(r, 0), (reserved or {}).get(r, 0)
            if u or res:
                cur = per[r].get(owner_id, (0, 0))
                per[r][owner_id] = (cur[0] + u, cur[1] + res)
    return per


def _recounter(resource, models_):
    def recount(project):
        total = {}
        for model in models_:
            for user_id, (u, r) in _held(model, project, [resource])[resource].items():
                cur = total.get(user_id, (0, 0))
                total[user_id] = (cur[0] + u, cur[1] + r)
        return total
    return recount


def register_recounters():
    """The VM resources are recounted from what servers, volumes and
    floating IPs hold (projects.quota_requests.quota_recount)."""
    from projects.quota_requests import register_recounter

    for resource in (Resource.CORES, Resource.RAM_MB, Resource.DISK_GB, Resource.INSTANCES):
        register_recounter(resource.value, _recounter(resource.value, [Server]))
    for resource in (Resource.VOLUMES, Resource.VOLUME_GB):
        register_recounter(resource.value, _recounter(resource.value, [Volume]))
    register_recounter(Resource.FLOATING_IPS.value, _recounter(Resource.FLOATING_IPS.value, [FloatingIP]))


# --------------------------------------------------------------------------- reads


def servers_visible_to(user):
    return owned_or_managed(Server.objects.select_related("project", "owner", "cloud", "profile")
                             .prefetch_related("floating_ip_set", "volumes"), user)  # Server.is_busy reads them


def volumes_visible_to(user):
    return owned_or_managed(Volume.objects.select_related("project", "owner", "cloud", "server"), user)


def ssh_keys_of(user):
    return SSHKey.objects.filter(owner=user)


def image_choices(cloud, project):
    return images_for(cloud, project)


def profile_choices(cloud):
    return profiles_offered(cloud)
