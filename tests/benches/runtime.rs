//! berth-runtime start-to-exit latency against crun and runc, in the same run, interleaved.
//!
//! `cargo bench -p berth-tests --bench runtime` (root; Debian's runc, crun and umoci). Not
//! part of CI. Environment:
//!
//! - `BENCH_N`: iterations per variant (default 30); each variant's median, p10 and p90.
//! - `BERTH_RUNTIME_BIN` / `BERTH_SHIM_BIN`: the binaries to measure (default: the release
//!   builds next to this bench's executable: `cargo build --release -p berth-runtime -p berth-shim`).
//!
//! Raw runtime: `<runtime> run` of one bundle running `true`, until it exits and is deleted.
//! Debian's crun refuses this hybrid cgroup host unless run in a private mount namespace
//! without the cgroup2 mount (`unshare -m` + umount: the "wrapped" variants); runc and
//! berth-runtime run both wrapped (like for like with crun) and bare.
//! Through the shim: one shim per backend; per iteration Create, Start, Wait, Delete of a
//! `true` container over the shim API.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use berth_api::berth::shim::v1 as api;
use berth_tests::bench::{run, samples, summary};
use berth_tests::cleanup::remove_cgroup_parent;
use berth_tests::fixtures::bundle::{busybox_rootfs, runc_spec, write_bundle};
use serde_json::json;

type Client = api::shim_client::ShimClient<berth_api::client::Channel>;

const WRAP: &str = "umount /sys/fs/cgroup/unified 2>/dev/null; exec \"$@\"";

fn binary(env: &str, name: &str) -> Result<PathBuf> {
    let path = std::env::var_os(env)
        .map(PathBuf::from)
        .unwrap_or_else(|| berth_tests::harness::bin(name));
    ensure!(
        path.is_file(),
        "{} missing: cargo build --release -p {name} (or set {env})",
        path.display()
    );
    Ok(path)
}

/// One way of running the bundle.
struct Variant {
    name: &'static str,
    runtime: PathBuf,
    wrapped: bool,
    samples: Vec<Duration>,
}

impl Variant {
    fn once(&mut self, root: &Path, bundle: &Path, id: &str) -> Result<()> {
        let mut cmd = if self.wrapped {
            let mut c = Command::new("unshare");
            c.args(["-m", "--propagation", "private", "sh", "-c", WRAP, "sh"])
                .arg(&self.runtime);
            c
        } else {
            Command::new(&self.runtime)
        };
        cmd.arg("--root")
            .arg(root)
            .args(["run", "--bundle"])
            .arg(bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        let start = Instant::now();
        let out = cmd.output()?;
        self.samples.push(start.elapsed());
        ensure!(
            out.status.success(),
            "{}: {}",
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
}

fn stats(samples: &[Duration]) -> (f64, f64, f64) {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.1), at(0.9))
}

fn report(variants: &[(&str, &[Duration])], reference: &str) {
    let base = variants
        .iter()
        .find(|(n, _)| *n == reference)
        .map(|(_, s)| stats(s).0)
        .unwrap_or(0.0);
    println!(
        "{:<34} {:>9} {:>9} {:>9} {:>10}",
        "variant",
        "median ms",
        "p10",
        "p90",
        format!("/ {reference}")
    );
    for (name, samples) in variants {
        let (m, p10, p90) = stats(samples);
        println!(
            "{name:<34} {m:>9.2} {p10:>9.2} {p90:>9.2} {:>10.2}",
            m / base
        );
    }
}

/// A shim with one backend, driven over its API.
struct Shim {
    client: Client,
    dir: PathBuf,
    runtime: &'static str,
}

impl Shim {
    /// Starts the shim with a long-running `keeper` container (a shim exits once its last
    /// container is deleted).
    async fn start(shim: &Path, dir: &Path, runtime: &'static str, keeper: &Path) -> Result<Shim> {
        let id = format!("bench-{runtime}");
        run(Command::new(shim)
            .args(["--namespace", "bench", "--id", &id, "--runtime", runtime])
            .arg("--socket-dir")
            .arg(dir))?;
        let channel = berth_api::client::connect(&dir.join("shim.sock"), "bench").await?;
        let mut client = Client::new(channel);
        client
            .create(api::CreateRequest {
                id: "keeper".into(),
                bundle: keeper.display().to_string(),
                runtime: runtime.into(),
                ..Default::default()
            })
            .await?;
        client
            .start(api::StartRequest {
                id: "keeper".into(),
                exec_id: String::new(),
            })
            .await?;
        Ok(Shim {
            client,
            dir: dir.to_owned(),
            runtime,
        })
    }

    /// Create, Start, Wait, Delete of `id`; the elapsed time.
    async fn once(&mut self, id: &str, bundle: &Path) -> Result<Duration> {
        let start = Instant::now();
        self.client
            .create(api::CreateRequest {
                id: id.into(),
                bundle: bundle.display().to_string(),
                runtime: self.runtime.into(),
                ..Default::default()
            })
            .await?;
        self.client
            .start(api::StartRequest {
                id: id.into(),
                exec_id: String::new(),
            })
            .await?;
        let exit = self
            .client
            .wait(api::WaitRequest {
                id: id.into(),
                exec_id: String::new(),
            })
            .await?
            .into_inner();
        self.client
            .delete(api::DeleteRequest {
                id: id.into(),
                exec_id: String::new(),
            })
            .await?;
        let elapsed = start.elapsed();
        let code = exit.exit_status.map(|s| s.exit_code).unwrap_or(255);
        ensure!(code == 0, "{}: exit code {code}", self.runtime);
        Ok(elapsed)
    }

