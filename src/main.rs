use std::process::ExitCode;

use clap::{Parser, error::ErrorKind};
use kube_node_status::cli::{self, Cli};

// jemalloc, not glibc's malloc. After a zone outage at 50,000 nodes (every
// shard written again twice) glibc's two arenas held 80 MB more than the live
// heap, in holes too small to give back, and kept it; with jemalloc and the
// options below the bench's steady RSS there is 45 MiB lower
// (docs/benchmarks.md, "The allocator").
// Only the binary sets it: tests, benches and fuzz targets of the library
// keep the system allocator. Linux only: the image's system, and the only
// one where jemalloc's background thread exists (elsewhere it would fail
// jemalloc's start).
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its first allocation, before `main`:
/// - `narenas:2`: jemalloc's default is four arenas a CPU it can see, and in
///   a pod limited to one or two cores on a large node it sees them all;
///   each arena keeps its own free pages.
/// - `background_thread:true`, `dirty_decay_ms:1000`, `muzzy_decay_ms:0`:
///   pages freed by a pass or an export cycle go back to the system within
///   about a second, from jemalloc's own thread, whether or not anything
///   allocates afterwards (without the thread, only later allocations would
///   return them, so RSS stayed at an OTLP cycle's peak until the next one).
///
/// `_RJEM_MALLOC_CONF` in the environment overrides them
/// (`_RJEM_MALLOC_CONF=confirm_conf:true` prints what jemalloc read). If the
/// background thread cannot be created at start (a pids limit reached),
/// jemalloc fails and the process aborts before `main`, with jemalloc's message.
#[cfg(target_os = "linux")]
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: MallocConf =
    MallocConf(c"narenas:2,background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0".as_ptr());

/// A C string pointer jemalloc reads as its `malloc_conf` global.
#[cfg(target_os = "linux")]
#[repr(transparent)]
struct MallocConf(*const std::ffi::c_char);

// SAFETY: the pointer is to a static, immutable C string literal.
#[cfg(target_os = "linux")]
unsafe impl Sync for MallocConf {}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => e.exit(),
        Err(e) => {
            // One line, not clap's usage footer: bad input is reported like every other config error.
            let rendered = e.render().to_string();
            let line = rendered
                .lines()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("invalid arguments");
            eprintln!("kube-node-status: {}", line.trim_start_matches("error: ").trim());
            return ExitCode::from(2);
        }
    };
    cli::run(cli)
}
