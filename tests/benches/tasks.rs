//! Create + start + wait + delete of `true` through the tasks API, against containerd's
//! `ctr run --rm`, in the same run, on the same busybox image, with runc and with crun.
//!
//! `cargo bench -p berth-tests --bench tasks` (root; Debian's containerd, runc and crun).
//! Not part of CI. `BENCH_N` sets the samples per configuration (default 30, at least 30 for
//! a reported median).
//!
//! berth: one cycle = Snapshots.Prepare of the container's snapshot, Containers.Create,
//! Tasks.Create, Tasks.Start, Tasks.Wait, Tasks.Delete, Containers.Delete (which removes the
//! snapshot), all over the real sockets of a berth started for the run. containerd: one cycle =
//! `ctr run --rm` of the same image (imported into a private containerd with its own root,
//! state and socket), which creates the container and its snapshot, runs and removes both.
//! crun needs a private mount namespace without /sys/fs/cgroup/unified on this hybrid cgroup
//! host: containerd gets a wrapper doing that (as berth's shim does itself), which costs a few
//! milliseconds per runtime call. The configurations are interleaved so that drift hits all.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use berth_api::berth::containers::v1::{self as cpb, containers_client::ContainersClient};
use berth_api::berth::snapshots::v1::{self as spb, snapshots_client::SnapshotsClient};
use berth_api::berth::tasks::v1::{self as tpb, tasks_client::TasksClient};
use berth_api::client::{self, Channel};
use berth_tests::bench::{median, ms, run, samples, summary};
use berth_tests::cleanup::remove_cgroup_parent;
use berth_tests::fixtures::bundle::runc_spec;
use berth_tests::fixtures::containerd::Containerd;
use berth_tests::fixtures::images::{self, busybox_layout};
use berth_tests::snapshots_api::commit_layer;
use berth_tests::{Berth, Mode, Options};
use serde_json::{Value, json};

const NS: &str = "default";
const BASE: &str = "busybox-base";

/// The base spec of the berth containers (`runc spec`, running `true`).
fn spec() -> Value {
    let mut spec = runc_spec().clone();
    spec["process"]["args"] = json!(["true"]);
    spec["process"]["terminal"] = json!(false);
    spec["root"] = json!({ "path": "rootfs", "readonly": false });
    spec
}

struct BerthClients {
    containers: ContainersClient<Channel>,
    tasks: TasksClient<Channel>,
    snapshots: SnapshotsClient<Channel>,
}

async fn berth_clients(berth: &Berth) -> Result<BerthClients> {
    let tasks = client::connect(&berth.socket("tasks"), NS).await?;
    Ok(BerthClients {
        containers: ContainersClient::new(tasks.clone()),
        tasks: TasksClient::new(tasks),
        snapshots: SnapshotsClient::new(client::connect(&berth.socket("snapshots"), NS).await?),
    })
}

async fn berth_image(c: &mut BerthClients) -> Result<()> {
    commit_layer(&mut c.snapshots, BASE, "", &images::busybox_layer()?.tar).await
}

/// The steps of a berth cycle, for the breakdown.
const STEPS: [&str; 7] = [
    "snapshot prepare",
    "container create",
    "task create",
    "task start",
    "task wait",
    "task delete",
    "container delete",
];

/// One berth cycle; returns its duration and the duration of each of its [`STEPS`].
async fn berth_cycle(
    c: &mut BerthClients,
    spec: &[u8],
    runtime: &str,
    id: &str,
) -> Result<(Duration, Vec<Duration>)> {
    let begun = Instant::now();
    let mut steps = Vec::new();
    let mut last = begun;
    let mut step = || {
        let now = Instant::now();
        steps.push(now - last);
        last = now;
    };
    c.snapshots
        .prepare(spb::PrepareSnapshotRequest {
            key: id.into(),
            parent: BASE.into(),
            ..Default::default()
        })
        .await?;
    step();
    c.containers
        .create(cpb::CreateContainerRequest {
            container: Some(cpb::Container {
                id: id.into(),
                spec: spec.to_vec(),
                snapshot_key: id.into(),
                runtime: Some(cpb::Runtime {
                    name: runtime.into(),
                    options: Vec::new(),
                }),
                ..Default::default()
            }),
        })
        .await?;
    step();
    c.tasks
        .create(tpb::CreateTaskRequest {
            container_id: id.into(),
            ..Default::default()
        })
        .await?;
    step();
    c.tasks
        .start(tpb::StartRequest {
            container_id: id.into(),
            exec_id: String::new(),
        })
        .await?;
    step();
    let exit = c
        .tasks
        .wait(tpb::WaitRequest {
            container_id: id.into(),
            exec_id: String::new(),
        })
        .await?
        .into_inner()
        .exit_status
        .map(|e| e.exit_code);
    step();
    ensure!(exit == Some(0), "berth {runtime}: exit {exit:?}");
    c.tasks
        .delete(tpb::DeleteTaskRequest {
            container_id: id.into(),
            exec_id: String::new(),
        })
        .await?;
    step();
    c.containers
        .delete(cpb::DeleteContainerRequest { id: id.into() })
        .await?;
    step();
    Ok((begun.elapsed(), steps))
}

