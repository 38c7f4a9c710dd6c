"""The VM catalog of each cloud: its flavors and images as last seen there,
and the portal's VM profiles ("m1.large": a named offer with a quota cost)
mapped to one flavor per cloud.

`catalog_sync(cloud)` reads the cloud with its admin credentials (one flavor
list call and one image list call), upserts the rows, deletes the rows whose
flavor or image is gone, and maps each profile not yet mapped on the cloud
to a flavor of the same name. Idempotent: run by a periodic task
(`clusters.tasks.sync_catalogs`) and the "Sync flavors and images" admin
action.
"""
import logging

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from .clouds import openstack_client
from .models import CloudProject, Flavor, Image, ProfileFlavor, VMProfile

log = logging.getLogger(__name__)

FLAVOR_FIELDS = ["name", "vcpus", "ram_mb", "disk_gb", "is_public"]
IMAGE_FIELDS = ["name", "os_distro", "os_version", "size_bytes", "visibility", "owner", "status"]


def _list_images(client):
    """[{image_id, name, os_distro, os_version, size_bytes, visibility, owner,
    status}] in one glance list call.

    `OpenStackClient.list_images` returns `ImageRecord`s, which carry neither
    the owner nor the os_distro/os_version properties, so this reads the
    same listing through the client's connection, with the backend's error
    translation. TODO: move into backends/openstack.py once `ImageRecord`
    has `owner` and `properties`."""
    from .backends.openstack import _api

    def prop(image, name):
        value = getattr(image, name, None)
        if value is None:
            value = (getattr(image, "properties", None) or {}).get(name)
        return str(value)[:64] if value not in (None, "") else ""

    with _api("list images"):
        return [
            {"image_id": i.id, "name": (i.name or "")[:255], "os_distro": prop(i, "os_distro"),
             "os_version": prop(i, "os_version"), "size_bytes": i.size, "visibility": i.visibility or "",
             "owner": i.owner or "", "status": i.status or ""}
            for i in client.conn.image.images()
        ]


def _upsert(model, cloud, key, wanted, fields, now):
    """Make `model`'s rows of `cloud` exactly `wanted` ({id: {field: value}}).
    Returns (created, updated, deleted)."""
    existing = {getattr(row, key): row for row in model.objects.filter(cloud=cloud)}
    new, changed = [], []
    for ident, values in wanted.items():
        row = existing.get(ident)
        if row is None:
            new.append(model(cloud=cloud, seen_at=now, **{key: ident}, **values))
            continue
        if any(getattr(row, f) != values[f] for f in fields):
            changed.append(ident)
        for f in fields:
            setattr(row, f, values[f])
        row.seen_at = now
    if new:
        # update_conflicts: a concurrent sync that inserted the same row first is not an error
        model.objects.bulk_create(new, update_conflicts=True, unique_fields=["cloud", key],
                                  update_fields=fields + ["seen_at"])
    kept = [row for ident, row in existing.items() if ident in wanted]
    if kept:
        model.objects.bulk_update(kept, fields + ["seen_at"])
    gone = [ident for ident in existing if ident not in wanted]
    deleted = model.objects.filter(cloud=cloud, **{f"{key}__in": gone}).delete()[0] if gone else 0
    return len(new), len(changed), deleted


def catalog_sync(cloud):
    """Pull the cloud's flavors and images into `Flavor` and `Image`, and map
    unmapped profiles to flavors of the same name. Returns counts:
    {"flavors": n, "flavors_created", "flavors_updated", "flavors_deleted",
    "images": n, "images_created", "images_updated", "images_deleted",
    "profiles_mapped"}. Failing to reach the cloud raises (a `BackendError`)
    before anything is changed."""
    client = openstack_client(cloud)
    flavors = {f.id: {"name": (f.name or "")[:255], "vcpus": f.vcpus or 0, "ram_mb": f.ram_mb or 0,
                      "disk_gb": f.disk_gb or 0, "is_public": bool(f.is_public)}
               for f in client.list_flavors()}
    images = {}
    for values in _list_images(client):
        images[values.pop("image_id")] = values
    now = timezone.now()
    counts = {"flavors": len(flavors), "images": len(images)}
    with transaction.atomic():
        fc, fu, fd = _upsert(Flavor, cloud, "flavor_id", flavors, FLAVOR_FIELDS, now)
        ic, iu, idel = _upsert(Image, cloud, "image_id", images, IMAGE_FIELDS, now)
        counts.update(flavors_created=fc, flavors_updated=fu, flavors_deleted=fd,
                      images_created=ic, images_updated=iu, images_deleted=idel)
        # mapped flavors that were renamed keep their mapping, with the new name shown
        for mapping in ProfileFlavor.objects.filter(cloud=cloud, flavor_id__in=list(flavors)):
            name = flavors[mapping.flavor_id]["name"]
            if mapping.flavor_name != name:
                mapping.flavor_name = name
                mapping.save(update_fields=["flavor_name"])
        by_name = {}
        for ident, values in sorted(flavors.items()):
            by_name.setdefault(values["name"], ident)
        mapped = 0
        for profile in VMProfile.objects.exclude(cloud_flavors__cloud=cloud).filter(name__in=list(by_name)):
            _, created = ProfileFlavor.objects.get_or_create(
                cloud=cloud, profile=profile,
                defaults={"flavor_id": by_name[profile.name], "flavor_name": profile.name},
            )
            mapped += created
        counts["profiles_mapped"] = mapped
    log.info("catalog of %s synced: %s", cloud.name, counts)
    return counts


def profiles_offered(cloud):
    """The enabled profiles that can be launched on `cloud`: mapped there, to
    a flavor the last sync still saw."""
    live = Flavor.objects.filter(cloud=cloud).values("flavor_id")
    return VMProfile.objects.filter(
        enabled=True, cloud_flavors__cloud=cloud, cloud_flavors__flavor_id__in=live
    ).distinct()


def images_for(cloud, project):
    """The active images `project` (a portal Project) can boot on `cloud`: the
    public ones and its OpenStack project's own."""
    mine = Q(visibility=Image.Visibility.PUBLIC)
    openstack_project_id = (
        CloudProject.objects.filter(cloud=cloud, project=project).values_list("openstack_project_id", flat=True)
        .first()
    )
    if openstack_project_id:
        mine |= Q(owner=openstack_project_id)
    return Image.objects.filter(mine, cloud=cloud, status="active").order_by("name")
