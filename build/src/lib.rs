//! berth's image builder, used by `berthctl build` and `berthctl commit`: Dockerfile parsing,
//! build contexts, running build steps through the berth services, and the build cache.

#![warn(missing_docs)]

pub mod changes;
pub mod clients;
pub mod commit;
pub mod config;
pub mod context;
pub mod copy;
pub mod dockerfile;
pub mod error;
pub mod exec;
pub mod fsops;
pub mod ignore;
pub mod image;
pub mod progress;
pub mod rootfs;
pub mod upper;
