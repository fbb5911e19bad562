//! A container's changes to its image, as `docker diff` lists them and as `docker commit`
//! stores them.
//!
//! The layer library's [`compare`](berth_snapshots::layer::compare) writes the changes from
//! the image's tree (lower) to the container's tree (upper) as an OCI layer tar; [`filter`]
//! reads that tar once, drops what the runtime made rather than the container's processes, and
//! both re-emits the rest (the layer `commit` stores) and lists it as [`Change`]s:
//!
//! - a whiteout is a deletion (`D`), an opaque marker a deletion of everything the lower
//!   directory held;
//! - any other entry is a modification (`C`) when its path exists in lower, else an addition
//!   (`A`); every directory above a change is a modification, as Docker shows it.
//!
//! What the runtime made are the mount points of the container's spec (`/proc`, `/dev`,
//! `/sys`, `/etc/hosts`, volumes...): overlayfs records them in the container's snapshot when
//! the image lacks them, and Docker hides them in its "init" layer. They, what is below them,
//! and the time-only changes of the directories holding them are left out.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// What happened to a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ChangeKind {
    /// Changed (content, metadata, or something below it).
    Modified,
    /// New.
    Added,
    /// Deleted.
    Deleted,
}

/// One changed path, absolute inside the container.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Change {
    /// The path, e.g. `/etc/passwd`.
    pub path: PathBuf,
    /// What happened to it.
    pub kind: ChangeKind,
}

impl fmt::Display for Change {
    /// Docker's `diff` line: `C /etc`, `A /etc/new`, `D /etc/old`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let letter = match self.kind {
            ChangeKind::Modified => 'C',
            ChangeKind::Added => 'A',
            ChangeKind::Deleted => 'D',
        };
        write!(f, "{letter} {}", self.path.display())
    }
}

/// What every container gets mounted whatever its spec says (the tasks service binds the
/// network files when it creates the task): Docker's "init" layer.
pub const RUNTIME_PATHS: [&str; 6] = [
    "/proc",
    "/sys",
    "/dev",
    "/etc/hosts",
    "/etc/hostname",
    "/etc/resolv.conf",
];

/// Paths the runtime mounts over (absolute, normalised): not the container's own changes.
#[derive(Debug, Clone, Default)]
pub struct Exclusions {
    paths: BTreeSet<PathBuf>,
}

