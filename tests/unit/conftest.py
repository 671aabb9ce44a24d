"""Shared pytest setup for the unit tests of the roles' custom modules."""

from __future__ import annotations

import sys
from pathlib import Path

import ansible.module_utils

REPO_ROOT = Path(__file__).resolve().parents[2]

# Every role's library/ directory, so `import chardev_node` (and modules added later) just works.
for library in sorted(REPO_ROOT.glob("roles/*/library")):
    if str(library) not in sys.path:
        sys.path.insert(0, str(library))

# Every role's module_utils/ directory: importable as a top-level module (`import chardev_crash`, as the
# testinfra tests do) and as `ansible.module_utils.<name>`, the name a module running inside its role
# imports it by (Ansible adds the role's module_utils/ to that package when it builds the module).
for module_utils in sorted(REPO_ROOT.glob("roles/*/module_utils")):
    if str(module_utils) not in sys.path:
        sys.path.insert(0, str(module_utils))
    if str(module_utils) not in ansible.module_utils.__path__:
        ansible.module_utils.__path__.append(str(module_utils))
