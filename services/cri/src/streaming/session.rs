//! Exec and attach sessions over the tasks service, independent of the wire protocol: the
//! protocol layer ([`super::websocket`], [`super::spdy`]) feeds an [`Io`] and reports the
//! [`Outcome`] on the client's error stream.

use berth_api::Service;
use berth_api::berth::containers::v1 as cpb;
use berth_api::berth::containers::v1::containers_client::ContainersClient;
use berth_api::berth::tasks::v1 as tpb;
use berth_api::berth::tasks::v1::tasks_client::TasksClient;
use berth_api::client::Channel;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::Cri;

/// How long an exec killed because its client left may take to exit.
const EXEC_KILL_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// An exec or attach a token stands for, as the RPC validated it.
#[derive(Debug, Clone)]
pub struct Target {
    /// Container id.
    pub container_id: String,
    /// Command of an exec; None for an attach to the container's init process.
    pub cmd: Option<Vec<String>>,
    /// The process has a terminal.
    pub tty: bool,
    /// The client sends stdin.
    pub stdin: bool,
    /// The client wants stdout.
    pub stdout: bool,
    /// The client wants stderr.
    pub stderr: bool,
}

/// Which output stream bytes come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Standard output (everything when the process has a terminal).
    Stdout,
    /// Standard error.
    Stderr,
}

/// The client side of a session, as the protocol layer delivers it.
pub struct Io {
    /// Bytes for the process's stdin; the channel closes when the client closes stdin. None
    /// when the client sends no stdin.
    pub stdin: Option<mpsc::Receiver<Vec<u8>>>,
    /// Terminal sizes (width, height) the client sends.
    pub resize: mpsc::Receiver<(u16, u16)>,
    /// Output for the client; closed when the client is gone.
    pub output: mpsc::Sender<(Output, Vec<u8>)>,
}

/// How a session ended, for the client's error stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The process exited with this code (0 is success).
    Exited(u32),
    /// The client went away or the stream ended without an exit status.
    Closed,
    /// The session could not run.
    Failed(String),
}

impl Outcome {
    /// The Kubernetes `Status` object the v4/v5 channel protocols send on the error stream.
    pub fn status(&self) -> Value {
        match self {
            Outcome::Exited(0) | Outcome::Closed => json!({"metadata": {}, "status": "Success"}),
            Outcome::Exited(code) => json!({
                "metadata": {},
                "status": "Failure",
                "message": format!("command terminated with non-zero exit code: exit status {code}"),
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
            }),
            Outcome::Failed(message) => json!({
                "metadata": {},
                "status": "Failure",
                "message": message,
                "reason": "InternalError",
            }),
        }
    }
}

/// The exec's OCI process: the container's running `cmd` as its init process `init_pid`'s
/// user (see [`crate::container::exec::process_spec`]), with `TERM=xterm` added on a terminal.
fn process(spec: &[u8], cmd: &[String], tty: bool, init_pid: u32) -> Result<Value, Status> {
    let mut p = crate::container::exec::process_spec(spec, cmd, tty, init_pid)?;
    let has_term = p["env"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|e| e.as_str().is_some_and(|e| e.starts_with("TERM=")));
    if tty
        && !has_term
        && let Some(env) = p["env"].as_array_mut()
    {
        env.push(json!("TERM=xterm"));
    }
    Ok(p)
}

/// Checks that `container_id` names a running container (for the Exec and Attach RPCs).
pub async fn check_running(cri: &Cri, container_id: &str) -> Result<(), Status> {
    crate::container::find(cri, container_id).await?;
    let running = crate::container::task(cri, container_id)
        .await?
        .is_some_and(|t| t.status() == berth_api::berth::types::v1::TaskStatus::Running);
    if !running {
        return Err(Status::failed_precondition(format!(
            "container {container_id} is not running"
        )));
    }
    Ok(())
}

/// Runs `target` with the client's `io` and returns how it ended.
pub async fn run(cri: &Cri, target: Target, io: Io) -> Outcome {
    let channel = match cri.connect(Service::Tasks).await {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(e.message().to_owned()),
    };
    let exec_id = match &target.cmd {
        None => String::new(),
        Some(cmd) => match create_exec(channel.clone(), &target, cmd).await {
            Ok(id) => id,
            Err(e) => return Outcome::Failed(e.message().to_owned()),
        },
    };
    let outcome = pump(channel.clone(), &target, &exec_id, io)
        .await
        .unwrap_or_else(|e| Outcome::Failed(e.message().to_owned()));
    if !exec_id.is_empty() {
        let mut tasks = TasksClient::new(channel);
        if outcome == Outcome::Closed {
            // The client left first: the exec process goes too (as containerd does).
            let _ = tasks
                .kill(tpb::KillRequest {
                    container_id: target.container_id.clone(),
                    exec_id: exec_id.clone(),
                    signal: libc::SIGKILL as u32,
                    all: false,
                })
                .await;
            let wait = tasks.wait(tpb::WaitRequest {
                container_id: target.container_id.clone(),
                exec_id: exec_id.clone(),
            });
            let _ = tokio::time::timeout(EXEC_KILL_WAIT, wait).await;
        }
        let _ = tasks
            .delete(tpb::DeleteTaskRequest {
                container_id: target.container_id.clone(),
                exec_id,
            })
            .await;
    }
    outcome
}

