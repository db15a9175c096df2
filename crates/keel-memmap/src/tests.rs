//! Unit tests on hand-made maps and property tests against a byte-set model.

use crate::*;
use keel_types::PhysAddr;
use proptest::prelude::*;
use std::vec::Vec;

fn pieces(range: PhysRange, holes: &[PhysRange]) -> Vec<PhysRange> {
    let mut out = Vec::new();
    subtract(range, holes, &mut |piece| out.push(piece));
    out
}

fn range(start: u64, end: u64) -> PhysRange {
    PhysRange::new(PhysAddr::new(start), PhysAddr::new(end))
}

const NO_DEMAND: BootDemand = BootDemand {
    cpus: 1,
    main_stack_bytes: 0,
    ap_stack_bytes: 0,
    ap_ist_stacks: 0,
    ap_ist_bytes: 0,
    page_cache_refill_pages: 0,
    heap_pages: 0,
};

/// 16 bytes of metadata per page, like keel-pagealloc's.
fn sixteen_per_page(pages: u64) -> u64 {
    pages * 16
}

#[test]
fn subtract_without_holes_is_the_range() {
    assert_eq!(pieces(range(10, 20), &[]), [range(10, 20)]);
    assert_eq!(pieces(range(10, 10), &[]), []);
    assert_eq!(pieces(range(20, 10), &[]), []);
}

#[test]
fn subtract_cuts_inner_edge_and_overlapping_holes() {
    // A hole in the middle, one over the start, one past the end.
    assert_eq!(
        pieces(
            range(10, 100),
            &[range(40, 50), range(0, 15), range(90, 200)]
        ),
        [range(15, 40), range(50, 90)]
    );
    // Overlapping and nested holes, given out of order.
    assert_eq!(
        pieces(
            range(0, 100),
            &[range(30, 60), range(20, 40), range(35, 36)]
        ),
        [range(0, 20), range(60, 100)]
    );
    // Adjacent holes leave no empty piece between them.
    assert_eq!(
        pieces(range(0, 30), &[range(10, 20), range(20, 25)]),
        [range(0, 10), range(25, 30)]
    );
    // An empty hole splits nothing; a covering hole leaves nothing.
    assert_eq!(pieces(range(0, 30), &[range(12, 12)]), [range(0, 30)]);
    assert_eq!(pieces(range(5, 30), &[range(0, 30)]), []);
}

#[test]
fn whole_and_covering_pages() {
    assert_eq!(range(1, 8193).whole_pages(), range(4096, 8192));
    assert!(range(1, 4097).whole_pages().is_empty());
    assert_eq!(range(1, 4097).covering_pages(), range(0, 8192));
    assert_eq!(range(4096, 8192).covering_pages(), range(4096, 8192));
    assert!(range(u64::MAX - 10, u64::MAX).whole_pages().is_empty());
    assert_eq!(
        range(u64::MAX - 10, u64::MAX).covering_pages().end.as_u64(),
        !(PAGE_SIZE - 1)
    );
}

#[test]
fn buddy_blocks_and_guarded_stacks() {
    assert_eq!(guarded_stack_pages(64 * 1024), 17);
    assert_eq!(guarded_stack_pages(32 * 1024), 9);
    assert_eq!(guarded_stack_pages(1), 2);
    assert_eq!(buddy_block_pages(17), 32);
    assert_eq!(buddy_block_pages(16), 16);
    assert_eq!(buddy_block_pages(9), 16);
    assert_eq!(buddy_block_pages(1), 1);
    assert_eq!(buddy_block_pages(0), 0);
}

/// The kernel's configuration at the time of writing (kernel-bin's memory module).
fn kernel_demand(cpus: u64) -> BootDemand {
    BootDemand {
        cpus,
        main_stack_bytes: 64 * 1024,
        ap_stack_bytes: 64 * 1024,
        ap_ist_stacks: 5,
        ap_ist_bytes: 32 * 1024,
        page_cache_refill_pages: 32,
        heap_pages: 16,
    }
}

#[test]
fn boot_demand_counts_each_cpu() {
    // One CPU: main stack block (32 pages), one cache refill (32), heap (16).
    assert_eq!(kernel_demand(1).pages(), 32 + 32 + 16);
    // Each AP adds its stack block (32), five IST blocks (5 x 16) and a refill (32).
    assert_eq!(kernel_demand(2).pages(), 80 + 32 + 80 + 32);
    assert_eq!(kernel_demand(4).pages() - kernel_demand(3).pages(), 144);
    assert_eq!(kernel_demand(1).bytes(), 80 * PAGE_SIZE);
    // Zero CPUs is treated as the boot CPU alone.
    assert_eq!(kernel_demand(0).pages(), kernel_demand(1).pages());
}

/// A map shaped like QEMU q35's with `size` bytes of RAM: RAM below 640 KiB, and from
/// 1 MiB to `size` minus 128 KiB at the top (firmware tables).
fn q35_like(size: u64) -> Vec<PhysRange> {
    std::vec![range(0, 0x9_fc00), range(0x10_0000, size - 0x2_0000)]
}

