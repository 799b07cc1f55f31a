#!/bin/bash
# start_bmc.sh PORT STATEDIR PGIDFILE STARTFILE
#   Launch one simulated BMC (ipmi_sim) on 127.0.0.1:PORT/udp whose chassis
#   power is the process group recorded in PGIDFILE (started from STARTFILE).
#   STATEDIR is created if needed; ipmi_sim's persistent state (STATEDIR/persist)
#   is wiped on every start, because saved state overrides lan.conf.
#   Files written in STATEDIR: lan.conf, emu.cmds, ipmi_sim.log, ipmi_sim.pid,
#   host.log (the host's stdout/stderr).
#   Default: ipmi_sim runs in the background (own session), the script waits
#   until the UDP port is bound, prints the ipmi_sim pid and exits 0.
#   FOREGROUND=1: exec ipmi_sim instead (the caller owns the process; poll the
#   port for readiness yourself).
# Env overrides: BMC_NAME (bmc-PORT) BMC_GUID (32 hex, derived from PORT)
#   BMC_USER (admin) BMC_PASSWORD (secret) BMC_ADDR (127.0.0.1)
#   BMC_MAXSESS (10) BMC_HOSTLOG (STATEDIR/host.log) BMC_TEMPLATE BMC_EMU BMC_CONTROL
set -eu
[ $# -eq 4 ] || { echo "usage: $0 PORT STATEDIR PGIDFILE STARTFILE" >&2; exit 2; }
PORT=$1 STATEDIR=$2 PGIDFILE=$3 STARTFILE=$4
here=$(cd "$(dirname "$0")" && pwd)
TEMPLATE=${BMC_TEMPLATE:-$here/lan.conf.template}
EMU=${BMC_EMU:-$here/emu.cmds}
CONTROL=${BMC_CONTROL:-$here/chassis_control.sh}
NAME=${BMC_NAME:-bmc-$PORT}
GUID=${BMC_GUID:-$(printf '%032x' "$PORT")}
USER_=${BMC_USER:-admin}
PASS=${BMC_PASSWORD:-secret}
ADDR=${BMC_ADDR:-127.0.0.1}
MAXSESS=${BMC_MAXSESS:-10}

mkdir -p "$STATEDIR"
abs() { case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
STATEDIR=$(cd "$STATEDIR" && pwd)
PGIDFILE=$(abs "$PGIDFILE"); STARTFILE=$(abs "$STARTFILE")
HOSTLOG=$(abs "${BMC_HOSTLOG:-$STATEDIR/host.log}")
for p in "$CONTROL" "$PGIDFILE" "$STARTFILE" "$HOSTLOG" "$NAME$USER_$PASS"; do
    case "$p" in *[\'\"\\\|\&\;\<\>\$\`]*|*$'\n'*)
        echo "start_bmc.sh: unsupported character in '$p'" >&2; exit 2 ;; esac
done
[ ${#USER_} -le 16 ] && [ ${#PASS} -le 20 ] || { echo "user <= 16, password <= 20 chars" >&2; exit 2; }
case "$PORT" in ''|*[!0-9]*) echo "bad port" >&2; exit 2 ;; esac

# ipmi_sim binds with SO_REUSEADDR: a second instance on a busy port starts
# "fine" and the two then share/steal the datagrams.  Refuse instead.
if ss -Huan "sport = :$PORT" 2>/dev/null | grep -q .; then
    echo "start_bmc.sh: udp port $PORT already in use:" >&2; ss -Huanp "sport = :$PORT" >&2; exit 1
fi

rm -rf "$STATEDIR/persist"; mkdir -p "$STATEDIR/persist"
[ -e "$PGIDFILE" ] || : > "$PGIDFILE"
CTL="'$CONTROL' '$PGIDFILE' '$STARTFILE' '$HOSTLOG'"
sed -e "s|@NAME@|$NAME|g" -e "s|@ADDR@|$ADDR|g" -e "s|@PORT@|$PORT|g" \
    -e "s|@GUID@|$GUID|g" -e "s|@CONTROL@|$CTL|g" -e "s|@USER@|$USER_|g" \
    -e "s|@PASSWORD@|$PASS|g" -e "s|@MAXSESS@|$MAXSESS|g" \
    "$TEMPLATE" > "$STATEDIR/lan.conf"
cp "$EMU" "$STATEDIR/emu.cmds"

# Close every inherited fd > 2 (test-harness pipes etc.): ipmi_sim passes all
# of its fds to the chassis_control program and so on to the hosts.
for fd in /proc/$$/fd/*; do
    fd=${fd##*/}
    [ "$fd" -gt 2 ] 2>/dev/null && eval "exec $fd>&-" || true
done

cmd=(ipmi_sim -n -c "$STATEDIR/lan.conf" -f "$STATEDIR/emu.cmds" -s "$STATEDIR/persist")
if [ "${FOREGROUND:-0}" = 1 ]; then
    echo $$ > "$STATEDIR/ipmi_sim.pid"
    exec "${cmd[@]}" </dev/null
fi

setsid "${cmd[@]}" </dev/null >"$STATEDIR/ipmi_sim.log" 2>&1 &
pid=$!
echo "$pid" > "$STATEDIR/ipmi_sim.pid"

for _ in $(seq 200); do                     # up to ~2 s; normally bound within ~10 ms
    kill -0 "$pid" 2>/dev/null || { echo "ipmi_sim exited:" >&2; cat "$STATEDIR/ipmi_sim.log" >&2; exit 1; }
    if ss -Huanp "sport = :$PORT" 2>/dev/null | grep -q "pid=$pid,"; then echo "$pid"; exit 0; fi
    sleep 0.01
done
echo "ipmi_sim did not bind port $PORT" >&2; cat "$STATEDIR/ipmi_sim.log" >&2
kill "$pid" 2>/dev/null; exit 1
