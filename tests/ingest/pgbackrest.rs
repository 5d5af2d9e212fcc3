//! Ingestion from a pgBackRest repository.
