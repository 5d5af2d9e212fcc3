//! The `pgvirt` binary: everything lives in the library (`pgvirt::cli`).

fn main() {
    std::process::exit(pgvirt::cli::main());
}
