"""Usage reports: computed once here, rendered as a page, CSV, XLSX and PDF.

Every Slurm number comes from the DailyUsage rollup (one row per day, cluster,
project, user and resource), never from the raw UsageRecord table -- except
the project report's "top jobs" list, which reads UsageRecord with a query
bounded by the project and the period's end times (the BRIN index on `end`).
Every VM number (VM core-hours, RAM-GB-hours, disk-GB-hours,
volume-GB-hours) comes from the CloudDailyUsage rollup (accounting.vm_usage),
never from the servers' billing intervals or the volumes. VM amounts sit next
to the Slurm ones under their own keys (VM_KEYS), so the Slurm rows and
totals keep their shape.

Amounts are rounded here (ROUND digits) so that the page and every export
show the same numbers. Days are UTC days, as in the rollup: a job's whole
usage counts on the day it ended; a VM's usage is split at UTC midnight.
"""
import math
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone as dt_timezone

from django.contrib.auth import get_user_model
from django.db.models import Case, F, FloatField, OuterRef, Q, Subquery, Sum, Value, When
from django.db.models.functions import Cast, Coalesce, Trunc
from django.utils import timezone

from clusters.models import Cloud, SlurmCluster
from projects.models import Membership, Project, Quota, QuotaRequest, Resource

from .models import CloudDailyUsage, DailyUsage, UsageRecord

R = DailyUsage.Resource
RESOURCES = (R.CORE_HOURS, R.GPU_HOURS, R.JOBS)
VR = CloudDailyUsage.Resource
VM_RESOURCES = (VR.VM_CORE_HOURS, VR.RAM_GB_HOURS, VR.DISK_GB_HOURS, VR.VOLUME_GB_HOURS)
VM_KEYS = tuple(r.value for r in VM_RESOURCES)  # keys of the VM amounts in every row dict
VM_LABELS = {r.value: r.label for r in VM_RESOURCES}  # column titles
VM_OTHER_KEYS = VM_KEYS[1:]  # after VM core-hours: the member table shows these without a share
ALL_RESOURCES = RESOURCES + VM_RESOURCES  # what the API returns, in this order
PERIODS = ("day", "week", "month")
DEFAULT_DAYS = 30  # default report range: the last 30 days, today included
MAX_DAYS = 5 * 366  # longest range a report or the API accepts
BURN_WINDOW = 14  # days averaged for the burn-down rate
HORIZON_DAYS = 365  # how far the burn-down looks ahead (without a temporary limit)
TOP_JOBS = 10
ROUND = 2  # decimals of hours in every report and export
PCT_ROUND = 1  # decimals of percentages


def today_utc():
    return timezone.now().astimezone(dt_timezone.utc).date()


def hours(value):
    return round(float(value or 0), ROUND)


def pct(part, whole):
    """part / whole in percent, or None when there is no whole."""
    if not whole:
        return None
    return round(100 * part / whole, PCT_ROUND)


# -- parameters -------------------------------------------------------------------------


class ParamError(ValueError):
    """Bad report parameters: `errors` maps the field name to a message."""

    def __init__(self, errors):
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))
        self.errors = errors


@dataclass(frozen=True)
class Range:
    start: date
    end: date  # inclusive
    period: str = "day"

    @property
    def days(self):
        return (self.end - self.start).days + 1

    @property
    def lo(self):
        """First instant of the range (UTC), for UsageRecord.end."""
        return datetime.combine(self.start, datetime.min.time(), tzinfo=dt_timezone.utc)

    @property
    def hi(self):
        """First instant after the range (UTC)."""
        return datetime.combine(self.end + timedelta(days=1), datetime.min.time(), tzinfo=dt_timezone.utc)

    def query(self):
        return {"start": self.start.isoformat(), "end": self.end.isoformat(), "period": self.period}


def default_period(days):
    return "day" if days <= 92 else "week" if days <= 731 else "month"


def parse_date(value, name):
    try:
        return date.fromisoformat(value)
    except (TypeError, ValueError):
        raise ParamError({name: f"{value!r} is not a date (YYYY-MM-DD)."}) from None


