//! The copy driver, for filesystems without overlay: an active snapshot starts as a full copy
//! of its parent's tree (owners, modes, times, xattrs, hardlinks and devices kept) and mounts
//! as a writable bind of it; a view is a read-only bind of its parent's tree, with no copy.

use std::path::Path;

use crate::error::{Error, Result};
use crate::fsutil;
use crate::local::{Driver, Layers};
use crate::mount::Mount;
use crate::snapshotter::Kind;

/// The copy driver (see the module documentation).
#[derive(Debug, Default)]
pub struct CopyDriver;

impl Driver for CopyDriver {
    const NAME: &'static str = "copy";

    fn check(&self, _root: &Path) -> Result<()> {
        Ok(())
    }

    fn populate(&self, dir: &Path, kind: Kind, parent: Option<&Path>) -> Result<()> {
        match (kind, parent) {
            (Kind::Active, Some(parent)) => {
                let fs = dir.join("fs");
                fsutil::copy_tree(parent, &fs).map_err(Error::io("copy parent into", &fs))
            }
            _ => Ok(()),
        }
    }

    fn mounts(&self, layers: &Layers) -> Vec<Mount> {
        match (layers.kind, layers.parents.first()) {
            (Kind::Active, _) => vec![Mount::bind(&layers.fs(), false)],
            (_, Some(parent)) => vec![Mount::bind(parent, true)],
            (_, None) => vec![Mount::bind(&layers.fs(), true)],
        }
    }
}
