#!/bin/sh
# Runs systemd-repart on the disk that holds the bpi-root partition.
set -eu
part=$(readlink -f /dev/disk/by-partlabel/bpi-root)
disk=$(basename "$(readlink -f "/sys/class/block/${part##*/}/..")")
exec systemd-repart --dry-run=no "/dev/$disk"
