//! What to run, decided before anything is forked: the command line, environment,
//! working directory, user, binds and capabilities of a container, from the image
//! config overridden by the caller's options as the OCI image spec and podman say.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::RunError;
use super::capabilities::CapabilitySet;
use super::userns::UsernsMode;
use crate::image::spec::ImageConfig;

/// PATH where the image sets none, as podman's.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Network {
    /// The host's network namespace: what HPC jobs need (their interconnects).
    Host,
    /// A network namespace of its own with only loopback, up.
    None,
}

/// The caller's options, as `strata run` takes them; kept with a named container
/// to start it again the same way.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunOptions {
    /// A kept container's name.
    pub name: Option<String>,
    /// The container and its writable layer are removed when it exits.
    pub remove: bool,
    pub command: Vec<String>,
    pub entrypoint: Option<String>,
    /// `K=V`, or `K` to pass the caller's own value.
    pub env: Vec<String>,
    pub env_files: Vec<PathBuf>,
    /// `SRC:DST[:OPTIONS]`.
    pub volumes: Vec<String>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub hostname: Option<String>,
    pub network: Network,
    pub read_only: bool,
    pub interactive: bool,
    pub tty: bool,
    pub userns: UsernsMode,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub init: bool,
    pub stop_timeout: Duration,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            name: None,
            remove: true,
            command: Vec::new(),
            entrypoint: None,
            env: Vec::new(),
            env_files: Vec::new(),
            volumes: Vec::new(),
            workdir: None,
            user: None,
            hostname: None,
            network: Network::Host,
            read_only: false,
            interactive: false,
            tty: false,
            userns: UsernsMode::Auto,
            cap_add: Vec::new(),
            cap_drop: Vec::new(),
            init: false,
            stop_timeout: Duration::from_secs(10),
        }
    }
}

/// A host path bound into the container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bind {
    pub source: PathBuf,
    /// Absolute, inside the container.
    pub target: String,
    pub read_only: bool,
}

/// Everything the container's process needs, resolved.
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub argv: Vec<String>,
    /// In order; later names override earlier ones already.
    pub env: Vec<(String, String)>,
    pub workdir: String,
    /// `USER[:GROUP]` by name or number, resolved inside the container's root.
    pub user: String,
    pub hostname: String,
    pub binds: Vec<Bind>,
    pub network: Network,
    pub read_only: bool,
    pub capabilities: CapabilitySet,
    pub init: bool,
    pub tty: bool,
    pub interactive: bool,
    pub stop_timeout: Duration,
}

