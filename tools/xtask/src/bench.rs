//! `cargo xtask bench NAME`: runs one criterion bench and prints a table, ours (`keel`)
//! beside each peer, with the ratio peer/ours (above 1: ours is faster).
//!
//! It reads criterion's own result files (`target/criterion/**/new/benchmark.json` and
//! `estimates.json`) of the groups named `NAME/...`. The table shows the very number in
//! the middle of criterion's `time: [low estimate high]` line: criterion's "typical"
//! estimate, which is the slope of its linear-sampling regression when it has one and
//! the mean otherwise (never the median, which `estimates.json` also holds and which
//! can differ by tens of percent for skewed timings).

use crate::cli::BenchArguments;
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

/// The benches: the files `benches/benches/*.rs`, sorted.
pub fn names() -> Vec<String> {
    let directory = workspace_root().join("benches/benches");
    let mut names: Vec<String> = std::fs::read_dir(directory)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|entry| {
                    let name = entry.file_name().into_string().ok()?;
                    name.strip_suffix(".rs").map(String::from)
                })
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// Criterion's typical estimate (slope, else mean) from `estimates.json`, in ns.
fn typical_estimate(estimates: &serde_json::Value) -> Option<f64> {
    estimates["slope"]["point_estimate"]
        .as_f64()
        .or_else(|| estimates["mean"]["point_estimate"].as_f64())
}

/// `cargo xtask bench NAME`.
pub fn run(arguments: &BenchArguments) -> Result<(), String> {
    let known = names();
    let Some(name) = arguments.name.as_deref() else {
        return Err(format!(
            "name a bench: cargo xtask bench NAME, where NAME is one of {}",
            known.join(", ")
        ));
    };
    if name == "blk" {
        return crate::bench_blk::run(arguments.quick);
    }
    if !known.iter().any(|known| known == name) {
        return Err(format!(
            "no bench named {name:?}; the benches are {}",
            known.join(", ")
        ));
    }
    let criterion_directory = workspace_root().join("target/criterion");
    let _ = std::fs::remove_dir_all(&criterion_directory);
    let mut criterion_arguments: Vec<String> = Vec::new();
    if arguments.quick {
        criterion_arguments.extend(
            ["--warm-up-time", "1", "--measurement-time", "2"]
                .into_iter()
                .map(String::from),
        );
    }
    criterion_arguments.extend(arguments.criterion_arguments.iter().cloned());
    eprintln!(
        "xtask: running criterion bench {name} (cargo bench -p keel-benches --bench {name}{})",
        if criterion_arguments.is_empty() {
            String::new()
        } else {
            format!(" -- {}", criterion_arguments.join(" "))
        }
    );
    let mut command = cargo();
    command.args(["bench", "--package", "keel-benches", "--bench", name]);
    if !criterion_arguments.is_empty() {
        command.arg("--").args(&criterion_arguments);
    }
    let status = command
        .status()
        .map_err(|error| format!("cannot run cargo: {error}"))?;
    if !status.success() {
        return Err(format!("cargo bench failed with {status}"));
    }
    let mut results = Vec::new();
    collect(&criterion_directory, &mut results);
    // group -> implementation -> typical estimate in nanoseconds
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
        let time = typical_estimate(&estimates).ok_or(format!(
            "{}: no slope or mean estimate",
            directory.display()
        ))?;
        table.entry(case).or_default().insert(implementation, time);
    }
    if table.is_empty() {
        return Err(format!("no results for groups named {name}/..."));
    }
    // Extra per-row figures some benches write (the mutex bench's per-thread spread):
    // (group, function) -> spread median.
    let mut spreads: BTreeMap<(String, String), f64> = BTreeMap::new();
    if let Ok(text) = std::fs::read_to_string(criterion_directory.join("keel-extra.jsonl")) {
        for line in text.lines() {
            if let Ok(record) = serde_json::from_str::<serde_json::Value>(line)
                && let (Some(group), Some(function), Some(spread)) = (
                    record["group"].as_str(),
                    record["function"].as_str(),
                    record["spread_median"].as_f64(),
                )
            {
                spreads.insert((group.to_string(), function.to_string()), spread);
            }
        }
    }
    let spread_of = |case: &str, function: &str| {
        spreads
            .get(&(case.to_string(), function.to_string()))
            .map_or_else(|| "-".to_string(), |spread| format!("{spread:.2}"))
    };
    println!(
        "\n{:<36} {:<24} {:>14} {:>14} {:>8}{}",
        "case",
        "peer",
        "keel time",
        "peer time",
        "ratio",
        if spreads.is_empty() {
            ""
        } else {
            "  keel spread  peer spread"
        }
    );
    for (case, implementations) in &table {
        let ours = implementations.get("keel").copied();
        if let (Some(ours), 1) = (ours, implementations.len()) {
            // A case with no peer (ours alone): its own row.
            println!("{case:<36} {:<24} {:>14}", "-", format_nanos(ours));
        }
        for (peer, time) in implementations.iter().filter(|(name, _)| *name != "keel") {
            let (ours_text, ratio) = match ours {
                Some(ours) => (format_nanos(ours), format!("{:.2}x", time / ours)),
                None => ("-".into(), "-".into()),
            };
            let spread_columns = if spreads.is_empty() {
                String::new()
            } else {
                format!(
                    "  {:>11}  {:>11}",
                    spread_of(case, "keel"),
                    spread_of(case, peer)
                )
            };
            println!(
                "{case:<36} {peer:<24} {ours_text:>14} {:>14} {ratio:>8}{spread_columns}",
                format_nanos(*time)
            );
        }
    }
    println!(
        "\ntime = criterion's estimate per iteration, the middle number of its \
         `time: [low estimate high]` line above (the slope of its linear regression over \
         the samples; the mean where it has no slope)\n\
         ratio = peer time / keel time (above 1.00x: Keel is faster)"
    );
    if !spreads.is_empty() {
        println!(
            "spread = slowest thread's acquisitions / busiest thread's (fixed window) or the \
             slowest thread's progress when the first finished (fixed work), median; 1.00 is \
             perfectly even, near 0 is starvation"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_uses_criterions_typical_estimate() {
        let with_slope = serde_json::json!({
            "mean": {"point_estimate": 24.0},
            "median": {"point_estimate": 20.5},
            "slope": {"point_estimate": 24.3},
        });
        assert_eq!(typical_estimate(&with_slope), Some(24.3));
        let flat = serde_json::json!({
            "mean": {"point_estimate": 7.0},
            "median": {"point_estimate": 6.0},
            "slope": null,
        });
        assert_eq!(typical_estimate(&flat), Some(7.0));
    }

    #[test]
    fn lists_the_benches() {
        let names = names();
        assert!(names.iter().any(|name| name == "heap"), "{names:?}");
    }
}
