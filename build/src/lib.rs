//! berth's image builder, used by `berthctl build` and `berthctl commit`: Dockerfile parsing,
//! build contexts, running build steps through the berth services, and the build cache.

#![warn(missing_docs)]