def parse_range(params, *, today=None, period_field="period"):
    """start/end/period from a QueryDict or dict. Defaults: the last
    DEFAULT_DAYS days up to today, a grouping that suits the length.
    Raises ParamError naming every bad field."""
    today = today or today_utc()
    errors = {}
    start = end = None
    raw_start, raw_end = (params.get("start") or "").strip(), (params.get("end") or "").strip()
    try:
        end = parse_date(raw_end, "end") if raw_end else today
    except ParamError as e:
        errors.update(e.errors)
    try:
        start = parse_date(raw_start, "start") if raw_start else (end or today) - timedelta(days=DEFAULT_DAYS - 1)
    except ParamError as e:
        errors.update(e.errors)
    if start and end:
        if start > end:
            errors["start"] = "The start is after the end."
        elif (end - start).days + 1 > MAX_DAYS:
            errors["start"] = f"At most {MAX_DAYS} days at once."
    period = (params.get(period_field) or "").strip() if period_field else ""
    if period and period not in PERIODS:
        errors[period_field] = f"{period!r} is not one of {', '.join(PERIODS)}."
    if errors:
        raise ParamError(errors)
    return Range(start, end, period or default_period((end - start).days + 1))


def parse_range_or_default(params, *, today=None):
    """For pages: (Range, errors); a bad field falls back to its default."""
    try:
        return parse_range(params, today=today), {}
    except ParamError as e:
        clean = {k: v for k, v in params.items() if k not in e.errors and k in ("start", "end", "period")}
        if "start" in e.errors or "end" in e.errors:
            clean.pop("start", None)
            clean.pop("end", None)
        return parse_range(clean, today=today), e.errors


# -- tables: what every export renders ----------------------------------------------------


@dataclass
class Table:
    name: str  # short, for ?table= and sheet names
    title: str
    columns: list
    rows: list  # lists of str / int / float / date / None


# -- buckets --------------------------------------------------------------------------


def bucket_start(day, period):
    if period == "week":
        return day - timedelta(days=day.weekday())
    if period == "month":
        return day.replace(day=1)
    return day


def bucket_label(start, period):
    if period == "week":
        year, week, _ = start.isocalendar()
        return f"{year}-W{week:02d}"
    if period == "month":
        return start.strftime("%Y-%m")
    return start.isoformat()


def buckets(rng):
    """Start dates of every bucket that meets the range."""
    out, current = [], bucket_start(rng.start, rng.period)
    while current <= rng.end:
        out.append(current)
        if rng.period == "week":
            current += timedelta(days=7)
        elif rng.period == "month":
            current = (current.replace(day=28) + timedelta(days=4)).replace(day=1)
        else:
            current += timedelta(days=1)
    return out


def _as_date(value):
    return value.date() if isinstance(value, datetime) else value


def _bucket_sums(qs, rng):
    """{(bucket start, resource): amount} of a DailyUsage or CloudDailyUsage
    queryset over the range, in one query."""
    sums = {}
    grouped = (qs.filter(day__gte=rng.start, day__lte=rng.end)
               .annotate(bucket=Trunc("day", rng.period, output_field=qs.model._meta.get_field("day")))
               .values("bucket", "resource").annotate(total=Sum("amount")).order_by())
    for row in grouped:
        sums[(_as_date(row["bucket"]), row["resource"])] = row["total"]
    return sums


def series(qs, rng):
    """[{start, label, core_hours, gpu_hours, jobs}] for every bucket of the
    range (zeros included), summed from a DailyUsage queryset in one query."""
    sums = _bucket_sums(qs, rng)
    out = []
    for start in buckets(rng):
        out.append({
            "start": start, "label": bucket_label(start, rng.period),
            "core_hours": hours(sums.get((start, R.CORE_HOURS))),
            "gpu_hours": hours(sums.get((start, R.GPU_HOURS))),
            "jobs": int(round(sums.get((start, R.JOBS)) or 0)),
        })
    return out


def vm_series(qs, rng):
    """[{start, label, <VM keys>}] for every bucket of the range (zeros
    included), from a CloudDailyUsage queryset in one query; the same buckets
    as `series`."""
    sums = _bucket_sums(qs, rng)
    return [{"start": start, "label": bucket_label(start, rng.period),
             **{key: hours(sums.get((start, key))) for key in VM_KEYS}} for start in buckets(rng)]


