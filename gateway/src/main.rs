//! `portcullis-gateway`: run, check (`-t`), upgrade (`-u`) like nginx.

use std::process::ExitCode;

/// jemalloc instead of glibc malloc: ~16 % fewer instructions per proxied request at the same
/// peak RSS (mimalloc saved slightly more but raised RSS; bench/findings.md item 1).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    portcullis_gateway::cli_main()
}
