"""Batch jobs on Slurm clusters and the templates they are composed from.

A Job's `state` moves only through the named transitions of `Job.machine`
(see portal.states); jobs.services decides when.
"""
import math
import uuid

from django.conf import settings
from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.urls import reverse

from portal.states import StatefulMixin, StateMachine


class State(models.TextChoices):
    DRAFT = "draft", "Draft"
    QUEUED = "queued", "Queued in the portal"
    SUBMITTING = "submitting", "Submitting"
    PENDING = "pending", "Pending"
    RUNNING = "running", "Running"
    COMPLETING = "completing", "Completing"
    COMPLETED = "completed", "Completed"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"
    TIMEOUT = "timeout", "Time limit reached"
    OUT_OF_MEMORY = "out_of_memory", "Out of memory"
    NODE_FAIL = "node_fail", "Node failure"
    LOST = "lost", "Lost"


ACTIVE = (State.SUBMITTING, State.PENDING, State.RUNNING, State.COMPLETING)
ON_CLUSTER = (State.PENDING, State.RUNNING, State.COMPLETING)
FINAL = (State.COMPLETED, State.FAILED, State.CANCELLED, State.TIMEOUT, State.OUT_OF_MEMORY,
         State.NODE_FAIL, State.LOST)

JOB_MACHINE = StateMachine(
    "state",
    {
        "enqueue": ((State.DRAFT,), State.QUEUED),
        "begin_submit": ((State.QUEUED, State.SUBMITTING), State.SUBMITTING),
        "submitted": ((State.SUBMITTING,), State.PENDING),
        "submit_failed": ((State.QUEUED, State.SUBMITTING), State.FAILED),
        "mark_pending": ((State.SUBMITTING, State.PENDING), State.PENDING),
        "mark_running": ((State.SUBMITTING, State.PENDING, State.RUNNING), State.RUNNING),
        "mark_completing": ((State.PENDING, State.RUNNING, State.COMPLETING), State.COMPLETING),
        "finish_completed": (ACTIVE, State.COMPLETED),
        "finish_failed": (ACTIVE, State.FAILED),
        "finish_cancelled": ((State.DRAFT, State.QUEUED, *ACTIVE), State.CANCELLED),
        "finish_timeout": (ACTIVE, State.TIMEOUT),
        "finish_out_of_memory": (ACTIVE, State.OUT_OF_MEMORY),
        "finish_node_fail": (ACTIVE, State.NODE_FAIL),
        "mark_lost": (ACTIVE, State.LOST),
    },
    final=FINAL,
)

array_spec = RegexValidator(
    r"^\d+(-\d+)?(:\d+)?(,\d+(-\d+)?(:\d+)?)*(%\d+)?$", "An array spec like 0-9, 1,3,5 or 0-99%%10 (at most 10 at a time)."
)


def array_task_count(spec):
    """Number of tasks in an sbatch --array spec (0 for no array)."""
    if not spec:
        return 0
    spec = spec.split("%")[0]
    count = 0
    for part in spec.split(","):
        rng, _, step = part.partition(":")
        lo, _, hi = rng.partition("-")
        lo, hi = int(lo), int(hi or lo)
        count += len(range(lo, hi + 1, int(step or 1))) if hi >= lo else 0
    return count


