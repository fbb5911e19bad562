//! Export: images of the content store written as one tar stream.
//!
//! Everything the archive will hold is planned (and checked present) before the first byte is
//! written, so a missing blob fails the export with a clear error instead of a truncated tar.
//! Blobs are then copied from their files into the tar in order of discovery (children before
//! the manifest that lists them, each blob once), followed by the metadata files.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use serde::Serialize;

use super::docker::{self, Item};
use super::{
    ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, Archiver, Format, INDEX_JSON, MANIFEST_JSON,
    OCI_LAYOUT, REPOSITORIES, blob_path, wanted,
};
use crate::content::ContentStore;
use crate::error::{Error, Result};
use crate::images::{Descriptor, Image, ImageStore, Platform};
use crate::leases::LeaseManager;
use crate::manifest::{self, Resolved};
use crate::pull::MEDIA_TYPE_INDEX;
use crate::reference;

/// What to export and how.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// Names of the images.
    pub names: Vec<String>,
    /// Layout ([`Format::Auto`] = OCI image layout).
    pub format: Format,
    /// Platforms of an index to include; empty = the host's.
    pub platforms: Vec<Platform>,
    /// Include every platform of an index (a missing one fails unless `skip_missing`).
    pub all_platforms: bool,
    /// Leave out manifests whose content is not in the store instead of failing.
    pub skip_missing: bool,
}

/// Everything one export writes.
#[derive(Default)]
struct Plan {
    blobs: Vec<Descriptor>,
    index: Vec<Descriptor>,
    items: Vec<Item>,
    repositories: BTreeMap<String, BTreeMap<String, String>>,
}

impl Plan {
    fn add_blob(&mut self, d: &Descriptor) {
        if !self.blobs.iter().any(|b| b.digest == d.digest) {
            self.blobs.push(d.clone());
        }
    }

    /// Adds one platform's image: its blobs and its `manifest.json` item.
    fn add_image(&mut self, name: &str, tag: Option<&str>, r: &Resolved) {
        for d in std::iter::once(&r.config).chain(&r.layers) {
            self.add_blob(d);
        }
        self.add_blob(&r.manifest);
        let item = Item {
            config: blob_path(&r.config.digest),
            repo_tags: Vec::new(),
            layers: r.layers.iter().map(|l| blob_path(&l.digest)).collect(),
        };
        let at = match self
            .items
            .iter()
            .position(|i| i.config == item.config && i.layers == item.layers)
        {
            Some(at) => at,
            None => {
                self.items.push(item);
                self.items.len() - 1
            }
        };
        if let Some(tag) = tag {
            let repository = name.rsplit_once(':').map_or(name, |(r, _)| r);
            let repo_tag = docker::familiar(name).to_owned();
            if !self.items[at].repo_tags.contains(&repo_tag) {
                self.items[at].repo_tags.push(repo_tag);
            }
            self.repositories
                .entry(docker::familiar(repository).to_owned())
                .or_default()
                .insert(tag.to_owned(), r.config.digest.hex().to_owned());
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct IndexJson<'a> {
    schema_version: u32,
    media_type: &'a str,
    manifests: Vec<DescriptorJson<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DescriptorJson<'a> {
    media_type: &'a str,
    digest: String,
    size: u64,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    annotations: &'a BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    platform: Option<PlatformJson<'a>>,
}

#[derive(Serialize)]
struct PlatformJson<'a> {
    architecture: &'a str,
    os: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    variant: &'a str,
    #[serde(rename = "os.version", skip_serializing_if = "str::is_empty")]
    os_version: &'a str,
}

fn index_json(entries: &[Descriptor]) -> Vec<u8> {
    let index = IndexJson {
        schema_version: 2,
        media_type: MEDIA_TYPE_INDEX,
        manifests: entries
            .iter()
            .map(|d| DescriptorJson {
                media_type: &d.media_type,
                digest: d.digest.to_string(),
                size: d.size,
                annotations: &d.annotations,
                platform: d.platform.as_ref().map(|p| PlatformJson {
                    architecture: &p.architecture,
                    os: &p.os,
                    variant: &p.variant,
                    os_version: &p.os_version,
                }),
            })
            .collect(),
    };
    serde_json::to_vec(&index).unwrap_or_default()
}

fn write_file<W: Write>(tar: &mut tar::Builder<W>, path: &str, data: &[u8]) -> Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    tar.append_data(&mut header, path, data)
        .map_err(Error::io(format!("export entry {path}")))
}

fn write_dir<W: Write>(tar: &mut tar::Builder<W>, path: &str) -> Result<()> {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_size(0);
    header.set_mode(0o755);
    tar.append_data(&mut header, path, std::io::empty())
        .map_err(Error::io(format!("export entry {path}")))
}

