//! The one message the shim daemon sends its starter, over a pipe, when it is ready (or has
//! failed to get ready). The starter prints the address only after [`ReadySender::serving`].

use std::fs::File;
use std::io::{Read, Write};

/// What the daemon tells its starter.
#[derive(Debug, PartialEq, Eq)]
pub enum Ready {
    /// The daemon serves on its socket; its pid.
    Serving { pid: u32 },
    /// The daemon could not start.
    Failed { message: String },
}

/// The daemon's end.
pub struct ReadySender(File);

/// The starter's end.
pub struct ReadyReceiver(File);

/// A connected pair (close-on-exec: no runtime or container inherits it).
pub fn ready_channel() -> nix::Result<(ReadySender, ReadyReceiver)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    Ok((ReadySender(File::from(w)), ReadyReceiver(File::from(r))))
}

impl ReadySender {
    /// Tells the starter the daemon serves, as process `pid`.
    pub fn serving(mut self, pid: u32) {
        let _ = write!(self.0, "S{pid}");
    }

    /// Tells the starter why the daemon cannot start.
    pub fn failed(mut self, message: &str) {
        let _ = write!(self.0, "F{message}");
    }
}

impl ReadyReceiver {
    /// Waits for the daemon's message (or for every writer to be gone).
    pub fn wait(mut self) -> Ready {
        let mut buf = String::new();
        let _ = self.0.read_to_string(&mut buf);
        if let Some(pid) = buf.strip_prefix('S').and_then(|p| p.parse().ok()) {
            return Ready::Serving { pid };
        }
        Ready::Failed {
            message: match buf.strip_prefix('F') {
                Some(m) => m.to_owned(),
                None => "the shim exited while starting".to_owned(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_round_trip() {
        let (tx, rx) = ready_channel().expect("pipe");
        tx.serving(42);
        assert_eq!(rx.wait(), Ready::Serving { pid: 42 });
        let (tx, rx) = ready_channel().expect("pipe");
        tx.failed("no");
        assert_eq!(
            rx.wait(),
            Ready::Failed {
                message: "no".into()
            }
        );
        let (tx, rx) = ready_channel().expect("pipe");
        drop(tx);
        assert!(matches!(rx.wait(), Ready::Failed { .. }));
    }
}
