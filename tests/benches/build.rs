//! `berthctl build` against `buildah bud` (Debian's buildah, `--layers` so both cache per step,
//! `--runtime /usr/bin/runc` since its default crun refuses this host's hybrid cgroups, its own
//! temporary storage) on the same Dockerfile and context, in the same run: a cold build (empty
//! build cache, base image present) and a fully cached rebuild, median of `BENCH_ROUNDS`
//! (default 3) rounds each. The Dockerfile has 16 steps after FROM: ENV/LABEL/WORKDIR/USER/
//! EXPOSE/CMD, RUN steps that write files, and a COPY of the `big` image's first data layer
//! (~75 MB, ~1,100 files) as the context. RUN steps have no network on both sides.
//!
//! `cargo build --release --workspace && cargo bench -p berth-tests --bench build`, as root.
//! Not part of CI. `BERTH_BIN_DIR` names the binaries (default: the release directory this
//! bench is built into).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use berth_tests::bench::{big_image, env_or, median, ratio, run, summary};
use berth_tests::fixtures::images;
use berth_tests::{Berth, Mode};

const DOCKERFILE: &str = "FROM busybox-base
ENV APP=/app LEVEL=1
LABEL bench=build
WORKDIR /app
COPY data/ /app/data/
RUN mkdir -p /app/gen && for i in $(seq 1 200); do echo line $i > /app/gen/f$i; done
RUN cat /app/gen/* > /app/all.txt
ENV STAGE=two
RUN dd if=/dev/zero of=/app/zero.bin bs=1M count=8 2>/dev/null
RUN find /app -type f | wc -l > /app/count.txt
LABEL version=1
RUN echo done > /app/done && rm -f /app/gen/f1
WORKDIR /app/gen
RUN ls | wc -l > /app/gen-count.txt
USER 0
EXPOSE 8080
CMD [\"sh\"]
";

/// The context: the Dockerfile and the first data layer of the `big` image.
fn context(dir: &Path) -> Result<()> {
    let big = big_image()?;
    let data = big
        .layers
        .iter()
        .find(|l| l.ends_with("data-a.tar"))
        .context("no data-a layer")?;
    std::fs::create_dir_all(dir)?;
    run(Command::new("tar").arg("-xf").arg(data).arg("-C").arg(dir))?;
    ensure!(dir.join("data").is_dir(), "the data layer has no data/");
    std::fs::write(dir.join("Dockerfile"), DOCKERFILE)?;
    Ok(())
}

fn secs(started: Instant) -> f64 {
    started.elapsed().as_secs_f64()
}

/// One berth round: (cold seconds, cached seconds).
fn berth_round(ctx: &Path, layout: &Path) -> Result<(f64, f64)> {
    let berth = Berth::start(Mode::AllInOne)?;
    let tmp = berth.root().join("tmp");
    std::fs::create_dir_all(&tmp)?;
    run(berth.ctl().args(["load"]).arg(layout))?;
    run(berth.ctl().args(["tag", "busybox", "busybox-base"]))?;
    let build = |tag: &str| -> Result<(f64, String)> {
        nix::unistd::sync();
        let started = Instant::now();
        let out = berth
            .ctl()
            .env("TMPDIR", &tmp)
            .args(["build", "--progress", "plain", "-t", tag])
            .arg(ctx)
            .output()?;
        let elapsed = secs(started);
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        ensure!(out.status.success(), "berth build failed: {err}");
        Ok((elapsed, err))
    };
    let (cold, log) = build("bench:1")?;
    ensure!(
        !log.contains("CACHED"),
        "the cold build hit the cache: {log}"
    );
    let (cached, log) = build("bench:2")?;
    ensure!(
        log.matches("CACHED").count() == 16,
        "the rebuild was not fully cached: {log}"
    );
    berth.stop()?;
    Ok((cold, cached))
}

/// One buildah round in fresh storage: (cold seconds, cached seconds).
fn buildah_round(ctx: &Path, layout: &Path) -> Result<(f64, f64)> {
    let storage = tempfile::Builder::new()
        .prefix("buildah-bench-")
        .tempdir()?;
    let buildah = || {
        let mut cmd = Command::new("buildah");
        cmd.arg("--root")
            .arg(storage.path().join("root"))
            .arg("--runroot")
            .arg(storage.path().join("run"))
            .args(["--storage-driver", "overlay"]);
        cmd
    };
    let source = format!("oci:{}:{}", layout.display(), images::BUSYBOX_TAG);
    let id = run(buildah().args(["pull", "-q", &source]))?;
    run(buildah().args(["tag", id.trim(), "busybox-base"]))?;
    let build = |tag: &str| -> Result<(f64, String)> {
        nix::unistd::sync();
        let started = Instant::now();
        let out = buildah()
            .args([
                "bud",
                "--layers",
                "--pull-never",
                "--runtime",
                "/usr/bin/runc",
                "--isolation",
                "oci",
                "--network",
                "none",
                "-t",
                tag,
            ])
            .arg(ctx)
            .output()?;
        let elapsed = secs(started);
        let log = String::from_utf8_lossy(&out.stdout).into_owned();
        ensure!(
            out.status.success(),
            "buildah bud failed: {log}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok((elapsed, log))
    };
    let (cold, _) = build("bench:1")?;
    let (cached, log) = build("bench:2")?;
    ensure!(
        log.matches("Using cache").count() >= 15,
        "buildah's rebuild was not cached: {log}"
    );
    // Overlay mounts of buildah's storage are unmounted by `rmi`/reset; then the dir goes.
    let _ = buildah().args(["rmi", "-a", "-f"]).output();
    let _ = Command::new("umount")
        .arg("-R")
        .arg(storage.path().join("root/overlay"))
        .output();
    Ok((cold, cached))
}

/// A working directory removed on drop.
struct Work(std::path::PathBuf);

impl Work {
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn main() -> Result<()> {
    let rounds: usize = env_or("BENCH_ROUNDS", 3);
    // buildah names an image pulled from `oci:<dir>` after the directory: keep it lowercase.
    let work = Work(std::env::temp_dir().join(format!("berth-bench-build-{}", std::process::id())));
    std::fs::create_dir_all(work.path())?;
    let ctx = work.path().join("context");
    context(&ctx)?;
    let layout = work.path().join("layout");
    images::busybox_layout(&layout)?;
    let (mut berth_cold, mut berth_cached, mut ref_cold, mut ref_cached) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let (c, w) = berth_round(&ctx, &layout)?;
        let (rc, rw) = buildah_round(&ctx, &layout)?;
        println!(
            "round {round}: berth cold {c:.2} s cached {w:.2} s | buildah cold {rc:.2} s cached {rw:.2} s"
        );
        berth_cold.push(c);
        berth_cached.push(w);
        ref_cold.push(rc);
        ref_cached.push(rw);
    }
    let (c, w, rc, rw) = (
        median(&berth_cold),
        median(&berth_cached),
        median(&ref_cold),
        median(&ref_cached),
    );
    println!("build, 16 steps + FROM, ~75 MB context, median of {rounds}:");
    println!(
        "  cold:   berth {c:.2} s, buildah {rc:.2} s, ratio {}",
        ratio(c, rc)
    );
    println!(
        "  cached: berth {w:.2} s, buildah {rw:.2} s, ratio {}",
        ratio(w, rw)
    );
    summary(
        "build, cold (vs buildah bud --layers)",
        c,
        rc,
        "s",
        "<= 0.5",
    );
    summary(
        "build, fully cached (vs buildah bud --layers)",
        w,
        rw,
        "s",
        "<= 0.5",
    );
    Ok(())
}
