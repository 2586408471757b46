//! The `-o` options of fuse-overlayfs (and kernel overlayfs), as strata-overlayfs
//! takes them: what matters is honoured, what does not matter to strata is accepted
//! and ignored as fuse-overlayfs ignores it, and anything else is refused by name.

use std::path::PathBuf;

use crate::unionfs::upper::OverrideXattr;

/// A parsed option list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OverlayOptions {
    /// Top layer first, as given.
    pub lowerdirs: Vec<PathBuf>,
    pub upperdir: Option<PathBuf>,
    pub workdir: Option<PathBuf>,
    /// `fsync=0` or `volatile`: copy-ups are not fsynced.
    pub volatile: bool,
    /// `ro`: read-only even with an upper.
    pub read_only: bool,
    /// squash_to_root, squash_to_uid, squash_to_gid, static_nlink, noxattrs.
    pub shown: crate::unionfs::fs::Presentation,
    /// `xattr_permissions=0|1|2`: where the upper keeps owners and modes.
    pub override_xattr: OverrideXattr,
    /// What was accepted and ignored, for `-d`.
    pub ignored: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OptionError {
    #[error("no lowerdir= option: say which directories to join, e.g. -o lowerdir=/top:/bottom")]
    NoLowerdir,
    #[error("upperdir= needs workdir= too (an empty directory on the upper's filesystem)")]
    NoWorkdir,
    #[error("unknown option '{0}'")]
    Unknown(String),
    #[error("bad value in option '{0}'")]
    BadValue(String),
}

/// fuse-overlayfs options with no effect on strata: they tune fuse-overlayfs's own
/// threads, caches and inode numbers, which strata does its own way.
const IGNORED_VALUED: &[&str] = &[
    "timeout",
    "threaded",
    "fast_ino",
    "writeback",
    "plugins",
    "redirect_dir",
    "context",
    "fscontext",
    "defcontext",
    "rootcontext",
    "max_read",
    "fsname",
    "subtype",
    "index",
    "metacopy",
    "xino",
    "uuid",
];
/// Generic mount options and fuse-overlayfs flags with no effect here.
const IGNORED_FLAGS: &[&str] = &[
    "rw",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "noexec",
    "atime",
    "noatime",
    "relatime",
    "strictatime",
    "diratime",
    "nodiratime",
    "lazytime",
    "nolazytime",
    "sync",
    "async",
    "dirsync",
    "auto",
    "noauto",
    "user",
    "nouser",
    "users",
    "_netdev",
    "nofail",
    "default_permissions",
    "allow_other",
    "allow_root",
    "auto_unmount",
    "kernel_cache",
    "auto_cache",
    "debug",
    "noacl",
    "userxattr",
];

/// Parses option lists (each comma-separated, as given to `-o`).
pub fn parse(lists: &[String]) -> Result<OverlayOptions, OptionError> {
    let mut out = OverlayOptions::default();
    for option in lists
        .iter()
        .flat_map(|l| l.split(','))
        .filter(|o| !o.is_empty())
    {
        let (key, value) = match option.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (option, None),
        };
        match (key, value) {
            ("lowerdir", Some(v)) => {
                out.lowerdirs = v
                    .split(':')
                    .filter(|d| !d.is_empty())
                    .map(PathBuf::from)
                    .collect();
                if out.lowerdirs.is_empty() {
                    return Err(OptionError::BadValue(option.into()));
                }
            }
            ("upperdir", Some(v)) if !v.is_empty() => out.upperdir = Some(PathBuf::from(v)),
            ("workdir", Some(v)) if !v.is_empty() => out.workdir = Some(PathBuf::from(v)),
            ("fsync", Some("0")) => out.volatile = true,
            ("fsync", Some("1")) => out.volatile = false,
            ("volatile", None) => out.volatile = true,
            ("ro", None) => out.read_only = true,
            ("squash_to_root", None) => {
                out.shown.squash_uid = Some(0);
                out.shown.squash_gid = Some(0);
            }
            ("squash_to_uid", Some(v)) => out.shown.squash_uid = Some(id(option, v)?),
            ("squash_to_gid", Some(v)) => out.shown.squash_gid = Some(id(option, v)?),
            ("static_nlink", None) => out.shown.static_nlink = true,
            ("uidmapping", Some(v)) => out.shown.uid_map = id_ranges(option, v)?,
            ("gidmapping", Some(v)) => out.shown.gid_map = id_ranges(option, v)?,
            ("noxattrs", Some(v)) => out.shown.no_xattrs = id(option, v)? != 0,
            ("xattr_permissions", Some(v)) => {
                out.override_xattr = OverrideXattr::from_xattr_permissions(id(option, v)?)
                    .ok_or_else(|| OptionError::BadValue(option.into()))?;
            }
            (k, Some(_)) if IGNORED_VALUED.contains(&k) => out.ignored.push(option.into()),
            (k, None) if IGNORED_FLAGS.contains(&k) => out.ignored.push(option.into()),
            (
                "lowerdir" | "upperdir" | "workdir" | "fsync" | "squash_to_uid" | "squash_to_gid"
                | "noxattrs" | "xattr_permissions",
                _,
            ) => {
                return Err(OptionError::BadValue(option.into()));
            }
            _ => return Err(OptionError::Unknown(option.into())),
        }
    }
    if out.lowerdirs.is_empty() {
        return Err(OptionError::NoLowerdir);
    }
    if out.upperdir.is_some() && out.workdir.is_none() {
        return Err(OptionError::NoWorkdir);
    }
    Ok(out)
}

