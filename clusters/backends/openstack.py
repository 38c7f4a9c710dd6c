"""OpenStack clouds through openstacksdk: the only module that imports it.

One `OpenStackClient` per (cloud credentials, region, project): its
`openstack.connection.Connection` (token, service catalog, HTTP keep-alive
pool) is created once per process and key and reused (`connection_for`), like
the SSH pools of `ssh.pool_for`.

- Every method returns plain records from `base` (`ServerRecord`, ...),
  never openstacksdk resources.
- Every failure becomes a `base` exception: `AuthenticationFailed` (wrong
  password, unknown project), `NotFound`, `QuotaRefused` (HTTP 403/413
  whose message names a quota; `str()` is the API's message, e.g. "Quota
  exceeded for cores: Requested 4, but already used 0 of 1 cores"),
  `InvalidRequest` (400/409), `BackendUnavailable` (connection refused,
  timeout, 5xx) or `BackendError`.
- Credentials come in `auth`, a clouds.yaml-style dict: auth_url, username,
  password, user_domain_name (default "Default"), project_domain_name
  (default "Default"); or auth_url, application_credential_id and
  application_credential_secret (scoped to the credential's own project).
  Nothing is read from OS_* variables; `auth_from_clouds_yaml` reads one
  named entry of a clouds.yaml file when a cloud is configured that way.

Admin-only calls (`ensure_project`, `set_quotas`, and reading another
project's quotas) need a client whose user has the admin role, e.g. scoped
to the cloud's `admin` project.
"""
import base64
import hashlib
import threading
from contextlib import contextmanager

import keystoneauth1.exceptions as ksa_exc
import openstack
from openstack import exceptions as sdk_exc

from .base import (
    AuthenticationFailed,
    BackendError,
    BackendUnavailable,
    FlavorRecord,
    FloatingIPRecord,
    ImageRecord,
    InvalidRequest,
    KeypairRecord,
    NotFound,
    ProjectRecord,
    QuotaRefused,
    QuotaSet,
    QuotaUsage,
    ServerRecord,
    VolumeAttachmentRecord,
    VolumeRecord,
)

API_TIMEOUT = 60

_CONNECTIONS = {}
_CONNECTIONS_LOCK = threading.Lock()


def _key(auth, region, project_id, project_name):
    secret = hashlib.sha256(
        str(auth.get("password", "") or auth.get("application_credential_secret", "")).encode()).hexdigest()
    return (
        auth["auth_url"].rstrip("/"),
        auth.get("username", "") or auth.get("application_credential_id", ""),
        auth.get("user_domain_name", "Default"),
        secret,
        region,
        project_id or "",
        project_name or "",
        auth.get("project_domain_name", "Default"),
    )


def _connection_auth(auth, project_id, project_name):
    """(auth dict, auth_type) for keystoneauth. An application credential
    carries its own project scope: it is used as it is."""
    if auth.get("application_credential_id"):
        return ({"auth_url": auth["auth_url"], "application_credential_id": auth["application_credential_id"],
                 "application_credential_secret": auth["application_credential_secret"]},
                "v3applicationcredential")
    conn_auth = {
        "auth_url": auth["auth_url"],
        "username": auth["username"],
        "password": auth["password"],
        "user_domain_name": auth.get("user_domain_name", "Default"),
        "project_domain_name": auth.get("project_domain_name", "Default"),
    }
    if project_id:
        conn_auth["project_id"] = project_id
    elif project_name:
        conn_auth["project_name"] = project_name
    return conn_auth, "password"


def connection_for(auth, region, project_id=None, project_name=None):
    """The Connection for these credentials, region and project, created on
    first use and reused by later calls in this process."""
    key = _key(auth, region, project_id, project_name)
    conn = _CONNECTIONS.get(key)
    if conn is not None:
        return conn
    with _CONNECTIONS_LOCK:
        conn = _CONNECTIONS.get(key)
        if conn is None:
            conn_auth, auth_type = _connection_auth(auth, project_id, project_name)
            conn = openstack.connection.Connection(
                auth=conn_auth,
                auth_type=auth_type,
                region_name=region,
                interface="public",
                identity_api_version="3",
                api_timeout=API_TIMEOUT,
                app_name="nephele",
            )  # cloud=None: clouds.yaml and OS_* variables are not read
            _CONNECTIONS[key] = conn
        return conn


