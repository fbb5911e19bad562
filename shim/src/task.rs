//! The lifecycle of a process (a container's init process or an exec process).
//!
//! ```text
//! Created --start--> Running --pause--> Paused --resume--> Running
//!    |                  |                  |
//!    +------exit--------+-------exit-------+----> Stopped --delete--> (gone)
//! ```
//!
//! A created process can be deleted (the runtime kills it); a running or paused one must
//! stop first. Exec processes are never paused on their own: pausing a container freezes
//! them with it.

use std::fmt;

use crate::error::{Error, Result};

/// Where a process is in its lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Created by the runtime, waiting to be started (exec processes: only recorded).
    Created,
    /// Started and not yet reaped.
    Running,
    /// Frozen (its container's cgroup is frozen).
    Paused,
    /// Reaped; its exit status is known.
    Stopped,
}

/// What a request wants to do to a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Pause,
    Resume,
    Exit,
    Delete,
    Exec,
    Update,
}

impl Action {
    fn verb(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Exit => "exit",
            Action::Delete => "delete (stop it first)",
            Action::Exec => "exec (it must be running)",
            Action::Update => "update",
        }
    }
}

impl Status {
    /// Whether `action` is allowed now.
    pub fn can(self, action: Action) -> bool {
        use Action as A;
        use Status as S;
        matches!(
            (self, action),
            (S::Created, A::Start)
                | (S::Running, A::Pause)
                | (S::Paused, A::Resume)
                | (S::Created | S::Running | S::Paused, A::Exit)
                | (S::Created | S::Stopped, A::Delete)
                | (S::Running, A::Exec)
                | (S::Created | S::Running | S::Paused, A::Update)
        )
    }

    /// The state after `action`, or why it is not allowed (`id` names the container).
    pub fn transition(self, action: Action, id: &str) -> Result<Status> {
        if !self.can(action) {
            return Err(Error::BadState {
                id: id.to_owned(),
                state: self,
                action: action.verb(),
            });
        }
        Ok(match action {
            Action::Start | Action::Resume => Status::Running,
            Action::Pause => Status::Paused,
            Action::Exit | Action::Delete => Status::Stopped,
            Action::Exec | Action::Update => self,
        })
    }

    /// The wire enum.
    pub fn to_proto(self) -> berth_api::berth::types::v1::TaskStatus {
        use berth_api::berth::types::v1::TaskStatus as T;
        match self {
            Status::Created => T::Created,
            Status::Running => T::Running,
            Status::Paused => T::Paused,
            Status::Stopped => T::Stopped,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Status::Created => "created",
            Status::Running => "running",
            Status::Paused => "paused",
            Status::Stopped => "stopped",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifecycle() {
        let s = Status::Created
            .transition(Action::Start, "c")
            .expect("start");
        assert_eq!(s, Status::Running);
        let s = s.transition(Action::Pause, "c").expect("pause");
        assert!(s.transition(Action::Delete, "c").is_err());
        assert!(s.transition(Action::Start, "c").is_err());
        let s = s.transition(Action::Exit, "c").expect("exit");
        assert!(s.transition(Action::Exit, "c").is_err());
        assert_eq!(
            s.transition(Action::Delete, "c").expect("delete"),
            Status::Stopped
        );
    }
}
