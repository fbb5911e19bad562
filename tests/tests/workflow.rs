//! The everyday Docker workflow through the real `berthctl` binary against real berth services:
//! run, ps, logs, inspect, top, exec, stop/start/restart, rm, volumes, published ports, memory
//! limits, interactive sessions through a pty the test drives, and every error path with its
//! exit code (125 berth failed, 126 cannot invoke, 127 not found, else the container's).
//!
//! Each test runs its own berth with its own bridge, nft table, address pool and cgroup parent,
//! and removes every kernel object it made, also when it fails.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use berth_tests::cleanup::{clean_up_instance, stop_instance};
use berth_tests::fixtures::images;
use berth_tests::fixtures::registry::{Registry, free_port, http_get_status};
use berth_tests::{Berth, Mode, Options};
use serde_json::Value;

fn rand_tag() -> String {
    let mut b = [0u8; 3];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .expect("/dev/urandom");
    hex::encode(b)
}

/// A berth instance of one test with the busybox image loaded.
struct Env {
    berth: Option<Berth>,
    options: Options,
    tag: String,
    _images: tempfile::TempDir,
}

impl Env {
    /// Starts berth; `pool` is a /16 base only this test uses.
    fn start(pool: &str) -> Result<Env> {
        let tag = rand_tag();
        let config = format!(
            "[network]\ndefault_bridge = \"berth-w{tag}0\"\nnft_table = \"berth_w{tag}\"\n\
             pools = [{{ base = \"{pool}/16\", size = 24 }}]\n\
             [tasks]\ncgroup_parent = \"berth-test-{tag}\"\n"
        );
        let options = Options {
            config: Some(config),
            ..Default::default()
        };
        let berth = Berth::start_with(Mode::AllInOne, options.clone())?;
        let images = tempfile::Builder::new().prefix("berth-test-").tempdir()?;
        images::busybox_layout(images.path())?;
        let env = Env {
            berth: Some(berth),
            options,
            tag,
            _images: images,
        };
        env.ok(&["load", env._images.path().to_str().context("utf-8 path")?])?;
        Ok(env)
    }

    fn berth(&self) -> &Berth {
        self.berth.as_ref().expect("berth running")
    }

    /// Runs berthctl with `args`.
    fn ctl(&self, args: &[&str]) -> Result<Output> {
        self.berth().run_ctl(args)
    }

    /// Runs berthctl, which must succeed; returns its stdout.
    fn ok(&self, args: &[&str]) -> Result<String> {
        self.berth().ctl_ok(args)
    }

    /// Runs berthctl, which must fail with exit code `code` and one line on stderr; returns it.
    fn fails(&self, code: i32, args: &[&str]) -> Result<String> {
        let out = self.ctl(args)?;
        let err = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        ensure!(
            out.status.code() == Some(code),
            "berthctl {args:?}: exit {:?}, expected {code}: {err}",
            out.status.code()
        );
        ensure!(
            err.lines().count() == 1,
            "berthctl {args:?}: not one line: {err}"
        );
        Ok(err)
    }

    /// `run -d` of a container named `loop` printing `line <n>` every 0.1 s; its id.
    fn run_loop(&self) -> Result<String> {
        self.ok(&[
            "run",
            "-d",
            "--name",
            "loop",
            "--network",
            "none",
            "busybox",
            "sh",
            "-c",
            "i=0; while true; do echo line $i; i=$((i+1)); sleep 0.1; done",
        ])
    }

    /// `inspect NAME`, parsed.
    fn inspect(&self, name: &str) -> Result<Value> {
        let text = self.ok(&["inspect", name])?;
        let v: Value = serde_json::from_str(&text).with_context(|| text.clone())?;
        Ok(v[0].clone())
    }

