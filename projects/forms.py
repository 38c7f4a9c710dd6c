from django import forms

from portal.forms import BootstrapMixin

from .models import Membership, Project, Quota, Resource


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


class QuotaRequestForm(BootstrapMixin, forms.Form):
    resource = forms.ChoiceField(choices=Resource.choices)
    requested_limit = forms.IntegerField(label="New limit", min_value=0)
    end_date = forms.DateField(required=False, widget=forms.DateInput(attrs={"type": "date"}),
                               help_text="Empty: a permanent change. Otherwise the limit falls back after this day.")
    justification = forms.CharField(widget=forms.Textarea(attrs={"rows": 4}),
                                    help_text="What the resources are for, and why the current limit is not enough.")


class QuotaDecisionForm(BootstrapMixin, forms.Form):
    decision = forms.ChoiceField(choices=[("approved", "Approve as requested"), ("partial", "Approve another value"),
                                          ("denied", "Deny")])
    approved_limit = forms.IntegerField(required=False, min_value=0, label="Limit granted (partial approval)")
    comment = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}),
                              help_text="Shown to the requester; required when denying.")
