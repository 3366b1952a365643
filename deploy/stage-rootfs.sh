#!/usr/bin/env bash
# Stages the root filesystem of the broker image (deploy/Dockerfile): the
# binary, every shared library it links (glibc, and OpenSSL for the TLS-PSK
# listener) at the paths the loader looks in, and the broker's user.
#
#   deploy/stage-rootfs.sh BINARY OUT_DIR
set -euo pipefail
bin=${1:?usage: stage-rootfs.sh BINARY OUT_DIR}
out=${2:?usage: stage-rootfs.sh BINARY OUT_DIR}
[ -x "$bin" ] || { echo "stage-rootfs: $bin is not an executable" >&2; exit 1; }

rm -rf "$out"
mkdir -p "$out/usr/local/bin" "$out/etc" "$out/var/lib/raftmq" "$out/tmp"
cp "$bin" "$out/usr/local/bin/raftmq"
chmod 0755 "$out/usr/local/bin/raftmq"
chmod 1777 "$out/tmp"

# `ldd` prints "name => /path (addr)" for libraries and "/path (addr)" for
# the loader; each is copied (symlinks resolved) to the same path.
ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}' |
  while read -r lib; do
    cp --parents -L "$lib" "$out"
  done

# glibc >= 2.34 resolves names without loadable NSS modules; this file only
# says to use /etc/hosts and DNS (both mounted by Docker and Kubernetes).
printf 'hosts: files dns\n' > "$out/etc/nsswitch.conf"
echo 'raftmq:x:65532:65532:raftmq:/var/lib/raftmq:/sbin/nologin' > "$out/etc/passwd"
echo 'raftmq:x:65532:' > "$out/etc/group"
echo "staged $(du -sh "$out" | cut -f1) in $out"