    /// Waits until `inspect NAME` satisfies `f` (bounded).
    fn wait_state(&self, name: &str, limit: Duration, f: impl Fn(&Value) -> bool) -> Result<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let v = self.inspect(name)?;
            if f(&v) {
                return Ok(v);
            }
            if Instant::now() > deadline {
                bail!(
                    "{name} did not reach the state in {limit:?}: {}",
                    v["State"]
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn cgroup_parent(&self) -> String {
        format!("berth-test-{}", self.tag)
    }

    /// Removes every container, stops berth with the harness's leak check, and checks that
    /// no container cgroup is left.
    fn stop(mut self) -> Result<()> {
        let ids = self.ok(&["ps", "-aq", "--no-trunc"])?;
        for id in ids.lines() {
            self.ok(&["rm", "-f", id])?;
        }
        let berth = self.berth.take().expect("berth running");
        stop_instance(berth, &self.cgroup_parent())
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(berth) = self.berth.take() {
            // The test failed: remove what it left.
            clean_up_instance(
                berth,
                &self.cgroup_parent(),
                Some((
                    &format!("berth-w{}", self.tag),
                    &format!("berth_w{}", self.tag),
                )),
            );
        }
    }
}

/// A child process killed when dropped (a `logs -f` that a failed test leaves behind).
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads from `r` until `needle` appears (or `limit` passes); returns what was read.
fn read_until(r: &mut impl Read, needle: &str, limit: Duration) -> Result<String> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(needle) {
        ensure!(
            Instant::now() < deadline,
            "no {needle:?} within {limit:?}; read: {:?}",
            String::from_utf8_lossy(&seen)
        );
        match r.read(&mut buf) {
            Ok(0) => bail!(
                "end of output before {needle:?}: {:?}",
                String::from_utf8_lossy(&seen)
            ),
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(20))
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(String::from_utf8_lossy(&seen).into_owned())
}

/// Waits for a child to exit (bounded) and returns its exit code.
fn wait_child(child: &mut Child, limit: Duration) -> Result<Option<i32>> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status.code());
        }
        ensure!(
            Instant::now() < deadline,
            "berthctl did not exit within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn everyday_workflow() -> Result<()> {
    let env = Env::start("10.241.0.0")?;
    // run -d: a loop that prints; the id is 64 hex digits.
    let id = env.run_loop()?;
    let id = id.trim().to_owned();
    ensure!(
        id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "id {id:?}"
    );

    // ps: Docker's columns, the container up.
    let ps = env.ok(&["ps"])?;
    let header = ps.lines().next().context("ps header")?;
    for column in [
        "CONTAINER ID",
        "IMAGE",
        "COMMAND",
        "CREATED",
        "STATUS",
        "PORTS",
        "NAMES",
    ] {
        ensure!(
            header.contains(column),
            "ps header {header:?} lacks {column}"
        );
    }
    let row = ps
        .lines()
        .find(|l| l.contains("loop"))
        .context("loop in ps")?;
    ensure!(row.starts_with(&id[..12]), "{row}");
    ensure!(
        row.contains("busybox:latest") && row.contains("Up "),
        "{row}"
    );
    ensure!(env.ok(&["ps", "-q"])?.trim() == &id[..12]);
    ensure!(env.ok(&["ps", "--format", "{{.Names}} {{.State}}"])?.trim() == "loop running");

    // inspect: Docker's key fields.
    let v = env.inspect("loop")?;
    ensure!(v["Id"] == id.as_str() && v["Name"] == "/loop", "{v}");
    ensure!(
        v["State"]["Status"] == "running" && v["State"]["Running"] == true,
        "{}",
        v["State"]
    );
    ensure!(
        v["State"]["Pid"].as_u64().unwrap_or(0) > 0,
        "{}",
        v["State"]
    );
    ensure!(v["Config"]["Image"] == "busybox:latest", "{}", v["Config"]);
    ensure!(
        env.ok(&["inspect", "-f", "{{.State.Status}}", &id[..8]])?
            .trim()
            == "running"
    );

    // top lists the loop's shell.
    let top = env.ok(&["top", "loop"])?;
    ensure!(top.contains("PID") && top.contains("sh -c"), "{top}");

    // exec: output, exit codes, 127 for a missing command.
    ensure!(env.ok(&["exec", "loop", "echo", "from", "exec"])?.trim() == "from exec");
    let out = env.ctl(&["exec", "loop", "sh", "-c", "exit 3"])?;
    ensure!(out.status.code() == Some(3), "exec exit: {:?}", out.status);
    env.fails(127, &["exec", "loop", "no-such-command"])?;
    let out = env.ctl(&["exec", "-i", "loop", "sh", "-c", "read x; echo got $x"])?;
    ensure!(out.status.success(), "{out:?}");

    // stop, then start again; restart.
    env.ok(&["stop", "-t", "1", "loop"])?;
    let v = env.inspect("loop")?;
    ensure!(
        v["State"]["Status"] == "exited" && v["State"]["Running"] == false,
        "{}",
        v["State"]
    );
    let ps = env.ok(&["ps", "-a"])?;
    ensure!(ps.contains("Exited ("), "{ps}");
    ensure!(!env.ok(&["ps"])?.contains("loop"));
    env.ok(&["start", "loop"])?;
    env.wait_state("loop", Duration::from_secs(5), |v| {
        v["State"]["Running"] == true
    })?;
    let pid_before = env.inspect("loop")?["State"]["Pid"].clone();
    env.ok(&["restart", "-t", "1", "loop"])?;
    let v = env.wait_state("loop", Duration::from_secs(5), |v| {
        v["State"]["Running"] == true
    })?;
    ensure!(
        v["State"]["Pid"] != pid_before,
        "restart kept pid {pid_before}"
    );

    // pause / unpause, rename.
    env.ok(&["pause", "loop"])?;
    ensure!(env.inspect("loop")?["State"]["Paused"] == true);
    env.ok(&["unpause", "loop"])?;
    ensure!(env.inspect("loop")?["State"]["Status"] == "running");
    env.ok(&["rename", "loop", "printer"])?;
    ensure!(env.inspect("printer")?["Name"] == "/printer");

    // rm refuses a running container, rm -f removes it.
    let err = env.fails(1, &["rm", "printer"])?;
    ensure!(
        err.contains("stop it first") || err.contains("rm -f"),
        "{err}"
    );
    env.ok(&["rm", "-f", "printer"])?;
    ensure!(env.ok(&["ps", "-aq"])?.trim().is_empty());

    // Foreground run: output, exit code, --rm.
    let out = env.ctl(&[
        "run",
        "--rm",
        "--network",
        "none",
        "busybox",
        "echo",
        "hello from berth",
    ])?;
    ensure!(out.status.success(), "{out:?}");
    ensure!(
        String::from_utf8_lossy(&out.stdout) == "hello from berth\n",
        "{out:?}"
    );
    let out = env.ctl(&[
        "run",
        "--name",
        "seven",
        "--network",
        "none",
        "busybox",
        "sh",
        "-c",
        "echo err >&2; exit 7",
    ])?;
    ensure!(out.status.code() == Some(7), "{out:?}");
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("err"),
        "{out:?}"
    );
    ensure!(env.inspect("seven")?["State"]["ExitCode"] == 7);
    ensure!(env.ok(&["wait", "seven"])?.trim() == "7");
    // start -a runs it again attached and ends with its exit code.
    let out = env.ctl(&["start", "-a", "seven"])?;
    ensure!(out.status.code() == Some(7), "{out:?}");
    ensure!(
        String::from_utf8_lossy(&out.stderr).contains("err"),
        "{out:?}"
    );
    ensure!(
        env.ok(&["ps", "-a", "--filter", "exited=7", "-q"])?
            .trim()
            .len()
            == 12
    );
    env.fails(
        127,
        &[
            "run",
            "--rm",
            "--network",
            "none",
            "busybox",
            "no-such-command",
        ],
    )?;
    // -i forwards stdin and closes it on EOF.
    let mut child = env
        .berth()
        .ctl()
        .args([
            "run",
            "-i",
            "--rm",
            "--network",
            "none",
            "busybox",
            "sh",
            "-c",
            "tr a-z A-Z",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(b"piped input\n")?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success() && out.stdout == b"PIPED INPUT\n",
        "{out:?}"
    );
    env.ok(&["container", "prune"])?;
    ensure!(env.ok(&["ps", "-aq"])?.trim().is_empty());
    env.stop()
}

