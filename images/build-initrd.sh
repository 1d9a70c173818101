#!/usr/bin/env bash
# Builds the runv guest initrd: a gzip'd newc cpio whose only program is a
# statically linked runv-agent as /init. The last line of stdout is the initrd's
# absolute path (<tree>/target/runv/initrd.img).
#
#   images/build-initrd.sh [--agent PATH]   pack PATH instead of building runv-agent
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tree=$(cd "$here/.." && pwd)
out_dir=$tree/target/runv
target=x86_64-unknown-linux-gnu

log() { echo "initrd: $*" >&2; }
die() { log "error: $*"; exit 1; }

agent=
while [ $# -gt 0 ]; do
    case "$1" in
    --agent) agent=${2:?--agent needs a path}; shift 2 ;;
    *) die "unknown argument '$1' (usage: build-initrd.sh [--agent PATH])" ;;
    esac
done

if [ -z "$agent" ]; then
    # glibc's static runtime: the musl target cannot be installed on our build
    # machines. RUSTFLAGS with an explicit --target leaves build scripts dynamic.
    log "building runv-agent (static, for size: the agent profile)"
    (cd "$tree" && RUSTFLAGS="-C target-feature=+crt-static -C strip=symbols" \
        cargo build --quiet --profile agent --locked --target "$target" -p runv-agent) >&2 \
        || die "cargo build of runv-agent failed"
    agent=${CARGO_TARGET_DIR:-$tree/target}/$target/agent/runv-agent
fi
[ -x "$agent" ] || die "no agent binary at $agent"
if ! file -b "$agent" | grep -qE 'statically linked|static-pie linked'; then
    die "$agent is not statically linked; the guest has no shared libraries"
fi

mkdir -p "$out_dir"
root=$(mktemp -d "$out_dir/initrd-root.XXXXXX")
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{dev,proc,sys,run,tmp}
install -m 0755 "$agent" "$root/init"

initrd=$out_dir/initrd.img
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort \
    | cpio --quiet -o -H newc -R 0:0 --reproducible) | gzip -n -9 >"$initrd.tmp"
mv "$initrd.tmp" "$initrd"
log "packed $(stat -c %s "$initrd") bytes"
echo "$initrd"
