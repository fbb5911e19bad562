//! `berthctl build` end to end, against real services: a base image from scratch and a rootfs
//! tar, multi-stage `COPY --from`, ONBUILD triggers, `.dockerignore`, the cache (unchanged
//! rebuilds are all hits with the same digest; a changed input re-runs exactly the steps from
//! there), a push to a loopback registry read back with skopeo, and every bad input the issue
//! lists (nothing is left behind by a failed build).
//!
//! Each test runs its own berth (own bridge, nft table and cgroup parent); berthctl's temporary
//! directory is inside the instance, so the harness's leak check also sees build mounts.

use std::path::Path;

use anyhow::{Context, Result, ensure};
use berth_tests::ctl_env::CtlEnv;
use berth_tests::fixtures::images;
use berth_tests::fixtures::registry::Registry;

/// The shared berthctl test instance, with this file's helpers.
struct Env(CtlEnv);

impl std::ops::Deref for Env {
    type Target = CtlEnv;
    fn deref(&self) -> &CtlEnv {
        &self.0
    }
}

impl Env {
    fn start() -> Result<Env> {
        Ok(Env(CtlEnv::start('b')?))
    }

    /// A build that must succeed: (image id, progress on stderr).
    fn build(&self, context: &Path, extra: &[&str]) -> Result<(String, String)> {
        let mut args = vec!["build", "--progress", "plain"];
        args.extend(extra);
        let ctx = context.to_str().context("utf-8")?;
        args.push(ctx);
        let out = self.ctl(&args)?;
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        ensure!(
            out.status.success(),
            "build {args:?} failed ({}): {err}",
            out.status
        );
        let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        ensure!(
            id.starts_with("sha256:") && id.len() == 71,
            "image id {id:?}"
        );
        Ok((id, err))
    }

    /// A build that must fail: (exit code, stderr).
    fn build_fails(&self, context: &Path, extra: &[&str]) -> Result<(i32, String)> {
        let mut args = vec!["build", "--progress", "plain"];
        args.extend(extra);
        args.push(context.to_str().context("utf-8")?);
        let out = self.ctl(&args)?;
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        ensure!(
            !out.status.success(),
            "build {args:?} should have failed: {err}"
        );
        Ok((out.status.code().unwrap_or(-1), err))
    }

    /// A new context directory with `files` (path, content).
    fn context(&self, name: &str, files: &[(&str, &str)]) -> Result<std::path::PathBuf> {
        let dir = self.path(name);
        for (path, content) in files {
            let p = dir.join(path);
            std::fs::create_dir_all(p.parent().context("parent")?)?;
            std::fs::write(p, content)?;
        }
        Ok(dir)
    }

    /// Output of `run --rm IMAGE ARGS...`.
    fn run(&self, image: &str, args: &[&str]) -> Result<String> {
        let mut a = vec!["run", "--rm", "--network", "none", image];
        a.extend(args);
        self.ok(&a)
    }

    /// Nothing a build makes may remain: containers, active snapshots, leases.
    fn nothing_left(&self) -> Result<()> {
        let ps = self.ok(&["ps", "-aq"])?;
        ensure!(ps.trim().is_empty(), "containers left: {ps}");
        let active = self.ok(&["snapshot", "ls", "--filter", "kind==active"])?;
        ensure!(
            active.lines().filter(|l| l.contains("build-")).count() == 0,
            "active snapshots left: {active}"
        );
        let views = self.ok(&["snapshot", "ls", "--filter", "kind==view"])?;
        ensure!(
            views.lines().filter(|l| l.contains("build-")).count() == 0,
            "views left: {views}"
        );
        let tmp = std::fs::read_dir(self.berth().root().join("tmp"))?.count();
        ensure!(tmp == 0, "temporary files left: {tmp}");
        Ok(())
    }

    fn stop(self) -> Result<()> {
        self.0.stop()
    }
}

fn count(haystack: &str, needle: &str) -> usize {
    haystack.matches(needle).count()
}

