"""Forms of the server, volume and SSH key pages. They offer the choices
and make the first per-field checks; the domain rules (quota, states, what
a cloud offers) stay in `clusters.vms`, whose errors the views attach to
these fields."""
from django import forms
from django.core.exceptions import ValidationError
from django.template.defaultfilters import filesizeformat

from portal.forms import BootstrapMixin
from projects import selectors as project_selectors
from projects.models import Project

from . import vms
from .models import Cloud, Image, VMProfile
from .vm_models import ServerState, SSHKey, VolumeState, resource_name

VOLUME_GB_MAX = 100_000


def launchable_projects(user):
    """The active projects the user may launch servers and volumes in."""
    return project_selectors.projects_visible_to(user).filter(status=Project.Status.ACTIVE).order_by("name")


def memory_label(ram_mb):
    return f"{ram_mb // 1024} GB" if ram_mb % 1024 == 0 else f"{ram_mb} MB"


def profile_label(profile):
    return (f"{profile.name} — {profile.vcpus} vCPU, {memory_label(profile.ram_mb)} RAM, "
            f"{profile.disk_gb} GB disk")


def image_label(image):
    details = " ".join(part for part in (image.os_distro, image.os_version) if part)
    if image.size_bytes:
        details = f"{details}, {filesizeformat(image.size_bytes)}" if details else filesizeformat(image.size_bytes)
    name = image.name or image.image_id
    return f"{name} — {details}" if details else name


class ProfileChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj):
        return profile_label(obj)


class ImageChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj):
        return image_label(obj)


class SSHKeyChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj):
        return f"{obj.name} ({obj.fingerprint})"


def _selected(form, name, queryset, key):
    """The object the form's `name` currently points at (posted, else
    initial, else the first choice), looked up in `queryset` by `key`."""
    value = form.data.get(name) if form.is_bound else form.initial.get(name)
    if isinstance(value, queryset.model):
        value = getattr(value, key)
    if value not in (None, ""):
        found = queryset.filter(**{key: value}).first()
        if found is not None or form.is_bound:
            return found
    return queryset.first()


class ServerForm(BootstrapMixin, forms.Form):
    """Launch a server. The profile and image choices depend on the chosen
    cloud (and project: private images), so they are computed from the
    posted or initial values; the page reloads them when those change."""

    FIELD_ALIASES = {"key_name": "ssh_key"}  # the service names the key field as the API does

    project = forms.ModelChoiceField(queryset=Project.objects.none(), to_field_name="slug", empty_label=None)
    cloud = forms.ModelChoiceField(queryset=Cloud.objects.none(), to_field_name="name", empty_label=None)
    name = forms.CharField(max_length=63, validators=[resource_name],
                           help_text="Letters, digits, '.', '_' or '-'; becomes the server's host name.")
    profile = ProfileChoiceField(queryset=VMProfile.objects.none(), empty_label=None, error_messages={
        "invalid_choice": "This profile is not offered on the chosen cloud."})
    image = ImageChoiceField(queryset=Image.objects.none(), empty_label=None, error_messages={
        "invalid_choice": "This image is not available on the chosen cloud."})
    ssh_key = SSHKeyChoiceField(label="SSH key", queryset=SSHKey.objects.none(), required=False,
                                empty_label="No key", error_messages={"invalid_choice": "Choose one of your SSH keys."})
    user_data = forms.CharField(
        label="User data", required=False,
        widget=forms.Textarea(attrs={"rows": 6, "class": "font-monospace", "spellcheck": "false"}),
        help_text="Optional cloud-init user data, e.g. a shell script or #cloud-config YAML (checked when it "
                  "starts with #cloud-config).",
    )
    floating_ip = forms.BooleanField(label="Give it a public (floating) IP address", required=False)
    volume_gb = forms.IntegerField(label="Data volume size (GB)", required=False, min_value=1, max_value=VOLUME_GB_MAX,
                                   help_text="Optional: a volume created and attached with the server.")
    volume_name = forms.CharField(label="Volume name", required=False, max_length=63, validators=[resource_name],
                                  help_text="Empty: <server name>-data.")

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["project"].queryset = launchable_projects(user)
        self.selected_project = _selected(self, "project", self.fields["project"].queryset, "slug")
        clouds = vms.clouds_for(self.selected_project) if self.selected_project else Cloud.objects.none()
        self.fields["cloud"].queryset = clouds
        self.selected_cloud = _selected(self, "cloud", clouds, "name")
        cloud, project = self.selected_cloud, self.selected_project
        self.fields["profile"].queryset = vms.profile_choices(cloud) if cloud else VMProfile.objects.none()
        self.fields["image"].queryset = (vms.image_choices(cloud, project) if cloud and project
                                         else Image.objects.none())
        self.fields["ssh_key"].queryset = vms.ssh_keys_of(user)
        if not self.is_bound:
            self.initial.setdefault("project", project.slug if project else None)
            self.initial.setdefault("cloud", cloud.name if cloud else None)

    def clean_user_data(self):
        try:
            return vms.validate_user_data(self.cleaned_data.get("user_data", ""))
        except forms.ValidationError as exc:
            raise forms.ValidationError(exc.messages) from None

    def clean(self):
        data = super().clean()
        if data.get("volume_name") and not data.get("volume_gb") and "volume_gb" not in self.errors:
            self.add_error("volume_gb", "Give the volume a size, or leave its name empty.")
        return data

    def service_kwargs(self):
        """The arguments of `vms.server_request`, but the owner."""
        data = self.cleaned_data
        return {"project": data["project"], "cloud": data["cloud"], "name": data["name"],
                "profile": data["profile"], "image": data["image"], "ssh_key": data.get("ssh_key"),
                "user_data": data.get("user_data", ""), "floating_ip": bool(data.get("floating_ip")),
                "volume_gb": data.get("volume_gb"), "volume_name": data.get("volume_name", "")}


