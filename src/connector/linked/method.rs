//! The steps every ingestion method answers, and the one place a method is
//! mapped to its module ([`of`]). A method that stages a physical replica
//! (pg_basebackup, the customer's backup, log shipping, pgBackRest) only
//! fills the data directory and may name its `restore_command`; the rest of
//! its life is [`super::physical`]'s. A method whose staging is no replica
//! (staging push, single database) answers every step itself.
//!
//! Adding a method: its module, its variant of [`IngestionMethod`], its
//! schema, and one line in [`of`].

use serde_json::Value;

use super::{
    basebackup, customer_backup, log_shipping, logical, pgbackrest, physical, single_database,
    staging_push, Staging,
};
use crate::abi::{IngestionMethod, OperationError};
use crate::connector::platform::Platform;
use crate::connector::source::Source;

/// One ingestion method.
pub(super) trait Ingestion: Sync {
    /// Checks the method's own parameters against the world (the source,
    /// the repository) before anything is made.
    fn check(&self, _platform: &Platform, _staging: &Staging) -> Result<(), OperationError> {
        Ok(())
    }

    /// Fills the staging data directory (empty, or as it was when
    /// [`Ingestion::keeps_data_on_resync`]) with the source's data.
    fn ingest(
        &self,
        platform: &Platform,
        staging: &Staging,
        source: Option<&Source>,
    ) -> Result<(), OperationError>;

    /// Brings staging to a consistent point for a snapshot (ingesting first
    /// when asked or never done); what it answers goes to the engine.
    fn consistent_point(
        &self,
        platform: &Platform,
        staging: &Staging,
        resync: bool,
    ) -> Result<Value, OperationError> {
        physical::consistent_point(platform, staging, resync)
    }

    /// Describes the snapshot just taken (its metadata), and lets staging
    /// go on.
    fn describe(&self, platform: &Platform, staging: &Staging) -> Result<Value, OperationError> {
        physical::describe(platform, staging)
    }

    /// Whether staging replays WAL, so that a WAL dataset keeps it.
    fn replays_wal(&self) -> bool {
        true
    }

    /// Whether a resync restores over the existing files (a delta restore)
    /// rather than into an emptied data directory.
    fn keeps_data_on_resync(&self) -> bool {
        false
    }

    /// The `restore_command` of staging (a quoted postgresql.conf value).
    fn restore_command(&self, _staging: &Staging) -> Result<Option<String>, OperationError> {
        Ok(None)
    }

    /// Keeps in `pgvirt/wal/` the archived WAL a snapshot needs (from the
    /// label's start to `replayed`), for methods that restore from an
    /// archive staging does not keep.
    fn keep_archived_wal(
        &self,
        _platform: &Platform,
        _staging: &Staging,
        _label: &str,
        _replayed: &str,
        _segment_size: u64,
    ) -> Result<(), OperationError> {
        Ok(())
    }

    /// The source staging keeps connecting to with a password kept in its
    /// passfile (a standby's streaming, a subscription), if any.
    fn follows_with_password(&self, staging: &Staging) -> Result<Option<Source>, OperationError> {
        if !staging.method.streams() {
            return Ok(None);
        }
        Ok(Some(staging.source()?).filter(|s| s.password.is_some()))
    }

    /// `linked.start_staging`.
    fn start_staging(&self, platform: &Platform, staging: &Staging) -> Result<(), OperationError> {
        physical::start_staging(platform, staging)
    }

    /// Whether staging may be stopped now (`linked.stop_staging` with
    /// purpose `check`, before a delete changes anything).
    fn may_stop(&self, _platform: &Platform, _staging: &Staging) -> Result<(), OperationError> {
        Ok(())
    }

    /// `linked.stop_staging` (`purpose`: disable or delete).
    fn stop_staging(
        &self,
        platform: &Platform,
        staging: &Staging,
        purpose: &str,
    ) -> Result<(), OperationError> {
        physical::stop_staging(platform, staging, purpose)
    }

    /// `linked.worker`: staging's health, and what it needs from the user.
    fn worker(
        &self,
        platform: &Platform,
        staging: &Staging,
        input: &Value,
    ) -> Result<Value, OperationError> {
        physical::worker(platform, staging, input)
    }
}

/// The module of a method.
pub(super) fn of(method: IngestionMethod) -> &'static dyn Ingestion {
    match method {
        IngestionMethod::BasebackupStreaming => &basebackup::Basebackup,
        IngestionMethod::BackupStreaming => &customer_backup::CustomerBackup,
        IngestionMethod::BackupLogShipping => &log_shipping::LogShipping,
        IngestionMethod::StagingPush => &staging_push::StagingPush,
        IngestionMethod::SingleDatabase => &single_database::SingleDatabase,
        IngestionMethod::Pgbackrest => &pgbackrest::Pgbackrest,
        IngestionMethod::LogicalReplication => &logical::LogicalReplication,
    }
}
