//! Bad input: Debian's libz with one field broken at a time gives the matching error
//! (never a panic, and nothing stays mapped), and a property test mutates bytes of the
//! loader-relevant parts of libz and checks "error or success, never a panic", and a
//! fixed sequence of mutations checks that they reach every stage (about 40% link all
//! the way). These loads never run the objects' code ([`LinkerOptions::run_code`] is
//! off).

use std::vec::Vec;

use proptest::prelude::*;

use crate::host::{FileSystem, HostLibraries, HostMemory};
use crate::{LinkError, Linker, LinkerOptions, ObjectError, ObjectFile};

const LIBZ: &str = "/usr/lib/x86_64-linux-gnu/libz.so.1";

fn libz() -> Vec<u8> {
    std::fs::read(LIBZ).expect("Debian's libz (package zlib1g)")
}

fn read_u64(bytes: &[u8], offset: usize) -> u64 {
    u64::from_le_bytes(bytes[offset..offset + 8].try_into().expect("8 bytes"))
}

fn write_u64(bytes: &mut [u8], offset: usize, value: u64) {
    bytes[offset..offset + 8].copy_from_slice(&value.to_le_bytes());
}

/// The file offset of the program header of the `index`-th `PT_LOAD`.
fn load_header(bytes: &[u8], index: usize) -> usize {
    let table = read_u64(bytes, 0x20) as usize;
    let count = u16::from_le_bytes([bytes[0x38], bytes[0x39]]) as usize;
    (0..count)
        .map(|entry| table + entry * 56)
        .filter(|&header| u32::from_le_bytes(bytes[header..header + 4].try_into().expect("4")) == 1)
        .nth(index)
        .expect("such a PT_LOAD")
}

/// The file offset of the program header of type `kind`.
fn program_header_of_type(bytes: &[u8], kind: u32) -> usize {
    let table = read_u64(bytes, 0x20) as usize;
    let count = u16::from_le_bytes([bytes[0x38], bytes[0x39]]) as usize;
    (0..count)
        .map(|entry| table + entry * 56)
        .find(|&header| {
            u32::from_le_bytes(bytes[header..header + 4].try_into().expect("4")) == kind
        })
        .expect("such a program header")
}

/// The file offset of a link-time address (through the `PT_LOAD`s).
fn file_offset(bytes: &[u8], address: u64) -> usize {
    for index in 0..4 {
        let header = load_header(bytes, index);
        let (offset, vaddr, filesz) = (
            read_u64(bytes, header + 8),
            read_u64(bytes, header + 16),
            read_u64(bytes, header + 32),
        );
        if address >= vaddr && address < vaddr + filesz {
            return (address - vaddr + offset) as usize;
        }
    }
    panic!("{address:#x} not in the file");
}

/// The file offset of the value of the first dynamic entry with `tag`.
fn dynamic_value(bytes: &[u8], tag: u64) -> usize {
    let dynamic = read_u64(bytes, program_header_of_type(bytes, 2) + 8) as usize;
    (0..)
        .map(|entry| dynamic + entry * 16)
        .find(|&entry| read_u64(bytes, entry) == tag || read_u64(bytes, entry) == 0)
        .filter(|&entry| read_u64(bytes, entry) == tag)
        .expect("such a dynamic entry")
        + 8
}

/// The file offset of the first entry of the `RELA` table at dynamic tag `tag`.
fn first_relocation(bytes: &[u8], tag: u64) -> usize {
    file_offset(bytes, read_u64(bytes, dynamic_value(bytes, tag)))
}

fn parse_error(bytes: &[u8]) -> ObjectError {
    ObjectFile::parse(bytes).expect_err("the object is refused")
}

type UntrustedLinker = Linker<HostMemory, HostLibraries, FileSystem>;

fn linker_that_runs_nothing() -> UntrustedLinker {
    let options = LinkerOptions {
        run_code: false,
        ..LinkerOptions::default()
    };
    Linker::new(
        HostMemory::new(),
        HostLibraries::glibc().expect("host glibc"),
        FileSystem,
        options,
    )
}

