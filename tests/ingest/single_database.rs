//! Single-database ingestion by parallel pg_dump and pg_restore.
