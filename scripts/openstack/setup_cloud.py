"""Idempotent set-up of the Nephele OpenStack test bed, with openstacksdk.

usage: python setup_cloud.py identity|resources
Reads OS_ADMIN_PASSWORD, OS_SERVICE_PASSWORD, OS_DEMO_PASSWORD from the
environment. `identity` needs only keystone; `resources` needs nova, glance
and neutron.
"""
import os
import sys

import openstack

AUTH_URL = "http://127.0.0.1:5000/v3"
REGIONS = ("RegionOne", "RegionTwo")
SERVICE_USERS = ("nova", "placement", "glance", "neutron", "cinder")
PROJECTS = ("nephele-alpha", "nephele-beta")
CATALOG = (  # name, type, url
    ("keystone", "identity", "http://127.0.0.1:5000/v3"),
    ("placement", "placement", "http://127.0.0.1:8778"),
    ("glance", "image", "http://127.0.0.1:9292"),
    ("nova", "compute", "http://127.0.0.1:8774/v2.1"),
    ("neutron", "network", "http://127.0.0.1:9696"),
    ("cinderv3", "block-storage", "http://127.0.0.1:8776/v3/$(project_id)s"),
)
FLAVORS = (("m1.small", 1, 2048, 20), ("m1.medium", 2, 4096, 40), ("m1.large", 4, 8192, 80))
IMAGE = "cirros-tiny"


def admin():
    return openstack.connect(
        auth_url=AUTH_URL, username="admin", password=os.environ["OS_ADMIN_PASSWORD"],
        project_name="admin", user_domain_name="Default", project_domain_name="Default",
        region_name="RegionOne", identity_api_version="3")


def ensure_role(idc, name):
    return idc.find_role(name) or idc.create_role(name=name)


def identity():
    conn = admin()
    idc = conn.identity
    for region in REGIONS:
        if not idc.find_region(region):
            idc.create_region(id=region)
    for name in ("admin", "member", "reader", "service", "manager"):
        ensure_role(idc, name)
    domain = idc.find_domain("Default")
    service_project = idc.find_project("service", domain_id=domain.id) or idc.create_project(
        name="service", domain_id=domain.id, description="Service project")
    for uname in SERVICE_USERS:
        user = idc.find_user(uname, domain_id=domain.id)
        if user:
            idc.update_user(user, password=os.environ["OS_SERVICE_PASSWORD"])
        else:
            user = idc.create_user(name=uname, domain_id=domain.id,
                                   password=os.environ["OS_SERVICE_PASSWORD"])
        for role in ("admin", "service"):
            idc.assign_project_role_to_user(service_project, user, ensure_role(idc, role))
    demo = idc.find_user("demo", domain_id=domain.id)
    if demo:
        idc.update_user(demo, password=os.environ["OS_DEMO_PASSWORD"])
    else:
        demo = idc.create_user(name="demo", domain_id=domain.id, password=os.environ["OS_DEMO_PASSWORD"])
    member = ensure_role(idc, "member")
    admin_user = idc.find_user("admin", domain_id=domain.id)
    admin_role = ensure_role(idc, "admin")
    for pname in PROJECTS:
        project = idc.find_project(pname, domain_id=domain.id) or idc.create_project(
            name=pname, domain_id=domain.id, description="Nephele test project")
        idc.assign_project_role_to_user(project, demo, member)
        idc.assign_project_role_to_user(project, admin_user, admin_role)
    services = {s.type: s for s in idc.services()}
    endpoints = {(e.service_id, e.region_id, e.interface): e for e in idc.endpoints()}
    for name, stype, url in CATALOG:
        svc = services.get(stype) or idc.create_service(name=name, type=stype, is_enabled=True)
        for region in REGIONS:
            for interface in ("public", "internal", "admin"):
                ep = endpoints.get((svc.id, region, interface))
                if ep is None:
                    idc.create_endpoint(service_id=svc.id, interface=interface, url=url, region_id=region)
                elif ep.url != url:
                    idc.update_endpoint(ep, url=url)


def resources():
    conn = admin()
    for name, vcpus, ram, disk in FLAVORS:
        if not conn.compute.find_flavor(name, ignore_missing=True):
            conn.compute.create_flavor(name=name, vcpus=vcpus, ram=ram, disk=disk, is_public=True)
    if not conn.image.find_image(IMAGE, ignore_missing=True):
        # A few KB of zeros: the fake virt driver never reads it.
        conn.image.create_image(name=IMAGE, data=b"\0" * 4096, disk_format="raw",
                                container_format="bare", visibility="public",
                                allow_duplicates=True)
    net = conn.network
    public = net.find_network("public", ignore_missing=True)
    if public is None:
        public = net.create_network(name="public", is_router_external=True, is_shared=False,
                                    provider_network_type="flat", provider_physical_network="public")
    if not list(net.subnets(network_id=public.id)):
        net.create_subnet(network_id=public.id, name="public-subnet", ip_version=4,
                          cidr="203.0.113.0/24", gateway_ip="203.0.113.1", is_dhcp_enabled=False,
                          allocation_pools=[{"start": "203.0.113.10", "end": "203.0.113.250"}])
    for pname in PROJECTS:
        project = conn.identity.find_project(pname, domain_id="default")
        nets = list(net.networks(name="private", project_id=project.id))
        private = nets[0] if nets else net.create_network(name="private", project_id=project.id)
        subnets = list(net.subnets(network_id=private.id))
        subnet = subnets[0] if subnets else net.create_subnet(
            network_id=private.id, project_id=project.id, name="private-subnet", ip_version=4,
            cidr="10.0.0.0/24", is_dhcp_enabled=False)
        routers = list(net.routers(name="router", project_id=project.id))
        if routers:
            router = routers[0]
        else:
            router = net.create_router(name="router", project_id=project.id,
                                       external_gateway_info={"network_id": public.id})
        ports = list(net.ports(device_id=router.id, network_id=private.id))
        if not ports:
            net.add_interface_to_router(router, subnet_id=subnet.id)


if __name__ == "__main__":
    {"identity": identity, "resources": resources}[sys.argv[1]]()
