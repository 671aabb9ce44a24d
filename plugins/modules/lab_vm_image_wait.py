#!/usr/bin/python
# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
module: lab_vm_image_wait
short_description: Wait for lab_vm_image's async builds, showing each build's phase and elapsed time
description:
  - "Runs on the control node (an action plugin). Takes the async jobs that
    M(chardev_lab.lab.lab_vm_image) builds run as (C(async), C(poll=0)) and waits until every one has
    finished, printing one line per build every O(interval) seconds: its elapsed time and its phase,
    read from the build's log (the mmdebstrap stage, then preparing the root filesystem, then writing
    the disk image). An C(until) loop over C(async_status) would print C(FAILED - RETRYING) while
    nothing failed."
  - Fails when a build failed (with each failed build's message) or when O(timeout) passes.
author:
  - chardev-lab contributors (@chardev-lab)
version_added: 1.0.0
options:
  jobs:
    description: The registered results of the async build task (each with C(ansible_job_id) and C(item)).
    type: list
    elements: dict
    required: true
  plans:
    description:
      - The registered check-mode results of M(chardev_lab.lab.lab_vm_image) for the same items, whose
        C(log) names each build's log. Without them no phase is shown.
    type: list
    elements: dict
    default: []
  interval:
    description: Seconds between two progress lines.
    type: int
    default: 15
  timeout:
    description: Seconds to wait for all builds in all.
    type: int
    default: 3600
attributes:
  action:
    support: full
    details:
      - An action plugin on the control node; it reads the jobs' status with M(ansible.builtin.async_status).
  async:
    support: none
    details: It waits for async jobs itself; the action plugin cannot run as one.
  bypass_host_loop:
    support: none
  check_mode:
    support: full
    details:
      - It runs in check mode as in a real run. It only waits for the jobs it is given (in a check run,
        those of M(chardev_lab.lab.lab_vm_image) in check mode, which build nothing) and then removes
        their job files (as M(ansible.builtin.async_status) does with C(mode=cleanup)).
  diff_mode:
    support: none
    details: Nothing to show a difference of.
  platform:
    platforms: posix
    details: The control node.
extends_documentation_fragment:
  - ansible.builtin.action_common_attributes
  - ansible.builtin.action_common_attributes.flow
"""

EXAMPLES = r"""
- name: Build the missing images
  chardev_lab.lab.lab_vm_image:
    suite: "{{ item.0 }}"
    packages: "{{ item.1 }}"
    cache_dir: "{{ lab_vm_cache_dir }}"
  loop: "{{ plan.results | selectattr('changed') | map(attribute='item') }}"
  async: 3600
  poll: 0
  register: builds

- name: Wait for the image builds
  chardev_lab.lab.lab_vm_image_wait:
    jobs: "{{ builds.results }}"
    plans: "{{ plan.results | selectattr('changed') }}"
"""

RETURN = r"""
results:
  description: Each build's final async_status result, by suite.
  returned: always
  type: dict
  sample: {bookworm: {finished: true, changed: true, key: bookworm-a8e5baf4372bf4a4}}
"""
