"""Servers, volumes and SSH keys API (/api/v1/servers/, /api/v1/volumes/,
/api/v1/ssh-keys/). See docs/vms.md, section "API".

Order in every action: tenant lookup (404: the object is not visible to
the caller, so a member never reaches another member's server), permission
(403), then the service (clusters.vms), whose refusals the exception
handler maps: ValidationError naming the field -> 400, QuotaExceeded ->
409 {"quota": ...}, RequestRefused (state) -> 409 {"detail": ...}.

Everything the cloud does happens in Celery tasks after the request's
transaction commits, so creations answer 201 and actions 202 with the
record as recorded; poll the detail until `busy` is false."""
from django.db.models import Prefetch
from django_filters import rest_framework as filters
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.response import Response

from . import vms
from .vm_models import FloatingIP, FloatingIPState, Server, ServerState, SSHKey, Volume, VolumeState
from .vm_serializers import (
    AttachSerializer,
    RebootSerializer,
    ResizeSerializer,
    ServerCreateSerializer,
    ServerDetailSerializer,
    ServerSerializer,
    SSHKeySerializer,
    VolumeCreateSerializer,
    VolumeSerializer,
)

ERRORS = {
    400: OpenApiResponse(description="Bad input: a JSON object naming the field."),
    404: OpenApiResponse(description="No such object visible to you."),
    409: OpenApiResponse(description='Over quota ({"quota": {...}}) or not allowed in the current state '
                                     '({"detail": ...}).'),
}
FORCE = OpenApiParameter("force", bool, default=False,
                         description="Staff only: delete even when protected (servers) or attached (volumes).")
DELETED_NOTE = " Deleted ones are listed only when `state` asks for them."


def _flag(request, name):
    value = request.query_params.get(name, "false").strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise ValidationError({name: ["true or false."]})


def _force(request):
    force = _flag(request, "force")
    if force and not request.user.is_staff:
        raise PermissionDenied("Only staff can force a deletion.")
    return force


# --------------------------------------------------------------------------- servers


class ServerFilter(filters.FilterSet):
    project = filters.CharFilter(field_name="project__slug", help_text="Project slug.")
    cloud = filters.CharFilter(field_name="cloud__name", help_text="Cloud name.")
    owner = filters.CharFilter(field_name="owner__username", help_text="Owner's user name.")
    state = filters.MultipleChoiceFilter(choices=ServerState.choices)

    class Meta:
        model = Server
        fields = ["project", "cloud", "owner", "state"]


