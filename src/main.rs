use std::process::ExitCode;

use clap::Parser;
use kube_node_status::{
    app,
    config::{Cli, Command},
};

fn main() -> ExitCode {
    // clap prints its own one-line errors and exits with code 2.
    let cli = Cli::parse();
    match cli.command {
        None => {
            let settings = match cli.run.resolve(&|k| std::env::var(k).ok()) {
                Ok(s) => s,
                Err(e) => return app::fail(&e.into()),
            };
            let source = settings.kube.clone();
            app::execute(
                settings,
                move || async move { Ok(app::kube_config(&source).await?) },
            )
        }
        #[cfg(feature = "fake-apiserver")]
        Some(Command::Demo(args)) => kube_node_status::fake::demo(args),
        #[cfg(feature = "fake-apiserver")]
        Some(Command::FakeApiserver(args)) => kube_node_status::fake::serve_main(args),
        #[cfg(not(feature = "fake-apiserver"))]
        Some(command) => match command {},
    }
}
