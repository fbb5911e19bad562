//! `berthctl exec`: run another process in a running container, in its namespaces and cgroup,
//! with the container's process settings unless overridden.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::{Context as _, bail};
use berth_api::berth::tasks::v1 as tpb;
use berth_api::berth::types::v1::TaskStatus;
use serde_json::{Value, json};

use crate::attach::{self, Ended, Session};
use crate::container::{self, Clients, rpc};
use crate::context::Context;

/// `berthctl exec` arguments.
#[derive(clap::Args)]
pub struct ExecArgs {
    /// Detached mode: run the command in the background.
    #[arg(long, short = 'd')]
    detach: bool,
    /// Keep STDIN open even if not attached.
    #[arg(long, short = 'i')]
    interactive: bool,
    /// Allocate a pseudo-TTY.
    #[arg(long, short = 't')]
    tty: bool,
    /// Set environment variables.
    #[arg(long = "env", short = 'e')]
    env: Vec<String>,
    /// User as uid[:gid] (numeric).
    #[arg(long, short = 'u')]
    user: Option<String>,
    /// Working directory inside the container.
    #[arg(long, short = 'w')]
    workdir: Option<String>,
    /// Override the key sequence for detaching (default ctrl-p,ctrl-q).
    #[arg(long)]
    detach_keys: Option<String>,
    /// CONTAINER COMMAND [ARG...]
    #[arg(required = true, num_args = 2.., trailing_var_arg = true, value_name = "CONTAINER COMMAND [ARG...]")]
    argv: Vec<String>,
}

/// The exec's OCI process: the container's, with the command and overrides of `args`.
fn process(container_spec: &Value, args: &ExecArgs, command: &[String]) -> anyhow::Result<Value> {
    let mut p = container_spec["process"].clone();
    if !p.is_object() {
        p = json!({ "user": { "uid": 0, "gid": 0 }, "cwd": "/", "env": [] });
    }
    p["args"] = json!(command);
    p["terminal"] = json!(args.tty);
    if let Some(cwd) = &args.workdir {
        if !cwd.starts_with('/') {
            bail!("invalid --workdir {cwd:?}: must be an absolute path");
        }
        p["cwd"] = json!(cwd);
    }
    let mut env: Vec<String> = p["env"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e.as_str().map(str::to_owned))
        .collect();
    for e in &args.env {
        let (key, _) = e.split_once('=').unwrap_or((e, ""));
        env.retain(|x| x.split_once('=').map_or(x.as_str(), |(k, _)| k) != key);
        if e.contains('=') {
            env.push(e.clone());
        } else if let Ok(v) = std::env::var(e) {
            env.push(format!("{e}={v}"));
        }
    }
    if args.tty && !env.iter().any(|e| e.starts_with("TERM=")) {
        env.push("TERM=xterm".into());
    }
    p["env"] = json!(env);
    if let Some(user) = &args.user {
        let (uid, gid) = user.split_once(':').unwrap_or((user, "0"));
        let (Ok(uid), Ok(gid)) = (uid.parse::<u32>(), gid.parse::<u32>()) else {
            bail!("invalid --user {user:?}: exec takes a numeric uid[:gid]");
        };
        p["user"] = json!({ "uid": uid, "gid": gid });
    }
    if let Some(o) = p.as_object_mut() {
        o.remove("consoleSize");
    }
    Ok(p)
}

/// `berthctl exec`.
pub async fn exec(ctx: &Context, args: ExecArgs) -> ExitCode {
    match exec_inner(ctx, args).await {
        Ok(code) => code,
        Err(e) => {
            let code = container::exit_code_of(&e);
            container::fail(e, code)
        }
    }
}

