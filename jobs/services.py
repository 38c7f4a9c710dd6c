"""Batch job rules: compose and validate, reserve core-hours, submit exactly
once, follow the job on the cluster, cancel, clone.

Submission is idempotent: the job is marked `submitting` and committed
before sbatch runs, and the Slurm job carries the portal id in its name, so
a retried or restarted worker first looks the name up and adopts a job it
already made instead of submitting it again.
"""
import logging
import math
import re
import shlex
from datetime import timedelta

from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone

from clusters import services as cluster_services
from clusters.backends.base import BackendError, BackendUnavailable, RemoteFileMissing
from clusters.models import Partition, SlurmCluster
from projects import selectors as project_selectors
from projects import services as project_services
from projects.models import Resource

from . import tasks
from .models import ACTIVE, FINAL as FINAL_STATES, ON_CLUSTER, Job, JobTemplate, State

log = logging.getLogger(__name__)

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
PARAM = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
# Seconds a job may be missing from both squeue and sacct before it is lost.
LOST_AFTER = timedelta(minutes=10)

# Slurm's state names -> the transition that records them.
SLURM_TRANSITIONS = {
    "PENDING": "mark_pending", "REQUEUED": "mark_pending", "REQUEUE_HOLD": "mark_pending",
    "REQUEUE_FED": "mark_pending", "SUSPENDED": "mark_running", "CONFIGURING": "mark_running",
    "RUNNING": "mark_running", "RESIZING": "mark_running", "SIGNALING": "mark_running",
    "STAGE_OUT": "mark_completing", "COMPLETING": "mark_completing",
    "COMPLETED": "finish_completed", "FAILED": "finish_failed", "BOOT_FAIL": "finish_failed",
    "DEADLINE": "finish_failed", "PREEMPTED": "finish_failed", "REVOKED": "finish_failed",
    "SPECIAL_EXIT": "finish_failed", "CANCELLED": "finish_cancelled", "TIMEOUT": "finish_timeout",
    "OUT_OF_MEMORY": "finish_out_of_memory", "NODE_FAIL": "finish_node_fail",
}
FINAL_SLURM = {s for s, t in SLURM_TRANSITIONS.items() if t.startswith("finish_")}


# --- Composition ---------------------------------------------------------------


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
    partitions = {p.name: p for p in cluster.partitions.all()}
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


def job_prepare(*, owner, project, cluster, name, script="", partition="", nodes=None, cpus=None, memory_mb=None,
                time_limit_minutes=None, gpus=None, array="", environment=None, template=None, parameters=None):
    """A validated, unsaved Job. Resources not given come from the template,
    if any, else one node, one CPU, no GPU and the partition's time limit."""
    if not (owner.is_staff or project_selectors.role_of(owner, project)):
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
        posix_user=posix_user, account=cluster.account_for(project),
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
    project_services.quota_reserve(project=project, user=owner, resource=Resource.CORE_HOURS, amount=estimate)
    job.reserved_core_hours = estimate
    job.state = State.QUEUED  # created ready for the worker: its first state, not a change
    job.state_changed = timezone.now()
    job.workdir = cluster_services.user_workdir(cluster=cluster, username=job.posix_user)
    job.save()
    # File names carry the Slurm job name, which needs the primary key; an
    # array's tasks each get their own files (%a: Slurm puts the task id in).
    task = ".%a" if job.array else ""
    job.output_path = f"{job.workdir}/{job.slurm_name}{task}.out"
    job.error_path = f"{job.workdir}/{job.slurm_name}{task}.err"
    Job.objects.filter(pk=job.pk).update(output_path=job.output_path, error_path=job.error_path)
    transaction.on_commit(lambda: tasks.submit_job.delay(job.pk))
    return job


def job_clone(*, job, owner):
    """A new job with the same settings (and the same script)."""
    return job_create(
        owner=owner, project=job.project, cluster=job.cluster, name=job.name, script=job.script,
        partition=job.partition, nodes=job.nodes, cpus=job.cpus, memory_mb=job.memory_mb,
        time_limit_minutes=job.time_limit_minutes, gpus=job.gpus, array=job.array, environment=job.environment,
    )


# --- Submission ------------------------------------------------------------------


def _submit_request(job):
    from clusters.backends.base import SubmitRequest

    return SubmitRequest(
        script=job.script, job_name=job.slurm_name, workdir=job.workdir, output=job.output_path,
        error=job.error_path, account=job.account, partition=job.partition, nodes=job.nodes, cpus=job.cpus,
        memory_mb=job.memory_mb, time_limit_minutes=job.time_limit_minutes, gpus=job.gpus, array=job.array,
        environment={k: str(v) for k, v in job.environment.items()},
    )