#[test]
fn logs_tail_timestamps_and_follow() -> Result<()> {
    let env = Env::start("10.247.0.0")?;
    env.run_loop()?;
    // logs: timestamps and tail; follow sees new lines.
    let deadline = Instant::now() + Duration::from_secs(10);
    while env.ok(&["logs", "loop"])?.lines().count() < 5 {
        ensure!(Instant::now() < deadline, "the loop does not log");
        std::thread::sleep(Duration::from_millis(100));
    }
    let tail = env.ok(&["logs", "-t", "--tail", "2", "loop"])?;
    let lines: Vec<&str> = tail.lines().collect();
    ensure!(lines.len() == 2, "tail 2: {tail:?}");
    for l in &lines {
        let (time, text) = l.split_once(' ').context("timestamp")?;
        humantime::parse_rfc3339_weak(time).with_context(|| format!("timestamp of {l:?}"))?;
        ensure!(text.starts_with("line "), "{l}");
    }
    let mut follow = Killed(
        env.berth()
            .ctl()
            .args(["logs", "-f", "--tail", "1", "loop"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let last: u32 = lines[1].rsplit(' ').next().context("n")?.parse()?;
    let mut out = follow.0.stdout.take().context("stdout")?;
    let mut seen = read_until(
        &mut out,
        &format!("line {}\n", last + 5),
        Duration::from_secs(10),
    )?;
    // kill -9 of the services while following: the follow goes on once they are back, with
    // no line lost or repeated.
    let pid = env.berth().pids()?[0].1.context("berthd pid")?;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    berth_tests::harness::wait_exited(pid, Duration::from_secs(5))?;
    std::thread::sleep(Duration::from_millis(500));
    let up = env.berth().up(&env.options)?;
    ensure!(up.status.success(), "system up: {up:?}");
    seen += &read_until(
        &mut out,
        &format!("line {}\n", last + 30),
        Duration::from_secs(20),
    )?;
    let complete = &seen[..seen.rfind('\n').map_or(0, |i| i + 1)];
    let numbers: Vec<u32> = complete
        .lines()
        .map(|l| l.trim_start_matches("line ").parse())
        .collect::<Result<_, _>>()
        .with_context(|| format!("follow output: {seen:?}"))?;
    ensure!(
        numbers.windows(2).all(|w| w[1] == w[0] + 1),
        "a line was lost or repeated across the restart: {numbers:?}"
    );
    drop(follow);
    // run -d --rm: the service removes the container once it exits.
    let id = env.ok(&["run", "-d", "--rm", "--network", "none", "busybox", "true"])?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while env.ok(&["ps", "-aq", "--no-trunc"])?.contains(id.trim()) {
        ensure!(
            Instant::now() < deadline,
            "run -d --rm left {} behind",
            id.trim()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // The log stays readable after the container stopped; stderr goes to stderr.
    env.ok(&[
        "run",
        "--name",
        "done",
        "--network",
        "none",
        "busybox",
        "sh",
        "-c",
        "echo out; echo err >&2",
    ])?;
    let out = env.ctl(&["logs", "done"])?;
    ensure!(out.stdout == b"out\n" && out.stderr == b"err\n", "{out:?}");
    let err = env.fails(1, &["logs", "--since", "yesterday-ish", "done"])?;
    ensure!(err.contains("--since"), "{err}");
    env.stop()
}

#[test]
fn restart_policy_update_stats_and_events() -> Result<()> {
    let env = Env::start("10.248.0.0")?;
    // events: a subscriber sees the tasks start that follows.
    let mut events = Killed(
        env.berth()
            .ctl()
            .args(["events", "-f", "topic==/tasks/start", "--count", "1"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?,
    );
    std::thread::sleep(Duration::from_millis(300));

    // A crashing container with --restart always comes back.
    let id = env.ok(&[
        "run",
        "-d",
        "--name",
        "crashy",
        "--restart",
        "always",
        "--network",
        "none",
        "busybox",
        "sh",
        "-c",
        "sleep 0.3; exit 1",
    ])?;
    let first = env.inspect("crashy")?["State"]["StartedAt"].clone();
    ensure!(env.inspect("crashy")?["HostConfig"]["RestartPolicy"]["Name"] == "always");
    env.wait_state("crashy", Duration::from_secs(20), |v| {
        v["State"]["StartedAt"] != first && v["State"]["Running"] == true
    })?;
    ensure!(
        wait_child(&mut events.0, Duration::from_secs(10))? == Some(0),
        "events --count 1"
    );
    let mut seen = String::new();
    events
        .0
        .stdout
        .take()
        .context("stdout")?
        .read_to_string(&mut seen)?;
    ensure!(
        seen.contains("/tasks/start") && seen.contains(id.trim()),
        "{seen:?}"
    );
    env.ok(&["update", "--restart", "no", "crashy"])?;
    env.ok(&["rm", "-f", "crashy"])?;

    // stats --no-stream, then update the limits of the running container.
    env.ok(&[
        "run",
        "-d",
        "--name",
        "limited",
        "--network",
        "none",
        "busybox",
        "sleep",
        "60",
    ])?;
    let table = env.ok(&["stats", "--no-stream"])?;
    ensure!(
        table.contains("MEM USAGE / LIMIT") && table.contains("limited"),
        "{table}"
    );
    let stats: Value =
        serde_json::from_str(&env.ok(&["-o", "json", "stats", "--no-stream", "limited"])?)?;
    ensure!(stats[0]["PIDs"].as_u64().unwrap_or(0) >= 1, "{stats}");
    env.ok(&["update", "-m", "32m", "--pids-limit", "50", "limited"])?;
    let v = env.inspect("limited")?;
    ensure!(
        v["HostConfig"]["Memory"] == 32 << 20 && v["HostConfig"]["PidsLimit"] == 50,
        "{}",
        v["HostConfig"]
    );
    let cgroup = format!(
        "/sys/fs/cgroup/memory/{}/default-{}/memory.limit_in_bytes",
        env.cgroup_parent(),
        v["Id"].as_str().context("id")?
    );
    let limit = std::fs::read_to_string(&cgroup).with_context(|| cgroup.clone())?;
    ensure!(
        limit.trim() == (32u64 << 20).to_string(),
        "{cgroup}: {limit}"
    );
    let err = env.fails(1, &["update", "-m", "12q", "limited"])?;
    ensure!(err.contains("12q"), "{err}");
    env.stop()
}

#[test]
fn quickstart_builds_the_demo_image_and_runs_it() -> Result<()> {
    let env = Env::start("10.249.0.0")?;
    let out = env.ok(&["quickstart"])?;
    ensure!(out.contains("hello from berth\n"), "{out:?}");
    ensure!(env.ok(&["images"])?.contains("demo"));
    // The image is kept: the next run does not need the quick start.
    let out = env.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "demo",
        "sh",
        "-c",
        "echo $((6*7))",
    ])?;
    ensure!(out == "42\n", "{out:?}");
    ensure!(
        env.ok(&["ps", "-aq"])?.trim().is_empty(),
        "--rm left a container"
    );
    env.stop()
}

#[test]
fn run_pulls_a_missing_image_from_a_registry_on_loopback() -> Result<()> {
    let env = Env::start("10.250.0.0")?;
    let registry = Registry::start()?;
    registry.push_layout(env._images.path(), images::BUSYBOX_TAG, "tools/busybox:1")?;
    let reference = format!("{}/tools/busybox:1", registry.addr());
    let out = env.ctl(&[
        "run",
        "--rm",
        "--network",
        "none",
        &reference,
        "echo",
        "pulled",
    ])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.success(), "{err}");
    ensure!(out.stdout == b"pulled\n", "{out:?}");
    ensure!(err.contains("Unable to find image"), "{err}");
    // Now it is stored: no pull, and --pull never works.
    let out = env.ctl(&[
        "run",
        "--rm",
        "--pull",
        "never",
        "--network",
        "none",
        &reference,
        "true",
    ])?;
    ensure!(
        out.status.success() && !String::from_utf8_lossy(&out.stderr).contains("Unable"),
        "{out:?}"
    );
    // --pull always asks the registry again; a missing tag fails with 125.
    env.ok(&[
        "run",
        "--rm",
        "--pull",
        "always",
        "--network",
        "none",
        &reference,
        "true",
    ])?;
    let missing = format!("{}/tools/busybox:nope", registry.addr());
    let out = env.ctl(&["run", "--rm", "--network", "none", &missing, "true"])?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(125), "{out:?}");
    let last = err.trim().lines().last().unwrap_or_default();
    ensure!(
        last.starts_with("berthctl: error:") && last.contains("nope"),
        "{err}"
    );
    env.stop()
}

#[test]
fn named_volume_outlives_its_container() -> Result<()> {
    let env = Env::start("10.242.0.0")?;
    env.ok(&["volume", "create", "data"])?;
    env.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        "data:/data",
        "busybox",
        "sh",
        "-c",
        "echo kept > /data/file",
    ])?;
    let out = env.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        "data:/data:ro",
        "busybox",
        "cat",
        "/data/file",
    ])?;
    ensure!(out == "kept\n", "{out:?}");
    ensure!(
        env.ok(&["volume", "ls", "-q"])?
            .lines()
            .any(|l| l == "data")
    );
    // In use: rm is refused, naming the container.
    env.ok(&[
        "run",
        "-d",
        "--name",
        "user",
        "--network",
        "none",
        "-v",
        "data:/data",
        "busybox",
        "sleep",
        "60",
    ])?;
    let err = env.fails(1, &["volume", "rm", "data"])?;
    ensure!(err.contains("user") || err.contains("in use"), "{err}");
    // --volumes-from sees the same data.
    let out = env.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "--volumes-from",
        "user",
        "busybox",
        "cat",
        "/data/file",
    ])?;
    ensure!(out == "kept\n", "{out:?}");
    env.ok(&["rm", "-f", "user"])?;
    let v: Value = serde_json::from_str(&env.ok(&["volume", "inspect", "data"])?)?;
    ensure!(v[0]["Name"] == "data" && v[0]["Driver"] == "local", "{v}");
    env.ok(&["volume", "rm", "data"])?;
    // Anonymous volumes: rm -v and run --rm remove them, plain rm keeps them.
    env.ok(&[
        "run",
        "-d",
        "--name",
        "anon",
        "--network",
        "none",
        "-v",
        "/scratch",
        "busybox",
        "sleep",
        "60",
    ])?;
    ensure!(
        env.ok(&["volume", "ls", "-q"])?.lines().count() == 1,
        "one anonymous volume"
    );
    env.ok(&["rm", "-f", "-v", "anon"])?;
    ensure!(
        env.ok(&["volume", "ls", "-q"])?.trim().is_empty(),
        "rm -v kept the volume"
    );
    env.ok(&[
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        "/scratch",
        "busybox",
        "true",
    ])?;
    ensure!(
        env.ok(&["volume", "ls", "-q"])?.trim().is_empty(),
        "run --rm kept the volume"
    );
    env.ok(&[
        "run",
        "--name",
        "keep",
        "--network",
        "none",
        "-v",
        "/scratch",
        "busybox",
        "true",
    ])?;
    env.ok(&["rm", "keep"])?;
    ensure!(
        env.ok(&["volume", "ls", "-q"])?.lines().count() == 1,
        "rm without -v removed it"
    );
    env.ok(&["volume", "prune"])?;
    ensure!(
        env.ok(&["volume", "ls", "-q"])?.trim().is_empty(),
        "prune kept it"
    );
    env.fails(1, &["volume", "inspect", "data"])?;
    env.stop()
}

