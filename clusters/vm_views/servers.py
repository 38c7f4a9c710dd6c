"""Server pages: list, launch form, detail with live state, and the
POST-only actions (start/stop/reboot, resize, floating IP, attach a
volume, protect, delete)."""
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import ValidationError
from django.db.models import Q
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from projects.services import QuotaExceeded

from .. import vms
from ..vm_forms import AttachVolumeForm, ResizeForm, ServerForm, image_label, profile_label
from ..vm_models import FloatingIPState, ServerState, VolumeState
from .common import (
    record_list,
    attach_errors,
    can_act,
    check_can_act,
    form_error_message,
    quota_context,
    run_request,
    server_for,
    volume_for,
)

S, F, V = ServerState, FloatingIPState, VolumeState

SERVER_SORTS = {"name": "name", "project": "project__slug", "cloud": "cloud__name", "profile": "profile__name",
                "state": "state", "created": "created"}
EVENTS_SHOWN = 50


# --------------------------------------------------------------------------- list


@login_required
def server_list(request):
    return record_list(request, vms.servers_visible_to(request.user), states=S, sorts=SERVER_SORTS,
                       search=lambda q: Q(name__icontains=q) | Q(addresses__icontains=q),
                       templates=("clusters/vms/server_list.html", "clusters/vms/_server_table.html"))


@login_required
def server_row(request, pk):
    """htmx: one row of the list, polled while the server is busy."""
    return render(request, "clusters/vms/_server_row.html", {"server": server_for(request.user, pk)})


# --------------------------------------------------------------------------- launch


def _launch_initial(request):
    return {name: request.GET[name] for name in ("project", "cloud", "profile", "image") if request.GET.get(name)}


@login_required
def server_new(request):
    bound = request.method == "POST"
    form = ServerForm(request.POST if bound else None, user=request.user, initial=_launch_initial(request))
    if bound and form.is_valid():
        try:
            server = vms.server_request(owner=request.user, **form.service_kwargs())
        except QuotaExceeded as exc:
            form.add_error(None, str(exc))
        except ValidationError as exc:
            attach_errors(form, exc, aliases=ServerForm.FIELD_ALIASES)
        else:
            messages.success(request, f"Server {server.name} requested on {server.cloud.name}; it is being built.")
            return redirect(server)
    context = {"form": form, **quota_context(form.selected_project, request.user, "server")}
    return render(request, "clusters/vms/server_form.html", context)


@login_required
def server_choices(request):
    """htmx: the profile and image choices for the project and cloud chosen."""
    form = ServerForm(user=request.user, initial=_launch_initial(request))
    return render(request, "clusters/vms/_server_choices.html", {"form": form})


# --------------------------------------------------------------------------- detail


def allowed_actions(server, live_floating_ips):
    """What the page offers in the server's current state (the service
    checks again and has the last word)."""
    settled = bool(server.openstack_id) and not server.task_state and not server.resize_to_id \
        and server.state not in (S.DELETING, S.DELETED)
    up = settled and server.state in (S.ACTIVE, S.SHUTOFF)
    return {
        "start": settled and server.state == S.SHUTOFF,
        "stop": settled and server.state == S.ACTIVE,
        "reboot": settled and server.state == S.ACTIVE,
        "resize": up,
        "add_floating_ip": up and not live_floating_ips,
        "release_floating_ip": bool(live_floating_ips) and server.state != S.DELETED,
        "attach": up,
        "protect": server.state != S.DELETED,
        # not while the cloud is creating it (no id yet): a delete then would miss the server being made
        "delete": server.state not in (S.DELETING, S.DELETED) and not (
            server.state == S.BUILDING and not server.openstack_id),
    }


def _floating_ips(server):
    return list(server.floating_ip_set.exclude(state=F.RELEASED).order_by("created"))


def _status_context(server):
    """What the polled status fragment shows."""
    return {"server": server, "busy": server.is_busy, "floating_ips": _floating_ips(server)}


