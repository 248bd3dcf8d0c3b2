#!/bin/bash
# Provision CentOS 7.6: pin the 7.6.1810 vault repos (CentOS 7 is end-of-life), install the 957
# kernel's headers, bcc 0.6 from the base repo, python3 3.6, and bpftools in a venv that sees bcc.
set -euxo pipefail
release=7.6.1810
sed -i -e 's/^mirrorlist=/#mirrorlist=/' \
       -e "s|^#\?baseurl=http://mirror.centos.org/centos/\$releasever|baseurl=http://vault.centos.org/$release|" \
       /etc/yum.repos.d/CentOS-Base.repo
yum clean all
yum install -y "kernel-devel-$(uname -r)" python3 python3-pip bcc bcc-tools python-bcc \
               iproute kmod procps-ng util-linux e2fsprogs gcc make
# RHEL 7's bcc bindings are packaged for python2 only; the module itself is Python-3 clean.
site3=$(python3 -c 'import site; print(site.getsitepackages()[0])')
mkdir -p /opt/bcc-py3
ln -sfn /usr/lib/python2.7/site-packages/bcc /opt/bcc-py3/bcc
echo /opt/bcc-py3 > "$site3/bcc-py2-bindings.pth"
python3 -c 'import bcc; print("bcc importable from python3")'
rm -rf /opt/bpftools-venv
python3 -m venv --system-site-packages /opt/bpftools-venv
/opt/bpftools-venv/bin/pip install -q --upgrade 'pip<22' 'setuptools<60'
/opt/bpftools-venv/bin/pip install -q '/vagrant-src[test]'
ln -sfn /opt/bpftools-venv/bin/bpftools /usr/local/bin/bpftools
bpftools doctor --capabilities
