"""The lab's own checks (molecule/resources/tests/lab_ready.py) on each rewound VM: a VM rewound after a
crash is the lab-ready VM playbooks/chardev.yml left (safe variant, /dev/chardev, counting, refusals)."""

import pytest
from lab_ready import *  # noqa: F403 - pytest collects the shared test functions from this module
from lab_testinfra import phase

pytestmark = pytest.mark.skipif(phase() != "rewound", reason="the lab-ready checks run on the rewound VMs")
