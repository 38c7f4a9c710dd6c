"""Clusters as operators handle them: bwVisu-style JSON import/export
(`manage.py cluster_import` / `cluster_export`), secrets encrypted at rest,
the SlurmCluster admin (secrets never rendered, sync actions), partition sync
and command-node failover against the REAL Slurm test bed.
"""
import io
import json
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest
from django.contrib.messages import get_messages
from django.core.exceptions import ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.urls import reverse
from django.utils import timezone

from clusters import services
from clusters.backends import ssh
from clusters.models import CommandNode, Partition, SlurmCluster
from jobs.models import Job, State
from tests.jobs.conftest import slurm  # noqa: F401  (the test bed cluster fixture)

REPO = Path(__file__).resolve().parents[2]
TESTBED_SLURM = REPO / "scripts" / "slurm" / "testbed-slurm"

KEY_BODY = "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ-UNIQUE-PRIVATE-KEY-MATERIAL"
FAKE_KEY = f"-----BEGIN OPENSSH PRIVATE KEY-----\n{KEY_BODY}\n-----END OPENSSH PRIVATE KEY-----\n"
HOSTS_BODY = "AAAAC3NzaC1lZDI1NTE5AAAAIUNIQUEHOSTKEYMATERIALxyz"
FAKE_HOSTS = f"[login1.example.org]:2222 ssh-ed25519 {HOSTS_BODY}\nlogin2.example.org ssh-ed25519 {HOSTS_BODY}2\n"

# The bwVisu middleware's shape, as far as the portal uses it (see docs/clusters.md).
BWVISU = {
    "clusters": [
        {
            "name": "heidelberg",
            "description": "bwVisu backend",
            "ssh-user": "bwvisurunner",
            "home-prefix": "/shared/home",
            "port-range": "50000-60000",
            "gateway-nodes": [
                {"internal-ip": "10.100.0.101", "external-ip": "129.206.9.248", "user": "bwvisurunner", "port": 22},
                {"internal-ip": "10.100.0.102", "external-ip": "129.206.9.253", "user": "bwvisurunner", "port": 22},
            ],
            "command-nodes": [
                "login1.example.org:2222",
                {"host": "login2.example.org", "port": 22},
                "login3.example.org",
            ],
        }
    ]
}


@pytest.fixture
def files(tmp_path):
    class Files:
        key = tmp_path / "id_ed25519"
        hosts = tmp_path / "known_hosts"

        def json(self, data, name="clusters.json"):
            path = tmp_path / name
            path.write_text(data if isinstance(data, str) else json.dumps(data))
            return str(path)

    f = Files()
    f.key.write_text(FAKE_KEY)
    f.hosts.write_text(FAKE_HOSTS)
    return f


def run_import(path, *extra):
    out = io.StringIO()
    call_command("cluster_import", path, *extra, stdout=out)
    return out.getvalue()


def run_export(*names):
    out = io.StringIO()
    call_command("cluster_export", *names, stdout=out)
    return out.getvalue()


def nodes_of(cluster):
    return [(n.host, n.port, n.position) for n in cluster.command_nodes.all()]


# --- cluster_import / cluster_export ----------------------------------------------------


def test_import_creates_the_cluster_with_nodes_in_order(db, files):
    out = run_import(files.json(BWVISU), "--ssh-key", str(files.key), "--known-hosts", str(files.hosts))
    cluster = SlurmCluster.objects.get()
    assert cluster.name == "heidelberg" and cluster.description == "bwVisu backend"
    assert nodes_of(cluster) == [("login1.example.org", 2222, 0), ("login2.example.org", 22, 1),
                                 ("login3.example.org", 22, 2)]
    assert cluster.ssh_user == "bwvisurunner"
    assert cluster.work_prefix == "/shared/home"
    assert cluster.port_range == "50000-60000"
    assert cluster.gateway_nodes == BWVISU["clusters"][0]["gateway-nodes"]
    assert cluster.ssh_private_key == FAKE_KEY and cluster.known_hosts == FAKE_HOSTS
    assert "heidelberg: command nodes login1.example.org:2222, login2.example.org:22, login3.example.org:22" in out


