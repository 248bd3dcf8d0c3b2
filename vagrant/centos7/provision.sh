#!/bin/bash
# Provision CentOS 7.6 the way a user installs bpftools there: scripts/setup's EL7 path (vault repos of
# 7.6.1810 as /etc/redhat-release names them, kernel-devel of the 957 kernel, Python 3.6 from EPEL,
# bcc 0.10.0 from the 7.9.2009 tree over 7.6's 0.6.0, the bcc path shim, pip upgraded first, a plain
# install into /vagrant-src/.venv).
set -euxo pipefail
cd /vagrant-src
bash scripts/setup
ln -sfn /vagrant-src/.venv/bin/bpftools /usr/local/bin/bpftools
bpftools doctor --capabilities
