#!/bin/bash
# start_libvirtd.sh DIR USER [MEMBERS_FILE]
#
# Starts one unprivileged (session) libvirtd for one simulated host, as USER,
# with all its state under DIR, waits until it answers and prints its URI:
#     qemu:///session?socket=DIR/runtime/libvirt/libvirt-sock
# Run as root. See README.md next to this script for the measured facts.
#
# Power off: libvirtd runs in the background in the CALLER's process group and
# session (no -d). QEMU is always daemonized by libvirt into a session of its
# own, so a `kill -KILL -- -PGID` alone never reaches it. Two ways to fix that:
#   * MEMBERS_FILE given (default mode): the pids of libvirtd and of its reaper
#     are appended to it, and every guest QEMU appends its own pid before it
#     starts (QEMU is found through PATH: an emulator wrapper, see below). The
#     BMC's chassis_control.sh SIGKILLs every pid listed there.
#   * LIBVIRTD_PIDNS=1: libvirtd and its QEMUs run in a PID namespace whose
#     init is in the caller's process group; killing the group kills the init
#     and the kernel kills (and waits for) everything in the namespace. Pids
#     in libvirt's pid files are then namespace pids. MEMBERS_FILE (optional)
#     gets unshare's pid.
#
# Environment:
#   LIBVIRTD_PIDNS=1        PID-namespace mode (above).
#   QEMU_CONF_EXTRA=...     extra lines for qemu.conf (e.g. lock_manager = "leasehold").
#   LIBVIRTD_WAIT_S=120     how long to wait for the daemon to answer.
#   LIBVIRT_*               passed through to libvirtd (e.g. LIBVIRT_LOCK_MANAGER_PLUGIN_DIR).
#
# Guest XML: leave out <emulator> (libvirt then takes the first
# qemu-system-x86_64 in libvirtd's PATH, the wrapper) or name the wrapper
# /var/tmp/leasehold-libvirt/bin/qemu-system-x86_64. A guest naming
# /usr/bin/qemu-system-x86_64 runs fine but is NOT recorded in MEMBERS_FILE.
set -euo pipefail

die() { echo "start_libvirtd.sh: $*" >&2; exit 1; }
if [ $# -lt 2 ] || [ $# -gt 3 ]; then die "usage: start_libvirtd.sh DIR USER [MEMBERS_FILE]"; fi
[ "$(id -u)" = 0 ] || die "must run as root"
abs() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
DIR=$(abs "$1") U=$2 MEMBERS=${3:+$(abs "$3")}
case "$DIR" in *[!A-Za-z0-9/._+-]*) die "DIR must be a plain path (it goes into a URI): $DIR" ;; esac
PIDNS=${LIBVIRTD_PIDNS:-0}
WAIT_S=${LIBVIRTD_WAIT_S:-120}
SHARED=/var/tmp/leasehold-libvirt          # emulator wrapper + capabilities template (root-owned)
WRAPDIR=$SHARED/bin
SOCK=$DIR/runtime/libvirt/libvirt-sock
URI="qemu:///session?socket=$SOCK"

# --- user, group kvm, /dev/kvm ------------------------------------------------
getent group kvm >/dev/null || groupadd -r kvm
if ! id -u "$U" >/dev/null 2>&1; then
    useradd -r -g kvm -G kvm -d "/var/tmp/$U" -M -s /usr/sbin/nologin "$U"
fi
id -nG "$U" | tr ' ' '\n' | grep -qx kvm || usermod -aG kvm "$U"
G=$(id -gn "$U")
if [ -e /dev/kvm ]; then
    # Only when needed: a changed ctime of /dev/kvm is one more thing libvirt looks at.
    [ "$(stat -c %G /dev/kvm)" = kvm ] || chgrp kvm /dev/kvm
    [ "$(stat -c %a /dev/kvm)" = 660 ] || chmod 0660 /dev/kvm
fi
as_user() { setpriv --reuid="$U" --regid="$G" --init-groups -- "$@"; }

# --- directories -------------------------------------------------------------
mkdir -p "$DIR"
as_user test -x "$DIR" -a -w "$DIR" 2>/dev/null ||
    chown "$U:$G" "$DIR" 2>/dev/null
as_user test -x "$DIR" -a -w "$DIR" ||
    die "$U cannot use $DIR (is every parent directory o+x?)"
