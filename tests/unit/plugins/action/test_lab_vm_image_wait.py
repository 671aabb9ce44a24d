"""The lab_vm_image_wait action plugin: the phase it shows for a build, read from the build's log."""

from __future__ import annotations

from ansible_collections.chardev_lab.lab.plugins.action.lab_vm_image_wait import (
    build_phase,
    elapsed,
    pair_jobs,
)

# The head of a real bookworm build log (lab_vm_image writes the first line and the "$" lines).
LOG = """building bookworm-a8e5baf4372bf4a4: suite=bookworm mirror=(mmdebstrap default)
$ mmdebstrap --mode=root --variant=minbase bookworm /cache/.bookworm.tmp-1/rootfs
I: chroot architecture amd64 is equal to the host's architecture
I: finding correct signed-by value...
I: automatically chosen format: directory
I: running apt-get update...
I: downloading packages with apt...
"""


def test_the_phase_is_mmdebstraps_last_step() -> None:
    assert build_phase(LOG) == "mmdebstrap: downloading packages with apt"
    assert build_phase(LOG + "I: running --essential-hook in shell: sh -c 'mkdir'\n") == (
        "mmdebstrap: downloading packages with apt"
    )


def test_the_steps_after_mmdebstrap() -> None:
    after = LOG + "I: success in 98.3 seconds\n$ chroot /r systemctl enable systemd-networkd\n"
    assert build_phase(after) == "preparing the root filesystem for QEMU"
    assert (
        build_phase(after + "$ mkfs.ext4 -q -F -L chardev-lab -d /r disk.raw 4G\n")
        == "writing the disk image"
    )
    assert build_phase(after + "image complete\n") == "complete"


def test_no_log_yet() -> None:
    assert build_phase("") == "starting"


def test_elapsed() -> None:
    assert elapsed(7.9) == "7s"
    assert elapsed(125) == "2m05s"


def test_jobs_are_paired_with_their_logs() -> None:
    jobs = [
        {"ansible_job_id": "j1", "item": ["bookworm", []]},
        {"ansible_job_id": "j2", "item": ["trixie", ["linux-headers-amd64"]]},
        {"skipped": True, "item": ["bullseye", []]},
    ]
    plans = [
        {"item": ["trixie", ["linux-headers-amd64"]], "log": "/c/trixie.log"},
        {"item": ["bookworm", []], "log": "/c/bookworm.log"},
    ]
    assert pair_jobs(jobs, plans) == [
        {"jid": "j1", "name": "bookworm", "log": "/c/bookworm.log"},
        {"jid": "j2", "name": "trixie", "log": "/c/trixie.log"},
    ]