def vm_chart_data(points, *, title):
    """The VM chart (static/js/charts.js): one bar series per VM resource."""
    return {
        "title": title,
        "labels": [p["label"] for p in points],
        "datasets": [{"label": VM_LABELS[key], "data": [p[key] for p in points], "axis": "hours"}
                     for key in VM_KEYS],
    }


def _vm_amounts(sums):
    """{vm key: rounded amount} from {resource: amount}."""
    return {key: hours(sums.get(key)) for key in VM_KEYS}


def chart_data(points, *, title):
    """What static/js/charts.js draws (passed with json_script)."""
    return {
        "title": title,
        "labels": [p["label"] for p in points],
        "datasets": [
            {"label": "Core-hours", "data": [p["core_hours"] for p in points], "axis": "hours"},
            {"label": "GPU-hours", "data": [p["gpu_hours"] for p in points], "axis": "hours"},
            {"label": "Jobs", "data": [p["jobs"] for p in points], "axis": "jobs", "type": "line"},
        ],
    }


def _totals_by(qs, *fields):
    """{(field values..., resource): amount} summed over a DailyUsage queryset."""
    out = {}
    for row in qs.values(*fields, "resource").annotate(total=Sum("amount")).order_by():
        out[tuple(row[f] for f in fields) + (row["resource"],)] = row["total"] or 0
    return out


def _user_label(user):
    if user is None:
        return "(no portal user)"
    return user.get_full_name() or user.username


# -- the project report -----------------------------------------------------------------


@dataclass
class Burndown:
    status: str  # "runs_out", "beyond", "no_usage", "exhausted", "no_quota"
    rate: float  # core-hours per day, average of the window
    window_start: date
    window_end: date
    limit: int = 0
    consumed: int = 0
    remaining: int = 0
    runs_out: date | None = None
    horizon: date | None = None
    horizon_reason: str = ""

    @property
    def sentence(self):
        if self.status == "no_quota":
            return "The project has no core-hour quota."
        if self.status == "exhausted":
            return "The core-hour quota is used up."
        if self.status == "no_usage":
            return (f"No recent usage: no core-hours in the {BURN_WINDOW} days "
                    f"{self.window_start.isoformat()} to {self.window_end.isoformat()}.")
        rate = f"{self.rate:,.{ROUND}f} core-hours a day"
        if self.status == "runs_out":
            return (f"At the current rate ({rate}, the average of the last {BURN_WINDOW} days) "
                    f"the core-hour quota runs out on {self.runs_out.isoformat()}.")
        return (f"At the current rate ({rate}, the average of the last {BURN_WINDOW} days) "
                f"the core-hour quota lasts beyond {self.horizon_reason} ({self.horizon.isoformat()}).")


def burndown(project, *, today=None, quota=None):
    """Project the core-hour quota forward at the average daily use of the last
    BURN_WINDOW complete days (today - BURN_WINDOW .. yesterday): it runs out
    remaining / rate days from today (rounded down), remaining = limit - (used +
    reserved) of the core-hour quota. The horizon is the end of a temporary core-hour
    limit if one is in force, else HORIZON_DAYS from today."""
    today = today or today_utc()
    window_start, window_end = today - timedelta(days=BURN_WINDOW), today - timedelta(days=1)
    if quota is None:
        quota = Quota.objects.filter(project=project, resource=Resource.CORE_HOURS).first()
    used = (DailyUsage.objects.filter(project=project, resource=R.CORE_HOURS,
                                      day__gte=window_start, day__lte=window_end)
            .aggregate(total=Sum("amount"))["total"] or 0)
    rate = used / BURN_WINDOW
    b = Burndown(status="no_quota", rate=hours(rate), window_start=window_start, window_end=window_end)
    if quota is None or quota.limit <= 0:
        return b
    b.limit, b.consumed = quota.limit, quota.consumed
    b.remaining = max(quota.limit - quota.consumed, 0)
    temporary = (QuotaRequest.objects.filter(
        project=project, resource=Resource.CORE_HOURS, status__in=[QuotaRequest.Status.APPROVED,
                                                                     QuotaRequest.Status.PARTIAL],
        end_date__isnull=False, end_date__gte=today, expired_at__isnull=True).order_by("-decided_at").first())
    if temporary is not None:
        b.horizon, b.horizon_reason = temporary.end_date, "the end of the temporary limit"
    else:
        b.horizon, b.horizon_reason = today + timedelta(days=HORIZON_DAYS), "one year from now"
    if b.remaining <= 0:
        b.status = "exhausted"
        return b
    if rate <= 0:
        b.status = "no_usage"
        return b
    # remaining / rate days from today, rounded down to whole days.
    days_left = math.floor(b.remaining / rate)
    if days_left > (b.horizon - today).days:
        b.status = "beyond"
    else:
        b.status, b.runs_out = "runs_out", today + timedelta(days=days_left)
    return b


