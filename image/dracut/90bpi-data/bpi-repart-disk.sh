#!/bin/sh
# Runs systemd-repart on the disk that holds the running slot's root
# partition: the one whose partition UUID is the first half of the root hash
# on the command line (slots A and B both have root partitions, and their
# labels carry versions).
set -eu
hash=$(sed -n 's/.*\broothash=\([0-9a-f]\{64\}\).*/\1/p' /proc/cmdline)
[ -n "$hash" ] || { echo "bpi-repart-disk: no roothash= on the kernel command line" >&2; exit 1; }
uuid=$(echo "$hash" | sed 's/^\(.\{8\}\)\(.\{4\}\)\(.\{4\}\)\(.\{4\}\)\(.\{12\}\).*/\1-\2-\3-\4-\5/')
udevadm wait --timeout=120 "/dev/disk/by-partuuid/$uuid"
part=$(readlink -f "/dev/disk/by-partuuid/$uuid")
disk=$(basename "$(readlink -f "/sys/class/block/${part##*/}/..")")
# In the initrd, v252 defaults to --root=/sysroot for its definitions, which
# is not mounted yet: point it at the ones this module installed.
systemd-repart --dry-run=no --definitions=/usr/lib/repart.d "/dev/$disk"
# The kernel re-reads the table, so the partitions' devices go and come back;
# let udev finish before dm-verity binds to them.
udevadm settle --timeout=120
