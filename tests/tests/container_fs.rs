//! The container-side commands end to end, through the real `berthctl` binary against real
//! services: `diff` lists exactly what a container added, changed and deleted; `commit` turns
//! that into an image whose containers see the changes and whose history shows the new layer;
//! `cp` copies both ways (files, directories, `SRC/.`, tar streams with `-`, owners with and
//! without `-a`, running and stopped containers, volumes) with symlinks in the container
//! resolved inside it, never on the host; `export` writes the container's files.
//!
//! Each test runs its own berth (own bridge, nft table and cgroup parent); berthctl's temporary
//! directory is inside the instance, so the harness's leak check also sees its mounts.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use berth_tests::ctl_env::CtlEnv;
use berth_tests::fixtures::images;
use serde_json::Value;

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
        Ok(Env(CtlEnv::start('f')?))
    }

    /// berthctl `args` with `input` on stdin; its output (whatever the status).
    fn with_stdin(&self, args: &[&str], input: &[u8]) -> Result<Output> {
        let mut child = self
            .command()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child.stdin.take().context("stdin")?.write_all(input)?;
        Ok(child.wait_with_output()?)
    }

    /// Starts `sh -c SCRIPT` in a detached container `name` and waits for `ready` to exist in
    /// it.
    fn run_detached(&self, name: &str, extra: &[&str], script: &str, ready: &str) -> Result<()> {
        let mut args = vec!["run", "-d", "--name", name, "--network", "none"];
        args.extend(extra);
        args.extend(["busybox", "sh", "-c", script]);
        self.ok(&args)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self
            .ctl(&["exec", name, "test", "-e", ready])?
            .status
            .success()
        {
            ensure!(Instant::now() < deadline, "{name} never made {ready}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// `cat PATH` in the running container `name`.
    fn cat(&self, name: &str, path: &str) -> Result<String> {
        self.ok(&["exec", name, "cat", path])
    }

    fn stop(self) -> Result<()> {
        self.0.stop()
    }
}

/// Names (directories with a trailing `/`) and contents of the regular files of a tar.
fn tar_entries(data: &[u8]) -> Result<BTreeMap<String, Vec<u8>>> {
    let mut out = BTreeMap::new();
    let mut archive = tar::Archive::new(data);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let mut name = entry.path()?.display().to_string();
        let kind = entry.header().entry_type();
        if kind.is_dir() && !name.ends_with('/') {
            name.push('/');
        }
        let mut content = Vec::new();
        if kind.is_file() {
            entry.read_to_end(&mut content)?;
        }
        out.insert(name, content);
    }
    Ok(out)
}

#[test]
fn diff_commit_run_and_history() -> Result<()> {
    let env = Env::start()?;
    env.run_detached(
        "c1",
        &[],
        "echo new > /tmp/added; echo changed >> /etc/passwd; rm /etc/group; \
         mkdir -p /usr/local/d/e; echo f > /usr/local/d/e/f; touch /ready; sleep 1000",
        "/ready",
    )?;
    let expected = [
        "A /ready",
        "C /etc",
        "D /etc/group",
        "C /etc/passwd",
        "C /tmp",
        "A /tmp/added",
        "C /usr",
        "A /usr/local",
        "A /usr/local/d",
        "A /usr/local/d/e",
        "A /usr/local/d/e/f",
    ];
    let mut sorted = expected.map(String::from).to_vec();
    sorted.sort_by(|a, b| a[2..].cmp(&b[2..]));
    let diff = env.ok(&["diff", "c1"])?;
    ensure!(
        diff.lines().collect::<Vec<_>>() == sorted,
        "diff:\n{diff}\nexpected:\n{}",
        sorted.join("\n")
    );
    let json: Value = serde_json::from_str(&env.ok(&["-o", "json", "diff", "c1"])?)?;
    ensure!(
        json.as_array()
            .is_some_and(|a| a.contains(&serde_json::json!({"Path": "/etc/group", "Kind": 2}))),
        "json diff: {json}"
    );

    // Bad input leaves nothing behind.
    let images_before = env.ok(&["images", "-q"])?;
    let err = env.fails(&["commit", "-c", "RUN echo no", "c1", "bad:1"])?;
    ensure!(err.contains("RUN is not a valid change command"), "{err}");
    let err = env.fails(&["commit", "nosuch", "bad:2"])?;
    ensure!(err.contains("no such container: nosuch"), "{err}");
    let err = env.fails(&["diff", "nosuch"])?;
    ensure!(err.contains("no such container: nosuch"), "{err}");
    ensure!(
        env.ok(&["images", "-q"])? == images_before,
        "a failed commit made an image"
    );

    let id = env.ok(&[
        "commit",
        "-m",
        "add files",
        "-a",
        "Tester <t@example.com>",
        "-c",
        "ENV MARK=committed",
        "-c",
        "CMD [\"cat\", \"/tmp/added\"]",
        "c1",
        "committed:v1",
    ])?;
    let id = id.trim();
    ensure!(
        id.starts_with("sha256:") && id.len() == 71,
        "image id {id:?}"
    );
    let state = env.ok(&["inspect", "--format", "{{.State.Status}}", "c1"])?;
    ensure!(state.trim() == "running", "c1 is {state} after the commit");

    let inspect: Value = serde_json::from_str(&env.ok(&["image", "inspect", "committed:v1"])?)?;
    let image = &inspect[0];
    ensure!(image["Id"] == id, "image id {} != {id}", image["Id"]);
    let config = &image["Config"];
    ensure!(config["author"] == "Tester <t@example.com>", "{config}");
    ensure!(
        config["config"]["Env"]
            .as_array()
            .is_some_and(|e| e.contains(&"MARK=committed".into())),
        "{config}"
    );
    ensure!(
        config["rootfs"]["diff_ids"].as_array().map(Vec::len) == Some(2),
        "{config}"
    );
    ensure!(
        image["Manifest"]["layers"].as_array().map(Vec::len) == Some(2),
        "{image}"
    );

    // A container of the new image sees the changes and runs the new CMD.
    let out = env.ok(&["run", "--rm", "--network", "none", "committed:v1"])?;
    ensure!(out == "new\n", "CMD output {out:?}");
    let out = env.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "committed:v1",
        "sh",
        "-c",
        "tail -n 1 /etc/passwd; test -e /etc/group || echo no-group; cat /usr/local/d/e/f; \
         echo $MARK",
    ])?;
    ensure!(out == "changed\nno-group\nf\ncommitted\n", "{out:?}");

    // The history shows the new layer, newest first, with its command, size and comment.
    let history = env.ok(&[
        "image",
        "history",
        "--no-trunc",
        "--format",
        "{{.ID}}|{{.CreatedBy}}|{{.Size}}|{{.Comment}}",
        "committed:v1",
    ])?;
    let lines: Vec<&str> = history.lines().collect();
    ensure!(lines.len() == 2, "history:\n{history}");
    let top: Vec<&str> = lines[0].split('|').collect();
    ensure!(top[0] == id, "{history}");
    ensure!(
        top[1].starts_with("sh -c echo new > /tmp/added;"),
        "{history}"
    );
    ensure!(top[2] != "0B" && top[2].ends_with('B'), "{history}");
    ensure!(top[3] == "add files", "{history}");
    ensure!(
        lines[1].starts_with("<missing>|berth-tests: busybox-static"),
        "{history}"
    );
    let table = env.ok(&["image", "history", "committed:v1"])?;
    ensure!(
        table
            .lines()
            .next()
            .is_some_and(|h| h.split_whitespace().collect::<Vec<_>>()
                == ["IMAGE", "CREATED", "CREATED", "BY", "SIZE", "COMMENT"]),
        "{table}"
    );
    ensure!(
        table.contains("sh -c echo new > /tmp/added; echo changed >>…"),
        "{table}"
    );
    let quiet = env.ok(&["image", "history", "-q", "committed:v1"])?;
    ensure!(quiet.lines().next() == Some(&id[7..19]), "{quiet}");

    // A stopped container diffs and commits the same way; no change, no layer.
    env.ok(&["stop", "-t", "1", "c1"])?;
    ensure!(
        env.ok(&["diff", "c1"])? == diff,
        "diff changed once stopped"
    );
    env.ok(&[
        "run",
        "--name",
        "idle",
        "--network",
        "none",
        "busybox",
        "true",
    ])?;
    ensure!(
        env.ok(&["diff", "idle"])?.is_empty(),
        "a container that changed nothing"
    );
    env.ok(&["commit", "idle", "idle:v1"])?;
    let inspect: Value = serde_json::from_str(&env.ok(&["image", "inspect", "idle:v1"])?)?;
    ensure!(
        inspect[0]["Manifest"]["layers"].as_array().map(Vec::len) == Some(1),
        "{inspect}"
    );
    let history = inspect[0]["Config"]["history"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ensure!(
        history
            .last()
            .is_some_and(|h| h["empty_layer"] == true && h["created_by"] == "true"),
        "{history:?}"
    );
    env.stop()
}

