//! `cargo xtask bench NAME`: runs one criterion bench and prints a table of medians,
//! ours (`keel`) beside each peer, with the ratio peer/ours (above 1: ours is faster).
//!
//! It reads criterion's own result files (`target/criterion/**/new/benchmark.json` and
//! `estimates.json`) of the groups named `NAME/...`.

use crate::{cargo, workspace_root};
use std::collections::BTreeMap;
use std::path::Path;

fn collect(directory: &Path, found: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(directory) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|name| name == "new")
                && path.join("benchmark.json").exists()
            {
                found.push(path);
            } else {
                collect(&path, found);
            }
        }
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|error| format!("cannot read {}: {error}", path.display()))?;
    serde_json::from_str(&text).map_err(|error| format!("{}: {error}", path.display()))
}

fn format_nanos(nanos: f64) -> String {
    if nanos >= 1_000_000.0 {
        format!("{:.3} ms", nanos / 1_000_000.0)
    } else if nanos >= 1_000.0 {
        format!("{:.3} us", nanos / 1_000.0)
    } else {
        format!("{nanos:.2} ns")
    }
}

/// `cargo xtask bench NAME`.
pub fn run(arguments: &[String]) -> Result<(), String> {
    let [name] = arguments else {
        return Err("usage: cargo xtask bench NAME (for example pagealloc or heap)".into());
    };
    let bench_file = workspace_root()
        .join("benches/benches")
        .join(format!("{name}.rs"));
    if !bench_file.exists() {
        return Err(format!(
            "no bench named {name:?} (expected {})",
            bench_file.display()
        ));
    }
    let criterion_directory = workspace_root().join("target/criterion");
    let _ = std::fs::remove_dir_all(&criterion_directory);
    eprintln!("xtask: running criterion bench {name} (cargo bench -p keel-benches --bench {name})");
    let status = cargo()
        .args(["bench", "--package", "keel-benches", "--bench", name])
        .status()
        .map_err(|error| format!("cannot run cargo: {error}"))?;
    if !status.success() {
        return Err(format!("cargo bench failed with {status}"));
    }
    let mut results = Vec::new();
    collect(&criterion_directory, &mut results);
    // group -> implementation -> median nanoseconds
    let mut table: BTreeMap<String, BTreeMap<String, f64>> = BTreeMap::new();
    for directory in results {
        let benchmark = read_json(&directory.join("benchmark.json"))?;
        let estimates = read_json(&directory.join("estimates.json"))?;
        let group = benchmark["group_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if !group.starts_with(&format!("{name}/")) {
            continue;
        }
        let mut case = group.clone();
        if let Some(value) = benchmark["value_str"].as_str() {
            case = format!("{group} [{value}]");
        }
        let implementation = benchmark["function_id"].as_str().unwrap_or("?").to_string();
        let median = estimates["median"]["point_estimate"]
            .as_f64()
            .ok_or(format!("{}: no median", directory.display()))?;
        table
            .entry(case)
            .or_default()
            .insert(implementation, median);
    }
    if table.is_empty() {
        return Err(format!("no results for groups named {name}/..."));
    }
    println!(
        "\n{:<36} {:<24} {:>14} {:>14} {:>8}",
        "case", "peer", "keel median", "peer median", "ratio"
    );
    for (case, implementations) in &table {
        let ours = implementations.get("keel").copied();
        if let (Some(ours), 1) = (ours, implementations.len()) {
            // A case with no peer (ours alone): its own row.
            println!("{case:<36} {:<24} {:>14}", "-", format_nanos(ours));
        }
        for (peer, median) in implementations.iter().filter(|(name, _)| *name != "keel") {
            let (ours_text, ratio) = match ours {
                Some(ours) => (format_nanos(ours), format!("{:.2}x", median / ours)),
                None => ("-".into(), "-".into()),
            };
            println!(
                "{case:<36} {peer:<24} {ours_text:>14} {:>14} {ratio:>8}",
                format_nanos(*median)
            );
        }
    }
    println!("\nratio = peer median / keel median (above 1.00x: Keel is faster)");
    Ok(())
}
