//! Every function against a naive byte loop: random sizes up to 64 KiB, random
//! alignments of both pointers, overlapping moves in both directions, and the sign of
//! comparisons.
// The references are deliberately naive byte loops, not the library calls clippy
// suggests (which would call the functions under test's peers, or these very ones).
#![allow(clippy::manual_memcpy, clippy::needless_range_loop)]

use crate::*;
use proptest::prelude::*;
use std::vec::Vec;

/// The largest size tested.
const MAX: usize = 64 * 1024;
/// Slack around the buffers, to see stray writes and to vary alignment.
const SLACK: usize = 64;

/// Sizes: everything up to 300 often (the small paths and their edges), then anything
/// up to 64 KiB.
fn size() -> impl Strategy<Value = usize> {
    prop_oneof![0..=300usize, 0..=MAX]
}

fn pattern(length: usize, seed: u8) -> Vec<u8> {
    (0..length)
        .map(|index| (index as u8).wrapping_mul(31).wrapping_add(seed) ^ (index >> 8) as u8)
        .collect()
}

fn naive_move(buffer: &mut [u8], destination: usize, source: usize, count: usize) {
    let copy: Vec<u8> = buffer[source..source + count].to_vec();
    for (offset, byte) in copy.into_iter().enumerate() {
        buffer[destination + offset] = byte;
    }
}

fn naive_compare(left: &[u8], right: &[u8]) -> i32 {
    for (a, b) in left.iter().zip(right) {
        if a != b {
            return i32::from(*a) - i32::from(*b);
        }
    }
    0
}

#[test]
fn every_small_size_and_alignment() {
    for count in 0..=200 {
        for source_offset in 0..16 {
            for destination_offset in 0..16 {
                let source = pattern(count + 32, count as u8);
                let mut ours = std::vec![0xa5u8; count + 32];
                let mut expected = ours.clone();
                expected[destination_offset..destination_offset + count]
                    .copy_from_slice(&source[source_offset..source_offset + count]);
                // SAFETY: both ranges lie inside their (distinct) buffers.
                unsafe {
                    copy_nonoverlapping(
                        ours.as_mut_ptr().add(destination_offset),
                        source.as_ptr().add(source_offset),
                        count,
                    )
                };
                assert_eq!(
                    ours, expected,
                    "copy {count} +{source_offset} -> +{destination_offset}"
                );
                let mut filled = std::vec![0u8; count + 32];
                fill_slice(
                    &mut filled[destination_offset..destination_offset + count],
                    0x3c,
                );
                for (index, byte) in filled.iter().enumerate() {
                    let inside = index >= destination_offset && index < destination_offset + count;
                    assert_eq!(
                        *byte,
                        if inside { 0x3c } else { 0 },
                        "fill {count} at {index}"
                    );
                }
            }
        }
    }
}

#[test]
fn compare_sign_and_position() {
    let base = pattern(1000, 7);
    for position in 0..1000 {
        let mut higher = base.clone();
        higher[position] = higher[position].wrapping_add(1).max(1);
        if higher[position] <= base[position] {
            continue;
        }
        // SAFETY: both buffers hold 1000 bytes.
        let (forward, backward, bcmp) = unsafe {
            (
                compare(base.as_ptr(), higher.as_ptr(), 1000),
                compare(higher.as_ptr(), base.as_ptr(), 1000),
                differ(base.as_ptr(), higher.as_ptr(), 1000),
            )
        };
        assert!(forward < 0 && backward > 0 && bcmp != 0, "at {position}");
        // A prefix that stops before the difference is equal.
        // SAFETY: as above, `position <= 1000`.
        unsafe {
            assert_eq!(compare(base.as_ptr(), higher.as_ptr(), position), 0);
            assert_eq!(differ(base.as_ptr(), higher.as_ptr(), position), 0);
        }
    }
    // Unsigned bytes: 0x80 is above 0x7f.
    assert!(compare_slices(&[0x80], &[0x7f]).is_gt());
    assert!(compare_slices(&[1, 2], &[1, 2, 0]).is_lt());
}

