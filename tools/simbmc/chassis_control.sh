#!/bin/bash
# chassis_control program for ipmi_sim (lan.conf: chassis_control "...").
#
# ipmi_sim runs it through popen(3) as
#     chassis_control.sh PGIDFILE STARTFILE [LOGFILE] get power      -> prints "power:1" / "power:0"
#     chassis_control.sh PGIDFILE STARTFILE [LOGFILE] set power 0|1
#     chassis_control.sh PGIDFILE STARTFILE [LOGFILE] set reset 1     (ipmitool power reset)
#     chassis_control.sh PGIDFILE STARTFILE [LOGFILE] set shutdown 1  (ipmitool power soft)
# PGIDFILE  holds the pgid (== sid == pid of the session leader) of the running host.
# STARTFILE holds a shell command; power on runs it with `bash -c` in a new session.
# LOGFILE   receives the host's stdout/stderr (default /dev/null).
# Exit status != 0 makes ipmi_sim answer the IPMI request with cc 0xFF.
#
# The host is "on" while a non-zombie process with that pgid AND sid exists
# (checking the sid too guards against a recycled pid).
set -u

PGIDFILE= STARTFILE= LOGFILE=/dev/null
dev=()
while [ $# -gt 0 ]; do
    case "$1" in get|set|check) break ;; esac
    dev+=("$1"); shift
done
[ ${#dev[@]} -ge 2 ] || { echo "usage: $0 PGIDFILE STARTFILE [LOGFILE] get|set ITEM [VALUE]..." >&2; exit 2; }
PGIDFILE=${dev[0]} STARTFILE=${dev[1]}
[ ${#dev[@]} -ge 3 ] && LOGFILE=${dev[2]}
op=${1:-}; shift || true

KILL_WAIT_MS=${KILL_WAIT_MS:-5000}     # max wait for the group to vanish after SIGKILL
START_WAIT_MS=${START_WAIT_MS:-2000}   # max wait for setsid() in the new host

read_pgid() {
    local p=
    [ -r "$PGIDFILE" ] && read -r p < "$PGIDFILE"
    case "$p" in ''|*[!0-9]*) echo 0 ;; *) echo "$p" ;; esac
}

# 0 if the group $1 (with sid $1) has a live (non-zombie) member
group_alive() {
    local pg=$1
    [ "$pg" -gt 1 ] || return 1
    ps -e -o pgid=,sid=,stat= | awk -v g="$pg" '$1==g && $2==g && $3 !~ /^Z/ {f=1} END {exit !f}'
}

clear_pgid() { : > "$PGIDFILE.tmp" && mv -f "$PGIDFILE.tmp" "$PGIDFILE"; }

# Processes a test started for this host outside its session (lease
# holders) are listed, one pid per line, in PGIDFILE.members.
kill_members() {
    local p
    [ -r "$PGIDFILE.members" ] || return 0
    while read -r p; do
        case "$p" in ''|*[!0-9]*) ;; *) kill -"$1" "$p" 2>/dev/null ;; esac
    done < "$PGIDFILE.members"
    [ "$1" = KILL ] && : > "$PGIDFILE.members"
    return 0
}

power_off() {   # $1 = signal
    local pg i=0
    kill_members "$1"
    pg=$(read_pgid)
    if group_alive "$pg"; then
        kill -"$1" -- "-$pg" 2>/dev/null
        [ "$1" = KILL ] || return 0          # soft shutdown: don't wait
        while group_alive "$pg"; do
            [ $i -ge "$KILL_WAIT_MS" ] && { echo "group $pg still alive" >&2; return 1; }
            sleep 0.002; i=$((i + 2))
        done
    fi
    clear_pgid
}

power_on() {
    local pg cmd pid i=0 spg
    pg=$(read_pgid)
    group_alive "$pg" && return 0            # already on
    [ -r "$STARTFILE" ] || { echo "no start file $STARTFILE" >&2; return 1; }
    cmd=$(cat "$STARTFILE")
    (
        # popen() children inherit every fd of ipmi_sim (its UDP socket, epoll,
        # the popen pipe ...): close them all so the host holds none.
        for fd in /proc/$BASHPID/fd/*; do
            fd=${fd##*/}
            [ "$fd" -gt 2 ] 2>/dev/null && eval "exec $fd>&-"
        done
        exec setsid bash -c "$cmd" </dev/null >>"$LOGFILE" 2>&1
    ) &
    pid=$!
    # not a group leader (no job control), so setsid(1) does not fork: pid == new sid == pgid
    while :; do
        spg=$(awk '{sub(/.*\) /, ""); print $3}' /proc/$pid/stat 2>/dev/null) || break
        [ "$spg" = "$pid" ] && break
        [ $i -ge "$START_WAIT_MS" ] && break
        sleep 0.005; i=$((i + 5))
    done
    echo "$pid" > "$PGIDFILE.tmp" && mv -f "$PGIDFILE.tmp" "$PGIDFILE"
}

case "$op" in
get)
    for item in "$@"; do
        case "$item" in
        power) if group_alive "$(read_pgid)"; then echo "power:1"; else echo "power:0"; fi ;;
        boot)  echo "boot:default" ;;
        *)     echo "$item:0" ;;
        esac
    done ;;
set)
    rc=0
    while [ $# -ge 2 ]; do
        item=$1 val=$2; shift 2
        case "$item:$val" in
        power:0)    power_off KILL || rc=1 ;;
        power:1)    power_on || rc=1 ;;
        reset:*)    { power_off KILL && power_on; } || rc=1 ;;
        shutdown:*) power_off TERM || rc=1 ;;
        *)          ;;  # boot, identify: accept and ignore
        esac
    done
    exit $rc ;;
check)
    exit 0 ;;
*)
    echo "unknown op '$op'" >&2; exit 2 ;;
esac
