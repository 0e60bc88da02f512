#!/bin/sh
# mmdebstrap customize hook: record what was installed and the sha256 of every
# .deb it came from (the build checks both against image/packages.lock), then
# drop the .debs and the pins from the root file system.
set -eu
umask 022
root="$1"
out="$2"
chroot "$root" dpkg-query -W -f '${Package} ${Version} ${Architecture}\n' | sort > "$out/installed.txt"
for deb in "$root"/var/cache/apt/archives/*.deb; do
    printf '%s %s\n' \
        "$(dpkg-deb --show --showformat='${Package} ${Version} ${Architecture}' "$deb")" \
        "$(sha256sum < "$deb" | cut -d' ' -f1)"
done | sort > "$out/debs.txt"
rm -f "$root"/var/cache/apt/archives/*.deb "$root/etc/apt/preferences.d/bpi-lock.pref"
