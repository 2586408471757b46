//! `strata login [-u USER] [--password-stdin] HOST` and `strata logout HOST`: the
//! credentials go to `~/.config/containers/auth.json`, where podman keeps them too.

use std::io::BufRead as _;

use anyhow::{Context as _, bail};
use strata::image::registry::credentials::{self, Credentials};
use strata::image::registry::{Client, ClientOptions, Reference};

/// Log in to a registry: check the credentials there, then keep them
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The registry, HOST[:PORT] (docker.io for Docker Hub)
    host: String,
    /// User name
    #[arg(short, long)]
    username: Option<String>,
    /// Read the password from standard input (one line), as in scripts
    #[arg(long)]
    password_stdin: bool,
    /// Verify the registry's TLS certificate (see `strata pull`)
    #[arg(long, value_name = "BOOL", default_value_t = true, action = clap::ArgAction::Set)]
    tls_verify: bool,
}

/// Log out of a registry: forget the credentials `strata login` kept
#[derive(Debug, clap::Args)]
pub struct LogoutArgs {
    /// The registry, HOST[:PORT]
    host: String,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let host = normalise_host(&args.host);
    if !args.password_stdin {
        // Typing a password where the terminal echoes it is worse than a clear refusal.
        bail!(
            "give the password on standard input: echo PASSWORD | strata login -u USER --password-stdin {host}"
        );
    }
    let user = args
        .username
        .context("standard input holds the password: pass the user name with -u USER")?;
    let password = read_line().context("reading the password from standard input")?;
    if user.is_empty() || password.is_empty() {
        bail!("the user name and password must not be empty");
    }
    let creds = Credentials { user, password };
    let reference = Reference {
        registry: host.clone(),
        repository: String::new(),
        tag: None,
        digest: None,
    };
    let options = ClientOptions {
        tls_verify: args.tls_verify,
        credentials: Some(creds.clone()),
    };
    Client::connect(&reference, options)?.verify_login()?;
    let file = credentials::login_file().context("HOME is not set: cannot keep credentials")?;
    credentials::store_in(&file, &host, Some(&creds))?;
    eprintln!("Login Succeeded ({} in {})", host, file.display());
    Ok(())
}

pub fn run_logout(args: LogoutArgs) -> anyhow::Result<()> {
    let host = normalise_host(&args.host);
    let file = credentials::login_file().context("HOME is not set: no credentials file")?;
    if !credentials::store_in(&file, &host, None)? {
        bail!("not logged in to {host} (no entry in {})", file.display());
    }
    eprintln!("Removed login credentials for {host}");
    Ok(())
}

/// "https://host:5000/" -> "host:5000"; Docker Hub's aliases -> docker.io.
fn normalise_host(host: &str) -> String {
    let h = host
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    match h {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_string(),
        h => h.to_string(),
    }
}

fn read_line() -> anyhow::Result<String> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\n', '\r']).to_string())
}