def test_import_accepts_a_single_cluster_object_and_bwvisu_spellings(db, files):
    # The middleware's own file: no "clusters" list, command nodes as
    # {"ip", "user", "port"}, "bwvisu-home-prefix", a {"min", "max"} port range.
    doc = {
        "name": "mannheim",
        "bwvisu-home-prefix": "/shared/home",
        "command-nodes": [{"ip": "129.206.9.248", "user": "bwvisurunner", "port": 22},
                          {"ip": "129.206.9.253", "user": "bwvisurunner", "port": 2200}],
        "port-range": {"min": 50000, "max": 60000},
        "ssh-user": "bwvisurunner",
    }
    run_import(files.json(doc), "--ssh-key", str(files.key), "--known-hosts", str(files.hosts))
    cluster = SlurmCluster.objects.get(name="mannheim")
    assert nodes_of(cluster) == [("129.206.9.248", 22, 0), ("129.206.9.253", 2200, 1)]
    assert cluster.work_prefix == "/shared/home" and cluster.port_range == "50000-60000"


def test_import_again_updates_without_duplicates(db, files):
    path = files.json(BWVISU)
    run_import(path, "--ssh-key", str(files.key), "--known-hosts", str(files.hosts))
    cluster = SlurmCluster.objects.get()
    login1 = CommandNode.objects.get(host="login1.example.org")

    changed = json.loads(json.dumps(BWVISU))
    entry = changed["clusters"][0]
    entry["command-nodes"] = [{"host": "login3.example.org"}, "login1.example.org:2222"]  # login2 removed
    entry["home-prefix"] = "/work/bwvisu"
    run_import(files.json(changed))  # no keys given this time: the stored ones stay

    assert SlurmCluster.objects.count() == 1
    cluster.refresh_from_db()
    assert nodes_of(cluster) == [("login3.example.org", 22, 0), ("login1.example.org", 2222, 1)]
    assert CommandNode.objects.count() == 2
    assert not CommandNode.objects.filter(host="login2.example.org").exists()
    assert CommandNode.objects.get(host="login1.example.org").pk == login1.pk  # updated, not recreated
    assert cluster.work_prefix == "/work/bwvisu"
    assert cluster.ssh_private_key == FAKE_KEY and cluster.known_hosts == FAKE_HOSTS

    # Running the same file twice changes nothing.
    run_import(files.json(changed))
    assert nodes_of(SlurmCluster.objects.get()) == [("login3.example.org", 22, 0), ("login1.example.org", 2222, 1)]


def test_import_new_keys_replace_the_stored_ones(db, files, tmp_path):
    run_import(files.json(BWVISU), "--ssh-key", str(files.key), "--known-hosts", str(files.hosts))
    new_key = tmp_path / "new_key"
    new_key.write_text("NEW KEY")
    run_import(files.json(BWVISU), "--ssh-key", str(new_key))
    cluster = SlurmCluster.objects.get()
    assert cluster.ssh_private_key == "NEW KEY" and cluster.known_hosts == FAKE_HOSTS


@pytest.mark.parametrize("text, message", [
    ("{not json", "Cannot read"),
    ('{"clusters": [{"name": "x", "gateway-nodes": []}]}', "command-nodes"),
    ('{"command-nodes": ["login1.example.org"]}', "name"),
    ('{"clusters": [{"name": "x", "command-nodes": ["login1.example.org:ssh"]}]}', "login1.example.org:ssh"),
    ('{"clusters": ["heidelberg"]}', "Invalid cluster entry"),
    ('{"clusters": [{"name": "x", "command-nodes": []}]}', "command-nodes' is empty"),
    ('{"clusters": [{"name": "x", "command-nodes": [{"port": 22}]}]}', "has no host"),
    ('{"clusters": [{"name": "Not a slug!", "command-nodes": ["h"]}]}', "Cluster Not a slug!: name"),
    ("42", "Invalid"),
    ('{"clusters": {"name": "x"}}', "Invalid"),
])
def test_invalid_files_are_refused_with_a_clear_message(db, files, text, message):
    with pytest.raises(CommandError, match=message):
        run_import(files.json(text), "--ssh-key", str(files.key), "--known-hosts", str(files.hosts))
    assert not SlurmCluster.objects.exists() and not CommandNode.objects.exists()


