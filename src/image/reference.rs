//! Local image names: `NAME[:TAG]`, with the grammar of the OCI distribution spec so
//! that every name strata accepts is one that registries and other tools accept too.

use std::fmt;
use std::str::FromStr;

use super::ImageError;

pub const DEFAULT_TAG: &str = "latest";

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ImageName {
    pub name: String,
    pub tag: String,
}

impl FromStr for ImageName {
    type Err = ImageError;

    fn from_str(s: &str) -> Result<ImageName, ImageError> {
        let bad = |reason: &str| ImageError::BadName {
            name: s.to_string(),
            reason: reason.to_string(),
        };
        // A ':' after the last '/' separates the tag; one before it belongs to host:port.
        let last_slash = s.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match s[last_slash..].rfind(':') {
            Some(i) => (&s[..last_slash + i], &s[last_slash + i + 1..]),
            None => (s, DEFAULT_TAG),
        };
        if name.is_empty() {
            return Err(bad("the name is empty"));
        }
        if name.len() > 255 {
            return Err(bad("longer than 255 characters"));
        }
        validate_tag(tag).map_err(|r| bad(&r))?;
        let mut parts = name.split('/').peekable();
        let mut first = true;
        while let Some(part) = parts.next() {
            let is_host = first && parts.peek().is_some() && looks_like_host(part);
            first = false;
            if is_host {
                continue;
            }
            validate_path_component(part).map_err(|r| bad(&r))?;
        }
        Ok(ImageName {
            name: name.to_string(),
            tag: tag.to_string(),
        })
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, self.tag)
    }
}

fn looks_like_host(part: &str) -> bool {
    (part.contains('.') || part.contains(':') || part == "localhost")
        && part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
}

fn validate_tag(tag: &str) -> Result<(), String> {
    let ok = !tag.is_empty()
        && tag.len() <= 128
        && tag.as_bytes()[0] != b'.'
        && tag.as_bytes()[0] != b'-'
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "tag '{tag}' must be 1-128 of [A-Za-z0-9_.-], not starting with '.' or '-'"
        ))
    }
}

fn validate_path_component(part: &str) -> Result<(), String> {
    let msg = || {
        format!("'{part}' must be lowercase letters and digits separated by '.', '_', '__' or '-'")
    };
    let b = part.as_bytes();
    if b.is_empty() || !is_alnum(b[0]) || !is_alnum(b[b.len() - 1]) {
        return Err(msg());
    }
    let mut i = 0;
    while i < b.len() {
        if is_alnum(b[i]) {
            i += 1;
            continue;
        }
        // Separators: '.', '_', '__', or a run of '-'.
        let start = i;
        while i < b.len() && !is_alnum(b[i]) {
            i += 1;
        }
        let sep = &part[start..i];
        let valid = matches!(sep, "." | "_" | "__") || sep.bytes().all(|c| c == b'-');
        if !valid {
            return Err(msg());
        }
    }
    Ok(())
}

fn is_alnum(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names() {
        let n: ImageName = "busybox".parse().unwrap();
        assert_eq!((n.name.as_str(), n.tag.as_str()), ("busybox", "latest"));
        let n: ImageName = "localhost:5000/org/app:v1.2".parse().unwrap();
        assert_eq!(
            (n.name.as_str(), n.tag.as_str()),
            ("localhost:5000/org/app", "v1.2")
        );
        let n: ImageName = "registry.example:5000/x".parse().unwrap();
        assert_eq!(n.tag, "latest");
        assert_eq!(n.to_string(), "registry.example:5000/x:latest");
    }

    #[test]
    fn rejects_bad_names() {
        for bad in [
            "", "UPPER", "a:", "a:-x", "-a", "a//b", "a/", "a b", "a..b", "a:ta g",
        ] {
            assert!(bad.parse::<ImageName>().is_err(), "{bad:?} accepted");
        }
    }
}
