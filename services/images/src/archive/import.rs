//! Import: a tar stream (OCI image layout or docker-archive) into the content store and the
//! image records.
//!
//! The stream is read once, entry by entry, in whatever order the producer chose: metadata
//! files are kept in memory (bounded), every other regular file goes into the content store
//! under the import's lease (`blobs/<alg>/<hex>` verified against its name, the rest hashed
//! as it is read), and links are remembered as aliases. Then the images are resolved from
//! `index.json` (preferred: it keeps manifest digests) or `manifest.json`, every blob they
//! reach is checked, and all of them are recorded at once.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::time::{Duration, SystemTime};

use serde::Deserialize;

use super::docker::{self, Compression, Item};
use super::{
    ANNOTATION_IMAGE_NAME, ANNOTATION_REF_NAME, Archiver, Format, INDEX_JSON, MANIFEST_JSON,
    MAX_METADATA, OCI_LAYOUT, REPOSITORIES, bad, blob_path, entry_name, wanted,
};
use crate::content::{ContentStore, MAX_CHUNK, WriteRequest, Writer};
use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::images::{Descriptor, Image, ImageStore, Platform};
use crate::leases::{LeaseManager, Resource};
use crate::manifest::{self, JsonDescriptor};
use crate::reference;

/// How long the lease of an import lives if the import never ends (a crash).
const LEASE_TTL: Duration = Duration::from_secs(3600);
/// Most symlinks followed to find one file.
const MAX_LINKS: usize = 16;

/// How to import an archive.
#[derive(Debug, Clone, Default)]
pub struct ImportOptions {
    /// Expected layout; [`Format::Auto`] detects it.
    pub format: Format,
    /// Name for images the archive does not name, or repository for bare tags.
    pub base_name: String,
    /// Labels of every recorded image.
    pub labels: BTreeMap<String, String>,
    /// Platforms of an index whose content must be present; empty = the host's.
    pub platforms: Vec<Platform>,
    /// Accept an index with any subset of its platforms present.
    pub all_platforms: bool,
}

/// A file of the archive, stored in the content store.
#[derive(Debug, Clone)]
struct Stored {
    digest: Digest,
    size: u64,
    compression: Compression,
}

/// What reading the archive found.
#[derive(Default)]
struct Entries {
    files: HashMap<String, Stored>,
    links: HashMap<String, String>,
    metadata: HashMap<String, Vec<u8>>,
}

impl Entries {
    /// The stored file at `path`, following links.
    fn file(&self, path: &str) -> Result<&Stored> {
        let mut path = entry_name(path.as_bytes())?;
        for _ in 0..MAX_LINKS {
            if let Some(stored) = self.files.get(&path) {
                return Ok(stored);
            }
            match self.links.get(&path) {
                Some(target) => path = target.clone(),
                None => return Err(bad(path, "missing from the archive")),
            }
        }
        Err(bad(path, "too many levels of links"))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct IndexJson {
    schema_version: Option<u32>,
    #[serde(default)]
    manifests: Vec<JsonDescriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct LayoutJson {
    image_layout_version: String,
}

/// Resolves a link's target to a normalised archive path; symlinks are relative to their
/// directory, hardlinks to the archive root.
fn link_target(name: &str, target: &[u8], symbolic: bool) -> Result<String> {
    let target =
        std::str::from_utf8(target).map_err(|_| bad(name, "the link target is not valid UTF-8"))?;
    if target.starts_with('/') {
        return Err(bad(name, format!("link to the absolute path {target:?}")));
    }
    let mut parts: Vec<&str> = Vec::new();
    if symbolic {
        parts.extend(name.split('/'));
        parts.pop();
    }
    for part in target.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                if parts.pop().is_none() {
                    return Err(bad(
                        name,
                        format!("link target {target:?} points outside the archive"),
                    ));
                }
            }
            p => parts.push(p),
        }
    }
    Ok(parts.join("/"))
}

fn parse_json<'a, T: Deserialize<'a>>(entry: &str, data: &'a [u8]) -> Result<T> {
    serde_json::from_slice(data).map_err(|e| bad(entry, format!("does not parse: {e}")))
}

