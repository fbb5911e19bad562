//! `berth.content.v1.Content` over a [`ContentStore`].

use std::os::unix::fs::FileExt;

use berth_api::berth::content::v1 as pb;
use berth_api::berth::content::v1::content_server::Content;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{blocking, digest, labels, lease, namespace, timestamp, unsigned};
use crate::content::{self, ContentStore, LabelUpdate, MAX_CHUNK, WriteRequest, Writer};
use crate::error::{Error, Result};
use crate::gc::Collector;
use berth_api::filters::Filters;

/// Blobs per List message.
const LIST_BATCH: usize = 100;

/// The Content service.
pub struct ContentService<S> {
    store: S,
    gc: Collector,
}

impl<S> ContentService<S> {
    /// Serves `store`; Prune runs `gc`.
    pub fn new(store: S, gc: Collector) -> Self {
        ContentService { store, gc }
    }
}

fn info(i: content::Info) -> pb::Info {
    pb::Info {
        digest: i.digest.to_string(),
        size: i.size as i64,
        created_at: timestamp(i.created_at),
        updated_at: timestamp(i.updated_at),
        labels: i.labels.into_iter().collect(),
    }
}

fn status(s: content::Status) -> pb::Status {
    pb::Status {
        started_at: timestamp(s.started_at),
        updated_at: timestamp(s.updated_at),
        r#ref: s.reference,
        offset: s.offset as i64,
        total: s.total.unwrap_or_default() as i64,
        expected: s.expected.map(|d| d.to_string()).unwrap_or_default(),
    }
}

/// A total of 0 means unknown; an empty digest too.
fn expectations(
    total: i64,
    expected: &str,
) -> Result<(Option<u64>, Option<crate::digest::Digest>)> {
    let total = Some(unsigned("total", total)?).filter(|t| *t > 0);
    let expected = match expected {
        "" => None,
        d => Some(d.parse()?),
    };
    Ok((total, expected))
}

