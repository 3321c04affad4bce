use std::process::ExitCode;

use clap::{Parser, error::ErrorKind};
use kube_node_status::cli::{self, Cli};

fn main() -> ExitCode {
    kube_node_status::memory::limit_malloc_arenas();
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