#[test]
fn cp_both_ways_stays_inside_the_container() -> Result<()> {
    let env = Env::start()?;
    let unique = format!("berth-cp-{}", env.tag);
    env.run_detached(
        "cc",
        &["-v", "cpvol:/vol"],
        "mkdir -p /data/sub; echo inside > /data/sub/f; ln -s /etc /data/etclink; \
         ln -s ../../.. /data/up; echo plain > /data/file; touch /ready; sleep 1000",
        "/ready",
    )?;
    let inside_passwd = env.cat("cc", "/etc/passwd")?;
    let host = |p: &str| env.path(p);
    let s = |p: &PathBuf| p.to_str().expect("utf-8").to_owned();

    // Out of the container: a file, a directory (its symlinks kept as links).
    env.ok(&["cp", "cc:/data/sub/f", &s(&host("out.txt"))])?;
    ensure!(std::fs::read_to_string(host("out.txt"))? == "inside\n");
    env.ok(&["cp", "cc:/data", &s(&host("datacopy"))])?;
    ensure!(std::fs::read_to_string(host("datacopy/sub/f"))? == "inside\n");
    ensure!(std::fs::read_link(host("datacopy/etclink"))? == Path::new("/etc"));
    // A symlink source: the link itself, or with -L what it points to inside the container.
    env.ok(&["cp", "cc:/data/etclink", &s(&host("etclink"))])?;
    ensure!(std::fs::read_link(host("etclink"))? == Path::new("/etc"));
    env.ok(&["cp", "-L", "cc:/data/etclink", &s(&host("etcfollow"))])?;
    let copied = std::fs::read_to_string(host("etcfollow/passwd"))?;
    ensure!(copied == inside_passwd, "-L copied {copied:?}");
    ensure!(
        copied != std::fs::read_to_string("/etc/passwd")?,
        "-L copied the host's /etc"
    );
    // `..` past the container's root stays at its root.
    env.ok(&["cp", "cc:/data/up/etc/passwd", &s(&host("viaup"))])?;
    ensure!(std::fs::read_to_string(host("viaup"))? == inside_passwd);

    // Into the container, through symlinks that point at the host's /etc and /tmp if followed
    // outside.
    std::fs::write(host(&unique), "from host")?;
    env.ok(&["cp", &s(&host(&unique)), "cc:/data/up/tmp/"])?;
    ensure!(env.cat("cc", &format!("/tmp/{unique}"))? == "from host");
    ensure!(
        !Path::new("/tmp").join(&unique).exists(),
        "written onto the host's /tmp"
    );
    env.ok(&["cp", &s(&host(&unique)), "cc:/data/etclink/"])?;
    ensure!(env.cat("cc", &format!("/etc/{unique}"))? == "from host");
    ensure!(
        !Path::new("/etc").join(&unique).exists(),
        "written onto the host's /etc"
    );

    // Directories: a new name, into an existing one, and `SRC/.` for the contents only.
    std::fs::create_dir_all(host("srcdir/deep"))?;
    std::fs::write(host("srcdir/deep/x"), "x")?;
    env.ok(&["cp", &s(&host("srcdir")), "cc:/newdir"])?;
    ensure!(env.cat("cc", "/newdir/deep/x")? == "x");
    env.ok(&["cp", &s(&host("srcdir")), "cc:/data"])?;
    ensure!(env.cat("cc", "/data/srcdir/deep/x")? == "x");
    env.ok(&["cp", &format!("{}/.", s(&host("srcdir"))), "cc:/data"])?;
    ensure!(env.cat("cc", "/data/deep/x")? == "x");

    // Owners: root inside unless -a keeps the source's.
    std::fs::write(host("owned"), "o")?;
    nix::unistd::chown(
        &host("owned"),
        Some(nix::unistd::Uid::from_raw(1234)),
        Some(nix::unistd::Gid::from_raw(5678)),
    )?;
    env.ok(&["cp", &s(&host("owned")), "cc:/owned-root"])?;
    env.ok(&["cp", "-a", &s(&host("owned")), "cc:/owned-kept"])?;
    let owners = env.ok(&[
        "exec",
        "cc",
        "stat",
        "-c",
        "%u:%g",
        "/owned-root",
        "/owned-kept",
    ])?;
    ensure!(owners == "0:0\n1234:5678\n", "owners {owners:?}");

    // A volume is part of a running container's tree.
    env.ok(&["cp", &s(&host(&unique)), "cc:/vol/in-volume"])?;
    ensure!(env.cat("cc", "/vol/in-volume")? == "from host");
    // ...but not of its snapshot: diff shows the copies, not the volume or its mount point.
    let diff = env.ok(&["diff", "cc"])?;
    ensure!(
        diff.contains("A /newdir/deep/x\n") && diff.contains("A /owned-kept\n"),
        "{diff}"
    );
    ensure!(!diff.contains(" /vol"), "{diff}");

    // Tar streams: `-` as destination and as source.
    let out = env.ctl(&["cp", "cc:/data/sub", "-"])?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let entries = tar_entries(&out.stdout)?;
    ensure!(
        entries.keys().collect::<Vec<_>>() == ["sub/", "sub/f"] && entries["sub/f"] == b"inside\n",
        "{:?}",
        entries.keys()
    );
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(8);
    header.set_mode(0o640);
    header.set_uid(42);
    tar.append_data(&mut header, "streamed.txt", &b"streamed"[..])?;
    let tar = tar.into_inner()?;
    let out = env.with_stdin(&["cp", "-", "cc:/tmp"], &tar)?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(env.cat("cc", "/tmp/streamed.txt")? == "streamed");
    let owner = env.ok(&["exec", "cc", "stat", "-c", "%u %a", "/tmp/streamed.txt"])?;
    ensure!(owner == "0 640\n", "{owner:?}");
    let out = env.with_stdin(&["cp", "-", "cc:/data/file"], &tar)?;
    ensure!(!out.status.success(), "extracting onto a file succeeded");

    // Errors: missing source or destination parent, a directory onto a file, two local paths.
    let err = env.fails(&["cp", "cc:/nope", &s(&host("x"))])?;
    ensure!(
        err.contains("could not find the file /nope in container cc"),
        "{err}"
    );
    let err = env.fails(&["cp", &s(&host("missing")), "cc:/tmp"])?;
    ensure!(err.contains("could not find the file"), "{err}");
    let err = env.fails(&["cp", &s(&host(&unique)), "cc:/no/such/dir"])?;
    ensure!(
        err.contains("could not find the file /no/such/dir"),
        "{err}"
    );
    let err = env.fails(&["cp", &s(&host("srcdir")), "cc:/data/file"])?;
    ensure!(err.contains("cannot copy a directory to a file"), "{err}");
    let err = env.fails(&["cp", "cc:/data/sub/f", &s(&host("nodir/x"))])?;
    ensure!(err.contains("could not find the file"), "{err}");
    let err = env.fails(&["cp", &s(&host("a")), &s(&host("b"))])?;
    ensure!(err.contains("at least one container"), "{err}");
    let err = env.fails(&["cp", "nosuch:/x", &s(&host("x"))])?;
    ensure!(err.contains("no such container: nosuch"), "{err}");

    // A stopped container: its snapshot is mounted for the copy and unmounted after.
    env.ok(&["stop", "-t", "1", "cc"])?;
    env.ok(&["cp", &s(&host(&unique)), "cc:/stopped.txt"])?;
    env.ok(&["cp", "cc:/stopped.txt", &s(&host("back"))])?;
    ensure!(std::fs::read_to_string(host("back"))? == "from host");
    env.ok(&["cp", "cc:/data/up/etc/passwd", &s(&host("stopped-passwd"))])?;
    ensure!(std::fs::read_to_string(host("stopped-passwd"))? == inside_passwd);
    let left = berth_tests::harness::mounts_under(&env.berth().root())?;
    ensure!(left.is_empty(), "mounts left: {left:?}");
    env.ok(&["start", "cc"])?;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match env.ctl(&["exec", "cc", "cat", "/stopped.txt"]) {
            Ok(o) if o.status.success() => {
                ensure!(o.stdout == b"from host");
                break;
            }
            _ if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => bail!("the restarted container does not see /stopped.txt"),
        }
    }
    env.stop()
}