    async fn stop(mut self) -> Result<()> {
        let _ = self
            .client
            .shutdown(api::ShutdownRequest {
                id: String::new(),
                now: true,
            })
            .await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.dir.exists() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(())
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    if std::env::args().any(|a| a == "--list") {
        return Ok(());
    }
    let n = samples();
    let berth = binary("BERTH_RUNTIME_BIN", "berth-runtime")?;
    let shim_bin = binary("BERTH_SHIM_BIN", "berth-shim")?;
    let dir = tempfile::Builder::new()
        .prefix("berth-test-rtbench-")
        .tempdir()?;
    let rootfs = busybox_rootfs(dir.path(), "rootfs")?;
    let bundle = dir.path().join("bundle");
    let mut spec = runc_spec().clone();
    spec["process"]["args"] = json!(["true"]);
    spec["process"]["terminal"] = json!(false);
    spec["root"] = json!({ "path": rootfs, "readonly": true });
    let name = dir
        .path()
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    spec["linux"]["cgroupsPath"] = json!(format!("/{name}"));
    write_bundle(&bundle, &spec)?;

    // One keeper bundle (own cgroup) per shim.
    spec["process"]["args"] = json!(["sleep", "100000"]);
    for rt in ["builtin", "crun"] {
        let keeper = dir.path().join(format!("keeper-{rt}"));
        spec["linux"]["cgroupsPath"] = json!(format!("/{name}-keeper-{rt}"));
        write_bundle(&keeper, &spec)?;
    }

    let runc = PathBuf::from("runc");
    let crun = PathBuf::from("crun");
    let mut variants = [
        Variant {
            name: "berth-runtime run",
            runtime: berth.clone(),
            wrapped: false,
            samples: vec![],
        },
        Variant {
            name: "berth-runtime run (wrapped)",
            runtime: berth.clone(),
            wrapped: true,
            samples: vec![],
        },
        Variant {
            name: "crun run (wrapped)",
            runtime: crun,
            wrapped: true,
            samples: vec![],
        },
        Variant {
            name: "runc run (wrapped)",
            runtime: runc.clone(),
            wrapped: true,
            samples: vec![],
        },
        Variant {
            name: "runc run",
            runtime: runc,
            wrapped: false,
            samples: vec![],
        },
    ];
    println!("berth-runtime: {}", berth.display());
    println!("start-to-exit of `true`, {n} interleaved runs each (+1 warm-up)");
    for i in 0..=n {
        for v in variants.iter_mut() {
            let root = dir
                .path()
                .join(format!("root-{}", v.name.replace([' ', '(', ')'], "")));
            v.once(&root, &bundle, "bench")?;
            if i == 0 {
                v.samples.clear();
            }
        }
    }
    let rows: Vec<(&str, &[Duration])> = variants
        .iter()
        .map(|v| (v.name, v.samples.as_slice()))
        .collect();
    report(&rows, "crun run (wrapped)");
    let median_of = |name: &str| {
        rows.iter()
            .find(|(n, _)| *n == name)
            .map_or(0.0, |(_, s)| stats(s).0)
    };
    summary(
        "runtime start-to-exit, builtin vs crun",
        median_of("berth-runtime run"),
        median_of("crun run (wrapped)"),
        "ms",
        "<= 1",
    );

    println!(
        "\nthrough the shim API (Create+Start+Wait+Delete of `true`), {n} interleaved runs each"
    );
    let mut shims = vec![
        Shim::start(
            &shim_bin,
            &dir.path().join("shim-builtin"),
            "builtin",
            &dir.path().join("keeper-builtin"),
        )
        .await?,
        Shim::start(
            &shim_bin,
            &dir.path().join("shim-crun"),
            "crun",
            &dir.path().join("keeper-crun"),
        )
        .await?,
    ];
    let mut samples: Vec<Vec<Duration>> = vec![Vec::new(); shims.len()];
    for i in 0..=n {
        for (k, shim) in shims.iter_mut().enumerate() {
            let d = shim.once(&format!("c{i}"), &bundle).await?;
            if i > 0 {
                samples[k].push(d);
            }
        }
    }
    let rows: Vec<(&str, &[Duration])> = vec![
        ("shim + builtin", samples[0].as_slice()),
        ("shim + crun", samples[1].as_slice()),
    ];
    report(&rows, "shim + crun");
    summary(
        "shim run true, builtin vs crun backend",
        stats(&samples[0]).0,
        stats(&samples[1]).0,
        "ms",
        "<= 1",
    );
    for s in shims.drain(..) {
        s.stop().await?;
    }
    let _ = remove_cgroup_parent(&name);
    for rt in ["builtin", "crun"] {
        let _ = remove_cgroup_parent(&format!("{name}-keeper-{rt}"));
    }
    Ok(())
}
