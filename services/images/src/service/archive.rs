//! Export and Import of `berth.images.v1.Images`: the tar stream between gRPC messages and the
//! [`Archiver`]'s `Write`/`Read`, which run on the blocking pool.

use std::io::{self, Read, Write};
use std::sync::Arc;

use berth_api::berth::images::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming};

use super::images::{image as image_msg, platform};
use super::{blocking, labels};
use crate::archive::{Archiver, ExportOptions, Format, ImportOptions};
use crate::content::{ContentStore, MAX_CHUNK};
use crate::error::Error;
use crate::images::ImageStore;
use crate::leases::LeaseManager;
use crate::unpack::Unpacker;

fn format(f: i32) -> Result<Format, Status> {
    match pb::ArchiveFormat::try_from(f) {
        Ok(pb::ArchiveFormat::Unspecified) => Ok(Format::Auto),
        Ok(pb::ArchiveFormat::OciLayout) => Ok(Format::OciLayout),
        Ok(pb::ArchiveFormat::DockerArchive) => Ok(Format::DockerArchive),
        Err(_) => Err(Error::invalid("format", format!("unknown archive format {f}")).into()),
    }
}

/// Sends what is written as messages of at most [`MAX_CHUNK`] bytes.
struct ChunkWriter {
    tx: mpsc::Sender<Result<pb::ExportResponse, Status>>,
    buf: Vec<u8>,
}

impl ChunkWriter {
    fn send(&mut self) -> io::Result<()> {
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(MAX_CHUNK));
        self.tx
            .blocking_send(Ok(pb::ExportResponse { data }))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(MAX_CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == MAX_CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.buf.is_empty() {
            true => Ok(()),
            false => self.send(),
        }
    }
}

/// Runs an export on the blocking pool; its tar arrives on the returned stream, an error as
/// the stream's last item.
pub(super) fn export<C, I, L>(
    archiver: Arc<Archiver<C, I, L>>,
    ns: String,
    req: pb::ExportRequest,
) -> Result<ReceiverStream<Result<pb::ExportResponse, Status>>, Status>
where
    C: ContentStore + Clone,
    I: ImageStore,
    L: LeaseManager,
{
    let options = ExportOptions {
        names: req.names,
        format: format(req.format)?,
        platforms: req.platforms.into_iter().map(platform).collect(),
        all_platforms: req.all_platforms,
        skip_missing: req.skip_missing,
    };
    let (tx, rx) = mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let mut out = ChunkWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(MAX_CHUNK),
        };
        if let Err(e) = archiver.export(&ns, &options, &mut out) {
            let _ = tx.blocking_send(Err(e.into()));
        }
    });
    Ok(ReceiverStream::new(rx))
}

/// Reads the chunks an Import stream carries.
struct ChunkReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    at: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.at == self.chunk.len() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(chunk) => (self.chunk, self.at) = (chunk?, 0),
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}

/// Imports the archive an Import stream carries (its first message holds the options), then
/// unpacks the images for the host's platform if asked to.
pub(super) async fn import<C, I, L>(
    archiver: Arc<Archiver<C, I, L>>,
    unpacker: Arc<Unpacker<C, I>>,
    ns: String,
    mut stream: Streaming<pb::ImportRequest>,
) -> Result<pb::ImportResponse, Status>
where
    C: ContentStore + Clone,
    I: ImageStore,
    L: LeaseManager,
{
    let first = stream.message().await?.unwrap_or_default();
    let o = first.options.unwrap_or_default();
    let options = ImportOptions {
        format: format(o.format)?,
        base_name: o.base_name.clone(),
        labels: labels(o.labels.clone()),
        platforms: o.platforms.iter().cloned().map(platform).collect(),
        all_platforms: o.all_platforms,
    };
    let (tx, rx) = mpsc::channel(4);
    let pump = tokio::spawn(async move {
        let mut next = Some(first.data);
        while let Some(data) = next {
            if !data.is_empty() && tx.send(Ok(data)).await.is_err() {
                return; // the import stopped reading: it failed
            }
            next = match stream.message().await {
                Ok(m) => m.map(|m| m.data),
                Err(status) => {
                    let e = io::Error::other(format!("the client stream failed: {status}"));
                    let _ = tx.send(Err(e)).await;
                    None
                }
            };
        }
    });
    let reader = ChunkReader {
        rx,
        chunk: Vec::new(),
        at: 0,
    };
    let owner = ns.clone();
    let result = blocking(move || archiver.import(&owner, &options, reader)).await;
    pump.abort();
    let images = result?;
    if o.unpack {
        for image in &images {
            unpacker
                .unpack(&ns, &image.name, &o.snapshotter, None, None)
                .await?;
        }
    }
    Ok(pb::ImportResponse {
        images: images.into_iter().map(image_msg).collect(),
    })
}
