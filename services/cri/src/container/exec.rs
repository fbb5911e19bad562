//! ExecSync: a command run in a running container with its stdout and stderr captured, killed
//! when the timeout passes (what it wrote until then is returned).

use std::time::Duration;

use berth_api::berth::tasks::v1 as tasks;
use berth_api::berth::types::v1::TaskStatus;
use berth_api::runtime::v1 as cri;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use super::{find, remote, task, tasks_client};
use crate::Cri;

/// Most output kept per stream (as the kubelet's own limit for probes, 16 MiB).
const MAX_OUTPUT: usize = 16 << 20;
/// Exit code reported when the timeout killed the command.
const TIMEOUT_EXIT_CODE: i32 = 137;

/// The OCI process of an exec in a container: the container's process with `cmd` as its
/// arguments, run as the user the container's init process `init_pid` runs as (see
/// [`run_as_init`]).
pub fn process_spec(
    container_spec: &[u8],
    cmd: &[String],
    tty: bool,
    init_pid: u32,
) -> Result<Value, Status> {
    if cmd.is_empty() || cmd[0].is_empty() {
        return Err(Status::invalid_argument("the exec command is empty"));
    }
    let spec: Value = serde_json::from_slice(container_spec).unwrap_or_default();
    let mut p = spec["process"].clone();
    if !p.is_object() {
        p = json!({ "user": { "uid": 0, "gid": 0 }, "cwd": "/", "env": [] });
    }
    run_as_init(&mut p, init_pid);
    p["args"] = json!(cmd);
    p["terminal"] = json!(tty);
    if let Some(o) = p.as_object_mut() {
        o.remove("consoleSize");
    }
    Ok(p)
}

/// Sets the user of an exec `process` to the user (uid, gid, groups) the container's init
/// process `init_pid` runs as: the record's spec may still name a user that the tasks service
/// resolved inside the image when it created the task.
fn run_as_init(process: &mut Value, init_pid: u32) {
    if let Some(user) = user_of(init_pid) {
        process["user"] = user;
    }
}

/// `{uid, gid, additionalGids}` of a running process, from /proc.
fn user_of(pid: u32) -> Option<Value> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<Vec<u32>> {
        let line = status.lines().find_map(|l| l.strip_prefix(name))?;
        Some(
            line.split_whitespace()
                .filter_map(|v| v.parse().ok())
                .collect(),
        )
    };
    let uid = *field("Uid:")?.first()?;
    let gid = *field("Gid:")?.first()?;
    let groups = field("Groups:").unwrap_or_default();
    Some(json!({ "uid": uid, "gid": gid, "additionalGids": groups }))
}

/// A fresh exec id.
pub fn exec_id() -> String {
    let mut bytes = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut bytes);
    }
    hex::encode(bytes)
}

/// ExecSync.
#[tracing::instrument(skip_all, fields(container = %req.container_id))]
pub async fn exec_sync(
    cri: &Cri,
    req: cri::ExecSyncRequest,
) -> Result<cri::ExecSyncResponse, Status> {
    if req.timeout < 0 {
        return Err(Status::invalid_argument(format!(
            "invalid exec timeout {}: must not be negative",
            req.timeout
        )));
    }
    let (c, _) = find(cri, &req.container_id).await?;
    let pid = match task(cri, &c.id).await? {
        Some(t) if t.status() == TaskStatus::Running => t.pid,
        _ => {
            return Err(Status::failed_precondition(format!(
                "container {} is not running",
                c.id
            )));
        }
    };
    let process = process_spec(&c.spec, &req.cmd, false, pid)?;
    let id = exec_id();
    let mut client = tasks_client(cri).await?;
    client
        .exec(tasks::ExecProcessRequest {
            container_id: c.id.clone(),
            exec_id: id.clone(),
            stdin: false,
            terminal: false,
            spec: serde_json::to_vec(&process).map_err(|e| Status::internal(e.to_string()))?,
        })
        .await
        .map_err(|s| remote("tasks", s))?;
    let result = run(&mut client, &c.id, &id, req.timeout).await;
    let _ = client
        .delete(tasks::DeleteTaskRequest {
            container_id: c.id.clone(),
            exec_id: id,
        })
        .await;
    result
}

/// Attaches, starts, collects output until the exit or the timeout.
async fn run(
    client: &mut tasks::tasks_client::TasksClient<berth_api::client::Channel>,
    container: &str,
    exec: &str,
    timeout: i64,
) -> Result<cri::ExecSyncResponse, Status> {
    let (tx, rx) = mpsc::channel(1);
    tx.send(tasks::AttachRequest {
        msg: Some(tasks::attach_request::Msg::Start(tasks::AttachStart {
            container_id: container.to_owned(),
            exec_id: exec.to_owned(),
            stdin: false,
            stdout: true,
            stderr: true,
        })),
    })
    .await
    .map_err(|_| Status::internal("attach stream closed"))?;
    let mut output = client
        .attach(ReceiverStream::new(rx))
        .await
        .map_err(|s| remote("tasks", s))?
        .into_inner();
    client
        .start(tasks::StartRequest {
            container_id: container.to_owned(),
            exec_id: exec.to_owned(),
        })
        .await
        .map_err(|s| remote("tasks", s))?;
    let mut response = cri::ExecSyncResponse::default();
    let collect = async {
        while let Some(message) = output.next().await {
            match message.map_err(|s| remote("tasks", s))?.msg {
                Some(tasks::attach_response::Msg::Output(o)) => {
                    let buf = if o.stream() == tasks::OutputStream::Stderr {
                        &mut response.stderr
                    } else {
                        &mut response.stdout
                    };
                    let room = MAX_OUTPUT.saturating_sub(buf.len());
                    buf.extend_from_slice(&o.data[..o.data.len().min(room)]);
                }
                Some(tasks::attach_response::Msg::Exit(e)) => return Ok(Some(e.exit_code as i32)),
                None => {}
            }
        }
        Ok::<_, Status>(None)
    };
    let ended = if timeout > 0 {
        tokio::time::timeout(Duration::from_secs(timeout.unsigned_abs()), collect).await
    } else {
        Ok(collect.await)
    };
    drop(tx);
    response.exit_code = match ended {
        Ok(Ok(Some(code))) => code,
        Ok(Ok(None)) => wait(client, container, exec).await?,
        Ok(Err(s)) => return Err(s),
        Err(_) => {
            let _ = client
                .kill(tasks::KillRequest {
                    container_id: container.to_owned(),
                    exec_id: exec.to_owned(),
                    signal: libc::SIGKILL as u32,
                    all: false,
                })
                .await;
            let _ =
                tokio::time::timeout(Duration::from_secs(10), wait(client, container, exec)).await;
            TIMEOUT_EXIT_CODE
        }
    };
    Ok(response)
}

async fn wait(
    client: &mut tasks::tasks_client::TasksClient<berth_api::client::Channel>,
    container: &str,
    exec: &str,
) -> Result<i32, Status> {
    Ok(client
        .wait(tasks::WaitRequest {
            container_id: container.to_owned(),
            exec_id: exec.to_owned(),
        })
        .await
        .map_err(|s| remote("tasks", s))?
        .into_inner()
        .exit_status
        .unwrap_or_default()
        .exit_code as i32)
}
