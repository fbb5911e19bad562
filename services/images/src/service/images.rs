//! `berth.images.v1.Images` over an [`ImageStore`], a [`Puller`], a [`Pusher`], an
//! [`Unpacker`] and an [`Archiver`] (Export and Import, see [`super::archive`]).

use std::sync::Arc;

use berth_api::berth::images::v1 as pb;
use berth_api::berth::images::v1::images_server::Images;
use berth_api::berth::types::v1 as types;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::{blocking, collect_after_delete, digest, labels, namespace, timestamp, unsigned};
use crate::archive::Archiver;
use crate::content::{ContentStore, LabelUpdate};
use crate::error::{Error, Result};
use crate::gc::Collector;
use crate::images::{Descriptor, Image, ImageStore, ImageUpdate, Platform};
use crate::leases::LeaseManager;
use crate::pull::{Auth, Progress, PullOptions, Puller, Stage};
use crate::push::{PushOptions, Pusher};
use crate::registry::Registries;
use crate::unpack::Unpacker;
use berth_api::filters::Filters;

/// The Images service.
pub struct ImagesService<C, I, L> {
    images: Arc<I>,
    puller: Arc<Puller<C, I, L>>,
    pusher: Arc<Pusher<C, I>>,
    registries: Registries,
    unpacker: Arc<Unpacker<C, I>>,
    archiver: Arc<Archiver<C, I, L>>,
    gc: Collector,
}