@extend_schema_view(
    list=extend_schema(summary="Servers visible to you (yours; managers: the project's; staff: all)."
                               + DELETED_NOTE),
    retrieve=extend_schema(summary="One server, with its volumes and recent events", responses={
        200: ServerDetailSerializer, 404: ERRORS[404]}),
)
class ServerViewSet(mixins.CreateModelMixin, mixins.DestroyModelMixin, viewsets.ReadOnlyModelViewSet):
    filterset_class = ServerFilter
    search_fields = ["name", "openstack_id", "image_name"]
    ordering_fields = ["created", "name", "state", "launched_at"]
    ordering = ["-created"]

    def get_queryset(self):
        qs = vms.servers_visible_to(self.request.user).select_related("resize_to", "ssh_key").prefetch_related(
            Prefetch("volumes", queryset=Volume.objects.exclude(state=VolumeState.DELETED).order_by("pk"),
                     to_attr="live_volumes"),
            Prefetch("floating_ip_set", queryset=FloatingIP.objects.exclude(state=FloatingIPState.RELEASED)
                     .order_by("pk"), to_attr="live_fips"),
        )
        if self.action == "list" and "state" not in self.request.query_params:
            qs = qs.exclude(state=ServerState.DELETED)
        return qs

    def get_serializer_class(self):
        return ServerSerializer if self.action == "list" else ServerDetailSerializer

    def _answer(self, server, code=status.HTTP_202_ACCEPTED):
        """The server as recorded now (the service may have moved it on)."""
        server = self.get_queryset().get(pk=server.pk)
        return Response(ServerDetailSerializer(server).data, status=code)

    @extend_schema(summary="Launch a server", request=ServerCreateSerializer,
                   responses={201: ServerDetailSerializer, 400: ERRORS[400], 409: ERRORS[409]})
    def create(self, request, *args, **kwargs):
        incoming = ServerCreateSerializer(data=request.data, context={"request": request})
        incoming.is_valid(raise_exception=True)
        data = dict(incoming.validated_data)
        server = vms.server_request(
            owner=request.user, project=data["project"], cloud=data["cloud"], profile=data["profile"],
            image=data["image"], name=data["name"], ssh_key=data["ssh_key"], user_data=data.get("user_data", ""),
            floating_ip=data["floating_ip"], volume_gb=data.get("volume_gb"), volume_name=data.get("volume_name", ""),
        )
        return self._answer(server, status.HTTP_201_CREATED)

    @extend_schema(summary="Delete a server (refused while protected)", parameters=[FORCE],
                   responses={202: ServerDetailSerializer, 403: OpenApiResponse(description="force without staff"),
                              404: ERRORS[404], 409: ERRORS[409]})
    def destroy(self, request, *args, **kwargs):
        server = self.get_object()
        force = _force(request)
        server = vms.server_delete_request(server=server, actor=request.user, force=force)
        return self._answer(server)

    def _power(self, action_name, hard=False):
        server = vms.server_action_request(server=self.get_object(), action=action_name, actor=self.request.user,
                                           hard=hard)
        return self._answer(server)

    @extend_schema(summary="Start a shut-off server", request=None,
                   responses={202: ServerDetailSerializer, 404: ERRORS[404], 409: ERRORS[409]})
    @action(detail=True, methods=["post"])
    def start(self, request, pk=None):
        return self._power("start")

    @extend_schema(summary="Stop (shut off) an active server", request=None,
                   responses={202: ServerDetailSerializer, 404: ERRORS[404], 409: ERRORS[409]})
    @action(detail=True, methods=["post"])
    def stop(self, request, pk=None):
        return self._power("stop")

    @extend_schema(summary="Reboot an active server", request=RebootSerializer,
                   responses={202: ServerDetailSerializer, 400: ERRORS[400], 404: ERRORS[404], 409: ERRORS[409]})
    @action(detail=True, methods=["post"])
    def reboot(self, request, pk=None):
        server = self.get_object()
        incoming = RebootSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        server = vms.server_action_request(server=server, action="reboot", actor=request.user,
                                           hard=incoming.validated_data["hard"])
        return self._answer(server)

    @extend_schema(summary="Resize to another profile (reserves the difference of quota)", request=ResizeSerializer,
                   responses={202: ServerDetailSerializer, 400: ERRORS[400], 404: ERRORS[404], 409: ERRORS[409]})
    @action(detail=True, methods=["post"])
    def resize(self, request, pk=None):
        server = self.get_object()
        incoming = ResizeSerializer(data=request.data)
        incoming.is_valid(raise_exception=True)
        server = vms.server_resize_request(server=server, profile=incoming.validated_data["profile"],
                                           actor=request.user)
        return self._answer(server)

    @extend_schema(summary="Protect the server from deletion", request=None,
                   responses={200: ServerDetailSerializer, 404: ERRORS[404], 409: ERRORS[409]})
    @action(detail=True, methods=["post"])
    def protect(self, request, pk=None):
        return self._protect(True)

    @extend_schema(summary="Remove the protection from deletion", request=None,
                   responses={200: ServerDetailSerializer, 404: ERRORS[404], 409: ERRORS[409]})
    @action(detail=True, methods=["post"])
    def unprotect(self, request, pk=None):
        return self._protect(False)

    def _protect(self, protected):
        server = self.get_object()
        if server.state == ServerState.DELETED:
            raise vms.RequestRefused(f"Server {server.name} is deleted.")
        server = vms.server_protect(server=server, protected=protected, actor=self.request.user)
        return self._answer(server, status.HTTP_200_OK)

    @extend_schema(summary="Allocate a floating IP and bind it to the server", request=None,
                   responses={202: ServerDetailSerializer, 404: ERRORS[404], 409: ERRORS[409]})
    @action(detail=True, methods=["post"], url_path="floating-ip", url_name="floating-ip")
    def floating_ip(self, request, pk=None):
        server = self.get_object()
        vms.floating_ip_request(server=server, actor=request.user)
        return self._answer(server)

    @extend_schema(summary="Unbind and release the server's floating IP", request=None,
                   responses={202: ServerDetailSerializer, 404: ERRORS[404], 409: ERRORS[409]})
    @action(detail=True, methods=["post"], url_path="release-floating-ip", url_name="release-floating-ip")
    def release_floating_ip(self, request, pk=None):
        server = self.get_object()
        vms.floating_ip_release_request(server=server, actor=request.user)
        return self._answer(server)


# --------------------------------------------------------------------------- volumes


