//! Pulling from a registry over the OCI distribution API. A registry is one more
//! `ImageSource`: resolve and import verify what it serves exactly as they verify a
//! layout on disk, so nothing here has to be trusted beyond "the bytes came back".
//! Pushing (`push`) sends any `ImageSource`'s image the other way.

pub mod client;
pub mod credentials;
pub mod push;
pub mod reference;
pub mod source;

use thiserror::Error;

use super::ImageError;

pub use client::{Client, ClientOptions};
pub use reference::Reference;
pub use source::RegistrySource;

#[derive(Debug, Error)]
pub enum RegistryError {
    #[error("'{reference}' is not a valid image reference: {reason}")]
    BadReference { reference: String, reason: String },

    #[error(
        "cannot reach the registry {host}: {reason}{hint}",
        hint = tls_hint(reason)
    )]
    Unreachable { host: String, reason: String },

    #[error(
        "{host}: authentication required to {action} {repository}; log in with 'strata login {host}' (or put credentials in ~/.config/containers/auth.json)"
    )]
    AuthRequired {
        host: String,
        action: &'static str,
        repository: String,
    },

    #[error(
        "{host}: the credentials for {user} were refused (wrong user name or password); log in again with 'strata login {host}'"
    )]
    BadCredentials { host: String, user: String },

    #[error(
        "{host}: access to {repository} is denied (403){detail}; check that the name is right and that your account may pull it"
    )]
    Denied {
        host: String,
        repository: String,
        detail: String,
    },

    #[error(
        "{host}: {repository} has no manifest '{reference}' (404{detail}); check the name and tag"
    )]
    ManifestUnknown {
        host: String,
        repository: String,
        reference: String,
        detail: String,
    },

    #[error(
        "{host}: too many requests (429); the registry asks to wait {retry_after} before trying again"
    )]
    RateLimited { host: String, retry_after: String },

    #[error(
        "{host}: the registry failed with HTTP {status}{detail}; it is the registry's fault: try again later"
    )]
    ServerError {
        host: String,
        status: u16,
        detail: String,
    },

    #[error("{host}: unexpected HTTP {status} for {what}{detail}")]
    UnexpectedStatus {
        host: String,
        status: u16,
        what: String,
        detail: String,
    },

    #[error("{host}: the token service refused or answered nonsense: {reason}")]
    BadToken { host: String, reason: String },

    #[error("{host}: reading {what} failed: {reason}")]
    Transfer {
        host: String,
        what: String,
        reason: String,
    },

    #[error(
        "{host}: the registry stored the manifest of {repository} as {returned}, but strata's is {expected}; the registry changed it, so the image there is not the one pushed"
    )]
    ManifestChanged {
        host: String,
        repository: String,
        expected: String,
        returned: String,
    },

    #[error("{host}: the registry gave no upload location for {what}")]
    NoUploadLocation { host: String, what: String },

    /// The image being pushed could not be read.
    #[error(transparent)]
    Local(Box<ImageError>),

    #[error("credentials file {path}: {reason}")]
    BadAuthFile { path: String, reason: String },
}

/// Certificate failures are the common case with a private registry, and plain HTTP
/// on a test registry the next: say the way out of each.
fn tls_hint(reason: &str) -> &'static str {
    let r = reason.to_ascii_lowercase();
    if r.contains("certificate") {
        "; the registry's TLS certificate could not be verified: if you trust this registry (a self-signed certificate on your own machine), pass --tls-verify=false"
    } else if r.contains("corrupt message") || r.contains("invalidcontenttype") {
        "; it does not speak TLS: for a plain-HTTP registry on this machine, pass --tls-verify=false"
    } else if r.contains("connection refused") {
        "; nothing listens there: check the host and port, and that the registry runs"
    } else {
        ""
    }
}
