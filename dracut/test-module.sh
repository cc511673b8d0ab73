#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# Builds an initramfs with the real dracut and the kmod-day1 module from a scratch root
# (KMOD_DAY1_ROOT), then checks with lsinitrd that it holds what initramfs-content (mcgen's
# definition) names: the loader, the configs,
# the enabled unit, the node's modprobe.d files, the refs of the target kernel and their
# trees, and nothing of the other kernel. Needs root and dracut-core (hack/install-deps).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
kver=6.1.0-kd1test
other=6.1.0-kd1other
sys=$work/sysroot
base=$work/dracut

# dracut's own modules plus ours, as `make install-dracut` lays it out.
cp -a /usr/lib/dracut "$base"
make -s -C "$here/.." install-dracut DESTDIR="$work/inst" DRACUTDIR=/modules.d
cp -a "$work/inst/modules.d/50kmod-day1" "$base/modules.d/"

# A node root: loader, config, store with one ref per kernel.
mkdir -p "$sys/usr/local/bin" "$sys/etc/kmod-day1/config.d" "$sys/lib/modules/$kver"
printf '#!/bin/sh\n' > "$sys/usr/local/bin/kmod-day1-load"
chmod 0755 "$sys/usr/local/bin/kmod-day1-load"
echo '{"version": 1, "moduleSets": []}' > "$sys/etc/kmod-day1/config.d/99-test.json"
# Store format 2 (refs/CONFIG/SET/KVER/IMAGE-KEY.json), and one format 1 ref
# (refs/CONFIG/SET/KVER.json) of set ice, as a store not yet upgraded has it.
ref() {
    local k=$1 tree=$2 file=$3
    mkdir -p "$(dirname "$file")"
    printf '{\n  "version": 2,\n  "image": "r/x:%s",\n  "manifestDigest": "sha256:00",\n  "tree": "%s",\n  "committedAt": 1\n}\n' "$k" "$tree" > "$file"
}
for k in $kver $other; do
    tree=$(printf '%s' "$k" | sha256sum | cut -c1-64)
    mkdir -p "$sys/var/lib/kmod-day1/trees/$tree/modules/extra"
    printf 'ko for %s\n' "$k" > "$sys/var/lib/kmod-day1/trees/$tree/modules/extra/e1000.ko"
    ref "$k" "$tree" "$sys/var/lib/kmod-day1/refs/99-test/e1000/$k/0123456789abcdef.json"
done
ice_tree=$(printf 'ice %s' "$kver" | sha256sum | cut -c1-64)
mkdir -p "$sys/var/lib/kmod-day1/trees/$ice_tree/modules/extra"
echo ice > "$sys/var/lib/kmod-day1/trees/$ice_tree/modules/extra/ice.ko"
ref "$kver" "$ice_tree" "$sys/var/lib/kmod-day1/refs/99-test/ice/$kver.json"
# The node's modprobe configuration: carried but for /run, dot files and other names;
# /lib/modprobe.d is /usr/lib/modprobe.d, carried once.
mkdir -p "$sys/etc/modprobe.d" "$sys/usr/lib/modprobe.d" "$sys/usr/local/lib/modprobe.d" "$sys/run/modprobe.d"
echo 'options e1000 TxDescriptors=128' > "$sys/etc/modprobe.d/kd1-test.conf"
echo 'softdep e1000 pre: ptp' > "$sys/usr/lib/modprobe.d/kd1-vendor.conf"
echo 'alias kd1-nic e1000' > "$sys/usr/lib/modprobe.d/kd1-vendor.alias"
echo 'options e1000 debug=1' > "$sys/usr/local/lib/modprobe.d/kd1-local.conf"
echo 'options e1000 run=1' > "$sys/run/modprobe.d/kd1-run.conf"
echo 'options e1000 hidden=1' > "$sys/etc/modprobe.d/.kd1-hidden.conf"
echo 'not read by kmod' > "$sys/etc/modprobe.d/kd1-README"
ln -s ../usr/lib/modprobe.d "$sys/lib/modprobe.d"
want_tree=$(printf '%s' "$kver" | sha256sum | cut -c1-64)
other_tree=$(printf '%s' "$other" | sha256sum | cut -c1-64)

KMOD_DAY1_ROOT=$sys dracutbasedir=$base dracut --quiet --no-hostonly --no-kernel \
    --modules "systemd kmod-day1" --kver "$kver" --tmpdir "$work" --force "$work/initrd.img"
lsinitrd "$work/initrd.img" > "$work/list"

fail=0
expect() { grep -q -- "$1" "$work/list" || { echo "missing from the initramfs: $1"; fail=1; }; }
refuse() { ! grep -q -- "$1" "$work/list" || { echo "must not be in the initramfs: $1"; fail=1; }; }
expect ' usr/local/bin/kmod-day1-load$'
expect ' etc/kmod-day1/config.d/99-test.json$'
expect " var/lib/kmod-day1/refs/99-test/e1000/$kver/0123456789abcdef.json$"
expect " var/lib/kmod-day1/trees/$want_tree/modules/extra/e1000.ko$"
expect " var/lib/kmod-day1/refs/99-test/ice/$kver.json$"
expect " var/lib/kmod-day1/trees/$ice_tree/modules/extra/ice.ko$"
expect 'kmod-day1-load.service$'
expect 'sysinit.target.wants/kmod-day1-load.service'
expect ' etc/modprobe.d/kd1-test.conf$'
expect ' usr/lib/modprobe.d/kd1-vendor.conf$'
expect ' usr/lib/modprobe.d/kd1-vendor.alias$'
expect ' usr/local/lib/modprobe.d/kd1-local.conf$'
refuse 'kd1-run.conf'
refuse 'kd1-hidden'
refuse 'kd1-README'
refuse "e1000/$other"
refuse "$other_tree"
[ $fail = 0 ] || { cat "$work/list" | grep -i kmod-day1; exit 1; }
echo "dracut module: ok"