def job_submit(*, job_id, hold=False):
    """Submit a queued job exactly once. Called by the worker; safe to call
    again after a crash at any point."""
    with transaction.atomic():
        job = Job.objects.select_for_update().select_related("cluster").get(pk=job_id)
        if not job.can("begin_submit"):
            return job  # cancelled meanwhile, or already submitted
        # Only a job already `submitting` can have reached sbatch before.
        may_exist = job.state == State.SUBMITTING
        job.transition("begin_submit", submit_attempts=job.submit_attempts + 1)
    # Committed: from here a crash leaves `submitting`, and the retry looks
    # the name up before submitting again.
    client = cluster_services.slurm_client(job.cluster)
    try:
        found = client.find_jobs_by_name([job.slurm_name]).get(job.slurm_name, []) if may_exist else []
        if found:
            scheduler_id = found[0]
            log.info("job %s was already submitted as %s: adopting it", job.pk, scheduler_id)
        else:
            _ensure_workdir(client, job)
            request = _submit_request(job)
            request.hold = hold
            as_user = job.posix_user if job.cluster.sudo_mode == SlurmCluster.SudoMode.SUDO else None
            scheduler_id = client.submit(request, as_user=as_user)
    except BackendUnavailable:
        raise  # the task retries later; the job stays `submitting`
    except BackendError as exc:
        with transaction.atomic():
            job = Job.objects.select_for_update().get(pk=job_id)
            if job.can("submit_failed"):
                job.transition("submit_failed", reason=f"The cluster refused the job: {exc}"[:500],
                               ended_at=timezone.now())
                _settle_quota(job, actual=0)
        return job
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job_id)
        if job.state == State.SUBMITTING:
            job.transition("submitted", scheduler_id=scheduler_id, submitted_at=timezone.now(),
                           scheduler_state="PENDING", reason="")
    return job


_workdirs_made = set()


def _ensure_workdir(client, job):
    """Create $PREFIX/$USER once per process and cluster, not per job."""
    key = (job.cluster_id, job.workdir)
    if key not in _workdirs_made:
        client.ensure_dir(job.workdir)
        _workdirs_made.add(key)


def job_give_up_submission(*, job_id, error):
    """The worker ran out of retries: no command node answered."""
    with transaction.atomic():
        job = Job.objects.select_for_update().get(pk=job_id)
        if job.state == State.SUBMITTING and not job.scheduler_id:
            job.transition("submit_failed", reason=f"No command node of {job.cluster} answered: {error}"[:500],
                           ended_at=timezone.now())
            _settle_quota(job, actual=0)


def _settle_quota(job, *, actual):
    if job.reserved_core_hours or actual:
        project_services.quota_settle(project=job.project, user=job.owner, resource=Resource.CORE_HOURS,
                                      reserved=job.reserved_core_hours, actual=actual)
    job.reserved_core_hours = 0
    job.save(update_fields=["reserved_core_hours"])


# --- Following jobs on the cluster ---------------------------------------------------


def _aggregate(entries):
    """One job's state from its rows (several for an array): the most
    'alive' state wins; a finished array is failed if any task failed."""
    states = [e.state for e in entries]
    counts = {}
    for s in states:
        counts[s] = counts.get(s, 0) + 1
    for alive in ("RUNNING", "CONFIGURING", "COMPLETING", "PENDING", "REQUEUED", "SUSPENDED"):
        if alive in counts:
            return alive, counts
    if all(s == "COMPLETED" for s in states):
        return "COMPLETED", counts
    for bad in ("OUT_OF_MEMORY", "TIMEOUT", "NODE_FAIL", "FAILED", "CANCELLED"):
        if bad in counts:
            return bad, counts
    return states[0], counts


def _rows_for(job, rows):
    sid = job.scheduler_id
    return [r for r in rows.values() if r.job_id == sid or getattr(r, "array_job_id", "") == sid]


def jobs_sync(*, cluster):
    """Follow every active job of `cluster`: one squeue call for all of them,
    one sacct call for those that left the queue."""
    jobs = list(Job.objects.filter(cluster=cluster, state__in=ON_CLUSTER).exclude(scheduler_id=""))
    if not jobs:
        return {"checked": 0}
    client = cluster_services.slurm_client(cluster)
    queue = client.queue([j.scheduler_id for j in jobs])
    gone = []
    for job in jobs:
        rows = _rows_for(job, queue)
        state, counts = _aggregate(rows) if rows else (None, {})
        if rows and state not in FINAL_SLURM:
            reason = next((r.reason for r in rows if r.reason and r.reason not in ("None", "(null)")), "")
            start = min((r.start for r in rows if r.start), default=None)
            _apply(job, state, counts=counts if job.array else {}, reason=reason, started_at=start)
        else:
            gone.append(job)  # left the queue, or finished: sacct has the exit code and times
    if gone:
        acct = client.accounting([j.scheduler_id for j in gone])
        for job in gone:
            rows = _rows_for(job, acct)
            if rows:
                _apply_accounting(job, rows)
            elif job.state_changed and timezone.now() - job.state_changed > LOST_AFTER:
                _finish(job, "mark_lost", reason="Slurm no longer knows this job.")
    return {"checked": len(jobs), "left_queue": len(gone)}


