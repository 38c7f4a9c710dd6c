"""Parsers of squeue/sacct/scontrol output, on output captured from the test
bed's real Slurm 22.05 (SLURM_TIME_FORMAT=%s, fields separated by \\x1f)."""
from datetime import datetime, timezone

import pytest

from clusters.backends.base import InvalidRequest
from clusters.backends.slurm import (
    parse_partitions,
    parse_sacct,
    parse_slurm_time,
    parse_squeue,
    parse_timestamp,
    script_with_environment,
)

# squeue -h -a -r -o '%i\x1f%A\x1f%F\x1f%K\x1f%T\x1f%r\x1f%u\x1f%S\x1f%j'
SQUEUE = (
    "15_1\x1f15\x1f15\x1f1\x1fPENDING\x1fResources\x1froot\x1f1795485060\x1farr\n"
    "15_2\x1f15\x1f15\x1f2\x1fPENDING\x1fResources\x1froot\x1f1795485060\x1farr\n"
    "14\x1f14\x1f14\x1fN/A\x1fRUNNING\x1fNone\x1froot\x1f1795477864\x1frun1\n"
    "15_0\x1f16\x1f15\x1f0\x1fRUNNING\x1fNone\x1froot\x1f1795477864\x1farr\n"
    "12\x1f12\x1f12\x1fN/A\x1fPENDING\x1fJobHeldUser\x1froot\x1fN/A\x1fodd|name x\n"
)

# sacct -a -X --parsable2 --noheader --delimiter=$'\x1f' --format=JobID,JobName,User,Account,Partition,
#   State,ExitCode,AllocCPUS,ElapsedRaw,CPUTimeRAW,Submit,Start,End
SACCT = (
    "1\x1ft1\x1fada\x1fbeta\x1fdebug\x1fFAILED\x1f3:0\x1f1\x1f0\x1f0\x1f1795477582\x1f1795477582\x1f1795477582\n"
    "2_0\x1fsl\x1fnephele\x1falpha\x1fdebug\x1fCANCELLED by 0\x1f0:0\x1f1\x1f6\x1f6\x1f1795477582\x1f1795477582"
    "\x1f1795477588\n"
    "2_[2-3]\x1fsl\x1fnephele\x1falpha\x1fdebug\x1fCANCELLED by 0\x1f0:0\x1f1\x1f0\x1f0\x1f1795477582\x1fNone"
    "\x1f1795477588\n"
    "5\x1fto\x1froot\x1froot\x1fdebug\x1fTIMEOUT\x1f0:0\x1f1\x1f10\x1f10\x1f1795477589\x1f1795477590\x1f1795477600\n"
    "6\x1fwe|ird name\x1froot\x1froot\x1fdebug\x1fCOMPLETED\x1f0:0\x1f1\x1f0\x1f0\x1f1795477750\x1f1795477751"
    "\x1f1795477751\n"
    "13\x1fsig\x1froot\x1froot\x1fdebug\x1fFAILED\x1f0:9\x1f1\x1f0\x1f0\x1f1795477856\x1f1795477856\x1f1795477856\n"
    "15_0\x1farr\x1froot\x1froot\x1fdebug\x1fRUNNING\x1f0:0\x1f1\x1f4\x1f4\x1f1795477864\x1f1795477864\x1fUnknown\n"
    "15_[1-4%2]\x1farr\x1froot\x1froot\x1fdebug\x1fPENDING\x1f0:0\x1f1\x1f0\x1f0\x1f1795477864\x1fUnknown\x1fUnknown\n"
)

# The same with the default '|' delimiter and default (ISO) times.
SACCT_PIPES = (
    "1|t1|ada|beta|debug|FAILED|3:0|1|0|0|2026-11-23T23:46:22|2026-11-23T23:46:22|2026-11-23T23:46:22\n"
    "2_[2-3]|sl|nephele|alpha|debug|CANCELLED by 0|0:0|1|0|0|2026-11-23T23:46:22|None|2026-11-23T23:46:28\n"
    "6|we|ird name|root|root|debug|COMPLETED|0:0|1|0|0|2026-11-23T23:49:10|2026-11-23T23:49:11|2026-11-23T23:49:11\n"
)

