//! The Cargo features of `keel-kernel`, read from `kernel-bin/Cargo.toml` when xtask
//! runs, so `--help` and the `--features` check never go stale: a feature is the
//! `name = [...]` line of the `[features]` table, and its description the `#` comment
//! lines just above it.

use crate::workspace_root;

/// One Cargo feature of `keel-kernel`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Feature {
    /// The feature's name, as given to `--features`.
    pub name: String,
    /// Its comment in `kernel-bin/Cargo.toml`, joined into one line.
    pub description: String,
}

/// Parses the `[features]` table of a Cargo manifest (only the shape Keel's manifest
/// uses: one `name = [...]` per line, comments above it; `default` is left out).
pub fn parse_features(manifest: &str) -> Vec<Feature> {
    let mut features = Vec::new();
    let mut in_table = false;
    let mut comment: Vec<String> = Vec::new();
    for line in manifest.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_table = line == "[features]";
            comment.clear();
            continue;
        }
        if !in_table {
            continue;
        }
        if let Some(text) = line.strip_prefix('#') {
            comment.push(text.trim().to_string());
        } else if let Some((name, _)) = line.split_once('=') {
            let name = name.trim();
            if name != "default" {
                features.push(Feature {
                    name: name.to_string(),
                    description: comment.join(" "),
                });
            }
            comment.clear();
        } else if line.is_empty() {
            comment.clear();
        }
    }
    features
}

/// The features of `keel-kernel` (empty when the manifest cannot be read).
pub fn kernel_features() -> Vec<Feature> {
    let path = workspace_root().join("kernel-bin/Cargo.toml");
    std::fs::read_to_string(path)
        .map(|text| parse_features(&text))
        .unwrap_or_default()
}

/// Checks that every name in `requested` is a feature of `keel-kernel`.
pub fn check(requested: &[String]) -> Result<(), String> {
    let known = kernel_features();
    if known.is_empty() {
        // No manifest to check against: let cargo judge.
        return Ok(());
    }
    for name in requested {
        if !known.iter().any(|feature| &feature.name == name) {
            let names: Vec<&str> = known.iter().map(|feature| feature.name.as_str()).collect();
            return Err(format!(
                "keel-kernel has no feature {name:?}; its features are: {} \
                 (see `cargo xtask build --help`)",
                names.join(", ")
            ));
        }
    }
    Ok(())
}

/// The features as help text, one per line.
pub fn help_text() -> String {
    let features = kernel_features();
    if features.is_empty() {
        return "  (kernel-bin/Cargo.toml could not be read)\n".into();
    }
    let width = features
        .iter()
        .map(|feature| feature.name.len())
        .max()
        .unwrap_or(0);
    features
        .iter()
        .map(|feature| format!("  {:<width$}  {}\n", feature.name, feature.description))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_features_with_their_comments() {
        let manifest = "[package]\nname = \"k\"\n\n[features]\ndefault = []\n\
                        # Build the tests.\nktest = []\n# Two\n# lines.\nfancy = [\"dep/x\"]\n\n\
                        [dependencies]\nlog = \"0.4\"\n";
        assert_eq!(
            parse_features(manifest),
            vec![
                Feature {
                    name: "ktest".into(),
                    description: "Build the tests.".into()
                },
                Feature {
                    name: "fancy".into(),
                    description: "Two lines.".into()
                },
            ]
        );
    }

    #[test]
    fn the_kernel_manifest_has_the_ktest_feature() {
        assert!(
            kernel_features()
                .iter()
                .any(|feature| feature.name == "ktest")
        );
    }
}