def auth_from_clouds_yaml(path, name):
    """(auth dict, region) of the entry `name` of a clouds.yaml file, in the
    shape `OpenStackClient` takes (password or application credential)."""
    from openstack.config import loader

    try:
        entry = loader.OpenStackConfig(config_files=[str(path)], load_envvars=False).get_one(cloud=name)
    except Exception as exc:  # noqa: BLE001 - the loader raises several kinds
        raise InvalidRequest(f"clouds.yaml entry {name!r} in {path}: {exc}") from exc
    a = dict(entry.config.get("auth") or {})
    if not a.get("auth_url"):
        raise InvalidRequest(f"clouds.yaml entry {name!r} in {path} has no auth_url")
    auth = {"auth_url": a["auth_url"]}
    if a.get("application_credential_id"):
        auth.update(application_credential_id=a["application_credential_id"],
                    application_credential_secret=a.get("application_credential_secret", ""))
    else:
        auth.update(username=a.get("username", ""), password=a.get("password", ""),
                    user_domain_name=a.get("user_domain_name") or a.get("user_domain_id") or "Default",
                    project_domain_name=a.get("project_domain_name") or a.get("project_domain_id") or "Default")
        if a.get("project_name"):
            auth["project_name"] = a["project_name"]
        if a.get("project_id"):
            auth["project_id"] = a["project_id"]
    return auth, entry.config.get("region_name") or ""


def close_all():
    """Forget every cached connection (tests, worker shutdown)."""
    with _CONNECTIONS_LOCK:
        conns = list(_CONNECTIONS.values())
        _CONNECTIONS.clear()
    for conn in conns:
        try:
            conn.close()
        except Exception:  # noqa: BLE001 - best effort
            pass


def _message(exc):
    """The API's own message from an openstacksdk/keystoneauth exception."""
    for attr in ("details", "message"):
        value = getattr(exc, attr, None)
        if value and isinstance(value, str) and value != "None":
            return value.strip()
    return str(exc).strip()


def _is_quota(status, text):
    low = text.lower()
    return status in (403, 413) and ("quota" in low or "limit" in low and "exceed" in low)


@contextmanager
def _api(what):
    """Translate openstacksdk/keystoneauth failures into `base` exceptions."""
    try:
        yield
    except BackendError:
        raise
    except ksa_exc.Unauthorized as exc:
        raise AuthenticationFailed(f"{what}: authentication failed", stderr=_message(exc)) from exc
    except (ksa_exc.ConnectFailure, ksa_exc.ConnectTimeout, ksa_exc.RequestTimeout) as exc:
        raise BackendUnavailable(f"{what}: cloud unreachable", stderr=str(exc)) from exc
    except ksa_exc.EndpointNotFound as exc:
        raise BackendUnavailable(f"{what}: no such service in this region", stderr=str(exc)) from exc
    except ksa_exc.DiscoveryFailure as exc:
        raise BackendUnavailable(f"{what}: cloud unreachable", stderr=str(exc)) from exc
    except ksa_exc.HttpError as exc:
        raise _from_status(what, exc.http_status, _message(exc)) from exc
    except sdk_exc.ResourceTimeout as exc:
        raise BackendUnavailable(f"{what}: timed out", stderr=_message(exc)) from exc
    except (sdk_exc.NotFoundException, sdk_exc.ResourceNotFound) as exc:
        raise NotFound(f"{what}: not found", stderr=_message(exc)) from exc
    except sdk_exc.HttpException as exc:
        raise _from_status(what, exc.status_code, _message(exc)) from exc
    except ksa_exc.ClientException as exc:
        raise BackendUnavailable(f"{what}: {type(exc).__name__}", stderr=str(exc)) from exc
    except sdk_exc.SDKException as exc:
        raise BackendError(f"{what}: {_message(exc)}") from exc


