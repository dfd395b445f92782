//! The `ferry` command. A thin layer: argument parsing, progress and output; the work is done
//! by the `ferry-core`, `ferry-archive` and connector crates.

mod cli;
mod commands;
mod config;
mod metrics;
mod progress;
mod source;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::commands::exit;

fn main() {
    // Large transfer buffers (ranged parts of several MiB) go straight to mmap and back to the
    // system when freed. glibc otherwise raises its mmap threshold after the first free and
    // keeps such buffers in per-thread arenas, so resident memory grows with every thread
    // that ever held one — not with what is in use.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
    let cli = Cli::parse();
    progress::init_logging(cli.quiet, cli.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferry: cannot start: {e}");
            std::process::exit(exit::ERROR);
        }
    };
    // The command runs as a task on a worker thread rather than on this thread: the pipeline
    // talks to its transfer tasks constantly, and waking across to the main thread cost more
    // than the work itself on exports of many small files.
    let cli = std::sync::Arc::new(cli);
    let result = runtime.block_on(async move {
        let task = tokio::spawn(async move {
            match &cli.command {
                Command::Export(args) => commands::export::run(&cli, args).await,
                Command::Backup(args) => commands::backup::run(&cli, args).await,
                Command::Runs(args) => commands::backup::runs(&cli, args).await,
                Command::Restore(args) => commands::backup::restore(&cli, args).await,
                Command::Bag(args) => commands::bag::run(&cli, args).await,
                Command::Prune(args) => commands::prune::run(&cli, args).await,
                Command::Verify(args) => commands::verify::run(&cli, args).await,
                Command::Ls(args) => commands::ls::run(&cli, args).await,
                Command::Demo(args) => commands::demo::run(&cli, args).await,
                Command::Sandbox(cmd) => commands::sandbox::run(&cli, cmd).await,
            }
        });
        task.await
            .unwrap_or_else(|e| Err(anyhow::anyhow!("internal error: {e}")))
    });
    // Don't wait for blocking tasks of an interrupted run.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    let code = match result {
        Ok(code) => code,
        // `ferry ls … | head`: the reader went away; that is not an error of ours. (SIGPIPE
        // stays ignored, as Rust sets it: network writes to a closed socket must not kill us.)
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            exit::OK
        }
        Err(e) => {
            eprintln!("ferry: {e:#}");
            exit::ERROR
        }
    };
    std::process::exit(code);
}
