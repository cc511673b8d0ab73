#!/bin/sh
# SPDX-License-Identifier: Apache-2.0
# The prestage agent (mcgen --output prestage), run by the node image's static busybox in a
# privileged pod of the DaemonSet, with the host's / at /host and this directory from the
# ConfigMap (the configs to come, kmod-day1-install.sh, this script).
#   kmod-day1-agent.sh prestage REF@sha256:DIGEST
#       installs the node binaries of this image on the host as kmod-day1-install.service
#       does (same script, same record), then records the configs to come in the store
#       (STORE/prestaged/<config>.json), where kmod-day1-pull finds them.
#   kmod-day1-agent.sh run
#       runs the host's kmod-day1-pull --no-reboot (chroot: the node's own paths, pull
#       secrets, registries.conf, policy.json and CA bundle) now, then every hour, five
#       minutes after a failure, until the pod stops.
#   kmod-day1-agent.sh metrics PORT
#       serves the node's kmod-day1 metrics (the host's kmod-day1-pull --serve-metrics: GET
#       /metrics and /healthz) on the pod's address (KMOD_DAY1_POD_IP: the node's, the pod
#       uses the host network), until the pod stops. The agent of another config on this
#       node may hold the port: it serves the same node-wide metrics, so this one waits and
#       tries again every minute.
set -eu
host=${KMOD_DAY1_HOST:-/host}
here=$(dirname "$0")

case ${1:-} in
prestage)
    # The marker stays in the pod: a prestage must never make the host's pull reboot.
    KMOD_DAY1_FROM=${KMOD_DAY1_FROM:-/usr/bin} KMOD_DAY1_BIN_DIR=$host/usr/local/bin \
        KMOD_DAY1_STORE=$host/var/lib/kmod-day1 KMOD_DAY1_INSTALLED_MARKER=/tmp/kmod-day1-installed \
        sh "$here/kmod-day1-install.sh" "$2"
    dir=$host/var/lib/kmod-day1/prestaged
    mkdir -p "$dir"
    for f in "$here"/*.json; do
        n=${f##*/}
        if cmp -s "$f" "$dir/$n"; then
            continue
        fi
        { cp "$f" "$dir/.$n.tmp" && sync "$dir/.$n.tmp" && mv -f "$dir/.$n.tmp" "$dir/$n" && sync "$dir"; } || {
            echo "<3>kmod-day1-agent: could not record $dir/$n" >&2
            exit 1
        }
        echo "kmod-day1-agent: prestaged $n"
    done
    ;;
run)
    # The cluster-wide proxy, as MCO writes it for the node's own units.
    if [ -f "$host/etc/mco/proxy.env" ]; then
        set -a
        . "$host/etc/mco/proxy.env"
        set +a
    fi
    child=
    trap '[ -z "$child" ] || kill "$child" 2>/dev/null; exit 0' TERM INT
    while :; do
        chroot "$host" /usr/local/bin/kmod-day1-pull --no-reboot &
        child=$!
        if wait "$child"; then
            pause=3600
        else
            echo "<4>kmod-day1-agent: kmod-day1-pull failed (exit $?); trying again in 5 minutes" >&2
            pause=300
        fi
        sleep "$pause" &
        child=$!
        wait "$child" || :
    done
    ;;
metrics)
    port=${2:?usage: kmod-day1-agent.sh metrics PORT}
    ip=${KMOD_DAY1_POD_IP:-0.0.0.0}
    case $ip in
    *:*) addr="[$ip]:$port" ;;
    *) addr="$ip:$port" ;;
    esac
    child=
    trap '[ -z "$child" ] || kill "$child" 2>/dev/null; exit 0' TERM INT
    while :; do
        chroot "$host" /usr/local/bin/kmod-day1-pull --serve-metrics "$addr" &
        child=$!
        if wait "$child"; then
            rc=0
        else
            rc=$?
        fi
        echo "<4>kmod-day1-agent: the metrics server on $addr stopped (exit $rc; another kmod-day1 agent on this node may hold the port); trying again in a minute" >&2
        sleep 60 &
        child=$!
        wait "$child" || :
    done
    ;;
*)
    echo "usage: kmod-day1-agent.sh prestage REF@sha256:DIGEST | run | metrics PORT" >&2
    exit 2
    ;;
esac
