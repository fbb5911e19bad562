//! berth-shim footprint and density against containerd's containerd-shim-runc-v2, in the same
//! run, on the same busybox rootfs, both with runc.
//!
//! `cargo bench -p berth-tests --bench shim` (root; Debian's containerd, runc and umoci).
//! Not part of CI. Environment:
//!
//! - `BENCH_N`: containers in the density run (default 200).
//! - `BERTH_SHIM_BIN`: the berth-shim binary to measure. Default: a size-optimised build made
//!   here (`opt-level = "z"`, fat LTO, one codegen unit, stripped, in `target/shim-size`;
//!   `BENCH_PANIC_ABORT=1` adds `panic = "abort"`), since the binary is what becomes resident.
//!
//! Footprint: RSS and PSS (from `/proc/<pid>/smaps_rollup`) of one idle shim supervising one
//! `sleep` container. Density: N such containers started one after another, each with its own
//! shim: total time, and total RSS/PSS of the shims (containerd's daemon reported beside).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use berth_api::berth::shim::v1 as api;
use berth_tests::bench::{env_or, ratio, run, summary};
use berth_tests::cleanup::{kill_processes_mentioning, remove_cgroup_parent};
use berth_tests::fixtures::bundle::{busybox_rootfs, runc_spec, write_bundle};
use berth_tests::fixtures::containerd::Containerd;
use serde_json::json;

type Client = api::shim_client::ShimClient<berth_api::client::Channel>;

#[derive(Debug, Default, Clone, Copy)]
struct Mem {
    rss_kib: u64,
    pss_kib: u64,
}

impl std::ops::Add for Mem {
    type Output = Mem;
    fn add(self, o: Mem) -> Mem {
        Mem {
            rss_kib: self.rss_kib + o.rss_kib,
            pss_kib: self.pss_kib + o.pss_kib,
        }
    }
}

fn mem(pid: u32) -> Result<Mem> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Ok(Mem {
        rss_kib: field("Rss:"),
        pss_kib: field("Pss:"),
    })
}

fn pids_of(name: &str) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == name.get(..15.min(name.len())).unwrap_or(name))
        })
        .collect()
}

/// The berth-shim to measure: `BERTH_SHIM_BIN`, or a size-optimised build.
fn shim_binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("BERTH_SHIM_BIN") {
        return Ok(PathBuf::from(p));
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = root.join("target/shim-size");
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(&root)
        .args(["build", "--release", "-p", "berth-shim", "--target-dir"])
        .arg(&target)
        .env("CARGO_PROFILE_RELEASE_OPT_LEVEL", "z")
        .env("CARGO_PROFILE_RELEASE_LTO", "fat")
        .env("CARGO_PROFILE_RELEASE_CODEGEN_UNITS", "1")
        .env("CARGO_PROFILE_RELEASE_STRIP", "true")
        .env("CARGO_PROFILE_RELEASE_DEBUG", "false");
    if std::env::var_os("BENCH_PANIC_ABORT").is_some() {
        cmd.env("CARGO_PROFILE_RELEASE_PANIC", "abort");
    }
    eprintln!(
        "building a size-optimised berth-shim in {}",
        target.display()
    );
    let status = cmd.status()?;
    ensure!(status.success(), "cargo build of berth-shim failed");
    Ok(target.join("release/berth-shim"))
}

struct Bench {
    dir: tempfile::TempDir,
    rootfs: PathBuf,
    shim: PathBuf,
}

impl Drop for Bench {
    fn drop(&mut self) {
        // Shims still running (after a failure), then the shared parent cgroups.
        kill_processes_mentioning(self.dir.path());
        let _ = remove_cgroup_parent("berth-bench");
    }
}