def test_a_bad_entry_rolls_back_the_whole_file(db, files):
    doc = {"clusters": [BWVISU["clusters"][0], {"name": "broken"}]}
    with pytest.raises(CommandError, match="command-nodes"):
        run_import(files.json(doc), "--ssh-key", str(files.key), "--known-hosts", str(files.hosts))
    assert not SlurmCluster.objects.exists() and not CommandNode.objects.exists()


def test_missing_file_and_missing_keys(db, files, tmp_path):
    with pytest.raises(CommandError, match="Cannot read"):
        run_import(str(tmp_path / "nope.json"))
    with pytest.raises(CommandError, match="Cannot read"):
        run_import(files.json(BWVISU), "--ssh-key", str(tmp_path / "no-such-key"))
    # A new cluster needs its secrets; the message names the missing ones.
    with pytest.raises(CommandError, match="ssh_private_key.*known_hosts|known_hosts.*ssh_private_key"):
        run_import(files.json(BWVISU))
    assert not SlurmCluster.objects.exists()


def test_import_from_standard_input(db, files):
    out = io.StringIO()
    call_command("cluster_import", "-", "--ssh-key", str(files.key), "--known-hosts", str(files.hosts),
                 stdout=out, stdin=io.StringIO(json.dumps(BWVISU)))
    assert SlurmCluster.objects.filter(name="heidelberg").exists()


def test_export_round_trips_and_never_contains_secrets(db, files):
    run_import(files.json(BWVISU), "--ssh-key", str(files.key), "--known-hosts", str(files.hosts))
    SlurmCluster.objects.create(name="second", ssh_user="svc", ssh_private_key=FAKE_KEY, known_hosts=FAKE_HOSTS,
                                slurm_conf="/etc/slurm/other.conf", sudo_mode=SlurmCluster.SudoMode.SERVICE,
                                submit_lanes=3, user_dirs=SlurmCluster.UserDirs.SHARED)
    CommandNode.objects.create(cluster=SlurmCluster.objects.get(name="second"), host="hpc.example.org", port=22)
    first = run_export()
    for secret in (KEY_BODY, HOSTS_BODY, "PRIVATE KEY", "ssh-ed25519", "fernet:"):
        assert secret not in first
    doc = json.loads(first)
    assert [c["name"] for c in doc["clusters"]] == ["heidelberg", "second"]
    assert doc["clusters"][0]["command-nodes"] == ["login1.example.org:2222", "login2.example.org:22",
                                                   "login3.example.org:22"]
    assert set(doc["clusters"][0]) == {"name", "description", "command-nodes", "gateway-nodes", "home-prefix",
                                       "port-range", "ssh-user", "sudo-mode", "slurm-conf", "submit-lanes",
                                       "user-dirs"}

    SlurmCluster.objects.all().delete()  # an empty database
    assert not CommandNode.objects.exists()
    run_import(files.json(first, "export.json"), "--ssh-key", str(files.key), "--known-hosts", str(files.hosts))
    assert run_export() == first
    assert json.loads(run_export("second"))["clusters"][0]["sudo-mode"] == "service"
    assert SlurmCluster.objects.get(name="second").submit_lanes == 3
    assert SlurmCluster.objects.get(name="heidelberg").submit_lanes == 2  # the default
    assert SlurmCluster.objects.get(name="second").user_dirs == "shared"
    assert SlurmCluster.objects.get(name="heidelberg").user_dirs == "private"  # the default


def test_import_refuses_unknown_user_dirs(db, files):
    doc = json.dumps({"name": "dirs", "command-nodes": ["login1.example.org"], "user-dirs": "open"})
    with pytest.raises(CommandError) as info:
        run_import(files.json(doc, "dirs.json"), "--ssh-key", str(files.key), "--known-hosts", str(files.hosts))
    assert "user_dirs" in str(info.value) and not SlurmCluster.objects.filter(name="dirs").exists()


def test_import_refuses_bad_submit_lanes(db, files):
    for bad in (0, 9, "two"):
        doc = json.dumps({"name": "lanes", "command-nodes": ["login1.example.org"], "submit-lanes": bad})
        with pytest.raises(CommandError) as info:
            run_import(files.json(doc, f"lanes-{bad}.json"), "--ssh-key", str(files.key),
                       "--known-hosts", str(files.hosts))
        assert "submit_lanes" in str(info.value)
    assert not SlurmCluster.objects.filter(name="lanes").exists()