def _from_status(what, status, text):
    if status == 401:
        return AuthenticationFailed(f"{what}: authentication failed", stderr=text)
    if _is_quota(status, text):
        err = QuotaRefused(text)
        err.exit_status = status
        return err
    if status == 404:
        return NotFound(f"{what}: not found", stderr=text)
    if status in (400, 409):
        return InvalidRequest(f"{what}: refused ({status})", stderr=text, exit_status=status)
    if status is None or status >= 500:
        return BackendUnavailable(f"{what}: cloud error ({status})", stderr=text, exit_status=status)
    return BackendError(f"{what}: HTTP {status}", stderr=text, exit_status=status)


def _find(find, name_or_id, **filters):
    """An SDK find_* call, None when nothing matches (the SDK deprecates
    find_*(ignore_missing=True); from 6.0 a miss always raises)."""
    try:
        return find(name_or_id, ignore_missing=False, **filters)
    except sdk_exc.NotFoundException:
        return None


def _get(obj, name, default=None):
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _json(resp):
    sdk_exc.raise_from_response(resp)
    return resp.json()


class OpenStackClient:
    """One project of one cloud region. `project_id` or `project_name`
    picks the project the token is scoped to."""

    def __init__(self, auth, region, project_id=None, project_name=None):
        if not project_id and not project_name and not auth.get("application_credential_id"):
            raise InvalidRequest("OpenStackClient needs project_id or project_name")
        self.auth = dict(auth)
        self.region = region
        self.conn = connection_for(self.auth, region, project_id, project_name)

    # ------------------------------------------------------------ identity

    @property
    def project_id(self):
        try:
            with _api("authenticate"):
                return self.conn.current_project_id
        except NotFound as exc:  # keystone: "Could not find Application Credential"
            raise AuthenticationFailed("authenticate: authentication failed", stderr=exc.stderr) from exc

    def ensure_project(self, name, *, description="", domain_id="default", grant_role="admin"):
        """Admin: the project `name`, created if missing. With `grant_role`,
        this client's user also gets that role on it, so the same credentials
        can be scoped to the new project."""
        with _api(f"ensure project {name}"):
            idc = self.conn.identity
            project = _find(idc.find_project, name, domain_id=domain_id)
            if project is None:
                project = idc.create_project(name=name, domain_id=domain_id, description=description)
            if grant_role:
                role = idc.find_role(grant_role, ignore_missing=False)
                idc.assign_project_role_to_user(project, self.conn.current_user_id, role)
            return ProjectRecord(id=project.id, name=project.name, domain_id=project.domain_id or "",
                                 enabled=bool(project.is_enabled))

    # -------------------------------------------------------------- catalog

    def list_flavors(self):
        with _api("list flavors"):
            return [FlavorRecord(id=f.id, name=f.name, vcpus=f.vcpus, ram_mb=f.ram, disk_gb=f.disk,
                                 is_public=bool(f.is_public))
                    for f in self.conn.compute.flavors(details=True)]

    def list_images(self):
        with _api("list images"):
            return [ImageRecord(id=i.id, name=i.name or "", status=i.status or "", size=i.size,
                                disk_format=i.disk_format or "", visibility=i.visibility or "",
                                min_disk_gb=i.min_disk or 0, min_ram_mb=i.min_ram or 0)
                    for i in self.conn.image.images()]

    # --------------------------------------------------------------- quotas

    def set_quotas(self, project_id, compute=None, volume=None, network=None):
        """Admin: set limits, each a dict in the API's own names, e.g.
        compute={"cores": 4, "ram": 8192, "instances": 2},
        volume={"volumes": 2, "gigabytes": 20}, network={"floatingip": 1}."""
        with _api(f"set quotas of {project_id}"):
            if compute:
                _json(self.conn.compute.put(f"/os-quota-sets/{project_id}",
                                            json={"quota_set": dict(compute)}, raise_exc=False))
            if volume:
                _json(self.conn.block_storage.put(f"/os-quota-sets/{project_id}",
                                                  json={"quota_set": dict(volume)}, raise_exc=False))
            if network:
                _json(self.conn.network.put(f"/quotas/{project_id}",
                                            json={"quota": dict(network)}, raise_exc=False))

    def get_quotas_with_usage(self, project_id=None):
        """Limits and usage of every service (3 API calls)."""
        pid = project_id or self.project_id
        with _api(f"quotas of {pid}"):
            qs = QuotaSet(project_id=pid)
            data = _json(self.conn.compute.get(f"/os-quota-sets/{pid}/detail", raise_exc=False))["quota_set"]
            for name, v in data.items():
                if isinstance(v, dict):
                    qs.compute[name] = QuotaUsage(limit=v.get("limit", -1), in_use=v.get("in_use", 0),
                                                  reserved=v.get("reserved", 0))
            data = _json(self.conn.block_storage.get(f"/os-quota-sets/{pid}?usage=True",
                                                     raise_exc=False))["quota_set"]
            for name, v in data.items():
                if isinstance(v, dict):
                    qs.volume[name] = QuotaUsage(limit=v.get("limit", -1), in_use=v.get("in_use", 0),
                                                 reserved=v.get("reserved", 0))
            data = _json(self.conn.network.get(f"/quotas/{pid}/details", raise_exc=False))["quota"]
            for name, v in data.items():
                if isinstance(v, dict):
                    qs.network[name] = QuotaUsage(limit=v.get("limit", -1), in_use=v.get("used", 0),
                                                  reserved=v.get("reserved", 0))
            return qs

    # ------------------------------------------------------------- keypairs

    def create_keypair(self, name, public_key=None):
        with _api(f"create keypair {name}"):
            kw = {"name": name}
            if public_key:
                kw["public_key"] = public_key
            kp = self.conn.compute.create_keypair(**kw)
            return KeypairRecord(name=kp.name, fingerprint=kp.fingerprint or "",
                                 public_key=kp.public_key or "", private_key=kp.private_key or "")

    def ensure_keypair(self, name, public_key):
        """The keypair `name` with exactly this public key: created when
        missing, replaced when its key differs (nova cannot update one)."""
        with _api(f"ensure keypair {name}"):
            c = self.conn.compute
            kp = _find(c.find_keypair, name)
            if kp is not None and " ".join((kp.public_key or "").split()[:2]) == " ".join(public_key.split()[:2]):
                return KeypairRecord(name=kp.name, fingerprint=kp.fingerprint or "", public_key=kp.public_key or "")
            if kp is not None:
                c.delete_keypair(name, ignore_missing=True)
            kp = c.create_keypair(name=name, public_key=public_key)
            return KeypairRecord(name=kp.name, fingerprint=kp.fingerprint or "", public_key=kp.public_key or "")

    def delete_keypair(self, name):
        """Idempotent: a missing keypair is not an error."""
        with _api(f"delete keypair {name}"):
            self.conn.compute.delete_keypair(name, ignore_missing=True)

    # -------------------------------------------------------------- servers

    def create_server(self, name, flavor, image, key_name=None, user_data=None, network=None, metadata=None):
        """Boot a server; returns its id at once (status BUILD). `flavor`,
        `image`, `network`: names or ids; no network = nova's "auto" (the
        project's only network); "none" = no network at all. A quota refusal raises `QuotaRefused`; a
        server accepted and then refused by nova's quota recheck ends in
        ERROR with `fault_code` 413 (see `get_server`)."""
        with _api(f"create server {name}"):
            c = self.conn.compute
            fl = _find(c.find_flavor, flavor)
            if fl is None:
                raise NotFound(f"flavor {flavor!r} not found")
            im = _find(self.conn.image.find_image, image)
            if im is None:
                raise NotFound(f"image {image!r} not found")
            if network in ("none", "auto"):
                networks = network
            elif network:
                net = self._find_network(network)
                if net is None:
                    raise NotFound(f"network {network!r} not found")
                networks = [{"uuid": net.id}]
            else:
                networks = "auto"
            kw = {"name": name, "flavor_id": fl.id, "image_id": im.id, "networks": networks}
            if key_name:
                kw["key_name"] = key_name
            if metadata:
                kw["metadata"] = {str(k): str(v) for k, v in metadata.items()}
            if user_data:
                raw = user_data.encode() if isinstance(user_data, str) else user_data
                kw["user_data"] = base64.b64encode(raw).decode()
            return c.create_server(**kw).id

    def _find_network(self, network):
        """`network` (name or id) of this project, else a shared one: an
        admin-scoped token sees every project's networks, and names repeat."""
        n = self.conn.network
        return (_find(n.find_network, network, project_id=self.project_id)
                or _find(n.find_network, network, is_shared=True))

    def get_server(self, server_id):
        with _api(f"get server {server_id}"):
            return self._server_record(self.conn.compute.get_server(server_id))

    def list_servers(self):
        """Every server of the project, in ONE API call (details included)."""
        with _api("list servers"):
            return [self._server_record(s) for s in self.conn.compute.servers(details=True)]

    def start_server(self, server_id):
        with _api(f"start server {server_id}"):
            self.conn.compute.start_server(server_id)

    def stop_server(self, server_id):
        with _api(f"stop server {server_id}"):
            self.conn.compute.stop_server(server_id)

    def reboot_server(self, server_id, hard=False):
        with _api(f"reboot server {server_id}"):
            self.conn.compute.reboot_server(server_id, "HARD" if hard else "SOFT")

    def resize_server(self, server_id, flavor):
        """Status goes RESIZE, then VERIFY_RESIZE: call `confirm_resize`."""
        with _api(f"resize server {server_id}"):
            fl = _find(self.conn.compute.find_flavor, flavor)
            if fl is None:
                raise NotFound(f"flavor {flavor!r} not found")
            self.conn.compute.resize_server(server_id, fl.id)

    def confirm_resize(self, server_id):
        with _api(f"confirm resize of {server_id}"):
            self.conn.compute.confirm_server_resize(server_id)

    def delete_server(self, server_id):
        """Idempotent: a server already gone is not an error. Deletion is
        asynchronous: `get_server` raises `NotFound` once it is gone."""
        with _api(f"delete server {server_id}"):
            self.conn.compute.delete_server(server_id, ignore_missing=True)

    @staticmethod
    def _server_record(s):
        fault = s.fault or {}
        flavor = s.flavor or {}
        addresses = {}
        for net, addrs in (s.addresses or {}).items():
            addresses[net] = [
                {
                    "addr": a.get("addr"),
                    "version": a.get("version"),
                    "type": a.get("OS-EXT-IPS:type", "fixed"),
                    "mac": a.get("OS-EXT-IPS-MAC:mac_addr", ""),
                }
                for a in addrs
            ]
        image = s.image or {}
        return ServerRecord(
            id=s.id,
            name=s.name or "",
            status=s.status or "",
            task_state=s.task_state or "",
            power_state=s.power_state,
            flavor_name=_get(flavor, "original_name") or _get(flavor, "name") or "",
            flavor_vcpus=_get(flavor, "vcpus"),
            flavor_ram_mb=_get(flavor, "ram"),
            flavor_disk_gb=_get(flavor, "disk"),
            image_id=_get(image, "id") or "",
            key_name=s.key_name or "",
            addresses=addresses,
            fault=_get(fault, "message") or "",
            fault_code=_get(fault, "code"),
            created=s.created_at or "",
            updated=s.updated_at or "",
            project_id=s.project_id or "",
            metadata=dict(s.metadata or {}),
        )

    # -------------------------------------------------------------- volumes

    def create_volume(self, size, name):
        """Returns the new volume (status "creating"; poll `get_volume`)."""
        with _api(f"create volume {name}"):
            return self._volume_record(self.conn.block_storage.create_volume(size=size, name=name))

    def get_volume(self, volume_id):
        with _api(f"get volume {volume_id}"):
            return self._volume_record(self.conn.block_storage.get_volume(volume_id))

    def list_volumes(self):
        with _api("list volumes"):
            return [self._volume_record(v) for v in self.conn.block_storage.volumes(details=True)]

    def attach_volume(self, server_id, volume_id):
        """Attach; returns the attachment with the device path nova chose
        (e.g. "/dev/sdb"). The volume goes attaching -> in-use."""
        with _api(f"attach volume {volume_id} to {server_id}"):
            att = self.conn.compute.create_volume_attachment(server_id, volume=volume_id)
            return VolumeAttachmentRecord(id=att.id or att.volume_id, server_id=server_id,
                                          volume_id=att.volume_id or volume_id, device=att.device or "")

    def detach_volume(self, server_id, volume_id):
        """Asynchronous: the volume goes detaching -> available."""
        with _api(f"detach volume {volume_id} from {server_id}"):
            self.conn.compute.delete_volume_attachment(server_id, volume_id)

    def delete_volume(self, volume_id):
        """Idempotent; asynchronous (status "deleting" until gone)."""
        with _api(f"delete volume {volume_id}"):
            self.conn.block_storage.delete_volume(volume_id, ignore_missing=True)

    @staticmethod
    def _volume_record(v):
        return VolumeRecord(
            id=v.id,
            name=v.name or "",
            size_gb=v.size,
            status=v.status or "",
            attachments=[
                {"server_id": a.get("server_id"), "device": a.get("device"),
                 "attachment_id": a.get("attachment_id")}
                for a in (v.attachments or [])
            ],
            volume_type=v.volume_type or "",
            bootable=str(v.is_bootable).lower() == "true",
        )

    # --------------------------------------------------------- floating IPs

    def allocate_floating_ip(self, network="public"):
        with _api(f"allocate floating IP on {network}"):
            net = _find(self.conn.network.find_network, network)
            if net is None:
                raise NotFound(f"network {network!r} not found")
            return self._fip_record(self.conn.network.create_ip(floating_network_id=net.id))

    def associate_floating_ip(self, floating_ip_id, server_id):
        """Bind the address to the server's first port. The server's
        `addresses` show it (type "floating") only a few seconds later."""
        with _api(f"associate floating IP {floating_ip_id}"):
            ports = list(self.conn.network.ports(device_id=server_id))
            if not ports:
                raise InvalidRequest(f"server {server_id} has no port to bind a floating IP to")
            return self._fip_record(self.conn.network.update_ip(floating_ip_id, port_id=ports[0].id))

    def disassociate_floating_ip(self, floating_ip_id):
        with _api(f"disassociate floating IP {floating_ip_id}"):
            return self._fip_record(self.conn.network.update_ip(floating_ip_id, port_id=None))

    def get_floating_ip(self, floating_ip_id):
        with _api(f"get floating IP {floating_ip_id}"):
            return self._fip_record(self.conn.network.get_ip(floating_ip_id))

    def list_floating_ips(self):
        with _api("list floating IPs"):
            return [self._fip_record(f) for f in self.conn.network.ips(project_id=self.project_id)]

    def release_floating_ip(self, floating_ip_id):
        """Idempotent: an address already released is not an error."""
        with _api(f"release floating IP {floating_ip_id}"):
            self.conn.network.delete_ip(floating_ip_id, ignore_missing=True)

    @staticmethod
    def _fip_record(f):
        return FloatingIPRecord(id=f.id, address=f.floating_ip_address or "", status=f.status or "",
                                port_id=f.port_id or "", fixed_address=f.fixed_ip_address or "",
                                network_id=f.floating_network_id or "")