#[test]
fn memory_limit_ends_in_oom_kill() -> Result<()> {
    let env = Env::start("10.243.0.0")?;
    // tail buffers its whole input when it never sees a newline.
    let out = env.ctl(&[
        "run",
        "--name",
        "hog",
        "-m",
        "16m",
        "--network",
        "none",
        "busybox",
        "tail",
        "/dev/zero",
    ])?;
    ensure!(
        out.status.code() == Some(137),
        "exit {:?}: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    let v = env.inspect("hog")?;
    ensure!(
        v["State"]["OOMKilled"] == true && v["State"]["ExitCode"] == 137,
        "{}",
        v["State"]
    );
    ensure!(v["HostConfig"]["Memory"] == 16 << 20, "{}", v["HostConfig"]);
    env.stop()
}

#[test]
fn published_port_serves_httpd_on_loopback() -> Result<()> {
    let env = Env::start("10.244.0.0")?;
    let port = free_port()?;
    let publish = format!("127.0.0.1:{port}:80");
    env.ok(&[
        "run",
        "-d",
        "--name",
        "web",
        "-p",
        &publish,
        "busybox",
        "sh",
        "-c",
        "mkdir -p /www && echo hello > /www/index.html && exec httpd -f -p 80 -h /www",
    ])?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match http_get_status(port, "/index.html") {
            Ok(200) => break,
            other => {
                ensure!(
                    Instant::now() < deadline,
                    "httpd not reachable on {port}: {other:?}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    let ps = env.ok(&["ps"])?;
    ensure!(ps.contains(&format!("127.0.0.1:{port}->80/tcp")), "{ps}");
    let v = env.inspect("web")?;
    ensure!(
        v["NetworkSettings"]["Ports"]["80/tcp"][0]["HostPort"].as_str()
            == Some(port.to_string().as_str()),
        "{}",
        v["NetworkSettings"]
    );
    env.ok(&["rm", "-f", "web"])?;
    ensure!(
        http_get_status(port, "/").is_err(),
        "the port is still served after rm"
    );
    env.stop()
}

/// A pty pair: the test holds the master, berthctl gets the slave as its terminal.
fn pty() -> Result<(std::fs::File, OwnedFd)> {
    let pair = nix::pty::openpty(
        Some(&nix::pty::Winsize {
            ws_row: 30,
            ws_col: 100,
            ws_xpixel: 0,
            ws_ypixel: 0,
        }),
        None,
    )?;
    Ok((std::fs::File::from(pair.master), pair.slave))
}

/// Spawns berthctl with the pty's slave as stdin, stdout and stderr.
fn spawn_on_pty(env: &Env, slave: &OwnedFd, args: &[&str]) -> Result<Child> {
    let mut cmd = env.berth().ctl();
    cmd.args(args)
        .stdin(Stdio::from(slave.try_clone()?))
        .stdout(Stdio::from(slave.try_clone()?))
        .stderr(Stdio::from(slave.try_clone()?));
    Ok(cmd.spawn()?)
}

#[test]
fn interactive_sessions_through_a_pty_detach_with_ctrl_p_ctrl_q() -> Result<()> {
    let env = Env::start("10.245.0.0")?;
    env.ok(&[
        "run",
        "-dit",
        "--name",
        "shell",
        "--network",
        "none",
        "busybox",
        "sh",
    ])?;

    // exec -it sh: a real terminal inside (tty), the size is passed, then detach.
    let (mut master, slave) = pty()?;
    let mut child = spawn_on_pty(&env, &slave, &["exec", "-it", "shell", "sh"])?;
    let _ = nix::fcntl::fcntl(
        &master,
        nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
    );
    master.write_all(b"tty; stty size; echo pty-$((40+2))\r")?;
    let seen = read_until(&mut master, "pty-42", Duration::from_secs(10))?;
    ensure!(seen.contains("/dev/pts/"), "no tty inside: {seen:?}");
    ensure!(
        seen.contains("30 100"),
        "terminal size not passed: {seen:?}"
    );
    master.write_all(b"\x10\x11")?;
    ensure!(
        wait_child(&mut child, Duration::from_secs(10))? == Some(0),
        "detach exit code"
    );
    ensure!(env.inspect("shell")?["State"]["Running"] == true);

    // attach to the init shell, type into it, detach again.
    let mut child = spawn_on_pty(&env, &slave, &["attach", "shell"])?;
    std::thread::sleep(Duration::from_millis(300));
    master.write_all(b"echo attached-$((1+1))\r")?;
    read_until(&mut master, "attached-2", Duration::from_secs(10))?;
    master.write_all(b"\x10\x11")?;
    ensure!(
        wait_child(&mut child, Duration::from_secs(10))? == Some(0),
        "detach exit code"
    );
    ensure!(env.inspect("shell")?["State"]["Running"] == true);

    // run -it: exit code of the shell comes back through the terminal session.
    let mut child = spawn_on_pty(
        &env,
        &slave,
        &["run", "-it", "--rm", "--network", "none", "busybox", "sh"],
    )?;
    std::thread::sleep(Duration::from_millis(300));
    master.write_all(b"echo inside-$((2+3)); exit 4\r")?;
    read_until(&mut master, "inside-5", Duration::from_secs(10))?;
    ensure!(
        wait_child(&mut child, Duration::from_secs(10))? == Some(4),
        "run -it exit code"
    );
    env.stop()
}

#[test]
fn error_paths_exit_like_docker() -> Result<()> {
    let env = Env::start("10.246.0.0")?;
    // Unknown container and image.
    for args in [
        &["stop", "nope"][..],
        &["logs", "nope"],
        &["rm", "nope"],
        &["kill", "nope"],
        &["wait", "nope"],
        &["inspect", "nope"],
    ] {
        let err = env.fails(1, args)?;
        ensure!(err.contains("no such container: nope"), "{args:?}: {err}");
    }
    let err = env.fails(125, &["start", "nope"])?;
    ensure!(err.contains("no such container"), "{err}");
    let err = env.fails(125, &["exec", "nope", "true"])?;
    ensure!(err.contains("no such container"), "{err}");
    let err = env.fails(125, &["run", "--pull", "never", "no-such-image"])?;
    ensure!(
        err.contains("no such image") && err.contains("no-such-image"),
        "{err}"
    );
    // Bad flag values, refused before anything is made.
    let err = env.fails(125, &["run", "-m", "12q", "busybox", "true"])?;
    ensure!(err.contains("12q"), "{err}");
    let err = env.fails(125, &["run", "-p", "99999:80", "busybox", "true"])?;
    ensure!(err.contains("99999"), "{err}");
    // A name conflict names the name; nothing half-made stays.
    env.ok(&[
        "create",
        "--name",
        "taken",
        "--network",
        "none",
        "busybox",
        "true",
    ])?;
    let err = env.fails(
        125,
        &[
            "run",
            "--name",
            "taken",
            "--network",
            "none",
            "busybox",
            "true",
        ],
    )?;
    ensure!(err.contains("taken"), "{err}");
    ensure!(env.ok(&["ps", "-aq"])?.lines().count() == 1);
    let snapshots = env.ok(&["snapshot", "ls"])?;
    ensure!(
        snapshots
            .lines()
            .filter(|l| l.contains("ACTIVE") || l.contains("Active"))
            .count()
            <= 1,
        "{snapshots}"
    );
    // Exec into a stopped container.
    let err = env.fails(125, &["exec", "taken", "true"])?;
    ensure!(err.contains("not running"), "{err}");
    // Services down: 125 and a hint to start them.
    let empty = tempfile::tempdir()?;
    let out = Command::new(berth_tests::harness::bin("berthctl"))
        .arg("--state-dir")
        .arg(empty.path())
        .args(["run", "busybox", "true"])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(125), "{:?}: {err}", out.status);
    ensure!(
        err.contains("berthctl system up") && err.trim().lines().count() == 1,
        "{err}"
    );
    env.stop()
}
