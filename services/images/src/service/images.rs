//! `berth.images.v1.Images` over an [`ImageStore`] and a [`Puller`] (Push, Export, Import and
//! Unpack answer Unimplemented until they land).

use std::sync::Arc;

use berth_api::berth::images::v1 as pb;
use berth_api::berth::images::v1::images_server::Images;
use berth_api::berth::types::v1 as types;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{blocking, collect_after_delete, digest, labels, namespace, timestamp, unsigned};
use crate::content::{ContentStore, LabelUpdate};
use crate::error::{Error, Result};
use crate::gc::Collector;
use crate::images::{Descriptor, Image, ImageStore, ImageUpdate, Platform};
use crate::leases::LeaseManager;
use crate::pull::{Auth, Progress, PullOptions, Puller, Stage};
use berth_api::filters::Filters;

/// The Images service.
pub struct ImagesService<C, I, L> {
    images: Arc<I>,
    puller: Arc<Puller<C, I, L>>,
    gc: Collector,
}

impl<C, I, L> ImagesService<C, I, L> {
    /// Serves `images` and pulls with `puller`; Delete runs `gc` afterwards.
    pub fn new(images: Arc<I>, puller: Puller<C, I, L>, gc: Collector) -> Self {
        ImagesService {
            images,
            puller: Arc::new(puller),
            gc,
        }
    }
}

/// The wire form of a descriptor.
pub(crate) fn descriptor_msg(d: Descriptor) -> types::Descriptor {
    types::Descriptor {
        media_type: d.media_type,
        digest: d.digest.to_string(),
        size: d.size as i64,
        annotations: d.annotations.into_iter().collect(),
        platform: d.platform.map(|p| types::Platform {
            os: p.os,
            architecture: p.architecture,
            variant: p.variant,
            os_version: p.os_version,
        }),
    }
}

/// A descriptor from the wire, validated.
pub(crate) fn descriptor(d: Option<types::Descriptor>) -> Result<Descriptor> {
    let d = d.ok_or_else(|| Error::invalid("target", "must be set"))?;
    Ok(Descriptor {
        media_type: d.media_type,
        digest: digest("target.digest", &d.digest)?,
        size: unsigned("target.size", d.size)?,
        annotations: labels(d.annotations),
        platform: d.platform.map(|p| Platform {
            os: p.os,
            architecture: p.architecture,
            variant: p.variant,
            os_version: p.os_version,
        }),
    })
}

fn image(i: Image) -> pb::Image {
    pb::Image {
        name: i.name,
        labels: i.labels.into_iter().collect(),
        target: Some(descriptor_msg(i.target)),
        created_at: timestamp(i.created_at),
        updated_at: timestamp(i.updated_at),
    }
}

fn platform(p: types::Platform) -> Platform {
    Platform {
        os: p.os,
        architecture: p.architecture,
        variant: p.variant,
        os_version: p.os_version,
    }
}

fn pull_options(req: pb::PullRequest) -> Result<PullOptions> {
    let registry = req.registry.unwrap_or_default();
    let auth = match registry.auth.unwrap_or_default() {
        a if !a.registry_token.is_empty() => Auth::Token(a.registry_token),
        a if !a.identity_token.is_empty() => {
            return Err(Error::invalid(
                "registry.auth.identity_token",
                "identity tokens are not supported yet: use username and password",
            ));
        }
        a if !a.username.is_empty() => Auth::Basic {
            username: a.username,
            password: a.password,
        },
        _ => Auth::Anonymous,
    };
    if registry.skip_tls_verify {
        return Err(Error::invalid(
            "registry.skip_tls_verify",
            "is not supported yet: use plain_http for a test registry",
        ));
    }
    Ok(PullOptions {
        reference: req.reference,
        auth,
        plain_http: registry.plain_http,
        platforms: req.platforms.into_iter().map(platform).collect(),
        all_platforms: req.all_platforms,
        labels: labels(req.labels),
        max_concurrent: req.max_concurrent_downloads as usize,
    })
}

fn progress(p: Progress) -> pb::Progress {
    let status = match p.stage {
        Stage::Resolving => pb::ProgressStatus::Resolving,
        Stage::Resolved => pb::ProgressStatus::Resolved,
        Stage::Waiting => pb::ProgressStatus::Waiting,
        Stage::Downloading => pb::ProgressStatus::Downloading,
        Stage::Downloaded => pb::ProgressStatus::Downloaded,
        Stage::Exists => pb::ProgressStatus::Exists,
    };
    pb::Progress {
        r#ref: p.reference,
        status: status as i32,
        descriptor: p.descriptor.map(descriptor_msg),
        offset: p.offset as i64,
        total: p.total as i64,
    }
}

fn unimplemented(what: &str) -> Status {
    Status::unimplemented(format!("{what} is not implemented yet"))
}

