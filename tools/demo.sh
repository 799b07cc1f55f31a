#!/usr/bin/env bash
# The demo (the README's first command): a local 3-host cluster on one
# file-backed lease device, one leaseholdd and one simulated BMC (ipmi_sim)
# per host, libvirt's test driver for the VMs. Registers three HA VMs on
# hostA, powers hostA off through its BMC and prints the failover as it
# happens. Installs what it needs when missing (as root): openipmi for the
# BMCs, libvirt-dev and pkg-config to build the daemon. Arguments go to
# `leasehold demo` (e.g. --io-timeout 0.5, --keep).
set -euo pipefail
cd "$(dirname "$0")/.."
packages=()
command -v ipmi_sim >/dev/null || packages+=(openipmi)
command -v pkg-config >/dev/null || packages+=(pkg-config)
pkg-config --exists libvirt 2>/dev/null || packages+=(libvirt-dev)
if [ ${#packages[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "tools/demo.sh: need root to install ${packages[*]}" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${packages[@]}" >/dev/null
fi
cargo build --quiet -p leasehold-daemon -p leasehold-tools
exec target/debug/leasehold demo "$@"
