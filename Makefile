# chardev-lab: `make lab` sets everything up and runs the lab on the local fleet; `make test` tests it.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export ANSIBLE_FORCE_COLOR ?= $(if $(CI),0,1)

# Packages the control node needs (Debian/Ubuntu names).
HOST_PACKAGES := qemu-system-x86 qemu-utils mmdebstrap e2fsprogs openssh-client python3-venv make
# Packages only the tests need: the status page is checked in a real headless browser; pahole (dwarves)
# reads the lab VMs' BTF, a second opinion on the lab's own BTF reader.
TEST_PACKAGES := chromium chromium-driver dwarves
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
# classroom boots two VMs (a class from a roster), faults one, crash three (one per kernel, rewound
# between its crashes; it also runs the default scenario's lab checks on its rewound VMs, so CI does not
# boot default's three VMs: `molecule test -s default` still runs them alone). classroom runs first: it
# also checks what every VM needs (kernel, host key, Python, isolation) before any lab runs.
SCENARIOS ?= classroom faults crash

# MITOGEN=1: run the playbooks with Mitogen's strategy (the mitogen package, in the virtualenv): one
# Python interpreter per host for the whole run instead of one per task, which is most of a task's cost
# in a TCG guest (measured in docs/benchmarks-lab-mitogen.md). Opt-in: the default strategy is what
# `make test` checks.
MITOGEN ?=
ifeq ($(strip $(MITOGEN)),1)
export ANSIBLE_STRATEGY_PLUGINS = $(wildcard $(CURDIR)/$(VENV)/lib/python3*/site-packages/ansible_mitogen/plugins/strategy)
export ANSIBLE_STRATEGY := mitogen_linear
endif

# A classroom: make lab ROSTER=path/to/roster.csv (and status, reset, down, ssh with the same ROSTER=).
# The roster becomes the inventory through the chardev_roster plugin (inventory/roster.yml), which
# reads the roster named by CHARDEV_LAB_ROSTER; without ROSTER the default local fleet is used.
ROSTER ?=
ifneq ($(strip $(ROSTER)),)
ifeq ($(wildcard $(ROSTER)),)
$(error ROSTER=$(ROSTER): no such file)
endif
export CHARDEV_LAB_ROSTER := $(abspath $(ROSTER))
INVENTORY := -i inventory/roster.yml
endif

.PHONY: help
help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

.PHONY: host-deps
host-deps: ## Install the control node's packages (apt; as root or with sudo)
	@$(MAKE) --no-print-directory apt-install PACKAGES="$(HOST_PACKAGES)"

.PHONY: test-deps
test-deps: ## Install what only the tests need (headless Chromium for the status page, pahole)
	@$(MAKE) --no-print-directory apt-install PACKAGES="$(TEST_PACKAGES)"

