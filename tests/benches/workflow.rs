//! End to end, as a user types it: `berthctl run --rm busybox true` against containerd's
//! `ctr run --rm` (runc) and Debian's `podman run --rm` (runc), same busybox image, same run.
//!
//! `cargo bench -p berth-tests --bench workflow` (root; Debian's containerd, runc and podman;
//! podman is skipped with a note when it is not installed). Not part of CI. `BENCH_N` sets the
//! samples per configuration (default 30). Every tool runs without networking (`--network
//! none`; ctr has none by default), so this measures the container path itself: image lookup,
//! snapshot, spec, runtime create/start, wait, delete. Each tool keeps its state in a private
//! directory; the configurations are interleaved so that drift hits all.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use berth_tests::bench::{median, ms, samples, summary};
use berth_tests::cleanup::remove_cgroup_parent;
use berth_tests::fixtures::containerd::Containerd;
use berth_tests::fixtures::images::busybox_layout;
use berth_tests::harness::unmount_under;
use berth_tests::{Berth, Mode, Options};

/// Runs `cmd`, which must succeed, and returns how long it took.
fn timed(cmd: &mut Command) -> Result<Duration> {
    let begun = Instant::now();
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    let took = begun.elapsed();
    ensure!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(took)
}

/// Debian's podman with its storage under `dir`, running runc (crun refuses this hybrid
/// cgroup host outside a private mount namespace).
fn podman(dir: &Path) -> Command {
    let mut cmd = Command::new("podman");
    cmd.arg("--root")
        .arg(dir.join("root"))
        .arg("--runroot")
        .arg(dir.join("run"))
        .args([
            "--runtime",
            "runc",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "none",
        ]);
    cmd
}

/// Removes podman's storage when dropped (also on failure): its containers and images, and the
/// overlay mount podman keeps on its root.
struct PodmanCleanup<'a>(&'a Path);

impl Drop for PodmanCleanup<'_> {
    fn drop(&mut self) {
        let _ = podman(self.0).args(["system", "reset", "-f"]).output();
        unmount_under(self.0);
    }
}

fn main() -> Result<()> {
    let n = samples();
    let dir = tempfile::Builder::new()
        .prefix("berth-bench-workflow-")
        .tempdir()?;
    let layout = dir.path().join("layout");
    busybox_layout(&layout)?;
    let archive = dir.path().join("busybox.tar");

    let ctr = Containerd::start(&dir.path().join("containerd"))?;
    ctr.import_layout(&layout, &archive, "busybox:bench")?;

    let podman_dir = dir.path().join("podman");
    let _podman_cleanup = PodmanCleanup(&podman_dir);
    let mut podman_image = if Command::new("podman").arg("--version").output().is_ok() {
        let out = podman(&podman_dir)
            .args(["load", "-q", "-i"])
            .arg(&archive)
            .output()?;
        ensure!(
            out.status.success(),
            "podman load: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let ids = podman(&podman_dir).args(["images", "-q"]).output()?;
        Some(
            String::from_utf8_lossy(&ids.stdout)
                .lines()
                .next()
                .context("podman loaded no image")?
                .to_owned(),
        )
    } else {
        eprintln!("podman is not installed (apt-get install podman): skipping it");
        None
    };

    let berth = Berth::start_with(
        Mode::AllInOne,
        Options {
            config: Some(
                "[tasks]\nruntime = \"runc\"\ncgroup_parent = \"berth-bench-wf\"\n".into(),
            ),
            ..Default::default()
        },
    )?;
    let out = berth.run_ctl(&["load", layout.to_str().context("utf-8 path")?])?;
    ensure!(out.status.success(), "berthctl load: {out:?}");

    let mut berth_times = Vec::new();
    let mut ctr_times = Vec::new();
    let mut podman_times = Vec::new();
    // One warm-up round, not counted.
    for round in 0..=n {
        let b = timed(
            berth
                .ctl()
                .args(["run", "--rm", "--network", "none", "busybox", "true"]),
        )?;
        let c = timed(
            Command::new("ctr")
                .arg("--address")
                .arg(dir.path().join("containerd/containerd.sock"))
                .args([
                    "--namespace",
                    berth_tests::fixtures::containerd::NAMESPACE,
                    "run",
                    "--rm",
                    "busybox:bench",
                    &format!("wf-{round}"),
                    "true",
                ]),
        )?;
        let p = match &podman_image {
            Some(image) => match timed(podman(&podman_dir).args([
                "run",
                "--rm",
                "--network",
                "none",
                image,
                "true",
            ])) {
                Ok(d) => Some(d),
                Err(e) => {
                    // Say why and go on without it: the other comparisons still hold.
                    eprintln!("podman run failed, leaving podman out: {e:#}");
                    podman_image = None;
                    podman_times.clear();
                    None
                }
            },
            None => None,
        };
        if round > 0 {
            berth_times.push(b);
            ctr_times.push(c);
            podman_times.extend(p);
        }
    }
    berth.stop()?;
    drop(ctr);
    let _ = remove_cgroup_parent("berth-bench-wf");

    let berth_ms = ms(median(&berth_times));
    let ctr_ms = ms(median(&ctr_times));
    println!("`run --rm busybox true` end to end, median of {n}:");
    println!(
        "  {:<34} {:>9} {:>11} {:>7} {:>8}",
        "metric", "berth", "reference", "ratio", "target"
    );
    println!(
        "  {:<34} {:>6.1} ms {:>8.1} ms {:>7.2} {:>8}",
        "berthctl vs ctr run --rm (runc)",
        berth_ms,
        ctr_ms,
        berth_ms / ctr_ms,
        "<= 0.33"
    );
    summary(
        "berthctl run --rm vs ctr run --rm (runc)",
        berth_ms,
        ctr_ms,
        "ms",
        "<= 0.33",
    );
    if !podman_times.is_empty() {
        let podman_ms = ms(median(&podman_times));
        println!(
            "  {:<34} {:>6.1} ms {:>8.1} ms {:>7.2} {:>8}",
            "berthctl vs podman run --rm (runc)",
            berth_ms,
            podman_ms,
            berth_ms / podman_ms,
            "< 1"
        );
    }
    Ok(())
}
