"""Composing jobs: templates and their parameters, validation against the
cluster's partitions, the core-hours reservation, and saving a job as
`queued` for a worker to submit (see jobs.submission)."""
import math
import re
import shlex

from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.utils import timezone

from clusters import services as cluster_services
from clusters.models import Partition
from projects import selectors as project_selectors
from projects import services as project_services
from projects.models import Resource

from . import submission, tasks
from .models import FINAL as FINAL_STATES, Job, JobTemplate, State

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
PARAM = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def templates_visible_to(user):
    from django.db.models import Q

    return JobTemplate.objects.filter(Q(owner__isnull=True) | Q(owner=user))


def template_render(*, template, parameters):
    """The template's script with each `{{ name }}` replaced by the
    shell-quoted, validated value (defaults where not given)."""
    values, errors = {}, {}
    specs = {p["name"]: p for p in template.parameters}
    unknown = set(parameters or {}) - set(specs)
    if unknown:
        errors["parameters"] = f"Unknown parameter(s): {', '.join(sorted(unknown))}."
    for name, spec in specs.items():
        raw = (parameters or {}).get(name, spec.get("default"))
        try:
            values[name] = _parameter_value(spec, raw)
        except ValueError as exc:
            errors[f"parameters.{name}"] = str(exc)
    if errors:
        raise ValidationError(errors)
    return PARAM.sub(lambda m: shlex.quote(str(values[m.group(1)])) if m.group(1) in values else m.group(0),
                     template.script)


def _parameter_value(spec, raw):
    label = spec.get("label", spec["name"])
    if raw is None or raw == "":
        raise ValueError(f"{label} is required.")
    kind = spec.get("type", "str")
    if kind == "int":
        try:
            value = int(raw)
        except (TypeError, ValueError):
            raise ValueError(f"{label} must be a whole number.") from None
        if "min" in spec and value < spec["min"]:
            raise ValueError(f"{label} must be at least {spec['min']}.")
        if "max" in spec and value > spec["max"]:
            raise ValueError(f"{label} must be at most {spec['max']}.")
        return value
    if kind == "choice":
        if str(raw) not in [str(c) for c in spec.get("choices", [])]:
            raise ValueError(f"{label} must be one of {', '.join(map(str, spec.get('choices', [])))}.")
        return str(raw)
    value = str(raw)
    if len(value) > spec.get("max_length", 1000):
        raise ValueError(f"{label} is too long.")
    return value


DEFAULT_TIME_LIMIT = 60


def _default_time(partition):
    if partition is None:
        return DEFAULT_TIME_LIMIT
    return partition.default_time_minutes or min(DEFAULT_TIME_LIMIT, partition.max_time_minutes or DEFAULT_TIME_LIMIT)


def default_time_limit(cluster, partition_name=""):
    """The time limit a job gets when it names none (for estimates)."""
    partitions = cluster.partitions.all()
    partition = next((p for p in partitions if p.name == partition_name), None) if partition_name else next(
        (p for p in partitions if p.is_default), None)
    return _default_time(partition)


def _check_partition(cluster, name, *, nodes, cpus, memory_mb, time_limit_minutes):
    """The partition to use (its name) and the time limit: the one asked for,
    else the partition's default, else an hour capped at its maximum."""
    known = getattr(cluster, "partitions_known", None)  # see jobs.selectors.cluster_for_submission
    partitions = {p.name: p for p in (cluster.partitions.all() if known is None else known)}
    if not name:
        default = next((p for p in partitions.values() if p.is_default), None)
        partition = default
    else:
        partition = partitions.get(name)
        if partition is None and partitions:
            raise ValidationError({"partition": f"{cluster.name} has no partition {name!r}: "
                                                f"choose one of {', '.join(sorted(partitions))}."})
    if partition is None:
        return name, time_limit_minutes or _default_time(None)
    time_limit_minutes = time_limit_minutes or _default_time(partition)
    errors = {}
    if partition.max_time_minutes and time_limit_minutes > partition.max_time_minutes:
        errors["time_limit_minutes"] = (f"{partition.name} allows at most {partition.max_time_minutes} minutes.")
    if partition.max_nodes and nodes > partition.max_nodes:
        errors["nodes"] = f"{partition.name} allows at most {partition.max_nodes} nodes."
    if partition.total_nodes and nodes > partition.total_nodes:
        errors["nodes"] = f"{partition.name} has only {partition.total_nodes} node(s)."
    per_node = partition.max_cpus_per_node or (
        partition.total_cpus // partition.total_nodes if partition.total_nodes else None
    )
    if per_node and cpus > per_node:
        errors["cpus"] = f"{partition.name} has at most {per_node} CPUs per node."
    if partition.max_mem_per_node_mb and memory_mb and memory_mb > partition.max_mem_per_node_mb:
        errors["memory_mb"] = f"{partition.name} allows at most {partition.max_mem_per_node_mb} MB per node."
    if errors:
        raise ValidationError(errors)
    return partition.name, time_limit_minutes