#[test]
fn base_image_from_scratch_with_a_rootfs_tar_runs() -> Result<()> {
    let env = Env::start()?;
    let ctx = env.context(
        "base",
        &[(
            "Dockerfile",
            "FROM scratch\n\
             ADD rootfs.tar /\n\
             LABEL org.example.name=\"base image\" \\\n      org.example.version=1.0\n\
             ENV GREETING=hello\n\
             WORKDIR /srv/app\n\
             CMD [\"sh\", \"-c\", \"echo $GREETING from $(pwd)\"]\n",
        )],
    )?;
    // The busybox fixture's layer tar, as a context file: ADD unpacks it.
    std::fs::write(ctx.join("rootfs.tar"), images::busybox_layer()?.tar)?;
    let (id, progress) = env.build(&ctx, &["-t", "base:1"])?;
    ensure!(progress.contains("[2/6] ADD rootfs.tar /"), "{progress}");
    ensure!(progress.contains("DONE"), "{progress}");
    let out = env.run("base:1", &[])?;
    ensure!(out.trim() == "hello from /srv/app", "{out}");
    let inspect: serde_json::Value =
        serde_json::from_str(&env.ok(&["image", "inspect", "base:1"])?)?;
    let text = inspect.to_string();
    ensure!(
        text.contains("\"org.example.name\":\"base image\""),
        "{text}"
    );
    ensure!(text.contains("\"org.example.version\":\"1.0\""), "{text}");
    ensure!(text.contains(&id), "{id} not in {text}");
    let images = env.ok(&["images"])?;
    ensure!(images.contains("base"), "{images}");
    ensure!(
        !images.contains("build-cache"),
        "cache records listed: {images}"
    );
    env.nothing_left()?;
    env.stop()
}

#[test]
fn multi_stage_copy_from_and_onbuild_triggers() -> Result<()> {
    let env = Env::start()?;
    let ctx = env.context(
        "multi",
        &[(
            "Dockerfile",
            "FROM busybox AS maker\n\
             RUN mkdir /out && echo made-in-stage-one > /out/artifact && echo building\n\
             FROM busybox AS unused\n\
             RUN exit 3\n\
             FROM busybox\n\
             COPY --from=maker /out/artifact /final/artifact\n\
             CMD [\"cat\", \"/final/artifact\"]\n",
        )],
    )?;
    let (_, progress) = env.build(&ctx, &["-t", "multi:1"])?;
    ensure!(
        progress.contains("    building"),
        "RUN output indented: {progress}"
    );
    ensure!(
        !progress.contains("exit 3"),
        "the unused stage ran: {progress}"
    );
    ensure!(env.run("multi:1", &[])?.trim() == "made-in-stage-one");
    // --target builds only up to that stage.
    let (_, progress) = env.build(&ctx, &["-t", "maker:1", "--target", "maker"])?;
    ensure!(!progress.contains("COPY --from"), "{progress}");

    // Independent stages run at the same time: the build takes less than their two steps.
    let parallel = env.context(
        "parallel",
        &[(
            "Dockerfile",
            "FROM busybox AS a\nRUN sleep 3 && echo a > /a\n\
             FROM busybox AS b\nRUN sleep 3 && echo b > /b\n\
             FROM busybox\nCOPY --from=a /a /a\nCOPY --from=b /b /b\nRUN cat /a /b\n",
        )],
    )?;
    let started = std::time::Instant::now();
    let (_, progress) = env.build(&parallel, &[])?;
    let elapsed = started.elapsed().as_secs_f64();
    ensure!(progress.contains("    a\n    b"), "{progress}");
    // Run one after the other, the build would take at least the sum of the two sleeps' steps.
    let took = |needle: &str| -> Result<f64> {
        let id = progress
            .lines()
            .find(|l| l.contains(needle))
            .and_then(|l| l.split_whitespace().next())
            .with_context(|| format!("no step {needle:?}: {progress}"))?;
        progress
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{id} DONE ")))
            .and_then(|d| d.trim_end_matches('s').parse::<f64>().ok())
            .with_context(|| format!("no duration for {needle:?}: {progress}"))
    };
    let (a, b) = (took("echo a > /a")?, took("echo b > /b")?);
    ensure!(
        elapsed < a + b,
        "stages ran one after the other: {elapsed:.1} s in all, steps of {a:.1} s and {b:.1} s"
    );

    // ONBUILD: stored by the parent, fired by the child.
    let parent = env.context(
        "parent",
        &[(
            "Dockerfile",
            "FROM busybox\nONBUILD RUN echo triggered > /onbuild.txt\nONBUILD COPY hello.txt /hello.txt\n",
        )],
    )?;
    env.build(&parent, &["-t", "parent:1"])?;
    ensure!(
        env.run("parent:1", &["sh", "-c", "ls /onbuild.txt 2>&1 || true"])?
            .contains("No such file"),
        "the parent ran its own trigger"
    );
    let child = env.context(
        "child",
        &[
            (
                "Dockerfile",
                "FROM parent:1\nRUN cat /onbuild.txt /hello.txt\n",
            ),
            ("hello.txt", "hi from the child context\n"),
        ],
    )?;
    let (_, progress) = env.build(&child, &["-t", "child:1"])?;
    ensure!(progress.contains("    triggered"), "{progress}");
    ensure!(
        progress.contains("    hi from the child context"),
        "{progress}"
    );
    let inspect: serde_json::Value =
        serde_json::from_str(&env.ok(&["image", "inspect", "child:1"])?)?;
    let config = &inspect[0]["Config"]["config"];
    ensure!(
        config["OnBuild"].is_null(),
        "the child kept the triggers: {config}"
    );
    env.nothing_left()?;
    env.stop()
}

