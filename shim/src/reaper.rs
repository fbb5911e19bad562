//! The one place that reaps children: every exit of every child (runtime commands, and the
//! container processes the shim inherits as a subreaper) is collected here with
//! `waitpid(-1)` and handed to whoever subscribed to that pid.
//!
//! Nothing else in the shim may wait for a child (no `Command::output`, no
//! `tokio::process`): it would race with this reaper. A pid is subscribed in the same
//! synchronous step that spawns it ([`Reaper::spawn`]), and a container process whose pid is
//! only learnt later (from the runtime's pid file) may already have exited: such exits are
//! kept, bounded, until someone claims them ([`Reaper::subscribe`]).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::SystemTime;

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;
use tokio::sync::oneshot;

/// How many exits of unsubscribed pids are kept for a late subscriber.
const UNCLAIMED_MAX: usize = 1024;

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    /// Exit code, or 128 + signal.
    pub code: u32,
    /// The signal that killed it; 0 if it exited.
    pub signal: u32,
    /// When the reaper collected it.
    pub at: SystemTime,
}

impl Exit {
    fn from_status(status: WaitStatus) -> Option<(i32, Exit)> {
        let at = SystemTime::now();
        match status {
            WaitStatus::Exited(pid, code) => Some((
                pid.as_raw(),
                Exit {
                    code: code as u32,
                    signal: 0,
                    at,
                },
            )),
            WaitStatus::Signaled(pid, signal, _) => Some((
                pid.as_raw(),
                Exit {
                    code: 128 + signal as u32,
                    signal: signal as u32,
                    at,
                },
            )),
            _ => None,
        }
    }
}

#[derive(Default)]
struct State {
    waiters: HashMap<i32, oneshot::Sender<Exit>>,
    unclaimed: VecDeque<(i32, Exit)>,
}

/// Collects child exits and routes them to subscribers.
#[derive(Default)]
pub struct Reaper {
    state: Mutex<State>,
}

impl Reaper {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock only means a panic elsewhere; the map itself stays consistent.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Spawns `command` and subscribes to its exit in one step.
    pub fn spawn(
        &self,
        command: &mut std::process::Command,
    ) -> std::io::Result<(std::process::Child, oneshot::Receiver<Exit>)> {
        let mut state = self.state();
        let child = command.spawn()?;
        let (tx, rx) = oneshot::channel();
        state.waiters.insert(child.id() as i32, tx);
        Ok((child, rx))
    }

    /// Subscribes to the exit of `pid`, a process that is (or was) a child of the shim; the
    /// receiver resolves at once if it has already been reaped.
    pub fn subscribe(&self, pid: u32) -> oneshot::Receiver<Exit> {
        let pid = pid as i32;
        let (tx, rx) = oneshot::channel();
        let mut state = self.state();
        if let Some(i) = state.unclaimed.iter().position(|(p, _)| *p == pid) {
            if let Some((_, exit)) = state.unclaimed.remove(i) {
                let _ = tx.send(exit);
            }
        } else {
            state.waiters.insert(pid, tx);
        }
        rx
    }

    /// Reaps every child that has exited and dispatches the exits.
    pub fn reap(&self) {
        loop {
            match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(status) => {
                    let Some((pid, exit)) = Exit::from_status(status) else {
                        continue;
                    };
                    let mut state = self.state();
                    match state.waiters.remove(&pid) {
                        Some(tx) => {
                            let _ = tx.send(exit);
                        }
                        None => {
                            if state.unclaimed.len() >= UNCLAIMED_MAX {
                                state.unclaimed.pop_front();
                            }
                            state.unclaimed.push_back((pid, exit));
                        }
                    }
                }
            }
        }
    }

    /// Reaps on every SIGCHLD until the signal stream ends.
    pub async fn run(&self, mut sigchld: tokio::signal::unix::Signal) {
        loop {
            self.reap();
            if sigchld.recv().await.is_none() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[allow(clippy::zombie_processes)] // reaped by the Reaper under test
    fn late_subscriber_gets_the_exit() {
        let reaper = Reaper::default();
        let child = std::process::Command::new("/bin/sh")
            .args(["-c", "exit 3"])
            .spawn()
            .expect("spawn sh");
        let pid = child.id();
        // Wait until the child is a zombie, then reap without a subscriber.
        for _ in 0..500 {
            reaper.reap();
            if !reaper.state().unclaimed.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let mut rx = reaper.subscribe(pid);
        let exit = rx.try_recv().expect("exit kept for the late subscriber");
        assert_eq!((exit.code, exit.signal), (3, 0));
    }
}
