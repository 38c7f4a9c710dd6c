"""Reads filtered by tenant: members see their own jobs, managers all jobs
of their projects, staff everything."""
import json

from django.db import connection
from django.db.models import Q
from django.shortcuts import get_object_or_404

from clusters.models import ClusterAccount, Partition, PosixAccount, SlurmCluster
from projects.models import Membership, Project
from projects.selectors import owned_or_managed

from .models import Job


def jobs_visible_to(user):
    return owned_or_managed(Job.objects.select_related("project", "owner", "cluster"), user)


def job_for(user, pk):
    return get_object_or_404(jobs_visible_to(user), pk=pk)


def job_search(user, *, query="", project="", state="", cluster=""):
    qs = jobs_visible_to(user)
    if query:
        q = Q(name__icontains=query) | Q(scheduler_id=query)
        if query.isdigit():
            q |= Q(pk=int(query))
        qs = qs.filter(q)
    if project:
        qs = qs.filter(project__slug=project)
    if state:
        qs = qs.filter(state=state)
    if cluster:
        qs = qs.filter(cluster__name=cluster)
    return qs


def can_cancel(user, job):
    """Owners, the project's managers and staff may cancel."""
    return user.is_staff or job.owner_id == user.pk or job.project.memberships.filter(
        user=user, role="manager"
    ).exists()


# --- Looking up what a new job names ------------------------------------------------
# A job submission names a project and a cluster; composing the job then
# needs the user's role in the project, their POSIX name on the cluster and
# the project's Slurm account there. These lookups fetch those with the
# object in one query and remember them on it, keyed by user (or project
# slug), for jobs.composition and clusters.services to use instead of asking
# again. They are plain SQL: every POST /api/v1/jobs/ runs them, and the
# ORM spends several times longer compiling such a query (with subqueries)
# than the database spends answering it.


def project_for_submission(user, slug):
    """The project `slug` if `user` may see it (else None), knowing the
    user's role in it (`roles_known`). The rule is projects_visible_to's:
    staff see every project, others the projects they are members of (here
    as an inner join on their membership, which also gives the role)."""
    if not user.is_authenticated:
        return None
    join = "LEFT JOIN" if user.is_staff else "JOIN"
    project = next(iter(Project.objects.raw(
        f"SELECT p.*, m.role AS user_role FROM {Project._meta.db_table} p "
        f"{join} {Membership._meta.db_table} m ON m.project_id = p.id AND m.user_id = %s "
        "WHERE p.slug = %s", [user.pk, slug])), None)
    if project is not None:
        project.roles_known = {user.pk: project.user_role}
    return project


def cluster_for_submission(user, name, *, project_slug=None):
    """The cluster `name` (else None), knowing the user's POSIX name on it
    (`posix_names_known`) and, given a project slug, that project's Slurm
    account mapping there (`accounts_known`; None: the default). Its SSH
    secrets are not read (nor decrypted): creating a job does not use them."""
    columns = ", ".join(f"c.{f.column}" for f in SlurmCluster._meta.concrete_fields
                        if f.name not in ("ssh_private_key", "known_hosts"))
    # Its partitions come along as one JSON array (PostgreSQL), for the
    # limits check (`partitions_known`); elsewhere they are asked for then.
    partitions = (f", (SELECT json_agg(row_to_json(p)) FROM {Partition._meta.db_table} p "
                  "WHERE p.cluster_id = c.id) AS partition_rows" if connection.vendor == "postgresql" else "")
    cluster = next(iter(SlurmCluster.objects.raw(
        f"SELECT {columns}, pa.username AS user_posix_name, ca.account AS project_account{partitions} "
        f"FROM {SlurmCluster._meta.db_table} c "
        f"LEFT JOIN {PosixAccount._meta.db_table} pa ON pa.cluster_id = c.id AND pa.user_id = %s "
        f"LEFT JOIN {ClusterAccount._meta.db_table} ca ON ca.cluster_id = c.id "
        f"AND ca.project_id = (SELECT id FROM {Project._meta.db_table} WHERE slug = %s) "
        "WHERE c.name = %s", [user.pk, project_slug, name])), None)
    if cluster is not None:
        cluster.posix_names_known = {user.pk: cluster.user_posix_name}
        if project_slug is not None:
            cluster.accounts_known = {project_slug: cluster.project_account}
        if partitions:
            cluster.partitions_known = _partitions_from_rows(cluster.partition_rows)
    return cluster


def _partitions_from_rows(rows):
    """Partitions as read from the database, from json_agg rows (their
    `synced` time deferred: JSON carries it as text)."""
    if isinstance(rows, str):  # a driver that does not decode json
        rows = json.loads(rows)
    fields = [f for f in Partition._meta.concrete_fields if f.name != "synced"]
    return [Partition.from_db(connection.alias, [f.attname for f in fields], [row[f.column] for f in fields])
            for row in rows or []]
