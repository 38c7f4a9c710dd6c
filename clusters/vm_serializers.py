"""Serializers of the servers, volumes and SSH keys API (clusters.vm_api).

Input serializers only resolve names to objects (an unknown or foreign
project, cloud, profile, image, key or server is a 400 naming the field);
the rules themselves (membership, offered profile, quota, state) are the
services' (clusters.vms), whose errors the exception handler maps."""
from django.core.exceptions import ValidationError as DjangoValidationError
from django.db import IntegrityError, transaction
from drf_spectacular.extensions import OpenApiSerializerFieldExtension
from drf_spectacular.plumbing import ResolvedComponent
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from projects import selectors as project_selectors

from . import vms
from .models import Cloud, VMProfile
from .vm_models import (
    FloatingIPState,
    Server,
    ServerEvent,
    ServerState,
    SSHKey,
    Volume,
    VolumeState,
    resource_name,
)

RECENT_EVENTS = 20
NAME_MAX = 63

# --------------------------------------------------------------------------- helpers over prefetched rows


def live_volumes(server):
    """The server's volumes that are not deleted (prefetched by the API as `live_volumes`)."""
    rows = getattr(server, "live_volumes", None)
    if rows is None:
        rows = list(server.volumes.exclude(state=VolumeState.DELETED).order_by("pk"))
    return rows


def live_floating_ips(server):
    rows = getattr(server, "live_fips", None)
    if rows is None:
        rows = list(server.floating_ip_set.exclude(state=FloatingIPState.RELEASED).order_by("pk"))
    return rows


def server_busy(server):
    """`Server.is_busy` computed from the prefetched rows (no query per server)."""
    return (server.state in (ServerState.BUILDING, ServerState.REBOOTING, ServerState.RESIZING,
                             ServerState.DELETING)
            or bool(server.task_state) or bool(server.resize_to_id)
            or any(f.state in (FloatingIPState.ALLOCATING, FloatingIPState.RELEASING)
                   for f in live_floating_ips(server))
            or any(v.state in (VolumeState.CREATING, VolumeState.ATTACHING, VolumeState.DETACHING)
                   for v in live_volumes(server)))


# --------------------------------------------------------------------------- output


class ServerStateField(serializers.CharField):
    """A server's state; in the schema the named enum `ServerStateEnum`."""

    choices = ServerState.choices
    component = "ServerStateEnum"


class VolumeStateField(serializers.CharField):
    """A volume's state; in the schema the named enum `VolumeStateEnum`."""

    choices = VolumeState.choices
    component = "VolumeStateEnum"


class _StateFieldSchema(OpenApiSerializerFieldExtension):
    """State fields refer to their own enum component: left to the automatic
    naming, every `state` field (jobs', servers', volumes') would fight over
    one `StateEnum` name and the schema would warn."""

    target_class = ServerStateField
    match_subclasses = True

    def map_serializer_field(self, auto_schema, direction):
        field = self.target
        component = ResolvedComponent(
            name=field.component, type=ResolvedComponent.SCHEMA, object=field.component,
            schema={"type": "string", "enum": [value for value, _ in field.choices],
                    "description": "\n".join(f"* `{value}` - {label}" for value, label in field.choices)},
        )
        auto_schema.registry.register_on_missing(component)
        return component.ref


class _VolumeStateFieldSchema(_StateFieldSchema):
    target_class = VolumeStateField


class ServerVolumeSerializer(serializers.ModelSerializer):
    state = VolumeStateField(read_only=True)

    class Meta:
        model = Volume
        fields = ["id", "name", "size_gb", "device", "state"]
        read_only_fields = fields


class ServerEventSerializer(serializers.ModelSerializer):
    actor = serializers.CharField(source="actor.username", read_only=True, allow_null=True, default=None)

    class Meta:
        model = ServerEvent
        fields = ["at", "kind", "message", "actor"]
        read_only_fields = fields


