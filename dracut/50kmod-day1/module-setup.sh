#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# dracut module: runs kmod-day1-load inside the initramfs, so the out-of-tree driver is in
# place before an initramfs NetworkManager (RHCOS starts one when Ignition needs the
# network) or a network root takes the device. It carries the loader, the configs, the
# same unit as the real root, the node's modprobe.d (options and softdeps apply in both), and
# from the store only the refs of the kernel this initramfs is built for and the trees they
# name. In the real root the loader runs again
# and finds the modules loaded (same srcversion): nothing to do.
#
# KMOD_DAY1_ROOT (tests only) reads the node's files from another root.

_kd1_root() {
    echo "${KMOD_DAY1_ROOT-}"
}

# Only when asked for (add_dracutmodules+=" kmod-day1 " or --add kmod-day1) and usable.
check() {
    local root
    root=$(_kd1_root)
    [[ -x $root/usr/local/bin/kmod-day1-load ]] || return 1
    [[ -n $(ls -A "$root/etc/kmod-day1/config.d" 2>/dev/null) ]] || return 1
    return 255
}

depends() {
    echo systemd
}

# The node's modprobe configuration, so that the loader in the initramfs loads with the same
# options and softdeps as in the real root: the directories kmod-day1-load reads, their
# *.conf and *.alias files (not dot files), each directory once (/lib -> /usr/lib). dracut's
# own kernel-modules module carries /etc/modprobe.d only with --hostonly, which RHCOS does
# not use. /run/modprobe.d is left out: /run is a new tmpfs in the initramfs.
_kd1_install_modprobe_d() {
    local root=$1 d f real seen=" "
    for d in /etc/modprobe.d /usr/local/lib/modprobe.d /usr/lib/modprobe.d /lib/modprobe.d; do
        [[ -d $root$d ]] || continue
        real=$(readlink -f "$root$d")
        [[ $seen == *" $real "* ]] && continue
        seen+="$real "
        for f in "$root$d"/*.conf "$root$d"/*.alias; do
            [[ -f $f && ${f##*/} != .* ]] && inst_simple "$f" "${f#"$root"}"
        done
    done
}

install() {
    local root store=/var/lib/kmod-day1 ref tree f
    root=$(_kd1_root)
    inst_simple "$root/usr/local/bin/kmod-day1-load" /usr/local/bin/kmod-day1-load
    for f in "$root"/etc/kmod-day1/config.d/*.json; do
        [[ -f $f ]] && inst_simple "$f" "${f#"$root"}"
    done
    _kd1_install_modprobe_d "$root"
    inst_simple "$moddir/kmod-day1-load.service" "$systemdsystemunitdir/kmod-day1-load.service"
    for ref in "$root$store"/refs/*/*/"$kernel".json; do
        [[ -f $ref ]] || continue
        # The ref is JSON written by kmod-day1-pull; its tree id is lower-case hex and '-'.
        tree=$(sed -n 's/^ *"tree": *"\([0-9a-f-]*\)".*/\1/p' "$ref")
        [[ -n $tree && -d $root$store/trees/$tree ]] || continue
        inst_simple "$ref" "${ref#"$root"}"
        while IFS= read -r -d '' f; do
            inst_simple "$f" "${f#"$root"}"
        done < <(find "$root$store/trees/$tree" ! -type d -print0)
    done
    $SYSTEMCTL -q --root "$initdir" enable kmod-day1-load.service
}
