"""Shared by the VM services: the quota each record holds (moved only
through `_commit` and `_release`, with the record locked), validation that
names the offending field, events, and the per-project cloud client."""

import logging

import yaml
from django.core.exceptions import ValidationError
from django.db import transaction

from projects import services as project_services
from projects.models import Project, Resource

from ..catalog import images_for, profiles_offered
from ..clouds import openstack_client
from ..models import Cloud, ProfileFlavor
from ..vm_models import FloatingIPState, Server, ServerEvent, ServerState, Volume, VolumeState


log = logging.getLogger(__name__)
S, V, F = ServerState, VolumeState, FloatingIPState

METADATA_KEY = "nephele_uid"
USER_DATA_MAX = 16 * 1024  # nova's limit on base64 user data is 64 KiB; keep well inside


class RequestRefused(Exception):
    """An action that cannot be done in the record's current state; the
    message is for the user (HTTP 409 in the API)."""


# --------------------------------------------------------------------------- quota on records


def _volume_cost(size_gb):
    return {Resource.VOLUMES.value: 1, Resource.VOLUME_GB.value: int(size_gb)}


FLOATING_IP_COST = {Resource.FLOATING_IPS.value: 1}


def _add(a, b, sign=1):
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0) + sign * v
        if out[k] == 0:
            del out[k]
    return out


def _commit(record, amounts=None):
    """Reserved -> used (all of it, or `amounts`). Call with the record locked."""
    amounts = dict(record.quota_reserved) if amounts is None else amounts
    if not amounts:
        return
    project_services.quota_move_many(project=record.project, user=record.owner,
                                     reserved={k: -v for k, v in amounts.items()}, used=amounts)
    record.quota_reserved = _add(record.quota_reserved, amounts, -1)
    record.quota_used = _add(record.quota_used, amounts)
    type(record).objects.filter(pk=record.pk).update(quota_reserved=record.quota_reserved,
                                                     quota_used=record.quota_used)


def _release(record, *, reserved=True, used=True):
    """Give back what the record holds. Idempotent: the record forgets it."""
    give_res = dict(record.quota_reserved) if reserved else {}
    give_used = dict(record.quota_used) if used else {}
    if not give_res and not give_used:
        return
    project_services.quota_move_many(project=record.project, user=record.owner,
                                     reserved={k: -v for k, v in give_res.items()},
                                     used={k: -v for k, v in give_used.items()})
    if reserved:
        record.quota_reserved = {}
    if used:
        record.quota_used = {}
    type(record).objects.filter(pk=record.pk).update(quota_reserved=record.quota_reserved,
                                                     quota_used=record.quota_used)


def _event(server, message, *, kind=ServerEvent.Kind.STATE, actor=None):
    ServerEvent.objects.create(server=server, message=str(message)[:1000], kind=kind,
                               actor=actor if getattr(actor, "is_authenticated", False) else None)


def _on_commit(task, *args, countdown=None):
    def send():
        if countdown:
            task.apply_async(args=args, countdown=countdown)
        else:
            task.delay(*args)
    transaction.on_commit(send)


# --------------------------------------------------------------------------- validation


def _field_error(field, message):
    return ValidationError({field: [message]})


def clouds_for(project):
    """The enabled clouds a project can launch on."""
    return Cloud.objects.filter(enabled=True).order_by("name")


def validate_user_data(text):
    """cloud-init user data: size-limited; when it claims `#cloud-config`
    it must be a YAML mapping. Returns the text or raises ValidationError."""
    text = text or ""
    if len(text.encode()) > USER_DATA_MAX:
        raise _field_error("user_data", f"User data is limited to {USER_DATA_MAX // 1024} KiB.")
    if text.lstrip().startswith("#cloud-config"):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            raise _field_error("user_data", f"#cloud-config user data is not valid YAML{where}: "
                                            f"{getattr(exc, 'problem', None) or exc}") from None
        if data is not None and not isinstance(data, dict):
            raise _field_error("user_data", "#cloud-config user data must be a YAML mapping (key: value lines).")
    return text


def _flavor_of(cloud, profile):
    mapping = ProfileFlavor.objects.filter(cloud=cloud, profile=profile).first()
    return mapping.flavor_id if mapping else None


def _check_member(user, project):
    if project.status != Project.Status.ACTIVE:
        raise _field_error("project", f"Project {project.slug} is not active.")
    if not (user.is_staff or project.memberships.filter(user=user).exists()):
        raise _field_error("project", "You are not a member of this project.")


def _check_name(field, name):
    from ..vm_models import resource_name

    try:
        resource_name(name or "")
    except ValidationError as exc:
        raise _field_error(field, exc.messages[0]) from None


def server_validate(*, owner, project, cloud, profile, image, name, ssh_key=None, user_data="",
                    volume_gb=None, volume_name=""):
    """Everything a create request must satisfy, each failure naming its field."""
    _check_member(owner, project)
    _check_name("name", name)
    if not cloud.enabled:
        raise _field_error("cloud", f"Cloud {cloud.name} is not enabled.")
    if not profiles_offered(cloud).filter(pk=profile.pk).exists():
        raise _field_error("profile", f"Profile {profile.name} is not offered on {cloud.name}.")
    if image.cloud_id != cloud.pk or not images_for(cloud, project).filter(pk=image.pk).exists():
        raise _field_error("image", f"Image {image.name or image.image_id} is not available on {cloud.name}.")
    min_disk = 0  # glance's min_disk is not kept in the catalog; nova checks it and the fault is shown
    if profile.disk_gb and min_disk > profile.disk_gb:
        raise _field_error("profile", "The image needs a larger disk than this profile has.")
    if ssh_key is not None and ssh_key.owner_id != owner.pk:
        raise _field_error("key_name", "Unknown SSH key.")
    validate_user_data(user_data)
    if volume_gb is not None:
        volume_size(volume_gb, field="volume_gb")
        _check_name("volume_name", volume_name or f"{name}-data")


def volume_size(value, *, field="size_gb"):
    """A volume size in whole GB, 1 to 100000, or a ValidationError on `field`."""
    try:
        size = int(value)
    except (TypeError, ValueError):
        raise _field_error(field, "A whole number of GB.") from None
    if not 1 <= size <= 100_000:
        raise _field_error(field, "A volume size between 1 and 100000 GB.")
    return size




def _locked_server(server_id):
    return Server.objects.select_for_update(of=("self",)).select_related("project", "owner", "cloud", "profile").get(
        pk=server_id)


def _client(record):
    return openstack_client(record.cloud, record.project)


def _locked_volume(volume_id):
    return Volume.objects.select_for_update(of=("self",)).select_related("project", "owner", "cloud", "server").get(
        pk=volume_id)
