"""Migration 0008: clusters that existed keep their shared (1777) user
directories; only new clusters default to private ones."""
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = [("clusters", "0007_submit_lanes")]
AFTER = [("clusters", "0008_user_dirs")]


def test_existing_clusters_stay_shared_new_ones_are_private(transactional_db):
    executor = MigrationExecutor(connection)
    executor.migrate(BEFORE)
    old = executor.loader.project_state(BEFORE).apps.get_model("clusters", "SlurmCluster")
    old.objects.create(name="older", ssh_user="svc", ssh_private_key="k", known_hosts="h")

    executor = MigrationExecutor(connection)
    executor.migrate(AFTER)
    new = executor.loader.project_state(AFTER).apps.get_model("clusters", "SlurmCluster")
    assert new.objects.get(name="older").user_dirs == "shared"
    assert new.objects.create(name="newer", ssh_user="svc", ssh_private_key="k", known_hosts="h").user_dirs == "private"

    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())  # back to the latest state for the other tests
