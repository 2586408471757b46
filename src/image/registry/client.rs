//! The HTTP side of the distribution API: one agent per registry, the
//! `WWW-Authenticate` challenge (Bearer tokens, anonymous or with credentials, and
//! Basic), and registry answers turned into errors that say what to do.

use std::sync::Mutex;
use std::time::Duration;

use ureq::Agent;
use ureq::http::Response;
use ureq::tls::{RootCerts, TlsConfig};

use super::RegistryError;
use super::credentials::Credentials;
use super::reference::{Reference, is_loopback};
use crate::image::spec::media_type;

/// The manifest kinds strata reads, OCI's and Docker schema 2's, lists and images.
pub const MANIFEST_ACCEPT: &str = concat!(
    "application/vnd.oci.image.index.v1+json, ",
    "application/vnd.oci.image.manifest.v1+json, ",
    "application/vnd.docker.distribution.manifest.list.v2+json, ",
    "application/vnd.docker.distribution.manifest.v2+json"
);
/// Error bodies and token answers are small; never read more than this of them.
const SMALL_BODY_LIMIT: u64 = 1 << 20;

pub type Body = ureq::Body;

#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Verify the registry's certificate. Off, a loopback registry may also be
    /// reached over plain HTTP, as podman allows.
    pub tls_verify: bool,
    /// Explicit credentials; else those of the auth files for the host.
    pub credentials: Option<Credentials>,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            tls_verify: true,
            credentials: None,
        }
    }
}

pub struct Client {
    agent: Agent,
    /// `https://host:port` or `http://...`: what the ping found answering.
    base: String,
    host: String,
    repository: String,
    credentials: Option<Credentials>,
    /// The `Authorization` value in force, shared by the parallel layer downloads.
    authorization: Mutex<Option<String>>,
    /// What a token is asked to allow on the repository: "pull", or "pull,push".
    actions: &'static str,
}

impl Client {
    /// Finds the registry's API (`GET /v2/`) and authenticates if it asks to.
    pub fn connect(reference: &Reference, options: ClientOptions) -> Result<Client, RegistryError> {
        Client::connect_with(reference, options, "pull")
    }

    /// As `connect`, for a push: tokens are asked for the right to push too, since a
    /// pull-only token would be refused at the first upload.
    pub fn connect_for_push(
        reference: &Reference,
        options: ClientOptions,
    ) -> Result<Client, RegistryError> {
        Client::connect_with(reference, options, "pull,push")
    }