#[test]
fn dockerignore_and_the_cache() -> Result<()> {
    let env = Env::start()?;
    let ctx = env.context(
        "cached",
        &[
            (
                "Dockerfile",
                "FROM busybox\n\
                 ENV MODE=test\n\
                 RUN echo base > /base.txt\n\
                 COPY app/ /app/\n\
                 RUN cat /app/main.txt > /derived.txt\n\
                 LABEL stage=final\n",
            ),
            (
                ".dockerignore",
                "**/*.log\nsecret*\napp/tmp\n!app/tmp/keep.txt\n",
            ),
            ("app/main.txt", "version 1\n"),
            ("app/debug.log", "noise\n"),
            ("app/tmp/junk.txt", "junk\n"),
            ("app/tmp/keep.txt", "kept\n"),
            ("secret.key", "do not ship\n"),
        ],
    )?;
    let (first, progress) = env.build(&ctx, &["-t", "cached:1"])?;
    ensure!(count(&progress, "CACHED") == 0, "{progress}");
    let files = env.run("cached:1", &["find", "/app"])?;
    let mut files: Vec<&str> = files.lines().collect();
    files.sort();
    ensure!(
        files == ["/app", "/app/main.txt", "/app/tmp", "/app/tmp/keep.txt"],
        ".dockerignore: {files:?}"
    );

    // Unchanged: every step after FROM is a hit, and the image is the same.
    let (again, progress) = env.build(&ctx, &["-t", "cached:2"])?;
    ensure!(count(&progress, "CACHED") == 5, "{progress}");
    ensure!(again == first, "{again} != {first}");

    // A changed COPY input: the steps before it are hits, it and those after run again.
    std::fs::write(ctx.join("app/main.txt"), "version 2\n")?;
    let (changed, progress) = env.build(&ctx, &["-t", "cached:3"])?;
    ensure!(count(&progress, "CACHED") == 2, "{progress}");
    ensure!(changed != first);
    ensure!(env.run("cached:3", &["cat", "/derived.txt"])?.trim() == "version 2");
    // An ignored file changing changes nothing.
    std::fs::write(ctx.join("app/debug.log"), "other noise\n")?;
    let (same, progress) = env.build(&ctx, &["-t", "cached:4"])?;
    ensure!(
        same == changed && count(&progress, "CACHED") == 5,
        "{progress}"
    );

    // --no-cache runs everything; builder prune drops the records.
    let (_, progress) = env.build(&ctx, &["--no-cache", "-t", "cached:5"])?;
    ensure!(count(&progress, "CACHED") == 0, "{progress}");
    ensure!(env.ok(&["images", "-a"])?.contains("build-cache"));
    let pruned = env.ok(&["builder", "prune", "-f"])?;
    ensure!(pruned.contains("Deleted"), "{pruned}");
    ensure!(!env.ok(&["images", "-a"])?.contains("build-cache"));
    let (_, progress) = env.build(&ctx, &["-t", "cached:6"])?;
    ensure!(count(&progress, "CACHED") == 0, "{progress}");
    env.nothing_left()?;
    env.stop()
}

