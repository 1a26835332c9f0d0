#!/usr/bin/env bash
# Installs the OS packages the tests need when they are missing. Idempotent.
set -euo pipefail
# btrfs-progs: mkfs.btrfs for the tests of the btrfs backend (the driver itself
# uses ioctls and needs no btrfs binary). e2fsprogs and xfsprogs: mkfs and
# the offline ext4 resize for image volumes, run by the driver and packed into
# the agent's image by `make image`.
pkgs=(util-linux mount btrfs-progs e2fsprogs xfsprogs)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
