#!/usr/bin/env bash
# A bed of test hosts on this machine: network namespaces joined by veth pairs to a bridge, each
# host with its own address and (through `unshare --uts`) its own hostname, so that MPI talks
# TCP between them and a host can be killed or cut off as a whole. Root only. Traffic stays in
# the bed's namespaces (198.18.0.0/24, the range reserved for network benchmarks).
#
#   hostbed.sh up BED N [--delay MS] [--rate MBIT]   make head + hosts 1..N (BED: <= 6 chars)
#   hostbed.sh down BED               kill every process of the bed by PID, remove what up made
#   hostbed.sh exec BED HOST CMD...   run CMD in HOST (0 = head, K, nodeK or its address)
#   hostbed.sh agent HOST CMD...      Open MPI's rsh agent (--mca plm_rsh_agent; BED from $PHX_BED)
#   hostbed.sh kill BED HOST          SIGKILL every process of HOST at once (its MPI daemon too)
#   hostbed.sh link BED HOST down|up  cut / restore HOST's link (the bridge's end of its cable)
#   hostbed.sh pids BED HOST          the PIDs running in HOST
#   hostbed.sh check                  exit 0 if a bed can be made here, else say why (exit 77)
#
# Names: namespaces BED-sw (the bridge) and BED-h0 (head: launchers, ompi-server, slurmctld),
# BED-h1..BED-hN; host K is nodeK at 198.18.0.(10+K). `up` records what it made in
# /run/phoenix-bed/BED; `down` removes exactly that. The head is a host like the others, but
# tests never kill it (it plays the login node).
set -euo pipefail
STATE_ROOT=/run/phoenix-bed
NET=198.18.0

die() { echo "hostbed: $*" >&2; exit 2; }

check() {
  [ "$(id -u)" -eq 0 ] || { echo "hostbed: needs root (network namespaces)"; return 77; }
  command -v ip >/dev/null && command -v nsenter >/dev/null && command -v unshare >/dev/null ||
    { echo "hostbed: needs ip (iproute2), nsenter and unshare (util-linux)"; return 77; }
  local probe="phxprobe$$"
  if ! ip netns add "$probe" 2>/dev/null; then echo "hostbed: ip netns add is not allowed here"; return 77; fi
  ip netns del "$probe"
  return 0
}

# host index of HOST: 0..N from K, nodeK, head, BED-hK or an address of the bed
index_of() {
  case $1 in
    head) echo 0 ;;
    node[0-9]*) echo "${1#node}" ;;
    "$NET".*) echo $(( ${1##*.} - 10 )) ;;
    *-h[0-9]*) echo "${1##*-h}" ;;
    [0-9]*) echo "$1" ;;
    *) die "unknown host '$1' (use K, nodeK, head or 198.18.0.(10+K))" ;;
  esac
}

ns_of() { echo "$1-h$(index_of "$2")"; }

# run CMD in host K of BED under its own hostname (nsenter, not `ip netns exec`: the latter
# remounts /sys, which slurmd cannot live with)
run_in() {
  local bed=$1 k; k=$(index_of "$2"); shift 2
  [ -e "/run/netns/$bed-h$k" ] || die "no host $k in bed $bed (hostbed.sh up $bed N first)"
  local name=node$k
  [ "$k" = 0 ] && name=head
  exec nsenter --net="/run/netns/$bed-h$k" unshare --uts sh -c 'hostname "$0"; exec "$@"' "$name" "$@"
}

