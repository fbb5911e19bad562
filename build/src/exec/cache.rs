//! The build cache, kept in the images service so it survives restarts of every service.
//!
//! A step's key is the SHA-256 of: the parent state's config digest, the instruction after
//! variable substitution, the build arguments in effect, and for `COPY`/`ADD` a digest of the
//! inputs' content and metadata. Its result is recorded as an ordinary image (config +
//! manifest in the content store) named `berth.internal/build-cache:<key>` with the label
//! `berth.io/build.cache=true`: the image record keeps the layers alive, an unpack of it
//! rebuilds a missing snapshot chain, and the config carries the step's history timestamps,
//! so an unchanged rebuild gives the very same image digest. `berthctl images` hides these
//! records; `berthctl builder prune` deletes them.

use std::collections::HashMap;

use berth_api::berth::images::v1 as ipb;
use serde_json::json;
use sha2::{Digest as _, Sha256};

use super::State;
use crate::clients::{Clients, Lease};
use crate::dockerfile::Kind;
use crate::error::{Error, Result};
use crate::image::{self, ImageState};

/// Repository of cache records.
pub const CACHE_REPOSITORY: &str = "berth.internal/build-cache";
/// Label on every cache record.
pub const CACHE_LABEL: &str = "berth.io/build.cache";

/// Whether an image name is a cache record.
pub fn is_cache_record(name: &str) -> bool {
    name.starts_with(CACHE_REPOSITORY)
}

/// The cache key of a step on `state`.
pub(super) fn key(state: &State, kind: &Kind, inputs: &str) -> String {
    let material = json!({
        "parent": state.image.config_digest(),
        "step": format!("{kind:?}"),
        "args": state.args,
        "inputs": inputs,
    });
    hex::encode(Sha256::digest(
        serde_json::to_vec(&material).unwrap_or_default(),
    ))
}

fn record_name(key: &str) -> String {
    format!("{CACHE_REPOSITORY}:{key}")
}

/// A recorded result, if any.
pub(super) async fn lookup(clients: &mut Clients, key: &str) -> Result<Option<State>> {
    let name = record_name(key);
    let record = match clients
        .images
        .get(ipb::GetImageRequest { name: name.clone() })
        .await
    {
        Ok(r) => r.into_inner().image,
        Err(s) if s.code() == tonic::Code::NotFound => return Ok(None),
        Err(s) => return Err(Error::rpc("look up the build cache")(s)),
    };
    let Some(target) = record.and_then(|r| r.target) else {
        return Ok(None);
    };
    // A record whose content is gone (or broken) is a miss, not an error.
    match image::read_image(clients, &target).await {
        Ok((image, _)) => Ok(Some(State {
            image,
            record: Some(name),
            args: Default::default(),
            cmd_set: false,
        })),
        Err(_) => Ok(None),
    }
}

/// Records `image` as the result of the step `key`; returns the record's name.
pub(super) async fn store(
    clients: &mut Clients,
    key: &str,
    image: &ImageState,
    lease: &Lease,
) -> Result<String> {
    let manifest = image::write_image(clients, image, Some(lease)).await?;
    let name = record_name(key);
    let labels = HashMap::from([(CACHE_LABEL.to_owned(), "true".to_owned())]);
    let record = image::tag(clients, &name, &manifest, labels).await?;
    Ok(record.name)
}

/// Deletes every cache record; returns how many there were.
pub async fn prune(clients: &mut Clients) -> Result<usize> {
    let images = clients
        .images
        .list(ipb::ListImagesRequest {
            filters: vec![format!("labels.\"{CACHE_LABEL}\"==true")],
        })
        .await
        .map_err(Error::rpc("list the build cache"))?
        .into_inner()
        .images;
    let mut removed = 0;
    for i in images.iter().filter(|i| is_cache_record(&i.name)) {
        match clients
            .images
            .delete(ipb::DeleteImageRequest {
                name: i.name.clone(),
                ..Default::default()
            })
            .await
        {
            Ok(_) => removed += 1,
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => return Err(Error::rpc(format!("delete {}", i.name))(s)),
        }
    }
    Ok(removed)
}