#[test]
fn a_built_image_pushes_to_a_registry_and_skopeo_reads_it() -> Result<()> {
    let env = Env::start()?;
    let registry = Registry::start()?;
    let ctx = env.context(
        "pushed",
        &[
            (
                "Dockerfile",
                "FROM busybox\nCOPY data.txt /data.txt\nRUN wc -c /data.txt\n",
            ),
            ("data.txt", "payload\n"),
        ],
    )?;
    let target = format!("{}/built/app:v1", registry.addr());
    env.build(
        &ctx,
        &["-t", "app:v1", "-t", &target, "--label", "built.by=test"],
    )?;
    let out = env.ok(&["push", &target])?;
    let digest = registry.manifest_digest("built/app:v1")?;
    ensure!(out.contains(&digest), "{out} does not name {digest}");
    let copy = env.path("skopeo");
    registry.pull_layout("built/app:v1", &copy, "copy")?;
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(copy.join("index.json"))?)?;
    ensure!(
        index["manifests"][0]["digest"] == digest.as_str(),
        "{index}"
    );
    let inspect = env.ok(&["image", "inspect", "app:v1"])?;
    ensure!(inspect.contains("built.by"), "{inspect}");
    env.nothing_left()?;
    env.stop()
}

#[test]
fn bad_input_fails_clearly_and_leaves_nothing() -> Result<()> {
    let env = Env::start()?;
    let case = |name: &str, dockerfile: &str| -> Result<(i32, String)> {
        let ctx = env.context(name, &[("Dockerfile", dockerfile), ("present.txt", "x\n")])?;
        env.build_fails(&ctx, &["-t", &format!("{name}:bad")])
    };
    let (_, err) = case("syntax", "FROM busybox\nRUN true\nFROBNICATE now\n")?;
    ensure!(err.contains("Dockerfile:3:"), "{err}");
    let (_, err) = case("missing", "FROM busybox\nCOPY absent.txt /x\n")?;
    ensure!(
        err.contains("Dockerfile:2:") && err.contains("absent.txt"),
        "{err}"
    );
    let (_, err) = case("outside", "FROM busybox\nCOPY ../../etc/passwd /x\n")?;
    ensure!(
        err.contains("Dockerfile:2:") && err.contains("outside the build context"),
        "{err}"
    );
    let (_, err) = case("nostage", "FROM busybox\nCOPY --from=nowhere /x /x\n")?;
    ensure!(
        err.contains("Dockerfile:2:") && err.contains("nowhere"),
        "{err}"
    );
    let (_, err) = case(
        "cycle",
        "FROM busybox AS a\nCOPY --from=b /x /x\nFROM busybox AS b\nCOPY --from=a /x /x\n",
    )?;
    ensure!(err.contains("circular dependency"), "{err}");
    let (_, err) = case(
        "platform",
        "FROM --platform=linux/s390x busybox\nRUN true\n",
    )?;
    ensure!(err.contains("linux/s390x"), "{err}");

    // A failing RUN: its exit code, the line, no tag, nothing left behind.
    let (code, err) = case(
        "failing",
        "FROM busybox\nRUN echo step one > /one\nRUN echo about to fail && exit 7\nRUN echo never\n",
    )?;
    ensure!(code == 7, "exit {code}: {err}");
    ensure!(
        err.contains("Dockerfile:3:") && err.contains("non-zero code: 7"),
        "{err}"
    );
    ensure!(err.contains("    about to fail"), "{err}");
    ensure!(
        !env.ok(&["images"])?.contains("failing"),
        "a failed build was tagged"
    );
    env.nothing_left()?;

    // A symlink in the context pointing outside it is copied as a link, never followed.
    let ctx = env.context(
        "symlink",
        &[(
            "Dockerfile",
            "FROM busybox\nCOPY . /ctx/\nCOPY escape /escape\n",
        )],
    )?;
    std::os::unix::fs::symlink("/etc/shadow", ctx.join("escape"))?;
    std::os::unix::fs::symlink("../../../../etc", ctx.join("up"))?;
    env.build(&ctx, &["-t", "links:1"])?;
    let out = env.run(
        "links:1",
        &[
            "sh",
            "-c",
            "readlink /escape; readlink /ctx/escape; readlink /ctx/up; ls /ctx",
        ],
    )?;
    ensure!(
        out.lines().take(3).collect::<Vec<_>>()
            == ["/etc/shadow", "/etc/shadow", "../../../../etc"],
        "{out}"
    );
    let out = env.run("links:1", &["sh", "-c", "cat /escape 2>&1; true"])?;
    ensure!(
        !out.contains("root:"),
        "the host's /etc/shadow was copied: {out}"
    );
    env.nothing_left()?;
    env.stop()
}