/// Reads `entry` into `buf` until it is full or the entry ends.
fn read_full(entry: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match entry.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The name an `index.json` entry gives its image, if any.
fn oci_name(d: &JsonDescriptor, base: &str) -> Option<String> {
    if let Some(name) = d.annotations.get(ANNOTATION_IMAGE_NAME) {
        return Some(name.clone());
    }
    let is_tag = |r: &str| !r.contains(['/', ':', '@']);
    match d.annotations.get(ANNOTATION_REF_NAME) {
        Some(r) if !base.is_empty() && is_tag(r) => Some(format!("{base}:{r}")),
        Some(r) => Some(r.clone()),
        None if !base.is_empty() => Some(format!("{base}@{}", d.digest)),
        None => None,
    }
}

impl<C, I, L> Archiver<C, I, L>
where
    C: ContentStore + Clone,
    I: ImageStore,
    L: LeaseManager,
{
    /// Reads a tar archive from `input`, stores its content and records the images it names.
    pub fn import(
        &self,
        ns: &str,
        options: &ImportOptions,
        input: impl Read,
    ) -> Result<Vec<Image>> {
        let labels = BTreeMap::from([("berth.io/purpose".into(), "import".into())]);
        let lease = self
            .leases
            .create(ns, None, labels, Some(SystemTime::now() + LEASE_TTL))?;
        let result = self.import_leased(ns, options, input, &lease.id);
        let deleted = self.leases.delete(ns, &lease.id);
        // Drop what a failed import stored, and what a successful one stored but no image uses.
        if !matches!(&result, Ok((_, false)))
            && let Err(e) = self.gc.collect()
        {
            tracing::warn!(error = %e, "garbage collection after an import failed");
        }
        let (images, _) = result?;
        deleted?;
        Ok(images)
    }

    /// Imports under `lease`; also says whether the archive held files no image uses.
    fn import_leased(
        &self,
        ns: &str,
        options: &ImportOptions,
        input: impl Read,
        lease: &str,
    ) -> Result<(Vec<Image>, bool)> {
        let entries = self.read_entries(ns, input, lease)?;
        let has_index = entries.metadata.contains_key(INDEX_JSON);
        let has_manifest = entries.metadata.contains_key(MANIFEST_JSON);
        match options.format {
            Format::DockerArchive if !has_manifest => {
                return Err(bad(MANIFEST_JSON, "missing: this is not a docker-archive"));
            }
            Format::OciLayout if !has_index => {
                return Err(bad(INDEX_JSON, "missing: this is not an OCI image layout"));
            }
            _ => {}
        }
        // index.json first: Docker 25+ archives have both, and it keeps manifest digests.
        let (named, source) = match (has_index, has_manifest) {
            (true, _) => (self.oci_images(ns, options, &entries)?, INDEX_JSON),
            (false, true) => (
                self.docker_images(ns, options, &entries, lease)?,
                MANIFEST_JSON,
            ),
            (false, false) => {
                return Err(bad(
                    INDEX_JSON,
                    "missing: the archive has neither index.json (OCI image layout) nor \
                     manifest.json (docker-archive)",
                ));
            }
        };
        if named.is_empty() {
            return Err(bad(
                source,
                "names no image (no RepoTags, org.opencontainers.image.ref.name or \
                 io.containerd.image.name): give a base name",
            ));
        }
        // Check every name before recording any.
        let named = named
            .into_iter()
            .map(|(name, d)| Ok((reference::normalize(&name)?, d)))
            .collect::<Result<Vec<_>>>()?;
        let used: std::collections::HashSet<&Digest> =
            named.iter().map(|(_, d)| &d.digest).collect();
        let unused = entries.files.values().any(|s| !used.contains(&s.digest));
        let mut images = Vec::new();
        for (name, target) in named {
            images.push(
                self.images
                    .create(ns, &name, options.labels.clone(), target, true)?,
            );
        }
        Ok((images, unused))
    }

    /// Reads every entry, storing files and remembering links and metadata.
    fn read_entries(&self, ns: &str, input: impl Read, lease: &str) -> Result<Entries> {
        let mut archive = tar::Archive::new(input);
        let mut found = Entries::default();
        let mut last = None::<String>;
        let entries = archive
            .entries()
            .map_err(|e| bad("<first entry>", format!("not a tar archive: {e}")))?;
        for (n, entry) in entries.enumerate() {
            let mut entry = entry.map_err(|e| match &last {
                None => bad("<first entry>", format!("not a tar archive: {e}")),
                Some(last) => bad(
                    format!("<entry after {last}>"),
                    format!("cannot read it (truncated archive?): {e}"),
                ),
            })?;
            let name = entry_name(&entry.path_bytes())?;
            last = Some(name.clone());
            let kind = entry.header().entry_type();
            match kind {
                tar::EntryType::Directory
                | tar::EntryType::XGlobalHeader
                | tar::EntryType::XHeader => {}
                tar::EntryType::Symlink | tar::EntryType::Link => {
                    let target = entry
                        .link_name_bytes()
                        .ok_or_else(|| bad(&name, "a link without a target"))?;
                    let target = link_target(&name, &target, kind == tar::EntryType::Symlink)?;
                    found.links.insert(name, target);
                }
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    let size = entry.size();
                    if [INDEX_JSON, MANIFEST_JSON, OCI_LAYOUT, REPOSITORIES]
                        .contains(&name.as_str())
                    {
                        if size > MAX_METADATA {
                            return Err(bad(
                                &name,
                                format!("{size} bytes exceeds the limit of {MAX_METADATA}"),
                            ));
                        }
                        let mut data = Vec::with_capacity(size as usize);
                        entry
                            .read_to_end(&mut data)
                            .map_err(|e| bad(&name, format!("cannot read: {e}")))?;
                        if data.len() as u64 != size {
                            return Err(bad(
                                &name,
                                format!("truncated: {} of {size} bytes", data.len()),
                            ));
                        }
                        found.metadata.insert(name, data);
                        continue;
                    }
                    let expected = match name.strip_prefix("blobs/") {
                        Some(rest) => {
                            let digest =
                                rest.replacen('/', ":", 1).parse::<Digest>().map_err(|e| {
                                    bad(
                                        &name,
                                        format!(
                                            "a blob's path must be blobs/<algorithm>/<hex>: {e}"
                                        ),
                                    )
                                })?;
                            Some(digest)
                        }
                        None => None,
                    };
                    let reference = format!("import-{lease}-{n}");
                    let stored =
                        self.store(ns, lease, &reference, &name, expected, size, &mut entry);
                    if stored.is_err() {
                        // Nothing half-written stays: the ingest goes (it may not exist).
                        let _ = self.content.abort(ns, &reference);
                    }
                    found.files.insert(name, stored?);
                }
                other => {
                    return Err(bad(
                        &name,
                        format!("entry type {other:?} has no place in an image archive"),
                    ));
                }
            }
        }
        if let Some(layout) = found.metadata.get(OCI_LAYOUT) {
            let layout: LayoutJson = parse_json(OCI_LAYOUT, layout)?;
            if !layout.image_layout_version.starts_with("1.") {
                return Err(bad(
                    OCI_LAYOUT,
                    format!(
                        "image layout version {:?} is not supported (1.x is)",
                        layout.image_layout_version
                    ),
                ));
            }
        }
        Ok(found)
    }

    /// Streams one file into the content store under `lease`.
    #[allow(clippy::too_many_arguments)]
    fn store(
        &self,
        ns: &str,
        lease: &str,
        reference: &str,
        name: &str,
        expected: Option<Digest>,
        size: u64,
        entry: &mut impl Read,
    ) -> Result<Stored> {
        let request = WriteRequest {
            reference: reference.to_owned(),
            total: Some(size),
            expected: expected.clone(),
            lease: Some(lease.to_owned()),
        };
        let mut writer = match (self.content.writer(ns, request), expected) {
            (Err(Error::ContentExists { .. }), Some(digest)) => {
                // The namespace holds it already: keep it for this import, check the size.
                let info = self.content.info(ns, &digest)?;
                if info.size != size {
                    return Err(bad(
                        name,
                        format!("{size} bytes, but {digest} has {}", info.size),
                    ));
                }
                self.leases
                    .add_resource(ns, lease, &Resource::content(&digest))?;
                return self.existing(ns, digest);
            }
            (other, _) => other?,
        };
        let mut buf = vec![0; MAX_CHUNK];
        let mut offset = 0u64;
        let mut head = Vec::new();
        loop {
            let n = read_full(entry, &mut buf)
                .map_err(|e| bad(name, format!("cannot read (truncated archive?): {e}")))?;
            if n == 0 {
                break;
            }
            if head.is_empty() {
                head = buf[..n.min(8)].to_vec();
            }
            writer.write(offset, &buf[..n])?;
            offset += n as u64;
        }
        if offset != size {
            return Err(bad(name, format!("truncated: {offset} of {size} bytes")));
        }
        let digest = writer.digest();
        match writer.commit(BTreeMap::new()) {
            Ok(_) | Err(Error::ContentExists { .. }) => Ok(Stored {
                digest,
                size,
                compression: Compression::sniff(&head),
            }),
            Err(Error::DigestMismatch {
                digest, expected, ..
            }) => Err(bad(
                name,
                format!("the content hashes to {digest}, not to the {expected} its name says"),
            )),
            Err(e) => Err(e),
        }
    }

    /// A blob the namespace already holds, described like a stored one.
    fn existing(&self, ns: &str, digest: Digest) -> Result<Stored> {
        let blob = self.content.open(ns, &digest)?;
        let mut head = [0u8; 8];
        let n =
            read_full(&mut (&blob.file), &mut head).map_err(Error::io(format!("blob {digest}")))?;
        Ok(Stored {
            digest,
            size: blob.size,
            compression: Compression::sniff(&head[..n]),
        })
    }

    /// The images of an OCI image layout's `index.json`, checked: (name, target).
    fn oci_images(
        &self,
        ns: &str,
        options: &ImportOptions,
        entries: &Entries,
    ) -> Result<Vec<(String, Descriptor)>> {
        let index: IndexJson = parse_json(INDEX_JSON, &entries.metadata[INDEX_JSON])?;
        if index.schema_version != Some(2) {
            return Err(bad(
                INDEX_JSON,
                format!(
                    "schema version {:?} is not supported (2 is)",
                    index.schema_version
                ),
            ));
        }
        let mut named = Vec::new();
        for d in index.manifests {
            let name = oci_name(&d, &options.base_name);
            let mut target = descriptor(INDEX_JSON, d)?;
            // The names are the record's; the target keeps the other annotations.
            target.annotations.remove(ANNOTATION_IMAGE_NAME);
            target.annotations.remove(ANNOTATION_REF_NAME);
            self.check_tree(ns, options, &target, INDEX_JSON, 0)?;
            if let Some(name) = name {
                named.push((name, target));
            }
        }
        Ok(named)
    }

    /// Checks that `d` is present with its size and, for an index or manifest, everything it
    /// lists (for an index: the platforms asked for).
    fn check_tree(
        &self,
        ns: &str,
        options: &ImportOptions,
        d: &Descriptor,
        parent: &str,
        depth: usize,
    ) -> Result<()> {
        let entry = blob_path(&d.digest);
        match self.content.info(ns, &d.digest) {
            Ok(info) if info.size != d.size => {
                return Err(bad(
                    entry,
                    format!("{} bytes, but {parent} says {}", info.size, d.size),
                ));
            }
            Ok(_) => {}
            Err(Error::ContentNotFound { .. }) => {
                return Err(bad(entry, format!("missing, yet {parent} lists it")));
            }
            Err(e) => return Err(e),
        }
        let in_archive = |e: Error| bad(&entry, e.to_string());
        if manifest::is_index(&d.media_type) {
            if depth > 1 {
                return Err(bad(entry, "indexes nested this deep are not supported"));
            }
            let want = wanted(&options.platforms);
            let mut found = 0;
            for child in manifest::index_entries(&self.content, ns, d).map_err(in_archive)? {
                let platform = child.platform.clone().unwrap_or_default();
                let required = !options.all_platforms
                    && want
                        .iter()
                        .any(|w| manifest::platform_matches(w, &platform));
                if !required && self.content.info(ns, &child.digest).is_err() {
                    continue;
                }
                self.check_tree(ns, options, &child, &entry, depth + 1)?;
                found += 1;
            }
            if found == 0 {
                return Err(bad(
                    entry,
                    "none of the manifests this index lists is in the archive",
                ));
            }
        } else if manifest::is_manifest(&d.media_type) {
            let r =
                manifest::resolve(&self.content, ns, d, &Platform::default()).map_err(
                    |e| match e {
                        Error::ContentNotFound { digest } => {
                            let config = digest.parse().map(|d| blob_path(&d)).unwrap_or(digest);
                            bad(config, format!("missing, yet {entry} lists it"))
                        }
                        e => in_archive(e),
                    },
                )?;
            for child in std::iter::once(&r.config).chain(&r.layers) {
                self.check_tree(ns, options, child, &entry, depth + 1)?;
            }
        }
        Ok(())
    }

    /// The images of a docker-archive's `manifest.json`, each with a schema2 manifest stored
    /// for it: (name, target).
    fn docker_images(
        &self,
        ns: &str,
        options: &ImportOptions,
        entries: &Entries,
        lease: &str,
    ) -> Result<Vec<(String, Descriptor)>> {
        let items: Vec<Item> = parse_json(MANIFEST_JSON, &entries.metadata[MANIFEST_JSON])?;
        let mut named = Vec::new();
        for item in items {
            let config = entries.file(&item.config)?;
            let config = Descriptor {
                media_type: docker::MEDIA_TYPE_DOCKER_CONFIG.into(),
                digest: config.digest.clone(),
                size: config.size,
                annotations: BTreeMap::new(),
                platform: None,
            };
            let layers = item
                .layers
                .iter()
                .map(|path| {
                    let layer = entries.file(path)?;
                    Ok(Descriptor {
                        media_type: layer.compression.layer_media_type().into(),
                        digest: layer.digest.clone(),
                        size: layer.size,
                        annotations: BTreeMap::new(),
                        platform: None,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let body = docker::schema2(&config, &layers);
            let digest = Digest::sha256(&body);
            let reference = format!("import-{lease}-{digest}");
            let mut writer = match self.content.writer(
                ns,
                WriteRequest {
                    reference: reference.clone(),
                    total: Some(body.len() as u64),
                    expected: Some(digest.clone()),
                    lease: Some(lease.to_owned()),
                },
            ) {
                Err(Error::ContentExists { .. }) => None,
                other => Some(other?),
            };
            if let Some(w) = writer.as_mut() {
                w.write(0, &body)?;
                match w.commit(BTreeMap::new()) {
                    Ok(_) | Err(Error::ContentExists { .. }) => {}
                    Err(e) => return Err(e),
                }
            } else {
                self.leases
                    .add_resource(ns, lease, &Resource::content(&digest))?;
            }
            let target = Descriptor {
                media_type: crate::pull::MEDIA_TYPE_DOCKER_MANIFEST.into(),
                digest,
                size: body.len() as u64,
                annotations: BTreeMap::new(),
                platform: None,
            };
            self.check_tree(ns, options, &target, MANIFEST_JSON, 0)
                .map_err(|e| match e {
                    Error::BadArchive { reason, .. } => bad(&item.config, reason),
                    e => e,
                })?;
            if item.repo_tags.is_empty() && !options.base_name.is_empty() {
                named.push((
                    format!("{}@{}", options.base_name, target.digest),
                    target.clone(),
                ));
            }
            for tag in item.repo_tags {
                named.push((tag, target.clone()));
            }
        }
        Ok(named)
    }
}

/// A descriptor of `index.json`, validated.
fn descriptor(entry: &str, d: JsonDescriptor) -> Result<Descriptor> {
    let digest = d
        .digest
        .parse()
        .map_err(|e| bad(entry, format!("invalid digest {:?}: {e}", d.digest)))?;
    Ok(d.into_descriptor(digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_resolve_inside_the_archive_only() {
        assert_eq!(
            link_target("abc/layer.tar", b"../def/layer.tar", true).unwrap(),
            "def/layer.tar"
        );
        assert_eq!(
            link_target("x/y", b"blobs/sha256/a", false).unwrap(),
            "blobs/sha256/a"
        );
        assert!(link_target("abc/layer.tar", b"../../etc/passwd", true).is_err());
        assert!(link_target("a", b"/etc/passwd", true).is_err());
    }

    #[test]
    fn index_entries_are_named_like_containerd_does() {
        let d = |pairs: &[(&str, &str)]| JsonDescriptor {
            media_type: String::new(),
            digest: "sha256:ab".into(),
            size: 0,
            annotations: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            platform: None,
        };
        let full = d(&[
            (ANNOTATION_IMAGE_NAME, "docker.io/library/a:1"),
            (ANNOTATION_REF_NAME, "1"),
        ]);
        assert_eq!(
            oci_name(&full, "x").as_deref(),
            Some("docker.io/library/a:1")
        );
        let tag = d(&[(ANNOTATION_REF_NAME, "v2")]);
        assert_eq!(oci_name(&tag, "repo").as_deref(), Some("repo:v2"));
        assert_eq!(oci_name(&tag, "").as_deref(), Some("v2"));
        assert_eq!(oci_name(&d(&[]), "").as_deref(), None);
        assert_eq!(oci_name(&d(&[]), "r").as_deref(), Some("r@sha256:ab"));
    }
}
