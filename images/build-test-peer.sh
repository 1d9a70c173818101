#!/usr/bin/env bash
# Builds the test-only guest helpers of tests/vsock-peer as static binaries for
# test initrds (never part of the production initrd): vsock-peer, the guest end
# of the vsock suite, and fs-check beside it, the virtio-fs suite's. The last
# line of stdout is vsock-peer's absolute path.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tree=$(cd "$here/.." && pwd)
target=x86_64-unknown-linux-gnu

# Same flags as the agent's build (images/build-initrd.sh), so both share one cache.
(cd "$tree" && RUSTFLAGS="-C target-feature=+crt-static -C strip=symbols" \
    cargo build --quiet --release --locked --target "$target" -p runv-vsock-peer) >&2 \
    || { echo "test peer: cargo build failed" >&2; exit 1; }
peer=${CARGO_TARGET_DIR:-$tree/target}/$target/release/vsock-peer
for helper in "$peer" "${peer%/*}/fs-check"; do
    file -b "$helper" | grep -qE 'statically linked|static-pie linked' \
        || { echo "test peer: $helper is not statically linked" >&2; exit 1; }
done
echo "$peer"
