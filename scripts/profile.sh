#!/usr/bin/env bash
# make profile: instruction counts (valgrind callgrind: repeatable, unlike times) of the broker's
# thread with and without the plugin, under the same QoS 1 load, and of the plugin's callbacks.
set -euo pipefail
cd "$(dirname "$0")/.."
T=${CARGO_TARGET_DIR:-target}/release
case $T in /*) ;; *) T=$PWD/$T ;; esac
N=${MESSAGES:-3000}
work=$(mktemp -d /tmp/mqtt-twister-profile.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
node_port=$(free_port); port=$(free_port)
"$T/twister-devnode" -rpcuser=p -rpcpassword=profile -rpcport="$node_port" -blockinterval=0.01 >/dev/null 2>&1 &
pids+=($!)
base="listener $port 127.0.0.1
allow_anonymous true
max_queued_messages 0
user root"
printf '%s\n' "$base" >"$work/plain.conf"
printf '%s\nplugin %s\nplugin_opt_rpc_url http://127.0.0.1:%s/\nplugin_opt_rpc_user p\nplugin_opt_rpc_password profile\nplugin_opt_user profiler\nplugin_opt_create_user true\nplugin_opt_publish %s\n' \
  "$base" "$T/libmqtt_twister.so" "$node_port" "${FORWARD:-elsewhere/#}" >"$work/plugin.conf"
# SPOOL=1: MESSAGE also writes every forwarded message into the crash-safe spool.
if [ "${SPOOL:-0}" = 1 ]; then printf 'plugin_opt_spool_dir %s\n' "$work/spool" >>"$work/plugin.conf"; fi
seq 1 "$N" | sed 's/^/payload-0123456789-0123456789-0123456789-/' >"$work/lines"
run() {
  valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$work/$1.out" mosquitto -c "$work/$1.conf" >"$work/$1.log" 2>&1 &
  local vp=$!
  for _ in $(seq 100); do mosquitto_pub -p "$port" -t warmup -m x 2>/dev/null && break; sleep 0.2; done
  sleep 2
  mosquitto_sub -p "$port" -t 'bench/#' -q 1 -C "$N" -W 120 >/dev/null & local sp=$!
  sleep 1
  mosquitto_pub -p "$port" -t bench/a -q 1 -l <"$work/lines"
  wait "$sp"; kill "$vp"; wait "$vp" || true
}
run plain; run plugin
total() { callgrind_annotate "$1" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",","",$1); print $1}'; }
incl() { callgrind_annotate --inclusive=yes --auto=no --threshold=100 "$work/plugin.out-01" 2>/dev/null | awk -v f="$1" '$0 ~ f && !done {gsub(",","",$1); print $1; done=1}'; }
plain=$(total "$work/plain.out-01"); plugin=$(total "$work/plugin.out-01")
echo "broker thread, $N QoS 1 messages through one broker (instructions):"
echo "  plain mosquitto:  $plain  ($((plain / N)) per message, start-up included)"
echo "  with the plugin:  $plugin  ($((plugin / N)) per message; forward filter ${FORWARD:-elsewhere/#}; spool ${SPOOL:-0})"
# The host layer's trampolines (host/trampolines.rs), one per callback kind, include the plugin's logic.
for cb in message tick acl_check; do
  n=$(incl "trampolines::$cb"); echo "  $cb (inclusive): ${n:-0}  ($(( ${n:-0} / N )) per message)"
done
echo "(callgrind files in $work)"
