//! Hardening: what a new user and a hostile one found (issue 8), each fixed
//! at its root; every regression test is named after what broke.

mod facts;
mod hostile;
mod kills;
mod secrets;
