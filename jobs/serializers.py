import copy

from rest_framework import serializers

from . import selectors, services
from .models import Job, JobTemplate


class FieldsBuiltOnce:
    """Fields built once per process and copied for each serializer. DRF
    builds every field afresh for each serializer (ModelSerializer from the
    model, Serializer by deep-copying the declared ones, which calls each
    field's __init__ again), a good part of the cost of a job POST. A shallow
    copy is enough: binding sets attributes of the copy only, and what the
    copies share (validator lists, error messages, a DictField's child
    field) is only read after the field's __init__."""

    _fields_built = None

    def get_fields(self):
        cls = type(self)
        if cls.__dict__.get("_fields_built") is None:
            cls._fields_built = super().get_fields()
        return {name: copy.copy(field) for name, field in cls._fields_built.items()}


class JobSerializer(FieldsBuiltOnce, serializers.ModelSerializer):
    project = serializers.CharField(source="project.slug", read_only=True)
    cluster = serializers.CharField(source="cluster.name", read_only=True)
    owner = serializers.CharField(source="owner.username", read_only=True)
    state_label = serializers.CharField(source="get_state_display", read_only=True)
    estimated_core_hours = serializers.IntegerField(read_only=True)
    task_count = serializers.IntegerField(read_only=True)

    class Meta:
        model = Job
        fields = [
            "id", "project", "cluster", "owner", "name", "state", "state_label", "scheduler_id", "scheduler_state",
            "reason", "exit_code", "partition", "nodes", "cpus", "memory_mb", "time_limit_minutes", "gpus", "array",
            "task_count", "array_tasks", "environment", "workdir", "output_path", "error_path", "template",
            "estimated_core_hours", "used_core_hours", "created", "submitted_at", "started_at", "ended_at",
        ]
        read_only_fields = fields


class JobCreateSerializer(FieldsBuiltOnce, serializers.Serializer):
    project = serializers.SlugField(help_text="Project slug.")
    cluster = serializers.CharField(help_text="Cluster name.")
    name = serializers.CharField(max_length=100)
    script = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False)
    partition = serializers.CharField(required=False, allow_blank=True, max_length=64)
    cpus = serializers.IntegerField(required=False, min_value=1, max_value=4096,
                                    help_text="Default: the template's, else 1.")
    memory_mb = serializers.IntegerField(required=False, min_value=1, allow_null=True)
    time_limit_minutes = serializers.IntegerField(required=False, min_value=1, max_value=525600, allow_null=True)
    nodes = serializers.IntegerField(required=False, min_value=1, max_value=1024,
                                     help_text="Default: the template's, else 1.")
    gpus = serializers.IntegerField(required=False, min_value=0, max_value=64, help_text="Default: the template's, else 0.")
    array = serializers.CharField(required=False, allow_blank=True, max_length=100)
    environment = serializers.DictField(child=serializers.CharField(allow_blank=True), required=False)
    template = serializers.IntegerField(required=False, allow_null=True)
    parameters = serializers.DictField(required=False)

    # The lookups fetch what composing the job needs next (role, POSIX
    # name, Slurm account) in the same query: see jobs.selectors.

    def validate_project(self, slug):
        project = selectors.project_for_submission(self.context["request"].user, slug)
        if project is None:
            raise serializers.ValidationError(f"No project {slug!r} of yours.")
        return project

    def validate_cluster(self, name):
        # The project as given (fields are validated one by one): only its
        # account mapping is looked up with it, under its slug.
        project_slug = self.initial_data.get("project")
        cluster = selectors.cluster_for_submission(self.context["request"].user, name, project_slug=(
            project_slug if isinstance(project_slug, str) else None))
        if cluster is None:
            raise serializers.ValidationError(f"No cluster {name!r}.")
        return cluster

    def validate_template(self, pk):
        if pk is None:
            return None
        template = services.templates_visible_to(self.context["request"].user).filter(pk=pk).first()
        if template is None:
            raise serializers.ValidationError("Unknown template.")
        return template

    def validate(self, data):
        if not data.get("template") and not (data.get("script") or "").strip():
            raise serializers.ValidationError({"script": "Give a script or a template."})
        return data


class JobTemplateSerializer(serializers.ModelSerializer):
    curated = serializers.BooleanField(source="is_curated", read_only=True)

    class Meta:
        model = JobTemplate
        fields = ["id", "name", "description", "curated", "script", "parameters", "partition", "cpus", "memory_mb",
                  "time_limit_minutes", "nodes", "gpus", "max_cpus", "max_time_limit_minutes"]
