#!/bin/sh
# Runs systemd-repart on the disk that holds the bpi-root partition.
set -eu
part=$(readlink -f /dev/disk/by-partlabel/bpi-root)
disk=$(basename "$(readlink -f "/sys/class/block/${part##*/}/..")")
# In the initrd, v252 defaults to --root=/sysroot for its definitions, which
# is not mounted yet: point it at the ones this module installed.
systemd-repart --dry-run=no --definitions=/usr/lib/repart.d "/dev/$disk"
# The kernel re-reads the table, so the partitions' devices go and come back;
# let udev finish before dm-verity binds to them.
udevadm settle --timeout=120