# --- secrets at rest ---------------------------------------------------------------------


def raw_secrets(cluster):
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT ssh_private_key, known_hosts FROM {SlurmCluster._meta.db_table} WHERE id = %s",
                       [cluster.pk])
        return cursor.fetchone()


def test_secrets_are_encrypted_in_the_database(db):
    cluster = SlurmCluster.objects.create(name="hpc", ssh_user="svc", ssh_private_key=FAKE_KEY, known_hosts=FAKE_HOSTS)
    key, hosts = raw_secrets(cluster)
    assert key.startswith("fernet:") and hosts.startswith("fernet:")
    assert KEY_BODY not in key and HOSTS_BODY not in hosts
    fresh = SlurmCluster.objects.get(pk=cluster.pk)
    assert fresh.ssh_private_key == FAKE_KEY and fresh.known_hosts == FAKE_HOSTS
    # An update re-encrypts; a value stored before encryption is read as is.
    SlurmCluster.objects.filter(pk=cluster.pk).update(known_hosts="new hosts")
    assert raw_secrets(cluster)[1].startswith("fernet:")
    with connection.cursor() as cursor:
        cursor.execute(f"UPDATE {SlurmCluster._meta.db_table} SET known_hosts = %s WHERE id = %s",
                       ["legacy clear text", cluster.pk])
    assert SlurmCluster.objects.get(pk=cluster.pk).known_hosts == "legacy clear text"


def test_a_changed_secret_key_gives_a_clear_error(db, settings):
    cluster = SlurmCluster.objects.create(name="hpc", ssh_user="svc", ssh_private_key=FAKE_KEY, known_hosts=FAKE_HOSTS)
    settings.SECRET_KEY = "a-different-secret-key"
    with pytest.raises(ValueError, match="cannot decrypt a stored secret.*SECRET_KEY"):
        SlurmCluster.objects.get(pk=cluster.pk)


def test_field_encryption_key_takes_precedence(db, settings):
    from cryptography.fernet import Fernet

    settings.FIELD_ENCRYPTION_KEY = Fernet.generate_key().decode()
    cluster = SlurmCluster.objects.create(name="hpc", ssh_user="svc", ssh_private_key=FAKE_KEY, known_hosts=FAKE_HOSTS)
    settings.SECRET_KEY = "rotated"  # does not matter while FIELD_ENCRYPTION_KEY is set
    assert SlurmCluster.objects.get(pk=cluster.pk).ssh_private_key == FAKE_KEY
    settings.FIELD_ENCRYPTION_KEY = Fernet.generate_key().decode()
    with pytest.raises(ValueError, match="FIELD_ENCRYPTION_KEY"):
        SlurmCluster.objects.get(pk=cluster.pk)


# --- admin --------------------------------------------------------------------------------


def change_url(cluster):
    return reverse("admin:clusters_slurmcluster_change", args=[cluster.pk])


def test_change_page_never_renders_the_secrets(slurm, client_for):
    cluster = slurm.cluster
    key_chunk = cluster.ssh_private_key.splitlines()[2]  # from the middle of the real key
    host_key = cluster.known_hosts.split()[2]
    assert len(key_chunk) > 20 and len(host_key) > 20
    staff = client_for(slurm.staff)
    for url in (change_url(cluster), reverse("admin:clusters_slurmcluster_changelist"),
                reverse("admin:clusters_slurmcluster_history", args=[cluster.pk])):
        html = staff.get(url).content.decode()
        assert key_chunk not in html and host_key not in html and "fernet:" not in html
    html = staff.get(change_url(cluster)).content.decode()
    assert "leave empty to keep it" in html


