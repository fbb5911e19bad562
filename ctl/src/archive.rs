//! `berthctl save`, `load` and `import`: image archives through the images service's Export and
//! Import RPCs.
//!
//! The service does the work on tar streams (OCI image layout or docker-archive, see
//! `berth_images::archive`); this side only moves bytes. `load` of an OCI layout *directory*
//! tars the directory up on the fly. `import` of a plain rootfs tarball is done here: berthctl
//! hashes the tarball (and its uncompressed form), writes the image config (with the
//! `--change` instructions) and a manifest, and sends the result to Import as a one-image OCI
//! layout, so the service verifies and records it like any other archive.

use std::fs::File;
use std::io::{self, IsTerminal, Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::SystemTime;

use anyhow::{Context as _, bail};
use berth_api::Service;
use berth_api::berth::images::v1 as pb;
use berth_api::berth::images::v1::images_client::ImagesClient;
use berth_api::berth::types::v1::Platform;
use serde_json::{Map, Value, json};
use sha2::{Digest as _, Sha256};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use crate::content::rpc;
use crate::context::Context;
use crate::image::{familiar, host_arch};
use crate::pull::{parse_platform, parse_platforms};

/// Largest chunk sent in one Import message.
const CHUNK: usize = 1 << 20;

#[derive(clap::Args)]
pub struct SaveArgs {
    /// Write to this file instead of stdout (Docker's `-o`, which is berthctl's global output
    /// format flag).
    #[arg(long, short = 'f')]
    file: Option<PathBuf>,
    /// Archive layout: `oci` (OCI image layout, which `docker load` also reads) or `docker`
    /// (docker-archive, one platform per image).
    #[arg(long, default_value = "oci", value_parser = ["oci", "docker"])]
    format: String,
    /// Platform to include from multi-platform images (os/arch[/variant]); default: the
    /// host's. Repeatable.
    #[arg(long)]
    platform: Vec<String>,
    /// Include every platform of multi-platform images.
    #[arg(long)]
    all_platforms: bool,
    /// Images to save.
    #[arg(required = true)]
    images: Vec<String>,
}

#[derive(clap::Args)]
pub struct LoadArgs {
    /// Read from this tar archive (or OCI image layout directory, or extracted docker-archive)
    /// instead of stdin.
    #[arg(long, short = 'i')]
    input: Option<PathBuf>,
    /// An OCI image layout directory or an archive (the same as -i).
    path: Option<PathBuf>,
    /// Name images as BASE:<ref name> when the archive's names are bare tags, and name unnamed
    /// ones BASE@<digest>.
    #[arg(long)]
    base_name: Option<String>,
    /// Platform whose content must be in the archive (os/arch[/variant]); default: the host's.
    #[arg(long)]
    platform: Vec<String>,
    /// Accept multi-platform images with any subset of their platforms.
    #[arg(long)]
    all_platforms: bool,
    /// Print only the names of the loaded images.
    #[arg(long, short = 'q')]
    quiet: bool,
}

#[derive(clap::Args)]
pub struct ImportArgs {
    /// Dockerfile instruction to apply to the image config: CMD, ENTRYPOINT, ENV, EXPOSE,
    /// LABEL, USER, WORKDIR, VOLUME or STOPSIGNAL (repeatable).
    #[arg(long, short = 'c')]
    change: Vec<String>,
    /// Commit message recorded in the image's history.
    #[arg(long, short = 'm')]
    message: Option<String>,
    /// Platform to record (os/arch[/variant]); default: the host's.
    #[arg(long)]
    platform: Option<String>,
    /// The rootfs tarball (plain or gzip), or `-` for stdin.
    file: String,
    /// Name of the new image; default: an untagged `import@<digest>`.
    reference: Option<String>,
}

/// Writes what it is given as Export's opposite: Import messages of at most [`CHUNK`] bytes.
struct ChunkSender {
    tx: mpsc::Sender<pb::ImportRequest>,
    buf: Vec<u8>,
}

impl ChunkSender {
    fn send(&mut self) -> io::Result<()> {
        let data = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        self.tx
            .blocking_send(pb::ImportRequest {
                options: None,
                data,
            })
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the images service stopped reading",
                )
            })
    }
}

impl Write for ChunkSender {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.buf.is_empty() {
            true => Ok(()),
            false => self.send(),
        }
    }
}

