//! `RUN`: a container of the tasks service on a snapshot prepared on the parent's chain id.
//!
//! The container's spec comes from the tasks crate's spec builder (as for `berthctl run`),
//! with the stage's shell, `ENV`, `USER`, `WORKDIR` and the build arguments in its
//! environment; its network is none unless the build or the instruction asks for the host's
//! or the bridge. The container record names no snapshot (the task gets the snapshot's mounts
//! directly), so deleting the container leaves the snapshot to the build, which compares it
//! with its parent and commits it. Mount points the runtime had to create in the rootfs for
//! `/etc/hosts`, `/etc/resolv.conf`, `/etc/hostname`, `/dev`, `/proc` and `/sys` are removed
//! again before the comparison when the image did not have them, so they never end up in a
//! layer.

use std::collections::HashMap;
use std::path::Path;

use berth_api::berth::containers::v1 as cpb;
use berth_api::berth::tasks::v1 as tpb;
use berth_snapshots::mount::{Mount, Mounted};
use berth_tasks::spec::{self, RunOptions};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{Builder, NetworkMode, State};
use crate::clients::Clients;
use crate::config::shell_of;
use crate::dockerfile::{self, Command, Run};
use crate::error::{Error, Result};
use crate::progress::Event;

/// Label on the containers of build steps.
pub const BUILD_CONTAINER_LABEL: &str = "berth.io/build";

/// Paths the runtime creates as mount points when the image lacks them, children first.
const MOUNT_POINTS: [&str; 7] = [
    "etc/hosts",
    "etc/resolv.conf",
    "etc/hostname",
    "etc",
    "dev",
    "proc",
    "sys",
];

/// Runs `run` on `state` and adds its changes as a layer.
pub(super) async fn run(
    b: &Builder<'_>,
    state: &mut State,
    run: &Run,
    line: usize,
    step: usize,
    now: &str,
    created_by: &str,
) -> Result<()> {
    if run.script.is_some() {
        return Err(b.fail(line, "RUN with a #! heredoc script is not supported yet"));
    }
    let parent = b.ensure_snapshot(state).await?;
    let (key, mounts) = b.prepare(parent.clone(), "run").await?;
    let absent = mount_point_check(&mounts, &b.opts.scratch, None).await?;
    let network = match run.network {
        Some(dockerfile::Network::Host) => NetworkMode::Host,
        Some(dockerfile::Network::None) => NetworkMode::None,
        Some(dockerfile::Network::Default) | None => b.opts.network,
    };
    let argv = match &run.command {
        Command::Exec(args) => args.clone(),
        Command::Shell(line) => {
            let mut argv = shell_of(&state.image);
            argv.push(line.clone());
            argv
        }
    };
    let env_names: Vec<String> = state.env().into_iter().map(|(k, _)| k).collect();
    let build_env: Vec<String> = state
        .args
        .iter()
        .filter(|(k, _)| !env_names.contains(k))
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let exit = execute(b, state, argv, build_env, network, &mounts, step, line).await;
    let exit = match exit {
        Ok(code) => code,
        Err(e) => {
            let _ = b.remove_snapshot(&key).await;
            return Err(e);
        }
    };
    if exit != 0 {
        let _ = b.remove_snapshot(&key).await;
        return Err(Error::Step {
            file: b.file.clone(),
            line,
            message: format!(
                "RUN returned a non-zero code: {exit}: {}",
                created_by.trim_start_matches("RUN ").trim()
            ),
            exit_code: Some(exit),
        });
    }
    mount_point_check(&mounts, &b.opts.scratch, Some(&absent)).await?;
    b.commit_layer(state, &key, &mounts, parent, true, now, created_by)
        .await
}

