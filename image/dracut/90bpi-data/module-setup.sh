#!/bin/bash
# dracut module: on first boot create the data partition (systemd-repart), then
# mount it at /sysroot/bpi/data and put /var and the /etc overlay's upper layer
# on it before the switch to the real root; keep a signed UKI's PCR policy
# (/.extra) in /run/systemd for the store.

check() {
    return 0
}

depends() {
    echo systemd systemd-repart systemd-veritysetup dm
    return 0
}

installkernel() {
    hostonly='' instmods erofs overlay ext4 loop dm-verity
}

install() {
    inst_multiple mkfs.ext4 udevadm mkdir cp mv chmod readlink basename sed
    inst_simple "$moddir/40-bpi-store.conf" /usr/lib/repart.d/40-bpi-store.conf
    inst_simple "$moddir/50-bpi-data.conf" /usr/lib/repart.d/50-bpi-data.conf
    inst_simple "$moddir/repart-disk.conf" "$systemdsystemunitdir/systemd-repart.service.d/bpi-disk.conf"
    inst_script "$moddir/bpi-repart-disk.sh" /usr/bin/bpi-repart-disk
    inst_script "$moddir/bpi-data-prepare.sh" /usr/bin/bpi-data-prepare
    mkdir -p "$initdir$systemdsystemunitdir/initrd-fs.target.wants"
    for unit in sysroot-bpi-data.mount bpi-data-prepare.service sysroot-etc.mount sysroot-var.mount; do
        inst_simple "$moddir/$unit" "$systemdsystemunitdir/$unit"
        ln_r "$systemdsystemunitdir/$unit" "$systemdsystemunitdir/initrd-fs.target.wants/$unit"
    done
    mkdir -p "$initdir$systemdsystemunitdir/initrd.target.wants"
    inst_simple "$moddir/bpi-pcr-signature.service" "$systemdsystemunitdir/bpi-pcr-signature.service"
    ln_r "$systemdsystemunitdir/bpi-pcr-signature.service" "$systemdsystemunitdir/initrd.target.wants/bpi-pcr-signature.service"
}