/// Low memory, a kernel image at 1 MiB and its 2 MiB page-table region.
fn reserved_like(image_end: u64) -> [PhysRange; 3] {
    [
        range(0, 0x10_0000),
        range(0x10_0000, image_end),
        range(
            image_end.next_multiple_of(PAGE_SIZE),
            image_end.next_multiple_of(PAGE_SIZE) + 0x20_0000,
        ),
    ]
}

#[test]
fn plan_reports_not_enough_memory_with_both_numbers() {
    let ram = q35_like(6 << 20);
    let reserved = reserved_like(0x3a_4000);
    let error = plan(&ram, &reserved, sixteen_per_page, &kernel_demand(1)).unwrap_err();
    // Usable: from 0x5a4000 to 6 MiB - 128 KiB = 0x5e0000, i.e. 240 KiB.
    let metadata = (0x5e0u64 * 16).next_multiple_of(PAGE_SIZE);
    assert_eq!(
        error,
        PlanError::NotEnoughMemory {
            usable_bytes: 240 * 1024,
            needed_bytes: metadata + 80 * PAGE_SIZE,
        }
    );
    assert_eq!(
        std::format!("{error}"),
        "not enough memory: 240 KiB usable, 344 KiB needed"
    );
}

#[test]
fn plan_places_metadata_after_the_reservations() {
    let ram = q35_like(64 << 20);
    let reserved = reserved_like(0x3a_4123);
    let plan = plan(&ram, &reserved, sixteen_per_page, &kernel_demand(2)).unwrap();
    assert_eq!(plan.span_pages, ((64 << 20) - 0x2_0000) / PAGE_SIZE);
    // The low region lies inside the reserved first megabyte; the first free page is
    // after the table region of the (page-rounded) image end.
    assert_eq!(plan.metadata.start.as_u64(), 0x3a_5000 + 0x20_0000);
    assert_eq!(
        plan.metadata.len(),
        (plan.span_pages * 16).next_multiple_of(PAGE_SIZE)
    );
    let mut free = Vec::new();
    plan.for_each_free_range(&ram, &reserved, &mut |piece| free.push(piece));
    assert_eq!(
        free,
        [range(plan.metadata.end.as_u64(), (64 << 20) - 0x2_0000)]
    );
    assert_eq!(plan.free_bytes(), free[0].len());
}

#[test]
fn plan_without_ram_or_room() {
    // No RAM at all: nothing usable, and at least one page is always needed.
    assert_eq!(
        plan(&[], &[], sixteen_per_page, &NO_DEMAND),
        Err(PlanError::NotEnoughMemory {
            usable_bytes: 0,
            needed_bytes: PAGE_SIZE,
        })
    );
    // Plenty of RAM in total, but only in gaps of one page between reservations: the
    // metadata (two pages) fits nowhere.
    let ram = [range(0, 64 * PAGE_SIZE)];
    let reserved: Vec<PhysRange> = (0..32)
        .map(|index| {
            range(
                index * 2 * PAGE_SIZE + PAGE_SIZE,
                (index + 1) * 2 * PAGE_SIZE,
            )
        })
        .collect();
    let metadata = |_pages: u64| 2 * PAGE_SIZE;
    assert_eq!(
        plan(&ram, &reserved, metadata, &NO_DEMAND),
        Err(PlanError::NoRoomForMetadata(2 * PAGE_SIZE))
    );
}

// ---- property tests -------------------------------------------------------------

/// Small addresses, so that a set of bytes models the ranges exactly.
const UNIVERSE: u64 = 512;

fn small_range() -> impl Strategy<Value = PhysRange> {
    (0..UNIVERSE, 0..UNIVERSE).prop_map(|(a, b)| range(a, b))
}

fn model_subtract(range: PhysRange, holes: &[PhysRange]) -> Vec<bool> {
    (0..UNIVERSE)
        .map(|address| {
            address >= range.start.as_u64()
                && address < range.end.as_u64()
                && !holes
                    .iter()
                    .any(|hole| address >= hole.start.as_u64() && address < hole.end.as_u64())
        })
        .collect()
}

/// A page-granular map within 320 pages: up to five disjoint RAM regions (region `i`
/// within pages `64 i .. 64 (i + 1)`, in shuffled order, with unaligned edges), and up
/// to five reservations anywhere, overlapping freely.
fn page_map() -> impl Strategy<Value = (Vec<PhysRange>, Vec<PhysRange>)> {
    let slot = (0..32u64, 0..32u64, 0..PAGE_SIZE, 0..PAGE_SIZE);
    let ram = proptest::collection::vec(proptest::option::of(slot), 5)
        .prop_map(|slots| {
            slots
                .into_iter()
                .enumerate()
                .filter_map(|(index, slot)| {
                    let (offset, pages, head, tail) = slot?;
                    let first = index as u64 * 64 + offset;
                    Some(range(
                        first * PAGE_SIZE + head,
                        (first + pages) * PAGE_SIZE + tail,
                    ))
                })
                .collect::<Vec<_>>()
        })
        .prop_shuffle();
    let hole =
        (0..320u64, 0..64u64, 0..PAGE_SIZE, 0..PAGE_SIZE).prop_map(|(page, pages, head, tail)| {
            range(page * PAGE_SIZE + head, (page + pages) * PAGE_SIZE + tail)
        });
    (ram, proptest::collection::vec(hole, 0..5))
}

