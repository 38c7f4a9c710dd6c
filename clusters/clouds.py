"""Project limits pushed to the OpenStack clouds, so the clouds refuse work
over them too: each portal project has an OpenStack project on each enabled
cloud (`CloudProject`, created as `<prefix><slug>` with the cloud's admin
credentials when missing), whose compute, volume and network quota sets are
set from the project's limits:

    cores -> compute cores        volumes      -> volume volumes
    ram_mb -> compute ram         volume_gb    -> volume gigabytes
    instances -> compute instances floating_ips -> network floatingip
                                  networks     -> network network

A resource without a quota row in the portal is 0 there, so it is 0 on the
cloud. OpenStack's own usage (`in_use`) is read back and compared with the
portal's `used`; such differences are reported, never "fixed" here (the
recount corrects the portal's side).

Idempotent: run by a periodic task, an admin action and the staff page; only
quota sets that differ are written, and the differences found before fixing
are returned (like `limits.slurm_limits_sync`)."""
import logging
from dataclasses import dataclass

from django.db import IntegrityError, transaction
from django.utils import timezone

from projects.models import Project, Resource

from .backends.base import AuthenticationFailed, BackendError, BackendUnavailable, InvalidRequest
from .models import Cloud, CloudProject

log = logging.getLogger(__name__)

# portal resource -> (service, the API's own name)
QUOTA_MAP = {
    Resource.CORES: ("compute", "cores"),
    Resource.RAM_MB: ("compute", "ram"),
    Resource.INSTANCES: ("compute", "instances"),
    Resource.VOLUMES: ("volume", "volumes"),
    Resource.VOLUME_GB: ("volume", "gigabytes"),
    Resource.FLOATING_IPS: ("network", "floatingip"),
    Resource.NETWORKS: ("network", "network"),
}


@dataclass
class QuotaDifference:
    """`what` is "project" (no OpenStack project yet), "limit" or "in use".
    `error` is set by a sync that could not fix it."""

    project: str
    openstack_project: str
    resource: str
    what: str
    portal: str
    cloud: str
    error: str = ""

    @property
    def fixable(self):
        return self.what != "in use"


def cloud_auth(cloud):
    """The clouds.yaml-style `auth` dict of the cloud's admin credentials:
    password (re-scoped to each project the portal acts in), application
    credential (its own project only), or a named clouds.yaml entry."""
    if cloud.auth_type == Cloud.AuthType.CLOUDS_YAML:
        from django.conf import settings

        from .backends.openstack import auth_from_clouds_yaml

        auth, _ = auth_from_clouds_yaml(settings.NEPHELE_CLOUDS_YAML, cloud.clouds_yaml_entry)
        return auth
    if cloud.auth_type == Cloud.AuthType.APPLICATION_CREDENTIAL:
        return {"auth_url": cloud.auth_url, "application_credential_id": cloud.application_credential_id,
                "application_credential_secret": cloud.application_credential_secret}
    return {
        "auth_url": cloud.auth_url,
        "username": cloud.username,
        "password": cloud.password,
        "user_domain_name": cloud.user_domain_name or "Default",
        "project_domain_name": cloud.project_domain_name or "Default",
        "project_name": cloud.project_name,
    }


def openstack_client(cloud, project=None):
    """A client with the cloud's admin credentials: scoped to the cloud's
    admin project, or with `project` (a portal Project) to that project's
    OpenStack project (created when missing). A mapping with its own
    application credential uses it; an application-credential cloud needs
    one, since its credential cannot act in other projects."""
    from .backends.openstack import OpenStackClient

    auth = cloud_auth(cloud)
    admin_scope = {"project_id": auth.pop("project_id", None), "project_name": auth.pop("project_name", None)}
    if project is None:
        if not auth.get("application_credential_id") and not any(admin_scope.values()):
            admin_scope["project_name"] = cloud.project_name
        return OpenStackClient(auth, cloud.region, **admin_scope)
    mapping = cloud_project_ensure(cloud, project)
    if mapping.application_credential_id:
        return OpenStackClient({"auth_url": auth["auth_url"],
                                "application_credential_id": mapping.application_credential_id,
                                "application_credential_secret": mapping.application_credential_secret},
                               cloud.region)
    if auth.get("application_credential_id"):
        raise InvalidRequest(
            f"cloud {cloud.name} authenticates with an application credential, which cannot act inside other "
            f"projects: give {project.slug}'s OpenStack project its own application credential (admin: "
            "Cloud projects)"
        )
    return OpenStackClient(auth, cloud.region, project_id=mapping.openstack_project_id)