#[test]
fn backward_move_at_every_short_distance() {
    // Distances below 64 take the `std; rep movsb` path, 64 and more the chunked one.
    for distance in 1..=130 {
        for count in [65, 100, 128, 129, 500, 4096] {
            let mut ours = pattern(count + distance + SLACK, distance as u8);
            let mut expected = ours.clone();
            naive_move(&mut expected, distance, 0, count);
            // SAFETY: both ranges lie inside the buffer.
            unsafe { copy(ours.as_mut_ptr().add(distance), ours.as_ptr(), count) };
            assert_eq!(ours, expected, "distance {distance}, count {count}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn copy_matches_byte_loop(
        count in size(),
        source_offset in 0..SLACK,
        destination_offset in 0..SLACK,
        seed: u8,
    ) {
        let source = pattern(count + SLACK, seed);
        let mut ours = std::vec![!seed; count + 2 * SLACK];
        let mut expected = ours.clone();
        for offset in 0..count {
            expected[destination_offset + offset] = source[source_offset + offset];
        }
        // SAFETY: both ranges lie inside their (distinct) buffers.
        unsafe {
            copy_nonoverlapping(
                ours.as_mut_ptr().add(destination_offset),
                source.as_ptr().add(source_offset),
                count,
            )
        };
        prop_assert!(ours == expected);
    }

    #[test]
    fn overlapping_move_matches_byte_loop(
        count in size(),
        source_offset in 0..2 * SLACK,
        destination_offset in 0..2 * SLACK,
        seed: u8,
    ) {
        // Both directions: the destination above or below the source, overlapping
        // whenever the offsets differ by less than the count.
        let mut ours = pattern(count + 2 * SLACK, seed);
        let mut expected = ours.clone();
        naive_move(&mut expected, destination_offset, source_offset, count);
        // SAFETY: both ranges lie inside the buffer.
        unsafe {
            copy(
                ours.as_mut_ptr().add(destination_offset),
                ours.as_ptr().add(source_offset),
                count,
            )
        };
        prop_assert!(ours == expected);
    }

    #[test]
    fn fill_matches_byte_loop(count in size(), offset in 0..SLACK, byte: u8) {
        let mut ours = std::vec![!byte; count + 2 * SLACK];
        let mut expected = ours.clone();
        for index in offset..offset + count {
            expected[index] = byte;
        }
        // SAFETY: the range lies inside the buffer.
        unsafe { fill(ours.as_mut_ptr().add(offset), byte, count) };
        prop_assert!(ours == expected);
    }

    #[test]
    fn compare_matches_byte_loop(
        count in size(),
        left_offset in 0..SLACK,
        right_offset in 0..SLACK,
        change in proptest::option::of((any::<prop::sample::Index>(), 1..=255u8)),
        seed: u8,
    ) {
        let left = pattern(count + SLACK, seed);
        let mut right = std::vec![0u8; count + SLACK];
        right[right_offset..right_offset + count]
            .copy_from_slice(&left[left_offset..left_offset + count]);
        if let (Some((index, delta)), true) = (change, count > 0) {
            let position = right_offset + index.index(count);
            right[position] = right[position].wrapping_add(delta);
        }
        let left = &left[left_offset..left_offset + count];
        let right = &right[right_offset..right_offset + count];
        let expected = naive_compare(left, right);
        // SAFETY: both slices hold `count` bytes.
        let (ours, bcmp) = unsafe {
            (
                compare(left.as_ptr(), right.as_ptr(), count),
                differ(left.as_ptr(), right.as_ptr(), count),
            )
        };
        prop_assert_eq!(ours.signum(), expected.signum());
        prop_assert_eq!(bcmp != 0, expected != 0);
    }
}
