//! The runtime's own messages: JSON lines (`{"level","msg","time"}`, as runc and crun write
//! them) to the `--log` file when one is given, else plain lines on stderr.

use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

static LOG: OnceLock<(PathBuf, bool)> = OnceLock::new();

/// Sends messages to `path` (`json`: one JSON object per line).
pub fn init(path: PathBuf, json: bool) {
    let _ = LOG.set((path, json));
}

fn emit(level: &str, msg: &str) {
    if let Some((path, json)) = LOG.get()
        && let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
    {
        let line = if *json {
            serde_json::json!({
                "level": level,
                "msg": msg,
                "time": humantime::format_rfc3339_nanos(std::time::SystemTime::now()).to_string(),
            })
            .to_string()
        } else {
            format!("{level}: {msg}")
        };
        let _ = writeln!(f, "{line}");
        return;
    }
    let _ = writeln!(std::io::stderr(), "berth-runtime: {level}: {msg}");
}

/// An error (the command fails).
pub fn error(msg: &str) {
    emit("error", msg);
}

/// A warning (the command goes on).
pub fn warn(msg: &str) {
    emit("warning", msg);
}