def admin_form_data(cluster, **changes):
    """A full POST of the change form for a cluster without inline rows
    other than its command nodes."""
    data = {
        "name": cluster.name, "description": cluster.description, "enabled": "on", "ssh_user": cluster.ssh_user,
        "ssh_private_key": "", "known_hosts": "", "sudo_mode": cluster.sudo_mode,
        "work_prefix": cluster.work_prefix, "slurm_conf": cluster.slurm_conf, "submit_lanes": cluster.submit_lanes,
        "user_dirs": cluster.user_dirs, "gateway_nodes": json.dumps(cluster.gateway_nodes), "port_range": cluster.port_range,
        "last_sync_0": "", "last_sync_1": "",
        "partitions-TOTAL_FORMS": "0", "partitions-INITIAL_FORMS": "0",
        "accounts-TOTAL_FORMS": "0", "accounts-INITIAL_FORMS": "0",
    }
    nodes = list(cluster.command_nodes.all()) if cluster.pk else []
    data.update({"command_nodes-TOTAL_FORMS": str(len(nodes)), "command_nodes-INITIAL_FORMS": str(len(nodes))})
    for i, node in enumerate(nodes):
        data.update({f"command_nodes-{i}-id": node.pk, f"command_nodes-{i}-cluster": cluster.pk,
                     f"command_nodes-{i}-position": node.position, f"command_nodes-{i}-host": node.host,
                     f"command_nodes-{i}-port": node.port, f"command_nodes-{i}-enabled": "on"})
    data.update(changes)
    return data


def test_saving_with_empty_secret_fields_keeps_them(cast, client_for):
    cluster = SlurmCluster.objects.create(name="hpc", ssh_user="svc", ssh_private_key=FAKE_KEY, known_hosts=FAKE_HOSTS)
    CommandNode.objects.create(cluster=cluster, host="login1.example.org", port=22)
    staff = client_for(cast.staff)
    response = staff.post(change_url(cluster), admin_form_data(cluster, description="edited in the admin"))
    assert response.status_code == 302, response.content.decode()[:3000]
    cluster = SlurmCluster.objects.get(pk=cluster.pk)
    assert cluster.description == "edited in the admin"
    assert cluster.ssh_private_key == FAKE_KEY and cluster.known_hosts == FAKE_HOSTS

    # A new value replaces the stored one (and is not shown back on an error).
    new_hosts = "login1.example.org ssh-ed25519 NEW"
    response = staff.post(change_url(cluster), admin_form_data(cluster, known_hosts=new_hosts))
    assert response.status_code == 302
    assert SlurmCluster.objects.get(pk=cluster.pk).known_hosts == new_hosts
    response = staff.post(change_url(cluster), admin_form_data(cluster, ssh_user="Not A Posix Name!",
                                                               ssh_private_key=FAKE_KEY))
    assert response.status_code == 200 and KEY_BODY not in response.content.decode()
    assert SlurmCluster.objects.get(pk=cluster.pk).ssh_user == "svc"


def test_adding_a_cluster_in_the_admin_requires_the_secrets(cast, client_for):
    staff = client_for(cast.staff)
    cluster = SlurmCluster(name="new", ssh_user="svc")
    data = admin_form_data(cluster)
    response = staff.post(reverse("admin:clusters_slurmcluster_add"), data)
    assert response.status_code == 200 and not SlurmCluster.objects.filter(name="new").exists()
    data.update(ssh_private_key=FAKE_KEY, known_hosts=FAKE_HOSTS)
    response = staff.post(reverse("admin:clusters_slurmcluster_add"), data)
    assert response.status_code == 302
    # (The form strips surrounding whitespace; paramiko reads such keys fine.)
    assert SlurmCluster.objects.get(name="new").ssh_private_key == FAKE_KEY.strip()


def run_action(client, action, cluster):
    response = client.post(reverse("admin:clusters_slurmcluster_changelist"),
                           {"action": action, "_selected_action": [cluster.pk]}, follow=True)
    assert response.status_code == 200
    return [(m.level_tag, m.message) for m in get_messages(response.wsgi_request)]


def test_sync_partitions_action(slurm, client_for):
    cluster = slurm.cluster
    Partition.objects.filter(cluster=cluster).delete()
    messages = run_action(client_for(slurm.staff), "sync_partitions", cluster)
    assert len(messages) == 1
    level, text = messages[0]
    assert level == "info" and "testbed" in text and "debug" in text and "long" in text
    debug = Partition.objects.get(cluster=cluster, name="debug")
    assert debug.max_time_minutes == 30 and debug.is_default
    assert Partition.objects.get(cluster=cluster, name="long").max_time_minutes == 1440