@dataclass
class ProjectReport:
    project: Project
    range: Range
    quotas: list
    points: list
    members: list
    totals: dict
    top_jobs: list
    burndown: Burndown
    vm_points: list = field(default_factory=list)  # vm_series, the same buckets as points
    vm_totals: dict = field(default_factory=dict)  # {vm key: amount}
    generated: datetime = field(default_factory=timezone.now)

    kind = "project"

    @property
    def title(self):
        return f"Usage of {self.project.name} ({self.project.slug})"

    @property
    def filename(self):
        return f"usage-{self.project.slug}-{self.range.start}-{self.range.end}"

    def chart(self):
        return chart_data(self.points, title=f"Usage per {self.range.period}")

    def vm_chart(self):
        return vm_chart_data(self.vm_points, title=f"VM usage per {self.range.period}")

    def tables(self):
        vm_total = self.vm_totals
        return [
            Table("quotas", "Quotas", ["Resource", "Used", "Reserved", "Limit", "Per member", "Percent"],
                  [[q.get_resource_display(), q.used, q.reserved, q.limit, q.per_member_limit, q.percent]
                   for q in self.quotas]),
            # VM columns are appended, so the Slurm columns keep their places
            Table("usage", f"Usage per {self.range.period}",
                  ["Period", "Start", "Core-hours", "GPU-hours", "Jobs"] + [VM_LABELS[k] for k in VM_KEYS],
                  [[p["label"], p["start"], p["core_hours"], p["gpu_hours"], p["jobs"]] + [v[k] for k in VM_KEYS]
                   for p, v in zip(self.points, self.vm_points)]),
            Table("members", "Usage per member",
                  ["User", "Name", "Role", "Core-hours", "Core-hours %", "GPU-hours", "GPU-hours %", "Jobs", "Jobs %",
                   "VM core-hours", "VM core-hours %"] + [VM_LABELS[k] for k in VM_OTHER_KEYS],
                  [[m["username"], m["name"], m["role"], m["core_hours"], m["core_pct"], m["gpu_hours"],
                    m["gpu_pct"], m["jobs"], m["jobs_pct"], m["vm_core_hours"], m["vm_core_pct"]]
                   + [m[k] for k in VM_OTHER_KEYS] for m in self.members]
                  + [["", "Total", "", self.totals["core_hours"], 100.0 if self.totals["core_hours"] else None,
                      self.totals["gpu_hours"], 100.0 if self.totals["gpu_hours"] else None, self.totals["jobs"],
                      100.0 if self.totals["jobs"] else None, vm_total["vm_core_hours"],
                      100.0 if vm_total["vm_core_hours"] else None] + [vm_total[k] for k in VM_OTHER_KEYS]]),
            Table("top_jobs", f"Top {TOP_JOBS} jobs by core-hours",
                  ["Cluster", "Job id", "Name", "User", "State", "CPUs", "GPUs", "Ended", "Core-hours", "GPU-hours"],
                  [[j["cluster"], j["job_id"], j["name"], j["user"], j["state"], j["cpus"], j["gpus"],
                    j["end"], j["core_hours"], j["gpu_hours"]] for j in self.top_jobs]),
            Table("burndown", "Core-hour projection",
                  ["Status", "Rate per day", "Window start", "Window end", "Limit", "Consumed", "Remaining",
                   "Runs out on", "Horizon", "Summary"],
                  [[self.burndown.status, self.burndown.rate, self.burndown.window_start, self.burndown.window_end,
                    self.burndown.limit, self.burndown.consumed, self.burndown.remaining, self.burndown.runs_out,
                    self.burndown.horizon, self.burndown.sentence]]),
        ]