impl ContainerSpec {
    /// The container `image_config` and `options` describe; `host_env` gives the
    /// values of `-e NAME` without `=`.
    pub fn resolve(
        image_config: &ImageConfig,
        options: &RunOptions,
        hostname: String,
        host_env: impl Fn(&str) -> Option<String>,
    ) -> Result<ContainerSpec, RunError> {
        let config = image_config.config.clone().unwrap_or_default();
        let argv = command_line(
            config.entrypoint.as_deref(),
            config.cmd.as_deref(),
            options.entrypoint.as_deref(),
            &options.command,
        )?;
        let mut env = Env::default();
        for entry in config.env.iter().flatten() {
            env.set_entry(entry);
        }
        if env.get("PATH").is_none() {
            env.set("PATH", DEFAULT_PATH);
        }
        env.set("HOSTNAME", &hostname);
        env.set("container", "strata");
        if options.tty && env.get("TERM").is_none() {
            env.set("TERM", "xterm");
        }
        for file in &options.env_files {
            let text = std::fs::read_to_string(file).map_err(|source| RunError::EnvFile {
                path: file.clone(),
                source,
            })?;
            for line in text.lines().map(str::trim) {
                if !line.is_empty() && !line.starts_with('#') {
                    env.set_option(line, &host_env)?;
                }
            }
        }
        for entry in &options.env {
            env.set_option(entry, &host_env)?;
        }
        let workdir = match options.workdir.as_deref() {
            Some(dir) => absolute("--workdir", dir)?,
            None => config
                .working_dir
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| "/".into()),
        };
        let user = options
            .user
            .clone()
            .or(config.user)
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "0".into());
        let binds = options
            .volumes
            .iter()
            .map(|v| parse_volume(v))
            .collect::<Result<Vec<_>, _>>()?;
        let capabilities =
            CapabilitySet::default_set().adjust(&options.cap_add, &options.cap_drop)?;
        Ok(ContainerSpec {
            argv,
            env: env.vars,
            workdir,
            user,
            hostname,
            binds,
            network: options.network,
            read_only: options.read_only,
            capabilities,
            init: options.init,
            tty: options.tty,
            interactive: options.interactive,
            stop_timeout: options.stop_timeout,
        })
    }

    pub fn env_value(&self, name: &str) -> Option<&str> {
        self.env
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Entrypoint + Cmd, as docker and podman combine them: arguments after the image
/// replace Cmd; `--entrypoint` replaces Entrypoint and drops the image's Cmd (an
/// empty `--entrypoint ""` clears it). `--entrypoint` may be a JSON array.
pub fn command_line(
    image_entrypoint: Option<&[String]>,
    image_cmd: Option<&[String]>,
    entrypoint: Option<&str>,
    args: &[String],
) -> Result<Vec<String>, RunError> {
    let mut argv: Vec<String> = match entrypoint {
        Some("") => Vec::new(),
        Some(e) if e.trim_start().starts_with('[') => serde_json::from_str::<Vec<String>>(e)
            .map_err(|err| RunError::BadOption {
                option: format!("--entrypoint {e}"),
                reason: format!("not a JSON array of strings: {err}"),
            })?,
        Some(e) => vec![e.to_string()],
        None => image_entrypoint.unwrap_or_default().to_vec(),
    };
    if !args.is_empty() {
        argv.extend(args.iter().cloned());
    } else if entrypoint.is_none() {
        argv.extend(image_cmd.unwrap_or_default().iter().cloned());
    }
    if argv.is_empty() {
        return Err(RunError::NoCommand);
    }
    Ok(argv)
}

/// The environment, in order, one value per name.
#[derive(Debug, Default)]
struct Env {
    vars: Vec<(String, String)>,
}

impl Env {
    fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn set(&mut self, name: &str, value: &str) {
        match self.vars.iter_mut().find(|(k, _)| k == name) {
            Some(slot) => slot.1 = value.to_string(),
            None => self.vars.push((name.to_string(), value.to_string())),
        }
    }

    /// `K=V` from an image config; anything else there is ignored, as podman does.
    fn set_entry(&mut self, entry: &str) {
        if let Some((k, v)) = entry.split_once('=')
            && !k.is_empty()
        {
            self.set(k, v);
        }
    }

    /// `K=V`, or `K` alone for the caller's own value (left out when it has none).
    fn set_option(
        &mut self,
        entry: &str,
        host_env: &impl Fn(&str) -> Option<String>,
    ) -> Result<(), RunError> {
        match entry.split_once('=') {
            Some(("", _)) => Err(RunError::BadOption {
                option: format!("--env {entry}"),
                reason: "the variable has no name".into(),
            }),
            Some((k, v)) => {
                self.set(k, v);
                Ok(())
            }
            None => {
                if let Some(v) = host_env(entry) {
                    self.set(entry, &v);
                }
                Ok(())
            }
        }
    }
}

fn absolute(option: &str, path: &str) -> Result<String, RunError> {
    if path.starts_with('/') {
        Ok(path.to_string())
    } else {
        Err(RunError::BadOption {
            option: format!("{option} {path}"),
            reason: "the path inside the container must be absolute".into(),
        })
    }
}

/// `SRC:DST[:ro|rw]`. SRC must exist (podman would create a named volume instead;
/// strata has none) and is made absolute against the current directory.
pub fn parse_volume(spec: &str) -> Result<Bind, RunError> {
    let bad = |reason: &str| RunError::BadOption {
        option: format!("--volume {spec}"),
        reason: reason.to_string(),
    };
    let parts: Vec<&str> = spec.split(':').collect();
    let (source, target, options) = match parts.as_slice() {
        [s, t] => (*s, *t, ""),
        [s, t, o] => (*s, *t, *o),
        _ => return Err(bad("expected SOURCE:DESTINATION[:ro]")),
    };
    if source.is_empty() || target.is_empty() {
        return Err(bad("expected SOURCE:DESTINATION[:ro]"));
    }
    let target = absolute("--volume", target)?;
    let mut read_only = false;
    for option in options.split(',').filter(|o| !o.is_empty()) {
        match option {
            "ro" => read_only = true,
            "rw" => read_only = false,
            // Propagation and relabelling are accepted for podman's command lines:
            // binds are private here, and strata does no SELinux labelling.
            "z" | "Z" | "private" | "rprivate" | "bind" | "rbind" => {}
            other => return Err(bad(&format!("unknown option {other:?}: use ro or rw"))),
        }
    }
    let source = Path::new(source);
    let source = if source.is_absolute() {
        source.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|_| bad("the current directory is gone"))?
            .join(source)
    };
    if std::fs::symlink_metadata(&source).is_err() {
        return Err(RunError::BindSourceMissing { path: source });
    }
    Ok(Bind {
        source,
        target,
        read_only,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn entrypoint_and_cmd_combine_as_docker_does() {
        let ep = s(&["/ep", "-x"]);
        let cmd = s(&["default"]);
        assert_eq!(
            command_line(Some(&ep), Some(&cmd), None, &[]).unwrap(),
            s(&["/ep", "-x", "default"])
        );
        assert_eq!(
            command_line(Some(&ep), Some(&cmd), None, &s(&["a"])).unwrap(),
            s(&["/ep", "-x", "a"])
        );
        // --entrypoint drops the image's Cmd.
        assert_eq!(
            command_line(Some(&ep), Some(&cmd), Some("/other"), &[]).unwrap(),
            s(&["/other"])
        );
        assert_eq!(
            command_line(None, Some(&cmd), Some(""), &s(&["ls", "-l"])).unwrap(),
            s(&["ls", "-l"])
        );
        assert_eq!(
            command_line(None, None, Some(r#"["sh","-c"]"#), &s(&["exit 3"])).unwrap(),
            s(&["sh", "-c", "exit 3"])
        );
        assert!(matches!(
            command_line(None, None, None, &[]),
            Err(RunError::NoCommand)
        ));
        assert!(matches!(
            command_line(Some(&ep), Some(&cmd), Some(""), &[]),
            Err(RunError::NoCommand)
        ));
    }

    #[test]
    fn environment_layers_image_then_files_then_flags() {
        let image: ImageConfig = serde_json::from_str(
            r#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},
                "config":{"Env":["A=1","B=2","junk"]}}"#,
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("env");
        std::fs::write(&file, "# comment\nB=from-file\n\nC=3\nFROMHOST\n").unwrap();
        let options = RunOptions {
            command: s(&["true"]),
            env: s(&["C=flag", "D=", "MISSING"]),
            env_files: vec![file],
            ..Default::default()
        };
        let host = |k: &str| (k == "FROMHOST").then(|| "host".to_string());
        let spec = ContainerSpec::resolve(&image, &options, "h".into(), host).unwrap();
        assert_eq!(spec.env_value("A"), Some("1"));
        assert_eq!(spec.env_value("B"), Some("from-file"));
        assert_eq!(spec.env_value("C"), Some("flag"));
        assert_eq!(spec.env_value("D"), Some(""));
        assert_eq!(spec.env_value("FROMHOST"), Some("host"));
        assert_eq!(spec.env_value("MISSING"), None);
        assert_eq!(spec.env_value("PATH"), Some(DEFAULT_PATH));
        assert_eq!(spec.env_value("HOSTNAME"), Some("h"));
        assert_eq!(spec.workdir, "/");
        assert_eq!(spec.user, "0");
    }

    #[test]
    fn volumes_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().to_str().unwrap();
        let bind = parse_volume(&format!("{src}:/data:ro")).unwrap();
        assert!(bind.read_only);
        assert_eq!(bind.target, "/data");
        assert!(!parse_volume(&format!("{src}:/data")).unwrap().read_only);
        assert!(matches!(
            parse_volume(&format!("{src}/nope:/data")),
            Err(RunError::BindSourceMissing { .. })
        ));
        assert!(matches!(
            parse_volume(&format!("{src}:data")),
            Err(RunError::BadOption { .. })
        ));
        assert!(matches!(
            parse_volume(&format!("{src}:/data:weird")),
            Err(RunError::BadOption { .. })
        ));
        assert!(parse_volume("justone").is_err());
    }
}
