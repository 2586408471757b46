//! `strata ps [-a] [--json]`

use std::io::Write;

use strata::store::Store;
use strata::store::containers::ContainerState;

/// List containers: running ones, or all with -a
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Also the containers that are not running
    #[arg(short, long)]
    all: bool,
    /// One JSON array, for scripts
    #[arg(long)]
    json: bool,
}

pub fn run(store: &Store, args: Args) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for record in store.containers()? {
        let state = store.container_state(&record.id)?;
        if args.all || state == ContainerState::Running {
            rows.push((record, state));
        }
    }
    let mut out = std::io::stdout().lock();
    if args.json {
        let list: Vec<serde_json::Value> = rows
            .iter()
            .map(|(r, state)| {
                let (status, code) = match state {
                    ContainerState::Running => ("running", None),
                    ContainerState::Exited(exit) => ("exited", exit.map(|e| e.code)),
                };
                serde_json::json!({
                    "id": r.id,
                    "name": r.name,
                    "image": r.image_asked,
                    "image_id": r.image.id.hex(),
                    "command": r.command,
                    "created": r.created,
                    "status": status,
                    "exit_code": code,
                })
            })
            .collect();
        serde_json::to_writer_pretty(&mut out, &list)?;
        writeln!(out)?;
        return Ok(());
    }
    writeln!(
        out,
        "{:<14}{:<20}{:<24}{:<28}{:<22}CREATED",
        "CONTAINER ID", "NAME", "IMAGE", "COMMAND", "STATUS"
    )?;
    for (r, state) in rows {
        let status = match state {
            ContainerState::Running => "running".to_string(),
            ContainerState::Exited(Some(e)) => format!("exited ({})", e.code),
            // strata was killed before it could see the end.
            ContainerState::Exited(None) => "exited (unknown)".to_string(),
        };
        writeln!(
            out,
            "{:<14}{:<20}{:<24}{:<28}{:<22}{}",
            &r.id[..12],
            r.name.as_deref().unwrap_or("-"),
            clip(&r.image_asked, 23),
            clip(&r.command.join(" "), 27),
            status,
            super::images::ago(strata::runtime::launch::now() as i64 - r.created as i64)
        )?;
    }
    Ok(())
}

fn clip(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_string();
    }
    let mut s: String = text.chars().take(width - 1).collect();
    s.push('…');
    s
}
