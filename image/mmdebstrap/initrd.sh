#!/bin/sh
# mmdebstrap customize hook: build the initrd with dracut inside the new root,
# with bpi-os's dracut configuration and module (image/dracut/).
set -eu
root="$1"
src="$2"
mkdir -p "$root/usr/lib/dracut/modules.d/90bpi-data" "$root/etc/dracut.conf.d"
cp "$src"/90bpi-data/* "$root/usr/lib/dracut/modules.d/90bpi-data/"
chmod 0755 "$root"/usr/lib/dracut/modules.d/90bpi-data/*.sh
cp "$src/bpi.conf" "$root/etc/dracut.conf.d/90-bpi.conf"
kver=$(ls "$root/lib/modules")
chroot "$root" dracut --force --kver "$kver" "/boot/initrd.img-$kver"
