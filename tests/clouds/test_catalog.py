"""The VM catalog (flavors, images, profiles) synced from the REAL OpenStack
test bed (started by `make test`; see test_openstack_quotas.py).

Each run uses its own project slugs (`cat<run>-...`, so OpenStack projects
`nephele-cat<run>-...`) and image names (`nephele-cat<run>-...`); the
projects and images it creates are deleted at the end, through a separate
openstacksdk admin connection.
"""
import uuid

import openstack
import pytest
from django.contrib.admin.utils import quote
from django.urls import reverse
from django.utils import timezone

from clusters.backends.openstack import close_all
from clusters.catalog import catalog_sync, images_for, profiles_offered
from clusters.clouds import cloud_project_ensure
from clusters.models import Flavor, Image, ProfileFlavor, VMProfile
from clusters.tasks import sync_catalogs
from projects import services
from projects.models import Resource
from tests.conftest import make_user

from .test_openstack_quotas import Bed, make_cloud

RUN = uuid.uuid4().hex[:8]
PREFIX = f"cat{RUN}"
# what the test bed creates (scripts/openstack): name -> (vcpus, ram_mb, disk_gb)
BED_FLAVORS = {"m1.small": (1, 2048, 20), "m1.medium": (2, 4096, 40), "m1.large": (4, 8192, 80)}
BED_IMAGE = "cirros-tiny"


@pytest.fixture(scope="module")
def bed():
    b = Bed()
    b.images = []
    yield b
    close_all()
    conn = b.sdk()
    for image_id in b.images:
        conn.image.delete_image(image_id, ignore_missing=True)
    for project in conn.identity.projects():
        if project.name.startswith(f"nephele-{PREFIX}"):
            conn.identity.delete_project(project.id, ignore_missing=True)
    for conn in b._sdk.values():
        conn.close()


def upload_private_image(bed, openstack_project_id, suffix):
    """A tiny private image owned by `openstack_project_id`, uploaded by a
    separate admin connection scoped to that project (the portal's admin user
    has the admin role there since cloud_project_ensure)."""
    conn = openstack.connection.Connection(
        auth={"auth_url": bed.auth_url, "username": bed.user, "password": bed.password,
              "project_id": openstack_project_id, "user_domain_name": bed.user_domain},
        auth_type="password", region_name=bed.regions[0], identity_api_version="3", app_name="nephele-tests",
    )
    try:
        image = conn.image.create_image(
            name=f"nephele-{PREFIX}-{suffix}", data=b"\0" * 1024, disk_format="raw", container_format="bare",
            visibility="private", os_distro="debian", os_version="12", allow_duplicates=True, wait=True,
        )
        bed.images.append(image.id)
        assert image.owner == openstack_project_id
        return image.id
    finally:
        conn.close()


def test_sync_pulls_flavors_and_images_with_their_sizes(db, bed):
    cloud = make_cloud(bed, name="cat-one")
    counts = catalog_sync(cloud)

    flavors = {f.name: f for f in Flavor.objects.filter(cloud=cloud)}
    for name, (vcpus, ram_mb, disk_gb) in BED_FLAVORS.items():
        assert (flavors[name].vcpus, flavors[name].ram_mb, flavors[name].disk_gb) == (vcpus, ram_mb, disk_gb)
        assert flavors[name].is_public
        assert flavors[name].flavor_id and flavors[name].seen_at
    image = Image.objects.get(cloud=cloud, name=BED_IMAGE)
    truth = bed.sdk().image.find_image(BED_IMAGE, ignore_missing=False)
    assert (image.image_id, image.size_bytes, image.visibility, image.status, image.owner) == (
        truth.id, truth.size, "public", "active", truth.owner)
    assert image.size_bytes > 0
    assert counts["flavors"] == counts["flavors_created"] == Flavor.objects.filter(cloud=cloud).count() >= 3
    assert counts["images"] == counts["images_created"] == Image.objects.filter(cloud=cloud).count() >= 1
    assert counts["flavors_deleted"] == counts["images_deleted"] == 0


def test_resync_is_idempotent_and_deletes_vanished_rows(db, bed):
    cloud = make_cloud(bed, name="cat-one")
    catalog_sync(cloud)
    flavors = sorted(Flavor.objects.filter(cloud=cloud).values_list("pk", "flavor_id", "name"))
    images = sorted(Image.objects.filter(cloud=cloud).values_list("pk", "image_id", "name"))
    Flavor.objects.create(cloud=cloud, flavor_id=f"gone-{RUN}", name="m9.gone", vcpus=64, ram_mb=1, disk_gb=1,
                          seen_at=timezone.now())
    Image.objects.create(cloud=cloud, image_id=f"gone-{RUN}", name="gone", status="active", seen_at=timezone.now())

    counts = catalog_sync(cloud)

    assert counts["flavors_deleted"] == counts["images_deleted"] == 1
    assert counts["flavors_created"] == counts["images_created"] == 0
    assert counts["profiles_mapped"] == 0
    # same rows (same primary keys), no duplicates, the fake ones gone
    assert sorted(Flavor.objects.filter(cloud=cloud).values_list("pk", "flavor_id", "name")) == flavors
    assert sorted(Image.objects.filter(cloud=cloud).values_list("pk", "image_id", "name")) == images
    assert not Flavor.objects.filter(flavor_id=f"gone-{RUN}").exists()


