//! Reading the guest's `keel-blk-result` lines.

use super::{BlkResult, EXTRA_WORKLOADS, WORKLOADS};

/// The results in the console output: one line per workload,
/// `keel-blk-result workload=NAME ops=N bytes=N ns=N`. All of [`WORKLOADS`] must be
/// present and come first, in that order; then those of [`EXTRA_WORKLOADS`] the guest ran.
pub fn parse_results(console: &str) -> Result<Vec<BlkResult>, String> {
    if let Some(error) = console
        .lines()
        .find(|line| line.starts_with("keel-blk-error"))
    {
        return Err(format!("the guest reported: {error}"));
    }
    let mut results = Vec::new();
    for line in console.lines() {
        let Some(fields) = line.trim().strip_prefix("keel-blk-result ") else {
            continue;
        };
        let field = |key: &str| -> Result<&str, String> {
            fields
                .split_whitespace()
                .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
                .ok_or(format!("no {key}= in {line:?}"))
        };
        let number = |key: &str| -> Result<f64, String> {
            let text = field(key)?;
            text.parse::<u64>()
                .map(|value| value as f64)
                .map_err(|_| format!("{key}={text} is not a count in {line:?}"))
        };
        let workload = field("workload")?.to_string();
        let (ops, bytes, nanos) = (number("ops")?, number("bytes")?, number("ns")?);
        if nanos <= 0.0 || ops <= 0.0 {
            return Err(format!("no time or no requests in {line:?}"));
        }
        results.push(BlkResult {
            workload,
            mb_per_s: bytes * 1e3 / nanos,
            iops: ops * 1e9 / nanos,
        });
    }
    let mut ordered = Vec::new();
    for workload in WORKLOADS {
        let found = results
            .iter()
            .find(|result| result.workload == workload)
            .ok_or(format!("the guest printed no result for {workload}"))?;
        ordered.push(found.clone());
    }
    ordered.extend(
        EXTRA_WORKLOADS
            .iter()
            .filter_map(|workload| results.iter().find(|result| result.workload == *workload))
            .cloned(),
    );
    Ok(ordered)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_results_in_workload_order() {
        let console = "noise\n\
            keel-blk-device path=/dev/vda bytes=268435456 random_reads=8192 seed=0x5eed\n\
            keel-blk-result workload=seq-read-64k ops=4096 bytes=268435456 ns=2000000000\n\
            keel-blk-result workload=seq-read-4k ops=65536 bytes=268435456 ns=4000000000\r\n\
            keel-blk-result workload=rand-read-4k-qd1 ops=1000 bytes=4096000 ns=1000000000\n\
            keel-blk-result workload=rand-read-4k-qd16 ops=2000 bytes=8192000 ns=500000000\n\
            keel-blk-result workload=rand-read-4k-qd16-aio ops=3000 bytes=12288000 ns=500000000\n\
            keel-blk-done\n";
        let results = parse_results(console).unwrap();
        let names: Vec<&str> = results.iter().map(|r| r.workload.as_str()).collect();
        assert_eq!(names[..4], WORKLOADS);
        assert_eq!(names[4..], EXTRA_WORKLOADS);
        assert!((results[4].iops - 6000.0).abs() < 1e-9);
        assert!((results[0].mb_per_s - 67.108864).abs() < 1e-9);
        assert!((results[0].iops - 16384.0).abs() < 1e-9);
        assert!((results[3].iops - 4000.0).abs() < 1e-9);
        assert!((results[3].mb_per_s - 16.384).abs() < 1e-9);
    }

    #[test]
    fn missing_or_failed_workloads_are_errors() {
        let partial = "keel-blk-result workload=seq-read-4k ops=1 bytes=4096 ns=10\n";
        assert!(parse_results(partial).unwrap_err().contains("seq-read-64k"));
        let failed = "keel-blk-error workload=seq-read-4k pread: Input/output error\n";
        assert!(parse_results(failed).unwrap_err().contains("pread"));
        let garbled = "keel-blk-result workload=seq-read-4k ops=x bytes=4096 ns=10\n";
        assert!(parse_results(garbled).unwrap_err().contains("ops=x"));
    }
}
