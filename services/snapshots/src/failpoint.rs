//! Crash injection for tests: `BERTH_FAILPOINT_SNAPSHOTS=<point>[,<point>...]` makes the process
//! SIGKILL itself the first time it reaches a named point, exactly as `kill -9` would, so tests
//! can check that every state a crash can leave is repaired.
//!
//! Points: `prepare:before-commit`, `commit:before-commit`, `commit:after-commit`,
//! `remove:before-commit`, `remove:after-commit`, `remove:after-rename`,
//! `remove:mid-delete`, `cleanup:before-commit`.

use std::sync::OnceLock;

/// Environment variable naming the points at which to crash.
pub const ENV: &str = "BERTH_FAILPOINT_SNAPSHOTS";

/// Kills the process if `point` is armed.
pub(crate) fn hit(point: &str) {
    static ARMED: OnceLock<Vec<String>> = OnceLock::new();
    let armed = ARMED.get_or_init(|| {
        std::env::var(ENV)
            .map(|v| v.split(',').map(|p| p.trim().to_owned()).collect())
            .unwrap_or_default()
    });
    if armed.iter().any(|p| p == point) {
        eprintln!("berth-snapshots: failpoint {point}: killing the process");
        let _ =
            rustix::process::kill_process(rustix::process::getpid(), rustix::process::Signal::KILL);
    }
}