    fn connect_with(
        reference: &Reference,
        options: ClientOptions,
        actions: &'static str,
    ) -> Result<Client, RegistryError> {
        let host = reference.api_host().to_string();
        let credentials = match options.credentials {
            Some(c) => Some(c),
            None => super::credentials::lookup(&reference.registry)?,
        };
        let agent = make_agent(options.tls_verify);
        let schemes: &[&str] = if !options.tls_verify && is_loopback(&host) {
            &["https", "http"]
        } else {
            &["https"]
        };
        let mut last_error = String::new();
        for scheme in schemes {
            let base = format!("{scheme}://{host}");
            match agent.get(format!("{base}/v2/")).call() {
                Ok(ping) => {
                    let client = Client {
                        agent,
                        base,
                        host,
                        repository: reference.repository.clone(),
                        credentials,
                        authorization: Mutex::new(None),
                        actions,
                    };
                    if ping.status() == 401 {
                        client.authorize(&ping)?;
                    }
                    return Ok(client);
                }
                Err(e) => last_error = e.to_string(),
            }
        }
        Err(RegistryError::Unreachable {
            host,
            reason: last_error,
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    /// GETs `/v2/<repository>/<path>`, answering one authentication challenge.
    /// Any status but 401 is returned for the caller to judge.
    pub fn get(&self, path: &str, accept: Option<&str>) -> Result<Response<Body>, RegistryError> {
        let url = format!("{}/v2/{}/{path}", self.base, self.repository);
        let response = self.send(&url, accept, path)?;
        if response.status() != 401 {
            return Ok(response);
        }
        self.authorize(&response)?;
        let response = self.send(&url, accept, path)?;
        if response.status() == 401 {
            return Err(self.auth_refused());
        }
        Ok(response)
    }

    /// Sends a request that `send` builds with the `Authorization` value it is
    /// given, answering one authentication challenge by building and sending it
    /// again (so a streamed body is opened afresh). Any status but 401 is returned.
    pub fn with_auth(
        &self,
        what: &str,
        send: impl Fn(Option<&str>) -> Result<Response<Body>, ureq::Error>,
    ) -> Result<Response<Body>, RegistryError> {
        let attempt = || {
            let auth = self.authorization.lock().unwrap().clone();
            send(auth.as_deref()).map_err(|e| RegistryError::Transfer {
                host: self.host.clone(),
                what: what.to_string(),
                reason: e.to_string(),
            })
        };
        let response = attempt()?;
        if response.status() != 401 {
            return Ok(response);
        }
        self.authorize(&response)?;
        let response = attempt()?;
        if response.status() == 401 {
            return Err(self.auth_refused());
        }
        Ok(response)
    }

    /// GETs `/v2/<repository>/<path>` from byte `offset` on (a Range request), for
    /// resuming a download. The caller checks for 206 (or 200: no ranges here).
    pub fn get_from(&self, path: &str, offset: u64) -> Result<Response<Body>, RegistryError> {
        let url = self.url(path);
        let range = format!("bytes={offset}-");
        self.with_auth(path, |auth| {
            let mut request = self.agent.get(&url).header("Range", &range);
            if let Some(a) = auth {
                request = request.header("Authorization", a);
            }
            request.call()
        })
    }

    pub fn agent(&self) -> &Agent {
        &self.agent
    }

    /// `https://host:port` (or `http://`), where the API answered.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The URL of `/v2/<repository>/<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("{}/v2/{}/{path}", self.base, self.repository)
    }

    /// Checks that the registry accepts the credentials (what `strata login` does).
    pub fn verify_login(&self) -> Result<(), RegistryError> {
        let url = format!("{}/v2/", self.base);
        let response = self.send(&url, None, "/v2/")?;
        match response.status().as_u16() {
            200..=299 => Ok(()),
            401 => Err(self.auth_refused()),
            _ => Err(self.status_error(response, "/v2/")),
        }
    }

    fn send(
        &self,
        url: &str,
        accept: Option<&str>,
        what: &str,
    ) -> Result<Response<Body>, RegistryError> {
        let mut request = self.agent.get(url);
        if let Some(a) = accept {
            request = request.header("Accept", a);
        }
        let auth = self.authorization.lock().unwrap().clone();
        if let Some(a) = auth {
            request = request.header("Authorization", a);
        }
        request.call().map_err(|e| RegistryError::Transfer {
            host: self.host.clone(),
            what: what.to_string(),
            reason: e.to_string(),
        })
    }

    /// Answers a 401's challenge: a Bearer token from the realm it names, or Basic.
    fn authorize(&self, response: &Response<Body>) -> Result<(), RegistryError> {
        let challenge = response
            .headers()
            .get("www-authenticate")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        let (scheme, params) = parse_challenge(challenge);
        let value = if scheme.eq_ignore_ascii_case("bearer") {
            format!("Bearer {}", self.fetch_token(&params)?)
        } else if scheme.eq_ignore_ascii_case("basic") {
            let c = self
                .credentials
                .as_ref()
                .ok_or_else(|| self.auth_refused())?;
            format!("Basic {}", c.encoded())
        } else {
            return Err(self.auth_refused());
        };
        *self.authorization.lock().unwrap() = Some(value);
        Ok(())
    }

    fn fetch_token(&self, params: &[(String, String)]) -> Result<String, RegistryError> {
        let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let bad = |reason: String| RegistryError::BadToken {
            host: self.host.clone(),
            reason,
        };
        let realm = param("realm").ok_or_else(|| bad("the challenge names no realm".into()))?;
        let mut request = self.agent.get(realm);
        // A login checks the account alone: it asks for no repository's scope.
        if !self.repository.is_empty() {
            request = request.query(
                "scope",
                format!("repository:{}:{}", self.repository, self.actions),
            );
        }
        if let Some(service) = param("service") {
            request = request.query("service", service);
        }
        if let Some(c) = &self.credentials {
            request = request.header("Authorization", format!("Basic {}", c.encoded()));
        }
        let mut response = request.call().map_err(|e| bad(format!("{realm}: {e}")))?;
        match response.status().as_u16() {
            200 => {}
            401 | 403 => return Err(self.auth_refused()),
            s => return Err(bad(format!("{realm} answered HTTP {s}"))),
        }
        let answer: serde_json::Value = read_small_json(&mut response)
            .ok_or_else(|| bad(format!("{realm} answered no JSON")))?;
        ["token", "access_token"]
            .iter()
            .find_map(|k| answer.get(k).and_then(|t| t.as_str()))
            .map(str::to_string)
            .ok_or_else(|| bad("the answer has no token".into()))
    }

    fn auth_refused(&self) -> RegistryError {
        match &self.credentials {
            Some(c) => RegistryError::BadCredentials {
                host: self.host.clone(),
                user: c.user.clone(),
            },
            None => RegistryError::AuthRequired {
                host: self.host.clone(),
                action: if self.actions.contains("push") {
                    "push to"
                } else {
                    "pull"
                },
                repository: self.repository.clone(),
            },
        }
    }

    /// The error for a failed answer about `what` (404s are the caller's to word).
    pub fn status_error(&self, response: Response<Body>, what: &str) -> RegistryError {
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(|v| match v.parse::<u64>() {
                Ok(secs) => format!("{secs} seconds"),
                Err(_) => format!("until {v}"),
            });
        let detail = error_detail(response);
        let host = self.host.clone();
        match status {
            403 => RegistryError::Denied {
                host,
                repository: self.repository.clone(),
                detail,
            },
            429 => RegistryError::RateLimited {
                host,
                retry_after: retry_after.unwrap_or_else(|| "a while".into()),
            },
            500..=599 => RegistryError::ServerError {
                host,
                status,
                detail,
            },
            _ => RegistryError::UnexpectedStatus {
                host,
                status,
                what: what.to_string(),
                detail,
            },
        }
    }

    pub fn repository(&self) -> &str {
        &self.repository
    }
}

/// The registry's own words, from its `{"errors":[{"code","message"}]}` body.
pub fn error_detail(mut response: Response<Body>) -> String {
    let Some(body) = read_small_json(&mut response) else {
        return String::new();
    };
    let Some(first) = body
        .get("errors")
        .and_then(|e| e.as_array())
        .and_then(|a| a.first())
    else {
        return String::new();
    };
    let field = |k: &str| first.get(k).and_then(|v| v.as_str()).unwrap_or("");
    format!(": {} {}", field("code"), field("message"))
        .trim_end()
        .to_string()
}

fn read_small_json(response: &mut Response<Body>) -> Option<serde_json::Value> {
    let bytes = response
        .body_mut()
        .with_config()
        .limit(SMALL_BODY_LIMIT)
        .read_to_vec()
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn make_agent(tls_verify: bool) -> Agent {
    let tls = TlsConfig::builder()
        // The system's roots, so that a site's own CA installed there is trusted.
        .root_certs(RootCerts::PlatformVerifier)
        .disable_verification(!tls_verify)
        .build();
    Agent::config_builder()
        .http_status_as_error(false)
        .tls_config(tls)
        .user_agent(concat!("strata/", env!("CARGO_PKG_VERSION")))
        .timeout_connect(Some(Duration::from_secs(30)))
        // A stalled transfer fails instead of hanging a batch job forever.
        .timeout_per_read(Some(Duration::from_secs(120)))
        .build()
        .new_agent()
}

/// `Bearer realm="...",service="..."` -> ("Bearer", [(realm, ...), (service, ...)]).
fn parse_challenge(header: &str) -> (String, Vec<(String, String)>) {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        if key.is_empty() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => value.extend(chars.next()),
                    c => value.push(c),
                }
            }
        } else {
            value = chars.by_ref().take_while(|c| *c != ',').collect();
        }
        params.push((key.trim().to_ascii_lowercase(), value));
    }
    (scheme.to_string(), params)
}

