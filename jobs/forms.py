from django import forms

from clusters.models import SlurmCluster
from portal.forms import BootstrapMixin
from projects import selectors as project_selectors

from .models import Job, array_spec


class JobComposeForm(BootstrapMixin, forms.Form):
    """The composer: a script (or a template with parameters) plus resources.
    Domain checks (partition limits, quota) happen in jobs.services."""

    project = forms.ModelChoiceField(queryset=None, to_field_name="slug")
    cluster = forms.ModelChoiceField(queryset=SlurmCluster.objects.filter(enabled=True), to_field_name="name")
    template = forms.ModelChoiceField(queryset=None, required=False, empty_label="No template: write a script")
    name = forms.CharField(max_length=100)
    script = forms.CharField(widget=forms.Textarea(attrs={"rows": 12, "class": "font-monospace", "spellcheck": "false"}),
                             required=False, help_text="Bash; #SBATCH lines are allowed but the fields below win.")
    partition = forms.CharField(required=False, max_length=64, help_text="Empty: the cluster's default partition.")
    nodes = forms.IntegerField(min_value=1, max_value=1024, initial=1)
    cpus = forms.IntegerField(label="CPUs per task", min_value=1, max_value=4096, initial=1)
    memory_mb = forms.IntegerField(label="Memory (MB per node)", min_value=1, required=False)
    time_limit_minutes = forms.IntegerField(label="Time limit (minutes)", min_value=1, max_value=525600,
                                            required=False, help_text="Empty: the partition's default.")
    gpus = forms.IntegerField(label="GPUs", min_value=0, max_value=64, initial=0)
    array = forms.CharField(required=False, max_length=100, validators=[array_spec],
                            help_text="Job array, e.g. 0-9 or 1,3,5%2. Empty: a single job.")

    def __init__(self, *args, user, template=None, **kwargs):
        super().__init__(*args, **kwargs)
        from .services import templates_visible_to

        self.fields["project"].queryset = project_selectors.projects_visible_to(user).filter(status="active")
        self.fields["template"].queryset = templates_visible_to(user)
        self.template = template
        if template is not None:
            self.fields["script"].widget = forms.HiddenInput()
            for spec in template.parameters:
                self.fields[f"param_{spec['name']}"] = self._parameter_field(spec)
        self._bootstrap()

    def _bootstrap(self):
        for field in self.fields.values():
            widget = field.widget
            if isinstance(widget, forms.HiddenInput):
                continue
            css = "form-select" if isinstance(widget, forms.Select) else "form-control"
            if css not in widget.attrs.get("class", ""):
                widget.attrs["class"] = f"{widget.attrs.get('class', '')} {css}".strip()

    @staticmethod
    def _parameter_field(spec):
        label = spec.get("label", spec["name"])
        kind = spec.get("type", "str")
        if kind == "int":
            return forms.IntegerField(label=label, initial=spec.get("default"), min_value=spec.get("min"),
                                      max_value=spec.get("max"), help_text=spec.get("help", ""))
        if kind == "choice":
            return forms.ChoiceField(label=label, initial=spec.get("default"),
                                     choices=[(c, c) for c in spec.get("choices", [])])
        return forms.CharField(label=label, initial=spec.get("default"), max_length=spec.get("max_length", 1000),
                               help_text=spec.get("help", ""))

    @property
    def parameter_fields(self):
        return [self[name] for name in self.fields if name.startswith("param_")]

    def service_kwargs(self):
        data = dict(self.cleaned_data)
        parameters = {k[len("param_"):]: data.pop(k) for k in list(data) if k.startswith("param_")}
        kwargs = {k: data[k] for k in ("name", "partition", "nodes", "cpus", "memory_mb", "time_limit_minutes",
                                       "gpus", "array")}
        kwargs.update(project=data["project"], cluster=data["cluster"])
        if self.template is not None:
            kwargs.update(template=self.template, parameters=parameters)
        else:
            kwargs["script"] = data["script"]
        return kwargs


class JobFilterForm(forms.Form):
    q = forms.CharField(required=False)
    project = forms.CharField(required=False)
    state = forms.ChoiceField(required=False, choices=[("", "Any state"), *Job._meta.get_field("state").choices])
    cluster = forms.CharField(required=False)