# scontrol show partition --oneliner (the test bed; a third line edited to
# cover limits the test bed does not set).
SCONTROL = (
    "PartitionName=debug AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL AllocNodes=ALL Default=YES QoS=N/A "
    "DefaultTime=NONE DisableRootJobs=NO ExclusiveUser=NO GraceTime=0 Hidden=NO MaxNodes=UNLIMITED "
    "MaxTime=00:30:00 MinNodes=0 LLN=NO MaxCPUsPerNode=UNLIMITED Nodes=nephele-n1 PriorityJobFactor=1 "
    "PriorityTier=1 RootOnly=NO ReqResv=NO OverSubscribe=NO OverTimeLimit=NONE PreemptMode=OFF State=UP "
    "TotalCPUs=2 TotalNodes=1 SelectTypeParameters=NONE JobDefaults=(null) DefMemPerNode=UNLIMITED "
    "MaxMemPerNode=UNLIMITED TRES=cpu=2,mem=24105M,node=1,billing=2\n"
    "PartitionName=long AllowGroups=ALL AllowAccounts=ALL AllowQos=ALL AllocNodes=ALL Default=NO QoS=N/A "
    "DefaultTime=NONE DisableRootJobs=NO ExclusiveUser=NO GraceTime=0 Hidden=NO MaxNodes=UNLIMITED "
    "MaxTime=1-00:00:00 MinNodes=0 LLN=NO MaxCPUsPerNode=UNLIMITED Nodes=nephele-n1 PriorityJobFactor=1 "
    "PriorityTier=1 RootOnly=NO ReqResv=NO OverSubscribe=NO OverTimeLimit=NONE PreemptMode=OFF State=UP "
    "TotalCPUs=2 TotalNodes=1 SelectTypeParameters=NONE JobDefaults=(null) DefMemPerNode=UNLIMITED "
    "MaxMemPerNode=UNLIMITED TRES=cpu=2,mem=24105M,node=1,billing=2\n"
    "PartitionName=gpu AllowGroups=ALL AllowAccounts=ALL Default=NO DefaultTime=01:00:00 MaxNodes=4 "
    "MaxTime=UNLIMITED MaxCPUsPerNode=32 Nodes=g[01-04] State=DRAIN TotalCPUs=128 TotalNodes=4 "
    "MaxMemPerNode=256000\n"
)


def ts(epoch):
    return datetime.fromtimestamp(epoch, tz=timezone.utc)


def test_squeue_plain_and_held():
    q = parse_squeue(SQUEUE)
    assert set(q) == {"15_1", "15_2", "14", "15_0", "12"}
    run = q["14"]
    assert (run.name, run.state, run.reason, run.user) == ("run1", "RUNNING", "", "root")
    assert run.start == ts(1795477864)
    assert (run.array_job_id, run.array_task_id) == ("", "")
    held = q["12"]
    assert held.name == "odd|name x"  # the delimiter is not '|'
    assert (held.state, held.reason, held.start) == ("PENDING", "JobHeldUser", None)


def test_squeue_array_tasks():
    q = parse_squeue(SQUEUE)
    assert (q["15_0"].array_job_id, q["15_0"].array_task_id, q["15_0"].state) == ("15", "0", "RUNNING")
    assert (q["15_2"].array_job_id, q["15_2"].array_task_id, q["15_2"].reason) == ("15", "2", "Resources")


def test_squeue_empty_and_garbage():
    assert parse_squeue("") == {}
    assert parse_squeue("slurm_load_jobs error: something\n") == {}


def test_sacct_states_and_exit_codes():
    a = parse_sacct(SACCT)
    failed = a["1"]
    assert (failed.state, failed.exit_code, failed.signal) == ("FAILED", 3, 0)
    assert (failed.user, failed.account, failed.partition, failed.alloc_cpus) == ("ada", "beta", "debug", 1)
    assert a["13"].state == "FAILED" and (a["13"].exit_code, a["13"].signal) == (0, 9)
    assert a["5"].state == "TIMEOUT"
    assert (a["5"].elapsed_seconds, a["5"].cpu_time_raw) == (10, 10)
    assert (a["5"].submit, a["5"].start, a["5"].end) == (ts(1795477589), ts(1795477590), ts(1795477600))
    assert a["6"].name == "we|ird name"


