//! strata's FUSE union filesystem. `view` flattens a chain of immutable layers once;
//! the filesystem that serves it (and the writable upper) build on that view.

pub mod view;
