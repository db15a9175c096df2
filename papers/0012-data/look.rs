// The spin-look probe of papers/0012 section 5: `rustc -O look.rs && ./look`.
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
static WORD: AtomicU64 = AtomicU64::new(1);
static TABLE: [AtomicU64; 256] = [const { AtomicU64::new(7) }; 256];
fn main() {
    for _ in 0..5 {
        let n = 10_000_000u64;
        let t = Instant::now();
        let mut acc = 0u64;
        for i in 0..n {
            // owner check (a table slot), pause, look at the word
            acc = acc.wrapping_add(TABLE[(i as usize) & 255].load(Ordering::Relaxed));
            core::hint::spin_loop();
            acc = acc.wrapping_add(WORD.load(Ordering::Relaxed));
        }
        let look = t.elapsed().as_nanos() as f64 / n as f64;
        let t = Instant::now();
        for _ in 0..n { core::hint::spin_loop(); }
        let pause = t.elapsed().as_nanos() as f64 / n as f64;
        println!("look {look:.1} ns, pause alone {pause:.1} ns ({acc})");
    }
}
