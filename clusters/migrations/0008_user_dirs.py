from django.db import migrations, models

HELP = ("How the portal sets up a $PREFIX/$USER directory it creates (it never changes one "
        "the service user does not own).")
CHOICES = [("private", "Private: 0700, the user let in by an ACL (needs setfacl on the nodes)"),
           ("shared", "Shared: 1777 like /tmp, so other users can read the output")]


class Migration(migrations.Migration):
    """Clusters that exist keep the shared (1777) directories they had, since
    their nodes may lack setfacl; new clusters are private."""

    dependencies = [
        ("clusters", "0007_submit_lanes"),
    ]

    operations = [
        migrations.AddField(
            model_name="slurmcluster",
            name="user_dirs",
            field=models.CharField(max_length=16, choices=CHOICES, default="shared", help_text=HELP),
        ),
        migrations.AlterField(
            model_name="slurmcluster",
            name="user_dirs",
            field=models.CharField(max_length=16, choices=CHOICES, default="private", help_text=HELP),
        ),
    ]
