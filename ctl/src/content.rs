//! `berthctl content`: the content store, low level (list, read, write, remove, prune).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{Context as _, bail};
use berth_api::Service;
use berth_api::berth::content::v1 as pb;
use berth_api::berth::content::v1::content_client::ContentClient;
use berth_api::client::Channel;
use serde::Serialize;
use std::io::Write as _;

use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use crate::context::{Context, Output};
use crate::output;

/// Largest chunk sent in one Write message.
const CHUNK: usize = 1 << 20;

#[derive(clap::Subcommand)]
pub enum ContentCommand {
    /// List blobs.
    #[command(alias = "list")]
    Ls {
        /// Filter (containerd syntax, e.g. `labels."k"==v`); repeatable, any may match.
        #[arg(long, short = 'f')]
        filter: Vec<String>,
        /// Only print digests.
        #[arg(long, short = 'q')]
        quiet: bool,
    },
    /// Write a blob's bytes (or a range of them) to stdout.
    Get {
        /// Digest of the blob.
        digest: String,
        /// First byte to read.
        #[arg(long, default_value_t = 0)]
        offset: i64,
        /// Number of bytes to read; 0 = to the end.
        #[arg(long, default_value_t = 0)]
        size: i64,
    },
    /// Write a local file into the content store, resuming an interrupted write of the same
    /// ref; prints the blob's digest.
    Ingest {
        /// The file to store.
        file: PathBuf,
        /// Ref of the write (stable across retries); default: `ingest-<file name>`.
        #[arg(long = "ref")]
        reference: Option<String>,
        /// Expected digest, checked on commit.
        #[arg(long)]
        expected: Option<String>,
        /// Expected size, checked on commit; default: the file's size.
        #[arg(long)]
        total: Option<i64>,
        /// Label to set on the blob (KEY=VALUE, repeatable).
        #[arg(long, value_parser = parse_label)]
        label: Vec<(String, String)>,
        /// Lease to write under.
        #[arg(long)]
        lease: Option<String>,
    },
    /// List in-progress writes.
    Ingests,
    /// Cancel an in-progress write.
    Abort {
        /// Ref of the write.
        reference: String,
    },
    /// Remove blobs from this namespace.
    Rm {
        /// Digests of the blobs.
        #[arg(required = true)]
        digests: Vec<String>,
    },
    /// Remove every blob no image or lease references (garbage collection).
    Prune,
}

impl ContentCommand {
    pub fn name(&self) -> &'static str {
        match self {
            ContentCommand::Ls { .. } => "content ls",
            ContentCommand::Get { .. } => "content get",
            ContentCommand::Ingest { .. } => "content ingest",
            ContentCommand::Ingests => "content ingests",
            ContentCommand::Abort { .. } => "content abort",
            ContentCommand::Rm { .. } => "content rm",
            ContentCommand::Prune => "content prune",
        }
    }
}