if [ -n "$MEMBERS" ] && [ "$PIDNS" != 1 ]; then
    # QEMU (as USER) appends its own pid: USER must reach and write the file.
    as_user test -x "$(dirname "$MEMBERS")" ||
        die "$U cannot reach $(dirname "$MEMBERS") (every parent directory needs o+x)"
    [ -e "$MEMBERS" ] || : > "$MEMBERS"
    chown "$U" "$MEMBERS"
    as_user test -w "$MEMBERS" || die "$U cannot append to $MEMBERS"
fi
# A libvirtd or QEMU of a previous run of this DIR still alive (it holds a file
# under DIR/runtime open: libvirtd.pid, a QEMU pid file)? Wiping the runtime dir
# under it would hide a running guest from the new libvirtd.
busy=$(find /proc/[0-9]*/fd -lname "$DIR/runtime/*" 2>/dev/null | cut -d/ -f3 | sort -u | tr '\n' ' ' || true)
[ -z "$busy" ] || die "processes of a previous libvirtd on $DIR still run: $busy"
# A power cycle loses the runtime dir (like /run); config and cache persist.
rm -rf "$DIR/runtime"
mkdir -p "$DIR"/{home,runtime,config/libvirt,cache/libvirt/qemu/cache/capabilities}
chmod 0700 "$DIR/runtime"
rm -f "$DIR/home/.leasehold-members"
if [ -n "$MEMBERS" ] && [ "$PIDNS" != 1 ]; then
    ln -s "$MEMBERS" "$DIR/home/.leasehold-members"
fi

# --- config ------------------------------------------------------------------
[ -e "$DIR/libvirtd.log" ] && mv -f "$DIR/libvirtd.log" "$DIR/libvirtd.log.old"
cat > "$DIR/config/libvirt/libvirtd.conf" <<EOF
# written by start_libvirtd.sh
log_outputs = "3:file:$DIR/libvirtd.log"
EOF
cat > "$DIR/config/libvirt/qemu.conf" <<EOF
# written by start_libvirtd.sh
# QEMU's stdout/stderr go straight to \$XDG_CACHE_HOME/libvirt/qemu/log/NAME.log:
# the default "logd" spawns a virtlogd per DIR in a session of its own.
stdio_handler = "file"
${QEMU_CONF_EXTRA:-}
EOF

# --- emulator wrapper (fixed path, so one capabilities cache fits every DIR) --
# shellcheck disable=SC2016  # expanded by the wrapper, not here
WRAPPER='#!/bin/sh
# Written by start_libvirtd.sh: record the guest QEMU pid (== this pid after
# exec) in the members file of the host before QEMU runs. Probes have no -name.
m="$HOME/.leasehold-members"
if [ "$1" = -name ] && [ -L "$m" ]; then
    echo $$ >> "$m" || { echo "cannot record pid in $m" >&2; exit 1; }
fi
exec /usr/bin/qemu-system-x86_64 "$@"
'
mkdir -p "$WRAPDIR"; chmod 0755 "$SHARED" "$WRAPDIR"
if [ "$(cat "$WRAPDIR/qemu-system-x86_64" 2>/dev/null)"$'\n' != "$WRAPPER" ]; then
    printf '%s' "$WRAPPER" > "$WRAPDIR/.qemu.$$" && chmod 0755 "$WRAPDIR/.qemu.$$"
    mv -f "$WRAPDIR/.qemu.$$" "$WRAPDIR/qemu-system-x86_64"
fi

# --- capabilities cache: seed from the template (a probe costs ~0.7 s a binary
# here, ~4 s without the reaper below; libvirt probes x86_64 and i386) --------
CAPS=$DIR/cache/libvirt/qemu/cache/capabilities
TEMPLATE=$SHARED/caps-$U
if [ -d "$TEMPLATE" ] && [ -z "$(ls -A "$CAPS")" ]; then
    cp -p "$TEMPLATE"/*.xml "$CAPS"/ 2>/dev/null || true
fi
chown -R "$U:$G" "$DIR/home" "$DIR/runtime" "$DIR/config" "$DIR/cache"

# --- start ---------------------------------------------------------------------
# libvirt's cached QEMU capabilities embed the host CPUID as seen from the CPU
# libvirtd runs on (leaf 0x1f reports the x2APIC id): pin libvirtd to one CPU
# or the cache is thrown away on every other start. libvirt gives QEMU all CPUs.
CPU=$(taskset -pc $$ | sed 's/.*: //; s/[-,].*//')
envs=(PATH="$WRAPDIR:/usr/sbin:/usr/bin:/sbin:/bin" LC_ALL=C USER="$U" LOGNAME="$U"
      HOME="$DIR/home" XDG_RUNTIME_DIR="$DIR/runtime"
      XDG_CONFIG_HOME="$DIR/config" XDG_CACHE_HOME="$DIR/cache")
