#!/bin/bash
# Run the kernel tier (kprobes on the real 3.10.0-957 kernel) and the host suite inside the box.
set -uo pipefail
cd /vagrant-src
export BPFTOOLS_REQUIRE_KERNEL=1 BPFTOOLS_REQUIRE_ROOT=1
/vagrant-src/.venv/bin/python -m pytest -m "kernel or root" -ra tests "$@"
