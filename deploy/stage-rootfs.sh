#!/usr/bin/env bash
# Stages the root filesystem of the broker image (deploy/Dockerfile): the
# binary, every shared library it links (glibc, and OpenSSL for the TLS-PSK
# listener) at the paths the loader looks in, and the broker's user with its
# data directory. OUT_DIR gets one file, rootfs.tar (the build context): a
# tar keeps the data directory's owner, which COPY would reset to root.
#
#   deploy/stage-rootfs.sh BINARY OUT_DIR
set -euo pipefail
bin=${1:?usage: stage-rootfs.sh BINARY OUT_DIR}
out=${2:?usage: stage-rootfs.sh BINARY OUT_DIR}
[ -x "$bin" ] || { echo "stage-rootfs: $bin is not an executable" >&2; exit 1; }

rm -rf "$out"
mkdir -p "$out"
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/usr/local/bin" "$root/etc" "$root/var/lib/raftmq" "$root/tmp"
cp "$bin" "$root/usr/local/bin/raftmq"
chmod 0755 "$root/usr/local/bin/raftmq"
chmod 1777 "$root/tmp"

# `ldd` prints "name => /path (addr)" for libraries and "/path (addr)" for
# the loader; each is copied (symlinks resolved) to the same path.
ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' |
  while read -r lib; do
    cp --parents -L "$lib" "$root"
  done

# glibc >= 2.34 resolves names without loadable NSS modules; this file only
# says to use /etc/hosts and DNS (both mounted by Docker and Kubernetes).
printf 'hosts: files dns\n' > "$root/etc/nsswitch.conf"
echo 'raftmq:x:65532:65532:raftmq:/var/lib/raftmq:/sbin/nologin' > "$root/etc/passwd"
echo 'raftmq:x:65532:' > "$root/etc/group"
tar -C "$root" --numeric-owner --owner=0 --group=0 -cf "$out/rootfs.tar" .
# The data directory belongs to the broker's user (appended with its owner).
tar -C "$root" --numeric-owner --owner=65532 --group=65532 --no-recursion \
  -rf "$out/rootfs.tar" ./var/lib/raftmq
echo "staged $(du -sh "$out/rootfs.tar" | cut -f1) in $out/rootfs.tar"
