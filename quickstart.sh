#!/usr/bin/env bash
# Sets up pgvirt on a fresh machine and runs the main job: build, install the
# PostgreSQL connector, add this machine as an environment, discover its
# PostgreSQL installations and clusters. Uses a private store under
# ./target/quickstart (override with PGVIRT_STORE).
set -euo pipefail
cd "$(dirname "$0")"
bash .ci/deps
cargo build --release
export PGVIRT_STORE="${PGVIRT_STORE:-$PWD/target/quickstart/pgvirt.db}"
pgvirt=./target/release/pgvirt
user="${PGVIRT_USER:-postgres}"
$pgvirt connector validate .
$pgvirt connector install .
$pgvirt env list --output json | grep -q '"name": "local"' || $pgvirt env add local --user "$user"
$pgvirt env refresh local