async fn exec_inner(ctx: &Context, args: ExecArgs) -> anyhow::Result<ExitCode> {
    let (name, command) = args.argv.split_first().context("a container is required")?;
    let keys = attach::parse_detach_keys(args.detach_keys.as_deref())?;
    if args.tty && args.interactive && !args.detach && !std::io::stdin().is_terminal() {
        bail!("the input device is not a TTY; run without -t, or from a terminal");
    }
    let mut c = Clients::new(ctx).await?;
    let container = c.find(name).await?;
    match c.task(&container.id).await? {
        Some(t) if t.status() == TaskStatus::Running => {}
        Some(t) if matches!(t.status(), TaskStatus::Paused | TaskStatus::Pausing) => {
            bail!("container {} is paused: unpause it first", container.name)
        }
        _ => bail!("container {} is not running", container.name),
    }
    let spec = process(&container::spec_json(&container), &args, command)?;
    let exec_id = crate::run::random_id()?[..32].to_owned();
    c.tasks
        .exec(tpb::ExecProcessRequest {
            container_id: container.id.clone(),
            exec_id: exec_id.clone(),
            stdin: args.interactive && !args.detach,
            terminal: args.tty,
            spec: serde_json::to_vec(&spec)?,
        })
        .await
        .map_err(container::start_error)?;
    if args.detach {
        c.start(&container.id, &exec_id).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let session = Session {
        container_id: container.id.clone(),
        exec_id: exec_id.clone(),
        stdin: args.interactive,
        tty: args.tty,
        detach_keys: keys,
        proxy_signals: !args.tty,
    };
    let mut starter = c.clone();
    let id = container.id.clone();
    let exec = exec_id.clone();
    let ended = session
        .run(c.tasks.clone(), async move {
            starter.start(&id, &exec).await.map(|_| ())
        })
        .await;
    let ended = match ended {
        Ok(e) => e,
        Err(e) => {
            delete_exec(&mut c, &container.id, &exec_id).await;
            return Err(e);
        }
    };
    let status = match ended {
        Ended::Detached => return Ok(ExitCode::SUCCESS),
        Ended::Exited(s) => s,
        Ended::Closed => c
            .tasks
            .wait(tpb::WaitRequest {
                container_id: container.id.clone(),
                exec_id: exec_id.clone(),
            })
            .await
            .map_err(rpc)?
            .into_inner()
            .exit_status
            .unwrap_or_default(),
    };
    delete_exec(&mut c, &container.id, &exec_id).await;
    Ok(ExitCode::from(status.exit_code.min(255) as u8))
}

/// Releases an exec process's record; the container may be gone already.
async fn delete_exec(c: &mut Clients, id: &str, exec_id: &str) {
    let _ = c
        .tasks
        .delete(tpb::DeleteTaskRequest {
            container_id: id.to_owned(),
            exec_id: exec_id.to_owned(),
        })
        .await;
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        exec: ExecArgs,
    }

    #[test]
    fn the_process_overrides_the_containers() {
        let args = Cli::try_parse_from([
            "exec",
            "-it",
            "-e",
            "A=2",
            "-e",
            "B",
            "-u",
            "1000:1000",
            "-w",
            "/tmp",
            "web",
            "sh",
            "-c",
            "echo",
        ])
        .unwrap()
        .exec;
        assert_eq!(args.argv, ["web", "sh", "-c", "echo"]);
        let spec = json!({"process": {"args": ["top"], "env": ["A=1", "PATH=/bin"], "cwd": "/", "user": {"uid": 0, "gid": 0}, "terminal": false}});
        let p = process(&spec, &args, &args.argv[1..]).unwrap();
        assert_eq!(p["args"], json!(["sh", "-c", "echo"]));
        assert_eq!(p["cwd"], "/tmp");
        assert_eq!(p["user"]["uid"], 1000);
        assert_eq!(p["terminal"], true);
        let env = p["env"].as_array().unwrap();
        assert!(env.contains(&json!("A=2")) && !env.contains(&json!("A=1")));
        let mut bad = Cli::try_parse_from(["exec", "-u", "app", "web", "sh"])
            .unwrap()
            .exec;
        assert!(process(&spec, &bad, &["sh".into()]).is_err());
        bad.user = None;
        bad.workdir = Some("rel".into());
        assert!(process(&spec, &bad, &["sh".into()]).is_err());
    }
}
