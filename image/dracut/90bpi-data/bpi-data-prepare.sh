#!/bin/sh
# Prepares the data partition before /etc and /var are mounted from it: the
# overlay's upper and work directories, and on first boot /var seeded from the
# image's copy (usr/share/factory/var). The rest of /bpi/data is created by
# systemd-tmpfiles from bpi-layout.conf once the real root runs.
set -eu
data=/sysroot/bpi/data
mkdir -p "$data/overlay/etc/upper" "$data/overlay/etc/work"
chmod 0700 "$data/overlay/etc/work"
if [ ! -d "$data/var" ]; then
    rm -rf "$data/var.new"
    cp -a /sysroot/usr/share/factory/var "$data/var.new"
    mv "$data/var.new" "$data/var"
fi