/// Streams the archive `produce` writes to the Import RPC; returns the recorded images.
async fn import_stream(
    ctx: &Context,
    options: pb::ImportOptions,
    produce: impl FnOnce(&mut ChunkSender) -> anyhow::Result<()> + Send + 'static,
) -> anyhow::Result<Vec<pb::Image>> {
    let mut images = ImagesClient::new(ctx.connect(Service::Images).await?);
    let (tx, rx) = mpsc::channel(4);
    tx.send(pb::ImportRequest {
        options: Some(options),
        data: Vec::new(),
    })
    .await?;
    let producer = tokio::task::spawn_blocking(move || {
        let mut out = ChunkSender {
            tx,
            buf: Vec::with_capacity(CHUNK),
        };
        produce(&mut out)?;
        out.flush()?;
        Ok::<_, anyhow::Error>(())
    });
    let answer = images.import(ReceiverStream::new(rx)).await;
    let produced = producer.await?;
    // The service's answer says more than a broken pipe on this side.
    let answer = answer.map_err(rpc)?;
    produced?;
    Ok(answer.into_inner().images)
}

/// Copies a tar archive from `input` to `out`, decompressing gzip as `docker load` does.
fn copy_archive(mut input: impl Read, out: &mut ChunkSender) -> anyhow::Result<()> {
    let mut head = [0u8; 2];
    let n = read_head(&mut input, &mut head)?;
    let input = io::Cursor::new(head[..n].to_vec()).chain(input);
    if head[..n] == [0x1f, 0x8b] {
        io::copy(&mut flate2::read::GzDecoder::new(input), out).context("decompressing")?;
    } else {
        io::copy(&mut { input }, out).context("reading the archive")?;
    }
    Ok(())
}