impl Bench {
    fn bundle(&self, id: &str) -> Result<PathBuf> {
        let bundle = self.dir.path().join("bundles").join(id);
        let mut spec = runc_spec().clone();
        spec["process"]["args"] = json!(["sleep", "100000"]);
        spec["process"]["terminal"] = json!(false);
        spec["root"] = json!({ "path": self.rootfs, "readonly": true });
        spec["linux"]["cgroupsPath"] = json!(format!("/berth-bench/{id}"));
        write_bundle(&bundle, &spec)?;
        Ok(bundle)
    }

    fn shim_dir(&self, id: &str) -> PathBuf {
        self.dir.path().join("shims").join(id)
    }

    /// Starts a shim and a `sleep` container in it; returns the client and the shim's pid.
    async fn berth_start(&self, id: &str, bundle: &Path) -> Result<(Client, u32)> {
        let dir = self.shim_dir(id);
        run(Command::new(&self.shim)
            .args(["--namespace", "bench", "--id", id, "--runtime", "runc"])
            .arg("--socket-dir")
            .arg(&dir))?;
        let pid: u32 = std::fs::read_to_string(dir.join("shim.pid"))?
            .trim()
            .parse()?;
        let channel = berth_api::client::connect(&dir.join("shim.sock"), "bench").await?;
        let mut client = Client::new(channel);
        client
            .create(api::CreateRequest {
                id: id.into(),
                bundle: bundle.display().to_string(),
                runtime: "runc".into(),
                ..Default::default()
            })
            .await?;
        client
            .start(api::StartRequest {
                id: id.into(),
                exec_id: String::new(),
            })
            .await?;
        Ok((client, pid))
    }

