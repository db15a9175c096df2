//! `cargo xtask bench blk`: block reads in a Keel guest beside a Linux guest, in the
//! same QEMU with the same machine (`-M q35 -accel tcg -cpu max -smp 2 -m 256M`) and
//! the same disk options (one 256 MiB raw image, virtio-blk-pci), in the same run.
//!
//! Keel runs `app=blkbench` (kernel-bin/src/blkbench.rs, release build); Linux runs
//! `tools/linux-guest/blkbench.c` on Debian's kernel ([`crate::linux_guest`]), which
//! issues the very same requests (the same sequential sweeps, the same xorshift64*
//! random offsets from the same seeds, 16 pinned threads for queue depth 16). The two
//! guests take turns, `ROUNDS` times each (one with `--quick`), and the table gives each
//! side's median MB/s and IOPS and the ratio Keel/Linux (above 1: Keel is faster).
//! Times are guest times under TCG (emulated): compare them only with each other.

use crate::kernel::{self, BuildOptions};
use crate::linux_guest;
use crate::qemu::{self, Disk, Machine, QemuOptions};
use crate::workspace_root;
use std::collections::BTreeMap;
use std::time::Duration;

/// Rounds per guest.
const ROUNDS: usize = 3;
const SMP: u32 = 2;
const MEMORY_MIB: u64 = 256;
const DISK_MIB: u64 = 256;
/// The workloads both guests run, in order.
const WORKLOADS: [&str; 4] = [
    "seq-read-4k",
    "seq-read-64k",
    "rand-read-4k-qd1",
    "rand-read-4k-qd16",
];

/// The `(workload, MB/s, IOPS)` of Keel's `blkbench:` lines.
fn parse_keel(output: &str) -> Vec<(String, f64, f64)> {
    output
        .lines()
        .filter_map(|line| {
            let rest = line.trim().strip_prefix("blkbench: workload=")?;
            let field = |name: &str| -> Option<f64> {
                rest.split_whitespace()
                    .find_map(|word| word.strip_prefix(name)?.strip_prefix('='))?
                    .parse()
                    .ok()
            };
            let workload = rest.split_whitespace().next()?.to_string();
            Some((workload, field("mb_per_s")?, field("iops")?))
        })
        .collect()
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Runs the comparison and prints the table.
pub fn run(quick: bool) -> Result<(), String> {
    let rounds = if quick { 1 } else { ROUNDS };
    qemu::ensure_qemu()?;
    let keel = kernel::build(&BuildOptions {
        release: true,
        features: Vec::new(),
    })?;
    let linux = linux_guest::prepare()?;
    let image = workspace_root().join("target/bench-disks/blk-256M.img");
    if let Some(directory) = image.parent() {
        std::fs::create_dir_all(directory)
            .map_err(|error| format!("cannot create {}: {error}", directory.display()))?;
    }
    linux_guest::create_disk_image(&image, DISK_MIB)?;
    let disks = vec![Disk {
        path: image,
        read_only: false,
        queue_size: None,
    }];
    let device_arguments = qemu::disk_arguments(Machine::Q35, &disks);
    let keel_options = QemuOptions {
        machine: Machine::Q35,
        smp: SMP,
        memory: format!("{MEMORY_MIB}M"),
        append: vec!["app=blkbench".into()],
        disks,
        ..QemuOptions::default()
    };
    eprintln!(
        "xtask: Keel: {:?}",
        qemu::command(&keel, &keel_options)
            .get_args()
            .collect::<Vec<_>>()
    );
    eprintln!("xtask: both guests get the disk as {device_arguments:?}");
    let mut keel_results: BTreeMap<String, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    let mut linux_results: BTreeMap<String, (Vec<f64>, Vec<f64>)> = BTreeMap::new();
    for round in 1..=rounds {
        eprintln!("xtask: round {round}/{rounds}: Keel");
        let outcome =
            qemu::boot_captured(&keel, &keel_options, Duration::from_secs(600), Some("  | "))?;
        let parsed = parse_keel(&outcome.output);
        if outcome.status != Some(qemu::GUEST_SUCCESS_STATUS) || parsed.len() != WORKLOADS.len() {
            return Err(format!(
                "the Keel guest failed (status {:?}, {} results)",
                outcome.status,
                parsed.len()
            ));
        }
        for (workload, mb_per_s, iops) in parsed {
            let entry = keel_results.entry(workload).or_default();
            entry.0.push(mb_per_s);
            entry.1.push(iops);
        }
        eprintln!("xtask: round {round}/{rounds}: Linux");
        for result in linux_guest::run_blk_bench(&linux, SMP, MEMORY_MIB, &device_arguments)? {
            let entry = linux_results.entry(result.workload).or_default();
            entry.0.push(result.mb_per_s);
            entry.1.push(result.iops);
        }
    }
    println!(
        "blk ({rounds} rounds each, medians, guest time under TCG, -smp {SMP} -m {MEMORY_MIB}M, \
         {DISK_MIB} MiB virtio-blk-pci)"
    );
    println!(
        "{:<22} {:>10} {:>9} {:>10} {:>9} {:>12}",
        "workload", "Keel MB/s", "Keel IOPS", "Linux MB/s", "Linux IOPS", "Keel/Linux"
    );
    let names = WORKLOADS
        .iter()
        .map(|name| name.to_string())
        .chain(
            linux_results
                .keys()
                .filter(|name| !WORKLOADS.contains(&name.as_str()))
                .cloned(),
        )
        .collect::<Vec<_>>();
    for name in names {
        let keel = keel_results.get_mut(&name);
        let linux = linux_results.get_mut(&name);
        let (keel_mb, keel_iops) = keel.map_or((f64::NAN, f64::NAN), |(mb, iops)| {
            (median(mb), median(iops))
        });
        let (linux_mb, linux_iops) = linux.map_or((f64::NAN, f64::NAN), |(mb, iops)| {
            (median(mb), median(iops))
        });
        println!(
            "{name:<22} {keel_mb:>10.1} {keel_iops:>9.0} {linux_mb:>10.1} {linux_iops:>9.0} {:>11.2}x",
            keel_iops / linux_iops
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_keels_result_lines() {
        let output = "blkbench: vda at pci 00:01.0, 256 MiB\n\
            blkbench: workload=seq-read-4k requests=65536 bytes=268435456 nanos=7439382277 \
            mb_per_s=36.08 iops=8809 interrupts_per_request=1.000\n";
        assert_eq!(
            parse_keel(output),
            [("seq-read-4k".to_string(), 36.08, 8809.0)]
        );
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), 2.5);
    }
}
