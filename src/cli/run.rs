//! `strata run [OPTIONS] IMAGE [COMMAND [ARG...]]`

use std::path::PathBuf;
use std::time::Duration;

use strata::runtime::{Network, RunOptions, UsernsMode};
use strata::store::Store;

/// Run a command in a new container of an image, rootless, on strata's union
/// filesystem; exits with the command's code (125: strata failed, 126: the command
/// cannot be executed, 127: not found in the image)
#[derive(Debug, clap::Args)]
#[command(trailing_var_arg = true)]
pub struct Args {
    /// Keep the container under this name when it exits (its writable layer, command
    /// and options), for `strata start`, `commit`, `rm`
    #[arg(long, value_name = "NAME", value_parser = parse_name)]
    name: Option<String>,
    /// Remove the container when it exits (the default without --name)
    #[arg(long)]
    rm: bool,
    /// Set an environment variable: NAME=VALUE, or NAME for your own value
    #[arg(short, long = "env", value_name = "NAME[=VALUE]")]
    env: Vec<String>,
    /// Read environment variables from a file (NAME=VALUE lines, # comments)
    #[arg(long, value_name = "FILE")]
    env_file: Vec<PathBuf>,
    /// Bind a host file or directory: SOURCE:DESTINATION[:ro]
    #[arg(short, long = "volume", value_name = "SRC:DST[:ro]")]
    volume: Vec<String>,
    /// The working directory inside the container
    #[arg(short, long, value_name = "DIR")]
    workdir: Option<String>,
    /// Run as UID[:GID], or as a NAME[:GROUP] of the image's /etc/passwd
    #[arg(short, long, value_name = "USER[:GROUP]")]
    user: Option<String>,
    /// Replace the image's Entrypoint (a command, or a JSON array; "" clears it)
    #[arg(long, value_name = "COMMAND")]
    entrypoint: Option<String>,
    /// The container's hostname [default: the first 12 digits of its ID]
    #[arg(long)]
    hostname: Option<String>,
    /// host: the host's network (the default, as HPC jobs need); none: only loopback
    #[arg(long, value_enum, default_value_t = NetworkArg::Host)]
    network: NetworkArg,
    /// No writable layer: the image is mounted read-only (tmpfs on /tmp, /var/tmp, /run)
    #[arg(long)]
    read_only: bool,
    /// Keep stdin open and pass it to the container
    #[arg(short, long)]
    interactive: bool,
    /// Give the container a pseudo-terminal
    #[arg(short, long)]
    tty: bool,
    /// auto: you are root inside, your subuid range 1..N; keep-id: you keep your own
    /// uid and gid inside; single: only your own id is mapped (as root)
    #[arg(long, value_enum, default_value_t = UsernsArg::Auto)]
    userns: UsernsArg,
    /// Add a capability to the default set (NAME, CAP_NAME or ALL)
    #[arg(long, value_name = "CAP")]
    cap_add: Vec<String>,
    /// Drop a capability from the default set (NAME, CAP_NAME or ALL)
    #[arg(long, value_name = "CAP")]
    cap_drop: Vec<String>,
    /// Run a tiny init as pid 1 that forwards signals and reaps zombies
    #[arg(long)]
    init: bool,
    /// Seconds to wait after SIGTERM or SIGINT before SIGKILL
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    stop_timeout: u64,
    /// The image: NAME[:TAG], an ID prefix, or @sha256:<digest>
    image: String,
    /// The command and its arguments [default: the image's Entrypoint and Cmd]
    #[arg(allow_hyphen_values = true)]
    command: Vec<String>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum NetworkArg {
    Host,
    None,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum UsernsArg {
    Auto,
    KeepId,
    Single,
}

pub fn run(store: &Store, args: Args) -> anyhow::Result<i32> {
    let image = store.images().load()?.find(&args.image)?.clone();
    let options = RunOptions {
        remove: args.rm || args.name.is_none(),
        name: args.name,
        command: args.command,
        entrypoint: args.entrypoint,
        env: args.env,
        env_files: args.env_file,
        volumes: args.volume,
        workdir: args.workdir,
        user: args.user,
        hostname: args.hostname,
        network: match args.network {
            NetworkArg::Host => Network::Host,
            NetworkArg::None => Network::None,
        },
        read_only: args.read_only,
        interactive: args.interactive,
        tty: args.tty,
        userns: match args.userns {
            UsernsArg::Auto => UsernsMode::Auto,
            UsernsArg::KeepId => UsernsMode::KeepId,
            UsernsArg::Single => UsernsMode::Single,
        },
        cap_add: args.cap_add,
        cap_drop: args.cap_drop,
        init: args.init,
        stop_timeout: Duration::from_secs(args.stop_timeout),
    };
    Ok(strata::runtime::run(store, &image, &args.image, &options)?)
}

/// Container names as podman takes them: a letter or digit, then letters, digits,
/// `_`, `.` and `-`; not 64 hex digits (an ID).
fn parse_name(name: &str) -> Result<String, String> {
    let ok = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
        && !(name.len() == 64 && name.chars().all(|c| c.is_ascii_hexdigit()));
    if ok {
        Ok(name.to_string())
    } else {
        Err("a name is a letter or digit, then letters, digits, '_', '.' or '-'".into())
    }
}