/// Without `absent`: which of [`MOUNT_POINTS`] the tree lacks. With it: removes those that are
/// now present and empty.
async fn mount_point_check(
    mounts: &[Mount],
    scratch: &Path,
    absent: Option<&[&'static str]>,
) -> Result<Vec<&'static str>> {
    if let Some(upper) = crate::image::changes_dir(mounts) {
        // The trees are plain directories: look at them without mounting anything.
        let lowers = match mounts {
            [m] if m.fs_type == "overlay" => m.lowerdirs(),
            _ => Vec::new(),
        };
        let exists = |p: &str| {
            std::iter::once(&upper)
                .chain(&lowers)
                .any(|d| std::fs::symlink_metadata(d.join(p)).is_ok())
        };
        let Some(absent) = absent else {
            return Ok(MOUNT_POINTS
                .iter()
                .copied()
                .filter(|p| !exists(p))
                .collect());
        };
        for p in absent {
            let path = upper.join(p);
            match std::fs::symlink_metadata(&path) {
                Ok(m) if m.is_file() && m.len() == 0 => {
                    let _ = std::fs::remove_file(&path);
                }
                Ok(m) if m.is_dir() => {
                    let _ = std::fs::remove_dir(&path);
                }
                _ => {}
            }
        }
        return Ok(Vec::new());
    }
    let mounts = mounts.to_vec();
    let scratch = scratch.to_owned();
    let absent = absent.map(<[&str]>::to_vec);
    tokio::task::spawn_blocking(move || -> Result<Vec<&'static str>> {
        let mounted = Mounted::temporary(&mounts, &scratch)
            .map_err(Error::layer("mount the step's snapshot"))?;
        let root = rustix::fs::open(
            mounted.path(),
            rustix::fs::OFlags::RDONLY
                | rustix::fs::OFlags::DIRECTORY
                | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| Error::io("open", mounted.path())(e.into()))?;
        let stat = |p: &str| rustix::fs::statat(&root, p, rustix::fs::AtFlags::SYMLINK_NOFOLLOW);
        let Some(absent) = absent else {
            return Ok(MOUNT_POINTS
                .iter()
                .copied()
                .filter(|p| stat(p).is_err())
                .collect());
        };
        for p in absent {
            let Ok(st) = stat(p) else { continue };
            match rustix::fs::FileType::from_raw_mode(st.st_mode) {
                rustix::fs::FileType::RegularFile if st.st_size == 0 => {
                    let _ = rustix::fs::unlinkat(&root, p, rustix::fs::AtFlags::empty());
                }
                rustix::fs::FileType::Directory => {
                    // Fails (and stays) unless the directory is empty.
                    let _ = rustix::fs::unlinkat(&root, p, rustix::fs::AtFlags::REMOVEDIR);
                }
                _ => {}
            }
        }
        Ok(Vec::new())
    })
    .await
    .map_err(|e| Error::Invalid(format!("mount check panicked: {e}")))?
}

/// Runs `argv` in a container on `mounts`; returns its exit code. The container is removed
/// on every way out.
#[allow(clippy::too_many_arguments)]
async fn execute(
    b: &Builder<'_>,
    state: &State,
    argv: Vec<String>,
    env: Vec<String>,
    network: NetworkMode,
    mounts: &[Mount],
    step: usize,
    line: usize,
) -> Result<u32> {
    let config: oci_spec::image::ImageConfiguration =
        serde_json::from_value(state.image.config.clone())
            .map_err(|e| b.fail(line, format!("the image config cannot be used: {e}")))?;
    let options = RunOptions {
        entrypoint: Some(Vec::new()),
        cmd: argv,
        env,
        host_network: network == NetworkMode::Host,
        ..Default::default()
    };
    let spec = spec::build(&config, &options).map_err(|e| b.fail(line, e.to_string()))?;
    let id = random_id();
    let mut extensions = HashMap::new();
    let settings = match network {
        NetworkMode::None => None,
        NetworkMode::Host => Some(berth_tasks::NetworkSettings {
            mode: "host".into(),
            ..Default::default()
        }),
        NetworkMode::Bridge => Some(berth_tasks::NetworkSettings {
            mode: "bridge".into(),
            networks: vec![berth_tasks::network::NetworkAttachment {
                name: berth_tasks::network::DEFAULT_NETWORK.into(),
                ..Default::default()
            }],
            ..Default::default()
        }),
    };
    if let Some(s) = settings {
        extensions.insert(
            berth_tasks::network::EXTENSION.to_owned(),
            serde_json::to_vec(&s).unwrap_or_default(),
        );
    }
    let record = cpb::Container {
        id: id.clone(),
        name: format!("build-{}", &id[..12]),
        labels: HashMap::from([(BUILD_CONTAINER_LABEL.to_owned(), "true".to_owned())]),
        image: state.record.clone().unwrap_or_default(),
        spec: serde_json::to_vec(&spec).unwrap_or_default(),
        extensions,
        ..Default::default()
    };
    let mut clients = b.clients.clone();
    clients
        .containers
        .create(cpb::CreateContainerRequest {
            container: Some(record),
        })
        .await
        .map_err(Error::rpc("create the step's container"))?;
    b.resources.add_container(&id);
    let result = attach_and_wait(b, &mut clients, &id, mounts, step).await;
    remove_container(&mut clients, &id).await;
    b.resources.drop_container(&id);
    result.map_err(|e| match e {
        Error::Rpc { op, status } => b.fail(line, format!("{op}: {}", status.message())),
        other => other,
    })
}

