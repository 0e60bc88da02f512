#!/bin/sh
# mmdebstrap customize hook: build the initrd with dracut inside the new root,
# with bpi-os's dracut configuration and module (image/dracut/).
# Modes are set here, not taken from the checkout (which follow the umask of
# whoever cloned it): they end up in the initrd's bytes.
set -eu
umask 022
root="$1"
src="$2"
install -d -m 0755 "$root/usr/lib/dracut/modules.d/90bpi-data" "$root/etc/dracut.conf.d"
install -m 0644 "$src"/90bpi-data/* "$root/usr/lib/dracut/modules.d/90bpi-data/"
chmod 0755 "$root"/usr/lib/dracut/modules.d/90bpi-data/*.sh
install -m 0644 "$src/bpi.conf" "$root/etc/dracut.conf.d/90-bpi.conf"
kver=$(ls "$root/lib/modules")
chroot "$root" dracut --force --kver "$kver" "/boot/initrd.img-$kver"
