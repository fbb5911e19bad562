//! berth's test harness: start berth under a temp root, fixtures (OCI images built by our own
//! code, a real registry on loopback), and the leak checks every end-to-end test relies on.

pub mod bench;
pub mod cleanup;
pub mod cri;
pub mod cri_stream;
pub mod ctl_env;
pub mod fixtures;
pub mod harness;
pub mod host;
pub mod images_api;
pub mod snapshots_api;
pub mod spdy;
pub mod tree;

pub use harness::{Berth, Mode, Options};
