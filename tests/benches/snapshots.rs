//! The snapshots service and the layer library, measured:
//!
//! 1. Prepare + Mounts + mount + umount + Remove cycles per second through the gRPC API, from
//!    concurrent clients (target: at least 2,000/s on 2 cores).
//! 2. The time to mount a chain of 128 layers (Mounts RPC + mount).
//! 3. Layer apply throughput (MB/s of uncompressed tar) of the `big` image's layers, against
//!    GNU `tar -xpf` of the same layers into the same kind of directory, in the same run.
//!
//! `cargo build --release --workspace && cargo bench -p berth-tests --bench snapshots`, as root.
//! Not part of CI. The `big` image comes from `../shared/bench/make-images.sh` (python3 and
//! busybox-static), built once into `target/bench-images`. Environment: `BENCH_SECONDS` (length
//! of the cycle run, default 5), `BENCH_CLIENTS` (concurrent clients, default 16),
//! `BENCH_ROUNDS` (apply rounds, default 3), `BENCH_PARTS` (which of `cycles,chain,apply` to
//! run, default all), `BERTH_BIN_DIR` (binaries; default: the release directory this bench is
//! built into).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use berth_api::berth::snapshots::v1::{self as pb, snapshots_client::SnapshotsClient};
use berth_api::client::{self, Channel};
use berth_snapshots::layer;
use berth_snapshots::mount::{self, Mount};
use berth_tests::bench::{big_image, env_or, median, summary};
use berth_tests::fixtures::images::LayerBuilder;
use berth_tests::{Berth, Mode};

type Client = SnapshotsClient<Channel>;

fn to_mounts(mounts: Vec<berth_api::berth::types::v1::Mount>) -> Vec<Mount> {
    mounts.into_iter().map(Mount::from).collect()
}

async fn prepare(c: &mut Client, key: &str, parent: &str) -> Result<Vec<Mount>> {
    let reply = c
        .prepare(pb::PrepareSnapshotRequest {
            key: key.into(),
            parent: parent.into(),
            ..Default::default()
        })
        .await?;
    Ok(to_mounts(reply.into_inner().mounts))
}

async fn mounts(c: &mut Client, key: &str) -> Result<Vec<Mount>> {
    let reply = c
        .mounts(pb::MountsRequest {
            key: key.into(),
            ..Default::default()
        })
        .await?;
    Ok(to_mounts(reply.into_inner().mounts))
}

async fn commit(c: &mut Client, name: &str, key: &str) -> Result<()> {
    c.commit(pb::CommitSnapshotRequest {
        name: name.into(),
        key: key.into(),
        ..Default::default()
    })
    .await?;
    Ok(())
}

async fn remove(c: &mut Client, key: &str) -> Result<()> {
    c.remove(pb::RemoveSnapshotRequest {
        key: key.into(),
        ..Default::default()
    })
    .await?;
    Ok(())
}

/// Commits a one-file layer `name` on `parent`.
async fn small_layer(c: &mut Client, scratch: &Path, name: &str, parent: &str) -> Result<()> {
    let key = format!("{name}-extract");
    let m = prepare(c, &key, parent).await?;
    let mut l = LayerBuilder::new("bench");
    l.file(&format!("layer/{name}"), 0o644, name);
    layer::apply_to_mounts(&m, l.build()?.tar.as_slice(), scratch)?;
    commit(c, name, &key).await
}