def top_jobs(project, rng, limit=TOP_JOBS):
    """The project's largest jobs (by CPU time) that ended in the range: the
    one report query on UsageRecord, bounded by project and end time."""
    records = (UsageRecord.objects
               .filter(project_id=project.pk, end__gte=rng.lo, end__lt=rng.hi)
               .select_related("cluster", "user")
               .order_by("-cpu_seconds", "-end", "pk")[:limit])
    return [{
        "cluster": r.cluster.name, "job_id": r.job_id, "name": r.job_name,
        "user": r.user.username if r.user else r.posix_user, "state": r.state,
        "cpus": r.alloc_cpus, "gpus": r.alloc_gpus, "end": r.end,
        "core_hours": hours(r.core_hours), "gpu_hours": hours(r.gpu_hours),
        "portal_job_id": r.portal_job_id,
    } for r in records]


def member_breakdown(project, rng):
    """Per user: core-hours, GPU-hours and jobs in the range with their share of
    the project's total, and the VM core-, RAM-, disk- and volume-GB-hours
    of the servers and volumes they own; current members without usage are
    listed with zeros, former members and unmapped usage (no portal user)
    with what they used. Returns (rows, Slurm totals, VM totals)."""
    qs = DailyUsage.objects.filter(project=project, day__gte=rng.start, day__lte=rng.end)
    sums = _totals_by(qs, "user_id")
    vm_sums = _totals_by(CloudDailyUsage.objects.filter(project=project, day__gte=rng.start, day__lte=rng.end),
                         "user_id")
    roles = dict(Membership.objects.filter(project=project).values_list("user_id", "role"))
    user_ids = set(roles) | {k[0] for k in sums if k[0] is not None} | {k[0] for k in vm_sums}
    users = {u.pk: u for u in get_user_model().objects.filter(pk__in=user_ids)}
    keys = sorted(user_ids, key=lambda pk: users[pk].username) + ([None] if any(k[0] is None for k in sums) else [])
    totals = {
        "core_hours": hours(sum(v for k, v in sums.items() if k[1] == R.CORE_HOURS)),
        "gpu_hours": hours(sum(v for k, v in sums.items() if k[1] == R.GPU_HOURS)),
        "jobs": int(round(sum(v for k, v in sums.items() if k[1] == R.JOBS))),
    }
    vm_totals = {key: hours(sum(v for k, v in vm_sums.items() if k[1] == key)) for key in VM_KEYS}
    rows = []
    for pk in keys:
        user = users.get(pk)
        core, gpu = hours(sums.get((pk, R.CORE_HOURS))), hours(sums.get((pk, R.GPU_HOURS)))
        jobs = int(round(sums.get((pk, R.JOBS)) or 0))
        vm = _vm_amounts({key: vm_sums.get((pk, key)) for key in VM_KEYS})
        rows.append({
            "user_id": pk, "username": user.username if user else "", "name": _user_label(user),
            "role": roles.get(pk, "former member" if user else ""),
            "core_hours": core, "core_pct": pct(core, totals["core_hours"]),
            "gpu_hours": gpu, "gpu_pct": pct(gpu, totals["gpu_hours"]),
            "jobs": jobs, "jobs_pct": pct(jobs, totals["jobs"]),
            **vm, "vm_core_pct": pct(vm["vm_core_hours"], vm_totals["vm_core_hours"]),
        })
    rows.sort(key=lambda r: (-r["core_hours"], -r["vm_core_hours"], r["user_id"] is None, r["username"]))
    return rows, totals, vm_totals


