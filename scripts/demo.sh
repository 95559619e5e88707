#!/usr/bin/env bash
# make demo: a dev node and two Mosquitto brokers with the plugin; a message published on broker A
# arrives at a subscriber on broker B, carried over (the dev node's stand-in for) Twister.
set -euo pipefail
cd "$(dirname "$0")/.."
TARGET=${CARGO_TARGET_DIR:-target}/debug
work=$(mktemp -d /tmp/mqtt-twister-demo.XXXXXX)
chmod 777 "$work"   # mosquitto drops root privileges to its own user
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { # wait_for <seconds> <command...>
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { echo "demo: timed out waiting for: $*" >&2; return 1; }
    sleep 0.1
  done
}

echo "== starting the dev node (twisterd-compatible, one block per second)"
"$TARGET/twister-devnode" -rpcuser=demo -rpcpassword=demo-secret -rpcport=0 -blockinterval=1 >"$work/devnode.out" 2>"$work/devnode.log" &
pids+=($!)
wait_for 10 grep -q 'ready on' "$work/devnode.out"
rpc_url=$(grep -o 'http://127.0.0.1:[0-9]*/' "$work/devnode.out")
echo "   $(cat "$work/devnode.out")"

start_broker() { # name user follows port
  cat >"$work/$1.conf" <<CONF
listener $4 127.0.0.1
allow_anonymous true
log_dest stderr
plugin $PWD/$TARGET/libmqtt_twister.so
plugin_opt_rpc_url $rpc_url
plugin_opt_rpc_user demo
plugin_opt_rpc_password demo-secret
plugin_opt_user $2
plugin_opt_follow $3
plugin_opt_publish demo/#
plugin_opt_create_user true
plugin_opt_poll_interval_ms 100
plugin_opt_state_file $work/$1.state
CONF
  mosquitto -c "$work/$1.conf" >"$work/$1.log" 2>&1 &
  pids+=($!)
}
port_a=$(free_port); port_b=$(free_port)
echo "== starting broker A (Twister user alice) on port $port_a and broker B (user bob) on port $port_b"
start_broker a alice bob "$port_a"
start_broker b bob alice "$port_b"
wait_for 30 grep -q 'mqtt-twister: ready' "$work/a.log"
wait_for 30 grep -q 'mqtt-twister: ready' "$work/b.log"
grep -h 'mqtt-twister: ready' "$work/a.log" "$work/b.log" | sed 's/^/   /'

echo "== subscribing to demo/# on broker B"
mosquitto_sub -p "$port_b" -t 'demo/#' -v -C 1 -W 30 >"$work/received" &
sub=$!
wait_for 10 grep -q 'profile interest is now \["demo/#"\]' "$work/b.log"
msg="hello from broker A at $(date +%T)"
echo "== publishing on broker A: demo/greeting \"$msg\""
mosquitto_pub -p "$port_a" -t demo/greeting -m "$msg"
if wait "$sub"; then
  echo "== received on broker B: $(cat "$work/received")"
  echo "demo: OK (logs in $work)"
else
  echo "demo: FAILED, nothing arrived on broker B (logs in $work)" >&2
  tail -n 20 "$work"/*.log >&2
  exit 1
fi
