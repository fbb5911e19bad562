//! Compiles every .proto under this directory with protox (pure Rust: no protoc needed).

use std::path::{Path, PathBuf};

fn protos(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            protos(&path, out);
        } else if path.extension().is_some_and(|e| e == "proto") {
            out.push(path);
        }
    }
}

/// The git revision of the checkout, for the Version RPC.
fn git_revision() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

fn main() {
    println!("cargo:rustc-env=BERTH_GIT_REVISION={}", git_revision());
    println!("cargo:rerun-if-changed=../.git/HEAD");
    println!("cargo:rerun-if-changed=../.git/refs/heads");
    let mut files = Vec::new();
    protos(Path::new("berth"), &mut files);
    protos(Path::new("k8s"), &mut files);
    println!("cargo:rerun-if-changed=berth");
    println!("cargo:rerun-if-changed=k8s");
    let fds = protox::compile(&files, ["."]).expect("compile protos");
    tonic_prost_build::configure()
        .compile_fds(fds)
        .expect("generate code");
}
