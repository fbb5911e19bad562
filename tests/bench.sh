#!/usr/bin/env bash
# Runs berth's benchmarks (release profile) beside the reference tools measured in the same run
# (Debian's containerd, runc, crun, CNI plugins), as root. Not part of CI: `tests/run.sh` is.
# Usage: tests/bench.sh [images|snapshots|runtime|shim|tasks|network|workflow|build|cri]... (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "tests/bench.sh: run as root" >&2
  exit 1
fi
packages=(busybox-static docker-registry skopeo umoci runc crun containerd
          containernetworking-plugins nftables iproute2 python3 podman bsdextrautils
          buildah)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

benches=("$@")
[ ${#benches[@]} -gt 0 ] || benches=(images snapshots runtime shim tasks network workflow build cri)
cargo build --release --workspace --locked
# Each bench prints its details, and one `SUMMARY<TAB>metric<TAB>berth<TAB>reference<TAB>ratio<TAB>target`
# line per headline figure; the summaries of every bench are printed as one table at the end.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for b in "${benches[@]}"; do
  BERTH_BIN_DIR="$PWD/target/release" cargo bench --locked -p berth-tests --bench "$b" | tee -a "$log"
done
echo
{
  printf 'metric\tberth\treference\tratio\ttarget\n'
  grep '^SUMMARY' "$log" | cut -f2-
} | column -t -s $'\t'
