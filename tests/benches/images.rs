//! Cold pull + unpack of the `big` image (3 gzip layers, ~129 MB compressed, ~174 MB of tar,
//! ~4,000 files) from a loopback docker-registry: berth against containerd's `ctr image pull`
//! (Debian's containerd, its own temp root and process, overlayfs snapshotter), both cold
//! (empty stores) in every round, in the same run. Prints the medians and their ratio, berth's
//! unpack throughput (MB/s of uncompressed tar) and the images service's peak RSS (VmHWM).
//!
//! berth's time is `berthctl pull` (fetch into the content store, then unpack into the overlay
//! snapshotter, in one call); the unpack alone is timed in a second step of each round (the
//! same image fetched with `--no-unpack`, then the Unpack RPC), for the throughput.
//!
//! `cargo build --release --workspace && cargo bench -p berth-tests --bench images`, as root.
//! Not part of CI. The image comes from `../shared/bench/make-images.sh`, built once into
//! `target/bench-images`. Environment: `BENCH_ROUNDS` (default 5), `BERTH_BIN_DIR` (binaries;
//! default: the release directory this bench is built into).

use std::time::Instant;

use anyhow::{Context, Result, ensure};
use berth_api::berth::images::v1 as pb;
use berth_api::berth::images::v1::images_client::ImagesClient;
use berth_tests::bench::{big_image, env_or, median, run, summary};
use berth_tests::fixtures::containerd::Containerd;
use berth_tests::fixtures::registry::Registry;
use berth_tests::harness::unmount_under;
use berth_tests::{Berth, Mode};

/// Peak resident set (VmHWM) of a process, in KiB.
fn vm_hwm(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM")
}

/// One cold berth pull with unpack: (seconds, peak RSS of the images service in KiB).
fn berth_pull(reference: &str) -> Result<(f64, u64)> {
    let berth = Berth::start(Mode::Separate)?;
    let pid = berth
        .pids()?
        .into_iter()
        .find(|(s, _)| s == "images")
        .and_then(|(_, p)| p)
        .context("images service pid")?;
    nix::unistd::sync(); // start with no dirty data of earlier rounds
    let started = Instant::now();
    run(berth.ctl().args(["pull", "-q", reference]))?;
    let elapsed = started.elapsed().as_secs_f64();
    let hwm = vm_hwm(pid)?;
    let snapshots = run(berth.ctl().args(["snapshot", "ls"]))?;
    ensure!(
        snapshots.matches("committed").count() == 3,
        "the pull did not unpack the 3 layers: {snapshots}"
    );
    berth.stop()?;
    Ok((elapsed, hwm))
}

/// One cold berth fetch then unpack, timed apart: (fetch seconds, unpack seconds).
fn berth_unpack(reference: &str, runtime: &tokio::runtime::Runtime) -> Result<(f64, f64)> {
    let berth = Berth::start(Mode::Separate)?;
    nix::unistd::sync();
    let started = Instant::now();
    run(berth.ctl().args(["pull", "-q", "--no-unpack", reference]))?;
    nix::unistd::sync();
    let fetch = started.elapsed().as_secs_f64();
    let started = Instant::now();
    runtime.block_on(async {
        let channel = berth_api::client::connect(&berth.socket("images"), "default").await?;
        ImagesClient::new(channel)
            .unpack(pb::UnpackRequest {
                name: reference.into(),
                ..Default::default()
            })
            .await?;
        anyhow::Ok(())
    })?;
    let unpack = started.elapsed().as_secs_f64();
    berth.stop()?;
    Ok((fetch, unpack))
}

/// One cold `ctr image pull` (fetch + unpack into overlayfs) with its own containerd.
fn containerd_pull(reference: &str) -> Result<f64> {
    let dir = tempfile::Builder::new()
        .prefix("berth-test-bench-ctr-")
        .tempdir()?;
    let containerd = Containerd::start(dir.path())?;
    nix::unistd::sync();
    let started = Instant::now();
    containerd.ctr(&[
        "image",
        "pull",
        "--plain-http",
        "--snapshotter",
        "overlayfs",
        reference,
    ])?;
    let elapsed = started.elapsed().as_secs_f64();
    drop(containerd);
    unmount_under(dir.path());
    Ok(elapsed)
}

fn main() -> Result<()> {
    let rounds = env_or("BENCH_ROUNDS", 5usize).max(1);
    let big = big_image()?;
    let (layout, mut tar_bytes) = (big.layout, 0);
    for l in &big.layers {
        tar_bytes += std::fs::metadata(l)?.len();
    }
    let registry = Registry::start()?;
    registry.push_layout(&layout, "big", "bench/big:latest")?;
    let reference = format!("{}/bench/big:latest", registry.addr());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;

    let (mut berth, mut containerd, mut fetches, mut unpacks, mut hwms) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        // Alternate who goes first, so neither always gets the warmer page cache.
        let (b, c) = if round % 2 == 0 {
            let b = berth_pull(&reference)?;
            (b, containerd_pull(&reference)?)
        } else {
            let c = containerd_pull(&reference)?;
            (berth_pull(&reference)?, c)
        };
        let (fetch, unpack) = berth_unpack(&reference, &runtime)?;
        eprintln!(
            "round {}: berth {:.2} s (peak RSS {} KiB; fetch {:.2} s + unpack {:.2} s), containerd {:.2} s",
            round + 1,
            b.0,
            b.1,
            fetch,
            unpack,
            c
        );
        berth.push(b.0);
        hwms.push(b.1 as f64);
        containerd.push(c);
        fetches.push(fetch);
        unpacks.push(unpack);
    }
    let (b, c) = (median(&berth), median(&containerd));
    let unpack = median(&unpacks);
    println!("cold pull + unpack of {reference} ({rounds} rounds, medians):");
    println!("  berth       {b:.2} s");
    println!("  containerd  {c:.2} s");
    println!("  ratio berth/containerd {:.2} (target <= 0.6)", b / c);
    summary("cold pull + unpack, big image (s)", b, c, "s", "<= 0.6");
    println!(
        "  berth fetch {:.2} s, unpack {unpack:.2} s = {:.0} MB/s of tar ({:.1} MB)",
        median(&fetches),
        tar_bytes as f64 / 1e6 / unpack,
        tar_bytes as f64 / 1e6
    );
    println!(
        "  images service peak RSS (VmHWM) {:.1} MiB (target < 64 MiB)",
        median(&hwms) / 1024.0
    );
    Ok(())
}