def _check_environment(environment):
    if not isinstance(environment, dict):
        raise ValidationError({"environment": "A mapping of variable names to values."})
    for key, value in environment.items():
        if not ENV_NAME.match(str(key)):
            raise ValidationError({"environment": f"{key!r} is not a valid variable name."})
        if not isinstance(value, (str, int, float)) or "\x00" in str(value):
            raise ValidationError({"environment": f"The value of {key} must be text."})


def _role_of(user, project):
    """The user's role in the project, known if the project was looked up
    for them (jobs.selectors.project_for_submission), else asked."""
    known = getattr(project, "roles_known", {})
    return known[user.pk] if user.pk in known else project_selectors.role_of(user, project)


def _account_for(cluster, project):
    """The project's Slurm account on the cluster, the mapping known if the
    cluster was looked up with the project (jobs.selectors.cluster_for_submission)."""
    known = getattr(cluster, "accounts_known", {})
    if project.slug in known:
        return known[project.slug] or project.slug
    return cluster.account_for(project)


def job_prepare(*, owner, project, cluster, name, script="", partition="", nodes=None, cpus=None, memory_mb=None,
                time_limit_minutes=None, gpus=None, array="", environment=None, template=None, parameters=None):
    """A validated, unsaved Job. Resources not given come from the template,
    if any, else one node, one CPU, no GPU and the partition's time limit."""
    if not (owner.is_staff or _role_of(owner, project)):
        raise ValidationError({"project": "You are not a member of this project."})
    if not project.is_active:
        raise ValidationError({"project": f"Project {project.name} is {project.get_status_display().lower()}."})
    if not cluster.enabled:
        raise ValidationError({"cluster": f"Cluster {cluster.name} is not accepting jobs."})
    if template is not None:
        if not templates_visible_to(owner).filter(pk=template.pk).exists():
            raise ValidationError({"template": "Unknown template."})
        script = template_render(template=template, parameters=parameters)
        partition = partition or template.partition
        nodes = nodes or template.nodes
        cpus = cpus or template.cpus
        memory_mb = memory_mb or template.memory_mb
        gpus = template.gpus if gpus is None else gpus
        if time_limit_minutes is None:
            time_limit_minutes = template.time_limit_minutes
        if template.max_cpus and cpus > template.max_cpus:
            raise ValidationError({"cpus": f"This template allows at most {template.max_cpus} CPUs."})
        if template.max_time_limit_minutes and (time_limit_minutes or 0) > template.max_time_limit_minutes:
            raise ValidationError({"time_limit_minutes":
                                   f"This template allows at most {template.max_time_limit_minutes} minutes."})
    nodes, cpus, gpus = nodes or 1, cpus or 1, gpus or 0
    if not script or not script.strip():
        raise ValidationError({"script": "The job script is empty."})
    if not script.startswith("#!"):
        script = "#!/bin/bash\n" + script
    environment = environment or {}
    _check_environment(environment)
    posix_user = cluster_services.posix_username(user=owner, cluster=cluster)
    partition, time_limit_minutes = _check_partition(cluster, partition, nodes=nodes, cpus=cpus, memory_mb=memory_mb,
                                 time_limit_minutes=time_limit_minutes)
    job = Job(
        project=project, owner=owner, cluster=cluster, template=template, template_parameters=parameters or {},
        name=name, script=script, partition=partition, nodes=nodes, cpus=cpus, memory_mb=memory_mb,
        time_limit_minutes=time_limit_minutes, gpus=gpus, array=array or "", environment=environment,
        posix_user=posix_user, account=_account_for(cluster, project),
    )
    job.full_clean(exclude=["project", "owner", "cluster", "template"], validate_unique=False)
    return job


