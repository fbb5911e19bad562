//! What berth-cri keeps on a container record of the tasks service: the CRI labels as record
//! labels (plus [`NAME_LABEL`] and [`ATTEMPT_LABEL`] for the name reservation and
//! [`KIND_LABEL`]), and the rest of the CRI view in the extension [`EXTENSION`].

use std::collections::BTreeMap;

use berth_api::berth::containers::v1::Container;
use serde::{Deserialize, Serialize};
use tonic::Status;

/// Container extension holding the JSON of [`Meta`].
pub const EXTENSION: &str = "berth.io/cri.container";
/// Label marking the records berth-cri made (`container`).
pub const KIND_LABEL: &str = "berth.io/cri.kind";
/// Label holding the CRI container name.
pub const NAME_LABEL: &str = "berth.io/cri.name";
/// Label holding the CRI attempt.
pub const ATTEMPT_LABEL: &str = "berth.io/cri.attempt";

/// The CRI view of a container that the record's own fields do not hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Meta {
    /// CRI container name.
    pub name: String,
    /// CRI attempt.
    pub attempt: u32,
    /// CRI labels.
    pub labels: BTreeMap<String, String>,
    /// CRI annotations.
    pub annotations: BTreeMap<String, String>,
    /// The image as the request named it (`ImageSpec.image`).
    pub image: String,
    /// The user-specified image (`ImageSpec.user_specified_image`).
    pub user_specified_image: String,
    /// The image id (config digest).
    pub image_id: String,
    /// `repository@digest` of the image.
    pub image_ref: String,
    /// The log file: pod log_directory joined with the config's log_path; empty = none.
    pub log_path: String,
    /// The CRI mounts, JSON of `runtime.v1.Mount` fields (container_path, host_path, readonly,
    /// selinux_relabel, propagation).
    pub mounts: Vec<MountMeta>,
    /// Set when StartContainer failed after the task existed: the error.
    pub start_error: String,
    /// Creation time in ns (the CRI view; the record's created_at is the same instant).
    pub created_at: i64,
}

/// A CRI mount as recorded for ContainerStatus.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct MountMeta {
    /// Path in the container.
    pub container_path: String,
    /// Path on the host.
    pub host_path: String,
    /// Read-only.
    pub readonly: bool,
    /// SELinux relabel asked (ignored).
    pub selinux_relabel: bool,
    /// CRI propagation value.
    pub propagation: i32,
}

impl Meta {
    /// The meta of a record berth-cri made; NotFound for any other record.
    pub fn of(c: &Container) -> Result<Meta, Status> {
        let bytes = c.extensions.get(EXTENSION).ok_or_else(|| {
            Status::not_found(format!("container {:?} is not a CRI container", c.id))
        })?;
        serde_json::from_slice(bytes).map_err(|e| {
            Status::internal(format!(
                "container {}: bad {EXTENSION} extension: {e}",
                c.id
            ))
        })
    }

    /// The JSON for the record's extension.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}
