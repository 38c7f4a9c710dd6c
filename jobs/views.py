"""Job pages: list, composer, detail with live status and output."""
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.utils.cache import patch_vary_headers
from django.views.decorators.http import require_POST

from clusters.backends.base import BackendError
from clusters.models import SlurmCluster
from portal.listing import paginate, querystring_without, sort_queryset
from projects import selectors as project_selectors
from projects.models import Resource
from projects.services import QuotaExceeded

from . import selectors, services
from .forms import JobComposeForm
from .models import Job, State

JOB_SORTS = {"id": "pk", "name": "name", "state": "state", "project": "project__slug", "cluster": "cluster__name",
             "created": "created", "ended": "ended_at"}


@login_required
def job_list(request):
    query = request.GET.get("q", "").strip()
    state = request.GET.get("state", "")
    if state not in State.values:
        state = ""
    qs = selectors.job_search(request.user, query=query, project=request.GET.get("project", ""), state=state,
                              cluster=request.GET.get("cluster", ""))
    qs, sort = sort_queryset(request, qs, JOB_SORTS, "-created")
    page = paginate(request, qs)
    context = {
        "page": page, "query": query, "state": state, "sort": sort,
        "project": request.GET.get("project", ""), "cluster": request.GET.get("cluster", ""),
        "states": State.choices,
        "projects": project_selectors.projects_visible_to(request.user).order_by("slug"),
        "clusters": SlurmCluster.objects.filter(enabled=True),
        "sort_qs": querystring_without(request, "sort", "page"),
        "page_qs": querystring_without(request, "page"),
        "any_active": any(job.is_active for job in page),
    }
    partial = request.htmx and not request.htmx.history_restore_request
    response = render(request, "jobs/_job_table.html" if partial else "jobs/job_list.html", context)
    patch_vary_headers(response, ["HX-Request", "HX-History-Restore-Request"])
    return response


def _template_from(request):
    pk = request.POST.get("template") or request.GET.get("template")
    if pk and str(pk).isdigit():
        return services.templates_visible_to(request.user).filter(pk=pk).first()
    return None


@login_required
def job_compose(request):
    template = _template_from(request)
    initial = {}
    if template is not None:
        initial = {"template": template, "name": template.name, "partition": template.partition,
                   "cpus": template.cpus, "memory_mb": template.memory_mb, "nodes": template.nodes,
                   "time_limit_minutes": template.time_limit_minutes, "gpus": template.gpus}
    if request.GET.get("project"):
        initial["project"] = request.GET["project"]
    bound = request.method == "POST" and "submit" in request.POST
    form = JobComposeForm(request.POST if bound else None, user=request.user, template=template, initial=initial)
    if bound and form.is_valid():
        try:
            job = services.job_create(owner=request.user, **form.service_kwargs())
        except QuotaExceeded as exc:
            form.add_error(None, str(exc))
        except ValidationError as exc:
            _attach_errors(form, exc)
        else:
            messages.success(request, f"Job “{job.name}” queued for submission to {job.cluster}.")
            return redirect(job)
    return render(request, "jobs/job_compose.html", {"form": form, "template": template})


def _attach_errors(form, exc):
    if hasattr(exc, "error_dict"):
        for field, errors in exc.message_dict.items():
            name = field if field in form.fields else (f"param_{field.split('.', 1)[1]}"
                                                       if field.startswith("parameters.") else None)
            for error in errors:
                form.add_error(name if name in form.fields else None, error)
    else:
        form.add_error(None, " ".join(exc.messages))


@login_required
@require_POST
def job_estimate(request):
    """htmx: the composer's live estimate of core-hours against the quota."""
    form = JobComposeForm(request.POST, user=request.user, template=_template_from(request))
    form.is_valid()
    data = form.cleaned_data
    try:
        nodes, cpus = data["nodes"], data["cpus"]
        minutes = data.get("time_limit_minutes") or (
            services.default_time_limit(data["cluster"], data.get("partition", "")) if data.get("cluster") else None)
        if not minutes:
            raise KeyError("time_limit_minutes")
    except KeyError:
        return HttpResponse('<span class="text-body-secondary">Fill in nodes, CPUs and time limit to see the cost.</span>')
    # The same estimate the job itself will reserve (Job.estimated_core_hours).
    draft = Job(nodes=nodes, cpus=cpus, time_limit_minutes=minutes, array=data.get("array") or "")
    estimate, tasks = draft.estimated_core_hours, max(draft.task_count, 1)
    quota = None
    if data.get("project"):
        quota = data["project"].quotas.filter(resource=Resource.CORE_HOURS).first()
    return render(request, "jobs/_estimate.html", {"estimate": estimate, "quota": quota, "tasks": tasks})


@login_required
def job_detail(request, pk):
    job = selectors.job_for(request.user, pk)
    return render(request, "jobs/job_detail.html", {"job": job, "can_cancel": selectors.can_cancel(request.user, job)})


@login_required
def job_status(request, pk):
    """htmx fragment polled while the job is active; stops when it is final."""
    job = selectors.job_for(request.user, pk)
    return render(request, "jobs/_job_status.html", {"job": job, "can_cancel": selectors.can_cancel(request.user, job)})


@login_required
def job_output(request, pk):
    job = selectors.job_for(request.user, pk)
    stream = request.GET.get("stream", "stdout")
    if stream not in ("stdout", "stderr"):
        stream = "stdout"
    task = request.GET.get("task")
    task = task if task and task.isdigit() else None
    error, text = "", ""
    try:
        text = services.job_output(job=job, stream=stream, task=task).decode("utf-8", errors="replace")
    except BackendError as exc:
        error = str(exc)
    except ValidationError as exc:  # e.g. the cluster has no enabled command node
        error = " ".join(exc.messages)
    if request.GET.get("download"):
        if error:  # not an empty file that looks like empty output
            return HttpResponse(error, status=503, content_type="text/plain; charset=utf-8")
        response = HttpResponse(text, content_type="text/plain; charset=utf-8")
        suffix = f".task{task}" if task else ""
        response["Content-Disposition"] = f'attachment; filename="{job.slurm_name}{suffix}.{stream}.txt"'
        return response
    return render(request, "jobs/_job_output.html",
                  {"job": job, "stream": stream, "text": text, "error": error, "task": task or ""})


@login_required
@require_POST
def job_cancel(request, pk):
    job = selectors.job_for(request.user, pk)
    if not selectors.can_cancel(request.user, job):
        raise PermissionDenied("Only the job's owner or a project manager can cancel it.")
    try:
        services.job_cancel(job=job, actor=request.user)
    except ValidationError as exc:
        messages.warning(request, " ".join(exc.messages))
    except BackendError as exc:
        messages.error(request, f"The cluster did not answer; the job was not cancelled: {exc}")
    else:
        messages.success(request, f"Job “{job.name}” cancelled.")
    return redirect(job)


@login_required
@require_POST
def job_clone(request, pk):
    job = selectors.job_for(request.user, pk)
    try:
        clone = services.job_clone(job=job, owner=request.user)
    except QuotaExceeded as exc:
        messages.error(request, str(exc))
        return redirect(job)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return redirect(job)
    messages.success(request, f"Resubmitted as job #{clone.pk}.")
    return redirect(clone)


@login_required
@require_POST
def template_save(request, pk):
    """Save a job's script and resources as the user's own template."""
    job = selectors.job_for(request.user, pk)
    template = services.template_save_from_job(job=job, owner=request.user,
                                               name=request.POST.get("name", "").strip() or job.name)
    messages.success(request, f"Saved as your template “{template.name}”.")
    return redirect(job)
