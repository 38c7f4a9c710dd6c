"""Jobs API. Order in every action: tenant lookup (404), permission (403),
state (409), input (400), act."""
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import HttpResponse
from django_filters import rest_framework as filters
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied
from rest_framework.response import Response

from clusters.backends.base import BackendError
from portal.celery import app as celery_app

from . import selectors, services
from .models import Job, JobTemplate, State
from .serializers import JobCreateSerializer, JobSerializer, JobTemplateSerializer


class JobFilter(filters.FilterSet):
    project = filters.CharFilter(field_name="project__slug")
    cluster = filters.CharFilter(field_name="cluster__name")
    state = filters.MultipleChoiceFilter(choices=State.choices)

    class Meta:
        model = Job
        fields = ["project", "cluster", "state"]


STATE_FIELDS = ["state", "scheduler_id", "scheduler_state", "reason", "submitted_at", "started_at", "state_changed"]


def _reread_state(job):
    """In eager mode (development, tests) the submission ran inside this
    request, after the commit: read the state fields it left, keeping the
    related objects we hold. With workers the answer is the job as created
    (`queued`); clients follow it with GET."""
    if celery_app.conf.task_always_eager:
        job.refresh_from_db(fields=STATE_FIELDS)


def _conflict(message):
    return Response({"detail": message}, status=status.HTTP_409_CONFLICT)


def _unavailable(exc):
    return Response({"detail": f"The cluster did not answer: {exc}"}, status=status.HTTP_503_SERVICE_UNAVAILABLE)


class JobViewSet(mixins.CreateModelMixin, viewsets.ReadOnlyModelViewSet):
    serializer_class = JobSerializer
    filterset_class = JobFilter
    search_fields = ["name", "scheduler_id"]
    ordering_fields = ["created", "name", "state", "submitted_at", "ended_at"]
    ordering = ["-created"]

    def get_queryset(self):
        return selectors.jobs_visible_to(self.request.user)

    @extend_schema(request=JobCreateSerializer, responses={201: JobSerializer})
    def create(self, request, *args, **kwargs):
        incoming = JobCreateSerializer(data=request.data, context={"request": request})
        incoming.is_valid(raise_exception=True)
        data = dict(incoming.validated_data)
        job = services.job_create(
            owner=request.user, project=data.pop("project"), cluster=data.pop("cluster"), **data
        )
        _reread_state(job)
        return Response(JobSerializer(job).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=None, responses={200: JobSerializer})
    @action(detail=True, methods=["post"])
    def cancel(self, request, pk=None):
        job = self.get_object()
        if not selectors.can_cancel(request.user, job):
            raise PermissionDenied("Only the job's owner or a project manager can cancel it.")
        try:
            job = services.job_cancel(job=job, actor=request.user)
        except DjangoValidationError as exc:
            return _conflict(" ".join(exc.messages))
        except BackendError as exc:
            return _unavailable(exc)
        return Response(JobSerializer(job).data)

    @extend_schema(request=None, responses={201: JobSerializer})
    @action(detail=True, methods=["post"])
    def clone(self, request, pk=None):
        job = services.job_clone(job=self.get_object(), owner=request.user)
        _reread_state(job)
        return Response(JobSerializer(job).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        parameters=[OpenApiParameter("stream", enum=["stdout", "stderr"], default="stdout"),
                    OpenApiParameter("max_bytes", int, default=65536),
                    OpenApiParameter("task", int, description="Array task id (default: the first task)")],
        responses={(200, "text/plain"): str},
    )
    @action(detail=True, methods=["get"])
    def output(self, request, pk=None):
        job = self.get_object()
        try:
            max_bytes = min(max(int(request.query_params.get("max_bytes", 65536)), 1), 10 * 1024 * 1024)
        except ValueError:
            return Response({"max_bytes": ["A whole number."]}, status=status.HTTP_400_BAD_REQUEST)
        stream = request.query_params.get("stream", "stdout")
        if stream not in ("stdout", "stderr"):
            return Response({"stream": ["Choose stdout or stderr."]}, status=status.HTTP_400_BAD_REQUEST)
        task = request.query_params.get("task")
        if task is not None and not task.isdigit():
            return Response({"task": ["An array task id (a whole number)."]}, status=status.HTTP_400_BAD_REQUEST)
        try:
            data = services.job_output(job=job, stream=stream, max_bytes=max_bytes, task=task)
        except BackendError as exc:
            return _unavailable(exc)
        except DjangoValidationError as exc:  # e.g. the cluster has no enabled command node
            return _unavailable(" ".join(exc.messages))
        return HttpResponse(data, content_type="text/plain; charset=utf-8")


class JobTemplateViewSet(viewsets.ReadOnlyModelViewSet):
    serializer_class = JobTemplateSerializer
    search_fields = ["name", "description"]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation, no user
            return JobTemplate.objects.none()
        return services.templates_visible_to(self.request.user)
