from django import forms

from portal.forms import BootstrapMixin

from .models import Membership, Project, Quota


class InvitationForm(BootstrapMixin, forms.Form):
    email = forms.EmailField(label="E-mail address", help_text="They get a link to join; signing in with this address also joins.")
    role = forms.ChoiceField(choices=Membership.Role.choices, initial=Membership.Role.MEMBER)


class MembershipRoleForm(forms.Form):
    role = forms.ChoiceField(choices=Membership.Role.choices)


class ProjectForm(BootstrapMixin, forms.ModelForm):
    class Meta:
        model = Project
        fields = ["name", "description", "status"]
        widgets = {"description": forms.Textarea(attrs={"rows": 3})}


class QuotaForm(BootstrapMixin, forms.ModelForm):
    class Meta:
        model = Quota
        fields = ["limit", "per_member_limit"]

    def clean(self):
        data = super().clean()
        limit, per_member = data.get("limit"), data.get("per_member_limit")
        if limit is not None and per_member is not None and per_member > limit:
            self.add_error("per_member_limit", "The per-member limit cannot exceed the project's total.")
        return data
