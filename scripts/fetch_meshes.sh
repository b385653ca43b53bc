#!/usr/bin/env bash
# Fetch the real meshes of Debian's libcgal-demo package (CC0 where no other notice) into
# .cache/cgal/meshes. Only the .deb is downloaded (no boost install); idempotent.
set -euo pipefail
dest="${1:-.cache/cgal}"
if [ -f "$dest/meshes/elephant.off" ]; then exit 0; fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && apt-get download libcgal-demo >/dev/null 2>&1 || { apt-get update -qq >/dev/null && apt-get download libcgal-demo >/dev/null; })
dpkg -x "$tmp"/libcgal-demo_*.deb "$tmp/x"
mkdir -p "$tmp/d" "$dest"
tar xzf "$tmp/x/usr/share/doc/libcgal-dev/data.tar.gz" -C "$tmp/d" data/meshes
cp "$tmp/x/usr/share/doc/libcgal-demo/copyright" "$dest/COPYRIGHT" 2>/dev/null || true
rm -rf "$dest/meshes.part" && mv "$tmp/d/data/meshes" "$dest/meshes.part" && mv "$dest/meshes.part" "$dest/meshes"
echo "meshes in $dest/meshes: $(ls "$dest/meshes" | wc -l)"