def test_sacct_cancelled_by_uid_is_cancelled():
    a = parse_sacct(SACCT)
    assert a["2_0"].state == "CANCELLED"
    assert a["2_[2-3]"].state == "CANCELLED"


def test_sacct_arrays_and_unknown_times():
    a = parse_sacct(SACCT)
    assert (a["2_0"].array_job_id, a["2_0"].array_task_id) == ("2", "0")
    assert (a["2_[2-3]"].array_job_id, a["2_[2-3]"].array_task_id) == ("2", "2-3")
    assert a["2_[2-3]"].start is None
    running = a["15_0"]
    assert running.state == "RUNNING" and running.end is None
    pending = a["15_[1-4%2]"]
    assert (pending.array_job_id, pending.array_task_id) == ("15", "1-4%2")
    assert pending.start is None and pending.end is None
    assert a["1"].array_job_id == ""


def test_sacct_parsable2_pipes_and_iso_times():
    a = parse_sacct(SACCT_PIPES)
    assert a["1"].submit == datetime(2026, 11, 23, 23, 46, 22, tzinfo=timezone.utc)
    assert a["2_[2-3]"].start is None and a["2_[2-3]"].state == "CANCELLED"
    assert a["6"].name == "we|ird name" and a["6"].state == "COMPLETED"


def test_partitions():
    p = {x.name: x for x in parse_partitions(SCONTROL)}
    debug, long, gpu = p["debug"], p["long"], p["gpu"]
    assert debug.is_default and not long.is_default and not gpu.is_default
    assert (debug.max_time_minutes, long.max_time_minutes, gpu.max_time_minutes) == (30, 1440, None)
    assert (debug.default_time_minutes, gpu.default_time_minutes) == (None, 60)
    assert (debug.total_cpus, debug.total_nodes, debug.max_nodes, debug.state) == (2, 1, None, "UP")
    assert (debug.max_cpus_per_node, debug.max_mem_per_node_mb) == (None, None)
    assert (gpu.max_nodes, gpu.max_cpus_per_node, gpu.max_mem_per_node_mb) == (4, 32, 256000)
    assert (gpu.total_cpus, gpu.total_nodes, gpu.state) == (128, 4, "DRAIN")


@pytest.mark.parametrize("text,minutes", [
    ("UNLIMITED", None), ("INFINITE", None), ("NONE", None), ("", None),
    ("30", 30), ("5:00", 5), ("5:01", 6), ("00:30:00", 30), ("02:00:30", 121),
    ("1-00:00:00", 1440), ("2-12", 3600), ("1-01:30", 1530), ("7-00:00:00", 10080),
])
def test_parse_slurm_time(text, minutes):
    assert parse_slurm_time(text) == minutes


def test_parse_timestamp():
    assert parse_timestamp("Unknown") is None
    assert parse_timestamp("None") is None
    assert parse_timestamp("N/A") is None
    assert parse_timestamp("1795477864") == ts(1795477864)
    assert parse_timestamp("2026-11-23T23:46:22") == datetime(2026, 11, 23, 23, 46, 22, tzinfo=timezone.utc)


def test_environment_goes_after_the_sbatch_header():
    script = "#!/bin/bash\n#SBATCH --comment=x\n\n# note\necho hi\n"
    out = script_with_environment(script, {"A": "x,y", "B": "it's $(rm -rf /)\nline2"})
    lines = out.splitlines()
    assert lines[:4] == ["#!/bin/bash", "#SBATCH --comment=x", "", "# note"]
    assert lines[4] == "export A=x,y"
    assert lines[5] == "export B='it'\"'\"'s $(rm -rf /)"
    assert out.endswith("line2'\necho hi\n")
    assert script_with_environment(script, {}) == script
    with pytest.raises(InvalidRequest):
        script_with_environment(script, {"BAD-NAME": "x"})
    with pytest.raises(InvalidRequest):
        script_with_environment(script, {"X; touch /tmp/p": "x"})
