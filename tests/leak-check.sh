#!/usr/bin/env bash
# After the suite: no berth process, registry fixture, mount, socket or temp root may remain.
set -u
leaks=0
report() { echo "leak-check: $*" >&2; leaks=1; }

# Live processes only: an exited one waits as a zombie until init reaps it.
live() {
  ps -eo pid=,stat=,args= | awk '$2 !~ /^Z/' |
    grep -E 'berthd|berth-(images|snapshots|tasks|network|cri|shim)|docker-registry serve /tmp/' |
    grep -v -E 'grep|leak-check' || true
}
for _ in $(seq 50); do
  procs=$(live)
  [ -z "$procs" ] && break
  sleep 0.1
done
[ -z "$procs" ] || report "processes left running:"$'\n'"$procs"
mounts=$(grep -E ' /tmp/berth-test-' /proc/self/mountinfo || true)
[ -z "$mounts" ] || report "mounts left:"$'\n'"$mounts"
dirs=$(find /tmp -maxdepth 1 -name 'berth-test-*' 2>/dev/null || true)
[ -z "$dirs" ] || report "temp roots left:"$'\n'"$dirs"
# Containers the tests run get cgroups named after their temp root.
cgroups=$(find /sys/fs/cgroup -mindepth 1 -maxdepth 2 -type d -name 'berth-test-*' 2>/dev/null || true)
[ -z "$cgroups" ] || report "cgroups left:"$'\n'"$cgroups"

links=$(ip -o link show 2>/dev/null | awk -F': ' '{print $2}' | grep -E '^(berth|bveth)' || true)
[ -z "$links" ] || report "network links left:"$'\n'"$links"
tables=$(nft list tables 2>/dev/null | grep -E ' berth' || true)
[ -z "$tables" ] || report "nftables tables left:"$'\n'"$tables"

if [ "$leaks" = 0 ]; then echo "leak-check: nothing left behind"; fi
exit "$leaks"
