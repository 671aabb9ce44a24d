"""The lab on a real VM, right after `lab.yml`: the checks shared with the crash scenario's rewound VMs."""

from lab_ready import *  # noqa: F403 - pytest collects the shared test functions from this module
