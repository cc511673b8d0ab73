#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# dracut module: runs kmod-day1-load inside the initramfs, so the out-of-tree driver is in
# place before an initramfs NetworkManager (RHCOS starts one when Ignition needs the
# network) or a network root takes the device. It carries the loader, the configs, the
# same unit as the real root, the node's modprobe.d (options and softdeps apply in both), and
# from the store only the refs of the kernel this initramfs is built for and the trees they
# name. What it carries is defined once, in initramfs-content (written by mcgen, which builds
# its --output initrd from the same definition). In the real root the loader runs again and
# finds the modules loaded (same srcversion): nothing to do.
#
# KMOD_DAY1_ROOT (tests only) reads the node's files from another root.

_kd1_root() {
    echo "${KMOD_DAY1_ROOT-}"
}

# The items of initramfs-content (beside this script), the one definition of what goes into
# an initramfs, shared with `mcgen --output initrd`: "KIND PATH ARGS..." lines.
_kd1_items() {
    local kind=$1 k p rest
    while read -r k p rest; do
        [[ $k == "$kind" ]] && echo "$p $rest"
    done < "$moddir/initramfs-content"
}

# Only when asked for (add_dracutmodules+=" kmod-day1 " or --add kmod-day1) and usable.
check() {
    local root loader config
    root=$(_kd1_root)
    read -r loader _ < <(_kd1_items loader)
    read -r config _ < <(_kd1_items config)
    [[ -x $root$loader ]] || return 1
    [[ -n $(ls -A "$root$config" 2>/dev/null) ]] || return 1
    return 255
}

depends() {
    echo systemd
}

# The node's modprobe configuration, so that the loader in the initramfs loads with the same
# options and softdeps as in the real root: the directories of the modprobe.d items, their
# files with the item's suffixes (not dot files), each directory once (/lib -> /usr/lib).
# dracut's own kernel-modules module carries /etc/modprobe.d only with --hostonly, which RHCOS
# does not use. /run/modprobe.d is not an item: /run is a new tmpfs in the initramfs.
_kd1_install_modprobe_d() {
    local root=$1 d suffixes s f real seen=" "
    while read -r d suffixes; do
        [[ -d $root$d ]] || continue
        real=$(readlink -f "$root$d")
        [[ $seen == *" $real "* ]] && continue
        seen+="$real "
        for s in $suffixes; do
            for f in "$root$d"/*"$s"; do
                [[ -f $f && ${f##*/} != .* ]] && inst_simple "$f" "${f#"$root"}"
            done
        done
    done < <(_kd1_items modprobe.d)
}

# From the store, only the refs of the kernel this initramfs is built for (format 2:
# refs/CONFIG/SET/KVER/IMAGE-KEY.json; format 1: refs/CONFIG/SET/KVER.json) and the trees
# they name.
_kd1_install_store() {
    local root=$1 store=$2 ref tree f
    for ref in "$root$store"/refs/*/*/"$kernel"/*.json "$root$store"/refs/*/*/"$kernel".json; do
        [[ -f $ref ]] || continue
        # The ref is JSON written by kmod-day1-pull; its tree id is lower-case hex and '-'.
        tree=$(sed -n 's/^ *"tree": *"\([0-9a-f-]*\)".*/\1/p' "$ref")
        [[ -n $tree && -d $root$store/trees/$tree ]] || continue
        inst_simple "$ref" "${ref#"$root"}"
        while IFS= read -r -d '' f; do
            inst_simple "$f" "${f#"$root"}"
        done < <(find "$root$store/trees/$tree" ! -type d -print0)
    done
}

install() {
    local root loader config suffix unit target store f
    root=$(_kd1_root)
    read -r loader _ < <(_kd1_items loader)
    read -r config suffix < <(_kd1_items config)
    read -r unit target < <(_kd1_items unit)
    read -r store _ < <(_kd1_items store)
    inst_simple "$root$loader" "$loader"
    for f in "$root$config"/*"$suffix"; do
        [[ -f $f ]] && inst_simple "$f" "${f#"$root"}"
    done
    _kd1_install_modprobe_d "$root"
    inst_simple "$moddir/${unit##*/}" "$unit"
    _kd1_install_store "$root" "$store"
    $SYSTEMCTL -q --root "$initdir" add-wants "$target" "${unit##*/}"
}
