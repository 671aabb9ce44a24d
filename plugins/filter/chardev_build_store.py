# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""chardev_build_stored: whether the control node's store holds a host's builds already.

The role lets the first host of each kernel release compile before the others copy its builds; a host
whose builds are all in the store skips that wait. The answer comes from module_utils/chardev_build_store,
which names the store's builds for the module and the action plugin too: one way of naming them."""

from __future__ import annotations

from typing import Any

from ansible_collections.chardev_lab.lab.plugins.module_utils.chardev_build_store import store_has

DOCUMENTATION = r"""
name: chardev_build_stored
short_description: Whether the chardev build store holds every build a host needs
description:
  - True when O(_input), the store of the chardev role, has the builds of O(variants) of these sources
    for the kernel O(release), each with its digest. False when the store is empty or unset.
positional: release, sources, variants
options:
  _input:
    description: The store directory on the control node (chardev_build_store).
    type: path
    required: true
  release:
    description: The host's kernel release.
    type: str
    required: true
  sources:
    description: The module's sources, name to content, as the chardev_build module gets them.
    type: dict
    required: true
  variants:
    description: The variant to install, then those to keep in the cache.
    type: list
    elements: str
    required: true
"""


def chardev_build_stored(store: str, release: str, sources: dict[str, Any], variants: list[str]) -> bool:
    args = {"sources": sources, "variant": variants[0] if variants else "", "cache_variants": variants[1:]}
    return store_has(str(store or ""), str(release), args)


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"chardev_build_stored": chardev_build_stored}