#[tonic::async_trait]
impl<C, I, L> Images for ImagesService<C, I, L>
where
    C: ContentStore + Clone,
    I: ImageStore,
    L: LeaseManager,
{
    async fn get(
        &self,
        request: Request<pb::GetImageRequest>,
    ) -> Result<Response<pb::GetImageResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let images = self.images.clone();
        let name = request.into_inner().name;
        let i = blocking(move || images.get(&ns, &name)).await?;
        Ok(Response::new(pb::GetImageResponse {
            image: Some(image(i)),
        }))
    }

    async fn list(
        &self,
        request: Request<pb::ListImagesRequest>,
    ) -> Result<Response<pb::ListImagesResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let images = self.images.clone();
        let filters = request.into_inner().filters;
        let all = blocking(move || images.list(&ns, &Filters::parse(&filters)?)).await?;
        Ok(Response::new(pb::ListImagesResponse {
            images: all.into_iter().map(image).collect(),
        }))
    }

    async fn create(
        &self,
        request: Request<pb::CreateImageRequest>,
    ) -> Result<Response<pb::CreateImageResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let images = self.images.clone();
        let req = request.into_inner();
        let i = blocking(move || {
            let i = req
                .image
                .ok_or_else(|| Error::invalid("image", "must be set"))?;
            images.create(&ns, &i.name, labels(i.labels), descriptor(i.target)?, false)
        })
        .await?;
        Ok(Response::new(pb::CreateImageResponse {
            image: Some(image(i)),
        }))
    }

    async fn update(
        &self,
        request: Request<pb::UpdateImageRequest>,
    ) -> Result<Response<pb::UpdateImageResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let images = self.images.clone();
        let req = request.into_inner();
        let i = blocking(move || {
            let i = req
                .image
                .ok_or_else(|| Error::invalid("image", "must be set"))?;
            let paths = req.update_mask.map(|m| m.paths).unwrap_or_default();
            let (target_paths, label_paths): (Vec<String>, Vec<String>) =
                paths.iter().cloned().partition(|p| p == "target");
            let update = ImageUpdate {
                labels: (paths.is_empty() || !label_paths.is_empty())
                    .then(|| LabelUpdate::from_paths(labels(i.labels), &label_paths))
                    .transpose()?,
                target: (paths.is_empty() || !target_paths.is_empty())
                    .then(|| descriptor(i.target))
                    .transpose()?,
            };
            images.update(&ns, &i.name, update)
        })
        .await?;
        Ok(Response::new(pb::UpdateImageResponse {
            image: Some(image(i)),
        }))
    }

    async fn delete(
        &self,
        request: Request<pb::DeleteImageRequest>,
    ) -> Result<Response<pb::DeleteImageResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let images = self.images.clone();
        let req = request.into_inner();
        blocking(move || images.delete(&ns, &req.name)).await?;
        collect_after_delete(&self.gc, req.sync).await?;
        Ok(Response::new(pb::DeleteImageResponse {}))
    }

    async fn tag(
        &self,
        request: Request<pb::TagRequest>,
    ) -> Result<Response<pb::TagResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let images = self.images.clone();
        let req = request.into_inner();
        let i = blocking(move || {
            let source = images.get(&ns, &req.source_name)?;
            images.create(
                &ns,
                &req.target_name,
                source.labels,
                source.target,
                req.force,
            )
        })
        .await?;
        Ok(Response::new(pb::TagResponse {
            image: Some(image(i)),
        }))
    }

    type PullStream = ReceiverStream<Result<pb::PullResponse, Status>>;

    async fn pull(
        &self,
        request: Request<pb::PullRequest>,
    ) -> Result<Response<Self::PullStream>, Status> {
        let ns = namespace(request.metadata())?;
        let req = request.into_inner();
        if req.unpack {
            return Err(unimplemented("Unpack"));
        }
        let options = pull_options(req)?;
        let puller = self.puller.clone();
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            let (progress_tx, mut progress_rx) = mpsc::channel(64);
            let work = tokio::spawn(async move { puller.pull(&ns, options, progress_tx).await });
            while let Some(p) = progress_rx.recv().await {
                let message = pb::PullResponse {
                    progress: vec![progress(p)],
                    image: None,
                };
                if tx.send(Ok(message)).await.is_err() {
                    work.abort(); // the client left: cancel the pull
                    return;
                }
            }
            let last = match work.await {
                Ok(result) => result
                    .map(|i| pb::PullResponse {
                        progress: Vec::new(),
                        image: Some(image(i)),
                    })
                    .map_err(Status::from),
                Err(e) => Err(Status::internal(format!("pull task failed: {e}"))),
            };
            let _ = tx.send(last).await;
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    type PushStream = tokio_stream::Empty<Result<pb::PushResponse, Status>>;

    async fn push(
        &self,
        _: Request<pb::PushRequest>,
    ) -> Result<Response<Self::PushStream>, Status> {
        Err(unimplemented("Push"))
    }

    type ExportStream = tokio_stream::Empty<Result<pb::ExportResponse, Status>>;

    async fn export(
        &self,
        _: Request<pb::ExportRequest>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        Err(unimplemented("Export"))
    }

    async fn import(
        &self,
        _: Request<Streaming<pb::ImportRequest>>,
    ) -> Result<Response<pb::ImportResponse>, Status> {
        Err(unimplemented("Import"))
    }

    async fn unpack(
        &self,
        _: Request<pb::UnpackRequest>,
    ) -> Result<Response<pb::UnpackResponse>, Status> {
        Err(unimplemented("Unpack"))
    }
}