class JobTemplate(models.Model):
    """A script with named parameters `{{ name }}`. Staff-curated templates
    (no owner) are offered to everyone; a user's saved ones only to them."""

    name = models.CharField(max_length=120)
    description = models.TextField(blank=True)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="job_templates",
        help_text="Empty: a curated template offered to every user.",
    )
    cluster = models.ForeignKey("clusters.SlurmCluster", null=True, blank=True, on_delete=models.SET_NULL)
    script = models.TextField(help_text="Bash script; `{{ name }}` is replaced by the quoted parameter value.")
    parameters = models.JSONField(
        default=list, blank=True,
        help_text='[{"name": "epochs", "label": "Epochs", "type": "int", "default": 10, "min": 1, "max": 100}, '
                  '{"name": "input", "type": "str"}, {"name": "mode", "type": "choice", "choices": ["a", "b"]}]',
    )
    partition = models.CharField(max_length=64, blank=True)
    cpus = models.PositiveIntegerField(default=1)
    memory_mb = models.PositiveIntegerField(null=True, blank=True)
    time_limit_minutes = models.PositiveIntegerField(default=60)
    nodes = models.PositiveIntegerField(default=1)
    gpus = models.PositiveIntegerField(default=0)
    max_cpus = models.PositiveIntegerField(null=True, blank=True, help_text="Cap for jobs from this template.")
    max_time_limit_minutes = models.PositiveIntegerField(null=True, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["owner_id", "name"]

    def __str__(self):
        return self.name

    @property
    def is_curated(self):
        return self.owner_id is None


class Job(StatefulMixin, models.Model):
    machine = JOB_MACHINE

    uid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    project = models.ForeignKey("projects.Project", on_delete=models.PROTECT, related_name="jobs")
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="jobs")
    cluster = models.ForeignKey("clusters.SlurmCluster", on_delete=models.PROTECT, related_name="jobs")
    template = models.ForeignKey(JobTemplate, null=True, blank=True, on_delete=models.SET_NULL, related_name="jobs")
    template_parameters = models.JSONField(default=dict, blank=True)
    name = models.CharField(max_length=100)
    script = models.TextField()
    partition = models.CharField(max_length=64, blank=True)
    nodes = models.PositiveIntegerField(default=1, validators=[MinValueValidator(1), MaxValueValidator(1024)])
    cpus = models.PositiveIntegerField(default=1, validators=[MinValueValidator(1), MaxValueValidator(4096)])
    memory_mb = models.PositiveIntegerField(null=True, blank=True)
    time_limit_minutes = models.PositiveIntegerField(
        default=60, validators=[MinValueValidator(1), MaxValueValidator(60 * 24 * 365)]
    )
    gpus = models.PositiveIntegerField(default=0, validators=[MaxValueValidator(64)])
    array = models.CharField(max_length=100, blank=True, validators=[array_spec])
    environment = models.JSONField(default=dict, blank=True)
    posix_user = models.CharField(max_length=32, blank=True)
    account = models.CharField(max_length=64, blank=True)
    workdir = models.CharField(max_length=500, blank=True)
    output_path = models.CharField(max_length=500, blank=True)
    error_path = models.CharField(max_length=500, blank=True)

    state = models.CharField(max_length=16, choices=State.choices, default=State.DRAFT, db_index=True)
    state_changed = models.DateTimeField(null=True, blank=True)
    scheduler_id = models.CharField(max_length=32, blank=True, db_index=True)
    scheduler_state = models.CharField(max_length=32, blank=True)
    reason = models.CharField(max_length=500, blank=True, help_text="Why the job waits or failed, for the user.")
    exit_code = models.IntegerField(null=True, blank=True)
    array_tasks = models.JSONField(default=dict, blank=True, help_text="Task counts per Slurm state.")
    reserved_core_hours = models.PositiveIntegerField(default=0)
    used_core_hours = models.FloatField(null=True, blank=True)
    submit_attempts = models.PositiveSmallIntegerField(default=0)

    created = models.DateTimeField(auto_now_add=True, db_index=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    ended_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created"]
        indexes = [models.Index(fields=["cluster", "state"])]

    def __str__(self):
        return f"{self.name} (#{self.pk})"

    def get_absolute_url(self):
        return reverse("jobs:detail", args=[self.pk])

    @property
    def slurm_name(self):
        """The name given to Slurm: carries the portal id and a random part
        (ids repeat across databases sharing a cluster), so a retried
        submission can find the job it already made, and only that one."""
        return f"nephele-{self.pk}-{self.uid.hex[:12]}"

    @property
    def task_count(self):
        return array_task_count(self.array)

    @property
    def estimated_core_hours(self):
        tasks = max(self.task_count, 1)
        return math.ceil(self.nodes * self.cpus * self.time_limit_minutes * tasks / 60)

    @property
    def is_active(self):
        return self.state in ACTIVE or self.state == State.QUEUED

    @property
    def state_badge(self):
        return {
            State.COMPLETED: "success", State.RUNNING: "primary", State.PENDING: "info",
            State.COMPLETING: "primary", State.QUEUED: "secondary", State.SUBMITTING: "secondary",
            State.CANCELLED: "dark", State.DRAFT: "light",
        }.get(self.state, "danger")