/// `KEY=VALUE`.
pub fn parse_label(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

/// The message of a failed call, without tonic's decoration.
pub fn rpc(e: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{}", e.message())
}

/// A content client for `ctx`.
pub async fn client(ctx: &Context) -> anyhow::Result<ContentClient<Channel>> {
    Ok(ContentClient::new(ctx.connect(Service::Images).await?))
}

/// Adds the `berth-lease` metadata to `request`.
pub fn with_lease<T>(
    mut request: tonic::Request<T>,
    lease: Option<&str>,
) -> anyhow::Result<tonic::Request<T>> {
    if let Some(lease) = lease {
        request.metadata_mut().insert(
            berth_api::namespace::LEASE_HEADER,
            lease.parse().context("invalid lease id")?,
        );
    }
    Ok(request)
}

pub async fn run(ctx: &Context, cmd: ContentCommand) -> anyhow::Result<ExitCode> {
    let mut content = client(ctx).await?;
    match cmd {
        ContentCommand::Ls { filter, quiet } => ls(ctx, &mut content, filter, quiet).await?,
        ContentCommand::Get {
            digest,
            offset,
            size,
        } => {
            let mut stream = content
                .read(pb::ReadContentRequest {
                    digest,
                    offset,
                    size,
                })
                .await
                .map_err(rpc)?
                .into_inner();
            let mut stdout = std::io::stdout().lock();
            while let Some(chunk) = stream.next().await {
                stdout.write_all(&chunk.map_err(rpc)?.data)?;
            }
            stdout.flush()?;
        }
        ContentCommand::Ingest {
            file,
            reference,
            expected,
            total,
            label,
            lease,
        } => {
            let reference = reference.unwrap_or_else(|| {
                format!(
                    "ingest-{}",
                    file.file_name().unwrap_or_default().to_string_lossy()
                )
            });
            let blob = Upload {
                reference: &reference,
                expected: expected.as_deref(),
                total,
                labels: label.into_iter().collect(),
                lease: lease.as_deref(),
            };
            let digest = blob.send(&mut content, &file).await?;
            println!("{digest}");
        }
        ContentCommand::Ingests => {
            let statuses = content
                .list_statuses(pb::ListStatusesRequest::default())
                .await
                .map_err(rpc)?
                .into_inner()
                .statuses;
            let rows: Vec<IngestRow> = statuses.into_iter().map(IngestRow::from).collect();
            match ctx.output {
                Output::Json => println!("{}", output::json(&rows)?),
                Output::Table => println!(
                    "{}",
                    output::table(
                        &["REF", "OFFSET", "TOTAL", "EXPECTED"],
                        rows.iter().map(|r| {
                            [
                                r.reference.clone(),
                                r.offset.to_string(),
                                r.total.to_string(),
                                r.expected.clone(),
                            ]
                        })
                    )
                ),
            }
        }
        ContentCommand::Abort { reference } => {
            content
                .abort(pb::AbortRequest { r#ref: reference })
                .await
                .map_err(rpc)?;
        }
        ContentCommand::Rm { digests } => {
            for digest in digests {
                content
                    .delete(pb::DeleteContentRequest {
                        digest: digest.clone(),
                    })
                    .await
                    .map_err(rpc)?;
                println!("{digest}");
            }
        }
        ContentCommand::Prune => {
            let report = content
                .prune(pb::PruneRequest {})
                .await
                .map_err(rpc)?
                .into_inner();
            for digest in &report.removed {
                println!("deleted: {digest}");
            }
            println!("Total reclaimed space: {} bytes", report.reclaimed);
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Serialize)]
struct BlobRow {
    digest: String,
    size: i64,
    created_at: Option<String>,
    labels: std::collections::BTreeMap<String, String>,
}

#[derive(Serialize)]
struct IngestRow {
    #[serde(rename = "ref")]
    reference: String,
    offset: i64,
    total: i64,
    expected: String,
}

impl From<pb::Status> for IngestRow {
    fn from(s: pb::Status) -> IngestRow {
        IngestRow {
            reference: s.r#ref,
            offset: s.offset,
            total: s.total,
            expected: s.expected,
        }
    }
}

async fn ls(
    ctx: &Context,
    content: &mut ContentClient<Channel>,
    filters: Vec<String>,
    quiet: bool,
) -> anyhow::Result<()> {
    let mut stream = content
        .list(pb::ListContentRequest { filters })
        .await
        .map_err(rpc)?
        .into_inner();
    let mut rows = Vec::new();
    while let Some(batch) = stream.next().await {
        for i in batch.map_err(rpc)?.info {
            rows.push(BlobRow {
                digest: i.digest,
                size: i.size,
                created_at: i
                    .created_at
                    .and_then(|t| SystemTime::try_from(t).ok())
                    .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
                labels: i.labels.into_iter().collect(),
            });
        }
    }
    match ctx.output {
        Output::Json => println!("{}", output::json(&rows)?),
        Output::Table if quiet => rows.iter().for_each(|r| println!("{}", r.digest)),
        Output::Table => println!(
            "{}",
            output::table(
                &["DIGEST", "SIZE", "CREATED", "LABELS"],
                rows.iter().map(|r| {
                    let labels: Vec<String> =
                        r.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    [
                        r.digest.clone(),
                        r.size.to_string(),
                        r.created_at.clone().unwrap_or_default(),
                        labels.join(","),
                    ]
                })
            )
        ),
    }
    Ok(())
}

/// One blob to write into the content store.
pub struct Upload<'a> {
    /// Ref of the write.
    pub reference: &'a str,
    /// Expected digest.
    pub expected: Option<&'a str>,
    /// Expected size.
    pub total: Option<i64>,
    /// Labels for the blob.
    pub labels: HashMap<String, String>,
    /// Lease to write under.
    pub lease: Option<&'a str>,
}

impl Upload<'_> {
    /// Writes `path`, resuming where an earlier write of the same ref stopped. Returns the
    /// blob's digest; content already present counts as written.
    pub async fn send(
        &self,
        content: &mut ContentClient<Channel>,
        path: &Path,
    ) -> anyhow::Result<String> {
        let mut file = tokio::fs::File::open(path)
            .await
            .with_context(|| format!("cannot open {}", path.display()))?;
        let total = match self.total {
            Some(t) => t,
            None => file.metadata().await?.len() as i64,
        };
        let (tx, rx) = mpsc::channel(2);
        let request = with_lease(tonic::Request::new(ReceiverStream::new(rx)), self.lease)?;
        tx.send(pb::WriteContentRequest {
            action: pb::WriteAction::Stat as i32,
            r#ref: self.reference.to_owned(),
            total,
            expected: self.expected.unwrap_or_default().to_owned(),
            ..Default::default()
        })
        .await?;
        let mut responses = match content.write(request).await {
            Ok(r) => r.into_inner(),
            Err(e) if e.code() == tonic::Code::AlreadyExists => return self.existing(e),
            Err(e) => return Err(rpc(e)),
        };
        let answer = |r: Option<Result<pb::WriteContentResponse, tonic::Status>>| match r {
            Some(Ok(r)) => Ok(r),
            Some(Err(e)) => Err(e),
            None => Err(tonic::Status::unavailable("the write stream ended early")),
        };
        let stat = match answer(responses.next().await) {
            Ok(r) => r,
            Err(e) if e.code() == tonic::Code::AlreadyExists => return self.existing(e),
            Err(e) => return Err(rpc(e)),
        };
        let mut offset = stat.offset;
        file.seek(std::io::SeekFrom::Start(offset as u64)).await?;
        let mut buf = vec![0; CHUNK];
        loop {
            let n = read_full(&mut file, &mut buf).await?;
            let last = n < CHUNK;
            let action = if last {
                pb::WriteAction::Commit
            } else {
                pb::WriteAction::Write
            };
            tx.send(pb::WriteContentRequest {
                action: action as i32,
                offset,
                data: buf[..n].to_vec(),
                labels: if last {
                    self.labels.clone()
                } else {
                    HashMap::new()
                },
                ..Default::default()
            })
            .await
            .ok();
            let r = match answer(responses.next().await) {
                Ok(r) => r,
                Err(e) if e.code() == tonic::Code::AlreadyExists => return self.existing(e),
                Err(e) => return Err(rpc(e)),
            };
            offset = r.offset;
            if last {
                return Ok(r.digest);
            }
        }
    }

    fn existing(&self, e: tonic::Status) -> anyhow::Result<String> {
        match self.expected {
            Some(d) => Ok(d.to_owned()),
            None => bail!("{}", e.message()),
        }
    }
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
async fn read_full(
    r: &mut (impl tokio::io::AsyncRead + Unpin),
    buf: &mut [u8],
) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]).await? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Reads a whole blob (for manifests and configs; bounded by `limit` bytes).
pub async fn read_blob(
    content: &mut ContentClient<Channel>,
    digest: &str,
    limit: usize,
) -> anyhow::Result<Vec<u8>> {
    let mut stream = content
        .read(pb::ReadContentRequest {
            digest: digest.to_owned(),
            ..Default::default()
        })
        .await
        .map_err(rpc)?
        .into_inner();
    let mut data = Vec::new();
    while let Some(chunk) = stream.next().await {
        data.extend_from_slice(&chunk.map_err(rpc)?.data);
        if data.len() > limit {
            bail!("{digest} is larger than {limit} bytes");
        }
    }
    Ok(data)
}
