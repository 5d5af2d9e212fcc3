//! The data lifecycle: the workflows that call the connector, in the
//! contract's order.
//!
//! - [`discovery`]: repositories and source configs, merged by identity.
//! - [`dsource`]: link, sync, enable, disable, delete dSources.
//! - [`vdb`]: provision, start, stop, refresh, rewind, snapshot, delete VDBs.
//! - [`timeflow`]: timeflows and snapshots with connector metadata; retention.
//! - [`placement`]: mounting a dataset where the connector's specification says.
//! - [`hooks`]: user shell hooks around workflows.

pub mod discovery;
pub mod dsource;
pub mod hooks;
pub mod placement;
pub mod timeflow;
pub mod vdb;
