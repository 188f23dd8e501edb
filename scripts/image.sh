#!/usr/bin/env bash
# Builds the wsecho container image, localhost/wsecho:latest, from deploy/Containerfile, with
# podman (or docker where podman is not installed).
#
# The image has no base image (FROM scratch; deploy/Containerfile says why), so nothing is
# pulled from a registry. This script:
#   1. builds the release server on this machine (cargo build --release --bin wsecho),
#   2. stages a root file system in a temporary folder: the binary as /wsecho with its debug
#      information stripped (objcopy --strip-debug; its symbols stay, for backtraces), the
#      shared libraries it loads, as `ldd` lists them, each copied (through symlinks) to the
#      path the binary asks for, and an /etc/passwd and /etc/group with the user wsecho
#      (uid and gid 65532),
#   3. builds the image from deploy/Containerfile with that folder as the context. Its
#      progress and the image's size go to standard error; the image's name, alone, to
#      standard output.
# Linux with glibc only (the staged libraries are this machine's).
#
# usage: scripts/image.sh [IMAGE]
#   IMAGE   the name to tag (default localhost/wsecho:latest)
#
# env: CONTAINER_ENGINE  podman or docker (default: podman if installed, else docker)
#      CONTAINER_ENGINE_FLAGS  extra global flags for the engine, before `build` (e.g.
#                        "--storage-driver vfs" for podman where overlay is not available)
#      CARGO_BUILD_JOBS  and the other cargo variables apply to the build as usual
set -euo pipefail
umask 022 # the staged folders and files must be readable by the image's user
ROOT=$(cd "$(dirname "$0")/.." && pwd)

die() { echo "image: error: $*" >&2; exit 1; }

case "${1:-}" in
-h | --help) sed -n '2,24p' "$0"; exit 0 ;;
-*) die "unknown option '$1' (see --help)" ;;
esac
IMAGE=${1:-localhost/wsecho:latest}
(($# <= 1)) || die "one argument at most, the image's name (see --help)"

if [[ -n "${CONTAINER_ENGINE:-}" ]]; then
    ENGINE=$CONTAINER_ENGINE
elif command -v podman >/dev/null; then
    ENGINE=podman
elif command -v docker >/dev/null; then
    ENGINE=docker
else
    die "neither podman nor docker is installed (Debian: apt-get install podman)"
fi
command -v "$ENGINE" >/dev/null || die "CONTAINER_ENGINE=$ENGINE is not a program"
read -r -a ENGINE_FLAGS <<<"${CONTAINER_ENGINE_FLAGS:-}"
for tool in ldd objcopy; do
    command -v "$tool" >/dev/null || die "$tool is missing (Debian: apt-get install binutils libc-bin)"
done

echo "image: building the release server (cargo build --release --bin wsecho)" >&2
# cargo names the executable it built in its JSON messages, wherever the target folder is.
binary=$(cargo build --release --bin wsecho --manifest-path "$ROOT/Cargo.toml" \
    --message-format=json-render-diagnostics |
    sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -n 1)
[[ -n "$binary" && -x "$binary" ]] || die "cargo build did not name the wsecho executable"

STAGE=$(mktemp -d)
trap 'rm -rf "$STAGE"' EXIT
rootfs=$STAGE/rootfs
mkdir -p "$rootfs/etc"
chmod 755 "$STAGE" "$rootfs"

objcopy --strip-debug "$binary" "$rootfs/wsecho"
chmod 755 "$rootfs/wsecho"

# ldd's lines are "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" for libraries and
# "/lib64/ld-linux-x86-64.so.2 (0x...)" for the loader; linux-vdso has no file.
libraries=$(ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }')
[[ -n "$libraries" ]] || die "ldd lists no libraries for $binary (a static binary needs no staging)"
if ldd "$binary" | grep -q "not found"; then
    die "ldd cannot find every library of $binary: $(ldd "$binary" | grep "not found")"
fi
for library in $libraries; do
    install -D -m 755 "$(readlink -f "$library")" "$rootfs$library"
done

# One user and its group; the Containerfile's USER names them by number.
echo "wsecho:x:65532:65532:wsecho:/nonexistent:/sbin/nologin" >"$rootfs/etc/passwd"
echo "wsecho:x:65532:" >"$rootfs/etc/group"
chmod 644 "$rootfs/etc/passwd" "$rootfs/etc/group"

version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$ROOT/Cargo.toml" | head -n 1)
echo "image: staged $(du -sh "$rootfs" | cut -f1): /wsecho and" \
    "$(echo "$libraries" | tr '\n' ' ')" >&2
echo "image: $ENGINE build -t $IMAGE (wsecho $version)" >&2
previous=$("$ENGINE" "${ENGINE_FLAGS[@]}" image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
"$ENGINE" "${ENGINE_FLAGS[@]}" build --file "$ROOT/deploy/Containerfile" --tag "$IMAGE" \
    --build-arg "VERSION=$version" "$STAGE" >&2
# The previous build, now untagged, goes, unless a container still uses it.
if [[ -n "$previous" && "$previous" != "$("$ENGINE" "${ENGINE_FLAGS[@]}" image inspect --format '{{.Id}}' "$IMAGE")" ]]; then
    "$ENGINE" "${ENGINE_FLAGS[@]}" image rm "$previous" >/dev/null 2>&1 || true
fi
size=$("$ENGINE" "${ENGINE_FLAGS[@]}" image inspect --format '{{.Size}}' "$IMAGE")
echo "image: built $IMAGE, $((size / 1024)) KiB" >&2
echo "$IMAGE"
