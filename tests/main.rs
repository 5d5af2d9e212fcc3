//! The integration tests: one binary, themed modules, real parts (PostgreSQL
//! clusters, the built connector library, the `pgvirt` binary).

mod support;

mod api;
mod boundary;
mod contract;
mod demo;
mod discovery;
mod dsource;
mod export;
mod first_hour;
mod hardening;
mod ingest;
mod pitr;
mod quota;
mod remote;
mod storage;
mod upgrade;
mod vdb;