/// `STORED:SHOWN:COUNT[:STORED:SHOWN:COUNT...]`, as fuse-overlayfs reads it: an
/// owner stored (as the daemon sees it) as `STORED + k` shows as `SHOWN + k`
/// (containers/fuse-overlayfs, main.c, `read_mappings` and `find_mapping`; podman's
/// `--userns=keep-id` passes `:0:1:999:...`, stored 0 shown 1, which is the
/// container's root there). Returned as (shown, stored, count). Empty fields are skipped, as
/// fuse-overlayfs's strtok skips them: podman (containers/storage) writes each
/// range as `:A:B:C`, so its value starts with a colon.
fn id_ranges(option: &str, value: &str) -> Result<Vec<(u32, u32, u32)>, OptionError> {
    let numbers = value
        .split(':')
        .filter(|n| !n.is_empty())
        .map(|n| id(option, n))
        .collect::<Result<Vec<u32>, _>>()?;
    if numbers.is_empty() || numbers.len() % 3 != 0 {
        return Err(OptionError::BadValue(option.into()));
    }
    Ok(numbers.chunks(3).map(|c| (c[1], c[0], c[2])).collect())
}

fn id(option: &str, value: &str) -> Result<u32, OptionError> {
    value
        .parse()
        .map_err(|_| OptionError::BadValue(option.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<OverlayOptions, OptionError> {
        parse(&[s.to_string()])
    }

    #[test]
    fn takes_what_fuse_overlayfs_takes() {
        let o = p("lowerdir=/a:/b,upperdir=/u,workdir=/w,fsync=0,threaded=1,rw,nodev").unwrap();
        assert_eq!(o.lowerdirs, vec![PathBuf::from("/a"), PathBuf::from("/b")]);
        assert_eq!(o.upperdir, Some(PathBuf::from("/u")));
        assert_eq!(o.workdir, Some(PathBuf::from("/w")));
        assert!(o.volatile);
        assert_eq!(o.ignored, vec!["threaded=1", "rw", "nodev"]);
        let squashed = p("lowerdir=/l,squash_to_root,static_nlink,noxattrs=1").unwrap();
        assert_eq!(
            (squashed.shown.squash_uid, squashed.shown.squash_gid),
            (Some(0), Some(0))
        );
        assert!(squashed.shown.static_nlink && squashed.shown.no_xattrs);
        let mapped = p("lowerdir=/l,uidmapping=0:1000:1:1:100000:65536").unwrap();
        assert_eq!(mapped.shown.uid_map, vec![(1000, 0, 1), (100000, 1, 65536)]);
        // podman 4.3's own string, for `--userns=keep-id`.
        let podman =
            p("lowerdir=/l,,volatile,uidmapping=:0:1:999:999:0:1:1000:1000:64537").unwrap();
        assert_eq!(
            podman.shown.uid_map,
            vec![(1, 0, 999), (0, 999, 1), (1000, 1000, 64537)]
        );
        assert_eq!(mapped.override_xattr, OverrideXattr::Containers);
        for (n, want) in [
            (0, OverrideXattr::Containers),
            (1, OverrideXattr::Privileged),
            (2, OverrideXattr::User),
        ] {
            let o = p(&format!("lowerdir=/l,xattr_permissions={n}")).unwrap();
            assert_eq!(o.override_xattr, want, "xattr_permissions={n}");
        }
        assert_eq!(
            OverrideXattr::User.name(),
            "user.fuseoverlayfs.override_stat"
        );
        assert_eq!(
            OverrideXattr::Privileged.name(),
            "security.fuseoverlayfs.override_stat"
        );
        let two = parse(&["rw".into(), "lowerdir=/l".into()]).unwrap();
        assert_eq!(two.lowerdirs, vec![PathBuf::from("/l")]);
    }

    #[test]
    fn refuses_what_it_cannot_honour_by_name() {
        assert_eq!(p("upperdir=/u"), Err(OptionError::NoLowerdir));
        assert_eq!(p("lowerdir=/l,upperdir=/u"), Err(OptionError::NoWorkdir));
        assert_eq!(
            p("lowerdir=/l,frobnicate"),
            Err(OptionError::Unknown("frobnicate".into()))
        );
        assert_eq!(
            p("lowerdir=/l,xattr_permissions=3"),
            Err(OptionError::BadValue("xattr_permissions=3".into()))
        );
        assert_eq!(
            p("lowerdir=/l,xattr_permissions"),
            Err(OptionError::BadValue("xattr_permissions".into()))
        );
        assert_eq!(
            p("lowerdir=/l,uidmapping=0:1000"),
            Err(OptionError::BadValue("uidmapping=0:1000".into()))
        );
        assert_eq!(
            p("lowerdir=/l,uidmapping=::"),
            Err(OptionError::BadValue("uidmapping=::".into()))
        );
        assert_eq!(
            p("lowerdir=/l,squash_to_uid=x"),
            Err(OptionError::BadValue("squash_to_uid=x".into()))
        );
        assert_eq!(
            p("lowerdir=/l,fsync=2"),
            Err(OptionError::BadValue("fsync=2".into()))
        );
        assert_eq!(
            p("lowerdir="),
            Err(OptionError::BadValue("lowerdir=".into()))
        );
    }
}
