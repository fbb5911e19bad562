//! Comparing directory trees file by file (an unpacked image against umoci's, a layer round
//! trip against its source).

use std::collections::BTreeMap;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use crate::fixtures::images::sha256_digest;

/// Everything a tree must keep, one line per path (the root excluded): type, mode, owner,
/// content, link target, device number, xattrs, which files are hardlinks of one another, and
/// with `mtimes` the modification times.
///
/// # Panics
/// If the tree cannot be read.
pub fn listing(root: &Path, mtimes: bool) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, String> = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let mut paths: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        paths.sort();
        for path in paths {
            let rel = path.strip_prefix(root).unwrap().display().to_string();
            let m = std::fs::symlink_metadata(&path).unwrap();
            let t = m.file_type();
            let mut line = format!("mode={:o} uid={} gid={}", m.mode(), m.uid(), m.gid());
            if mtimes {
                line += &format!(" mtime={}.{:09}", m.mtime(), m.mtime_nsec());
            }
            if t.is_file() {
                line += &format!(" sha={}", sha256_digest(&std::fs::read(&path).unwrap()));
                if m.nlink() > 1 {
                    let first = inodes.entry(m.ino()).or_insert_with(|| rel.clone());
                    line += &format!(" link={first}");
                }
            } else if t.is_symlink() {
                line += &format!(" -> {}", std::fs::read_link(&path).unwrap().display());
            } else if t.is_char_device() || t.is_block_device() {
                line += &format!(" rdev={}", m.rdev());
            } else if t.is_dir() {
                stack.push(path.clone());
            }
            if !t.is_symlink() {
                let mut names: Vec<_> = xattr::list(&path).unwrap().collect();
                names.sort();
                for name in names {
                    let value = xattr::get(&path, &name).unwrap().unwrap_or_default();
                    line += &format!(" {}={:?}", name.to_string_lossy(), value);
                }
            }
            out.insert(rel, line);
        }
    }
    out
}

/// Asserts that `got` holds the same tree as `want` (see [`listing`]), naming every missing,
/// differing and extra path; returns the number of paths compared.
///
/// # Panics
/// If the trees differ or cannot be read.
pub fn assert_same_tree(want: &Path, got: &Path, mtimes: bool) -> usize {
    let (a, b) = (listing(want, mtimes), listing(got, mtimes));
    let mut diffs = Vec::new();
    for (k, v) in &a {
        match b.get(k) {
            None => diffs.push(format!("missing {k}: {v}")),
            Some(w) if w != v => diffs.push(format!("differs {k}:\n   want {v}\n    got {w}")),
            _ => {}
        }
    }
    for k in b.keys().filter(|k| !a.contains_key(*k)) {
        diffs.push(format!("extra {k}: {}", b[k]));
    }
    assert!(diffs.is_empty(), "trees differ:\n{}", diffs.join("\n"));
    a.len()
}