/// Loads `bytes` without running any of its code; on error checks nothing stays mapped.
fn load_untrusted(bytes: &[u8]) -> Result<(), LinkError> {
    let mut linker = linker_that_runs_nothing();
    // SAFETY: `run_code` is off, so no code of the object runs; the linker only maps
    // and relocates, each write checked against the segments.
    let result = unsafe { linker.load_bytes("libz.so.1", bytes) }.map(|_| ());
    if result.is_err() {
        assert!(
            linker.memory().reservations().is_empty(),
            "a failed load left mappings"
        );
        assert_eq!(linker.objects().count(), 0);
    }
    result
}

fn object_error(result: Result<(), LinkError>) -> ObjectError {
    match result {
        Err(LinkError::Object { error, .. }) => error,
        other => panic!("expected an object error, got {other:?}"),
    }
}

#[test]
fn the_unmodified_library_loads_without_running_code() {
    load_untrusted(&libz()).expect("libz links");
}

#[test]
fn truncated_headers_are_refused() {
    let bytes = libz();
    for length in [0, 4, 16, 63, 64, 64 + 56, 0x200, 0x300, 0x1000, 0x2000] {
        assert!(
            ObjectFile::parse(&bytes[..length]).is_err(),
            "{length} bytes parsed"
        );
    }
    // Cut later, only what the loader needs matters: either way, no panic.
    for length in [bytes.len() / 2, bytes.len() - 0x800, bytes.len() - 1] {
        let _ = ObjectFile::parse(&bytes[..length]);
    }
}

#[test]
fn header_refusals() {
    let mut executable = libz();
    executable[0x10] = 2; // ET_EXEC
    assert_eq!(
        parse_error(&executable),
        ObjectError::ExecutableNotPositionIndependent
    );
    let mut arm = libz();
    arm[0x12] = 0xb7; // EM_AARCH64
    assert_eq!(
        parse_error(&arm),
        ObjectError::WrongMachine { machine: 0xb7 }
    );
    let mut thirty_two = libz();
    thirty_two[4] = 1; // ELFCLASS32
    assert!(ObjectFile::parse(&thirty_two).is_err());
}

#[test]
fn segment_refusals() {
    let original = libz();

    let mut overlapping = original.clone();
    let second = load_header(&overlapping, 1);
    write_u64(&mut overlapping, second + 16, 0);
    assert_eq!(
        parse_error(&overlapping),
        ObjectError::SegmentsOverlap { index: 1 }
    );

    let mut wrapping = original.clone();
    let last = load_header(&wrapping, 3);
    write_u64(&mut wrapping, last + 16, u64::MAX - 0xfff);
    assert_eq!(
        parse_error(&wrapping),
        ObjectError::SegmentAddressOverflow { index: 3 }
    );

    let mut short_memory = original.clone();
    let text = load_header(&short_memory, 1);
    let file_size = read_u64(&short_memory, text + 32);
    write_u64(&mut short_memory, text + 40, file_size - 1);
    assert_eq!(
        parse_error(&short_memory),
        ObjectError::SegmentMemorySizeBelowFileSize { index: 1 }
    );

    let mut huge = original.clone();
    let data = load_header(&huge, 3);
    write_u64(&mut huge, data + 40, 1 << 40);
    assert_eq!(
        parse_error(&huge),
        ObjectError::ImageTooLarge { span: 1 << 40 }
    );

    let mut writable_code = original.clone();
    let text = load_header(&writable_code, 1);
    writable_code[text + 4] = 7; // PF_R | PF_W | PF_X
    assert_eq!(
        parse_error(&writable_code),
        ObjectError::WritableAndExecutableSegment { index: 1 }
    );

    let mut outside = original.clone();
    let text = load_header(&outside, 1);
    write_u64(&mut outside, text + 8, original.len() as u64);
    assert_eq!(
        parse_error(&outside),
        ObjectError::SegmentOutsideFile { index: 1 }
    );

    let mut executable_stack = original.clone();
    let stack = program_header_of_type(&executable_stack, 0x6474_e551);
    executable_stack[stack + 4] = 7;
    assert_eq!(
        parse_error(&executable_stack),
        ObjectError::ExecutableStackRequested
    );
}

