//! Registry credentials where podman and docker keep them: `auths.<host>.auth`, the
//! base64 of `user:password`, in `${XDG_RUNTIME_DIR}/containers/auth.json`, then
//! `~/.config/containers/auth.json`, then `~/.docker/config.json`. The first file
//! that names the host wins, as in containers-image.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

use super::RegistryError;

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

// Never print a password, even in a debug dump.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, ***)", self.user)
    }
}

impl Credentials {
    /// The value of an `Authorization: Basic` header, and of an auth.json `auth`.
    pub fn encoded(&self) -> String {
        STANDARD.encode(format!("{}:{}", self.user, self.password))
    }

    fn decode(text: &str) -> Option<Credentials> {
        let raw = STANDARD.decode(text.trim()).ok()?;
        let raw = String::from_utf8(raw).ok()?;
        let (user, password) = raw.split_once(':')?;
        Some(Credentials {
            user: user.to_string(),
            password: password.to_string(),
        })
    }
}

/// The files searched, most specific first.
pub fn auth_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(run) = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        files.push(Path::new(&run).join("containers/auth.json"));
    }
    if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        let home = Path::new(&home);
        files.push(home.join(".config/containers/auth.json"));
        files.push(home.join(".docker/config.json"));
    }
    files
}

/// Credentials for `host` from the first file that has an entry for it.
pub fn lookup(host: &str) -> Result<Option<Credentials>, RegistryError> {
    for path in auth_files() {
        if let Some(c) = lookup_in(&path, host)? {
            return Ok(Some(c));
        }
    }
    Ok(None)
}

/// One file's entry for `host` (keys may also be written as URLs, as docker did).
pub fn lookup_in(path: &Path, host: &str) -> Result<Option<Credentials>, RegistryError> {
    let bad = |reason: String| RegistryError::BadAuthFile {
        path: path.display().to_string(),
        reason,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(bad(e.to_string())),
    };
    let doc: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let Some(auths) = doc.get("auths").and_then(|a| a.as_object()) else {
        return Ok(None);
    };
    for (key, entry) in auths {
        if normalise_key(key) != host {
            continue;
        }
        let Some(auth) = entry.get("auth").and_then(|a| a.as_str()) else {
            continue;
        };
        return Credentials::decode(auth).map(Some).ok_or_else(|| {
            bad(format!(
                "the entry for {host} is not base64 of user:password"
            ))
        });
    }
    Ok(None)
}

/// Where `strata login` writes: podman's own file, so that both see one login.
pub fn login_file() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").filter(|v| !v.is_empty())?;
    Some(Path::new(&home).join(".config/containers/auth.json"))
}

/// Sets (`Some`) or removes (`None`) `host`'s entry in `path`, keeping every other
/// entry and field. Returns whether an entry was there before. The file is written
/// 0600 under a temporary name and renamed, so a crash never leaves half a file.
pub fn store_in(
    path: &Path,
    host: &str,
    credentials: Option<&Credentials>,
) -> Result<bool, RegistryError> {
    let bad = |reason: String| RegistryError::BadAuthFile {
        path: path.display().to_string(),
        reason,
    };
    let mut doc: serde_json::Value = match std::fs::read_to_string(path) {
        Ok(t) => serde_json::from_str(&t).map_err(|e| bad(format!("not JSON: {e}")))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => serde_json::json!({}),
        Err(e) => return Err(bad(e.to_string())),
    };
    let root = doc
        .as_object_mut()
        .ok_or_else(|| bad("not a JSON object".into()))?;
    let auths = root
        .entry("auths")
        .or_insert_with(|| serde_json::json!({}))
        .as_object_mut()
        .ok_or_else(|| bad("'auths' is not an object".into()))?;
    let keys: Vec<String> = auths
        .keys()
        .filter(|k| normalise_key(k) == host)
        .cloned()
        .collect();
    let existed = !keys.is_empty();
    for k in keys {
        auths.remove(&k);
    }
    if let Some(c) = credentials {
        auths.insert(host.to_string(), serde_json::json!({ "auth": c.encoded() }));
    }
    let dir = path
        .parent()
        .ok_or_else(|| bad("no parent directory".into()))?;
    std::fs::create_dir_all(dir).map_err(|e| bad(e.to_string()))?;
    let tmp = dir.join(format!(".auth.json.{}", std::process::id()));
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.write_all(&serde_json::to_vec_pretty(&doc).map_err(std::io::Error::other)?)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(bad(e.to_string()));
    }
    Ok(existed)
}

/// "https://index.docker.io/v1/" -> "docker.io"; "host:5000/path" -> "host:5000".
fn normalise_key(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    let host = key.split('/').next().unwrap_or(key);
    match host {
        "index.docker.io" | "registry-1.docker.io" => "docker.io",
        h => h,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_auth_entries() {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("auth.json");
        let enc = STANDARD.encode("me:s3:cret");
        std::fs::write(
            &file,
            format!(
                r#"{{"auths":{{"127.0.0.1:5000":{{"auth":"{enc}"}},"https://index.docker.io/v1/":{{"auth":"{enc}"}}}}}}"#
            ),
        )
        .unwrap();
        let c = lookup_in(&file, "127.0.0.1:5000").unwrap().unwrap();
        assert_eq!((c.user.as_str(), c.password.as_str()), ("me", "s3:cret"));
        assert!(lookup_in(&file, "docker.io").unwrap().is_some());
        assert!(lookup_in(&file, "other:5000").unwrap().is_none());
        assert!(lookup_in(&tmp.path().join("none"), "x").unwrap().is_none());
        assert!(!format!("{c:?}").contains("s3"));
    }

    #[test]
    fn login_and_logout_keep_other_entries() {
        use std::os::unix::fs::PermissionsExt as _;
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("containers/auth.json");
        let me = Credentials {
            user: "me".into(),
            password: "pw".into(),
        };
        assert!(!store_in(&file, "a:5000", Some(&me)).unwrap());
        assert!(!store_in(&file, "b", Some(&me)).unwrap());
        assert_eq!(lookup_in(&file, "a:5000").unwrap(), Some(me.clone()));
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(store_in(&file, "a:5000", None).unwrap());
        assert!(!store_in(&file, "a:5000", None).unwrap());
        assert_eq!(lookup_in(&file, "a:5000").unwrap(), None);
        assert_eq!(lookup_in(&file, "b").unwrap(), Some(me));
    }
}
