//! End-to-end tests of the foundation: real service binaries under temp roots, driven through
//! berthctl, in all-in-one and separate-process mode.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;
use std::time::Duration;

use berth_tests::harness::{self, SERVICES, bin};
use berth_tests::{Berth, Mode, Options};

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_owned()
}

fn by_service<'a>(statuses: &'a [serde_json::Value], name: &str) -> &'a serde_json::Value {
    statuses
        .iter()
        .find(|s| s["service"] == name)
        .unwrap_or_else(|| panic!("{name} missing from info"))
}

#[test]
fn all_in_one_serves_every_service_on_0660_sockets() -> anyhow::Result<()> {
    let berth = Berth::start(Mode::AllInOne)?;
    let (ok, statuses) = berth.info()?;
    assert!(ok, "info exits 0 when all are healthy: {statuses:?}");
    assert_eq!(statuses.len(), 5);
    let pid = statuses[0]["pid"].as_u64();
    for name in SERVICES {
        let s = by_service(&statuses, name);
        assert_eq!(s["health"], "serving", "{s}");
        assert_eq!(s["pid"].as_u64(), pid, "one berthd hosts all: {s}");
        assert_eq!(
            s["root"].as_str(),
            Some(berth.root().join(name).to_str().unwrap())
        );
        let mode = std::fs::metadata(berth.socket(name))?.permissions().mode();
        assert_eq!(mode & 0o777, 0o660, "{name}.sock mode {mode:o}");
    }
    // `up` again is a no-op that starts nothing.
    let again = berth.up(&Options::default())?;
    assert!(again.status.success(), "{}", stderr(&again));
    assert_eq!(berth.info()?.1[0]["pid"].as_u64(), pid);
    berth.stop()
}

#[test]
fn separate_mode_reports_and_restarts_exactly_the_killed_service() -> anyhow::Result<()> {
    let berth = Berth::start(Mode::Separate)?;
    let before = berth.pids()?;
    let mut pids: Vec<_> = before.iter().filter_map(|(_, p)| *p).collect();
    pids.sort();
    pids.dedup();
    assert_eq!(pids.len(), 5, "one process per service: {before:?}");

    let network = before
        .iter()
        .find(|(n, _)| n == "network")
        .unwrap()
        .1
        .unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(network as i32),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    // Wait until the kernel has torn the process down.
    harness::wait_exited(network, Duration::from_secs(5))?;
    let (ok, statuses) = berth.info()?;
    assert!(!ok, "info exits non-zero with a service down");
    for name in SERVICES {
        let s = by_service(&statuses, name);
        assert_eq!(s["reachable"], name != "network", "{s}");
    }
    let out = berth.run_ctl(&["info"])?;
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "exactly one complaint: {err}");
    assert!(
        err.contains("network") && err.contains("network.sock"),
        "{err}"
    );

    // Bring back the one that died; the others keep their pids.
    let up = berth.up(&Options::default())?;
    assert!(up.status.success(), "{}", stderr(&up));
    let after = berth.pids()?;
    for ((name, old), (_, new)) in before.iter().zip(&after) {
        assert!(new.is_some(), "{name} is back");
        if name == "network" {
            assert_ne!(old, new);
        } else {
            assert_eq!(old, new, "{name} was not restarted");
        }
    }
    berth.stop()
}

#[test]
fn second_instance_is_refused_and_leaves_the_socket_alone() -> anyhow::Result<()> {
    let berth = Berth::start(Mode::Separate)?;
    let socket = berth.socket("images");
    let inode = std::fs::metadata(&socket)?.ino();
    let out = Command::new(bin("berth-images"))
        .arg("--root")
        .arg(berth.root())
        .arg("--state")
        .arg(berth.state())
        .output()?;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("already running"), "{err}");
    assert_eq!(std::fs::metadata(&socket)?.ino(), inode, "socket untouched");
    assert!(berth.info()?.0, "the first instance still serves");
    berth.stop()
}

#[test]
fn stale_socket_is_replaced() -> anyhow::Result<()> {
    let dir = tempfile::Builder::new().prefix("berth-test-").tempdir()?;
    let state = dir.path().join("state");
    std::fs::create_dir_all(&state)?;
    // A socket file nobody listens on, as a crashed service leaves it.
    drop(std::os::unix::net::UnixListener::bind(
        state.join("images.sock"),
    )?);
    let mut child = Command::new(bin("berth-images"))
        .arg("--root")
        .arg(dir.path().join("root"))
        .arg("--state")
        .arg(&state)
        .spawn()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::os::unix::net::UnixStream::connect(state.join("images.sock")).is_err() {
        assert!(std::time::Instant::now() < deadline, "never served");
        assert!(child.try_wait()?.is_none(), "berth-images exited");
        std::thread::sleep(Duration::from_millis(20));
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    assert!(child.wait()?.success());
    assert!(
        !state.join("images.sock").exists(),
        "socket removed on exit"
    );
    Ok(())
}

#[test]
fn sigterm_lets_an_in_flight_call_finish() -> anyhow::Result<()> {
    let options = Options {
        env: vec![("BERTH_FAILPOINT_VERSION_DELAY_MS".into(), "1500".into())],
        ..Default::default()
    };
    let berth = Berth::start_with(Mode::AllInOne, options)?;
    let pid = berth.pids()?[0].1.expect("pid");
    // `version` calls Version on every service; each call is held for 1.5 s by the failpoint.
    let version = berth
        .ctl()
        .arg("-o")
        .arg("json")
        .arg("version")
        .spawn_output()?;
    std::thread::sleep(Duration::from_millis(500));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    let out = version.join().expect("version thread")?;
    assert!(out.status.success(), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(
        v["services"].as_array().map(Vec::len),
        Some(5),
        "every in-flight call completed: {v}"
    );
    berth.check_no_leaks()?;
    // Already stopped: `down` finds nothing.
    berth.stop()
}

/// Runs a command on a thread and hands back its output.
trait SpawnOutput {
    fn spawn_output(
        &mut self,
    ) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<std::process::Output>>>;
}

impl SpawnOutput for Command {
    fn spawn_output(
        &mut self,
    ) -> anyhow::Result<std::thread::JoinHandle<anyhow::Result<std::process::Output>>> {
        let child = self
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()?;
        Ok(std::thread::spawn(move || Ok(child.wait_with_output()?)))
    }
}