#[test]
fn relocation_offsets_outside_every_writable_segment_are_refused() {
    const DT_RELA: u64 = 7;
    for offset in [0x10_0000u64, 0x3000, u64::MAX - 3] {
        let mut bytes = libz();
        let relocation = first_relocation(&bytes, DT_RELA);
        write_u64(&mut bytes, relocation, offset);
        assert_eq!(
            object_error(load_untrusted(&bytes)),
            ObjectError::RelocationOutsideWritableSegment { offset },
            "r_offset {offset:#x}"
        );
    }
}

#[test]
fn relocation_fields_are_checked() {
    const DT_JMPREL: u64 = 23;
    let mut past_the_table = libz();
    let relocation = first_relocation(&past_the_table, DT_JMPREL);
    write_u64(&mut past_the_table, relocation + 8, (0xffff << 32) | 7);
    assert_eq!(
        parse_error(&past_the_table),
        ObjectError::SymbolIndexOutOfRange { index: 0xffff }
    );

    let mut unknown_type = libz();
    let relocation = first_relocation(&unknown_type, DT_JMPREL);
    let symbol = read_u64(&unknown_type, relocation + 8) >> 32;
    write_u64(&mut unknown_type, relocation + 8, (symbol << 32) | 0x99);
    assert!(matches!(
        parse_error(&unknown_type),
        ObjectError::UnsupportedRelocation {
            relocation_type: 0x99,
            ..
        }
    ));

    let mut thread_local = libz();
    let relocation = first_relocation(&thread_local, DT_JMPREL);
    write_u64(&mut thread_local, relocation + 8, (symbol << 32) | 18); // TPOFF64
    assert_eq!(
        object_error(load_untrusted(&thread_local)),
        ObjectError::ThreadLocalStorageUnsupported
    );
}

#[test]
fn bad_string_offsets_and_tables_are_refused() {
    const DT_NEEDED: u64 = 1;
    const DT_STRSZ: u64 = 10;
    const DT_GNU_HASH: u64 = 0x6fff_fef5;
    let mut needed = libz();
    let value = dynamic_value(&needed, DT_NEEDED);
    write_u64(&mut needed, value, 0xffff_ffff);
    assert_eq!(
        parse_error(&needed),
        ObjectError::BadStringOffset {
            offset: 0xffff_ffff
        }
    );

    let mut short_strings = libz();
    let value = dynamic_value(&short_strings, DT_STRSZ);
    write_u64(&mut short_strings, value, 1 << 40);
    assert_eq!(
        parse_error(&short_strings),
        ObjectError::TableOutsideFile(crate::Table::Strings)
    );

    let mut bloom = libz();
    let table = file_offset(&bloom, read_u64(&bloom, dynamic_value(&bloom, DT_GNU_HASH)));
    bloom[table + 12] = 40; // bloom_shift
    assert_eq!(parse_error(&bloom), ObjectError::MalformedHashTable);
}

/// The file ranges the loader reads: headers and dynamic tables (the first `PT_LOAD`)
/// and the data segment (GOT, dynamic array).
fn loader_relevant_offset(bytes: &[u8], choice: usize) -> usize {
    let first = load_header(bytes, 0);
    let first_size = read_u64(bytes, first + 32) as usize;
    let data = load_header(bytes, 3);
    let (data_offset, data_size) = (
        read_u64(bytes, data + 8) as usize,
        read_u64(bytes, data + 32) as usize,
    );
    let total = first_size + data_size;
    let position = choice % total;
    if position < first_size {
        position
    } else {
        data_offset + position - first_size
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_libz_is_an_error_or_a_success_never_a_panic(
        mutations in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)
    ) {
        let original = libz();
        let mut bytes = original.clone();
        for (choice, value) in mutations {
            // Offsets from the unmodified file: a mutated header moves nothing.
            bytes[loader_relevant_offset(&original, choice)] = value;
        }
        let _ = load_untrusted(&bytes);
    }
}