def project_report(project, rng, *, today=None):
    quotas = project.sorted_quotas()
    quota = next((q for q in quotas if q.resource == Resource.CORE_HOURS), None)
    members, totals, vm_totals = member_breakdown(project, rng)
    return ProjectReport(
        project=project, range=rng, quotas=quotas,
        points=series(DailyUsage.objects.filter(project=project), rng),
        members=members, totals=totals, top_jobs=top_jobs(project, rng),
        burndown=burndown(project, today=today, quota=quota),
        vm_points=vm_series(CloudDailyUsage.objects.filter(project=project), rng), vm_totals=vm_totals,
    )


# -- the site report --------------------------------------------------------------------

SITE_SORTS = {"usage": "core_hours", "percent": "percent", "name": "name", "limit": "limit",
              "vm": "vm_core_hours", "ram": "ram_gb_hours", "disk": "disk_gb_hours", "volume": "volume_gb_hours"}
SITE_DEFAULT_SORT = "-usage"


@dataclass
class SiteReport:
    range: Range
    cluster: SlurmCluster | None  # narrows the Slurm columns
    sort: str
    queryset: object  # projects annotated with core_hours, limit, percent and the VM keys (sorted)
    total_core_hours: float
    unmapped_core_hours: float
    cloud: Cloud | None = None  # narrows the VM columns
    vm_totals: dict = field(default_factory=dict)  # {vm key: amount}, every project
    generated: datetime = field(default_factory=timezone.now)

    kind = "site"
    title = "Site usage"

    @property
    def filename(self):
        suffix = f"-{self.cluster.name}" if self.cluster else ""
        suffix += f"-cloud-{self.cloud.name}" if self.cloud else ""
        return f"usage-site{suffix}-{self.range.start}-{self.range.end}"

    @staticmethod
    def row(p):
        return {"project": p, "slug": p.slug, "name": p.name, "status": p.status,
                "core_hours": hours(p.core_hours), "limit": p.limit,
                "percent": None if p.percent is None else round(p.percent, PCT_ROUND),
                **{key: hours(getattr(p, key)) for key in VM_KEYS}}

    def rows(self, projects=None):
        return [self.row(p) for p in (self.queryset if projects is None else projects)]

    def tables(self):
        return [Table("projects", "Usage per project",
                      ["Project", "Name", "Status", "Core-hours", "Core-hour limit", "Percent of limit"]
                      + [VM_LABELS[k] for k in VM_KEYS],
                      [[r["slug"], r["name"], r["status"], r["core_hours"], r["limit"], r["percent"]]
                       + [r[k] for k in VM_KEYS] for r in self.rows()])]


def site_report(rng, *, cluster=None, cloud=None, sort=SITE_DEFAULT_SORT):
    """Every project with the core-hours it used in the range (on `cluster`,
    or everywhere), its core-hour limit and the share of it, and its VM
    core-, RAM-, disk- and volume-GB-hours (on `cloud`, or everywhere); one
    query, sorted in the database (percent: projects without a limit last)."""
    if sort.lstrip("-") not in SITE_SORTS:
        sort = SITE_DEFAULT_SORT
    usage = DailyUsage.objects.filter(resource=R.CORE_HOURS, day__gte=rng.start, day__lte=rng.end)
    if cluster is not None:
        usage = usage.filter(cluster=cluster)
    vm_usage = CloudDailyUsage.objects.filter(day__gte=rng.start, day__lte=rng.end)
    if cloud is not None:
        vm_usage = vm_usage.filter(cloud=cloud)
    per_project = (usage.filter(project=OuterRef("pk")).order_by().values("project")
                   .annotate(total=Sum("amount")).values("total"))

    def vm_per_project(key):
        return Coalesce(Subquery(vm_usage.filter(project=OuterRef("pk"), resource=key).order_by()
                                 .values("project").annotate(total=Sum("amount")).values("total"),
                                 output_field=FloatField()), Value(0.0))

    limit = Quota.objects.filter(project=OuterRef("pk"), resource=Resource.CORE_HOURS).values("limit")[:1]
    qs = Project.objects.annotate(
        core_hours=Coalesce(Subquery(per_project, output_field=FloatField()), Value(0.0)),
        limit=Coalesce(Subquery(limit), Value(0)),
        **{key: vm_per_project(key) for key in VM_KEYS},
    ).annotate(percent=_percent_expression())
    field_name = SITE_SORTS[sort.lstrip("-")]
    desc = sort.startswith("-")
    order = F(field_name).desc(nulls_last=True) if desc else F(field_name).asc(nulls_last=True)
    qs = qs.order_by(order, "name", "pk")
    totals = usage.aggregate(total=Sum("amount"), unmapped=Sum("amount", filter=Q(project__isnull=True)))
    vm_totals = vm_usage.aggregate(**{key: Sum("amount", filter=Q(resource=key)) for key in VM_KEYS})
    return SiteReport(range=rng, cluster=cluster, cloud=cloud, sort=sort, queryset=qs,
                      total_core_hours=hours(totals["total"]), unmapped_core_hours=hours(totals["unmapped"]),
                      vm_totals=_vm_amounts(vm_totals))