def test_sync_partitions_action_reports_an_unreachable_cluster(cast, client_for):
    cluster = SlurmCluster.objects.create(name="nowhere", ssh_user="svc", ssh_private_key=FAKE_KEY,
                                          known_hosts=FAKE_HOSTS)
    CommandNode.objects.create(cluster=cluster, host="127.0.0.1", port=1)
    messages = run_action(client_for(cast.staff), "sync_partitions", cluster)
    assert messages and messages[0][0] == "error" and messages[0][1].startswith("nowhere:")


def test_resync_jobs_action(slurm, client_for):
    cluster = slurm.cluster
    staff = client_for(slurm.staff)
    assert run_action(staff, "resync_jobs", cluster) == [("info", "testbed: 0 active job(s) checked.")]
    # A job Slurm has never heard of, long enough ago: the resync gives it up as lost.
    job = Job.objects.create(project=slurm.alpha, owner=slurm.alice, cluster=cluster, name="ghost",
                             script="#!/bin/bash\ntrue\n", posix_user="ada", state=State.PENDING,
                             scheduler_id="60000000", state_changed=timezone.now() - timedelta(minutes=11))
    assert run_action(staff, "resync_jobs", cluster) == [("info", "testbed: 1 active job(s) checked.")]
    job.refresh_from_db()
    assert job.state == State.LOST and job.reason


def test_resync_jobs_action_reports_a_cluster_without_command_nodes(cast, client_for):
    cluster = SlurmCluster.objects.create(name="headless", ssh_user="svc", ssh_private_key=FAKE_KEY,
                                          known_hosts=FAKE_HOSTS)
    Job.objects.create(project=cast.alpha, owner=cast.alice, cluster=cluster, name="orphan", script="true",
                       posix_user="ada", state=State.PENDING, scheduler_id="42")
    messages = run_action(client_for(cast.staff), "resync_jobs", cluster)
    assert messages == [("error", "headless: Cluster headless has no enabled command node.")]


# --- partitions and POSIX names against the real cluster -------------------------------------


def test_partitions_sync_against_the_cluster(slurm):
    cluster = slurm.cluster
    Partition.objects.create(cluster=cluster, name="vanished", max_time_minutes=5)
    before = timezone.now()
    partitions = {p.name: p for p in services.partitions_sync(cluster=cluster)}
    assert set(partitions) == {"debug", "long"}
    assert not Partition.objects.filter(cluster=cluster, name="vanished").exists()
    debug, long = partitions["debug"], partitions["long"]
    assert (debug.max_time_minutes, debug.is_default, debug.state) == (30, True, "UP")
    assert (long.max_time_minutes, long.is_default) == (1440, False)
    assert debug.total_nodes >= 1 and debug.total_cpus >= 1
    cluster.refresh_from_db()
    assert cluster.last_sync >= before


def test_posix_username(slurm):
    assert services.posix_username(user=slurm.alice, cluster=slurm.cluster) == "ada"
    with pytest.raises(ValidationError) as info:
        services.posix_username(user=slurm.mallory, cluster=slurm.cluster)
    assert "cluster" in info.value.message_dict
    assert "testbed" in info.value.message_dict["cluster"][0]


def test_failover_to_the_second_command_node_is_visible(slurm, client_for):
    cluster = slurm.cluster
    first, second = CommandNode.objects.filter(cluster=cluster).order_by("position")
    assert (first.port, second.port) == (2222, 2223)
    Partition.objects.filter(cluster=cluster).delete()
    ssh.close_all()
    started = timezone.now()
    subprocess.run([str(TESTBED_SLURM), "stop-node", "2222"], check=True, capture_output=True, timeout=60)
    try:
        names = sorted(p.name for p in services.partitions_sync(cluster=cluster))
        pool = next(iter(ssh._POOLS.values()))
    finally:
        subprocess.run([str(TESTBED_SLURM), "start-node", "2222"], check=True, capture_output=True, timeout=60)
        ssh.close_all()
    assert names == ["debug", "long"]
    assert "127.0.0.1:2222" in pool.last_errors and "127.0.0.1:2223" not in pool.last_errors
    # The admin's node columns say which node failed and which one answered.
    first.refresh_from_db()
    second.refresh_from_db()
    assert "refused" in first.last_error.lower() and first.last_error_at >= started
    assert first.last_ok_at is None or first.last_ok_at < first.last_error_at
    assert second.last_ok_at >= started and not second.last_error
    html = client_for(slurm.staff).get(change_url(cluster)).content.decode()
    assert first.last_error in html