fn read_head(input: &mut impl Read, head: &mut [u8]) -> io::Result<usize> {
    let mut n = 0;
    while n < head.len() {
        match input.read(&mut head[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// `berthctl load`: imports an archive (file, stdin or OCI layout directory).
pub async fn load(ctx: &Context, args: LoadArgs) -> anyhow::Result<ExitCode> {
    let source = match (args.input, args.path) {
        (Some(_), Some(_)) => bail!("give the archive either with -i or as an argument, not both"),
        (a, b) => a.or(b),
    };
    if source.is_none() && io::stdin().is_terminal() {
        bail!("requested load from stdin, but stdin is empty: use -i FILE or pipe an archive");
    }
    let options = pb::ImportOptions {
        base_name: args.base_name.unwrap_or_default(),
        platforms: parse_platforms(&args.platform)?,
        all_platforms: args.all_platforms,
        ..Default::default()
    };
    let images = import_stream(ctx, options, move |out| match source {
        None => copy_archive(io::stdin().lock(), out),
        Some(path) if path.is_dir() => tar_dir(&path, out),
        Some(path) => {
            let file =
                File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
            copy_archive(file, out)
        }
    })
    .await?;
    for image in images {
        match args.quiet {
            true => println!("{}", familiar(&image.name)),
            false => println!("Loaded image: {}", familiar(&image.name)),
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Tars up an OCI image layout directory (or an extracted docker-archive), paths relative to
/// it, symlinks kept as symlinks.
fn tar_dir(dir: &Path, out: &mut ChunkSender) -> anyhow::Result<()> {
    if !dir.join("index.json").is_file() && !dir.join("manifest.json").is_file() {
        bail!(
            "{} is not an OCI image layout (no index.json) nor an extracted docker-archive \
             (no manifest.json)",
            dir.display()
        );
    }
    let mut tar = tar::Builder::new(out);
    tar.follow_symlinks(false);
    tar.append_dir_all(".", dir)
        .with_context(|| format!("reading {}", dir.display()))?;
    tar.finish().context("sending the layout")?;
    Ok(())
}

/// `berthctl save`: writes images as a tar archive to a file or stdout.
pub async fn save(ctx: &Context, args: SaveArgs) -> anyhow::Result<ExitCode> {
    if args.file.is_none() && io::stdout().is_terminal() {
        bail!("cowardly refusing to save to a terminal: use -f FILE or redirect stdout");
    }
    let request = pb::ExportRequest {
        names: args.images,
        format: match args.format.as_str() {
            "docker" => pb::ArchiveFormat::DockerArchive,
            _ => pb::ArchiveFormat::OciLayout,
        } as i32,
        platforms: parse_platforms(&args.platform)?,
        all_platforms: args.all_platforms,
        skip_missing: false,
    };
    let mut images = ImagesClient::new(ctx.connect(Service::Images).await?);
    let mut stream = images.export(request).await.map_err(rpc)?.into_inner();
    // A file is written beside its destination and renamed into place once complete.
    let (mut out, temp): (Box<dyn Write>, _) = match &args.file {
        Some(path) => {
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            let temp = tempfile::NamedTempFile::new_in(dir)
                .with_context(|| format!("cannot write in {}", dir.display()))?;
            let file = temp.reopen()?;
            (Box::new(io::BufWriter::new(file)), Some(temp))
        }
        None => (Box::new(io::stdout().lock()), None),
    };
    while let Some(chunk) = stream.next().await {
        out.write_all(&chunk.map_err(rpc)?.data)?;
    }
    out.flush()?;
    drop(out);
    if let (Some(temp), Some(path)) = (temp, &args.file) {
        // A temp file is created 0600; the archive gets the usual 0666 less the umask.
        let mask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o022));
        nix::sys::stat::umask(mask);
        let mode = 0o666 & !mask.bits();
        std::fs::set_permissions(
            temp.path(),
            std::os::unix::fs::PermissionsExt::from_mode(mode),
        )?;
        temp.persist(path)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// sha256 and size of what passes through.
struct Hashing<R> {
    inner: R,
    hasher: Sha256,
    size: u64,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}

impl<R> Hashing<R> {
    fn new(inner: R) -> Self {
        Hashing {
            inner,
            hasher: Sha256::new(),
            size: 0,
        }
    }

    fn digest(&self) -> String {
        format!("sha256:{}", hex::encode(self.hasher.clone().finalize()))
    }
}

/// Digest and size of the tarball, and the digest of its uncompressed tar (checked to be one).
struct Layer {
    digest: String,
    size: u64,
    diff_id: String,
    gzip: bool,
}

fn hash_layer(file: &mut File) -> anyhow::Result<Layer> {
    let mut compressed = Hashing::new(&mut *file);
    let mut head = [0u8; 2];
    let n = read_head(&mut compressed, &mut head)?;
    let gzip = head[..n] == [0x1f, 0x8b];
    let rest = io::Cursor::new(head[..n].to_vec()).chain(&mut compressed);
    let (diff_id, entries) = {
        let tar: Box<dyn Read> = match gzip {
            true => Box::new(flate2::read::GzDecoder::new(rest)),
            false => Box::new(rest),
        };
        let mut plain = Hashing::new(tar);
        let mut archive = tar::Archive::new(&mut plain);
        let mut entries = 0;
        for entry in archive.entries().context("not a tar archive")? {
            entry.context("not a valid tar archive")?;
            entries += 1;
        }
        io::copy(&mut plain, &mut io::sink())?;
        (plain.digest(), entries)
    };
    io::copy(&mut compressed, &mut io::sink())?;
    if entries == 0 {
        bail!("the tarball holds no files");
    }
    Ok(Layer {
        digest: compressed.digest(),
        size: compressed.size,
        diff_id,
        gzip,
    })
}

/// `berthctl import`: a one-layer image from a rootfs tarball, like `docker import`.
pub async fn import(ctx: &Context, args: ImportArgs) -> anyhow::Result<ExitCode> {
    let mut file = match args.file.as_str() {
        "-" => {
            if io::stdin().is_terminal() {
                bail!("requested import from stdin, but stdin is a terminal: pipe a tarball");
            }
            let mut temp = tempfile::tempfile().context("cannot create a temporary file")?;
            io::copy(&mut io::stdin().lock(), &mut temp).context("reading stdin")?;
            temp.rewind()?;
            temp
        }
        path if path.contains("://") => {
            bail!("importing from a URL is not supported: download {path} first")
        }
        path => File::open(path).with_context(|| format!("cannot open {path}"))?,
    };
    let mut config = Map::new();
    for change in &args.change {
        apply_change(&mut config, change)?;
    }
    let layer = hash_layer(&mut file)
        .with_context(|| format!("{} is not a plain or gzip tar archive", args.file))?;
    file.rewind()?;
    let platform = match &args.platform {
        Some(p) => parse_platform(p)?,
        None => Platform {
            os: "linux".into(),
            architecture: host_arch().into(),
            ..Default::default()
        },
    };
    let created = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    let comment = args
        .message
        .clone()
        .unwrap_or_else(|| format!("Imported from {}", args.file));
    let mut image_config = json!({
        "created": created,
        "architecture": platform.architecture,
        "os": platform.os,
        "config": config,
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id]},
        "history": [{"created": created, "created_by": "", "comment": comment}],
    });
    if !platform.variant.is_empty() {
        image_config["variant"] = json!(platform.variant);
    }
    let config_bytes = serde_json::to_vec(&image_config)?;
    let config_digest = format!("sha256:{}", hex::encode(Sha256::digest(&config_bytes)));
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_bytes.len(),
        },
        "layers": [{
            "mediaType": match layer.gzip {
                true => "application/vnd.oci.image.layer.v1.tar+gzip",
                false => "application/vnd.oci.image.layer.v1.tar",
            },
            "digest": layer.digest,
            "size": layer.size,
        }],
    });
    let manifest_bytes = serde_json::to_vec(&manifest)?;
    let manifest_digest = format!("sha256:{}", hex::encode(Sha256::digest(&manifest_bytes)));
    let mut entry = json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": manifest_digest,
        "size": manifest_bytes.len(),
    });
    if let Some(name) = &args.reference {
        entry["annotations"] = json!({ "io.containerd.image.name": name });
    }
    let index = serde_json::to_vec(&json!({"schemaVersion": 2, "manifests": [entry]}))?;
    let options = pb::ImportOptions {
        base_name: "import".into(),
        format: pb::ArchiveFormat::OciLayout as i32,
        platforms: vec![platform],
        ..Default::default()
    };
    let id = config_digest.clone();
    import_stream(ctx, options, move |out| {
        let mut tar = tar::Builder::new(out);
        let mut append = |path: &str, size: u64, data: &mut dyn Read| {
            let mut header = tar::Header::new_gnu();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(size);
            header.set_mode(0o644);
            tar.append_data(&mut header, path, data)
        };
        let blob = |d: &str| format!("blobs/sha256/{}", d.trim_start_matches("sha256:"));
        let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
        append("oci-layout", layout.len() as u64, &mut &layout[..])?;
        append(&blob(&layer.digest), layer.size, &mut file)?;
        append(
            &blob(&config_digest),
            config_bytes.len() as u64,
            &mut &config_bytes[..],
        )?;
        append(
            &blob(&manifest_digest),
            manifest_bytes.len() as u64,
            &mut &manifest_bytes[..],
        )?;
        append("index.json", index.len() as u64, &mut &index[..])?;
        tar.finish()?;
        Ok(())
    })
    .await?;
    // Like `docker import`: the image ID.
    println!("{id}");
    Ok(ExitCode::SUCCESS)
}