/// Cycles per second from `clients` concurrent clients for `seconds`.
async fn cycles(berth: &Berth, scratch: &Path, clients: usize, seconds: u64) -> Result<f64> {
    let mut c = SnapshotsClient::new(client::connect(&berth.socket("snapshots"), "default").await?);
    small_layer(&mut c, scratch, "cycle-base", "").await?;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for n in 0..clients {
        let mut c = c.clone();
        let target = scratch.join(format!("cycle-{n}"));
        std::fs::create_dir(&target)?;
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            while Instant::now() < deadline {
                let key = format!("cycle-{n}-{done}");
                prepare(&mut c, &key, "cycle-base").await?;
                let m = mounts(&mut c, &key).await?;
                // Mount syscalls block (umount syncs the upper filesystem): off the async
                // threads, as any real caller would.
                let at = target.clone();
                tokio::task::spawn_blocking(move || {
                    mount::mount_all(&m, &at)?;
                    mount::unmount(&at)
                })
                .await??;
                remove(&mut c, &key).await?;
                done += 1;
            }
            anyhow::Ok(done)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    let elapsed = started.elapsed().as_secs_f64();
    remove(&mut c, "cycle-base").await?;
    Ok(total as f64 / elapsed)
}

/// Median time of Mounts + mount of an active snapshot on a 128-layer chain, and of the mount
/// alone.
async fn deep_chain(berth: &Berth, scratch: &Path) -> Result<(Duration, Duration)> {
    let mut c = SnapshotsClient::new(client::connect(&berth.socket("snapshots"), "default").await?);
    let mut parent = String::new();
    for i in 0..128 {
        let name = format!("chain-{i:03}");
        small_layer(&mut c, scratch, &name, &parent).await?;
        parent = name;
    }
    prepare(&mut c, "chain-top", &parent).await?;
    let target = scratch.join("chain-target");
    std::fs::create_dir(&target)?;
    let (mut with_rpc, mut alone) = (Vec::new(), Vec::new());
    for _ in 0..21 {
        let t = Instant::now();
        let m = mounts(&mut c, "chain-top").await?;
        let rpc = t.elapsed();
        mount::mount_all(&m, &target)?;
        let total = t.elapsed();
        ensure!(
            std::fs::read_dir(target.join("layer"))?.count() == 128,
            "the chain does not show 128 layers"
        );
        mount::unmount(&target)?;
        with_rpc.push(total);
        alone.push(total - rpc);
    }
    Ok((median(&with_rpc), median(&alone)))
}

/// Applies every layer into a fresh directory under `work` with `apply`; returns the time.
fn time_unpack(
    work: &Path,
    layers: &[PathBuf],
    apply: impl Fn(&Path, &Path) -> Result<()>,
) -> Result<Duration> {
    let dir = work.join("rootfs");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir(&dir)?;
    Command::new("sync").status()?;
    let t = Instant::now();
    for l in layers {
        apply(l, &dir)?;
    }
    let elapsed = t.elapsed();
    std::fs::remove_dir_all(&dir)?;
    Ok(elapsed)
}

fn apply_throughput(rounds: usize) -> Result<(f64, f64, u64)> {
    let layers = big_image()?.layers;
    let bytes: u64 = layers
        .iter()
        .map(|l| std::fs::metadata(l).map(|m| m.len()))
        .sum::<std::io::Result<u64>>()?;
    let work = tempfile::Builder::new()
        .prefix("berth-bench-")
        .tempdir_in("/var/tmp")?;
    let berth = |tar: &Path, dir: &Path| -> Result<()> {
        let file = std::io::BufReader::new(std::fs::File::open(tar)?);
        layer::apply(dir, file, &layer::ApplyOptions::default())?;
        Ok(())
    };
    let gnu = |tar: &Path, dir: &Path| -> Result<()> {
        let status = Command::new("tar")
            .arg("-xpf")
            .arg(tar)
            .arg("-C")
            .arg(dir)
            .status()?;
        ensure!(status.success(), "tar -x failed");
        Ok(())
    };
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        ours.push(time_unpack(work.path(), &layers, berth)?);
        theirs.push(time_unpack(work.path(), &layers, gnu)?);
    }
    let mbps = |d: Duration| bytes as f64 / 1e6 / d.as_secs_f64();
    Ok((mbps(median(&ours)), mbps(median(&theirs)), bytes))
}

fn main() -> Result<()> {
    let seconds = env_or("BENCH_SECONDS", 5u64);
    let clients = env_or("BENCH_CLIENTS", 16usize);
    let rounds = env_or("BENCH_ROUNDS", 3usize);
    let parts = env_or("BENCH_PARTS", "cycles,chain,apply".to_owned());
    let part = |name: &str| parts.split(',').any(|p| p == name);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let berth = Berth::start(Mode::AllInOne)?;
    let scratch = tempfile::Builder::new()
        .prefix("berth-test-bench-")
        .tempdir()?;
    let result = runtime.block_on(async {
        if part("cycles") {
            let rate = cycles(&berth, scratch.path(), clients, seconds).await?;
            println!(
                "snapshots: {rate:.0} Prepare+Mounts+mount+umount+Remove cycles/s ({clients} clients, {seconds} s; target >= 2000)"
            );
            summary("snapshot cycles per second", rate, 0.0, "/s", ">= 2000");
        }
        if part("chain") {
            let (with_rpc, alone) = deep_chain(&berth, scratch.path()).await?;
            println!(
                "snapshots: 128-layer chain: Mounts + mount {:.2} ms (mount alone {:.2} ms), median of 21",
                with_rpc.as_secs_f64() * 1e3,
                alone.as_secs_f64() * 1e3
            );
        }
        anyhow::Ok(())
    });
    berth.stop()?;
    result?;
    if part("apply") {
        let (ours, tar, bytes) = apply_throughput(rounds)?;
        println!(
            "layer apply: berth {ours:.0} MB/s, tar -x {tar:.0} MB/s, ratio {:.2} (big image, {:.1} MB of tar, median of {rounds})",
            ours / tar,
            bytes as f64 / 1e6
        );
        summary("layer apply vs tar -x (MB/s)", ours, tar, "MB/s", "-");
    }
    Ok(())
}