def _percent_expression():
    return Case(When(limit__gt=0, then=F("core_hours") * 100.0 / Cast("limit", FloatField())),
                default=None, output_field=FloatField())


# -- the personal report ----------------------------------------------------------------


@dataclass
class PersonalReport:
    user: object
    range: Range
    projects: list  # [{project, slug, name, core_hours, gpu_hours, jobs}]: Slurm
    days: list  # [{day, slug, name, core_hours, gpu_hours, jobs, <VM keys>}], newest first
    points: list
    totals: dict
    vm_projects: list = field(default_factory=list)  # [{project, slug, name, <VM keys>}]: your servers, volumes
    vm_points: list = field(default_factory=list)
    vm_totals: dict = field(default_factory=dict)
    generated: datetime = field(default_factory=timezone.now)

    kind = "me"

    @property
    def title(self):
        return f"Usage of {_user_label(self.user)}"

    @property
    def filename(self):
        return f"usage-{self.user.username}-{self.range.start}-{self.range.end}"

    def chart(self):
        return chart_data(self.points, title=f"Your usage per {self.range.period}")

    def vm_chart(self):
        return vm_chart_data(self.vm_points, title=f"Your VM usage per {self.range.period}")

    def tables(self):
        vm_columns = [VM_LABELS[k] for k in VM_KEYS]
        return [
            Table("projects", "Per project", ["Project", "Name", "Core-hours", "GPU-hours", "Jobs"],
                  [[p["slug"], p["name"], p["core_hours"], p["gpu_hours"], p["jobs"]] for p in self.projects]
                  + [["", "Total", self.totals["core_hours"], self.totals["gpu_hours"], self.totals["jobs"]]]),
            Table("vm_projects", "VMs per project", ["Project", "Name"] + vm_columns,
                  [[p["slug"], p["name"]] + [p[k] for k in VM_KEYS] for p in self.vm_projects]
                  + [["", "Total"] + [self.vm_totals[k] for k in VM_KEYS]]),
            Table("days", "Per day", ["Day", "Project", "Core-hours", "GPU-hours", "Jobs"] + vm_columns,
                  [[d["day"], d["slug"], d["core_hours"], d["gpu_hours"], d["jobs"]] + [d[k] for k in VM_KEYS]
                   for d in self.days]),
        ]