fn ctr_cycle(ctr: &Containerd, runc_binary: &Path, id: &str) -> Result<Duration> {
    let begun = Instant::now();
    ctr.ctr(&[
        "run",
        "--rm",
        "--runtime",
        "io.containerd.runc.v2",
        "--runc-binary",
        &runc_binary.display().to_string(),
        "busybox:bench",
        id,
        "true",
    ])?;
    Ok(begun.elapsed())
}

fn main() -> Result<()> {
    let n = samples();
    let dir = tempfile::Builder::new()
        .prefix("berth-bench-tasks-")
        .tempdir()?;

    // containerd with the busybox image imported, and a crun wrapper for the hybrid host.
    let layout = busybox_layout(&dir.path().join("layout"))?;
    let archive = dir.path().join("busybox.tar");
    let ctr = Containerd::start(&dir.path().join("containerd"))?;
    ctr.import_layout(&layout.path, &archive, "busybox:bench")?;
    drop(layout);
    let runc = PathBuf::from(run(Command::new("sh").args(["-c", "command -v runc"]))?.trim());
    let crun_wrapper = dir.path().join("crun-private-ns");
    std::fs::write(
        &crun_wrapper,
        "#!/bin/sh\nexec unshare -m --propagation private sh -c \
         'umount /sys/fs/cgroup/unified 2>/dev/null; exec crun \"$@\"' crun \"$@\"\n",
    )?;
    std::fs::set_permissions(
        &crun_wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;

    // berth, started for the run.
    let berth = Berth::start_with(
        Mode::AllInOne,
        Options {
            config: Some("[tasks]\ncgroup_parent = \"berth-bench\"\n".into()),
            ..Default::default()
        },
    )?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let spec = serde_json::to_vec(&spec())?;
    let mut c = rt.block_on(berth_clients(&berth))?;
    rt.block_on(berth_image(&mut c))?;

    let mut times: [Vec<Duration>; 5] = Default::default();
    let mut steps: Vec<Vec<Duration>> = vec![Vec::new(); STEPS.len()];
    let labels = [
        "berth + runc",
        "berth + crun",
        "ctr run --rm + runc",
        "ctr run --rm + crun",
        "berth + builtin",
    ];
    // One warm-up round, not counted.
    for round in 0..=n {
        let id = |k: usize| format!("bench-{round}-{k}");
        let (runc_time, runc_steps) = rt.block_on(berth_cycle(&mut c, &spec, "runc", &id(0)))?;
        let (crun_time, _) = rt.block_on(berth_cycle(&mut c, &spec, "crun", &id(1)))?;
        let t = [
            runc_time,
            crun_time,
            ctr_cycle(&ctr, &runc, &id(2))?,
            ctr_cycle(&ctr, &crun_wrapper, &id(3))?,
            rt.block_on(berth_cycle(&mut c, &spec, "builtin", &id(4)))?
                .0,
        ];
        if round > 0 {
            for (k, d) in t.into_iter().enumerate() {
                times[k].push(d);
            }
            for (k, d) in runc_steps.into_iter().enumerate() {
                steps[k].push(d);
            }
        }
    }
    drop(c);
    drop(rt);
    berth.stop()?;
    drop(ctr);
    let _ = remove_cgroup_parent("berth-bench");

    let medians: Vec<f64> = times.iter().map(|t| ms(median(t))).collect();
    println!("create + start + wait + delete of `true`, median of {n}:");
    for (label, m) in labels.iter().zip(&medians) {
        println!("  {label:<22} {m:8.1} ms");
    }
    println!("  berth + runc by step (medians):");
    for (label, d) in STEPS.iter().zip(steps) {
        println!("    {label:<18} {:8.1} ms", ms(median(&d)));
    }
    println!(
        "  berth+runc / containerd+runc = {:.2}   (target <= 0.33)",
        medians[0] / medians[2]
    );
    println!(
        "  berth+crun / containerd+crun = {:.2}   berth+runc / containerd+crun = {:.2}   (target < 1)",
        medians[1] / medians[3],
        medians[0] / medians[3]
    );
    summary(
        "tasks: run true, berth+runc vs ctr+runc",
        medians[0],
        medians[2],
        "ms",
        "<= 0.33",
    );
    summary(
        "tasks: run true, berth+crun vs ctr+crun",
        medians[1],
        medians[3],
        "ms",
        "< 1",
    );
    summary(
        "tasks: run true, berth+builtin vs ctr+runc",
        medians[4],
        medians[2],
        "ms",
        "<= 0.33",
    );
    Ok(())
}
