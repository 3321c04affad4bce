//! The Dockerfile stays honest without a Docker engine: every path it copies
//! exists and is not excluded from the build context, its Rust is new enough
//! for the crate, it runs as a numeric non-root user, and hadolint is clean.
//! And the image itself: scripts/build-image builds it with podman from a
//! clean clone, and `the_built_image_runs_as_the_chart_expects` checks what
//! was built (scripts/test runs it with the image's name in KNS_IMAGE).

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
        text.contains("ARG BUILDER_IMAGE=rust:${RUST_VERSION}-")
            && text.contains("FROM ${BUILDER_IMAGE} AS builder"),
        "the builder uses the pinned version, overridable by digest"
    );
    assert!(text.contains("cargo build --release --locked"));
}

#[test]
fn runtime_is_distroless_non_root_and_runs_the_binary() {
    let ins = instructions(&dockerfile());
    let last_from = ins.iter().rposition(|i| i.starts_with("FROM ")).unwrap();
    let runtime = &ins[last_from..];
    assert_eq!(runtime[0], "FROM ${RUNTIME_IMAGE}");
    assert!(
        ins.iter()
            .any(|i| i.starts_with("ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot")),
        "the runtime defaults to distroless"
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

/// `podman` with the storage scripts/build-image uses.
fn podman(args: &[&str]) -> String {
    let out = std::process::Command::new("podman")
        .args(["--storage-driver", "vfs"])
        .args(args)
        .output()
        .expect("podman runs (scripts/install-test-peers installs it)");
    assert!(
        out.status.success(),
        "podman {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// Files named like a shell anywhere under `root`.
fn shells(root: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let path = e.path();
            let Ok(kind) = e.file_type() else { continue };
            if kind.is_dir() {
                stack.push(path);
            } else if ["sh", "bash", "dash", "ash", "busybox", "zsh"]
                .contains(&e.file_name().to_string_lossy().as_ref())
            {
                found.push(path.display().to_string());
            }
        }
    }
    found
}

#[test]
#[ignore = "needs the image built by scripts/build-image; scripts/test runs it with KNS_IMAGE set"]
fn the_built_image_runs_as_the_chart_expects() {
    let image = std::env::var("KNS_IMAGE").expect("KNS_IMAGE names the image scripts/build-image built");
    let inspect: serde_json::Value =
        serde_json::from_str(&podman(&["image", "inspect", &image])).expect("JSON");
    let config = &inspect[0]["Config"];
    // What the chart's pod spec relies on: runAsUser 65532 (runAsNonRoot
    // needs a numeric user), the container port, and the entrypoint its args follow.
    assert_eq!(config["User"], "65532:65532");
    assert_eq!(
        config["Entrypoint"],
        serde_json::json!(["/usr/local/bin/kube-node-status"])
    );
    assert!(config["ExposedPorts"].get("9464/tcp").is_some(), "{config}");
    let labels = &config["Labels"];
    let manifest = std::fs::read_to_string(root().join("Cargo.toml")).unwrap();
    let version = manifest
        .lines()
        .find_map(|l| l.strip_prefix("version = "))
        .map(|v| v.trim_matches('"'))
        .unwrap();
    assert_eq!(labels["org.opencontainers.image.version"], version);
    assert_eq!(labels["org.opencontainers.image.licenses"], "Apache-2.0");
    assert_eq!(labels["org.opencontainers.image.title"], "kube-node-status");
    let revision = labels["org.opencontainers.image.revision"]
        .as_str()
        .unwrap_or_default();
    assert!(
        revision.len() == 40 && revision.chars().all(|c| c.is_ascii_hexdigit()),
        "{revision}"
    );

    let mount = podman(&["image", "mount", &image]).trim().to_string();
    let rootfs = Path::new(&mount);
    let found = shells(rootfs);
    let run_with = |args: &[&str], env: &[(&str, &str)]| {
        std::process::Command::new("chroot")
            .arg("--userspec=65532:65532")
            .arg(rootfs)
            .arg("/usr/local/bin/kube-node-status")
            .args(args)
            .envs(env.iter().copied())
            .output()
            .expect("chroot runs")
    };
    let run = |args: &[&str]| run_with(args, &[]);
    let version_out = run(&["--version"]);
    // The allocator and its options are in the binary that ships
    // (src/main.rs), and take effect there: jemalloc confirms each.
    let confirmed = run_with(&["--version"], &[("_RJEM_MALLOC_CONF", "confirm_conf:true")]);
    let confirmed = String::from_utf8_lossy(&confirmed.stderr).to_string();
    let jemalloc_copying = rootfs
        .join("usr/share/doc/kube-node-status/jemalloc/COPYING")
        .is_file();
    let help = run(&["--help"]);
    podman(&["image", "unmount", &image]);
    assert!(found.is_empty(), "a shell in a distroless image: {found:?}");
    let missing = common::allocator_options_missing(&confirmed);
    assert!(
        missing.is_empty(),
        "jemalloc in the image did not set {missing:?}:\n{confirmed}"
    );
    assert!(
        jemalloc_copying,
        "jemalloc's licence is not in the image (it is linked into the binary)"
    );
    assert!(
        version_out.status.success(),
        "{}",
        String::from_utf8_lossy(&version_out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&version_out.stdout).trim(),
        format!("kube-node-status {version}")
    );
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("--metrics-exporter"), "{help}");
    assert!(
        !help.contains("fake-apiserver"),
        "the release image leaves the fake API server out:\n{help}"
    );
    let size: u64 = podman(&["image", "inspect", "--format", "{{.Size}}", &image])
        .trim()
        .parse()
        .expect("a size");
    println!("image {image}: {:.1} MiB", size as f64 / 1048576.0);
}
