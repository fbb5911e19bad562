//! The channel between the runtime and the process it forks (container init or exec): one
//! SOCK_SEQPACKET socket pair, one message per packet.
//!
//! ```text
//! runtime                                  child
//!   clone ------------------------------->  waits for Go
//!   uid/gid maps, oom_score_adj, cgroups
//!   Go ---------------------------------->  namespaces, mounts, pivot, process setup
//!   <------------------------------- Ready | Failed(message)
//!   writes pid file and state, exits        (init: blocks on the exec FIFO until `start`)
//! ```
//! A child that dies before sending Ready shows up as end of file.

use std::os::fd::OwnedFd;

use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};

/// One message.
#[derive(Debug, PartialEq, Eq)]
pub enum Message {
    /// Parent: the child may proceed.
    Go,
    /// Child: set up, about to wait for start (init) or exec.
    Ready,
    /// Child: set-up failed; nothing was executed.
    Failed(String),
}

/// One end of the channel.
pub struct Channel(OwnedFd);

/// A connected pair (parent end, child end), close-on-exec.
pub fn pair() -> nix::Result<(Channel, Channel)> {
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    Ok((Channel(a), Channel(b)))
}

impl Channel {
    /// Sends one message.
    pub fn send(&self, msg: &Message) -> nix::Result<()> {
        let mut buf = Vec::new();
        match msg {
            Message::Go => buf.push(b'G'),
            Message::Ready => buf.push(b'R'),
            Message::Failed(m) => {
                buf.push(b'F');
                buf.extend_from_slice(m.as_bytes());
            }
        }
        nix::unistd::write(&self.0, &buf).map(drop)
    }

    /// Receives one message; None at end of file (the peer is gone).
    pub fn recv(&self) -> nix::Result<Option<Message>> {
        let mut buf = vec![0u8; 8192];
        let n = loop {
            match nix::unistd::read(&self.0, &mut buf) {
                Err(nix::errno::Errno::EINTR) => continue,
                r => break r?,
            }
        };
        Ok(match buf[..n].split_first() {
            None => None,
            Some((b'G', _)) => Some(Message::Go),
            Some((b'R', _)) => Some(Message::Ready),
            Some((_, rest)) => Some(Message::Failed(String::from_utf8_lossy(rest).into_owned())),
        })
    }
}
