"""The test bed's environment, as `make test` provides it (scripts/testbed
writes .testbed/env). A test that needs a real part and finds its variables
missing fails with how to start it: it never skips."""
import os

import pytest

HOW = {
    "Slurm": "`scripts/testbed up` and source .testbed/env (plus `scripts/slurm/testbed-slurm env`)",
    "OpenStack": "`scripts/openstack/testbed-openstack up` and source `scripts/openstack/testbed-openstack env`",
}


def require_env(component, names):
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        pytest.fail(f"{component} test bed environment missing ({', '.join(missing)}): run `make test`, "
                    f"or {HOW[component]}.", pytrace=False)
    return os.environ