while IFS= read -r v; do envs+=("$v=${!v}"); done < <(compgen -e | grep '^LIBVIRT_' || true)
daemon=(taskset -c "$CPU" setpriv --reuid="$U" --regid="$G" --init-groups --
        env -i "${envs[@]}" /usr/sbin/libvirtd)
# The bash below reaps orphaned QEMUs at once: libvirt notices a dead QEMU only
# after its zombie is gone, and a lazy pid 1 takes up to ~2 s to reap it.
# libvirtd's pid goes to DIR/libvirtd.hostpid (DIR/libvirtd.nspid in PID-namespace mode).
pidname=hostpid; [ "$PIDNS" = 1 ] && pidname=nspid
rm -f "$DIR/libvirtd.hostpid" "$DIR/libvirtd.nspid"
inner='"$@" & echo $! > "'"$DIR/libvirtd.$pidname"'"; wait $!'
(
    for fd in "/proc/$BASHPID"/fd/*; do       # hold none of the caller's fds
        fd=${fd##*/}
        [ "$fd" -gt 2 ] 2>/dev/null && eval "exec $fd>&-"
    done
    if [ "$PIDNS" = 1 ]; then
        # ns init = bash (reaps); killed with the caller's group or, via
        # --kill-child, when unshare dies. Host mounts made later still show up.
        exec unshare --pid --fork --kill-child --mount-proc --propagation slave \
            bash -c "$inner" libvirtd "${daemon[@]}"
    elif [ "$(uname -m)" = x86_64 ]; then
        # prctl(PR_SET_CHILD_SUBREAPER, 1) survives exec: bash becomes the reaper.
        exec perl -e 'syscall(157, 36, 1, 0, 0, 0) == 0 or die "prctl: $!"; exec @ARGV or die' \
            bash -c "$inner" libvirtd "${daemon[@]}"
    else
        exec bash -c "$inner" libvirtd "${daemon[@]}"
    fi
) </dev/null >>"$DIR/libvirtd.out" 2>&1 &
outer=$!
echo "$outer" > "$DIR/libvirtd.reaper-pid"
[ -n "$MEMBERS" ] && echo "$outer" >> "$MEMBERS"

# --- wait until it answers -----------------------------------------------------
i=0
while ! timeout 10 virsh -q -c "$URI" version >/dev/null 2>&1; do
    # A failed driver init (e.g. a lock plugin it cannot load) leaves libvirtd
    # running but never answering: fail at once.
    if ! kill -0 "$outer" 2>/dev/null || [ $i -ge $((WAIT_S * 10)) ] ||
        grep -q 'Driver state initialization failed' "$DIR/libvirtd.log" 2>/dev/null; then
        echo "start_libvirtd.sh: libvirtd did not come up; $DIR/libvirtd.out and libvirtd.log:" >&2
        tail -n 20 "$DIR/libvirtd.out" "$DIR/libvirtd.log" >&2 2>/dev/null || true
        lpid=$(cat "$DIR/libvirtd.hostpid" 2>/dev/null || true)
        kill -KILL "$outer" ${lpid:+"$lpid"} 2>/dev/null || true
        exit 1
    fi
    sleep 0.1; i=$((i + 1))
done
if [ -n "$MEMBERS" ] && [ "$PIDNS" != 1 ]; then
    cat "$DIR/libvirtd.hostpid" >> "$MEMBERS"
fi

# --- refresh the capabilities template (atomic per file; parallel starts are fine)
mkdir -p "$TEMPLATE"; chmod 0755 "$TEMPLATE"
for f in "$CAPS"/*.xml; do
    [ -e "$f" ] || continue
    cmp -s "$f" "$TEMPLATE/${f##*/}" && continue
    cp -p "$f" "$TEMPLATE/.${f##*/}.$$" && mv -f "$TEMPLATE/.${f##*/}.$$" "$TEMPLATE/${f##*/}"
done

echo "$URI"
