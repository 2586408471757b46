//! Registry references as docker and podman read them: `name[:tag]`,
//! `name@sha256:...`, `host[:port]/org/name[:tag]`. A first component with a '.' or a
//! ':' (or `localhost`) is a host; anything else lives on Docker Hub, and a bare name
//! there is an official image under `library/`.

use std::fmt;

use super::RegistryError;
use crate::image::Digest;
use crate::image::reference::{DEFAULT_TAG, ImageName};

pub const DOCKER_HUB: &str = "docker.io";
/// Where Docker Hub's API answers: docker.io itself only redirects browsers.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `host[:port]` as written (docker.io for Docker Hub).
    pub registry: String,
    /// `org/name`, with `library/` added for Docker Hub's bare names.
    pub repository: String,
    /// The tag; `latest` when neither tag nor digest was given.
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl Reference {
    pub fn parse(s: &str) -> Result<Reference, RegistryError> {
        let bad = |reason: String| RegistryError::BadReference {
            reference: s.to_string(),
            reason,
        };
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => (
                r,
                Some(d.parse::<Digest>().map_err(|e| bad(e.to_string()))?),
            ),
            None => (s, None),
        };
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (path, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => (
                &rest[..last_slash + i],
                Some(rest[last_slash + i + 1..].to_string()),
            ),
            None => (rest, None),
        };
        let (registry, repository) = match path.split_once('/') {
            Some((first, repo)) if is_host(first) => (first.to_string(), repo.to_string()),
            _ if path.contains('/') => (DOCKER_HUB.to_string(), path.to_string()),
            _ => (DOCKER_HUB.to_string(), format!("library/{path}")),
        };
        let tag = match (tag, &digest) {
            (None, None) => Some(DEFAULT_TAG.to_string()),
            (t, _) => t,
        };
        // The local name grammar is the distribution spec's: let it judge the parts.
        let check = format!(
            "{registry}/{repository}:{}",
            tag.as_deref().unwrap_or(DEFAULT_TAG)
        );
        check.parse::<ImageName>().map_err(|e| bad(e.to_string()))?;
        Ok(Reference {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// The host and port the API is reached at.
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            DOCKER_HUB_API
        } else {
            &self.registry
        }
    }

    /// What `/v2/<name>/manifests/<reference>` is asked for: the digest if given
    /// (it pins the content), else the tag.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => DEFAULT_TAG.to_string(),
        }
    }

    /// The local name the pulled image gets (`host/org/name:tag`), when it has a tag.
    pub fn image_name(&self) -> Option<ImageName> {
        let tag = self.tag.as_ref()?;
        format!("{}/{}:{tag}", self.registry, self.repository)
            .parse()
            .ok()
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

fn is_host(part: &str) -> bool {
    part.contains('.') || part.contains(':') || part == "localhost"
}

/// Hosts on this machine, where plain HTTP is allowed once TLS verification is off.
pub fn is_loopback(host_port: &str) -> bool {
    let host = match host_port.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host_port,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || host == "::1"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(s: &str) -> (String, String, Option<String>, Option<String>) {
        let r = Reference::parse(s).unwrap();
        (
            r.registry,
            r.repository,
            r.tag,
            r.digest.map(|d| d.to_string()),
        )
    }

    #[test]
    fn parses_docker_references() {
        let hub = |repo: &str, tag: &str| {
            (
                "docker.io".to_string(),
                repo.to_string(),
                Some(tag.to_string()),
                None,
            )
        };
        assert_eq!(parts("busybox"), hub("library/busybox", "latest"));
        assert_eq!(parts("busybox:1.36"), hub("library/busybox", "1.36"));
        assert_eq!(parts("org/app:v1"), hub("org/app", "v1"));
        assert_eq!(
            parts("docker.io/library/alpine"),
            hub("library/alpine", "latest")
        );
        let (reg, repo, tag, _) = parts("127.0.0.1:5000/org/app:v1");
        assert_eq!(
            (reg.as_str(), repo.as_str(), tag.as_deref()),
            ("127.0.0.1:5000", "org/app", Some("v1"))
        );
        let (reg, repo, tag, _) = parts("localhost/app");
        assert_eq!(
            (reg.as_str(), repo.as_str(), tag.as_deref()),
            ("localhost", "app", Some("latest"))
        );
        let d = format!("sha256:{}", "ab".repeat(32));
        let (_, repo, tag, digest) = parts(&format!("registry.example:5000/x@{d}"));
        assert_eq!((repo.as_str(), tag, digest), ("x", None, Some(d.clone())));
        let r = Reference::parse(&format!("app:v2@{d}")).unwrap();
        assert_eq!(r.manifest_reference(), d);
        assert_eq!(
            r.image_name().unwrap().to_string(),
            "docker.io/library/app:v2"
        );
        assert_eq!(
            Reference::parse("busybox").unwrap().api_host(),
            "registry-1.docker.io"
        );
    }

    #[test]
    fn rejects_bad_references() {
        for bad in [
            "",
            "UPPER",
            "a:",
            "a@sha256:12",
            "a//b",
            "host:5000/",
            "a b",
        ] {
            assert!(Reference::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn knows_loopback_hosts() {
        for h in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in ["registry.example", "10.0.0.1:5000", "localhost.example"] {
            assert!(!is_loopback(h), "{h}");
        }
    }
}