impl Exclusions {
    /// The mount destinations of an OCI runtime spec (JSON), and those the tasks service adds
    /// when it creates the task ([`RUNTIME_PATHS`]).
    pub fn from_spec(spec: &[u8]) -> Exclusions {
        let spec: serde_json::Value = serde_json::from_slice(spec).unwrap_or_default();
        let destinations = spec["mounts"]
            .as_array()
            .map(|m| {
                m.iter()
                    .filter_map(|m| m["destination"].as_str())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        Exclusions::new(destinations.into_iter().chain(RUNTIME_PATHS))
    }

    /// Excludes each of `paths` (and what is below).
    pub fn new<P: AsRef<Path>>(paths: impl IntoIterator<Item = P>) -> Exclusions {
        Exclusions {
            paths: paths
                .into_iter()
                .map(|p| absolute(p.as_ref()))
                .filter(|p| p != Path::new("/"))
                .collect(),
        }
    }

    /// Whether `path` is excluded or below an excluded path.
    fn covers(&self, path: &Path) -> bool {
        path.ancestors().any(|a| self.paths.contains(a))
    }

    /// Whether `path` holds an excluded path.
    fn holds(&self, path: &Path) -> bool {
        self.paths
            .range(path.to_path_buf()..)
            .next()
            .is_some_and(|p| p != path && p.starts_with(path))
    }
}

/// `/` + the normal components of `path` (`.` and `..` dropped, as archive names never have
/// `..`).
fn absolute(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for c in path.components() {
        if let Component::Normal(n) = c {
            out.push(n);
        }
    }
    out
}

const WHITEOUT: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";

/// Reads the layer tar `layer` (changes from the tree at `lower`), writes it to `out` without
/// the entries `exclusions` covers, and returns the changes it holds, sorted by path.
pub fn filter(
    layer: impl Read,
    out: impl Write,
    lower: &Path,
    exclusions: &Exclusions,
) -> Result<Vec<Change>> {
    let bad = |e: io::Error| Error::BadContent(format!("cannot read the layer: {e}"));
    let write = |e: io::Error| Error::io("write the layer to", "the output")(e);
    let mut changes: BTreeMap<PathBuf, ChangeKind> = BTreeMap::new();
    let mut archive = tar::Archive::new(layer);
    let mut builder = tar::Builder::new(out);
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let raw = entry.path().map_err(bad)?.into_owned();
        let path = absolute(&raw);
        let name = path.file_name().map(|n| n.as_bytes()).unwrap_or_default();
        let parent = path.parent().unwrap_or(Path::new("/")).to_path_buf();
        if name == OPAQUE {
            if exclusions.covers(&parent) {
                continue;
            }
            for gone in lower_names(lower, &parent) {
                let gone = parent.join(gone);
                if !exclusions.covers(&gone) {
                    changes.insert(gone, ChangeKind::Deleted);
                }
            }
        } else if let Some(original) = name.strip_prefix(WHITEOUT) {
            let gone = parent.join(std::ffi::OsStr::from_bytes(original));
            if exclusions.covers(&gone) {
                continue;
            }
            changes.insert(gone, ChangeKind::Deleted);
        } else {
            if exclusions.covers(&path) {
                continue;
            }
            let before = std::fs::symlink_metadata(inside(lower, &path)).ok();
            let is_dir = entry.header().entry_type().is_dir();
            if let Some(before) = &before
                && is_dir
                && before.is_dir()
                && exclusions.holds(&path)
                && same_owner_and_mode(before, entry.header())
            {
                // Only its times changed, by the runtime making a mount point in it.
                continue;
            }
            let kind = match before {
                Some(_) => ChangeKind::Modified,
                None => ChangeKind::Added,
            };
            changes.insert(path.clone(), kind);
        }
        copy_entry(&mut builder, &mut entry, &raw).map_err(write)?;
    }
    builder
        .into_inner()
        .map_err(write)?
        .flush()
        .map_err(write)?;
    let changed: Vec<PathBuf> = changes.keys().cloned().collect();
    for path in changed {
        for ancestor in path.ancestors().skip(1) {
            if ancestor == Path::new("/") {
                break;
            }
            changes
                .entry(ancestor.to_path_buf())
                .or_insert(ChangeKind::Modified);
        }
    }
    Ok(changes
        .into_iter()
        .map(|(path, kind)| Change { path, kind })
        .collect())
}

/// Compares the trees at `lower` and `upper` with the layer library and [`filter`]s the layer
/// into `out` (blocking; the layer goes through a pipe, never whole in memory).
pub fn compare(
    lower: &Path,
    upper: &Path,
    out: impl Write,
    exclusions: &Exclusions,
) -> Result<Vec<Change>> {
    let (reader, writer) =
        io::pipe().map_err(Error::io("create a pipe to compare", upper.to_owned()))?;
    std::thread::scope(|s| {
        let producer = s.spawn(move || berth_snapshots::layer::compare(lower, upper, writer));
        let filtered = filter(reader, out, lower, exclusions);
        let compared = producer
            .join()
            .map_err(|_| Error::Invalid("the layer comparison panicked".into()))?;
        compared.map_err(Error::layer("compare the container with its image"))?;
        filtered
    })
}

/// `path` (absolute in the container) under the host directory `root`.
fn inside(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// The names in the lower directory `dir`; none when it cannot be read.
fn lower_names(lower: &Path, dir: &Path) -> Vec<std::ffi::OsString> {
    let mut names: Vec<_> = std::fs::read_dir(inside(lower, dir))
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.file_name())).collect())
        .unwrap_or_default();
    names.sort();
    names
}

fn same_owner_and_mode(before: &std::fs::Metadata, header: &tar::Header) -> bool {
    header.uid().ok() == Some(u64::from(before.uid()))
        && header.gid().ok() == Some(u64::from(before.gid()))
        && header.mode().ok() == Some(before.mode() & 0o7777)
}

