//! `strata images [--json]`

use strata::store::{ImageRecord, Store};

/// List the images in the store
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print JSON instead of a table
    #[arg(long)]
    json: bool,
}

pub fn run(store: &Store, args: Args) -> anyhow::Result<()> {
    let mut db = store.images().load()?;
    db.images
        .sort_by(|a, b| b.imported.cmp(&a.imported).then(a.names.cmp(&b.names)));
    if args.json {
        let list: Vec<serde_json::Value> = db.images.iter().map(json_entry).collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let mut rows = vec![[
        "NAME:TAG".to_string(),
        "IMAGE ID".into(),
        "LAYERS".into(),
        "SIZE".into(),
        "CREATED".into(),
    ]];
    for image in &db.images {
        let names: Vec<&str> = if image.names.is_empty() {
            vec!["<none>"]
        } else {
            image.names.iter().map(String::as_str).collect()
        };
        for name in names {
            rows.push([
                name.to_string(),
                image.id.short().to_string(),
                image.layers.len().to_string(),
                human_size(image.size()),
                image
                    .created
                    .as_deref()
                    .and_then(parse_rfc3339)
                    .map_or("unknown".into(), |t| ago(now - t)),
            ]);
        }
    }
    let widths: Vec<usize> = (0..5)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    Ok(())
}

fn json_entry(image: &ImageRecord) -> serde_json::Value {
    serde_json::json!({
        "id": image.id.hex(),
        "names": image.names,
        "digest": image.manifest_digest,
        "layers": image.layers.iter().map(|l| &l.diff_id).collect::<Vec<_>>(),
        "size": image.size(),
        "created": image.created,
        "imported": image.imported,
    })
}

/// Decimal units, as podman prints sizes.
pub(super) fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    // Three significant digits, as podman shows them: "5.1 MB", "206 MB".
    let digits = if unit == 0 || value >= 100.0 {
        0
    } else if value >= 10.0 {
        1
    } else {
        2
    };
    let number = format!("{value:.digits$}");
    let number = if number.contains('.') {
        number.trim_end_matches('0').trim_end_matches('.')
    } else {
        &number
    };
    format!("{number} {}", UNITS[unit])
}

pub fn ago(seconds: i64) -> String {
    let s = seconds.max(0);
    let (n, unit) = match s {
        0..60 => (s, "second"),
        60..3600 => (s / 60, "minute"),
        3600..86400 => (s / 3600, "hour"),
        86400..604800 => (s / 86400, "day"),
        604800..2629746 => (s / 604800, "week"),
        2629746..31556952 => (s / 2629746, "month"),
        _ => (s / 31556952, "year"),
    };
    format!("{n} {unit}{} ago", if n == 1 { "" } else { "s" })
}

/// Seconds since the epoch of an RFC 3339 time ("2024-01-02T03:04:05.6Z", "+02:00").
fn parse_rfc3339(s: &str) -> Option<i64> {
    let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<i64>().ok();
    let (y, mo, d, h, mi, sec) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    let rest = s
        .get(19..)?
        .trim_start_matches(|c: char| c == '.' || c.is_ascii_digit());
    let offset = match rest {
        "Z" | "z" | "" => 0,
        tz => {
            let sign = if tz.starts_with('-') { -1 } else { 1 };
            let oh: i64 = tz.get(1..3)?.parse().ok()?;
            let om: i64 = tz.get(4..6)?.parse().ok()?;
            sign * (oh * 3600 + om * 60)
        }
    };
    Some(days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec - offset)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146097 + doe - 719468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(parse_rfc3339("1970-01-02T00:00:00Z"), Some(86400));
        assert_eq!(
            parse_rfc3339("2024-03-01T12:00:00.123+01:00"),
            Some(1709290800)
        );
        assert_eq!(human_size(999), "999 B");
        assert_eq!(human_size(5_100_000), "5.1 MB");
        assert_eq!(human_size(206_400_000), "206 MB");
        assert_eq!(ago(3 * 86400), "3 days ago");
        assert_eq!(ago(1), "1 second ago");
    }
}