/// Serves `body` to every GET on 127.0.0.1 (HTTP/1.1, Connection: close); returns the port.
fn serve_once(body: &'static [u8], requests: usize) -> Result<(u16, std::thread::JoinHandle<()>)> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let handle = std::thread::spawn(move || {
        for _ in 0..requests {
            let Ok((mut conn, _)) = listener.accept() else {
                return;
            };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(body);
        }
    });
    Ok((port, handle))
}

#[test]
fn add_url_chown_chmod_link_heredoc_and_a_tar_context() -> Result<()> {
    let env = Env::start()?;
    let (port, server) = serve_once(b"fetched over loopback\n", 1)?;
    let dockerfile = format!(
        "FROM busybox\n\
         ADD http://127.0.0.1:{port}/files/remote.txt /downloads/\n\
         COPY --chown=nobody:nogroup --chmod=640 owned.txt /owned.txt\n\
         COPY --chown=1234:5678 tree/ /tree/\n\
         COPY --link linked.txt /linked/\n\
         COPY <<EOT /heredoc.txt\n\
         written by a heredoc\n\
         EOT\n\
         RUN stat -c '%U:%G %a' /owned.txt /downloads/remote.txt && stat -c '%u:%g' /tree/sub/leaf.txt && cat /downloads/remote.txt /linked/linked.txt /heredoc.txt\n"
    );
    let ctx = env.context(
        "misc",
        &[
            ("Dockerfile", &dockerfile),
            ("owned.txt", "owned\n"),
            ("tree/sub/leaf.txt", "leaf\n"),
            ("linked.txt", "linked\n"),
        ],
    )?;
    let (_, progress) = env.build(&ctx, &["-t", "misc:1"])?;
    server
        .join()
        .map_err(|_| anyhow::anyhow!("server thread panicked"))?;
    for line in [
        "    nobody:nogroup 640",
        "    root:root 600",
        "    1234:5678",
        "    fetched over loopback",
        "    linked",
        "    written by a heredoc",
    ] {
        ensure!(progress.contains(line), "{line:?} missing: {progress}");
    }

    // The same context as a tar on stdin, with the Dockerfile named by -f inside it.
    let tar = {
        let mut builder = tar::Builder::new(Vec::new());
        builder.append_path_with_name(ctx.join("owned.txt"), "owned.txt")?;
        builder.append_dir_all("tree", ctx.join("tree"))?;
        let text = b"FROM busybox\nCOPY tree /from-stdin/\nRUN cat /from-stdin/sub/leaf.txt\n";
        let mut header = tar::Header::new_gnu();
        header.set_size(text.len() as u64);
        header.set_mode(0o644);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_cksum();
        builder.append_data(&mut header, "build/Alt.Dockerfile", &text[..])?;
        builder.into_inner()?
    };
    let mut child = env
        .berth()
        .ctl()
        .env("TMPDIR", env.berth().root().join("tmp"))
        .args([
            "build",
            "--progress",
            "plain",
            "-f",
            "build/Alt.Dockerfile",
            "-t",
            "stdin:1",
            "-",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    std::io::Write::write_all(child.stdin.as_mut().context("stdin")?, &tar)?;
    drop(child.stdin.take());
    let out = child.wait_with_output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "{err}");
    ensure!(err.contains("    leaf"), "{err}");
    env.nothing_left()?;
    env.stop()
}
