#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# kmod-day1-install REF@sha256:DIGEST
# Puts kmod-day1-load and kmod-day1-pull from the kmod-day1 node image into /usr/local/bin
# (/var/usrlocal/bin on RHCOS), unless the record in the store says that they are there from
# that digest already. Run by kmod-day1-install.service (mcgen --delivery image) with the
# node's own podman, and by the prestage DaemonSet from its own image (KMOD_DAY1_FROM).
# POSIX sh: it runs before the binaries exist. A failure is one journal line and exit 1; it
# never reboots, and the units skip binaries that are not there (the in-tree drivers stay).
set -eu
image=$1
bin=${KMOD_DAY1_BIN_DIR:-/usr/local/bin}
store=${KMOD_DAY1_STORE:-/var/lib/kmod-day1}
from=${KMOD_DAY1_FROM:-}
authfile=${KMOD_DAY1_AUTHFILE:-/var/lib/kubelet/config.json}
record=$store/node-binaries.json
# On /run: "installed during this boot", after the loader's turn (kmod-day1-pull reboots once).
marker=${KMOD_DAY1_INSTALLED_MARKER:-/run/kmod-day1/node-binaries-installed}
names="kmod-day1-load kmod-day1-pull"
podman=
tmp=

fail() {
    echo "<3>kmod-day1-install: $*; the node binaries are unchanged" >&2
    exit 1
}
cleanup() {
    [ -z "$tmp" ] || rm -f $tmp
    [ -z "$podman" ] || $podman image unmount "$image" >/dev/null 2>&1 || :
}
trap cleanup EXIT

digest=${image##*@}
hex=${digest#sha256:}
case $hex in *[!0-9a-f]* | "") hex= ;; esac
[ "$digest" != "$image" ] && [ ${#hex} -eq 64 ] || fail "node image $image is not pinned by a sha256 digest"

# An install's record: the image digest and the sha256 of each binary it put there. The
# binaries are installed when the record matches them: an install interrupted, or raced by
# one of another digest, is done again.
record_of() {
    printf '{"version":1,"imageDigest":"%s","files":{' "$digest"
    sep=
    for n in $names; do
        printf '%s"%s":"sha256:%s"' "$sep" "$n" "$(sha256sum <"$1/$n" | cut -d' ' -f1)"
        sep=,
    done
    printf '}}\n'
}
installed() {
    for n in $names; do [ -x "$bin/$n" ] || return 1; done
    [ "$(cat "$record" 2>/dev/null)" = "$(record_of "$bin")" ]
}
if installed; then
    echo "kmod-day1-install: the node binaries of $digest are installed"
    exit 0
fi

if [ -z "$from" ]; then
    # Storage of its own: CRI-O's (podman's default) is emptied by crio-wipe and by the
    # kubelet's image garbage collection. podman does not read the kubelet's pull secret by
    # itself; it honours the node's registries.conf and policy.json.
    podman="podman --root $store/podman-storage --runroot /run/kmod-day1/podman-run"
    auth=
    [ ! -f "$authfile" ] || auth="--authfile $authfile"
    # network-online.target does not promise a route (NetworkManager may call startup done
    # before the NIC is up): retry, 5 tries over about 75 s, as the kubelet backs off.
    delay=${KMOD_DAY1_RETRY_DELAY:-5}
    tries=1
    until $podman pull --quiet $auth "$image" >/dev/null; do
        [ $tries -lt 5 ] || fail "podman could not pull the node image $image (5 tries)"
        echo "<4>kmod-day1-install: pulling $image failed (try $tries of 5); trying again in $delay s" >&2
        sleep $delay
        tries=$((tries + 1))
        delay=$((delay * 2))
    done
    from=$($podman image mount "$image")/usr/bin || fail "podman could not mount the node image $image"
fi
for n in $names; do
    [ -f "$from/$n" ] || fail "the node image $image has no /usr/bin/$n"
done
new=$(record_of "$from")

# Each file is created by this process in the target directory, so it gets the label the
# policy gives that directory (bin_t); restorecon, where there is one, sets the label of the
# path. Both are complete and on disk before either is renamed into place.
mkdir -p "$bin" "$store"
for n in $names; do
    t=$bin/.$n.install.$$
    tmp="$tmp $t"
    { cp "$from/$n" "$t" && chmod 0755 "$t" && sync "$t"; } || fail "could not write $t"
    if command -v restorecon >/dev/null 2>&1; then
        restorecon "$t" || fail "could not label $t"
    fi
done
for n in $names; do
    mv -f "$bin/.$n.install.$$" "$bin/$n" || fail "could not rename $bin/$n into place"
done
tmp="$record.tmp.$$"
{ printf '%s\n' "$new" >"$tmp" && sync "$tmp" "$bin" && mv -f "$tmp" "$record" && sync "$store"; } ||
    fail "could not write $record"
tmp=
mkdir -p "${marker%/*}" && : >"$marker" || echo "kmod-day1-install: could not create $marker; kmod-day1-pull will not reboot for this install" >&2
if [ -n "$podman" ]; then
    # The image is not needed once its binaries are in place.
    $podman image unmount "$image" >/dev/null 2>&1 || :
    $podman rmi --all --force >/dev/null 2>&1 || :
    podman=
fi
echo "kmod-day1-install: installed $names of $digest into $bin"
