//! `strata exec [OPTIONS] CONTAINER COMMAND [ARG...]`

use strata::runtime::exec::ExecOptions;
use strata::store::Store;

/// Run a command in a running container (its namespaces, root, user and
/// environment); exits with the command's code
#[derive(Debug, clap::Args)]
#[command(trailing_var_arg = true)]
pub struct Args {
    /// Set an environment variable: NAME=VALUE, or NAME for your own value
    #[arg(short, long = "env", value_name = "NAME[=VALUE]")]
    env: Vec<String>,
    /// The working directory inside the container
    #[arg(short, long, value_name = "DIR")]
    workdir: Option<String>,
    /// Run as UID[:GID], or as a NAME[:GROUP] of the image's /etc/passwd
    #[arg(short, long, value_name = "USER[:GROUP]")]
    user: Option<String>,
    /// Keep stdin open and pass it to the command
    #[arg(short, long)]
    interactive: bool,
    /// Give the command a pseudo-terminal
    #[arg(short, long)]
    tty: bool,
    /// The container: its name or an ID prefix
    container: String,
    /// The command and its arguments
    #[arg(required = true, allow_hyphen_values = true)]
    command: Vec<String>,
}

pub fn run(store: &Store, args: Args) -> anyhow::Result<i32> {
    let record = store.find_container(&args.container)?;
    let options = ExecOptions {
        command: args.command,
        env: args.env,
        workdir: args.workdir,
        user: args.user,
        interactive: args.interactive,
        tty: args.tty,
    };
    Ok(strata::runtime::exec::exec(store, &record, &options)?)
}
