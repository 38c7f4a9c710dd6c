"""Project limits pushed to the clusters, so the clusters refuse work over
them too: each project is a Slurm account (ClusterAccount or its slug) with an
association per member who has a POSIX name there, and GrpTRESMins=cpu set
from the project's core-hour limit.

Idempotent: run by a periodic task and by an admin action; the differences
found before fixing are returned for the staff page."""
from dataclasses import dataclass

from projects.models import Project, Resource

from .models import PosixAccount
from .services import slurm_client


@dataclass
class LimitDifference:
    project: str
    account: str
    what: str
    portal: str
    cluster: str


def _portal_state(cluster, project):
    quota = project.quotas.filter(resource=Resource.CORE_HOURS).first()
    minutes = quota.limit * 60 if quota else 0
    members = set(project.memberships.values_list("user_id", flat=True))
    users = set(PosixAccount.objects.filter(cluster=cluster, user_id__in=members).values_list("username", flat=True))
    return f"cpu={minutes}", users


def _limit_text(raw):
    """sacctmgr prints GrpTRESMins as 'cpu=600' (or empty for no limit)."""
    return raw or "(none)"


def slurm_limits_diff(*, cluster, projects=None):
    """What differs between the portal and the cluster, without changing it."""
    client = slurm_client(cluster)
    diffs = []
    for project in projects or Project.objects.filter(status=Project.Status.ACTIVE):
        account = cluster.account_for(project)
        want_limit, want_users = _portal_state(cluster, project)
        assoc = client.associations(account)
        if "" not in assoc:
            diffs.append(LimitDifference(project.slug, account, "account", "exists", "missing"))
            continue
        if assoc[""] != want_limit:
            diffs.append(LimitDifference(project.slug, account, "GrpTRESMins", want_limit, _limit_text(assoc[""])))
        for user in sorted(want_users - set(assoc)):
            diffs.append(LimitDifference(project.slug, account, f"user {user}", "associated", "missing"))
    return diffs


def slurm_limits_sync(*, cluster, projects=None):
    """Create missing accounts and user associations and set the core-hour
    limits. Returns the differences that were fixed."""
    client = slurm_client(cluster)
    projects = list(projects or Project.objects.filter(status=Project.Status.ACTIVE))
    diffs = slurm_limits_diff(cluster=cluster, projects=projects)
    for project in projects:
        account = cluster.account_for(project)
        want_limit, want_users = _portal_state(cluster, project)
        client.ensure_account(account, description=project.name)
        for user in sorted(want_users):
            client.ensure_user(user, account)
        client.set_cpu_minutes_limit(account, int(want_limit.split("=")[1]))
    return diffs