#[tonic::async_trait]
impl<S: ContentStore + Clone> Content for ContentService<S> {
    async fn info(
        &self,
        request: Request<pb::InfoRequest>,
    ) -> Result<Response<pb::InfoResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let store = self.store.clone();
        let d = request.into_inner().digest;
        let i = blocking(move || store.info(&ns, &digest("digest", &d)?)).await?;
        Ok(Response::new(pb::InfoResponse {
            info: Some(info(i)),
        }))
    }

    async fn update(
        &self,
        request: Request<pb::UpdateRequest>,
    ) -> Result<Response<pb::UpdateResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let store = self.store.clone();
        let req = request.into_inner();
        let i = blocking(move || {
            let i = req
                .info
                .ok_or_else(|| Error::invalid("info", "must be set"))?;
            let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
            let update = LabelUpdate::from_paths(labels(i.labels), &paths)?;
            store.update(&ns, &digest("info.digest", &i.digest)?, update)
        })
        .await?;
        Ok(Response::new(pb::UpdateResponse {
            info: Some(info(i)),
        }))
    }

    type ListStream =
        tokio_stream::Iter<std::vec::IntoIter<Result<pb::ListContentResponse, Status>>>;

    async fn list(
        &self,
        request: Request<pb::ListContentRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let ns = namespace(request.metadata())?;
        let store = self.store.clone();
        let filters = request.into_inner().filters;
        let all = blocking(move || store.list(&ns, &Filters::parse(&filters)?)).await?;
        let batches: Vec<_> = all
            .chunks(LIST_BATCH)
            .map(|c| {
                Ok(pb::ListContentResponse {
                    info: c.iter().cloned().map(info).collect(),
                })
            })
            .collect();
        Ok(Response::new(tokio_stream::iter(batches)))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteContentRequest>,
    ) -> Result<Response<pb::DeleteContentResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let store = self.store.clone();
        let d = request.into_inner().digest;
        blocking(move || store.delete(&ns, &digest("digest", &d)?)).await?;
        Ok(Response::new(pb::DeleteContentResponse {}))
    }

    type ReadStream = ReceiverStream<Result<pb::ReadContentResponse, Status>>;

    async fn read(
        &self,
        request: Request<pb::ReadContentRequest>,
    ) -> Result<Response<Self::ReadStream>, Status> {
        let ns = namespace(request.metadata())?;
        let store = self.store.clone();
        let req = request.into_inner();
        let (blob, start, end) = blocking(move || {
            let d = digest("digest", &req.digest)?;
            let (offset, size) = (unsigned("offset", req.offset)?, unsigned("size", req.size)?);
            let blob = store.open(&ns, &d)?;
            if offset > blob.size {
                return Err(Error::invalid(
                    "offset",
                    format!("{offset} is beyond the end of {d} ({} bytes)", blob.size),
                ));
            }
            let end = match size {
                0 => blob.size,
                n => blob.size.min(offset.saturating_add(n)),
            };
            Ok((blob, offset, end))
        })
        .await?;
        let (tx, rx) = mpsc::channel(4);
        tokio::task::spawn_blocking(move || {
            let mut pos = start;
            while pos < end {
                let n = (end - pos).min(MAX_CHUNK as u64) as usize;
                let mut data = vec![0; n];
                let msg = blob
                    .file
                    .read_exact_at(&mut data, pos)
                    .map(|()| pb::ReadContentResponse {
                        offset: pos as i64,
                        data,
                    })
                    .map_err(|e| Status::internal(format!("reading blob: {e}")));
                let failed = msg.is_err();
                if tx.blocking_send(msg).is_err() || failed {
                    return;
                }
                pos += n as u64;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn status(
        &self,
        request: Request<pb::StatusRequest>,
    ) -> Result<Response<pb::StatusResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let store = self.store.clone();
        let reference = request.into_inner().r#ref;
        let s = blocking(move || store.status(&ns, &reference)).await?;
        Ok(Response::new(pb::StatusResponse {
            status: Some(status(s)),
        }))
    }

    async fn list_statuses(
        &self,
        request: Request<pb::ListStatusesRequest>,
    ) -> Result<Response<pb::ListStatusesResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let store = self.store.clone();
        let filters = request.into_inner().filters;
        let all = blocking(move || store.list_statuses(&ns, &Filters::parse(&filters)?)).await?;
        Ok(Response::new(pb::ListStatusesResponse {
            statuses: all.into_iter().map(status).collect(),
        }))
    }

    type WriteStream = ReceiverStream<Result<pb::WriteContentResponse, Status>>;

    async fn write(
        &self,
        request: Request<Streaming<pb::WriteContentRequest>>,
    ) -> Result<Response<Self::WriteStream>, Status> {
        let ns = namespace(request.metadata())?;
        let lease = lease(request.metadata())?;
        let mut inbound = request.into_inner();
        let store = self.store.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            if let Err(status) = write(store, ns, lease, &mut inbound, &tx).await {
                let _ = tx.send(Err(status)).await;
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn abort(
        &self,
        request: Request<pb::AbortRequest>,
    ) -> Result<Response<pb::AbortResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let store = self.store.clone();
        let reference = request.into_inner().r#ref;
        blocking(move || store.abort(&ns, &reference)).await?;
        Ok(Response::new(pb::AbortResponse {}))
    }

    async fn prune(
        &self,
        request: Request<pb::PruneRequest>,
    ) -> Result<Response<pb::PruneResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let gc = self.gc.clone();
        let report = blocking(move || gc.collect()).await?;
        Ok(Response::new(pb::PruneResponse {
            removed: report
                .content
                .into_iter()
                .filter(|(n, _)| *n == ns)
                .map(|(_, d)| d.to_string())
                .collect(),
            reclaimed: report.freed as i64,
        }))
    }
}

/// Serves one Write stream: open the writer on the first message, then one step per message.
async fn write<S: ContentStore>(
    store: S,
    ns: String,
    lease: Option<String>,
    inbound: &mut Streaming<pb::WriteContentRequest>,
    tx: &mpsc::Sender<Result<pb::WriteContentResponse, Status>>,
) -> Result<(), Status> {
    let Some(mut msg) = inbound.message().await? else {
        return Ok(());
    };
    check(&msg)?;
    let reference = msg.r#ref.clone();
    let (total, expected) = expectations(msg.total, &msg.expected)?;
    let mut writer = blocking(move || {
        store.writer(
            &ns,
            WriteRequest {
                reference,
                total,
                expected,
                lease,
            },
        )
    })
    .await?;
    loop {
        let (w, response, done) = blocking(move || step(writer, msg)).await?;
        writer = w;
        if tx.send(Ok(response)).await.is_err() || done {
            return Ok(());
        }
        match inbound.message().await? {
            Some(next) => msg = next,
            None => return Ok(()),
        }
    }
}

/// The action of a Write message, after the checks that need no state.
fn check(msg: &pb::WriteContentRequest) -> Result<pb::WriteAction> {
    let action = pb::WriteAction::try_from(msg.action).unwrap_or(pb::WriteAction::Unspecified);
    if action == pb::WriteAction::Unspecified {
        return Err(Error::invalid(
            "action",
            "must be WRITE_ACTION_STAT, WRITE_ACTION_WRITE or WRITE_ACTION_COMMIT",
        ));
    }
    if msg.data.len() > MAX_CHUNK {
        return Err(Error::invalid(
            "data",
            format!("chunk of {} bytes exceeds {MAX_CHUNK}", msg.data.len()),
        ));
    }
    Ok(action)
}

/// Applies one Write message; returns the writer, the answer, and whether the stream is done.
fn step<W: Writer>(
    mut writer: W,
    msg: pb::WriteContentRequest,
) -> Result<(W, pb::WriteContentResponse, bool)> {
    let action = check(&msg)?;
    let (total, expected) = expectations(msg.total, &msg.expected)?;
    writer.expect(total, expected)?;
    if action != pb::WriteAction::Stat && !msg.data.is_empty() {
        writer.write(unsigned("offset", msg.offset)?, &msg.data)?;
    }
    let s = writer.status();
    let mut response = pb::WriteContentResponse {
        action: action as i32,
        started_at: timestamp(s.started_at),
        updated_at: timestamp(s.updated_at),
        offset: s.offset as i64,
        total: s.total.unwrap_or_default() as i64,
        digest: writer.digest().to_string(),
    };
    let done = action == pb::WriteAction::Commit;
    if done {
        let committed = writer.commit(labels(msg.labels))?;
        response.digest = committed.digest.to_string();
        response.updated_at = timestamp(committed.created_at);
    }
    Ok((writer, response, done))
}
