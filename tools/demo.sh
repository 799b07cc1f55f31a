#!/usr/bin/env bash
# The demo: a file-backed lease device shared by two hosts. Formats it, joins
# host 1 (alpha) and host 2 (bravo), lets alpha acquire the resource vm1,
# shows bravo refused while alpha holds it, then alpha releases and bravo
# takes it; dumps the device between steps.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --quiet -p leasehold-tools --bin leasehold
leasehold=target/debug/leasehold
dir=${LEASEHOLD_DEMO_DIR:-/var/tmp/leasehold-demo}
mkdir -p "$dir"
device=$dir/lease.img
step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; "$@"; }

step $leasehold format "$device" --lockspace demo --max-hosts 8 --max-resources 4 --io-timeout 0.5 --force
step $leasehold direct join "$device" --host-id 1 --host-name alpha
step $leasehold direct join "$device" --host-id 2 --host-name bravo
step $leasehold direct acquire "$device" --host-id 1 --resource vm1
set +e
step $leasehold direct acquire "$device" --host-id 2 --resource vm1
echo "(exit status $?: busy, alpha holds vm1 and is not known to be dead)"
set -e
step $leasehold dump "$device"
step $leasehold direct release "$device" --host-id 1 --resource vm1
step $leasehold direct acquire "$device" --host-id 2 --resource vm1
step $leasehold direct leave "$device" --host-id 1 --host-name alpha
step $leasehold dump "$device"