    async fn berth_stop(&self, id: &str, client: &mut Client) -> Result<()> {
        client
            .shutdown(api::ShutdownRequest {
                id: id.into(),
                now: true,
            })
            .await?;
        let dir = self.shim_dir(id);
        let deadline = Instant::now() + Duration::from_secs(10);
        while dir.exists() {
            if Instant::now() > deadline {
                bail!("shim {id} did not exit");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }
}

/// Runs `/bin/sleep` detached in containerd as container `id`, on `rootfs`, with runc.
fn run_sleep(containerd: &Containerd, rootfs: &Path, id: &str) -> Result<()> {
    let rootfs = rootfs.display().to_string();
    containerd
        .ctr(&[
            "run",
            "-d",
            "--runtime",
            "io.containerd.runc.v2",
            "--rootfs",
            &rootfs,
            id,
            "/bin/sleep",
            "100000",
        ])
        .map(drop)
}

/// Kills and removes containerd's task and container `id` (best effort).
fn remove(containerd: &Containerd, id: &str) {
    let _ = containerd.ctr(&["task", "kill", "-s", "SIGKILL", id]);
    for _ in 0..100 {
        if containerd.ctr(&["task", "delete", id]).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = containerd.ctr(&["container", "delete", id]);
}

fn shim_pid_for(id: &str) -> Option<u32> {
    pids_of("containerd-shim-runc-v2").into_iter().find(|pid| {
        std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
            let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
            args.windows(2)
                .any(|w| w[0] == b"-id" && w[1] == id.as_bytes())
        })
    })
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let n: usize = env_or("BENCH_N", 200);
    let shim = shim_binary()?;
    let dir = tempfile::Builder::new()
        .prefix("berth-test-bench-")
        .tempdir()?;
    let rootfs = busybox_rootfs(dir.path(), "rootfs")?;
    let bench = Bench { dir, rootfs, shim };
    let size = std::fs::metadata(&bench.shim)?.len() / 1024;
    println!("berth-shim binary: {} ({size} KiB)", bench.shim.display());

    // Footprint: one idle shim each.
    let bundle = bench.bundle("one")?;
    let (mut client, pid) = bench.berth_start("one", &bundle).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let berth_one = mem(pid)?;
    bench.berth_stop("one", &mut client).await?;

    let containerd = Containerd::start(&bench.dir.path().join("containerd"))?;
    run_sleep(&containerd, &bench.rootfs, "one")?;
    std::thread::sleep(Duration::from_secs(1));
    let cshim = shim_pid_for("one").context("containerd shim not found")?;
    let containerd_one = mem(cshim)?;
    remove(&containerd, "one");

    println!("\nfootprint of one idle shim supervising one sleep container (KiB):");
    println!("{:<28} {:>8} {:>8}", "", "RSS", "PSS");
    println!(
        "{:<28} {:>8} {:>8}",
        "berth-shim", berth_one.rss_kib, berth_one.pss_kib
    );
    println!(
        "{:<28} {:>8} {:>8}",
        "containerd-shim-runc-v2", containerd_one.rss_kib, containerd_one.pss_kib
    );
    println!(
        "{:<28} {:>8} {:>8}",
        "ratio berth/containerd",
        ratio(berth_one.rss_kib as f64, containerd_one.rss_kib as f64),
        ratio(berth_one.pss_kib as f64, containerd_one.pss_kib as f64)
    );
    summary(
        "idle shim RSS (KiB)",
        berth_one.rss_kib as f64,
        containerd_one.rss_kib as f64,
        "KiB",
        "-",
    );

    // Density: n containers, one shim each, started one after another.
    let mut bundles = Vec::new();
    for i in 0..n {
        bundles.push(bench.bundle(&format!("d{i}"))?);
    }
    let started = Instant::now();
    let mut clients = Vec::new();
    for (i, b) in bundles.iter().enumerate() {
        clients.push(bench.berth_start(&format!("d{i}"), b).await?);
    }
    let berth_time = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut berth_total = Mem::default();
    for (_, pid) in &clients {
        berth_total = berth_total + mem(*pid)?;
    }
    for (i, (client, _)) in clients.iter_mut().enumerate() {
        bench.berth_stop(&format!("d{i}"), client).await?;
    }
    drop(clients);

    let started = Instant::now();
    for i in 0..n {
        run_sleep(&containerd, &bench.rootfs, &format!("d{i}"))?;
    }
    let containerd_time = started.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let mut containerd_total = Mem::default();
    for pid in pids_of("containerd-shim-runc-v2") {
        containerd_total = containerd_total + mem(pid).unwrap_or_default();
    }
    let daemon = mem(containerd.pid())?;
    for i in 0..n {
        remove(&containerd, &format!("d{i}"));
    }
    drop(containerd);

    println!("\ndensity: {n} sleep containers, one shim each, started one after another:");
    println!(
        "{:<28} {:>10} {:>12} {:>12}",
        "", "time (s)", "RSS (MiB)", "PSS (MiB)"
    );
    println!(
        "{:<28} {:>10.2} {:>12.1} {:>12.1}",
        "berth-shim",
        berth_time.as_secs_f64(),
        berth_total.rss_kib as f64 / 1024.0,
        berth_total.pss_kib as f64 / 1024.0
    );
    println!(
        "{:<28} {:>10.2} {:>12.1} {:>12.1}",
        "containerd shims",
        containerd_time.as_secs_f64(),
        containerd_total.rss_kib as f64 / 1024.0,
        containerd_total.pss_kib as f64 / 1024.0
    );
    println!(
        "{:<28} {:>10} {:>12.1} {:>12.1}",
        "  + containerd daemon",
        "",
        daemon.rss_kib as f64 / 1024.0,
        daemon.pss_kib as f64 / 1024.0
    );
    println!(
        "{:<28} {:>10} {:>12} {:>12}",
        "ratio berth/containerd",
        ratio(berth_time.as_secs_f64(), containerd_time.as_secs_f64()),
        ratio(berth_total.rss_kib as f64, containerd_total.rss_kib as f64),
        ratio(berth_total.pss_kib as f64, containerd_total.pss_kib as f64)
    );
    summary(
        &format!("{n} containers started, one shim each (s)"),
        berth_time.as_secs_f64(),
        containerd_time.as_secs_f64(),
        "s",
        "-",
    );
    Ok(())
}
