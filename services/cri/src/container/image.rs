//! The image a container is made from: a CRI image reference (an image id, a name, or a
//! `name@digest`) found through the ImageService's view of the images service
//! ([`crate::images::Images::find`]), with its configuration.

use oci_spec::image::ImageConfiguration;
use tonic::Status;

use crate::Cri;

/// An image found for a container.
pub struct Image {
    /// The name of the image record the container is made from
    /// (`docker.io/library/busybox:latest`).
    pub name: String,
    /// The image id: the digest of its config (`sha256:...`), as the CRI reports it.
    pub id: String,
    /// `repository@digest` of the image, the CRI's image_ref.
    pub repo_digest: String,
    /// The image's configuration.
    pub config: ImageConfiguration,
}

/// Finds the image `given` names. NotFound names the reference when no image matches.
pub async fn find(cri: &Cri, given: &str) -> Result<Image, Status> {
    if given.is_empty() {
        return Err(Status::invalid_argument(
            "the container config has no image (config.image.image is empty)",
        ));
    }
    let found = cri.images.find(given).await?.ok_or_else(|| {
        Status::not_found(format!(
            "image {given:?} not found in namespace {}: pull it first",
            crate::NAMESPACE
        ))
    })?;
    let normalized = berth_images::reference::normalize(given).unwrap_or_default();
    let record = found
        .records
        .iter()
        .find(|r| r.name == normalized)
        .or(found.records.first())
        .ok_or_else(|| Status::not_found(format!("image {given:?} has no record")))?;
    let config: ImageConfiguration = serde_json::from_value(found.resolved.config.clone())
        .map_err(|e| {
            Status::failed_precondition(format!("image {} has an invalid config: {e}", record.name))
        })?;
    let message = found.message();
    Ok(Image {
        name: record.name.clone(),
        id: found.resolved.id.clone(),
        repo_digest: message.repo_digests.first().cloned().unwrap_or_default(),
        config,
    })
}
