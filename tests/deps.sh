#!/usr/bin/env bash
# Installs what the namespace cluster (make test, make demo) needs, only
# what is missing: Debian packages through apt (one `apt-get update` at
# most), cnitool and the chained reference plugins built from go.mod.
set -euo pipefail
cd "$(dirname "$0")/.."
GO=${GO:-go}
BIN="$PWD/bin"

# util-linux (unshare, setpriv, nsenter) and coreutils are essential on
# Debian; the rest are installed when missing. iptables: portmap's default
# backend; systemd: systemd-analyze for the unit checks (no systemd as PID 1
# is needed). The container runtimes are for tests/runtimes (podman with its
# CNI backend, runc, a static busybox for offline images, containerd's CRI).
pkgs=(etcd-server etcd-client iproute2 wireguard-tools tcpdump iperf3 iputils-ping nftables iptables systemd
	containernetworking-plugins podman runc conmon busybox-static containerd)
# make bench also compares against Debian's wireguard-go, reads TUN
# offload features with ethtool, and tests/bench/cni -trace uses strace.
[[ -n ${WGCNI_BENCH:-} ]] && pkgs+=(wireguard-go ethtool strace)
missing=()
for p in "${pkgs[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
		missing+=("$p")
	fi
done
if ((${#missing[@]})); then
	if [[ $(id -u) -ne 0 ]]; then
		echo "deps: missing Debian packages ${missing[*]}; run as root to install them" >&2
		exit 1
	fi
	echo "deps: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

mkdir -p "$BIN/ext"
if [[ ! -x "$BIN/cnitool" ]]; then
	# Pinned in go.mod as a tool dependency (`go get -tool`).
	echo "deps: go build cnitool (containernetworking/cni from go.mod)"
	"$GO" build -o "$BIN/cnitool" github.com/containernetworking/cni/cnitool
fi
# Debian's reference plugins speak CNI up to 1.0.0; chains at 1.1.0 need
# them built from our go.mod's containernetworking/plugins.
for p in portmap bandwidth tuning; do
	if [[ ! -x "$BIN/ext/$p" ]]; then
		echo "deps: go build $p (containernetworking/plugins from go.mod)"
		"$GO" build -o "$BIN/ext/$p" "github.com/containernetworking/plugins/plugins/meta/$p"
	fi
done
