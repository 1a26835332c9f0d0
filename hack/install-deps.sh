#!/usr/bin/env bash
# Installs the OS packages the tests need when they are missing. Idempotent.
set -euo pipefail
# btrfs-progs: mkfs.btrfs for the tests of the btrfs backend (the driver itself
# uses ioctls and needs no btrfs binary).
pkgs=(util-linux mount btrfs-progs)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing: ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
