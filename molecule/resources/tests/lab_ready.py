"""The lab on a real VM: module loaded, /dev/chardev served, the messages counting up, refusals.

Shared: the default scenario runs these after its converge, the crash scenario on its rewound VMs
(the lab-ready point playbooks/chardev.yml kept, back after a crash)."""

import re

from lab_testinfra import evidence, on_target

DEVICE = "/dev/chardev"
MESSAGE = re.compile(r"^I already told you (\d+) times Hello world!\n?$")

# Opens the device, reports the module's reference count while open, then tries a second open and a
# write: what the testinfra checks below look at, measured in one round trip.
PROBE = r"""
import errno, json, os
out = {}
fd = os.open("/dev/chardev", os.O_RDONLY)
with open("/sys/module/chardev/refcnt") as f:
    out["refcnt_open"] = int(f.read())
try:
    os.close(os.open("/dev/chardev", os.O_RDONLY))
    out["second_open"] = "succeeded"
except OSError as e:
    out["second_open"] = errno.errorcode[e.errno]
os.close(fd)
fd = os.open("/dev/chardev", os.O_WRONLY)
try:
    os.write(fd, b"x")
    out["write"] = "accepted"
except OSError as e:
    out["write"] = errno.errorcode[e.errno]
os.close(fd)
with open("/sys/module/chardev/refcnt") as f:
    out["refcnt_closed"] = int(f.read())
print(json.dumps(out))
"""


def loaded_module(host) -> dict:
    modules = host.file("/proc/modules").content_string
    line = next((ln for ln in modules.splitlines() if ln.split()[0] == "chardev"), None)
    assert line, evidence(host, "lsmod", "dmesg | tail -20")
    fields = line.split()
    return {"refs": int(fields[2]), "state": fields[4]}


def test_module_is_loaded_and_live(host):
    module = loaded_module(host)
    assert module["state"] == "Live"
    assert host.file("/sys/module/chardev").is_directory
    assert host.file("/sys/module/chardev/initstate").content_string.strip() == "live"


def test_loaded_build_is_the_safe_variant_for_the_running_kernel(host):
    release = host.run("uname -r").stdout.strip()
    ko = f"/lib/modules/{release}/extra/chardev.ko"
    assert host.file(ko).exists, evidence(host, f"ls -l /lib/modules/{release}/extra")
    assert host.run(f"modinfo -F vermagic {ko}").stdout.split()[0] == release
    assert host.file("/sys/module/chardev/version").content_string.strip() == "1.0-safe"
    built = host.run(f"modinfo -F srcversion {ko}").stdout.strip()
    assert host.file("/sys/module/chardev/srcversion").content_string.strip() == built


def test_node_is_a_char_device_with_the_registered_major(host):
    devices = host.file("/proc/devices").content_string
    char_section = devices.split("Block devices:")[0]
    majors = [int(ln.split()[0]) for ln in char_section.splitlines() if ln.strip().endswith(" chardev")]
    assert len(majors) == 1, devices
    node = host.run(f"stat -c '%F %t %T %a %U' {DEVICE}").stdout.split()
    assert node[:2] == ["character", "special"], node
    assert int(node[3], 16) == majors[0] and int(node[4], 16) == 0, (node, majors)
    assert host.run(f"test -c {DEVICE}").rc == 0


def test_each_read_says_the_next_number(host):
    counts = []
    for _attempt in range(3):
        text = host.file(DEVICE).content_string
        match = MESSAGE.match(text)
        assert match, repr(text)
        counts.append(int(match.group(1)))
    assert counts == [counts[0], counts[0] + 1, counts[0] + 2], counts


def test_refusals_and_reference_count(host):
    probe = on_target(host, PROBE)
    assert probe["second_open"] == "EBUSY", probe
    assert probe["write"] == "EINVAL", probe
    # safe variant: .owner pins the module while the file is open, twice over. register_chrdev()
    # gives the cdev the fops' owner, so chrdev_open() takes one reference in cdev_get() and one in
    # fops_get(); __fput() drops both (fops_put, cdev_put). Measured 2 on 5.10, 6.1 and 6.12.
    assert probe["refcnt_open"] == 2, probe
    assert probe["refcnt_closed"] == 0, probe
    assert loaded_module(host)["refs"] == 0


def test_rmmod_refused_while_open(host):
    result = host.run(
        'python3 -c \'import os, subprocess; fd = os.open("/dev/chardev", os.O_RDONLY); '
        'r = subprocess.run(["rmmod", "chardev"], capture_output=True, text=True); '
        "print(r.returncode, r.stderr.strip()); os.close(fd)'"
    )
    assert "in use" in result.stdout, result.stdout + result.stderr
    assert host.file("/sys/module/chardev").is_directory