def cloud_project_ensure(cloud, project, *, client=None):
    """The project's CloudProject on `cloud`; when there is none, the OpenStack
    project `<prefix><slug>` is found or created (the admin user gets the
    admin role on it, so the portal can act inside it) and mapped."""
    mapping = CloudProject.objects.filter(cloud=cloud, project=project).first()
    if mapping is not None:
        return mapping
    client = client or openstack_client(cloud)
    name = cloud.openstack_project_name_for(project)
    record = client.ensure_project(name, description=f"Nephele project {project.slug}: {project.name}"[:255],
                                   domain_id=cloud.project_domain_id or "default")
    try:
        with transaction.atomic():
            mapping, _ = CloudProject.objects.get_or_create(
                cloud=cloud, project=project,
                defaults={"openstack_project_id": record.id, "openstack_project_name": record.name},
            )
    except IntegrityError:  # a concurrent call mapped it first
        mapping = CloudProject.objects.get(cloud=cloud, project=project)
    return mapping


def _portal_quotas(project):
    """{resource: (limit, used)} for the mapped resources; missing rows are 0."""
    rows = {q.resource: (q.limit, q.used) for q in project.quotas.filter(resource__in=list(QUOTA_MAP))}
    return {res: rows.get(res, (0, 0)) for res in QUOTA_MAP}


def _cloud_text(value):
    return "unlimited" if value is not None and value < 0 else ("(none)" if value is None else str(value))


def _project_diffs(client, cloud, project, mapping):
    """Differences of one mapped project, and the quota sets that would fix
    the limits: ({service: {name: value}})."""
    quotas = client.get_quotas_with_usage(mapping.openstack_project_id)
    label = mapping.openstack_project_name or mapping.openstack_project_id
    diffs, wanted = [], {}
    for res, (limit, used) in _portal_quotas(project).items():
        service, name = QUOTA_MAP[res]
        have = getattr(quotas, service).get(name)
        cloud_limit = have.limit if have is not None else None
        if cloud_limit != limit:
            diffs.append(QuotaDifference(project.slug, label, res, "limit", str(limit), _cloud_text(cloud_limit)))
            wanted.setdefault(service, {})[name] = limit
        in_use = have.in_use if have is not None else 0
        if in_use != used:
            diffs.append(QuotaDifference(project.slug, label, res, "in use", str(used), str(in_use)))
    return diffs, wanted


def _active(projects):
    return list(projects) if projects is not None else list(Project.objects.filter(status=Project.Status.ACTIVE))


def openstack_quotas_diff(cloud, projects=None):
    """What differs between the portal and the cloud, without changing it:
    unmapped projects, limits, and usage (portal `used` vs cloud `in_use`)."""
    client = openstack_client(cloud)
    client.project_id  # authenticate even when nothing is mapped yet, so bad credentials show
    mappings = {m.project_id: m for m in CloudProject.objects.filter(cloud=cloud)}
    diffs = []
    for project in _active(projects):
        mapping = mappings.get(project.pk)
        if mapping is None:
            diffs.append(QuotaDifference(project.slug, cloud.openstack_project_name_for(project), "", "project",
                                         "exists", "not mapped"))
            continue
        diffs.extend(_project_diffs(client, cloud, project, mapping)[0])
    return diffs


def _set(client, project_id, wanted):
    compute = wanted.get("compute")
    if compute:
        compute = {**compute, "force": True}  # nova: even below what is in use (no new servers then)
    client.set_quotas(project_id, compute=compute, volume=wanted.get("volume"), network=wanted.get("network"))


def openstack_quotas_sync(cloud, projects=None):
    """Create and map missing OpenStack projects and set the quota sets that
    differ. Returns the differences it fixed; one it could not fix (e.g. the
    cloud refused a value) carries `error`, and the other projects are still
    synced. Failing to reach or authenticate to the cloud raises."""
    client = openstack_client(cloud)
    client.project_id  # authenticate first: a wrong password fails the whole cloud, early
    mappings = {m.project_id: m for m in CloudProject.objects.filter(cloud=cloud)}
    fixed = []
    for project in _active(projects):
        mapping = mappings.get(project.pk)
        found = []
        try:
            if mapping is None:
                found.append(QuotaDifference(project.slug, cloud.openstack_project_name_for(project), "",
                                             "project", "exists", "not mapped"))
                mapping = cloud_project_ensure(cloud, project, client=client)
            diffs, wanted = _project_diffs(client, cloud, project, mapping)
            found.extend(d for d in diffs if d.fixable)
            if wanted:
                _set(client, mapping.openstack_project_id, wanted)
        except (BackendUnavailable, AuthenticationFailed):
            raise
        except BackendError as exc:
            log.warning("OpenStack quotas of %s on %s: %s", project.slug, cloud.name, exc)
            for d in found or [QuotaDifference(project.slug, cloud.openstack_project_name_for(project), "",
                                               "project", "synced", "failed")]:
                d.error = str(exc)
                fixed.append(d)
            continue
        fixed.extend(found)
    Cloud.objects.filter(pk=cloud.pk).update(last_sync=timezone.now())
    return fixed
