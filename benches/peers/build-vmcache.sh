#!/usr/bin/env bash
# Builds the reference vmcache binary (github.com/viktorleis/vmcache), the
# optional peer of `btree-compare` (--vmcache PATH or DBOS_VMCACHE=PATH).
# Usage: bash benches/peers/build-vmcache.sh [DIR]   (default: target/peers/vmcache)
# Needs git, g++ with C++20 and libaio (apt-get install -y g++ libaio-dev).
set -euo pipefail
cd "$(dirname "$0")/../.."
dir=${1:-target/peers/vmcache}
if [ ! -d "$dir/.git" ]; then
    git clone --depth 1 https://github.com/viktorleis/vmcache "$dir"
fi
make -C "$dir" vmcache
echo "built $dir/vmcache; run e.g.:"
echo "  ./target/release/btree-compare --parts in-memory --vmcache $dir/vmcache"
