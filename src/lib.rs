//! strata: a rootless container runtime. The library behind the `strata` binary.
//!
//! Dependencies point one way: runtime -> unionfs -> store -> image.

pub mod image;
pub mod runtime;
pub mod store;
pub mod unionfs;