impl<C, I, L> Archiver<C, I, L>
where
    C: ContentStore + Clone,
    I: ImageStore,
    L: LeaseManager,
{
    /// Writes the images `options` names as a tar archive to `out`.
    pub fn export(&self, ns: &str, options: &ExportOptions, out: impl Write) -> Result<()> {
        if options.names.is_empty() {
            return Err(Error::invalid("names", "name at least one image to export"));
        }
        let mut plan = Plan::default();
        let mut seen = std::collections::BTreeSet::new();
        for name in &options.names {
            let image = self.images.get(ns, name)?;
            if seen.insert(image.name.clone()) {
                self.plan_image(ns, options, &image, &mut plan)?;
            }
        }
        let docker = options.format == Format::DockerArchive;
        let mut tar = tar::Builder::new(out);
        tar.mode(tar::HeaderMode::Deterministic);
        write_file(&mut tar, OCI_LAYOUT, br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        write_dir(&mut tar, "blobs/")?;
        let mut algorithms: Vec<_> = plan.blobs.iter().map(|d| d.digest.algorithm()).collect();
        algorithms.dedup();
        for alg in algorithms {
            write_dir(&mut tar, &format!("blobs/{}/", alg.name()))?;
        }
        for d in &plan.blobs {
            let path = blob_path(&d.digest);
            let blob = self.content.open(ns, &d.digest)?;
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(blob.size);
            header.set_mode(0o644);
            tar.append_data(&mut header, &path, (&blob.file).take(blob.size))
                .map_err(Error::io(format!("export entry {path}")))?;
        }
        write_file(&mut tar, INDEX_JSON, &index_json(&plan.index))?;
        let items = serde_json::to_vec(&plan.items).unwrap_or_default();
        write_file(&mut tar, MANIFEST_JSON, &items)?;
        if docker && !plan.repositories.is_empty() {
            let repositories = serde_json::to_vec(&plan.repositories).unwrap_or_default();
            write_file(&mut tar, REPOSITORIES, &repositories)?;
        }
        tar.into_inner()
            .and_then(|mut out| out.flush())
            .map_err(Error::io("export stream"))
    }

    /// Adds one image to the plan, checking that its content is present.
    fn plan_image(
        &self,
        ns: &str,
        options: &ExportOptions,
        image: &Image,
        plan: &mut Plan,
    ) -> Result<()> {
        let parsed = reference::parse(&image.name)?;
        let tag = parsed.tag();
        let annotations = BTreeMap::from([
            (ANNOTATION_IMAGE_NAME.to_owned(), image.name.clone()),
            (
                ANNOTATION_REF_NAME.to_owned(),
                tag.unwrap_or(&image.name).to_owned(),
            ),
        ]);
        let target = &image.target;
        let mut platforms = Vec::new();
        if manifest::is_index(&target.media_type) {
            let want = wanted(&options.platforms);
            for entry in manifest::index_entries(&self.content, ns, target)? {
                let platform = entry.platform.clone().unwrap_or_default();
                let chosen = options.all_platforms
                    || want
                        .iter()
                        .any(|w| manifest::platform_matches(w, &platform));
                if !chosen || !manifest::is_manifest(&entry.media_type) {
                    continue;
                }
                if options.skip_missing && self.content.info(ns, &entry.digest).is_err() {
                    continue;
                }
                platforms.push(self.resolved(ns, &image.name, &entry)?);
            }
            if platforms.is_empty() {
                let want: Vec<String> = want
                    .iter()
                    .map(|p| format!("{}/{}", p.os, p.architecture))
                    .collect();
                return Err(Error::NoMatchingPlatform {
                    reference: image.name.clone(),
                    platforms: want.join(","),
                });
            }
        } else if manifest::is_manifest(&target.media_type) {
            platforms.push(self.resolved(ns, &image.name, target)?);
        } else {
            return Err(Error::UnsupportedMediaType {
                digest: target.digest.to_string(),
                media_type: target.media_type.clone(),
            });
        }
        for r in &platforms {
            plan.add_image(&image.name, tag, r);
        }
        if options.format == Format::DockerArchive {
            if platforms.len() > 1 {
                return Err(Error::invalid(
                    "platforms",
                    format!(
                        "a docker-archive holds one platform per image and {} has {} here: \
                         choose one platform or export an OCI layout",
                        image.name,
                        platforms.len()
                    ),
                ));
            }
            let mut d = platforms[0].manifest.clone();
            d.annotations = annotations;
            plan.index.push(d);
        } else {
            plan.add_blob(target);
            let mut d = target.clone();
            d.annotations = annotations;
            plan.index.push(d);
        }
        Ok(())
    }

    /// One platform's image, with every layer checked present.
    fn resolved(&self, ns: &str, name: &str, manifest: &Descriptor) -> Result<Resolved> {
        let r = manifest::resolve(&self.content, ns, manifest, &Platform::default())?;
        for d in &r.layers {
            match self.content.info(ns, &d.digest) {
                Ok(_) => {}
                Err(Error::ContentNotFound { .. }) => {
                    return Err(Error::ContentNotFound {
                        digest: format!("{} (a layer of {name})", d.digest),
                    });
                }
                Err(e) => return Err(e),
            }
        }
        Ok(r)
    }
}
