//! In-guest cases of the boot information the architecture crate hands over: the PVH
//! memory map, and the CPUs ACPI's MADT lists.

use super::TestResult;
use keel_arch_x86_64::ArchInfo;

fn boot_info_has_memory_map(info: &ArchInfo) -> TestResult {
    let usable = info.boot.usable_memory();
    check!(usable >= 64 << 20, "less than 64 MiB of usable RAM", usable);
    check!(
        info.boot.memory_regions().iter().all(|r| r.size > 0),
        "empty memory-map region kept"
    );
    check!(info.boot.version >= 1, "start info without memory map");
    Ok(())
}
ktest!(boot_info_has_memory_map);

fn acpi_lists_the_cpus(info: &ArchInfo) -> TestResult {
    let platform = info.platform.as_ref();
    check!(platform.is_ok(), "ACPI MADT unreadable", platform.err());
    let Ok(platform) = platform else {
        return Ok(());
    };
    check!(
        platform.apic_ids().contains(&info.apic.id),
        "boot CPU's APIC id not in the MADT",
        info.apic.id,
        platform.apic_ids()
    );
    // The host passes the -smp count it gave QEMU, so the count is checked, not assumed.
    if let Some(expected) = info.boot.command_line_value("ktest.expect_cpus") {
        let expected: Option<usize> = expected.parse().ok();
        check!(
            expected == Some(platform.cpu_count()),
            "MADT CPU count differs from -smp",
            expected,
            platform.cpu_count()
        );
    }
    Ok(())
}
ktest!(acpi_lists_the_cpus);