#[test]
fn image_writes_stay_inside_their_segment() {
    use crate::image::Image;
    use crate::{LoadSegment, Memory, PAGE_SIZE, PageRange, Protection};

    let mut memory = HostMemory::new();
    let reservation = memory.reserve(3 * PAGE_SIZE, PAGE_SIZE).expect("reserve");
    let base = reservation.start.as_u64();
    let page = PageRange {
        start: keel_types::VirtAddr::new(base + PAGE_SIZE as u64),
        length: PAGE_SIZE,
    };
    memory.map(page, Protection::ReadWrite).expect("map");
    let segments = [
        LoadSegment {
            virtual_address: 0x1000,
            memory_size: 0x800,
            file_offset: 0,
            file_size: 0,
            protection: Protection::ReadWrite,
        },
        // Mapped, but read-only in the final image: never written by a relocation.
        LoadSegment {
            virtual_address: 0x1800,
            memory_size: 0x800,
            file_offset: 0,
            file_size: 0,
            protection: Protection::Read,
        },
    ];
    // SAFETY: both segments lie in the page mapped read-write just above, which this
    // test owns.
    let image = unsafe { Image::new(base, &segments) };
    assert_eq!(image.write_u64(0x17f8, u64::MAX), Ok(()));
    assert_eq!(image.write_u32(0x1000, u32::MAX), Ok(()));
    for offset in [
        0x17f9,
        0x17fc,
        0x1800,
        0xff8,
        0xfff,
        0,
        0x3000,
        u64::MAX - 3,
        u64::MAX,
    ] {
        assert_eq!(
            image.write_u64(offset, u64::MAX),
            Err(ObjectError::RelocationOutsideWritableSegment { offset }),
            "{offset:#x}"
        );
    }
    assert_eq!(
        image.read_u64(0x1ff8),
        Ok(0),
        "the read-only half is untouched"
    );
    assert_eq!(image.read_u64(0x17f8), Ok(u64::MAX));
    assert!(image.read_u64(0x1ff9).is_err());
    // SAFETY: the page is mapped and readable; no image writes are pending.
    let whole_page =
        unsafe { core::slice::from_raw_parts(page.start.as_u64() as *const u8, PAGE_SIZE) };
    let written: usize = whole_page.iter().filter(|&&byte| byte != 0).count();
    assert_eq!(
        written,
        8 + 4,
        "exactly the two accepted writes changed memory"
    );
    memory.release(reservation);
}

/// The error variant's name (or "linked") of a load's outcome.
fn outcome_name(result: &Result<(), LinkError>) -> std::string::String {
    let text = match result {
        Ok(()) => return "linked".into(),
        Err(LinkError::Object { error, .. }) => std::format!("{error:?}"),
        Err(other) => std::format!("{other:?}"),
    };
    text.split(['(', ' ', '{'])
        .next()
        .unwrap_or_default()
        .into()
}

/// A fixed sequence of 3000 mutations of 1 to 3 bytes (a linear congruential
/// generator, so the outcome counts are the same on every run): no panic, and the
/// mutated objects reach every stage, many all the way through mapping and relocation.
#[test]
fn deterministic_mutations_reach_every_stage() {
    let original = libz();
    let mut state = 0x1234_5678_9abc_def0u64;
    let mut next = || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) as usize
    };
    let mut outcomes = std::collections::BTreeMap::new();
    for _ in 0..3000 {
        let mut bytes = original.clone();
        for _ in 0..(1 + next() % 3) {
            let offset = loader_relevant_offset(&original, next());
            bytes[offset] = next() as u8;
        }
        *outcomes
            .entry(outcome_name(&load_untrusted(&bytes)))
            .or_insert(0usize) += 1;
    }
    let count = |name: &str| outcomes.get(name).copied().unwrap_or(0);
    assert!(count("linked") >= 600, "{outcomes:#?}");
    for stage in [
        "SegmentsOverlap",
        "BadStringOffset",
        "MalformedHashTable",
        "MalformedVersionTable",
        "SymbolIndexOutOfRange",
        "UnsupportedRelocation",
        "MissingSymbols",
        "RelocationOutsideWritableSegment",
    ] {
        assert!(
            count(stage) > 0,
            "no mutation reached {stage}: {outcomes:#?}"
        );
    }
    assert!(outcomes.len() >= 20, "{outcomes:#?}");
}

