//! `--user NAME[:GROUP]` / `UID[:GID]`, resolved in the container's own /etc/passwd
//! and /etc/group as docker and podman do: a number needs no entry (its group is
//! then 0), a name must have one, and the supplementary groups are those of the
//! image's /etc/group that list the user.

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedUser {
    pub uid: u32,
    pub gid: u32,
    pub groups: Vec<u32>,
    /// From /etc/passwd; HOME is set from it when the environment has none.
    pub home: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct GroupEntry {
    name: String,
    gid: u32,
    members: Vec<String>,
}

pub fn parse_passwd(text: &str) -> Vec<PasswdEntry> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 7 {
                return None;
            }
            Some(PasswdEntry {
                name: f[0].to_string(),
                uid: f[2].parse().ok()?,
                gid: f[3].parse().ok()?,
                home: f[5].to_string(),
            })
        })
        .collect()
}

fn parse_group(text: &str) -> Vec<GroupEntry> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() < 4 {
                return None;
            }
            Some(GroupEntry {
                name: f[0].to_string(),
                gid: f[2].parse().ok()?,
                members: f[3]
                    .split(',')
                    .filter(|m| !m.is_empty())
                    .map(String::from)
                    .collect(),
            })
        })
        .collect()
}

/// Resolves `spec` against the texts of /etc/passwd and /etc/group (empty when the
/// image has none). The error says which name is missing where.
pub fn resolve(spec: &str, passwd: &str, group: &str) -> Result<ResolvedUser, String> {
    let (user, group_spec) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (spec, None),
    };
    let users = parse_passwd(passwd);
    let groups = parse_group(group);
    let entry = match user.parse::<u32>() {
        Ok(uid) => users.iter().find(|e| e.uid == uid).cloned(),
        Err(_) => Some(
            users
                .iter()
                .find(|e| e.name == user)
                .cloned()
                .ok_or_else(|| {
                    format!(
                        "user {user:?} is not in the image's /etc/passwd: give a number instead"
                    )
                })?,
        ),
    };
    let uid = match &entry {
        Some(e) => e.uid,
        None => user.parse::<u32>().unwrap_or(0),
    };
    let gid = match group_spec {
        Some(g) => match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => groups
                .iter()
                .find(|e| e.name == g)
                .map(|e| e.gid)
                .ok_or_else(|| {
                    format!("group {g:?} is not in the image's /etc/group: give a number instead")
                })?,
        },
        None => entry.as_ref().map_or(0, |e| e.gid),
    };
    let mut supplementary = vec![gid];
    if let Some(e) = &entry {
        for g in groups.iter().filter(|g| g.members.contains(&e.name)) {
            if !supplementary.contains(&g.gid) {
                supplementary.push(g.gid);
            }
        }
    }
    Ok(ResolvedUser {
        uid,
        gid,
        groups: supplementary,
        home: entry.map(|e| e.home),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str =
        "root:x:0:0:root:/root:/bin/sh\nalice:x:1000:1000::/home/alice:/bin/sh\nbad line\n";
    const GROUP: &str = "root:x:0:\nalice:x:1000:\nwheel:x:10:alice,bob\nstaff:x:50:bob\n";

    #[test]
    fn names_and_numbers() {
        let alice = resolve("alice", PASSWD, GROUP).unwrap();
        assert_eq!((alice.uid, alice.gid), (1000, 1000));
        assert_eq!(alice.groups, vec![1000, 10]);
        assert_eq!(alice.home.as_deref(), Some("/home/alice"));
        let by_number = resolve("1000:staff", PASSWD, GROUP).unwrap();
        assert_eq!((by_number.uid, by_number.gid), (1000, 50));
        let unknown = resolve("4242", PASSWD, GROUP).unwrap();
        assert_eq!((unknown.uid, unknown.gid, unknown.home), (4242, 0, None));
        assert_eq!(resolve("4242:7", "", "").unwrap().gid, 7);
        assert!(
            resolve("mallory", PASSWD, GROUP)
                .unwrap_err()
                .contains("mallory")
        );
        assert!(resolve("alice:nogroup", PASSWD, GROUP).is_err());
    }
}