def _apply(job, slurm_state, *, counts, reason="", started_at=None):
    transition = SLURM_TRANSITIONS.get(slurm_state)
    fields = {"scheduler_state": slurm_state, "array_tasks": counts, "reason": reason[:500]}
    if started_at and not job.started_at:
        fields["started_at"] = started_at
    if transition is None or transition.startswith("finish_") or not job.can(transition):
        # Final states are recorded from sacct (exit code, times, CPU time).
        _save_fields(job, fields)
        return
    if job.state == Job.machine.transitions[transition][1]:
        _save_fields(job, fields)
    else:
        with transaction.atomic():
            locked = Job.objects.select_for_update().get(pk=job.pk)
            if locked.can(transition):
                locked.transition(transition, **fields)


def _save_fields(job, fields):
    changed = {k: v for k, v in fields.items() if getattr(job, k) != v}
    if changed:
        Job.objects.filter(pk=job.pk).update(**changed)


def _apply_accounting(job, rows):
    state, counts = _aggregate(rows)
    if job.array and len(rows) < job.task_count:
        # sacct lists an array's task rows one by one: wait for all of them.
        _save_fields(job, {"array_tasks": counts})
        return
    if state not in FINAL_SLURM:
        _apply(job, state, counts=counts if job.array else {})
        return
    exit_codes = [r.exit_code for r in rows if r.exit_code is not None]
    cpu_seconds = sum(r.cpu_time_raw for r in rows)
    starts = [r.start for r in rows if r.start]
    ends = [r.end for r in rows if r.end]
    reason = {
        "FAILED": "The job exited with an error.", "TIMEOUT": "The job reached its time limit.",
        "OUT_OF_MEMORY": "The job ran out of memory.", "NODE_FAIL": "A node of the job failed.",
        "CANCELLED": "The job was cancelled.",
    }.get(state, "")
    _finish(job, SLURM_TRANSITIONS[state], scheduler_state=state, array_tasks=counts if job.array else {},
            exit_code=max(exit_codes) if exit_codes else None, reason=reason,
            started_at=min(starts) if starts else job.started_at, ended_at=max(ends) if ends else timezone.now(),
            used_core_hours=round(cpu_seconds / 3600, 4))


def _finish(job, transition, **fields):
    with transaction.atomic():
        locked = Job.objects.select_for_update().select_related("project", "owner").get(pk=job.pk)
        if not locked.can(transition):
            return
        fields.setdefault("ended_at", timezone.now())
        locked.transition(transition, **fields)
        _settle_quota(locked, actual=math.ceil(locked.used_core_hours or 0))


# --- Cancel and output --------------------------------------------------------------


def job_cancel(*, job, actor):
    """Cancel a job: at once if it never reached the cluster, else scancel
    (as its owner in sudo mode) and record it."""
    with transaction.atomic():
        locked = Job.objects.select_for_update().get(pk=job.pk)
        if locked.state in (State.DRAFT, State.QUEUED):
            locked.transition("finish_cancelled", reason=f"Cancelled by {actor} before submission.",
                              ended_at=timezone.now())
            _settle_quota(locked, actual=0)
            return locked
        if locked.state == State.SUBMITTING:
            raise ValidationError("The job is being submitted right now; try again in a moment.")
        if locked.state not in ACTIVE:
            raise ValidationError(f"The job is already {locked.get_state_display().lower()}.")
    client = cluster_services.slurm_client(job.cluster)
    as_user = job.posix_user if job.cluster.sudo_mode == SlurmCluster.SudoMode.SUDO else None
    client.cancel(job.scheduler_id, as_user=as_user)
    # Charge the time it ran; sacct's exact figure comes with accounting.
    used = 0.0
    if job.started_at:
        used = (timezone.now() - job.started_at).total_seconds() * job.cpus * job.nodes / 3600
    _finish(job, "finish_cancelled", scheduler_state="CANCELLED", reason=f"Cancelled by {actor}.",
            used_core_hours=round(used, 4))
    job.refresh_from_db()
    return job


def job_output(*, job, stream, max_bytes=64 * 1024, task=None):
    """The last `max_bytes` of the job's stdout or stderr (SFTP); for an
    array, of one task's (default: the first)."""
    if stream not in ("stdout", "stderr"):
        raise ValidationError({"stream": "Choose stdout or stderr."})
    if not job.scheduler_id:
        return b""
    path = job.output_path if stream == "stdout" else job.error_path
    if "%a" in path:
        first = int(re.match(r"\d+", job.array).group()) if job.array else 0
        path = path.replace("%a", str(first if task is None else int(task)))
    client = cluster_services.slurm_client(job.cluster)
    try:
        return client.tail(path, max_bytes)
    except RemoteFileMissing:
        return b""


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
