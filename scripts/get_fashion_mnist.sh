#!/usr/bin/env bash
# Put the four Fashion-MNIST IDX files into DIR (default ./data/fashion_mnist), verify them and
# print DIR's absolute path.
#
# Usage: bash scripts/get_fashion_mnist.sh [DIR]
#
# Sources, tried in order for the files DIR does not hold yet:
#   1. the Debian package's directory (dataset-fashion-mnist),
#   2. apt-get install dataset-fashion-mnist (as root, or with password-less sudo),
#   3. download from the Fashion-MNIST project.
# Files already in DIR (plain or .gz) are verified and kept; a corrupt one stops the script.
#
# Environment:
#   FASHION_MNIST_SYSTEM_DIR  directory searched in step 1 (default /usr/share/datasets/fashion-mnist)
#   FASHION_MNIST_OFFLINE=1   skip steps 2 and 3 (no package installation, no network)
set -euo pipefail

DIR="${1:-./data/fashion_mnist}"
PACKAGE_DIR=/usr/share/datasets/fashion-mnist
SYSTEM_DIR="${FASHION_MNIST_SYSTEM_DIR:-$PACKAGE_DIR}"
OFFLINE="${FASHION_MNIST_OFFLINE:-0}"
URL=http://fashion-mnist.s3-website.eu-central-1.amazonaws.com
FILES="train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte"

# MD5 of the decompressed content. The .gz checksums cannot be used: the Debian package
# re-compressed the official archives without the stored file name (24 bytes smaller), so only
# the content is identical to the official download.
expected_md5() {
  case "$1" in
    train-images-idx3-ubyte) echo f4a8712d7a061bf5bd6d2ca38dc4d50a ;;
    train-labels-idx1-ubyte) echo 9018921c3c673c538a1fc5bad174d6f9 ;;
    t10k-images-idx3-ubyte) echo 8181f5470baa50b63fa0f6fddb340f0a ;;
    t10k-labels-idx1-ubyte) echo 15d484375f8d13e6eb1aabb0c3f46965 ;;
  esac
}

# Print the path of NAME in FOLDER, plain or .gz; fail when neither exists.
find_file() {
  local candidate
  for candidate in "$1/$2" "$1/$2.gz"; do
    if [[ -f $candidate ]]; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

content_md5() {
  if [[ $1 == *.gz ]]; then gzip -dc -- "$1"; else cat -- "$1"; fi | md5sum | cut -d' ' -f1
}

# Succeed when FILE holds the official content of NAME; leaves the md5 found in VERIFY_SUM.
verify() {
  VERIFY_SUM=$(content_md5 "$2" 2>/dev/null) || VERIFY_SUM="unreadable"
  [[ $VERIFY_SUM == "$(expected_md5 "$1")" ]]
}

missing_files() {
  local name
  for name in $FILES; do
    find_file "$DIR" "$name" >/dev/null || echo "$name"
  done
}

# Copy the missing files that FOLDER holds in verified form into DIR.
copy_from() {
  local name source
  [[ -d $1 ]] || return 0
  for name in $(missing_files); do
    source=$(find_file "$1" "$name") || continue
    if verify "$name" "$source"; then
      cp -- "$source" "$DIR/"
    else
      echo "warning: skipping $source: not the official $name (content md5 $VERIFY_SUM)" >&2
    fi
  done
  return 0
}

as_root() {
  if [[ $(id -u) == 0 ]]; then "$@"; else sudo -n "$@"; fi
}

can_install() {
  command -v apt-get >/dev/null && { [[ $(id -u) == 0 ]] || sudo -n true 2>/dev/null; }
}

# The package index may be stale or empty (fresh containers): update once if the install fails.
install_package() {
  echo "installing the Debian package dataset-fashion-mnist ..." >&2
  as_root apt-get install -y -q dataset-fashion-mnist >&2 ||
    { as_root apt-get update -q >&2 && as_root apt-get install -y -q dataset-fashion-mnist >&2; }
}

# Download the missing files; a partial file never takes a final name, so re-running is safe.
download() {
  local name partial
  for name in $(missing_files); do
    partial="$DIR/.$name.partial.gz"
    echo "downloading $URL/$name.gz ..." >&2
    if command -v curl >/dev/null; then
      curl -fsSL --connect-timeout 20 --retry 2 -o "$partial" "$URL/$name.gz" || { rm -f -- "$partial"; return 1; }
    else
      wget -q --timeout=20 -O "$partial" "$URL/$name.gz" || { rm -f -- "$partial"; return 1; }
    fi
    if ! verify "$name" "$partial"; then
      echo "warning: the downloaded $name.gz has content md5 $VERIFY_SUM, not the official one" >&2
      rm -f -- "$partial"
      return 1
    fi
    mv -- "$partial" "$DIR/$name.gz"
  done
}

mkdir -p -- "$DIR"
for name in $FILES; do
  if file=$(find_file "$DIR" "$name"); then
    if ! verify "$name" "$file"; then
      echo "error: $file is not the official $name (content md5 $VERIFY_SUM); delete it and re-run $0" >&2
      exit 1
    fi
  fi
done

[[ -z $(missing_files) ]] || copy_from "$SYSTEM_DIR"
if [[ -n $(missing_files) && $OFFLINE != 1 ]] && can_install; then
  install_package && copy_from "$PACKAGE_DIR" || true
fi
if [[ -n $(missing_files) && $OFFLINE != 1 ]]; then
  download || true
fi

missing=$(missing_files | tr '\n' ' ')
if [[ -n $missing ]]; then
  echo "error: Fashion-MNIST files missing in $DIR: ${missing% }." \
    "Install the Debian package (apt-get install dataset-fashion-mnist, as root) or download" \
    "${missing// /.gz }from $URL/ into $DIR, then re-run $0." >&2
  exit 1
fi
cd -- "$DIR" && pwd
