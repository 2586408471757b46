//! Shared support for strata's integration tests.
//!
//! - `harness`: runs strata (and other tools) as the unprivileged test user when the
//!   tests run as root, each test in its own work directory.
//! - `busybox`: a runnable busybox image, and `strata run` as the test user.
//! - `builder`: writes tar layers (hostile ones too) and OCI image layouts.
//! - `snapshot`: a store's visible state, to assert that a failed command changed nothing.
//! - `fsdiff`: walks a mounted tree and compares it with the union of builder layers.
//! - `mountns`: runs mount scripts in namespaces that take their mounts with them.

#![allow(dead_code)]

pub mod builder;
pub mod busybox;
pub mod fsdiff;
pub mod harness;
pub mod mountns;
pub mod overlay;
pub mod snapshot;

#[allow(unused_imports)]
pub use builder::*;
#[allow(unused_imports)]
pub use harness::*;
#[allow(unused_imports)]
pub use snapshot::*;