/// Writes `entry` (named `path`) again, with its PAX records (times, xattrs) and long names.
fn copy_entry<W: Write, R: Read>(
    builder: &mut tar::Builder<W>,
    entry: &mut tar::Entry<'_, R>,
    path: &Path,
) -> io::Result<()> {
    let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
    if let Some(records) = entry.pax_extensions()? {
        for record in records {
            let record = record?;
            let key = record.key().map_err(io::Error::other)?;
            if key != "path" && key != "linkpath" {
                pax.push((key.to_owned(), record.value_bytes().to_vec()));
            }
        }
    }
    if !pax.is_empty() {
        builder.append_pax_extensions(pax.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
    }
    let mut header = entry.header().clone();
    let mut name = path.as_os_str().to_owned();
    if header.entry_type().is_dir() {
        name.push("/");
    }
    match entry.link_name()?.map(|l| l.into_owned()) {
        Some(target) if target.as_os_str().len() >= 100 => {
            builder.append_link(&mut header, name, target)
        }
        _ => builder.append_data(&mut header, name, entry),
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::symlink;

    use super::*;

    fn lines(changes: &[Change]) -> Vec<String> {
        changes.iter().map(ToString::to_string).collect()
    }

    /// `cp -a`: what overlayfs's copy-up keeps (times included), so only real changes show.
    fn copy_tree(from: &Path, to: &Path) {
        let copied = std::process::Command::new("cp")
            .arg("-a")
            .arg(from)
            .arg(to)
            .status()
            .unwrap();
        assert!(copied.success());
    }

    /// Compares `lower` and `upper` with the layer library and filters the result.
    fn diff(lower: &Path, upper: &Path, exclusions: &Exclusions) -> (Vec<String>, Vec<u8>) {
        let mut layer = Vec::new();
        berth_snapshots::layer::compare(lower, upper, &mut layer).unwrap();
        let mut out = Vec::new();
        let changes = filter(layer.as_slice(), &mut out, lower, exclusions).unwrap();
        (lines(&changes), out)
    }

    #[test]
    fn lists_additions_changes_and_deletions_like_docker() {
        let dir = tempfile::tempdir().unwrap();
        let (lower, upper) = (dir.path().join("l"), dir.path().join("u"));
        fs::create_dir_all(lower.join("etc/deep/er")).unwrap();
        fs::create_dir_all(lower.join("gone/sub")).unwrap();
        fs::write(lower.join("etc/passwd"), "root\n").unwrap();
        fs::write(lower.join("etc/motd"), "hi\n").unwrap();
        fs::write(lower.join("etc/deep/er/f"), "x").unwrap();
        fs::write(lower.join("gone/sub/f"), "x").unwrap();
        copy_tree(&lower, &upper);
        fs::write(upper.join("etc/passwd"), "root\nme\n").unwrap();
        fs::remove_file(upper.join("etc/motd")).unwrap();
        fs::write(upper.join("etc/deep/er/new"), "n").unwrap();
        fs::remove_dir_all(upper.join("gone")).unwrap();
        fs::create_dir(upper.join("added")).unwrap();
        symlink("../etc", upper.join("added/link")).unwrap();
        let (changes, _) = diff(&lower, &upper, &Exclusions::default());
        assert_eq!(
            changes,
            [
                "A /added",
                "A /added/link",
                "C /etc",
                "C /etc/deep",
                "C /etc/deep/er",
                "A /etc/deep/er/new",
                "D /etc/motd",
                "C /etc/passwd",
                "D /gone",
            ]
        );
    }

    #[test]
    fn runtime_mount_points_are_left_out_of_the_list_and_the_layer() {
        let dir = tempfile::tempdir().unwrap();
        let (lower, upper) = (dir.path().join("l"), dir.path().join("u"));
        fs::create_dir_all(lower.join("etc")).unwrap();
        fs::write(lower.join("etc/passwd"), "root\n").unwrap();
        copy_tree(&lower, &upper);
        // What the runtime adds when the image lacks it.
        for d in ["proc", "dev", "sys", "data"] {
            fs::create_dir(upper.join(d)).unwrap();
        }
        fs::write(upper.join("etc/hosts"), "").unwrap();
        fs::write(upper.join("etc/hostname"), "").unwrap();
        fs::write(upper.join("kept"), "k").unwrap();
        let spec = serde_json::json!({"mounts": [
            {"destination": "/dev/pts"}, {"destination": "/data/"},
        ]});
        let exclusions = Exclusions::from_spec(spec.to_string().as_bytes());
        let (changes, layer) = diff(&lower, &upper, &exclusions);
        assert_eq!(changes, ["A /kept"]);
        let names: Vec<String> = tar::Archive::new(layer.as_slice())
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["kept"]);

        // A real change next to a mount point is still listed.
        fs::write(upper.join("etc/passwd"), "root\nme\n").unwrap();
        let (changes, _) = diff(&lower, &upper, &exclusions);
        assert_eq!(changes, ["C /etc", "C /etc/passwd", "A /kept"]);
    }

    #[test]
    fn the_filtered_layer_applies_to_the_upper_tree() {
        let dir = tempfile::tempdir().unwrap();
        let (lower, upper) = (dir.path().join("l"), dir.path().join("u"));
        fs::create_dir_all(lower.join("a/b")).unwrap();
        fs::write(lower.join("a/b/old"), "old").unwrap();
        fs::create_dir_all(upper.join("a/b")).unwrap();
        let long = "n".repeat(150);
        fs::write(upper.join("a/b").join(&long), "long name").unwrap();
        symlink("t".repeat(120), upper.join("a/longlink")).unwrap();
        let (changes, layer) = diff(&lower, &upper, &Exclusions::default());
        assert!(changes.contains(&"D /a/b/old".to_owned()), "{changes:?}");
        let target = dir.path().join("t");
        copy_tree(&lower, &target);
        berth_snapshots::layer::apply(&target, layer.as_slice(), &Default::default()).unwrap();
        assert_eq!(
            fs::read_to_string(target.join("a/b").join(&long)).unwrap(),
            "long name"
        );
        assert!(!target.join("a/b/old").exists());
        assert_eq!(
            fs::read_link(target.join("a/longlink")).unwrap(),
            Path::new(&"t".repeat(120))
        );
    }
}
