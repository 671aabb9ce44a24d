"""pytest outside ansible-test (make unit, a developer's pytest in the virtualenv): the collection is
imported as Ansible and ansible-test import it, through Ansible's collection loader, from .collections/
(the link to this checkout that make venv makes). Installed before any test module is imported: a
collection package imported without the loader would hide the collection's plugins from it (the roster
plugin's tests load it by its FQCN). Under ansible-test units its own pytest plugin has installed the
loader already, on its copy of the checkout."""

from __future__ import annotations

from pathlib import Path

from ansible.utils.collection_loader import AnsibleCollectionConfig

if AnsibleCollectionConfig.collection_finder is None:
    from ansible.plugins.loader import init_plugin_loader

    init_plugin_loader([str(Path(__file__).resolve().parents[1] / ".collections")])
