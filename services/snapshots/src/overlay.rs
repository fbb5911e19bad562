//! The overlay driver: each snapshot's layer is an overlayfs layer; parents are never copied.
//!
//! Mounts: an active snapshot is an overlay of its ancestors' layers (nearest on top) with its
//! own layer as upper (`index=off`; `volatile` with the [`LABEL_VOLATILE`] label); without a
//! parent it is a writable bind of its own layer. A view of one layer is a read-only bind of
//! that layer, of several a read-only overlay (lowers only).
//!
//! [`LABEL_VOLATILE`]: crate::snapshotter::LABEL_VOLATILE

use std::path::Path;

use crate::error::{Error, Result};
use crate::fsutil;
use crate::local::{Driver, Layers};
use crate::mount::{Mount, Mounted};
use crate::snapshotter::Kind;

/// The overlay driver (see the module documentation).
#[derive(Debug, Default)]
pub struct OverlayDriver;

impl Driver for OverlayDriver {
    const NAME: &'static str = "overlay";

    /// Mounts a two-layer overlay (with `lowerdir+`) on the root's filesystem once.
    fn check(&self, root: &Path) -> Result<()> {
        let path = root.display().to_string();
        if path.contains([':', ',']) {
            return Err(Error::InvalidMount {
                reason: format!(
                    "the snapshots root {path} contains ':' or ',', which overlay options cannot carry"
                ),
            });
        }
        let probe = root
            .join("staging")
            .join(format!("probe-{}", std::process::id()));
        let dirs = ["l1", "l2", "upper", "work", "merged"].map(|d| probe.join(d));
        let result = (|| {
            for d in &dirs {
                std::fs::create_dir_all(d).map_err(Error::io("create", d))?;
            }
            let m = Mount::overlay(
                &[dirs[1].clone(), dirs[0].clone()],
                Some((&dirs[2], &dirs[3])),
                &["index=off"],
            );
            Mounted::at(&[m], &dirs[4]).map(drop)
        })();
        let _ = fsutil::remove_tree(&probe);
        result.map_err(|e| Error::InvalidMount {
            reason: format!(
                "overlay does not work under {path} ({e}): use a filesystem that supports overlay, or set [snapshots] driver = \"copy\""
            ),
        })
    }

    fn populate(&self, dir: &Path, kind: Kind, _parent: Option<&Path>) -> Result<()> {
        if kind == Kind::Active {
            let work = dir.join("work");
            std::fs::create_dir(&work).map_err(Error::io("create", &work))?;
        }
        Ok(())
    }

    fn mounts(&self, layers: &Layers) -> Vec<Mount> {
        let fs = layers.fs();
        match (layers.kind, layers.parents.as_slice()) {
            (Kind::Active, []) => vec![Mount::bind(&fs, false)],
            (Kind::Active, parents) => {
                let mut options = vec!["index=off"];
                if layers.volatile {
                    options.push("volatile");
                }
                let work = layers.work();
                vec![Mount::overlay(parents, Some((&fs, &work)), &options)]
            }
            (_, []) => vec![Mount::bind(&fs, true)],
            (_, [only]) => vec![Mount::bind(only, true)],
            (_, parents) => vec![Mount::overlay(parents, None, &["index=off"])],
        }
    }
}
