# Copyright: chardev-lab contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A stand-in for pypa's get-pip.py, for ansible-test's --venv on a machine that cannot reach the server
ansible-test downloads that script from (tools/run_ansible_test.py puts it in ansible-test's cache).

ansible-test runs it in a new, empty virtual environment with pip's own install options, for example
``--disable-pip-version-check pip==24.2 --no-setuptools --no-wheel``. It does what get-pip.py does with
them: the interpreter's bundled pip (ensurepip) installs the pinned packages from the package index.
ensurepip runs in a process of its own: it sets PIP_CONFIG_FILE to /dev/null in its environment, which
would hide the machine's pip configuration (its certificates) from the install.
"""

import subprocess
import sys

subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade"])
options = [arg for arg in sys.argv[1:] if arg not in ("--no-setuptools", "--no-wheel")]
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", *options]))