def test_a_profile_is_mapped_to_the_flavor_of_its_name(db, bed):
    cloud = make_cloud(bed, name="cat-one")
    medium = VMProfile.objects.create(name="m1.medium", vcpus=2, ram_mb=4096, disk_gb=40)
    odd = VMProfile.objects.create(name=f"no-such-flavor-{RUN}", vcpus=1, ram_mb=512)
    off = VMProfile.objects.create(name="m1.large", vcpus=4, ram_mb=8192, disk_gb=80, enabled=False)
    assert list(profiles_offered(cloud)) == []

    assert catalog_sync(cloud)["profiles_mapped"] == 2
    mapping = ProfileFlavor.objects.get(cloud=cloud, profile=medium)
    assert (mapping.flavor_name, mapping.flavor_id) == (
        "m1.medium", Flavor.objects.get(cloud=cloud, name="m1.medium").flavor_id)
    assert not ProfileFlavor.objects.filter(profile=odd).exists()
    assert list(profiles_offered(cloud)) == [medium]  # m1.large is mapped but disabled

    # a mapping set by staff is kept, and re-syncing maps nothing twice
    small_id = Flavor.objects.get(cloud=cloud, name="m1.small").flavor_id
    ProfileFlavor.objects.filter(cloud=cloud, profile=medium).update(flavor_id=small_id, flavor_name="stale")
    assert catalog_sync(cloud)["profiles_mapped"] == 0
    mapping.refresh_from_db()
    assert (mapping.flavor_id, mapping.flavor_name) == (small_id, "m1.small")
    assert ProfileFlavor.objects.filter(cloud=cloud).count() == 2

    # a profile whose flavor vanished is no longer offered
    ProfileFlavor.objects.filter(cloud=cloud, profile=medium).update(flavor_id=f"gone-{RUN}")
    assert list(profiles_offered(cloud)) == []
    assert ProfileFlavor.objects.filter(cloud=cloud, profile=off).exists()


def test_profile_cost_is_keyed_by_quota_resources(db):
    profile = VMProfile.objects.create(name="m1.large", vcpus=4, ram_mb=8192, disk_gb=80)
    assert profile.cost() == {"cores": 4, "ram_mb": 8192, "disk_gb": 80, "instances": 1}
    assert set(profile.cost()) <= set(Resource.values)


def test_images_for_shows_public_and_own_images_not_another_projects(db, bed):
    cloud = make_cloud(bed, name="cat-one")
    mine = services.project_create(slug=f"{PREFIX}-mine", name="Catalog mine", limits={"cores": 1})
    other = services.project_create(slug=f"{PREFIX}-other", name="Catalog other", limits={"cores": 1})
    mine_id = cloud_project_ensure(cloud, mine).openstack_project_id
    other_id = cloud_project_ensure(cloud, other).openstack_project_id
    own_image = upload_private_image(bed, mine_id, "mine")
    foreign_image = upload_private_image(bed, other_id, "other")

    catalog_sync(cloud)

    synced = Image.objects.get(cloud=cloud, image_id=own_image)
    assert (synced.visibility, synced.owner, synced.os_distro, synced.os_version, synced.size_bytes) == (
        "private", mine_id, "debian", "12", 1024)
    assert Image.objects.get(cloud=cloud, image_id=foreign_image).owner == other_id

    shown = {i.image_id for i in images_for(cloud, mine)}
    public = set(Image.objects.filter(cloud=cloud, visibility="public", status="active")
                 .values_list("image_id", flat=True))
    assert Image.objects.get(cloud=cloud, name=BED_IMAGE).image_id in public
    assert shown == public | {own_image}
    assert foreign_image not in shown
    assert foreign_image in {i.image_id for i in images_for(cloud, other)}
    # a project without an OpenStack project on the cloud sees the public images only
    lone = services.project_create(slug=f"{PREFIX}-lone", name="Catalog lone", limits={"cores": 1})
    assert {i.image_id for i in images_for(cloud, lone)} == public


def test_periodic_task_syncs_every_enabled_cloud(db, bed):
    cloud = make_cloud(bed, name="cat-one")
    make_cloud(bed, name="cat-off", enabled=False)
    make_cloud(bed, name="cat-bad", password="wrong-password")
    done = sync_catalogs.delay().get()
    assert done["cat-one"]["flavors"] >= 3
    assert "cat-off" not in done
    assert isinstance(done["cat-bad"], str)  # logged and skipped, the others still synced
    assert Flavor.objects.filter(cloud=cloud, name="m1.small").exists()


def test_admin_pages_load_and_the_action_syncs(db, bed, client_for):
    staff = make_user(f"staff{RUN}", staff=True)
    client = client_for(staff)
    cloud = make_cloud(bed, name="cat-one")
    VMProfile.objects.create(name="m1.small", vcpus=1, ram_mb=2048, disk_gb=20, description="Small")

    response = client.post(reverse("admin:clusters_cloud_changelist"),
                           {"action": "sync_catalog", "_selected_action": [cloud.pk]}, follow=True)
    assert response.status_code == 200
    assert "profile(s) mapped" in response.content.decode()
    assert ProfileFlavor.objects.filter(cloud=cloud, profile__name="m1.small").exists()

    for model, obj in [(VMProfile, VMProfile.objects.get()), (Flavor, Flavor.objects.filter(cloud=cloud).first()),
                       (Image, Image.objects.get(cloud=cloud, name=BED_IMAGE))]:
        name = f"admin:clusters_{model._meta.model_name}"
        changelist = client.get(reverse(f"{name}_changelist"), {"q": "m1"})
        assert changelist.status_code == 200
        page = client.get(reverse(f"{name}_change", args=[quote(obj.pk)]))
        assert page.status_code == 200
        assert page.context["original"] == obj
    assert "m1.small" in client.get(reverse("admin:clusters_vmprofile_change", args=[VMProfile.objects.get().pk])
                                    ).content.decode()  # the inline shows the mapping
    assert client.get(reverse("admin:clusters_flavor_add")).status_code == 403  # synced rows: read-only
