//! strata: a rootless container runtime. The library behind the `strata` binary.
//!
//! Dependencies point one way: unionfs -> store -> image (runtime comes later).

pub mod image;
pub mod store;
pub mod unionfs;
