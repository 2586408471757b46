//! strata's FUSE union filesystem. `view` flattens a chain of immutable layers once
//! (or `dirlayer`, a directory of plain lowers at a time, as it is used); `lower`
//! serves that view; `upper` is the writable layer on disk and `merge` what
//! the filesystem keeps in memory of it; `fs` answers the kernel; `mount` puts it on
//! a directory.

pub mod dirlayer;
pub mod fs;
pub mod grow;
pub mod idmap;
pub mod lower;
pub mod merge;
pub mod mount;
pub mod options;
pub mod upper;
pub mod view;

use std::io;
use std::path::PathBuf;

use thiserror::Error;

use crate::store::StoreError;

#[derive(Debug, Error)]
pub enum UnionError {
    #[error(transparent)]
    Store(#[from] StoreError),

    #[error(
        "/dev/fuse is not accessible ({0}): FUSE needs it readable and writable by you; ask your administrator to make it mode 0666 (as Debian and Fedora ship it) and to load the fuse module"
    )]
    FuseDevice(#[source] io::Error),

    #[error(
        "cannot open layer tree {path}: {source}; the store is damaged: remove the image and import it again"
    )]
    Layer {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("mountpoint {path} is not a directory: create it first")]
    BadMountpoint { path: PathBuf },

    #[error(
        "cannot mount on {mountpoint}: {source}; outside a user namespace this needs fusermount3 (Debian package fuse3)"
    )]
    Mount {
        mountpoint: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("cannot use {path} as the writable layer: {source}")]
    Upper {
        path: PathBuf,
        #[source]
        source: upper::UpperError,
    },

    #[error("cannot serve the mount in the background: {0}")]
    Daemon(#[source] io::Error),

    #[error(transparent)]
    LowerDir(#[from] dirlayer::DirLayerError),

    #[error("the filesystem stopped serving: {0}")]
    Serve(#[source] io::Error),

    #[error("cannot unmount {mountpoint}: {reason}")]
    Unmount { mountpoint: PathBuf, reason: String },
}

impl UnionError {
    pub fn is_user_error(&self) -> bool {
        match self {
            UnionError::Store(e) => e.is_user_error(),
            UnionError::Layer { .. } | UnionError::Serve(_) | UnionError::Daemon(_) => false,
            _ => true,
        }
    }
}
