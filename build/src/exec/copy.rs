//! `COPY` and `ADD`: files from the context, another stage, an image or (ADD) a URL, written
//! straight into the step's prepared snapshot, mounted here (the client runs as root).
//!
//! Sources are resolved inside their root and destinations inside the image's rootfs (see
//! [`crate::fsops`]). As Docker: a directory source copies its contents; several sources or a
//! wildcard need a directory destination (ending in `/`); a relative destination is taken from
//! `WORKDIR`; context files belong to root unless `--chown` says otherwise, files from a stage
//! or image keep their owners; `ADD` unpacks a local tar (plain or gzip) into the destination
//! and downloads a URL (plain HTTP) as a file of mode 0600. `--link` writes the files into an
//! empty snapshot, so the layer does not depend on what is below it.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use berth_snapshots::mount::{Mount, Mounted};
use sha2::{Digest as _, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{Builder, State};
use crate::dockerfile::{Copy, Source};
use crate::error::{Error, Result};
use crate::fsops::{self, Attrs, Selected};

/// Largest file `ADD` downloads.
const MAX_DOWNLOAD: u64 = 4 << 30;

/// Where the sources of a step are, resolved, and the digest of what they hold.
pub(super) struct Prepared {
    /// Selected entries per path source (heredocs are in the instruction).
    selected: Vec<Selected>,
    /// Their root, open.
    root: Option<OwnedFd>,
    /// Whether the sources come from the context (`.dockerignore` applies, owners reset).
    from_context: bool,
    /// Digest of the sources' content and metadata: part of the cache key.
    pub digest: String,
    /// Downloads of `ADD <url>`.
    _downloads: Option<tempfile::TempDir>,
    /// A mounted view of the `--from` stage or image.
    mounted: Option<Mounted>,
    /// The view's snapshot key.
    view: Option<String>,
}

impl Prepared {
    /// Unmounts and removes the view, if any.
    pub(super) async fn release(mut self, b: &Builder<'_>) -> Result<()> {
        self.selected.clear();
        self.root = None;
        drop(self.mounted.take());
        if let Some(view) = self.view.take() {
            b.remove_snapshot(&view).await?;
        }
        Ok(())
    }
}

fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

/// Resolves the sources of `c` and digests them.
pub(super) async fn prepare(
    b: &Builder<'_>,
    c: &Copy,
    add: bool,
    line: usize,
    done: &HashMap<usize, State>,
) -> Result<Prepared> {
    let paths: Vec<&str> = c
        .sources
        .iter()
        .filter_map(|s| match s {
            Source::Path(p) => Some(p.as_str()),
            Source::Heredoc(_) => None,
        })
        .collect();
    let mut hasher = Sha256::new();
    for s in &c.sources {
        if let Source::Heredoc(h) = s {
            hasher.update(h.name.as_bytes());
            hasher.update(h.content.as_bytes());
        }
    }
    if let Some(from) = &c.from {
        let state = match b.stage_ref(from) {
            Some(i) => done
                .get(&i)
                .cloned()
                .ok_or_else(|| b.fail(line, format!("stage {from} is not built")))?,
            None => b.base_image(from).await.map_err(|e| {
                b.fail(
                    line,
                    format!("COPY --from={from}: no stage or image of that name: {e}"),
                )
            })?,
        };
        let chain = b.ensure_snapshot(&state).await?;
        hasher.update(chain.clone().unwrap_or_default().as_bytes());
        for p in &paths {
            hasher.update(p.as_bytes());
            hasher.update([0]);
        }
        let view = b.view(chain).await?;
        let mut prepared = Prepared {
            selected: Vec::new(),
            root: None,
            from_context: false,
            digest: String::new(),
            _downloads: None,
            mounted: None,
            view: view.as_ref().map(|(k, _)| k.clone()),
        };
        let empty = tempfile::Builder::new()
            .prefix(".from-")
            .tempdir_in(&b.opts.scratch)
            .map_err(Error::io("create a directory in", &b.opts.scratch))?;
        let root_path = match &view {
            Some((_, mounts)) => {
                let mounted = Mounted::temporary(mounts, &b.opts.scratch)
                    .map_err(Error::layer("mount the --from image"))?;
                let p = mounted.path().to_owned();
                prepared.mounted = Some(mounted);
                p
            }
            None => empty.path().to_owned(),
        };
        let root = open_dir(&root_path)?;
        for p in &paths {
            prepared
                .selected
                .extend(fsops::select(root.as_fd(), p, None).map_err(|m| b.fail(line, m))?);
        }
        prepared.root = Some(root);
        prepared.digest = hex::encode(hasher.finalize());
        return Ok(prepared);
    }
    let mut downloads = None;
    let mut selected = Vec::new();
    for p in &paths {
        if is_url(p) {
            if !add {
                return Err(b.fail(line, format!("COPY cannot fetch URLs ({p}): use ADD")));
            }
            let dir = match &downloads {
                Some(d) => d,
                None => downloads.insert(
                    tempfile::Builder::new()
                        .prefix(".add-")
                        .tempdir_in(&b.opts.scratch)
                        .map_err(Error::io("create a directory in", &b.opts.scratch))?,
                ),
            };
            let name = download(p, dir.path()).await.map_err(|m| b.fail(line, m))?;
            let root = open_dir(dir.path())?;
            let mut s = fsops::select(root.as_fd(), &name, None).map_err(|m| b.fail(line, m))?;
            for entry in &s {
                fsops::hash_entry(
                    entry.parent.as_fd(),
                    &entry.name,
                    Path::new(p),
                    None,
                    false,
                    &mut hasher,
                )
                .map_err(Error::io("read", dir.path().join(&name)))?;
            }
            selected.append(&mut s);
            continue;
        }
        let found = fsops::select(b.context.root_fd.as_fd(), p, Some(&b.context.matcher))
            .map_err(|m| b.fail(line, m))?;
        for entry in &found {
            fsops::hash_entry(
                entry.parent.as_fd(),
                &entry.name,
                &entry.rel,
                Some(&b.context.matcher),
                false,
                &mut hasher,
            )
            .map_err(Error::io("read", b.context.root.join(&entry.rel)))?;
        }
        selected.extend(found);
    }
    Ok(Prepared {
        selected,
        root: None,
        from_context: true,
        digest: hex::encode(hasher.finalize()),
        _downloads: downloads,
        mounted: None,
        view: None,
    })
}

fn open_dir(path: &Path) -> Result<OwnedFd> {
    rustix::fs::open(
        path,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| Error::io("open", path)(e.into()))
}

/// Writes the sources into a snapshot on top of `state` and adds the layer.
#[allow(clippy::too_many_arguments)]
pub(super) async fn apply(
    b: &Builder<'_>,
    state: &mut State,
    c: &Copy,
    add: bool,
    prepared: Prepared,
    line: usize,
    now: &str,
    created_by: &str,
) -> Result<()> {
    let parent = b.ensure_snapshot(state).await?;
    let base = if c.link { None } else { parent.clone() };
    let (key, mounts) = b.prepare(base.clone(), "copy").await?;
    let workdir = state.workdir();
    let result = write(b, c, add, &prepared, &mounts, &workdir, line).await;
    prepared.release(b).await?;
    if let Err(e) = result {
        let _ = b.remove_snapshot(&key).await;
        return Err(e);
    }
    // A --link layer is computed against nothing and not committed as a chain (its chain
    // is unpacked from the cache record when a later step needs it).
    b.commit_layer(state, &key, &mounts, base, !c.link, now, created_by)
        .await
}

/// The writing part, on a blocking thread with the snapshot mounted.
async fn write(
    b: &Builder<'_>,
    c: &Copy,
    add: bool,
    prepared: &Prepared,
    mounts: &[Mount],
    workdir: &str,
    line: usize,
) -> Result<()> {
    let dest = if c.dest.starts_with('/') {
        c.dest.clone()
    } else {
        format!("{}/{}", workdir.trim_end_matches('/'), c.dest)
    };
    let multiple = c.sources.len() > 1
        || c.sources
            .iter()
            .any(|s| matches!(s, Source::Path(p) if p.contains(['*', '?', '['])));
    let dest_dir_syntax = c.dest.ends_with('/') || c.dest == "." || c.dest.ends_with("/.");
    if multiple && !dest_dir_syntax {
        return Err(b.fail(
            line,
            format!(
                "when using {} with more than one source file, the destination must be a directory and end with a /",
                if add { "ADD" } else { "COPY" }
            ),
        ));
    }
    let dest_rel = fsops::clean(&dest).unwrap_or_default();
    let mounts = mounts.to_vec();
    let scratch = b.opts.scratch.clone();
    let chown = c.chown.clone();
    let chmod =
        match &c.chmod {
            Some(m) => Some(u32::from_str_radix(m, 8).map_err(|_| {
                b.fail(line, format!("invalid --chmod={m}: expected an octal mode"))
            })?),
            None => None,
        };
    let from_context = prepared.from_context;
    let matcher = from_context.then(|| b.context.matcher.clone());
    let sources: Vec<(OwnedFd, OsString, PathBuf, bool)> = prepared
        .selected
        .iter()
        .map(|s| {
            Ok((
                rustix::io::dup(&s.parent).map_err(|e| Error::io("dup", &s.rel)(e.into()))?,
                s.name.clone(),
                s.rel.clone(),
                s.kind == rustix::fs::FileType::Directory,
            ))
        })
        .collect::<Result<_>>()?;
    let heredocs: Vec<(String, String)> = c
        .sources
        .iter()
        .filter_map(|s| match s {
            Source::Heredoc(h) => Some((h.name.clone(), h.content.clone())),
            Source::Path(_) => None,
        })
        .collect();
    let file = b.file.clone();
    let fail = move |message: String| Error::Step {
        file: file.clone(),
        line,
        message,
        exit_code: None,
    };
    tokio::task::spawn_blocking(move || -> Result<()> {
        let mounted = Mounted::temporary(&mounts, &scratch)
            .map_err(Error::layer("mount the step's snapshot"))?;
        let root = open_dir(mounted.path())?;
        let owner = match &chown {
            None => None,
            Some(spec) => Some(resolve_owner(mounted.path(), spec).map_err(&fail)?),
        };
        let attrs = Attrs {
            owner: if from_context {
                Some(owner.unwrap_or((0, 0)))
            } else {
                owner
            },
            mode: chmod,
        };
        let dir_owner = owner.unwrap_or((0, 0));
        let dest_is_dir =
            dest_dir_syntax || multiple || fsops::open_dir_in_root(root.as_fd(), &dest_rel).is_ok();
        let io = |e: std::io::Error| fail(format!("cannot copy to {dest}: {e}"));
        for (parent, name, rel, is_dir) in &sources {
            if *is_dir {
                let dst = fsops::mkdir_all(root.as_fd(), &dest_rel, dir_owner).map_err(io)?;
                let src = rustix::fs::openat(
                    parent,
                    name,
                    rustix::fs::OFlags::RDONLY
                        | rustix::fs::OFlags::DIRECTORY
                        | rustix::fs::OFlags::NOFOLLOW
                        | rustix::fs::OFlags::CLOEXEC,
                    rustix::fs::Mode::empty(),
                )
                .map_err(|e| io(e.into()))?;
                let dest = fsops::Dest {
                    root: root.as_fd(),
                    dir: dst.as_fd(),
                    rel: &dest_rel,
                };
                fsops::copy_children(src.as_fd(), rel, dest, attrs, matcher.as_ref())
                    .map_err(io)?;
                continue;
            }
            if add
                && from_context
                && let Some(archive) = open_archive(parent.as_fd(), name)
            {
                let dst = fsops::mkdir_all(root.as_fd(), &dest_rel, dir_owner).map_err(io)?;
                berth_snapshots::layer::apply(
                    &fsops::fd_path(dst.as_fd()),
                    archive,
                    &Default::default(),
                )
                .map_err(|e| fail(format!("cannot extract {}: {e}", rel.display())))?;
                continue;
            }
            let (dir, target) = if dest_is_dir {
                (dest_rel.clone(), name.clone())
            } else {
                (
                    dest_rel.parent().map(Path::to_owned).unwrap_or_default(),
                    dest_rel
                        .file_name()
                        .map(|n| n.to_owned())
                        .unwrap_or_else(|| name.clone()),
                )
            };
            let dst = fsops::mkdir_all(root.as_fd(), &dir, dir_owner).map_err(io)?;
            let dest = fsops::Dest {
                root: root.as_fd(),
                dir: dst.as_fd(),
                rel: &dir,
            };
            fsops::copy_entry(
                parent.as_fd(),
                name,
                rel,
                dest,
                &target,
                attrs,
                matcher.as_ref(),
            )
            .map_err(io)?;
        }
        for (name, content) in &heredocs {
            let (dir, target) = if dest_is_dir {
                (dest_rel.clone(), OsString::from(name))
            } else {
                (
                    dest_rel.parent().map(Path::to_owned).unwrap_or_default(),
                    dest_rel
                        .file_name()
                        .map(|n| n.to_owned())
                        .unwrap_or_else(|| name.into()),
                )
            };
            let dst = fsops::mkdir_all(root.as_fd(), &dir, dir_owner).map_err(io)?;
            fsops::write_file(
                dst.as_fd(),
                &target,
                content.as_bytes(),
                chmod.unwrap_or(0o644),
                dir_owner,
            )
            .map_err(io)?;
        }
        drop(root);
        drop(mounted);
        Ok(())
    })
    .await
    .map_err(|e| Error::Invalid(format!("copy panicked: {e}")))?
}

/// `--chown` as uid and gid, names resolved in the image's /etc/passwd and /etc/group.
fn resolve_owner(rootfs: &Path, spec: &str) -> std::result::Result<(u32, u32), String> {
    let (user, group) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    if let Ok(uid) = user.parse::<u32>()
        && group.is_none_or(|g| g.parse::<u32>().is_ok())
    {
        return Ok((uid, group.map_or(uid, |g| g.parse().unwrap_or(uid))));
    }
    let resolved = berth_tasks::user::resolve(rootfs, spec)
        .map_err(|e| format!("invalid --chown={spec}: {e}"))?;
    Ok((resolved.uid, resolved.gid))
}

/// The file as a tar stream if it is a (plain or gzip) tar archive.
fn open_archive(dir: std::os::fd::BorrowedFd<'_>, name: &std::ffi::OsStr) -> Option<Box<dyn Read>> {
    let fd = rustix::fs::openat(
        dir,
        name,
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .ok()?;
    let mut file = std::fs::File::from(fd);
    let mut head = [0u8; 512];
    let mut n = 0;
    while n < head.len() {
        match file.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(_) => return None,
        }
    }
    std::io::Seek::seek(&mut file, std::io::SeekFrom::Start(0)).ok()?;
    if head[..n].starts_with(&[0x1f, 0x8b]) {
        let mut gz = flate2::read::GzDecoder::new(file);
        let mut inner = [0u8; 512];
        let mut m = 0;
        while m < inner.len() {
            match gz.read(&mut inner[m..]) {
                Ok(0) => break,
                Ok(k) => m += k,
                Err(_) => return None,
            }
        }
        if m == 512 && &inner[257..262] == b"ustar" {
            let fd = rustix::fs::openat(
                dir,
                name,
                rustix::fs::OFlags::RDONLY
                    | rustix::fs::OFlags::NOFOLLOW
                    | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .ok()?;
            return Some(Box::new(flate2::read::GzDecoder::new(std::fs::File::from(
                fd,
            ))));
        }
        return None;
    }
    (n == 512 && &head[257..262] == b"ustar").then(|| Box::new(file) as Box<dyn Read>)
}

/// Downloads `url` (plain HTTP/1.1) into `dir`; returns the file's name.
async fn download(url: &str, dir: &Path) -> std::result::Result<String, String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| {
        format!("ADD {url}: only http:// URLs are supported (fetch https sources with RUN or into the context)")
    })?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let name = path
        .split(['?', '#'])
        .next()
        .and_then(|p| p.rsplit('/').next())
        .filter(|n| !n.is_empty() && *n != "." && *n != "..")
        .unwrap_or("index.html")
        .to_owned();
    let host = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let fail = |e: std::io::Error| format!("ADD {url}: {e}");
    let mut stream = tokio::time::timeout(
        std::time::Duration::from_secs(30),
        tokio::net::TcpStream::connect(&host),
    )
    .await
    .map_err(|_| format!("ADD {url}: connection timed out"))?
    .map_err(fail)?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nUser-Agent: berth-build\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.map_err(fail)?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if head.len() > 64 * 1024 || stream.read(&mut byte).await.map_err(fail)? == 0 {
            return Err(format!("ADD {url}: the server sent no complete response"));
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let status = head.split_whitespace().nth(1).unwrap_or_default();
    if status != "200" {
        return Err(format!(
            "ADD {url}: the server answered {}",
            head.lines().next().unwrap_or_default()
        ));
    }
    let header = |name: &str| {
        head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_owned())
        })
    };
    if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        return Err(format!("ADD {url}: chunked responses are not supported"));
    }
    let length: Option<u64> = header("content-length").and_then(|v| v.parse().ok());
    let path = dir.join(&name);
    let mut file = tokio::fs::File::create(&path).await.map_err(fail)?;
    let mut body = (&mut stream).take(length.unwrap_or(MAX_DOWNLOAD + 1));
    let copied = tokio::io::copy(&mut body, &mut file).await.map_err(fail)?;
    if copied > MAX_DOWNLOAD {
        return Err(format!("ADD {url}: larger than {MAX_DOWNLOAD} bytes"));
    }
    if length.is_some_and(|l| l != copied) {
        return Err(format!("ADD {url}: the body ended after {copied} bytes"));
    }
    file.flush().await.map_err(fail)?;
    drop(file);
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(fail)?;
    Ok(name)
}
