//! Small helpers the benchmarks (`tests/benches/*`) share: settings from the environment,
//! running a command, medians and ratios for the printed tables, and the `big` image.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};

/// The environment variable `name` parsed as a `T`, or `default` when unset or unparsable.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Samples per configuration: `BENCH_N`, default 30 (the least for a reported median).
pub fn samples() -> usize {
    env_or("BENCH_N", 30)
}

/// Runs `cmd`, which must succeed; returns its stdout (the error carries stdout and stderr).
pub fn run(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The median (upper middle for an even count) of `values`; `T::default()` when empty.
pub fn median<T: Copy + PartialOrd + Default>(values: &[T]) -> T {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    sorted.get(sorted.len() / 2).copied().unwrap_or_default()
}

/// `d` in milliseconds.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// `a / b` with two decimals, or `-` when `b` is zero.
pub fn ratio(a: f64, b: f64) -> String {
    if b == 0.0 {
        "-".into()
    } else {
        format!("{:.2}", a / b)
    }
}

/// Prints one headline figure as a `SUMMARY` line (tab-separated: metric, berth, reference,
/// ratio, target) for `tests/bench.sh` to gather into its final table; `reference` 0 = none.
pub fn summary(metric: &str, berth: f64, reference: f64, unit: &str, target: &str) {
    let reference_text = if reference == 0.0 {
        "-".to_owned()
    } else {
        format!("{reference:.2} {unit}")
    };
    println!(
        "SUMMARY\t{metric}\t{berth:.2} {unit}\t{reference_text}\t{}\t{target}",
        ratio(berth, reference)
    );
}

/// The `big` image (3 layers, ~174 MB of tar) that `../shared/bench/make-images.sh` builds once
/// into `target/bench-images`.
pub struct BigImage {
    /// Its OCI image layout (tagged `big`).
    pub layout: PathBuf,
    /// Its uncompressed layer tars, bottom first.
    pub layers: Vec<PathBuf>,
}

/// The [`BigImage`], built first if it is not there yet.
pub fn big_image() -> Result<BigImage> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = root.join("target/bench-images");
    let layers: Vec<PathBuf> = ["busybox", "data-a", "data-b"]
        .iter()
        .map(|l| out.join(format!("build/layers/{l}.tar")))
        .collect();
    if !out.join("oci/index.json").exists() || !layers.iter().all(|l| l.exists()) {
        let script = root.join("../shared/bench/make-images.sh");
        eprintln!("building the big image with {} ...", script.display());
        let status = Command::new("bash")
            .arg(&script)
            .env("OUT_DIR", &out)
            .stdout(Stdio::null())
            .status()
            .with_context(|| format!("running {}", script.display()))?;
        ensure!(status.success(), "{} failed", script.display());
    }
    Ok(BigImage {
        layout: out.join("oci"),
        layers,
    })
}
