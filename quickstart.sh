#!/usr/bin/env bash
# Sets up pgvirt on a fresh machine and runs the main job: installs what is
# missing (PostgreSQL 15, xfsprogs, btrfs-progs), builds pgvirt, and runs
# `pgvirt demo` -- a source cluster with sample data, linked, snapshotted,
# two thin VDBs provisioned, written, refreshed, rewound, and torn down, each
# step timed. Run as root (PostgreSQL itself runs as the postgres user).
#
# It builds with `cargo build`, the same build the test command uses, so
# `cargo build && cargo test` afterwards compiles only the tests.
set -euo pipefail
cd "$(dirname "$0")"
bash .ci/deps
cargo build
./target/debug/pgvirt demo "$@"