class ResizeForm(BootstrapMixin, forms.Form):
    profile = ProfileChoiceField(
        label="New profile", queryset=VMProfile.objects.none(), empty_label=None,
        error_messages={"invalid_choice": "Choose another profile offered on this cloud."},
    )

    def __init__(self, *args, server, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["profile"].queryset = vms.profile_choices(server.cloud).exclude(pk=server.profile_id)


def attachable_volumes(user, server):
    """Volumes the user may attach to `server`: available, unattached, of
    the same project and cloud, and visible to the user."""
    return vms.volumes_visible_to(user).filter(
        project=server.project_id, cloud=server.cloud_id, state=VolumeState.AVAILABLE, server__isnull=True,
    ).order_by("name")


def attachable_servers(user, volume):
    """Servers `volume` may be attached to: active or shut off, created on
    the cloud, of the same project and cloud, visible to the user."""
    return vms.servers_visible_to(user).filter(
        project=volume.project_id, cloud=volume.cloud_id, state__in=[ServerState.ACTIVE, ServerState.SHUTOFF],
    ).exclude(openstack_id="").order_by("name")


class VolumeChoiceField(forms.ModelChoiceField):
    def label_from_instance(self, obj):
        return f"{obj.name} ({obj.size_gb} GB)"


class AttachVolumeForm(BootstrapMixin, forms.Form):
    volume = VolumeChoiceField(queryset=None, empty_label=None, error_messages={
        "invalid_choice": "Choose an available volume of this project on this cloud."})

    def __init__(self, *args, user, server, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["volume"].queryset = attachable_volumes(user, server)


class AttachServerForm(BootstrapMixin, forms.Form):
    server = forms.ModelChoiceField(queryset=None, empty_label=None, error_messages={
        "invalid_choice": "Choose an active or shut-off server of this project on this cloud."})

    def __init__(self, *args, user, volume, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["server"].queryset = attachable_servers(user, volume)


class VolumeForm(BootstrapMixin, forms.Form):
    project = forms.ModelChoiceField(queryset=Project.objects.none(), to_field_name="slug", empty_label=None)
    cloud = forms.ModelChoiceField(queryset=Cloud.objects.none(), to_field_name="name", empty_label=None)
    name = forms.CharField(max_length=63, validators=[resource_name])
    size_gb = forms.IntegerField(label="Size (GB)", min_value=1, max_value=VOLUME_GB_MAX)

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["project"].queryset = launchable_projects(user)
        self.selected_project = _selected(self, "project", self.fields["project"].queryset, "slug")
        self.fields["cloud"].queryset = (vms.clouds_for(self.selected_project) if self.selected_project
                                         else Cloud.objects.none())
        if not self.is_bound and self.selected_project:
            self.initial.setdefault("project", self.selected_project.slug)


class SSHKeyForm(BootstrapMixin, forms.Form):
    name = forms.CharField(max_length=64, validators=[resource_name], help_text="A name for you, e.g. laptop.")
    public_key = forms.CharField(
        label="Public key", widget=forms.Textarea(attrs={"rows": 4, "class": "font-monospace", "spellcheck": "false"}),
        help_text="One OpenSSH public key line, e.g. the contents of ~/.ssh/id_ed25519.pub. Never the private key.",
    )

    def __init__(self, *args, user, **kwargs):
        super().__init__(*args, **kwargs)
        self.user = user

    def clean_name(self):
        name = self.cleaned_data["name"]
        if vms.ssh_keys_of(self.user).filter(name=name).exists():
            raise forms.ValidationError(f"You already have a key named {name}.")
        return name

    def clean_public_key(self):
        key = SSHKey(owner=self.user, public_key=self.cleaned_data["public_key"])
        try:
            key.clean()  # parses the key and computes its fingerprint
        except ValidationError as exc:
            raise forms.ValidationError(exc.message_dict["public_key"]) from None
        same = vms.ssh_keys_of(self.user).filter(fingerprint=key.fingerprint).first()
        if same is not None:
            raise forms.ValidationError(f"This key is already in your list as {same.name}.")
        return key.public_key
