//! Any flags and environment: clap and `resolve` give settings or an error,
//! never a panic. Input: NUL-separated items; `KEY=value` items whose key
//! starts with `KNS_` or `OTEL_` are environment, the rest are arguments.
#![no_main]

use std::collections::HashMap;

use clap::Parser;
use kube_node_status::cli::Cli;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut argv = vec!["kube-node-status".to_string()];
    let mut env = HashMap::new();
    for item in text.split('\0') {
        match item.split_once('=') {
            Some((k, v)) if k.starts_with("KNS_") || k.starts_with("OTEL_") => {
                env.insert(k.to_string(), v.to_string());
            }
            _ => argv.push(item.to_string()),
        }
    }
    if let Ok(cli) = Cli::try_parse_from(&argv) {
        let _ = cli.run.resolve(&|k| env.get(k).cloned());
    }
});
