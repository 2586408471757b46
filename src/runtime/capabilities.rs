//! The capabilities a container's process keeps inside its user namespace: podman's
//! default set, adjusted by `--cap-add` and `--cap-drop`. They are powers over the
//! namespace's own ids and mounts only; the host's stay out of reach whatever is
//! added.

use caps::{CapSet, Capability, CapsHashSet};

use super::RunError;

/// podman's default (containers.conf `default_capabilities`).
const DEFAULT: [Capability; 11] = [
    Capability::CAP_CHOWN,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_FOWNER,
    Capability::CAP_FSETID,
    Capability::CAP_KILL,
    Capability::CAP_NET_BIND_SERVICE,
    Capability::CAP_SETFCAP,
    Capability::CAP_SETGID,
    Capability::CAP_SETPCAP,
    Capability::CAP_SETUID,
    Capability::CAP_SYS_CHROOT,
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapabilitySet {
    caps: CapsHashSet,
}

impl CapabilitySet {
    pub fn default_set() -> CapabilitySet {
        CapabilitySet {
            caps: DEFAULT.into_iter().collect(),
        }
    }

    /// `drop` then `add`, as podman applies them: `ALL` in `drop` empties the set
    /// first, `ALL` in `add` fills it with every capability the kernel knows.
    pub fn adjust(mut self, add: &[String], drop: &[String]) -> Result<CapabilitySet, RunError> {
        for name in drop {
            match parse(name, "--cap-drop")? {
                None => self.caps.clear(),
                Some(cap) => {
                    self.caps.remove(&cap);
                }
            }
        }
        for name in add {
            match parse(name, "--cap-add")? {
                None => self.caps = caps::runtime::thread_all_supported(),
                Some(cap) => {
                    self.caps.insert(cap);
                }
            }
        }
        Ok(self)
    }

    /// The set as /proc/PID/status shows it (CapBnd, CapEff).
    pub fn mask(&self) -> u64 {
        self.caps.iter().map(|c| c.bitmask()).fold(0, |a, b| a | b)
    }

    /// Limits this process to the set: the bounding set is cut down (so no exec can
    /// gain more), and the inheritable and ambient sets are emptied. Effective and
    /// permitted follow at exec: root gets the bounding set, any other uid nothing.
    pub fn restrict_bounding(&self) -> Result<(), RunError> {
        let fail = |op: &'static str| {
            move |e: caps::errors::CapsError| RunError::Start {
                op,
                source: std::io::Error::other(e.to_string()),
            }
        };
        for cap in caps::runtime::thread_all_supported() {
            if !self.caps.contains(&cap) {
                caps::drop(None, CapSet::Bounding, cap).map_err(fail("drop a capability"))?;
            }
        }
        caps::clear(None, CapSet::Ambient).map_err(fail("clear the ambient capabilities"))?;
        caps::clear(None, CapSet::Inheritable)
            .map_err(fail("clear the inheritable capabilities"))?;
        Ok(())
    }
}

/// `NET_ADMIN`, `cap_net_admin`, `CAP_NET_ADMIN`; None for `ALL`.
fn parse(name: &str, option: &str) -> Result<Option<Capability>, RunError> {
    if name.eq_ignore_ascii_case("all") {
        return Ok(None);
    }
    let canonical = caps::to_canonical(name);
    canonical
        .parse::<Capability>()
        .map(Some)
        .map_err(|_| RunError::BadOption {
            option: format!("{option} {name}"),
            reason: "no such capability (see capabilities(7) for the names)".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn podman_default_mask() {
        // What podman's containers show as CapBnd with the default set.
        assert_eq!(CapabilitySet::default_set().mask(), 0x800405fb);
    }

    #[test]
    fn add_and_drop() {
        let set = CapabilitySet::default_set()
            .adjust(&s(&["net_admin"]), &s(&["CAP_CHOWN", "kill"]))
            .unwrap();
        assert!(set.caps.contains(&Capability::CAP_NET_ADMIN));
        assert!(!set.caps.contains(&Capability::CAP_CHOWN));
        assert!(!set.caps.contains(&Capability::CAP_KILL));
        let only = CapabilitySet::default_set()
            .adjust(&s(&["SETUID"]), &s(&["ALL"]))
            .unwrap();
        assert_eq!(only.mask(), Capability::CAP_SETUID.bitmask());
        assert!(matches!(
            CapabilitySet::default_set().adjust(&s(&["FLY"]), &[]),
            Err(RunError::BadOption { .. })
        ));
    }
}
