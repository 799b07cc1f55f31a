#!/usr/bin/env bash
# The test command: installs what the tests need, then runs formatting and
# lint checks and every test of the workspace. Run as root (loop devices).
# Long runs are not part of it; see README.md "Tests".
set -euo pipefail
cd "$(dirname "$0")/.."

# System packages: losetup (util-linux), nbdkit + nbdfuse (libnbd-bin) for
# the hung-device and storage-fault tests, fuse3 for nbdfuse, setpriv
# (util-linux) for the foreign-uid test, and for the fencing tests a real
# BMC implementation (ipmi_sim from openipmi) with ipmitool and
# fence_ipmilan (fence-agents) to cross-check it; libvirt-dev (and
# pkg-config) to build the daemon's libvirt client.
packages=()
command -v losetup >/dev/null || packages+=(util-linux)
# Real filesystems and partition tables for format's refusals
# (tests/guard_rails.rs).
command -v mkfs.ext4 >/dev/null || packages+=(e2fsprogs)
command -v sfdisk >/dev/null || packages+=(fdisk)
command -v nbdkit >/dev/null || packages+=(nbdkit)
command -v nbdfuse >/dev/null || packages+=(libnbd-bin)
# nbdkit's python plugin runs tests/support/nbd/hold_writes.py (a storage
# path that holds one host's writes back: tests/late_write.rs).
nbdkit python --version >/dev/null 2>&1 || packages+=(nbdkit-plugin-python)
command -v fusermount3 >/dev/null || packages+=(fuse3)
command -v ipmi_sim >/dev/null || packages+=(openipmi)
command -v ipmitool >/dev/null || packages+=(ipmitool)
command -v fence_ipmilan >/dev/null || packages+=(fence-agents)
# The Debian package's unit checked by systemd's own verifier
# (tests/package.rs).
command -v systemd-analyze >/dev/null || packages+=(systemd)
# libvirt's client library and headers for the daemon's hypervisor module.
command -v pkg-config >/dev/null || packages+=(pkg-config)
pkg-config --exists libvirt 2>/dev/null || packages+=(libvirt-dev)
# Real VMs for the failover tests: an unprivileged libvirtd per simulated
# host running QEMU guests (tests/support/libvirt/README.md). qemu-utils
# from bookworm itself: the newer one some images carry breaks qemu-system.
vm_packages=()
command -v libvirtd >/dev/null || vm_packages+=(libvirt-daemon libvirt-daemon-driver-qemu)
command -v virsh >/dev/null || vm_packages+=(libvirt-clients)
command -v qemu-system-x86_64 >/dev/null || vm_packages+=(qemu-system-x86 qemu-utils/bookworm)
# Real shared storage (tests/san.rs): tgt for iSCSI, a one-node Ceph
# cluster, and qemu-storage-daemon's iscsi and rbd drivers
# (qemu-block-extra, from bookworm like qemu-system) as each host's own
# client; uuidgen for Ceph's ids, ip for the hosts' network namespaces.
command -v tgtd >/dev/null || vm_packages+=(tgt)
command -v ceph-mon >/dev/null || vm_packages+=(ceph-mon)
command -v ceph-osd >/dev/null || vm_packages+=(ceph-osd)
command -v rbd >/dev/null || vm_packages+=(ceph-common)
[ -e /usr/lib/x86_64-linux-gnu/qemu/block-rbd.so ] || vm_packages+=(qemu-block-extra)
command -v uuidgen >/dev/null || packages+=(uuid-runtime)
command -v ip >/dev/null || packages+=(iproute2)
# The operator surface (tests/operator_surface.rs): the status page in
# headless Chromium, the metrics through Prometheus' own parser (promtool).
command -v chromium >/dev/null || vm_packages+=(chromium)
command -v promtool >/dev/null || vm_packages+=(prometheus)
if [ ${#packages[@]} -gt 0 ] || [ ${#vm_packages[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "tests/run.sh: need root to install ${packages[*]} ${vm_packages[*]}" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get -o DPkg::Lock::Timeout=600 update -qq
    if [ ${#packages[@]} -gt 0 ]; then
        apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${packages[@]}" >/dev/null
    fi
    if [ ${#vm_packages[@]} -gt 0 ]; then
        apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends \
            --allow-downgrades "${vm_packages[@]}" >/dev/null
    fi
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# The Debian package (release build, cargo-deb from crates.io if missing),
# unpacked and checked by tests/package.rs.
LEASEHOLD_DEB=$(tools/package/build-deb.sh)
export LEASEHOLD_DEB
cargo test --workspace --quiet

# Long mode: the #[ignore]d repetitions (e.g. ten power-off failovers).
if [ "${LEASEHOLD_LONG:-0}" = 1 ]; then
    cargo test --workspace --quiet -- --ignored --test-threads=1
fi