#[test]
fn an_initializer_outside_the_code_fails_the_load_before_anything_runs() {
    const DT_RELA: u64 = 7;
    const DT_RELASZ: u64 = 8;
    const DT_INIT_ARRAY: u64 = 25;
    let mut bytes = libz();
    let init_array = read_u64(&bytes, dynamic_value(&bytes, DT_INIT_ARRAY));
    let table = first_relocation(&bytes, DT_RELA);
    let count = read_u64(&bytes, dynamic_value(&bytes, DT_RELASZ)) as usize / 24;
    let entry = (0..count)
        .map(|index| table + index * 24)
        .find(|&entry| read_u64(&bytes, entry) == init_array)
        .expect("the RELATIVE relocation of DT_INIT_ARRAY[0]");
    // Point the constructor at the init array itself: data, not code.
    write_u64(&mut bytes, entry + 16, init_array);
    let mut linker = super::real_libraries::host_linker();
    // SAFETY: the load fails while planning the initializers, before any code runs
    // (libz has no ifunc resolvers).
    let result = unsafe { linker.load_bytes("libz.so.1", &bytes) };
    assert_eq!(
        result,
        Err(LinkError::Object {
            name: "libz.so.1".into(),
            error: ObjectError::BadFunctionArray
        })
    );
    assert_eq!(linker.objects().count(), 0);
    assert!(linker.memory().reservations().is_empty());
}

/// Every ELF shared object installed in `/usr/lib/x86_64-linux-gnu` (with its
/// dependencies from the filesystem and the host's dynamic TLS, no code run): each
/// links, or fails for a reason the linker states as not done yet or as the object's
/// own (static TLS or `TLSDESC`, an ifunc that would have to run, a missing symbol, a
/// library not installed), never as malformed. Ignored by default: it depends on what the host has installed and reads
/// every library (seconds). Run: `cargo test -p keel-elf -- --ignored --nocapture
/// installed_libraries`.
#[test]
#[ignore]
fn installed_libraries_link_or_fail_for_a_stated_reason() {
    let mut outcomes: std::collections::BTreeMap<std::string::String, usize> = Default::default();
    let mut unexpected = Vec::new();
    for entry in std::fs::read_dir("/usr/lib/x86_64-linux-gnu")
        .expect("library directory")
        .flatten()
    {
        let path = entry.path();
        let name = path
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default();
        let Some(path_text) = path.to_str() else {
            continue;
        };
        if !name.contains(".so") || !path.is_file() {
            continue;
        }
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        if !bytes.starts_with(b"\x7fELF") {
            continue;
        }
        let exports = crate::ProviderChain {
            first: crate::host::HostThreadLocalStorage::exports(),
            second: HostLibraries::glibc().expect("host glibc"),
        };
        let options = LinkerOptions {
            run_code: false,
            ..LinkerOptions::default()
        };
        let mut linker = Linker::with_thread_local_storage(
            HostMemory::new(),
            exports,
            FileSystem,
            crate::host::HostThreadLocalStorage::new(),
            options,
        );
        // SAFETY: `run_code` is off: nothing of the libraries runs.
        let result = unsafe { linker.load(path_text) }.map(|_| ());
        let expected = match &result {
            Ok(()) => true,
            Err(LinkError::Object { error, .. }) => matches!(
                error,
                ObjectError::ThreadLocalStorageUnsupported
                    | ObjectError::CodeExecutionRefused
                    | ObjectError::UnsupportedRelocation {
                        relocation_type: 36,
                        ..
                    } // TLSDESC
            ),
            Err(LinkError::MissingSymbols(_) | LinkError::LibraryNotFound { .. }) => true,
            Err(LinkError::Memory { .. }) => false,
        };
        if !expected {
            unexpected.push((name, result.clone()));
        }
        *outcomes.entry(outcome_name(&result)).or_default() += 1;
    }
    std::println!("{outcomes:#?}");
    assert!(unexpected.is_empty(), "{unexpected:#?}");
}
