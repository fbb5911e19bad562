//! `berthctl system events` (and `events`): the events of every service, as they happen.
//!
//! Each service serves its own events on its socket, so this subscribes on every socket that
//! answers and prints the merged stream, one line per event, until interrupted.

use std::process::ExitCode;
use std::time::SystemTime;

use berth_api::Service;
use berth_api::berth::events::v1 as pb;
use berth_api::berth::events::v1::envelope::Event;
use berth_api::berth::events::v1::events_client::EventsClient;
use futures::StreamExt;
use futures::stream::SelectAll;
use serde_json::json;

use crate::container::{connect, rpc};
use crate::context::{Context, Output};

/// `berthctl events` arguments.
#[derive(clap::Args)]
pub struct EventsArgs {
    /// Filter (repeatable, containerd syntax), e.g. `topic~=^/tasks/` or
    /// `event.container_id==<id>`.
    #[arg(long, short = 'f')]
    filter: Vec<String>,
    /// Show the events of every namespace (default: only the current one).
    #[arg(long)]
    all_namespaces: bool,
    /// Stop after this many events.
    #[arg(long)]
    count: Option<usize>,
}

/// The object an event is about and what is worth showing beside the topic.
fn describe(event: &Event) -> (String, Vec<(&'static str, String)>) {
    match event {
        Event::TaskCreate(e) => (e.container_id.clone(), vec![("pid", e.pid.to_string())]),
        Event::TaskStart(e) => (e.container_id.clone(), vec![("pid", e.pid.to_string())]),
        Event::TaskExit(e) => {
            let s = e.exit_status.unwrap_or_default();
            let mut attrs = vec![("exitCode", s.exit_code.to_string())];
            if !e.exec_id.is_empty() {
                attrs.push(("execID", e.exec_id.clone()));
            }
            if s.oom_killed {
                attrs.push(("oomKilled", "true".into()));
            }
            (e.container_id.clone(), attrs)
        }
        Event::TaskOom(e) => (e.container_id.clone(), Vec::new()),
        Event::TaskDelete(e) => (e.container_id.clone(), vec![("execID", e.exec_id.clone())]),
        Event::TaskExecAdded(e) => (e.container_id.clone(), vec![("execID", e.exec_id.clone())]),
        Event::TaskExecStarted(e) => (e.container_id.clone(), vec![("execID", e.exec_id.clone())]),
        Event::TaskPaused(e) => (e.container_id.clone(), Vec::new()),
        Event::TaskResumed(e) => (e.container_id.clone(), Vec::new()),
        Event::ContainerCreate(e) => (
            e.container_id.clone(),
            vec![("name", e.name.clone()), ("image", e.image.clone())],
        ),
        Event::ContainerUpdate(e) => (e.container_id.clone(), vec![("name", e.name.clone())]),
        Event::ContainerDelete(e) => (e.container_id.clone(), Vec::new()),
        Event::ImageCreate(e) => (e.name.clone(), vec![("digest", e.digest.clone())]),
        Event::ImageUpdate(e) => (e.name.clone(), vec![("digest", e.digest.clone())]),
        Event::ImageDelete(e) => (e.name.clone(), Vec::new()),
        Event::SnapshotPrepare(e) => (e.key.clone(), vec![("parent", e.parent.clone())]),
        Event::SnapshotCommit(e) => (e.name.clone(), vec![("key", e.key.clone())]),
        Event::SnapshotRemove(e) => (e.key.clone(), Vec::new()),
        Event::ContentDelete(e) => (e.digest.clone(), Vec::new()),
        Event::NetworkCreate(e) => (e.name.clone(), vec![("subnet", e.subnet.clone())]),
        Event::NetworkDelete(e) => (e.name.clone(), Vec::new()),
        Event::NetworkConnect(e) => (
            e.network.clone(),
            vec![("container", e.container_id.clone()), ("ip", e.ip.clone())],
        ),
        Event::NetworkDisconnect(e) => (
            e.network.clone(),
            vec![("container", e.container_id.clone())],
        ),
    }
}

/// `berthctl events`.
pub async fn events(ctx: &Context, args: EventsArgs) -> anyhow::Result<ExitCode> {
    let mut filters = args.filter.clone();
    if !args.all_namespaces {
        let ns = format!("namespace=={}", ctx.namespace);
        filters = if filters.is_empty() {
            vec![ns]
        } else {
            filters.iter().map(|f| format!("{f},{ns}")).collect()
        };
    }
    let mut merged = SelectAll::new();
    let mut reached = 0;
    for service in [
        Service::Tasks,
        Service::Images,
        Service::Snapshots,
        Service::Network,
    ] {
        let Ok(channel) = connect(ctx, service).await else {
            continue;
        };
        let stream = EventsClient::new(channel)
            .subscribe(pb::SubscribeRequest {
                filters: filters.clone(),
            })
            .await;
        match stream {
            Ok(s) => {
                reached += 1;
                merged.push(s.into_inner());
            }
            Err(e) if e.code() == tonic::Code::Unimplemented => {}
            Err(e) => return Err(rpc(e)),
        }
    }
    if reached == 0 {
        anyhow::bail!("no service answered; is berth running? start it with `berthctl system up`");
    }
    let mut seen = 0;
    loop {
        if args.count.is_some_and(|n| seen >= n) {
            return Ok(ExitCode::SUCCESS);
        }
        let envelope = tokio::select! {
            next = merged.next() => match next {
                Some(e) => e.map_err(rpc)?,
                None => return Ok(ExitCode::SUCCESS),
            },
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        };
        seen += 1;
        let time = envelope
            .timestamp
            .and_then(|t| SystemTime::try_from(t).ok())
            .map(|t| humantime::format_rfc3339_nanos(t).to_string())
            .unwrap_or_default();
        let Some(event) = &envelope.event else {
            continue;
        };
        let (object, attrs) = describe(event);
        match ctx.output {
            Output::Json => println!(
                "{}",
                json!({
                    "time": time,
                    "namespace": envelope.namespace,
                    "topic": envelope.topic,
                    "id": object,
                    "attributes": attrs.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect::<serde_json::Map<_, _>>(),
                })
            ),
            Output::Table => {
                let attrs = attrs
                    .iter()
                    .filter(|(_, v)| !v.is_empty())
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                println!(
                    "{time} {} {} {object} ({attrs})",
                    envelope.namespace, envelope.topic
                );
            }
        }
    }
}