/// Creates (does not start) the exec process of `target`; returns its id.
async fn create_exec(channel: Channel, target: &Target, cmd: &[String]) -> Result<String, Status> {
    let container = ContainersClient::new(channel.clone())
        .get(cpb::GetContainerRequest {
            id: target.container_id.clone(),
        })
        .await?
        .into_inner()
        .container
        .unwrap_or_default();
    let init = TasksClient::new(channel.clone())
        .get(tpb::GetTaskRequest {
            container_id: target.container_id.clone(),
            exec_id: String::new(),
        })
        .await?
        .into_inner()
        .task
        .unwrap_or_default();
    let spec = process(&container.spec, cmd, target.tty, init.pid)?;
    let exec_id = crate::container::exec::exec_id();
    TasksClient::new(channel)
        .exec(tpb::ExecProcessRequest {
            container_id: target.container_id.clone(),
            exec_id: exec_id.clone(),
            stdin: target.stdin,
            terminal: target.tty,
            spec: serde_json::to_vec(&spec).unwrap_or_default(),
        })
        .await?;
    Ok(exec_id)
}

/// Attaches to the process (starting it first if it is an exec) and moves bytes both ways
/// until it exits or the client goes away.
async fn pump(
    channel: Channel,
    target: &Target,
    exec_id: &str,
    mut io: Io,
) -> Result<Outcome, Status> {
    let mut tasks = TasksClient::new(channel);
    let (tx, rx) = mpsc::channel(64);
    let request = |msg| tpb::AttachRequest { msg: Some(msg) };
    let _ = tx
        .send(request(tpb::attach_request::Msg::Start(tpb::AttachStart {
            container_id: target.container_id.clone(),
            exec_id: exec_id.to_owned(),
            stdin: target.stdin,
            stdout: target.stdout,
            stderr: target.stderr,
        })))
        .await;
    let mut output = tasks.attach(ReceiverStream::new(rx)).await?.into_inner();
    if !exec_id.is_empty() {
        tasks
            .start(tpb::StartRequest {
                container_id: target.container_id.clone(),
                exec_id: exec_id.to_owned(),
            })
            .await?;
    }
    let mut stdin = io.stdin.take();
    loop {
        tokio::select! {
            message = output.message() => match message? {
                None => return Ok(Outcome::Closed),
                Some(m) => match m.msg {
                    Some(tpb::attach_response::Msg::Output(o)) => {
                        let stream = match o.stream() {
                            tpb::OutputStream::Stderr => Output::Stderr,
                            _ => Output::Stdout,
                        };
                        if io.output.send((stream, o.data)).await.is_err() {
                            return Ok(Outcome::Closed);
                        }
                    }
                    Some(tpb::attach_response::Msg::Exit(status)) => {
                        return Ok(Outcome::Exited(status.exit_code));
                    }
                    None => {}
                },
            },
            chunk = async { stdin.as_mut().expect("guarded").recv().await }, if stdin.is_some() => {
                match chunk {
                    Some(data) => {
                        let _ = tx.send(request(tpb::attach_request::Msg::Stdin(data))).await;
                    }
                    None => {
                        let _ = tx.send(request(tpb::attach_request::Msg::CloseStdin(true))).await;
                        stdin = None;
                    }
                }
            }
            Some((width, height)) = io.resize.recv() => {
                let size = tpb::Resize { width: width.into(), height: height.into() };
                let _ = tx.send(request(tpb::attach_request::Msg::Resize(size))).await;
            }
            _ = io.output.closed() => return Ok(Outcome::Closed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_objects() {
        assert_eq!(Outcome::Exited(0).status()["status"], "Success");
        let failed = Outcome::Exited(3).status();
        assert_eq!(failed["status"], "Failure");
        assert_eq!(failed["reason"], "NonZeroExitCode");
        assert_eq!(failed["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(failed["details"]["causes"][0]["message"], "3");
    }

    #[test]
    fn exec_process_keeps_the_containers_settings() {
        let spec = br#"{"process": {"args": ["top"], "env": ["PATH=/bin"], "cwd": "/w", "consoleSize": {"height": 1, "width": 1}}}"#;
        let p = process(spec, &["sh".into()], true, 0).unwrap();
        assert_eq!(p["args"], json!(["sh"]));
        assert_eq!(p["cwd"], "/w");
        assert_eq!(p["env"], json!(["PATH=/bin", "TERM=xterm"]));
        assert!(p.get("consoleSize").is_none());
        assert_eq!(
            process(b"{}", &["true".into()], false, 0).unwrap()["terminal"],
            false
        );
    }
}
