//! `berthctl logs`: a container's log (its init process's stdout and stderr), also after it
//! exited; `-f` follows until it stops.

use std::io::Write;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use berth_api::berth::tasks::v1 as tpb;

use crate::container::{Clients, rpc};
use crate::context::Context;

/// `berthctl logs` arguments.
#[derive(clap::Args)]
pub struct LogsArgs {
    /// Follow log output.
    #[arg(long, short = 'f')]
    follow: bool,
    /// Show timestamps.
    #[arg(long, short = 't')]
    timestamps: bool,
    /// Number of lines to show from the end of the logs ("all" for every line).
    #[arg(long, default_value = "all")]
    tail: String,
    /// Show logs since a timestamp (2013-01-02T13:23:37Z) or relative (42m, 1h30m).
    #[arg(long)]
    since: Option<String>,
    /// Show logs before a timestamp (2013-01-02T13:23:37Z) or relative (42m, 1h30m).
    #[arg(long)]
    until: Option<String>,
    /// Container (name, id or id prefix).
    container: String,
}

/// A point in time as `docker logs` takes it: RFC 3339, Unix seconds, or a duration ago.
fn parse_time(flag: &str, value: &str) -> anyhow::Result<SystemTime> {
    if let Ok(t) = humantime::parse_rfc3339_weak(value) {
        return Ok(t);
    }
    if let Ok(secs) = value.parse::<f64>()
        && secs >= 0.0
        && secs.is_finite()
    {
        return Ok(SystemTime::UNIX_EPOCH + Duration::from_secs_f64(secs));
    }
    let ago = humantime::parse_duration(value).with_context(|| {
        format!("invalid --{flag} {value:?}: expected a timestamp (2013-01-02T13:23:37Z), Unix seconds, or a duration like 10m")
    })?;
    Ok(SystemTime::now() - ago)
}

/// `berthctl logs`.
pub async fn logs(ctx: &Context, args: LogsArgs) -> anyhow::Result<ExitCode> {
    let tail = match args.tail.as_str() {
        "all" | "-1" => None,
        n => Some(
            n.parse::<u64>()
                .with_context(|| format!("invalid --tail {n:?}: expected a number or \"all\""))?,
        ),
    };
    let since = args
        .since
        .as_deref()
        .map(|s| parse_time("since", s))
        .transpose()?;
    let until = args
        .until
        .as_deref()
        .map(|s| parse_time("until", s))
        .transpose()?;
    let mut c = Clients::new(ctx).await?;
    let id = c.find(&args.container).await?.id;
    let mut request = tpb::LogsRequest {
        container_id: id,
        follow: args.follow,
        tail,
        since: since.map(Into::into),
        until: until.map(Into::into),
        // A follow that resumes after a restart of the tasks service needs the entries' times.
        timestamps: args.timestamps || args.follow,
        stdout: false,
        stderr: false,
    };
    let mut last = None;
    let mut down_since = None;
    loop {
        let mut opened = false;
        match print_entries(&mut c, &request, args.timestamps, &mut last, &mut opened).await {
            Ok(()) => return Ok(ExitCode::SUCCESS),
            Err(status)
                if args.follow
                    && matches!(
                        status.code(),
                        tonic::Code::Unavailable | tonic::Code::Unknown
                    ) =>
            {
                // The tasks service went away (a connection lost mid-stream is Unknown): wait
                // for it to come back (bounded) and go on after the last entry written.
                let since = match down_since {
                    Some(t) if !opened => t,
                    _ => *down_since.insert(Instant::now()),
                };
                if since.elapsed() > RECONNECT_FOR {
                    return Err(rpc(status));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                if let Ok(fresh) = Clients::new(ctx).await {
                    c = fresh;
                }
                request.tail = None;
                if let Some(t) = last {
                    request.since = Some((t + Duration::from_nanos(1)).into());
                }
            }
            Err(status) => return Err(rpc(status)),
        }
    }
}

/// How long `logs -f` waits for a restarted tasks service.
const RECONNECT_FOR: Duration = Duration::from_secs(60);

/// Streams the entries `request` selects to stdout and stderr; `last` keeps the time of the
/// last entry written, `opened` says whether the service answered at all.
async fn print_entries(
    c: &mut Clients,
    request: &tpb::LogsRequest,
    timestamps: bool,
    last: &mut Option<SystemTime>,
    opened: &mut bool,
) -> Result<(), tonic::Status> {
    let mut stream = c.tasks.logs(request.clone()).await?.into_inner();
    *opened = true;
    let io = |e: std::io::Error| tonic::Status::internal(format!("write the log: {e}"));
    while let Some(batch) = stream.message().await? {
        let mut out = std::io::stdout().lock();
        let mut err = std::io::stderr().lock();
        for entry in batch.entries {
            let w: &mut dyn Write = if entry.stream == tpb::OutputStream::Stderr as i32 {
                &mut err
            } else {
                &mut out
            };
            let time = entry.time.and_then(|t| SystemTime::try_from(t).ok());
            if timestamps && let Some(t) = time {
                write!(w, "{} ", humantime::format_rfc3339_nanos(t)).map_err(io)?;
            }
            w.write_all(&entry.data).map_err(io)?;
            if time.is_some() {
                *last = time;
            }
        }
        out.flush().map_err(io)?;
        err.flush().map_err(io)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_like_dockers() {
        let t = parse_time("since", "2024-01-01T00:00:00Z").unwrap();
        assert_eq!(
            t,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_704_067_200)
        );
        let t = parse_time("since", "1704067200").unwrap();
        assert_eq!(
            t,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_704_067_200)
        );
        let ago = parse_time("since", "10m").unwrap();
        let d = SystemTime::now().duration_since(ago).unwrap();
        assert!(d >= Duration::from_secs(600) && d < Duration::from_secs(610));
        assert!(parse_time("until", "yesterday-ish").is_err());
    }
}