/// The media type of a manifest answer: its Content-Type, unless that is generic,
/// then the document's own `mediaType`.
pub fn manifest_media_type(content_type: Option<&str>, body: &[u8]) -> Option<String> {
    let header = content_type
        .map(|c| c.split(';').next().unwrap_or("").trim().to_string())
        .filter(|c| !c.is_empty() && c != "application/json" && c != "text/plain");
    header.or_else(|| {
        let doc: serde_json::Value = serde_json::from_slice(body).ok()?;
        match doc.get("mediaType").and_then(|m| m.as_str()) {
            Some(m) => Some(m.to_string()),
            // An OCI document may leave mediaType out: its shape tells.
            None if doc.get("manifests").is_some() => Some(media_type::OCI_INDEX.to_string()),
            None if doc.get("layers").is_some() => Some(media_type::OCI_MANIFEST.to_string()),
            None => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_challenges() {
        let (s, p) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(s, "Bearer");
        assert_eq!(
            p,
            vec![
                ("realm".into(), "https://auth.example/token".into()),
                ("service".into(), "registry.example".into()),
                ("scope".into(), "repository:a/b:pull,push".into()),
            ]
        );
        let (s, p) = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!((s.as_str(), p.len()), ("Basic", 1));
    }

    #[test]
    fn finds_manifest_media_types() {
        let oci = media_type::OCI_MANIFEST;
        assert_eq!(
            manifest_media_type(Some(&format!("{oci}; charset=utf-8")), b"{}").as_deref(),
            Some(oci)
        );
        let body = br#"{"schemaVersion":2,"manifests":[]}"#;
        assert_eq!(
            manifest_media_type(Some("application/json"), body).as_deref(),
            Some(media_type::OCI_INDEX)
        );
        assert_eq!(manifest_media_type(None, b"[]"), None);
    }
}