#[test]
fn export_writes_the_container_files() -> Result<()> {
    let env = Env::start()?;
    env.run_detached(
        "ee",
        &[],
        "echo exported > /root/note; rm /etc/group; ln -s /etc/passwd /root/pw; touch /ready; \
         sleep 1000",
        "/ready",
    )?;
    let file = env.path("e.tar");
    env.ok(&["export", "ee", "-f", file.to_str().context("utf-8")?])?;
    let entries = tar_entries(&std::fs::read(&file)?)?;
    ensure!(entries.get("root/note").map(Vec::as_slice) == Some(&b"exported\n"[..]));
    ensure!(
        !entries.contains_key("etc/group"),
        "a deleted file was exported"
    );
    ensure!(
        entries.get("etc/passwd").map(Vec::as_slice)
            == Some(env.cat("ee", "/etc/passwd")?.as_bytes())
    );
    ensure!(
        entries.get("bin/busybox").map(Vec::len)
            == Some(std::fs::metadata(images::BUSYBOX_PATH)?.len() as usize),
        "bin/busybox"
    );
    // Every file the container sees under /bin and /root is in the archive.
    let listed = env.ok(&["exec", "ee", "find", "/bin", "/root"])?;
    for path in listed.lines() {
        let name = path.trim_start_matches('/');
        ensure!(
            entries.contains_key(name) || entries.contains_key(&format!("{name}/")),
            "{path} is missing from the export"
        );
    }
    let link = tar::Archive::new(std::fs::read(&file)?.as_slice())
        .entries()?
        .filter_map(|e| e.ok())
        .find(|e| e.path().is_ok_and(|p| p == Path::new("root/pw")))
        .and_then(|e| e.link_name().ok().flatten().map(|l| l.into_owned()));
    ensure!(
        link.as_deref() == Some(Path::new("/etc/passwd")),
        "root/pw {link:?}"
    );

    // To stdout: the same archive.
    let out = env.ctl(&["export", "ee"])?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        tar_entries(&out.stdout)? == entries,
        "stdout and file exports differ"
    );
    let err = env.fails(&["export", "nosuch", "-f", file.to_str().context("utf-8")?])?;
    ensure!(err.contains("no such container: nosuch"), "{err}");
    env.stop()
}
