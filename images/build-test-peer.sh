#!/usr/bin/env bash
# Builds vsock-peer (tests/vsock-peer), the guest end of the vsock suite, as a
# static binary for test initrds; never part of the production initrd. The
# last line of stdout is its absolute path.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tree=$(cd "$here/.." && pwd)
target=x86_64-unknown-linux-gnu

# Same flags as the agent's build (images/build-initrd.sh), so both share one cache.
(cd "$tree" && RUSTFLAGS="-C target-feature=+crt-static -C strip=symbols" \
    cargo build --quiet --release --locked --target "$target" -p runv-vsock-peer) >&2 \
    || { echo "test peer: cargo build failed" >&2; exit 1; }
peer=${CARGO_TARGET_DIR:-$tree/target}/$target/release/vsock-peer
file -b "$peer" | grep -qE 'statically linked|static-pie linked' \
    || { echo "test peer: $peer is not statically linked" >&2; exit 1; }
echo "$peer"
