#!/usr/bin/env bash
# Runs berth's whole test suite on a fresh Debian machine, as root: installs the Debian
# packages the tests use, builds the workspace once (dev profile, one target dir), runs every
# unit and end-to-end test in parallel, then checks that nothing was left behind.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" != 0 ]; then
  echo "tests/run.sh: run as root: the tests create sockets, mounts, namespaces and cgroups" >&2
  exit 1
fi

# busybox-static: test images; docker-registry: a real registry on loopback; skopeo/umoci:
# interoperability checks of the images we build; runc/crun: the OCI runtimes berth-shim drives;
# nftables/iproute2/containernetworking-plugins: the network service's nft, test checks, CNI mode;
# zstd: zstd-compressed test layers.
packages=(busybox-static docker-registry skopeo umoci runc crun nftables iproute2 containernetworking-plugins zstd)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

cargo build --workspace --all-targets --locked
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast --test-threads 4
else
  cargo test --workspace --locked --no-fail-fast
fi
tests/leak-check.sh
