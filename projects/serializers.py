from rest_framework import serializers

from .models import Membership, Project, Quota


class MemberSerializer(serializers.ModelSerializer):
    username = serializers.CharField(source="user.username")
    email = serializers.EmailField(source="user.email")
    name = serializers.CharField(source="user.get_full_name")

    class Meta:
        model = Membership
        fields = ["username", "email", "name", "role", "source", "created"]


class QuotaSerializer(serializers.ModelSerializer):
    resource_label = serializers.CharField(source="get_resource_display")
    percent = serializers.IntegerField()

    class Meta:
        model = Quota
        fields = ["resource", "resource_label", "limit", "per_member_limit", "used", "reserved", "percent"]


class ProjectListSerializer(serializers.ModelSerializer):
    role = serializers.SerializerMethodField()

    class Meta:
        model = Project
        fields = ["slug", "name", "description", "status", "created", "role"]

    def get_role(self, project) -> str | None:
        roles = self.context.get("roles", {})
        return roles.get(project.pk)


class ProjectDetailSerializer(ProjectListSerializer):
    members = MemberSerializer(source="memberships", many=True)
    quotas = serializers.SerializerMethodField()

    class Meta(ProjectListSerializer.Meta):
        fields = ProjectListSerializer.Meta.fields + ["members", "quotas"]

    def get_quotas(self, project) -> list[dict]:
        return QuotaSerializer(project.sorted_quotas(), many=True).data
