//! Discovery on remote hosts, and dSources linked from them.