class ServerSerializer(serializers.ModelSerializer):
    state = ServerStateField(read_only=True)
    project = serializers.CharField(source="project.slug", read_only=True)
    cloud = serializers.CharField(source="cloud.name", read_only=True)
    owner = serializers.CharField(source="owner.username", read_only=True)
    profile = serializers.CharField(source="profile.name", read_only=True)
    resize_to = serializers.CharField(source="resize_to.name", read_only=True, allow_null=True, default=None,
                                      help_text="The profile a running resize moves to.")
    image = serializers.SerializerMethodField(help_text="The image's name (its glance id when it has none).")
    image_id = serializers.CharField(source="image_ref", read_only=True, help_text="Glance id booted from.")
    key_name = serializers.CharField(source="ssh_key.name", read_only=True, allow_null=True, default=None,
                                     help_text="The SSH key injected at boot (null: none, or deleted since).")
    state_label = serializers.CharField(source="get_state_display", read_only=True)
    busy = serializers.SerializerMethodField(help_text="The cloud is working on it: poll until false.")
    fixed_ips = serializers.SerializerMethodField()
    floating_ips = serializers.SerializerMethodField()
    volumes = serializers.SerializerMethodField(help_text="Attached (or attaching) volumes.")

    class Meta:
        model = Server
        fields = [
            "id", "name", "state", "state_label", "busy", "task_state", "cloud_status", "project", "cloud", "owner",
            "profile", "resize_to", "image", "image_id", "key_name", "addresses", "fixed_ips", "floating_ips",
            "fault", "protected", "volumes", "created", "state_changed", "launched_at", "deleted_at",
            "openstack_id",
        ]
        read_only_fields = fields

    @extend_schema_field(OpenApiTypes.STR)
    def get_image(self, server):
        return server.image_name or server.image_ref

    @extend_schema_field(OpenApiTypes.BOOL)
    def get_busy(self, server):
        return server_busy(server)

    @extend_schema_field(serializers.ListField(child=serializers.IPAddressField()))
    def get_fixed_ips(self, server):
        return server.fixed_ips()

    @extend_schema_field(serializers.ListField(child=serializers.IPAddressField()))
    def get_floating_ips(self, server):
        """What nova reports, plus the portal's bound floating IPs nova has not listed yet."""
        out = server.floating_ips()
        for fip in live_floating_ips(server):
            if fip.state == FloatingIPState.ALLOCATED and fip.address and fip.address not in out:
                out.append(fip.address)
        return out

    @extend_schema_field(ServerVolumeSerializer(many=True))
    def get_volumes(self, server):
        return ServerVolumeSerializer(live_volumes(server), many=True).data


class ServerDetailSerializer(ServerSerializer):
    events = serializers.SerializerMethodField(help_text=f"The {RECENT_EVENTS} most recent events, newest first.")

    class Meta(ServerSerializer.Meta):
        fields = ServerSerializer.Meta.fields + ["user_data", "events"]
        read_only_fields = fields

    @extend_schema_field(ServerEventSerializer(many=True))
    def get_events(self, server):
        rows = server.events.select_related("actor").order_by("-at", "-pk")[:RECENT_EVENTS]
        return ServerEventSerializer(rows, many=True).data


class VolumeSerializer(serializers.ModelSerializer):
    state = VolumeStateField(read_only=True)
    project = serializers.CharField(source="project.slug", read_only=True)
    cloud = serializers.CharField(source="cloud.name", read_only=True)
    owner = serializers.CharField(source="owner.username", read_only=True)
    server = serializers.IntegerField(source="server_id", read_only=True, allow_null=True,
                                      help_text="Id of the server it is attached (or being attached) to.")
    server_name = serializers.CharField(source="server.name", read_only=True, allow_null=True, default=None)
    state_label = serializers.CharField(source="get_state_display", read_only=True)
    busy = serializers.BooleanField(source="is_busy", read_only=True)

    class Meta:
        model = Volume
        fields = ["id", "name", "state", "state_label", "busy", "cloud_status", "project", "cloud", "owner",
                  "size_gb", "server", "server_name", "device", "fault", "created", "state_changed", "deleted_at",
                  "openstack_id"]
        read_only_fields = fields


# --------------------------------------------------------------------------- input


def _project_of(user, slug):
    project = project_selectors.projects_visible_to(user).filter(slug=slug).first()
    if project is None:
        raise serializers.ValidationError(f"No project {slug!r} of yours.")
    return project


def _cloud_named(name):
    cloud = Cloud.objects.filter(name=name).first()
    if cloud is None:
        raise serializers.ValidationError(f"No cloud {name!r}.")
    return cloud