async fn attach_and_wait(
    b: &Builder<'_>,
    clients: &mut Clients,
    id: &str,
    mounts: &[Mount],
    step: usize,
) -> Result<u32> {
    clients
        .tasks
        .create(tpb::CreateTaskRequest {
            container_id: id.to_owned(),
            rootfs: mounts.iter().cloned().map(Into::into).collect(),
            stdin: false,
            terminal: false,
        })
        .await
        .map_err(Error::rpc("start the step's container"))?;
    let (tx, rx) = mpsc::channel(4);
    let _ = tx
        .send(tpb::AttachRequest {
            msg: Some(tpb::attach_request::Msg::Start(tpb::AttachStart {
                container_id: id.to_owned(),
                exec_id: String::new(),
                stdin: false,
                stdout: true,
                stderr: true,
            })),
        })
        .await;
    let mut output = clients
        .tasks
        .attach(ReceiverStream::new(rx))
        .await
        .map_err(Error::rpc("attach to the step's container"))?
        .into_inner();
    clients
        .tasks
        .start(tpb::StartRequest {
            container_id: id.to_owned(),
            exec_id: String::new(),
        })
        .await
        .map_err(Error::rpc("start the step's command"))?;
    while let Ok(Some(m)) = output.message().await {
        match m.msg {
            Some(tpb::attach_response::Msg::Output(o)) => b.progress.event(Event::Output {
                id: step,
                data: o.data,
            }),
            Some(tpb::attach_response::Msg::Exit(status)) => {
                drop(tx);
                return Ok(if status.signal != 0 {
                    128 + status.signal
                } else {
                    status.exit_code
                });
            }
            None => {}
        }
    }
    drop(tx);
    // The stream ended without a status: ask for it.
    let status = clients
        .tasks
        .wait(tpb::WaitRequest {
            container_id: id.to_owned(),
            exec_id: String::new(),
        })
        .await
        .map_err(Error::rpc("wait for the step's command"))?
        .into_inner()
        .exit_status
        .unwrap_or_default();
    Ok(status.exit_code)
}

/// Kills and deletes a build container and its task; errors are ignored (best effort, the
/// container may be half made).
pub(super) async fn remove_container(clients: &mut Clients, id: &str) {
    let _ = clients
        .tasks
        .kill(tpb::KillRequest {
            container_id: id.to_owned(),
            exec_id: String::new(),
            signal: 9,
            all: true,
        })
        .await;
    let _ = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        clients.tasks.wait(tpb::WaitRequest {
            container_id: id.to_owned(),
            exec_id: String::new(),
        }),
    )
    .await;
    let _ = clients
        .tasks
        .delete(tpb::DeleteTaskRequest {
            container_id: id.to_owned(),
            exec_id: String::new(),
        })
        .await;
    let _ = clients
        .containers
        .delete(cpb::DeleteContainerRequest { id: id.to_owned() })
        .await;
}

/// 64 random hex digits.
fn random_id() -> String {
    let mut bytes = [0u8; 32];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut bytes);
    }
    hex::encode(bytes)
}
