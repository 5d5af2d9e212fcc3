//! The data lifecycle: the workflows that call the connector, in the
//! contract's order, each recorded as a job so that a kill at any moment is
//! repaired by the next command.
//!
//! - [`discovery`]: repositories and source configs, merged by identity.
//! - [`dsource`]: link, sync, enable, disable, delete dSources.
//! - [`vdb`]: provision, start, stop, refresh, rewind, snapshot, delete VDBs.
//! - [`teardown`]: a dSource with every VDB made from it.
//! - [`timeflow`]: timeflows and snapshots with connector metadata; retention.
//! - [`retention`]: setting what a dSource or VDB keeps, and applying it.
//! - [`jobs`]: what each workflow is doing; [`repair`]: what a cut-short one left.
//! - [`ownership`]: who owns which dataset and snapshot; `pool check`.
//! - [`names`]: one name space for dSources and VDBs.
//! - [`moments`]: what `timeflow show` tells (timeflows, ranges, WAL kept).
//! - [`pitr`]: provisionable ranges (snapshots and kept WAL) and point-in-time targets.
//! - [`placement`]: mounting a dataset where the connector's specification says.
//! - [`hooks`]: user shell hooks around workflows.
//! - [`export`]: table exports (trigger-tracked tables shipped to targets).
//!
//! Imports run one way: `teardown`, `retention` → `vdb` → `dsource` → the rest.

pub mod discovery;
pub mod dsource;
pub mod export;
pub mod hooks;
pub mod jobs;
pub mod moments;
pub mod names;
pub mod ownership;
pub mod pitr;
pub mod placement;
pub mod repair;
pub mod retention;
pub mod teardown;
pub mod timeflow;
pub mod vdb;