.PHONY: apt-install
apt-install:
	@missing=$$(for p in $(PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null \
	    | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "apt: installing" $$missing; \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	else echo "apt: $(PACKAGES): all installed"; fi

$(BIN)/.installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -r requirements.txt
	touch $@

# The repository is the collection chardev_lab.lab. Ansible finds it through ansible.cfg's collections_path
# (.collections), where this link resolves ansible_collections/chardev_lab/lab to the checkout. Python
# code outside Ansible imports it by the same name from there: pytest through pyproject.toml's
# pythonpath, the tools through TOOLS_ENV. Nothing of it goes into the virtualenv itself, which would
# hide an installed copy of the collection (ansible-galaxy collection install) behind the checkout.
COLLECTIONS := $(CURDIR)/.collections
COLLECTION_LINK := $(COLLECTIONS)/ansible_collections/chardev_lab/lab
TOOLS_ENV := PYTHONPATH=$(COLLECTIONS)

$(COLLECTION_LINK):
	mkdir -p $(dir $@)
	ln -sfn ../../.. $@

.PHONY: sanity
sanity: venv ## ansible-test sanity: every test that applies, on each declared Python this machine has
	$(BIN)/python tools/run_ansible_test.py sanity --venv --color $(if $(CI),no,yes) $(ANSIBLE_TEST_ARGS)

.PHONY: units
units: venv ## ansible-test units: the plugins' unit tests (tests/unit/plugins/)
	$(BIN)/python tools/run_ansible_test.py units --venv --color $(if $(CI),no,yes) --python 3.11 $(ANSIBLE_TEST_ARGS)

.PHONY: venv
venv: $(BIN)/.installed | $(COLLECTION_LINK) ## Make the virtualenv with the pinned tools and install the collections
	@$(BIN)/python tools/ensure_collections.py

.PHONY: setup
setup: host-deps venv

.PHONY: lab
lab: setup ## Set up, start the local fleet and run the lab (lab.yml); ROSTER=roster.csv for a class
	ansible-playbook $(INVENTORY) lab.yml $(ARGS)

.PHONY: lesson
lesson: setup ## The student's own crash: the lab stops with the crash variant loaded (docs/lesson.md)
	ansible-playbook $(INVENTORY) lab.yml --skip-tags crash,demo -e chardev_variant=crash $(ARGS)

.PHONY: check
check: venv ## Recognise, judge and explain the crash a student made by hand (playbooks/check.yml)
	ansible-playbook $(INVENTORY) playbooks/check.yml $(ARGS)

.PHONY: status
status: venv ## The fleet's state: a table, .lab/status/status.json and .lab/status/index.html
	ansible-playbook $(INVENTORY) playbooks/status.yml $(ARGS)

.PHONY: reset
reset: venv ## Reset crashed hosts (local VMs: rewound, else a fresh disk; real hosts: a reboot), then verify
	ansible-playbook $(INVENTORY) playbooks/reset.yml $(ARGS)

.PHONY: down
down: venv ## Stop and remove the local fleet (VMs, processes, overlays; the image cache stays)
	ansible-playbook $(INVENTORY) playbooks/fleet.yml -e lab_vm_state=absent

.PHONY: lint
lint: venv ## yamllint, ansible-lint (production profile), ruff, ansible-test sanity
	yamllint --strict .
	ansible-lint --offline
	ruff check .
	ruff format --check .
	@$(MAKE) --no-print-directory sanity

.PHONY: unit
unit: venv ## Python tests without VMs: the plugins' (ansible-test units), then the project's (tests/project)
	$(MAKE) --no-print-directory units
	pytest -q tests/project

.PHONY: browser
browser: venv test-deps ## The status page in headless Chromium, from a fixture (no VMs)
	pytest -q tests/browser

.PHONY: molecule
molecule: setup test-deps ## Molecule scenarios on real VMs (SCENARIOS="classroom faults crash"; default runs alone)
	@set -e; for s in $(SCENARIOS); do echo "== molecule test -s $$s"; molecule test -s $$s; done

.PHONY: test
test: test-deps lint unit browser molecule ## Everything CI runs

.PHONY: bench
bench: setup ## Image build, cache reuse, boot time (docs/benchmarks.md), then the lab itself (bench-lab)
	$(TOOLS_ENV) $(BIN)/python tools/bench.py --output docs/benchmarks.md
	$(TOOLS_ENV) $(BIN)/python tools/bench_lab.py --output docs/benchmarks-lab.md

.PHONY: bench-lab
bench-lab: setup ## The lab on one VM against a shell script, a second run, rewind vs fresh disk (docs/benchmarks-lab.md)
	$(TOOLS_ENV) $(BIN)/python tools/bench_lab.py --output docs/benchmarks-lab.md

.PHONY: bench-fleet
bench-fleet: setup ## Measure a class of one and of four local VMs, step by step (docs/benchmarks-fleet.md)
	$(TOOLS_ENV) $(BIN)/python tools/bench_fleet.py --output docs/benchmarks-fleet.md

.PHONY: clean
clean: down ## Remove the fleet and the virtualenv (keeps the image cache)
	rm -rf $(VENV)

.PHONY: ssh
ssh: venv ## Log in to a local VM as root: make ssh HOST=lab-vm-1 (or HOST=<student> ROSTER=roster.csv)
	@$(TOOLS_ENV) $(BIN)/python tools/lab_ssh.py $(INVENTORY) $(or $(HOST),lab-vm-1)