@transaction.atomic
def job_create(*, owner, project, cluster, **fields):
    """Validate, reserve the estimated core-hours, save as queued and hand the
    submission to a worker once committed. Raises ValidationError or
    projects.services.QuotaExceeded; nothing reaches the cluster then."""
    job = job_prepare(owner=owner, project=project, cluster=cluster, **fields)
    estimate = job.estimated_core_hours
    job.reserved_core_hours = estimate
    job.state = State.QUEUED  # created ready for the worker: its first state, not a change
    job.state_changed = timezone.now()
    job.workdir = cluster_services.user_workdir(cluster=cluster, username=job.posix_user)
    # File names carry the Slurm job name, which needs the primary key: taken
    # from the table's sequence first where there is one, so the row is
    # written once; elsewhere saved, then named.
    job.pk = _next_job_id()
    if job.pk is not None:
        _name_output_files(job)
        job.save(force_insert=True)
    else:
        job.save()
        _name_output_files(job)
        Job.objects.filter(pk=job.pk).update(output_path=job.output_path, error_path=job.error_path)
    # Reserve last: the quota row stays locked from here to the commit, so
    # concurrent submissions to one project queue behind each other only for
    # that moment. Over the quota, the whole transaction (the job too) is
    # rolled back.
    project_services.quota_reserve(project=project, user=owner, resource=Resource.CORE_HOURS, amount=estimate)
    if submission.batch_anchor(job) is None:  # else it goes with that job's batch
        transaction.on_commit(lambda: _send_submit_message(job))
    return job


def _next_job_id():
    """A fresh primary key for a job (PostgreSQL), else None."""
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute("SELECT nextval(pg_get_serial_sequence(%s, %s))", [Job._meta.db_table, Job._meta.pk.column])
        return cursor.fetchone()[0]


def _name_output_files(job):
    # An array's tasks each get their own files (%a: Slurm puts the task id in).
    task = ".%a" if job.array else ""
    job.output_path = f"{job.workdir}/{job.slurm_name}{task}.out"
    job.error_path = f"{job.workdir}/{job.slurm_name}{task}.err"


def _send_submit_message(job):
    tasks.submit_job.delay(job.pk)
    submission.message_sent(job)


def job_clone(*, job, owner):
    """A new job with the same settings (and the same script)."""
    return job_create(
        owner=owner, project=job.project, cluster=job.cluster, name=job.name, script=job.script,
        partition=job.partition, nodes=job.nodes, cpus=job.cpus, memory_mb=job.memory_mb,
        time_limit_minutes=job.time_limit_minutes, gpus=job.gpus, array=job.array, environment=job.environment,
    )


def job_partitions(cluster):
    return Partition.objects.filter(cluster=cluster)


def template_save_from_job(*, job, owner, name):
    """A user-saved template from a job (its script, no parameters)."""
    return JobTemplate.objects.create(
        name=name[:120], owner=owner, cluster=job.cluster, script=job.script, partition=job.partition,
        cpus=job.cpus, memory_mb=job.memory_mb, time_limit_minutes=job.time_limit_minutes, nodes=job.nodes,
        gpus=job.gpus,
    )


def core_hours_by_member(project):
    """Core-hours per member recounted from the jobs, as settled: the running
    and waiting jobs' reservations, and each finished job's CPU time rounded up."""
    counts = {}
    for owner_id, state, reserved, used in Job.objects.filter(project=project).values_list(
            "owner_id", "state", "reserved_core_hours", "used_core_hours"):
        u, r = counts.get(owner_id, (0, 0))
        counts[owner_id] = (u + (math.ceil(used) if used and state in FINAL_STATES else 0), r + reserved)
    return counts