class ServerCreateSerializer(serializers.Serializer):
    project = serializers.CharField(help_text="Project slug.")
    cloud = serializers.CharField(help_text="Cloud name.")
    profile = serializers.CharField(help_text="VM profile name, e.g. m1.small (one offered on the cloud).")
    image = serializers.CharField(help_text="Image name or glance id on that cloud.")
    name = serializers.CharField(max_length=NAME_MAX, help_text="Server name (letters, digits, '.', '_', '-').")
    key_name = serializers.CharField(required=False, allow_blank=True, help_text="Name of one of your SSH keys.")
    user_data = serializers.CharField(required=False, allow_blank=True, trim_whitespace=False,
                                      help_text="cloud-init user data (16 KiB at most).")
    floating_ip = serializers.BooleanField(required=False, default=False,
                                           help_text="Allocate a public IP and bind it once the server is up.")
    volume_gb = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=100_000,
                                         help_text="Also create a volume of this size and attach it.")
    volume_name = serializers.CharField(required=False, allow_blank=True, max_length=NAME_MAX,
                                        validators=[resource_name],
                                        help_text="Name of that volume (default: <name>-data).")

    def validate_project(self, slug):
        return _project_of(self.context["request"].user, slug)

    def validate_cloud(self, name):
        return _cloud_named(name)

    def validate_key_name(self, name):
        if not name:
            return None
        key = vms.ssh_keys_of(self.context["request"].user).filter(name=name).first()
        if key is None:
            raise serializers.ValidationError(f"No SSH key {name!r} of yours.")
        return key

    def validate(self, data):
        cloud, project = data["cloud"], data["project"]
        errors = {}
        profile = vms.profile_choices(cloud).filter(name=data["profile"]).first()
        if profile is None:
            errors["profile"] = [f"No profile {data['profile']!r} on {cloud.name}."]
        images = vms.image_choices(cloud, project)
        image = images.filter(image_id=data["image"]).first()
        if image is None:
            named = list(images.filter(name=data["image"])[:2])
            if len(named) > 1:
                errors["image"] = [f"Several images are named {data['image']!r} on {cloud.name}; give its id."]
            elif not named:
                errors["image"] = [f"No image {data['image']!r} on {cloud.name}."]
            else:
                image = named[0]
        if data.get("volume_name") and not data.get("volume_gb"):
            errors["volume_name"] = ["Give volume_gb too."]
        elif data.get("volume_gb") and not data.get("volume_name") and len(data["name"]) + len("-data") > NAME_MAX:
            errors["volume_name"] = [f"The default <name>-data would be longer than {NAME_MAX} characters; "
                                     "give a volume name."]
        if errors:
            raise serializers.ValidationError(errors)
        data["profile"], data["image"] = profile, image
        data["ssh_key"] = data.pop("key_name", None)
        return data


class VolumeCreateSerializer(serializers.Serializer):
    project = serializers.CharField(help_text="Project slug.")
    cloud = serializers.CharField(help_text="Cloud name.")
    name = serializers.CharField(max_length=NAME_MAX, help_text="Volume name (letters, digits, '.', '_', '-').")
    size_gb = serializers.IntegerField(min_value=1, max_value=100_000, help_text="Size in GB.")

    def validate_project(self, slug):
        return _project_of(self.context["request"].user, slug)

    def validate_cloud(self, name):
        return _cloud_named(name)


class RebootSerializer(serializers.Serializer):
    hard = serializers.BooleanField(required=False, default=False, help_text="Power-cycle instead of a clean reboot.")


class ResizeSerializer(serializers.Serializer):
    profile = serializers.CharField(help_text="The new VM profile's name.")

    def validate_profile(self, name):
        profile = VMProfile.objects.filter(name=name).first()
        if profile is None:
            raise serializers.ValidationError(f"No profile {name!r}.")
        return profile


class AttachSerializer(serializers.Serializer):
    server = serializers.IntegerField(help_text="Id of one of your servers in the volume's project and cloud.")

    def validate_server(self, pk):
        server = vms.servers_visible_to(self.context["request"].user).filter(pk=pk).first()
        if server is None:
            raise serializers.ValidationError(f"No server {pk} of yours.")
        return server


class SSHKeySerializer(serializers.ModelSerializer):
    name = serializers.CharField(max_length=64, validators=[resource_name])
    public_key = serializers.CharField(
        help_text='One OpenSSH public key line, e.g. "ssh-ed25519 AAAA... you@laptop".')

    class Meta:
        model = SSHKey
        fields = ["id", "name", "public_key", "fingerprint", "created"]
        read_only_fields = ["id", "fingerprint", "created"]

    def validate_name(self, name):
        if vms.ssh_keys_of(self.context["request"].user).filter(name=name).exists():
            raise serializers.ValidationError(f"You already have a key named {name!r}.")
        return name

    def validate(self, data):
        key = SSHKey(owner=self.context["request"].user, **data)
        try:
            key.clean()  # parses the key, normalises it, computes the fingerprint
        except DjangoValidationError as exc:
            raise serializers.ValidationError({"public_key": exc.messages}) from None
        data["public_key"], data["fingerprint"] = key.public_key, key.fingerprint
        return data

    def create(self, validated_data):
        try:
            with transaction.atomic():
                return SSHKey.objects.create(owner=self.context["request"].user, **validated_data)
        except IntegrityError:  # the same name saved by a concurrent request
            raise serializers.ValidationError({"name": ["You already have a key with this name."]}) from None

