//! loom models of `keel_pagealloc::HandedOutPages`, the one bit per page that lets
//! every CPU's page cache refuse a double free at once.
//!
//! - Two CPUs free the same handed-out page at the same moment: exactly one free is
//!   taken back, the other is refused as a double free.
//! - Two CPUs hand out and take back different pages whose bits share one word: no
//!   transition is lost (each free succeeds, and both bits end clear).
//!
//! With the feature `broken-handed-out`, `take_back` clears the bit with a load and a
//! store instead of one `fetch_and`; both models are then `should_panic`, i.e. they
//! pass only when loom finds the interleaving where both racing frees succeed or
//! where one page's transition overwrites the other's.
#![cfg(loom)]

use keel_pagealloc::{HandedOutPages, PageAllocError, PageFrameNumber};
use keel_sync::shim::AtomicU64;
use loom::sync::Arc;
use loom::thread;

mod common;

/// Bits for frames 0..64, all in one word, shared by the model's threads. The word is
/// leaked (one per execution) so that both threads can borrow it for `'static`.
fn one_word() -> Arc<HandedOutPages<'static>> {
    let words: &'static [AtomicU64] = Box::leak(Box::new([AtomicU64::new(0)]));
    Arc::new(HandedOutPages::new(words, PageFrameNumber::new(0)))
}

#[test]
#[cfg_attr(
    feature = "broken-handed-out",
    should_panic(expected = "both racing frees of one page succeeded")
)]
fn racing_frees_of_one_page_take_it_back_once() {
    common::check_bounded(3, 1000, || {
        let pages = one_word();
        let page = PageFrameNumber::new(5);
        pages.mark_handed_out(page);
        let other = {
            let pages = Arc::clone(&pages);
            thread::spawn(move || pages.take_back(page))
        };
        let mine = pages.take_back(page);
        let theirs = other.join().unwrap();
        let refused = [mine, theirs]
            .iter()
            .filter(|result| **result == Err(PageAllocError::DoubleFree))
            .count();
        assert!(
            refused == 1,
            "both racing frees of one page succeeded (or both were refused): {mine:?} {theirs:?}"
        );
        assert!(!pages.is_handed_out(page));
    });
}

#[test]
#[cfg_attr(
    feature = "broken-handed-out",
    should_panic(expected = "a page's transition was lost")
)]
fn pages_sharing_a_word_keep_their_own_bits() {
    common::check_bounded(3, 1000, || {
        let pages = one_word();
        let (first, second) = (PageFrameNumber::new(1), PageFrameNumber::new(2));
        pages.mark_handed_out(first);
        let other = {
            let pages = Arc::clone(&pages);
            thread::spawn(move || {
                pages.mark_handed_out(second);
                pages.take_back(second)
            })
        };
        let mine = pages.take_back(first);
        let theirs = other.join().unwrap();
        assert!(
            mine.is_ok()
                && theirs.is_ok()
                && !pages.is_handed_out(first)
                && !pages.is_handed_out(second),
            "a page's transition was lost: {mine:?} {theirs:?}"
        );
    });
}