class VolumeFilter(filters.FilterSet):
    project = filters.CharFilter(field_name="project__slug", help_text="Project slug.")
    cloud = filters.CharFilter(field_name="cloud__name", help_text="Cloud name.")
    owner = filters.CharFilter(field_name="owner__username", help_text="Owner's user name.")
    server = filters.NumberFilter(field_name="server_id", help_text="Id of the server it is attached to.")
    state = filters.MultipleChoiceFilter(choices=VolumeState.choices)

    class Meta:
        model = Volume
        fields = ["project", "cloud", "owner", "server", "state"]


@extend_schema_view(
    list=extend_schema(summary="Volumes visible to you (yours; managers: the project's; staff: all)."
                               + DELETED_NOTE),
    retrieve=extend_schema(summary="One volume", responses={200: VolumeSerializer, 404: ERRORS[404]}),
)
class VolumeViewSet(mixins.CreateModelMixin, mixins.DestroyModelMixin, viewsets.ReadOnlyModelViewSet):
    serializer_class = VolumeSerializer
    filterset_class = VolumeFilter
    search_fields = ["name", "openstack_id"]
    ordering_fields = ["created", "name", "state", "size_gb"]
    ordering = ["-created"]

    def get_queryset(self):
        qs = vms.volumes_visible_to(self.request.user)
        if self.action == "list" and "state" not in self.request.query_params:
            qs = qs.exclude(state=VolumeState.DELETED)
        return qs

    def _answer(self, volume, code=status.HTTP_202_ACCEPTED):
        volume = self.get_queryset().get(pk=volume.pk)
        return Response(VolumeSerializer(volume).data, status=code)

    @extend_schema(summary="Create a volume", request=VolumeCreateSerializer,
                   responses={201: VolumeSerializer, 400: ERRORS[400], 409: ERRORS[409]})
    def create(self, request, *args, **kwargs):
        incoming = VolumeCreateSerializer(data=request.data, context={"request": request})
        incoming.is_valid(raise_exception=True)
        volume = vms.volume_request(owner=request.user, **incoming.validated_data)
        return self._answer(volume, status.HTTP_201_CREATED)

    @extend_schema(summary="Delete a volume (refused while attached)", parameters=[FORCE],
                   responses={202: VolumeSerializer, 403: OpenApiResponse(description="force without staff"),
                              404: ERRORS[404], 409: ERRORS[409]})
    def destroy(self, request, *args, **kwargs):
        volume = self.get_object()
        force = _force(request)
        volume = vms.volume_delete_request(volume=volume, actor=request.user, force=force)
        return self._answer(volume)

    @extend_schema(summary="Attach the volume to a server of the same project and cloud", request=AttachSerializer,
                   responses={202: VolumeSerializer, 400: ERRORS[400], 404: ERRORS[404], 409: ERRORS[409]})
    @action(detail=True, methods=["post"])
    def attach(self, request, pk=None):
        volume = self.get_object()
        incoming = AttachSerializer(data=request.data, context={"request": request})
        incoming.is_valid(raise_exception=True)
        volume = vms.volume_attach_request(volume=volume, server=incoming.validated_data["server"],
                                           actor=request.user)
        return self._answer(volume)

    @extend_schema(summary="Detach the volume from its server", request=None,
                   responses={202: VolumeSerializer, 404: ERRORS[404], 409: ERRORS[409]})
    @action(detail=True, methods=["post"])
    def detach(self, request, pk=None):
        volume = vms.volume_detach_request(volume=self.get_object(), actor=request.user)
        return self._answer(volume)


# --------------------------------------------------------------------------- SSH keys


@extend_schema_view(
    list=extend_schema(summary="Your SSH keys"),
    retrieve=extend_schema(summary="One of your SSH keys"),
    create=extend_schema(summary="Add an SSH public key", responses={201: SSHKeySerializer, 400: ERRORS[400]}),
    destroy=extend_schema(summary="Remove one of your SSH keys (servers booted with it keep it)"),
)
class SSHKeyViewSet(mixins.CreateModelMixin, mixins.DestroyModelMixin, viewsets.ReadOnlyModelViewSet):
    """The caller's own SSH public keys (never anyone else's, not even for staff)."""

    serializer_class = SSHKeySerializer
    filterset_fields = ["name"]
    search_fields = ["name", "fingerprint"]
    ordering_fields = ["name", "created"]
    ordering = ["name"]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):  # schema generation, no user
            return SSHKey.objects.none()
        return vms.ssh_keys_of(self.request.user)

    def perform_destroy(self, instance):
        vms.ssh_key_delete(key=instance)  # and its keypairs on the clouds