/// Splits `s` into words the way a Dockerfile does for ENV and LABEL: whitespace separates,
/// quotes group, a backslash escapes the next character.
fn words(s: &str) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote = None;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match (c, quote) {
            ('\\', q) if q != Some('\'') => {
                if let Some(next) = chars.next() {
                    word.push(next);
                }
                in_word = true;
            }
            ('"' | '\'', None) => {
                quote = Some(c);
                in_word = true;
            }
            (c, Some(q)) if c == q => quote = None,
            (c, None) if c.is_whitespace() => {
                if in_word {
                    out.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            (c, _) => {
                word.push(c);
                in_word = true;
            }
        }
    }
    if quote.is_some() {
        bail!("unterminated quote in {s:?}");
    }
    if in_word {
        out.push(word);
    }
    Ok(out)
}

/// `key=value` pairs (or the legacy `key value` form when `legacy` allows it).
fn pairs(rest: &str, legacy: bool) -> anyhow::Result<Vec<(String, String)>> {
    let first = rest.split_whitespace().next().unwrap_or_default();
    if legacy && !first.contains('=') {
        let value = rest[rest.find(first).unwrap_or(0) + first.len()..].trim();
        if value.is_empty() {
            bail!("ENV {first} needs a value (ENV key=value or ENV key value)");
        }
        return Ok(vec![(first.to_owned(), value.to_owned())]);
    }
    words(rest)?
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => bail!("{w:?} is not key=value"),
        })
        .collect()
}

/// JSON (`["a", "b"]`) or shell form (`a b` -> `["/bin/sh", "-c", "a b"]`).
fn command(rest: &str) -> Value {
    match serde_json::from_str::<Vec<String>>(rest) {
        Ok(args) => json!(args),
        Err(_) => json!(["/bin/sh", "-c", rest]),
    }
}

