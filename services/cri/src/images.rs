//! The CRI ImageService over the images service.

use std::sync::Arc;

use berth_api::runtime::v1::image_service_server::ImageService;
use berth_api::runtime::v1::*;
use tonic::{Request, Response, Status};

use crate::Cri;
use crate::runtime::BoxStream;

/// The ImageService over the shared [`Cri`] state.
pub struct ImageApi {
    cri: Arc<Cri>,
}

impl ImageApi {
    /// The service over `cri`.
    pub fn new(cri: Arc<Cri>) -> ImageApi {
        ImageApi { cri }
    }
}

#[tonic::async_trait]
impl ImageService for ImageApi {
    async fn list_images(&self, request: Request<ListImagesRequest>) -> Result<Response<ListImagesResponse>, Status> {
        let _ = request;
        Err(Status::unimplemented("list_images is not implemented yet"))
    }

    type StreamImagesStream = BoxStream<StreamImagesResponse>;
    async fn stream_images(&self, request: Request<StreamImagesRequest>) -> Result<Response<Self::StreamImagesStream>, Status> {
        let _ = request;
        Err(Status::unimplemented("stream_images is not implemented yet"))
    }

    async fn image_status(&self, request: Request<ImageStatusRequest>) -> Result<Response<ImageStatusResponse>, Status> {
        let _ = request;
        Err(Status::unimplemented("image_status is not implemented yet"))
    }

    async fn pull_image(&self, request: Request<PullImageRequest>) -> Result<Response<PullImageResponse>, Status> {
        let _ = request;
        Err(Status::unimplemented("pull_image is not implemented yet"))
    }

    async fn remove_image(&self, request: Request<RemoveImageRequest>) -> Result<Response<RemoveImageResponse>, Status> {
        let _ = request;
        Err(Status::unimplemented("remove_image is not implemented yet"))
    }

    async fn image_fs_info(&self, request: Request<ImageFsInfoRequest>) -> Result<Response<ImageFsInfoResponse>, Status> {
        let _ = request;
        Err(Status::unimplemented("image_fs_info is not implemented yet"))
    }

}
