//! `ferry ls BAG`: what a ferry bag holds, with provenance, read from `ferry/items.jsonl`.

use std::io::{BufRead, BufReader, Write};

use anyhow::{bail, Context, Result};
use ferry_archive::reader::BagReader;
use ferry_archive::record::FAILURES_JSONL;
use indicatif::HumanBytes;
use serde_json::Value;

use super::exit;
use crate::cli::{Cli, LsArgs};

/// Lists items (or failures); returns the exit code.
pub async fn run(_cli: &Cli, args: &LsArgs) -> Result<i32> {
    let uri = args.bag.to_string_lossy().into_owned();
    let store = if uri.starts_with("s3://") {
        let store = crate::source::s3_bag_to_read(&uri, &args.s3).await?;
        Some(store)
    } else {
        None
    };
    let runtime = tokio::runtime::Handle::current();
    let args = args.clone();
    // Reading blocks (files, or objects through the runtime): off the async threads.
    tokio::task::spawn_blocking(move || {
        let reader = match store {
            Some(store) => BagReader::open_store(store, runtime),
            None => BagReader::open(&args.bag),
        }
        .with_context(|| format!("cannot open {}", args.bag.display()))?;
        list(&reader, &args)
    })
    .await?
}

fn list(reader: &BagReader, args: &LsArgs) -> Result<i32> {
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if args.failures {
        if reader.find(FAILURES_JSONL).is_none() {
            bail!(
                "{} has no {FAILURES_JSONL}: it was not made by ferry",
                args.bag.display()
            );
        }
        let file = reader.open_path(FAILURES_JSONL)?;
        for line in BufReader::new(file).lines() {
            let line = line?;
            if args.json {
                writeln!(out, "{line}")?;
            } else if let Ok(v) = serde_json::from_str::<Value>(&line) {
                writeln!(
                    out,
                    "FAILED  {}  [{}] {}",
                    text(&v["name"]),
                    text(&v["stage"]),
                    text(&v["error"])
                )?;
            }
        }
        out.flush()?;
        return Ok(exit::OK);
    }
    let Some(records) = reader.item_records()? else {
        bail!("{} has no ferry/items.jsonl: it was not made by ferry (`ferry verify` still checks it)", args.bag.display());
    };
    let mut bad = 0;
    for record in records {
        let (_, v) = match record {
            Ok(r) => r,
            Err(e) => {
                bad += 1;
                tracing::warn!("items.jsonl line {}: {}", e.line, e.detail);
                continue;
            }
        };
        if args.json {
            serde_json::to_writer(&mut out, &v)?;
            writeln!(out)?;
            continue;
        }
        let original = v["source"]["original_path"].as_str().unwrap_or_default();
        let modified = v["modified"]
            .as_str()
            .map(|m| m.get(..19).unwrap_or(m).replace('T', " "))
            .unwrap_or_default();
        match v["path"].as_str() {
            Some(path) => {
                let size = v["size"].as_u64().unwrap_or(0);
                let shown = path.strip_prefix("data/").unwrap_or(path);
                let renamed = !path.ends_with(original) || original.is_empty();
                let from = if renamed {
                    format!("  ← {}", escape(original))
                } else {
                    String::new()
                };
                writeln!(
                    out,
                    "{:>10}  {modified:19}  {}{from}",
                    HumanBytes(size).to_string(),
                    escape(shown)
                )?;
            }
            None => {
                let kind = text(&v["type"]);
                let reason = text(&v["skipped"]);
                let target = v["target"]
                    .as_str()
                    .map(|t| format!(" → {}", escape(t)))
                    .unwrap_or_default();
                writeln!(
                    out,
                    "{:>10}  {modified:19}  {}{target}  ({reason})",
                    format!("[{kind}]"),
                    escape(original)
                )?;
            }
        }
    }
    out.flush()?;
    Ok(if bad > 0 { exit::PROBLEMS } else { exit::OK })
}

fn text(v: &Value) -> String {
    v.as_str().map(escape).unwrap_or_default()
}

/// Shows control characters (a newline in a name) as escapes, so one item stays on one line.
fn escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}