/// Applies one `--change` Dockerfile instruction to an image config's `config` object.
fn apply_change(config: &mut Map<String, Value>, change: &str) -> anyhow::Result<()> {
    let change = change.trim();
    let (instruction, rest) = change
        .split_once(char::is_whitespace)
        .map_or((change, ""), |(i, r)| (i, r.trim()));
    let instruction = instruction.to_ascii_uppercase();
    if rest.is_empty() {
        bail!("--change {change:?}: {instruction} needs an argument");
    }
    let object = |config: &mut Map<String, Value>, key: &str| -> Map<String, Value> {
        config
            .get(key)
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    };
    match instruction.as_str() {
        "CMD" => {
            config.insert("Cmd".into(), command(rest));
        }
        "ENTRYPOINT" => {
            config.insert("Entrypoint".into(), command(rest));
        }
        "ENV" => {
            let mut env: Vec<Value> = config
                .get("Env")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for (k, v) in pairs(rest, true)? {
                let prefix = format!("{k}=");
                env.retain(|e| !e.as_str().is_some_and(|e| e.starts_with(&prefix)));
                env.push(json!(format!("{k}={v}")));
            }
            config.insert("Env".into(), json!(env));
        }
        "LABEL" => {
            let mut labels = object(config, "Labels");
            for (k, v) in pairs(rest, false)? {
                labels.insert(k, json!(v));
            }
            config.insert("Labels".into(), json!(labels));
        }
        "EXPOSE" => {
            let mut ports = object(config, "ExposedPorts");
            for port in rest.split_whitespace() {
                let (number, proto) = port.split_once('/').unwrap_or((port, "tcp"));
                let valid = number.parse::<u16>().is_ok_and(|n| n > 0)
                    && ["tcp", "udp", "sctp"].contains(&proto.to_ascii_lowercase().as_str());
                if !valid {
                    bail!(
                        "--change {change:?}: invalid port {port:?} (expected PORT[/tcp|udp|sctp])"
                    );
                }
                ports.insert(
                    format!("{number}/{}", proto.to_ascii_lowercase()),
                    json!({}),
                );
            }
            config.insert("ExposedPorts".into(), json!(ports));
        }
        "WORKDIR" => {
            let current = config
                .get("WorkingDir")
                .and_then(Value::as_str)
                .unwrap_or("/");
            let dir = match rest.starts_with('/') {
                true => rest.to_owned(),
                false => format!("{}/{rest}", current.trim_end_matches('/')),
            };
            config.insert("WorkingDir".into(), json!(dir));
        }
        "USER" => {
            config.insert("User".into(), json!(rest));
        }
        "VOLUME" => {
            let mut volumes = object(config, "Volumes");
            let paths = serde_json::from_str::<Vec<String>>(rest)
                .unwrap_or_else(|_| rest.split_whitespace().map(str::to_owned).collect());
            for path in paths {
                volumes.insert(path, json!({}));
            }
            config.insert("Volumes".into(), json!(volumes));
        }
        "STOPSIGNAL" => {
            config.insert("StopSignal".into(), json!(rest));
        }
        other => bail!(
            "--change {change:?}: {other} is not supported (CMD, ENTRYPOINT, ENV, EXPOSE, LABEL, \
             USER, WORKDIR, VOLUME, STOPSIGNAL are)"
        ),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(changes: &[&str]) -> Value {
        let mut config = Map::new();
        for c in changes {
            apply_change(&mut config, c).unwrap();
        }
        Value::Object(config)
    }

    #[test]
    fn changes_are_parsed_like_docker() {
        let c = config(&[
            r#"CMD ["sh", "-c", "echo hi"]"#,
            "ENTRYPOINT /bin/run --fast",
            "ENV A=1 B=\"two words\"",
            "ENV LEGACY some value",
            "ENV A=3",
            "LABEL version=1.0 \"with space\"=yes",
            "EXPOSE 80 53/udp",
            "WORKDIR /srv",
            "WORKDIR app",
            "USER app:staff",
            "VOLUME [\"/data\"]",
        ]);
        assert_eq!(c["Cmd"], json!(["sh", "-c", "echo hi"]));
        assert_eq!(c["Entrypoint"], json!(["/bin/sh", "-c", "/bin/run --fast"]));
        assert_eq!(c["Env"], json!(["B=two words", "LEGACY=some value", "A=3"]));
        assert_eq!(c["Labels"], json!({"version": "1.0", "with space": "yes"}));
        assert_eq!(c["ExposedPorts"], json!({"80/tcp": {}, "53/udp": {}}));
        assert_eq!(c["WorkingDir"], "/srv/app");
        assert_eq!(c["User"], "app:staff");
        assert_eq!(c["Volumes"], json!({"/data": {}}));
        let mut m = Map::new();
        assert!(apply_change(&mut m, "RUN make").is_err());
        assert!(apply_change(&mut m, "EXPOSE 99999").is_err());
        assert!(apply_change(&mut m, "CMD").is_err());
        assert!(apply_change(&mut m, "LABEL novalue").is_err());
    }
}