up() {
  local bed=$1 n=$2 delay="" rate=""
  shift 2
  while [ $# -gt 0 ]; do
    case $1 in
      --delay) delay=$2; shift 2 ;;
      --rate) rate=$2; shift 2 ;;
      *) die "unknown option $1" ;;
    esac
  done
  [ ${#bed} -le 6 ] || die "bed name '$bed' too long (at most 6 characters: interface names)"
  [ "$n" -ge 1 ] && [ "$n" -le 200 ] || die "N must be 1..200"
  local st="$STATE_ROOT/$bed"
  [ -e "$st" ] && die "bed $bed exists ($st); hostbed.sh down $bed first"
  mkdir -p "$st"
  : > "$st/netns"
  # every exit path below removes what was made so far
  trap 'echo "hostbed: up failed, removing bed $bed" >&2; down "$bed" >/dev/null 2>&1 || true' ERR
  ip netns add "$bed-sw" && echo "$bed-sw" >> "$st/netns"
  ip -n "$bed-sw" link add br0 type bridge
  ip -n "$bed-sw" link set br0 up
  ip -n "$bed-sw" link set lo up
  for k in $(seq 0 "$n"); do
    local ns="$bed-h$k"
    ip netns add "$ns" && echo "$ns" >> "$st/netns"
    ip link add "$bed-e$k" type veth peer name "$bed-s$k"
    ip link set "$bed-e$k" netns "$ns"
    ip link set "$bed-s$k" netns "$bed-sw"
    ip -n "$ns" link set "$bed-e$k" name eth0
    ip -n "$ns" addr add "$NET.$((10 + k))/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    ip -n "$bed-sw" link set "$bed-s$k" master br0
    ip -n "$bed-sw" link set "$bed-s$k" up
    # a cluster-like link on the host's egress: bandwidth with tbf, latency with netem (not
    # every kernel has netem: this VM's 6.18 has tbf but not netem)
    if [ -n "$delay" ]; then
      local q=(netem delay "${delay}ms")
      [ -n "$rate" ] && q+=(rate "${rate}mbit")
      ip netns exec "$ns" tc qdisc add dev eth0 root "${q[@]}" ||
        die "--delay needs tc's netem qdisc, which this kernel lacks (use --rate alone: tbf)"
    elif [ -n "$rate" ]; then
      ip netns exec "$ns" tc qdisc add dev eth0 root tbf rate "${rate}mbit" burst 256kb latency 50ms
    fi
  done
  echo "$n" > "$st/hosts"
  trap - ERR
  echo "hostbed: bed $bed up: head $NET.10, node1..node$n at $NET.11..$NET.$((10 + n))${delay:+, delay ${delay} ms}${rate:+, rate ${rate} Mbit/s}"
}

pids_of() {
  local bed=$1 k; k=$(index_of "$2")
  [ -e "/run/netns/$bed-h$k" ] || return 0
  ip netns pids "$bed-h$k" 2>/dev/null || true
}

kill_host() {
  local bed=$1 host=$2 p
  p=$(pids_of "$bed" "$host")
  # SIGSTOP first so that nothing forks or restarts in between, then SIGKILL all at once
  [ -z "$p" ] || { kill -STOP $p 2>/dev/null || true; kill -KILL $p 2>/dev/null || true; }
  echo "hostbed: killed $(echo $p | wc -w) processes of $(ns_of "$bed" "$host")"
}

link() {
  local bed=$1 k; k=$(index_of "$2")
  case $3 in
    down|up) ip -n "$bed-sw" link set "$bed-s$k" "$3" ;;
    *) die "link: down or up" ;;
  esac
}

down() {
  local bed=$1 st="$STATE_ROOT/$1" ns p i
  [ -e "$st/netns" ] || { echo "hostbed: no bed $bed"; return 0; }
  for ns in $(tac "$st/netns"); do
    case $ns in "$bed"-h*) ;; *) continue ;; esac
    for i in 1 2 3 4 5; do
      p=$(ip netns pids "$ns" 2>/dev/null || true)
      [ -z "$p" ] && break
      kill -KILL $p 2>/dev/null || true
      sleep 0.2
    done
  done
  for ns in $(tac "$st/netns"); do ip netns del "$ns" 2>/dev/null || true; done
  rm -rf "$st"
  echo "hostbed: bed $bed removed"
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case $cmd in
  up) [ $# -ge 2 ] || die "usage: up BED N [--delay MS] [--rate MBIT]"; up "$@" ;;
  down) [ $# -eq 1 ] || die "usage: down BED"; down "$1" ;;
  exec) [ $# -ge 3 ] || die "usage: exec BED HOST CMD..."; run_in "$@" ;;
  agent)
    # Open MPI calls AGENT [ssh-like options] HOST CMD...; skip options it may add
    while [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; do shift; done
    [ -n "${PHX_BED:-}" ] || die "agent: set PHX_BED to the bed's name"
    host=$1; shift
    run_in "$PHX_BED" "$host" sh -c "$*" ;;
  kill) [ $# -eq 2 ] || die "usage: kill BED HOST"; kill_host "$1" "$2" ;;
  link) [ $# -eq 3 ] || die "usage: link BED HOST down|up"; link "$1" "$2" "$3" ;;
  pids) [ $# -eq 2 ] || die "usage: pids BED HOST"; pids_of "$1" "$2" ;;
  check) check ;;
  *) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; [ -z "$cmd" ] && exit 2 || die "unknown command $cmd" ;;
esac
