#!/usr/bin/env bash
# Builds the small OCI image the tests run instead of pulling from a registry:
# busybox-static with links for the usual tools, as an OCI image-layout tarball that
# `ctr images import` accepts; it imports as docker.io/runv/test:latest. The same
# tarball holds docker.io/runv/pause:latest, the same root whose command is
# `sleep infinity`: the CRI's sandbox ("pause") image, which must keep running. The
# last line of stdout is the tarball's absolute path (<tree>/target/runv/test-image.tar).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tree=$(cd "$here/.." && pwd)
out_dir=$tree/target/runv
image=$out_dir/test-image.tar
ref=docker.io/runv/test:latest
pause_ref=docker.io/runv/pause:latest
busybox=${RUNV_BUSYBOX:-/bin/busybox}
applets=(sh echo cat sleep ls id env head dd wc yes sha256sum top ps true false test
    mkdir rm stty grep kill hostname mount touch)

log() { echo "test-image: $*" >&2; }
die() { log "error: $*"; exit 1; }

command -v umoci >/dev/null || die "umoci is not installed: run scripts/setup"
[ -x "$busybox" ] || die "no busybox at $busybox: install busybox-static (scripts/setup)"
file -b "$busybox" | grep -qE 'statically linked|static-pie linked' \
    || die "$busybox is not statically linked: install busybox-static"

stamp=$( { sha256sum "$busybox"; cat "${BASH_SOURCE[0]}"; } | sha256sum | cut -c1-16)
if [ -f "$image" ] && [ "$(cat "$image.stamp" 2>/dev/null)" = "$stamp" ]; then
    echo "$image"
    exit 0
fi

mkdir -p "$out_dir"
work=$(mktemp -d "$out_dir/test-image.XXXXXX")
trap 'rm -rf "$work"' EXIT
layout=$work/oci
bundle=$work/bundle

umoci init --layout "$layout"
umoci new --image "$layout:latest"
umoci unpack --rootless --image "$layout:latest" "$bundle" >/dev/null
rootfs=$bundle/rootfs
mkdir -p "$rootfs"/{bin,etc,tmp,proc,sys,dev,root,home/user}
chmod 1777 "$rootfs/tmp"
install -m 0755 "$busybox" "$rootfs/bin/busybox"
for applet in "${applets[@]}"; do
    ln -sf busybox "$rootfs/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nuser:x:1000:1000:user:/home/user:/bin/sh\n' >"$rootfs/etc/passwd"
printf 'root:x:0:\nuser:x:1000:\n' >"$rootfs/etc/group"

umoci repack --image "$layout:latest" "$bundle"
umoci config --image "$layout:latest" --os linux --architecture amd64 \
    --config.cmd /bin/sh --config.env PATH=/bin --config.workingdir /
umoci config --image "$layout:latest" --tag pause --clear=config.cmd \
    --config.cmd sleep --config.cmd infinity
umoci gc --layout "$layout"

# containerd names an imported image by this annotation of the index entry.
python3 - "$layout/index.json" "$ref" "$pause_ref" <<'PY'
import json, sys
path, ref, pause_ref = sys.argv[1:]
names = {"latest": ref, "pause": pause_ref}
with open(path) as f:
    index = json.load(f)
for manifest in index["manifests"]:
    annotations = manifest.setdefault("annotations", {})
    annotations["io.containerd.image.name"] = names[annotations["org.opencontainers.image.ref.name"]]
with open(path, "w") as f:
    json.dump(index, f)
PY

tar -C "$layout" -cf "$image.tmp" .
mv "$image.tmp" "$image"
echo "$stamp" >"$image.stamp"
log "built $ref and $pause_ref ($(stat -c %s "$image") bytes)"
echo "$image"
