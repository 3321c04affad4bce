//! The Dockerfile stays honest without a Docker engine: every path it copies
//! exists and is not excluded from the build context, its Rust is new enough
//! for the crate, it runs as a numeric non-root user, and hadolint is clean.

use crate::common;

use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn dockerfile() -> String {
    std::fs::read_to_string(root().join("Dockerfile")).unwrap()
}

/// Instructions with continuation lines joined.
fn instructions(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.is_empty())
    {
        match line.strip_suffix('\\') {
            Some(part) => current.push_str(part),
            None => {
                current.push_str(line);
                out.push(std::mem::take(&mut current));
            }
        }
    }
    out
}

fn version(v: &str) -> Vec<u32> {
    v.split('.').map(|p| p.parse().unwrap()).collect()
}

#[test]
fn copied_paths_exist_and_reach_the_build_context() {
    let ignored: Vec<String> = std::fs::read_to_string(root().join(".dockerignore"))
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    let mut copied = 0;
    for ins in instructions(&dockerfile()) {
        let Some(args) = ins.strip_prefix("COPY ") else {
            continue;
        };
        if args.contains("--from=") {
            continue;
        }
        let parts: Vec<&str> = args.split_whitespace().filter(|p| !p.starts_with("--")).collect();
        for src in &parts[..parts.len() - 1] {
            assert!(root().join(src).exists(), "COPY {src}: no such path in the repo");
            assert!(
                !ignored.iter().any(|i| i == src),
                "COPY {src}: excluded by .dockerignore"
            );
            copied += 1;
        }
    }
    assert!(copied >= 3, "only {copied} paths copied");
}

#[test]
fn builder_rust_is_at_least_the_crate_rust_version() {
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let wanted = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .map(|v| v.trim_matches('"').to_string())
        .expect("Cargo.toml sets rust-version");
    let text = dockerfile();
    let pinned = instructions(&text)
        .iter()
        .find_map(|i| i.strip_prefix("ARG RUST_VERSION=").map(str::to_string))
        .expect("Dockerfile pins RUST_VERSION");
    assert!(
        version(&pinned) >= version(&wanted),
        "builder Rust {pinned} < crate rust-version {wanted}"
    );
    assert!(
        text.contains("FROM rust:${RUST_VERSION}-"),
        "the builder uses the pinned version"
    );
    assert!(text.contains("cargo build --release --locked"));
}

#[test]
fn runtime_is_distroless_non_root_and_runs_the_binary() {
    let ins = instructions(&dockerfile());
    let last_from = ins.iter().rposition(|i| i.starts_with("FROM ")).unwrap();
    let runtime = &ins[last_from..];
    assert!(
        runtime[0].starts_with("FROM gcr.io/distroless/"),
        "{}",
        runtime[0]
    );
    assert!(runtime.iter().any(|i| i == "USER 65532:65532"));
    assert!(
        runtime
            .iter()
            .any(|i| i.starts_with("ENTRYPOINT [\"/usr/local/bin/kube-node-status\"]"))
    );
    assert!(
        !runtime.iter().any(|i| i.starts_with("RUN ")),
        "nothing runs in a shell-less image"
    );
}

#[test]
fn hadolint_is_clean() {
    let out = std::process::Command::new(common::peer("hadolint"))
        .arg(root().join("Dockerfile"))
        .output()
        .expect("hadolint runs");
    let findings = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && findings.trim().is_empty(),
        "hadolint:\n{findings}"
    );
}