def personal_report(user, rng):
    """The user's own usage: Slurm jobs they ran (per project, Slurm only),
    the servers and volumes they own (per project, VM only), and both per
    day."""
    qs = DailyUsage.objects.filter(user=user, day__gte=rng.start, day__lte=rng.end)
    per_day = _totals_by(qs, "day", "project_id")
    vm_per_day = _totals_by(CloudDailyUsage.objects.filter(user=user, day__gte=rng.start, day__lte=rng.end),
                            "day", "project_id")
    project_ids = {k[1] for k in per_day if k[1] is not None} | {k[1] for k in vm_per_day}
    projects = {p.pk: p for p in Project.objects.filter(pk__in=project_ids)}

    def names(pk):
        p = projects.get(pk)
        return (p.slug, p.name) if p else ("", "(unmapped account)")

    by_project, vm_by_project, days = {}, {}, {}
    for (day, pk, resource), amount in per_day.items():
        for bucket in (by_project.setdefault(pk, {}), days.setdefault((day, pk), {})):
            bucket[resource] = bucket.get(resource, 0) + amount
    for (day, pk, resource), amount in vm_per_day.items():
        for bucket in (vm_by_project.setdefault(pk, {}), days.setdefault((day, pk), {})):
            bucket[resource] = bucket.get(resource, 0) + amount

    def row(sums):
        return {"core_hours": hours(sums.get(R.CORE_HOURS)), "gpu_hours": hours(sums.get(R.GPU_HOURS)),
                "jobs": int(round(sums.get(R.JOBS, 0)))}

    project_rows = [{"project": projects.get(pk), "slug": names(pk)[0], "name": names(pk)[1], **row(s)}
                    for pk, s in by_project.items()]
    project_rows.sort(key=lambda r: (-r["core_hours"], r["slug"] == "", r["slug"]))
    vm_rows = [{"project": projects.get(pk), "slug": names(pk)[0], "name": names(pk)[1], **_vm_amounts(s)}
               for pk, s in vm_by_project.items()]
    vm_rows.sort(key=lambda r: (-r["vm_core_hours"], -r["disk_gb_hours"], -r["volume_gb_hours"], r["slug"]))
    day_rows = [{"day": day, "slug": names(pk)[0], "name": names(pk)[1], **row(s), **_vm_amounts(s)}
                for (day, pk), s in days.items()]
    day_rows.sort(key=lambda r: (r["day"], r["slug"]), reverse=True)
    totals = {"core_hours": hours(sum(s.get(R.CORE_HOURS, 0) for s in by_project.values())),
              "gpu_hours": hours(sum(s.get(R.GPU_HOURS, 0) for s in by_project.values())),
              "jobs": int(round(sum(s.get(R.JOBS, 0) for s in by_project.values())))}
    vm_totals = {key: hours(sum(s.get(key, 0) for s in vm_by_project.values())) for key in VM_KEYS}
    return PersonalReport(user=user, range=rng, projects=project_rows, days=day_rows,
                          points=series(DailyUsage.objects.filter(user=user), rng), totals=totals,
                          vm_projects=vm_rows, vm_points=vm_series(CloudDailyUsage.objects.filter(user=user), rng),
                          vm_totals=vm_totals)


# -- the API's aggregates ---------------------------------------------------------------

GROUP_BY = ("user", "day", "cluster", "resource")


CLOUD_PREFIX = "cloud:"  # group_by=cluster keys of VM usage: "cloud:<cloud name>"


def usage_aggregates(qs, rng, group_by, *, vm_qs=None):
    """[{key, resource, amount}] summed from a DailyUsage queryset and a
    CloudDailyUsage queryset (both already limited to what the caller may
    see; either may be None) over the range, grouped by `group_by` and
    resource. With group_by=cluster, VM usage is keyed "cloud:<name>"; with
    group_by=day or user, Slurm and VM rows of the same key sit side by side
    (their resources differ)."""
    out = []
    for source in (qs, vm_qs):
        if source is None:
            continue
        source = source.filter(day__gte=rng.start, day__lte=rng.end).order_by()
        is_vm = source.model is CloudDailyUsage
        cluster_field = "cloud__name" if is_vm else "cluster__name"
        key_field = {"user": "user__username", "day": "day", "cluster": cluster_field,
                     "resource": "resource"}[group_by]
        fields = [key_field] if group_by == "resource" else [key_field, "resource"]
        for r in source.values(*fields).annotate(total=Sum("amount")):
            key = r[key_field]
            if isinstance(key, date):
                key = key.isoformat()
            elif is_vm and group_by == "cluster":
                key = CLOUD_PREFIX + key
            out.append({"key": key, "resource": r["resource"], "amount": hours(r["total"])})
    order = {res: i for i, res in enumerate(ALL_RESOURCES)}
    if group_by == "resource":
        out.sort(key=lambda r: (order.get(r["resource"], 99), r["resource"]))
    else:
        out.sort(key=lambda r: (r["key"] is None, r["key"] or "", order.get(r["resource"], 99)))
    return out
