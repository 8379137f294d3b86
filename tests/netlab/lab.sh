#!/usr/bin/env bash
# lab.sh -- a NAT lab from Linux network namespaces, for tests/netlab.rs.
#
#   "internet" (ns ${P}inet, bridge br0, 198.18.0.0/24, routes to nothing else)
#      |-- ${P}relay  eth0 198.18.0.10                    the relay
#      |-- ${P}nata   wan 198.18.0.11 --NAT-- lan 10.0.1.1 -- ${P}hosta eth0 10.0.1.2
#      `-- ${P}natb   wan 198.18.0.12 --NAT-- lan 10.0.2.1 -- ${P}hostb eth0 10.0.2.2
#
# Nothing connects to the root namespace. The relay has no route into the LANs.
#
#   lab.sh up MODE_A MODE_B    MODE: restricted (port-restricted cone) | fullcone | symmetric
#   lab.sh down
#   lab.sh exec NODE CMD...    NODE: relay | nata | natb | hosta | hostb
#
# Env: P, the namespace prefix (distinct per lab so labs run side by side).
set -euo pipefail

P=${P:?set P, the namespace prefix}
NODES="inet relay nata natb hosta hostb"

nsx() { local n=$1; shift; ip netns exec "${P}$n" "$@"; }

nat_rules() { # router mode lan_host
  local router=$1 mode=$2 host=$3 masq="masquerade" dnat=""
  [ "$mode" = symmetric ] && masq="masquerade random,fully-random"
  if [ "$mode" = fullcone ]; then
    dnat="chain prerouting_c { type nat hook prerouting priority -100; policy accept;
            iifname \"wan\" meta l4proto { tcp, udp } dnat to $host; }"
  fi
  nsx "$router" nft -f - <<RULES
table ip nat {
  chain postrouting_c { type nat hook postrouting priority 100; policy accept;
    oifname "wan" $masq; }
  $dnat
}
table ip filter {
  chain forward_c { type filter hook forward priority 0; policy drop;
    ct state established,related accept
    iifname "lan" oifname "wan" accept
    ct status dnat accept
  }
  # Like a home router: unsolicited inbound TCP/UDP to the router is dropped silently, so an
  # early punch packet neither gets a reset nor pins a conntrack entry on the wrong port.
  chain input_c { type filter hook input priority 0; policy accept;
    iifname "wan" meta l4proto { tcp, udp } ct state new drop
  }
}
RULES
}

up() {
  local mode_a=${1:-restricted} mode_b=${2:-restricted} n x
  for n in $NODES; do
    ip netns add "${P}$n"
    nsx "$n" ip link set lo up
    nsx "$n" sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
  done
  ip -n "${P}inet" link add name br0 type bridge
  ip -n "${P}inet" link set br0 up
  attach() { # node ifname tag
    ip -n "${P}$1" link add name "$2" type veth peer name "p-$3" netns "${P}inet"
    ip -n "${P}inet" link set dev "p-$3" master br0 up
  }
  attach relay eth0 r
  ip -n "${P}relay" addr add 198.18.0.10/24 dev eth0
  ip -n "${P}relay" link set eth0 up
  for x in a b; do
    local router=nat$x host=host$x net mode
    if [ $x = a ]; then net=1 mode=$mode_a; else net=2 mode=$mode_b; fi
    attach "$router" wan "$x"
    ip -n "${P}$router" addr add "198.18.0.1$net/24" dev wan
    ip -n "${P}$router" link set wan up
    ip -n "${P}$router" link add name lan type veth peer name eth0 netns "${P}$host"
    ip -n "${P}$router" addr add "10.0.$net.1/24" dev lan
    ip -n "${P}$router" link set lan up
    ip -n "${P}$host" addr add "10.0.$net.2/24" dev eth0
    ip -n "${P}$host" link set eth0 up
    ip -n "${P}$host" route add default via "10.0.$net.1"
    nsx "$router" sysctl -qw net.ipv4.ip_forward=1
    nat_rules "$router" "$mode" "10.0.$net.2"
  done
}

down() {
  local n pid
  for n in $NODES; do
    for pid in $(ip netns pids "${P}$n" 2>/dev/null); do kill -9 "$pid" 2>/dev/null || true; done
  done
  for n in $NODES; do ip netns del "${P}$n" 2>/dev/null || true; done
}

cmd=${1:-}; shift || true
case "$cmd" in
  up) up "$@" ;;
  down) down ;;
  exec) node=$1; shift; exec ip netns exec "${P}$node" "$@" ;;
  *) sed -n '2,16p' "$0"; exit 2 ;;
esac
