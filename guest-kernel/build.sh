#!/usr/bin/env bash
# Builds the runv guest kernel (an uncompressed, PVH-bootable vmlinux) from Debian's
# linux-source-6.1 package. Base: tinyconfig (allnoconfig + the kernel's tiny
# fragments), with the fragments in config/*.config applied in the same allnoconfig
# pass, then a check that Kconfig kept every option the fragments ask for.
#
# The result is cached in ${RUNV_CACHE:-/var/cache/runv}/kernel-<hash>/vmlinux, where
# <hash> covers the source package version, the fragments and this script. A run with
# nothing changed only prints the path. The last line of stdout is the path of vmlinux;
# build output goes to <cache>/kernel-build.log.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${RUNV_CACHE:-/var/cache/runv}
source_pkg=linux-source-6.1
source_tarball=/usr/src/${source_pkg}.tar.xz

log() { echo "guest-kernel: $*" >&2; }
die() { log "error: $*"; exit 1; }

source_version() { dpkg-query -W -f='${Version}' "$source_pkg" 2>/dev/null || true; }

if [ -z "$(source_version)" ] || [ ! -f "$source_tarball" ]; then
    log "installing $source_pkg and the kernel build tools"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "$source_pkg" build-essential bc bison flex libelf-dev libssl-dev xz-utils >&2 \
        || die "could not install $source_pkg (run 'apt-get update' first?)"
fi
version=$(source_version)
[ -n "$version" ] || die "$source_pkg is not installed"

fragments=("$here"/config/*.config)
[ -e "${fragments[0]}" ] || die "no config fragments in $here/config"

hash=$( { echo "$source_pkg $version"; cat "${fragments[@]}" "${BASH_SOURCE[0]}"; } \
    | sha256sum | cut -c1-16)
out_dir=$cache/kernel-$hash
vmlinux=$out_dir/vmlinux

if [ -f "$vmlinux" ]; then
    echo "$vmlinux"
    exit 0
fi

mkdir -p "$cache"
exec 9>"$cache/kernel.lock"
flock 9
if [ -f "$vmlinux" ]; then # another build finished while we waited
    echo "$vmlinux"
    exit 0
fi

src_dir=$cache/src/$source_pkg-$version
if [ ! -f "$src_dir/.extracted" ]; then
    log "extracting $source_tarball"
    rm -rf "$src_dir"
    mkdir -p "$src_dir"
    tar -xJf "$source_tarball" -C "$src_dir" --strip-components=1
    touch "$src_dir/.extracted"
fi

# One build directory shared by all configurations: a change to a fragment
# rebuilds only what it touches.
build_dir=$cache/kernel-build
build_log=$cache/kernel-build.log
mkdir -p "$build_dir"
: >"$build_log"

kmake() { make -C "$src_dir" O="$build_dir" ARCH=x86_64 "$@" >>"$build_log" 2>&1; }
fail() { tail -n 40 "$build_log" >&2; die "$1 (full log: $build_log)"; }

# tinyconfig is allnoconfig + the tiny fragments; ours go on top in the same
# allnoconfig pass, so that every option neither fragment names stays off (an
# olddefconfig pass would switch on the defaults of newly visible options, such as
# VT and INPUT under TTY).
log "configuring $source_pkg $version (tinyconfig + ${#fragments[@]} fragments)"
(cd "$src_dir" && ARCH=x86_64 scripts/kconfig/merge_config.sh -n -O "$build_dir" \
    kernel/configs/tiny-base.config kernel/configs/tiny.config arch/x86/configs/tiny.config \
    "${fragments[@]}") >>"$build_log" 2>&1 || fail "configuring (merge_config.sh -n) failed"

# Kconfig silently drops options whose dependencies are missing: refuse that.
missing=$( {
    grep -h '^CONFIG_' "${fragments[@]}" | sort -u \
        | while read -r line; do grep -qxF "$line" "$build_dir/.config" || echo "  $line"; done
    grep -hoE '^# CONFIG_[A-Z0-9_]+ is not set' "${fragments[@]}" | awk '{print $2}' | sort -u \
        | while read -r name; do ! grep -qE "^$name=" "$build_dir/.config" || echo "  # $name is not set"; done
} )
[ -z "$missing" ] || die "Kconfig did not keep these fragment options (missing dependencies?):
$missing"

log "building vmlinux with $(nproc) jobs (log: $build_log)"
kmake -j"$(nproc)" vmlinux || fail "kernel build failed"

mkdir -p "$out_dir"
cp "$build_dir/vmlinux" "$vmlinux.tmp"
cp "$build_dir/.config" "$out_dir/config"
mv "$vmlinux.tmp" "$vmlinux"
log "built $vmlinux"
echo "$vmlinux"