proptest! {
    #[test]
    fn subtract_matches_the_model(
        range in small_range(),
        holes in proptest::collection::vec(small_range(), 0..6),
    ) {
        let out = pieces(range, &holes);
        let mut covered = std::vec![false; UNIVERSE as usize];
        let mut previous_end = None;
        for piece in &out {
            prop_assert!(!piece.is_empty());
            if let Some(end) = previous_end {
                // Ascending, and never touching: a hole separates two pieces.
                prop_assert!(piece.start > end);
            }
            previous_end = Some(piece.end);
            for address in piece.start.as_u64()..piece.end.as_u64() {
                covered[address as usize] = true;
            }
        }
        prop_assert_eq!(covered, model_subtract(range, &holes));
    }

    #[test]
    fn plan_is_consistent((ram, reserved) in page_map(), heap_pages in 0..64u64) {
        let demand = BootDemand { heap_pages, ..NO_DEMAND };
        let metadata_bytes = |pages: u64| pages * 16;
        // The model: the whole RAM pages outside the page-widened reservations.
        let page_count = 400usize;
        let mut usable = std::vec![false; page_count];
        for region in &ram {
            let pages = region.whole_pages();
            for page in pages.start.as_u64() / PAGE_SIZE..pages.end.as_u64() / PAGE_SIZE {
                usable[page as usize] = true;
            }
        }
        for hole in reserved.iter().filter(|hole| !hole.is_empty()) {
            let pages = hole.covering_pages();
            for page in pages.start.as_u64() / PAGE_SIZE..(pages.end.as_u64() / PAGE_SIZE).min(page_count as u64) {
                usable[page as usize] = false;
            }
        }
        let usable_bytes = usable.iter().filter(|&&page| page).count() as u64 * PAGE_SIZE;
        match plan(&ram, &reserved, metadata_bytes, &demand) {
            Err(PlanError::NotEnoughMemory { usable_bytes: reported, needed_bytes }) => {
                prop_assert_eq!(reported, usable_bytes);
                prop_assert!(needed_bytes > usable_bytes);
                prop_assert!(needed_bytes >= demand.bytes());
            }
            Err(PlanError::NoRoomForMetadata(bytes)) => {
                prop_assert!(bytes > 0);
                prop_assert!(usable_bytes >= bytes + demand.bytes());
            }
            Ok(plan) => {
                prop_assert_eq!(plan.usable_bytes, usable_bytes);
                prop_assert!(plan.usable_bytes >= plan.needed_bytes);
                let metadata = plan.metadata;
                prop_assert_eq!(metadata.start.as_u64() % PAGE_SIZE, 0);
                prop_assert_eq!(metadata.len() % PAGE_SIZE, 0);
                prop_assert!(metadata.len() >= metadata_bytes(plan.span_pages));
                // The metadata lies on usable pages only.
                for page in metadata.start.as_u64() / PAGE_SIZE..metadata.end.as_u64() / PAGE_SIZE {
                    prop_assert!(usable[page as usize]);
                }
                // The free ranges are exactly the usable pages minus the metadata.
                let mut free = std::vec![false; page_count];
                let mut total = 0;
                plan.for_each_free_range(&ram, &reserved, &mut |piece| {
                    total += piece.len();
                    for page in piece.start.as_u64() / PAGE_SIZE..piece.end.as_u64() / PAGE_SIZE {
                        free[page as usize] = true;
                    }
                });
                prop_assert_eq!(total, plan.free_bytes());
                for page in 0..page_count {
                    let in_metadata = (page as u64) >= metadata.start.as_u64() / PAGE_SIZE
                        && (page as u64) < metadata.end.as_u64() / PAGE_SIZE;
                    prop_assert_eq!(free[page], usable[page] && !in_metadata);
                }
            }
        }
    }

    #[test]
    fn demand_grows_with_cpus(cpus in 1..64u64, stack in 0..(1u64 << 20)) {
        let demand = BootDemand {
            cpus,
            main_stack_bytes: stack,
            ap_stack_bytes: stack,
            ap_ist_stacks: 5,
            ap_ist_bytes: stack / 2,
            page_cache_refill_pages: 32,
            heap_pages: 16,
        };
        let more = BootDemand { cpus: cpus + 1, ..demand };
        prop_assert!(more.pages() > demand.pages());
        // Never less than the pages really allocated (before buddy rounding).
        let exact = guarded_stack_pages(stack)
            + (cpus - 1) * (guarded_stack_pages(stack) + 5 * guarded_stack_pages(stack / 2))
            + 32 * cpus
            + 16;
        prop_assert!(demand.pages() >= exact);
    }
}
