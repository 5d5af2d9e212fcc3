//! Remote environments over SSH (issue 15): each remote host is a network
//! namespace the test makes, with its own sshd and PostgreSQL
//! (`support::netns`).

mod environments;
mod sources;