def _detail_context(request, server, status=None):
    context = status or _status_context(server)
    acting = can_act(request.user, server)
    live_ips = [fip for fip in context["floating_ips"] if fip.state != F.RELEASING]
    allowed = allowed_actions(server, live_ips) if acting else {}
    volumes = list(server.volumes.exclude(state=V.DELETED).select_related("project").order_by("name"))
    for volume in volumes:
        volume.can_detach = volume.state == V.IN_USE and can_act(request.user, volume)
    context.update({
        "profile_text": profile_label(server.profile),
        "image_text": image_label(server.image) if server.image else server.image_name or server.image_ref,
        "can_act": acting, "allowed": allowed, "volumes": volumes,
        "events": server.events.select_related("actor")[:EVENTS_SHOWN],
        "resize_form": ResizeForm(server=server) if allowed.get("resize") else None,
        "attach_form": AttachVolumeForm(user=request.user, server=server) if allowed.get("attach") else None,
    })
    return context


@login_required
def server_detail(request, pk):
    server = server_for(request.user, pk)
    return render(request, "clusters/vms/server_detail.html", _detail_context(request, server))


@login_required
def server_status(request, pk):
    """htmx: the state fragment, polled while the server is busy. Once it
    has settled, the actions, volumes and history come along out of band,
    so the page matches the new state; the fragment then stops polling."""
    server = server_for(request.user, pk)
    context = _status_context(server)
    if not context["busy"]:
        context = _detail_context(request, server, context)
    return render(request, "clusters/vms/_server_poll.html", context)


# --------------------------------------------------------------------------- actions


def _acting_server(request, pk):
    server = server_for(request.user, pk)
    check_can_act(request.user, server)
    return server


@login_required
@require_POST
def server_power(request, pk, action):
    server = _acting_server(request, pk)
    verb = vms.ACTIONS[action][2]
    run_request(request, lambda: vms.server_action_request(server=server, action=action, actor=request.user),
                f"{verb.capitalize()} of {server.name} requested.")
    return redirect(server)


@login_required
@require_POST
def server_resize(request, pk):
    server = _acting_server(request, pk)
    form = ResizeForm(request.POST, server=server)
    if form.is_valid():
        profile = form.cleaned_data["profile"]
        run_request(request, lambda: vms.server_resize_request(server=server, profile=profile, actor=request.user),
                    f"Resize of {server.name} to {profile.name} requested.")
    else:
        form_error_message(request, form)
    return redirect(server)


@login_required
@require_POST
def floating_ip_add(request, pk):
    server = _acting_server(request, pk)
    run_request(request, lambda: vms.floating_ip_request(server=server, actor=request.user),
                f"A floating IP for {server.name} requested.")
    return redirect(server)


@login_required
@require_POST
def floating_ip_release(request, pk):
    server = _acting_server(request, pk)
    run_request(request, lambda: vms.floating_ip_release_request(server=server, actor=request.user),
                f"The floating IP of {server.name} is being released.")
    return redirect(server)


@login_required
@require_POST
def server_attach(request, pk):
    server = _acting_server(request, pk)
    form = AttachVolumeForm(request.POST, user=request.user, server=server)
    if form.is_valid():
        volume = volume_for(request.user, form.cleaned_data["volume"].pk)
        check_can_act(request.user, volume)
        run_request(request, lambda: vms.volume_attach_request(volume=volume, server=server, actor=request.user),
                    f"Attaching volume {volume.name} to {server.name}.")
    else:
        form_error_message(request, form)
    return redirect(server)


@login_required
@require_POST
def server_protect(request, pk):
    server = _acting_server(request, pk)
    protected = request.POST.get("protected") == "1"
    run_request(request, lambda: vms.server_protect(server=server, protected=protected, actor=request.user),
                f"{server.name} is protected from deletion." if protected
                else f"{server.name} can be deleted again.")
    return redirect(server)


@login_required
def server_delete(request, pk):
    """A confirmation page (GET), then the delete request (POST)."""
    server = _acting_server(request, pk)
    if request.method == "POST":
        run_request(request, lambda: vms.server_delete_request(server=server, actor=request.user),
                    f"Server {server.name} is being deleted.")
        return redirect(server)
    volumes = server.volumes.exclude(state=V.DELETED).order_by("name")
    return render(request, "clusters/vms/server_confirm_delete.html",
                  {"server": server, "volumes": volumes, "floating_ips": _floating_ips(server)})