impl<C, I, L> ImagesService<C, I, L> {
    /// Serves `images`, pulls with `puller`, pushes with `pusher`, logs in and searches with
    /// `registries`, unpacks with `unpacker`, exports and imports with `archiver`; Delete runs
    /// `gc` afterwards.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        images: Arc<I>,
        puller: Puller<C, I, L>,
        pusher: Pusher<C, I>,
        registries: Registries,
        unpacker: Unpacker<C, I>,
        archiver: Archiver<C, I, L>,
        gc: Collector,
    ) -> Self {
        ImagesService {
            images,
            puller: Arc::new(puller),
            pusher: Arc::new(pusher),
            registries,
            unpacker: Arc::new(unpacker),
            archiver: Arc::new(archiver),
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

pub(super) fn image(i: Image) -> pb::Image {
    pb::Image {
        name: i.name,
        labels: i.labels.into_iter().collect(),
        target: Some(descriptor_msg(i.target)),
        created_at: timestamp(i.created_at),
        updated_at: timestamp(i.updated_at),
    }
}

pub(super) fn platform(p: types::Platform) -> Platform {
    Platform {
        os: p.os,
        architecture: p.architecture,
        variant: p.variant,
        os_version: p.os_version,
    }
}

/// Credentials and transport of a request.
fn registry_options(registry: Option<pb::RegistryOptions>) -> Result<(Auth, bool)> {
    let registry = registry.unwrap_or_default();
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
    Ok((auth, registry.plain_http))
}

fn pull_options(req: pb::PullRequest) -> Result<PullOptions> {
    let (auth, plain_http) = registry_options(req.registry)?;
    Ok(PullOptions {
        reference: req.reference,
        auth,
        plain_http,
        platforms: req.platforms.into_iter().map(platform).collect(),
        all_platforms: req.all_platforms,
        labels: labels(req.labels),
        max_concurrent: req.max_concurrent_downloads as usize,
    })
}

/// Runs `work` (a pull or a push, given the sender it reports progress on) and streams each
/// report as `step(progress)`, then its outcome as `done(result)`; the client going away
/// cancels the work.
fn relay<T, M, F, W>(
    what: &'static str,
    work: W,
    step: fn(Progress) -> M,
    done: fn(T) -> M,
) -> ReceiverStream<std::result::Result<M, Status>>
where
    T: Send + 'static,
    M: Send + 'static,
    F: std::future::Future<Output = Result<T>> + Send + 'static,
    W: FnOnce(mpsc::Sender<Progress>) -> F,
{
    let (tx, rx) = mpsc::channel(16);
    let (progress_tx, mut progress_rx) = mpsc::channel(64);
    let work = tokio::spawn(work(progress_tx));
    tokio::spawn(async move {
        while let Some(p) = progress_rx.recv().await {
            if tx.send(Ok(step(p))).await.is_err() {
                work.abort(); // the client left: cancel the work
                return;
            }
        }
        let last = match work.await {
            Ok(result) => result.map(done).map_err(Status::from),
            Err(e) => Err(Status::internal(format!("{what} task failed: {e}"))),
        };
        let _ = tx.send(last).await;
    });
    ReceiverStream::new(rx)
}

fn progress(p: Progress) -> pb::Progress {
    let status = match p.stage {
        Stage::Resolving => pb::ProgressStatus::Resolving,
        Stage::Resolved => pb::ProgressStatus::Resolved,
        Stage::Waiting => pb::ProgressStatus::Waiting,
        Stage::Downloading => pb::ProgressStatus::Downloading,
        Stage::Downloaded => pb::ProgressStatus::Downloaded,
        Stage::Exists => pb::ProgressStatus::Exists,
        Stage::Unpacking => pb::ProgressStatus::Unpacking,
        Stage::Unpacked => pb::ProgressStatus::Unpacked,
        Stage::Uploading => pb::ProgressStatus::Uploading,
        Stage::Pushed => pb::ProgressStatus::Pushed,
    };
    pb::Progress {
        r#ref: p.reference,
        status: status as i32,
        descriptor: p.descriptor.map(descriptor_msg),
        offset: p.offset as i64,
        total: p.total as i64,
    }
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
        let unpack = req
            .unpack
            .then(|| (req.snapshotter.clone(), req.platforms.first().cloned()));
        let options = pull_options(req)?;
        let (puller, unpacker) = (self.puller.clone(), self.unpacker.clone());
        let stream = relay(
            "pull",
            |progress_tx: mpsc::Sender<Progress>| async move {
                let image = puller.pull(&ns, options, progress_tx.clone()).await?;
                if let Some((snapshotter, platform)) = unpack {
                    let platform = platform.map(self::platform);
                    unpacker
                        .unpack(&ns, &image.name, &snapshotter, platform, Some(&progress_tx))
                        .await?;
                }
                Ok(image)
            },
            |p| pb::PullResponse {
                progress: vec![progress(p)],
                image: None,
            },
            |i| pb::PullResponse {
                progress: Vec::new(),
                image: Some(image(i)),
            },
        );
        Ok(Response::new(stream))
    }

    type PushStream = ReceiverStream<Result<pb::PushResponse, Status>>;

    async fn push(
        &self,
        request: Request<pb::PushRequest>,
    ) -> Result<Response<Self::PushStream>, Status> {
        let ns = namespace(request.metadata())?;
        let req = request.into_inner();
        if req.name.is_empty() {
            return Err(Error::invalid("name", "must not be empty").into());
        }
        let (auth, plain_http) = registry_options(req.registry)?;
        let options = PushOptions {
            name: req.name,
            reference: req.reference,
            auth,
            plain_http,
            platforms: req.platforms.into_iter().map(platform).collect(),
            max_concurrent: req.max_concurrent_uploads as usize,
        };
        let pusher = self.pusher.clone();
        let stream = relay(
            "push",
            |progress_tx| async move { pusher.push(&ns, options, progress_tx).await },
            |p| pb::PushResponse {
                progress: vec![progress(p)],
                pushed: None,
            },
            |d| pb::PushResponse {
                progress: Vec::new(),
                pushed: Some(descriptor_msg(d)),
            },
        );
        Ok(Response::new(stream))
    }

    type ExportStream = ReceiverStream<Result<pb::ExportResponse, Status>>;

    async fn export(
        &self,
        request: Request<pb::ExportRequest>,
    ) -> Result<Response<Self::ExportStream>, Status> {
        let ns = namespace(request.metadata())?;
        let stream = super::archive::export(self.archiver.clone(), ns, request.into_inner())?;
        Ok(Response::new(stream))
    }

    async fn import(
        &self,
        request: Request<Streaming<pb::ImportRequest>>,
    ) -> Result<Response<pb::ImportResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let (archiver, unpacker) = (self.archiver.clone(), self.unpacker.clone());
        let response = super::archive::import(archiver, unpacker, ns, request.into_inner()).await?;
        Ok(Response::new(response))
    }

    async fn unpack(
        &self,
        request: Request<pb::UnpackRequest>,
    ) -> Result<Response<pb::UnpackResponse>, Status> {
        let ns = namespace(request.metadata())?;
        let req = request.into_inner();
        if req.name.is_empty() {
            return Err(Error::invalid("name", "must not be empty").into());
        }
        let unpacked = self
            .unpacker
            .unpack(
                &ns,
                &req.name,
                &req.snapshotter,
                req.platform.map(platform),
                None,
            )
            .await?;
        Ok(Response::new(pb::UnpackResponse {
            chain_id: unpacked.chain_id,
            existed: unpacked.existed,
        }))
    }

    async fn login(
        &self,
        request: Request<pb::LoginRequest>,
    ) -> Result<Response<pb::LoginResponse>, Status> {
        let req = request.into_inner();
        let (username, password) = match registry_options(Some(pb::RegistryOptions {
            auth: req.auth,
            ..Default::default()
        }))? {
            (Auth::Basic { username, password }, _) => (username, password),
            _ => {
                return Err(Error::invalid("auth", "username and password must be set").into());
            }
        };
        let path = self
            .registries
            .login(&req.registry, &username, &password, req.plain_http)
            .await?;
        Ok(Response::new(pb::LoginResponse {
            credentials_file: path.display().to_string(),
        }))
    }

    async fn logout(
        &self,
        request: Request<pb::LogoutRequest>,
    ) -> Result<Response<pb::LogoutResponse>, Status> {
        let registries = self.registries.clone();
        let registry = request.into_inner().registry;
        blocking(move || registries.logout(&registry)).await?;
        Ok(Response::new(pb::LogoutResponse {}))
    }

    async fn search(
        &self,
        request: Request<pb::SearchRequest>,
    ) -> Result<Response<pb::SearchResponse>, Status> {
        let req = request.into_inner();
        let (auth, plain_http) = registry_options(req.options)?;
        let limit = match req.limit {
            0 => 100,
            n => n as usize,
        };
        let repositories = self
            .registries
            .search(&req.registry, &req.term, &auth, plain_http, limit)
            .await?;
        Ok(Response::new(pb::SearchResponse { repositories }))
    }
}
