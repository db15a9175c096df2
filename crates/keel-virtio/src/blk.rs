//! The virtio-blk driver: Keel's request layer ([`crate::request`], on
//! `virtio-drivers`' virtqueue and transports) behind Keel's [`BlockDevice`], with
//! several requests in flight from several threads, each completed by a wake-up.
//!
//! # Concurrency design
//!
//! - **The queue lock.** The [`BlkQueue`] (its transport and its 16-entry virtqueue)
//!   sits behind a short `spin::Mutex`, together with one *sleeper slot* per queue
//!   token (the handle of the thread waiting for that request, if it sleeps). The lock
//!   is held only to add a request (`read_blocks_nb` / `write_blocks_nb`), to look at
//!   the used ring, to pop a completed request and to fill or empty a sleeper slot:
//!   never across a wait.
//! - **Waiting.** A thread submits under the lock and gets a token. Then, in a loop, it
//!   takes the lock and asks `peek_used`: if its token is at the head of the used ring
//!   it pops it (`complete_*_blocks`, same buffers), looks at the *new* head and wakes
//!   the thread that sleeps on it, if any, and returns its status. Otherwise it stores
//!   `P::current()` in its sleeper slot, unlocks and parks. Because `pop_used` can only
//!   pop the head of the used ring, requests completed out of order are handled by
//!   each popper waking the owner of the next head; a head whose owner has not gone to
//!   sleep yet needs no wake-up, since that owner checks the ring (under the lock)
//!   before it sleeps. Checking and recording happen under one lock hold, and
//!   `Parker::unpark` before `park` makes `park` return, so no wake-up is lost.
//! - **The interrupt** ([`VirtioBlock::handle_interrupt`]) never waits for the lock (a
//!   thread on the same CPU may hold it): it raises a `pending` flag and takes the lock
//!   only with `try_lock`; every unlock by a thread afterwards checks `pending` and
//!   does the handler's work if it is set (acknowledge, wake the owner of the used
//!   ring's head). The protocol and its memory-ordering argument are in
//!   [`crate::handoff`]. With `VIRTIO_F_EVENT_IDX` the device interrupts only when the
//!   used ring goes from empty (as the driver last saw it) to non-empty; the popper's
//!   wake-up of the next head covers the rest, and a `SeqCst` fence between the pop
//!   (which publishes `used_event`) and the next `peek_used` makes sure that a
//!   completion the popper does not see yet is one the device will interrupt for.
//! - **Requests in flight** are limited by a [`Semaphore`] so that submission never
//!   meets a full queue: 16 units when indirect descriptors are used (one descriptor
//!   per request; feature `indirect-descriptors` and the device offers
//!   `VIRTIO_F_INDIRECT_DESC`), else 16 / 3 = 5 (a request is a chain of three
//!   descriptors: header, data, status). A thread waits for a unit before submitting
//!   and posts it after popping its request.
//! - **Flush** is a request like the others (VIRTIO_BLK_T_FLUSH, no data), submitted,
//!   waited for asleep and popped in the same way: `virtio-drivers`' own `VirtIOBlk`
//!   polls for its flush, which is why Keel builds its requests itself. A device
//!   without `VIRTIO_BLK_F_FLUSH` has no write cache to flush, and `flush` returns at
//!   once. It makes the writes that completed before it durable (5.2.6.1), as
//!   [`BlockDevice::flush`] promises; writes still in flight are not waited for.
//! - **Holds of the queue lock run without preemption** (`Parker::without_preemption`:
//!   the kernel masks interrupts), so a holder is never descheduled with the lock held
//!   while other threads spin for it.
//!
//! # Device input
//!
//! Requests are checked with [`check_request`] before they reach the queue (empty or
//! unaligned buffers never do), writes to a read-only device are refused,
//! and a request larger than [`VirtioBlock::max_request_bytes`] (64 KiB, or the
//! device's `size_max` if smaller) is split. A status byte other than OK, IOERR and
//! UNSUPP is [`BlockError::Device`]; a used-ring id that is not a request in flight
//! wakes nobody. A device that never completes a request (or puts a token in the used
//! ring that is not in flight) leaves its waiter asleep: its buffers still belong to
//! the device, so the waiter cannot return.
//!
//! # Threads
//!
//! `VirtioBlock<H, T, P>` is `Send + Sync` when `T: Send` (`PciTransport` and
//! `MmioTransport` are): every use of the transport and of the queue goes through the
//! queue lock, a `spin::Mutex`, which is `Sync` for `Send` contents. No `unsafe impl`
//! is needed.

use crate::block::{BlockDevice, BlockError, SECTOR_SIZE, check_request};
use crate::handoff::InterruptHandoff;
use crate::request::{
    BlkQueue, Data, Header, STATUS_IO_ERROR, STATUS_OK, STATUS_UNSUPPORTED, Status,
};
use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering, fence};
use keel_lfmutex::{Parker, Semaphore};
use virtio_drivers::Hal;
use virtio_drivers::transport::{DeviceStatus, Transport};

/// Why a virtio-blk device could not be brought up. The kernel prints it, naming the
/// device, and boots on without the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitError {
    /// The device offers none of the feature sets the driver can work with (for
    /// example a modern transport without VIRTIO_F_VERSION_1). `offered` is the
    /// device's feature bits.
    NoUsableFeatures {
        /// The device's feature bits.
        offered: u64,
    },
    /// The device's request queue is shorter than the driver's.
    QueueTooShort {
        /// The longest queue the device offers.
        offered: u32,
        /// The length the driver needs.
        needed: u16,
    },
    /// The transport or the queue set-up failed otherwise.
    Virtio(virtio_drivers::Error),
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoUsableFeatures { offered } => {
                write!(f, "no usable feature set (device offers {offered:#x})")
            }
            Self::QueueTooShort { offered, needed } => write!(
                f,
                "its queue holds {offered} descriptors, the driver needs {needed}"
            ),
            Self::Virtio(error) => write!(f, "virtio set-up failed: {error}"),
        }
    }
}

/// What the device is, as the kernel prints it at boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceInfo {
    /// Sectors.
    pub capacity: u64,
    /// VIRTIO_BLK_F_RO.
    pub read_only: bool,
    /// The device's feature bits.
    pub device_features: u64,
    /// The bits the driver accepted.
    pub negotiated_features: u64,
    /// Descriptors in the request queue.
    pub queue_size: u16,
}

/// Counters, for tests and the bench.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlkStats {
    /// Requests submitted.
    pub requests: u64,
    /// Calls of [`VirtioBlock::handle_interrupt`].
    pub interrupts: u64,
    /// Times a waiting thread was woken (by the interrupt or by the thread that
    /// completed the request before it in the used ring).
    pub wakeups: u64,
    /// Times a thread or the handler looked at the used ring. A driver that polls
    /// makes this grow while it waits; this one looks a bounded number of times per
    /// request.
    pub used_ring_checks: u64,
}

/// virtio feature bits the driver knows by name (virtio 1.2, 5.2.3 and 6).
pub mod features {
    /// VIRTIO_BLK_F_SIZE_MAX: `size_max` in the config space bounds a segment.
    pub const SIZE_MAX: u64 = 1 << 1;
    /// VIRTIO_BLK_F_SEG_MAX: `seg_max` bounds the segments of a request.
    pub const SEG_MAX: u64 = 1 << 2;
    /// VIRTIO_BLK_F_RO: the device is read-only.
    pub const RO: u64 = 1 << 5;
    /// VIRTIO_BLK_F_FLUSH: the device has a write cache and a flush command.
    pub const FLUSH: u64 = 1 << 9;
    /// VIRTIO_F_INDIRECT_DESC: descriptors may point to descriptor tables.
    pub const RING_INDIRECT_DESC: u64 = 1 << 28;
    /// VIRTIO_F_EVENT_IDX: `used_event` / `avail_event` suppress notifications.
    pub const RING_EVENT_IDX: u64 = 1 << 29;
    /// VIRTIO_F_VERSION_1: a modern (virtio 1.0+) device.
    pub const VERSION_1: u64 = 1 << 32;
    /// What the driver accepts: the negotiated features are the device's features
    /// intersected with these (without RING_INDIRECT_DESC when the feature
    /// `indirect-descriptors` is off).
    pub const DRIVER_SUPPORTED: u64 = RO | FLUSH | RING_INDIRECT_DESC | RING_EVENT_IDX | VERSION_1;
}

/// Descriptors in the request queue.
pub use crate::request::QUEUE_SIZE;

/// The largest request sent to the device; larger reads and writes are split.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

/// Descriptors a request takes without indirect descriptors: header, data, status.
const DESCRIPTORS_PER_DIRECT_REQUEST: usize = 3;

/// The config-space offset of `size_max` (after the 64-bit capacity).
const SIZE_MAX_OFFSET: usize = 8;

/// What the queue lock protects.
struct Queue<H: Hal, T: Transport, P: Parker> {
    device: BlkQueue<H, T>,
    /// The thread asleep on each token's request, if it went to sleep; indexed by token.
    sleepers: [Option<P::Handle>; QUEUE_SIZE as usize],
}

/// The counters behind [`BlkStats`]; `Relaxed` (statistics only, no ordering).
#[derive(Debug, Default)]
struct Counters {
    requests: AtomicU64,
    interrupts: AtomicU64,
    wakeups: AtomicU64,
    used_ring_checks: AtomicU64,
}

impl Counters {
    fn count(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A virtio-blk device.
pub struct VirtioBlock<H: Hal, T: Transport, P: Parker> {
    queue: spin::Mutex<Queue<H, T, P>>,
    /// The interrupt's work handed to the lock holder (see [`crate::handoff`]).
    interrupt: InterruptHandoff,
    /// Free request slots: `in_flight_units` when idle.
    in_flight_limit: Semaphore<P>,
    in_flight_units: usize,
    info: DeviceInfo,
    max_request_bytes: usize,
    counters: Counters,
}

impl<H: Hal, T: Transport, P: Parker> fmt::Debug for VirtioBlock<H, T, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VirtioBlock")
            .field("info", &self.info)
            .field("in_flight_units", &self.in_flight_units)
            .field("max_request_bytes", &self.max_request_bytes)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl<H: Hal, T: Transport, P: Parker> VirtioBlock<H, T, P> {
    /// Negotiates features, sets up the request queue and enables its interrupt.
    ///
    /// Resets the device and reads its features first: a modern transport whose device
    /// lacks VIRTIO_F_VERSION_1 is [`InitError::NoUsableFeatures`], a queue shorter
    /// than [`QUEUE_SIZE`] is [`InitError::QueueTooShort`] (in both cases the device is
    /// told FAILED); errors of the queue set-up are [`InitError::Virtio`].
    pub fn new(mut transport: T) -> Result<Self, InitError> {
        transport.set_status(DeviceStatus::empty());
        let device_features = transport.read_device_features();
        if !transport.requires_legacy_layout() && device_features & features::VERSION_1 == 0 {
            transport.set_status(DeviceStatus::FAILED);
            return Err(InitError::NoUsableFeatures {
                offered: device_features,
            });
        }
        let offered = transport.max_queue_size(0);
        if offered < u32::from(QUEUE_SIZE) {
            transport.set_status(DeviceStatus::FAILED);
            return Err(InitError::QueueTooShort {
                offered,
                needed: QUEUE_SIZE,
            });
        }
        let max_request_bytes = Self::request_limit(&transport, device_features);

        let indirect_allowed = cfg!(feature = "indirect-descriptors");
        let (device, negotiated_features) =
            BlkQueue::<H, T>::new(transport, indirect_allowed).map_err(InitError::Virtio)?;
        let uses_indirect = negotiated_features & features::RING_INDIRECT_DESC != 0;
        let in_flight_units = if uses_indirect {
            usize::from(QUEUE_SIZE)
        } else {
            usize::from(QUEUE_SIZE) / DESCRIPTORS_PER_DIRECT_REQUEST
        };
        let info = DeviceInfo {
            capacity: device.capacity().map_err(InitError::Virtio)?,
            read_only: negotiated_features & features::RO != 0,
            device_features,
            negotiated_features,
            queue_size: device.queue_size(),
        };
        Ok(Self {
            queue: spin::Mutex::new(Queue {
                device,
                sleepers: [const { None }; QUEUE_SIZE as usize],
            }),
            interrupt: InterruptHandoff::new(),
            in_flight_limit: Semaphore::new(in_flight_units),
            in_flight_units,
            info,
            max_request_bytes,
            counters: Counters::default(),
        })
    }

    /// [`MAX_REQUEST_BYTES`], or the device's `size_max` (whole sectors) if it offers
    /// VIRTIO_BLK_F_SIZE_MAX with a smaller one (each data buffer is one segment).
    fn request_limit(transport: &T, device_features: u64) -> usize {
        if device_features & features::SIZE_MAX == 0 {
            return MAX_REQUEST_BYTES;
        }
        match transport.read_config_space::<u32>(SIZE_MAX_OFFSET) {
            Ok(size_max) => {
                let sectors = usize::try_from(size_max).unwrap_or(usize::MAX) / SECTOR_SIZE;
                if sectors == 0 {
                    MAX_REQUEST_BYTES
                } else {
                    MAX_REQUEST_BYTES.min(sectors * SECTOR_SIZE)
                }
            }
            Err(_) => MAX_REQUEST_BYTES,
        }
    }

    /// What the device is.
    pub fn info(&self) -> DeviceInfo {
        self.info
    }

    /// The largest request sent to the device in one piece, in bytes.
    pub fn max_request_bytes(&self) -> usize {
        self.max_request_bytes
    }

    /// How many requests may be in flight at once (16 with indirect descriptors, 5
    /// without).
    pub fn max_requests_in_flight(&self) -> usize {
        self.in_flight_units
    }

    /// The device's interrupt: acknowledges it and wakes the thread whose request
    /// completed first. Safe to call from an interrupt handler: it never blocks and
    /// never spins on a lock a thread might hold.
    ///
    /// It may call `P::unpark`, which must therefore be callable from the interrupt.
    pub fn handle_interrupt(&self) {
        Counters::count(&self.counters.interrupts);
        self.interrupt.raise();
        self.drain_interrupts();
    }

    /// The counters.
    pub fn stats(&self) -> BlkStats {
        BlkStats {
            requests: self.counters.requests.load(Ordering::Relaxed),
            interrupts: self.counters.interrupts.load(Ordering::Relaxed),
            wakeups: self.counters.wakeups.load(Ordering::Relaxed),
            used_ring_checks: self.counters.used_ring_checks.load(Ordering::Relaxed),
        }
    }

    /// Does the work of a pending interrupt if the queue lock is free: called by the
    /// handler and after every unlock by a thread.
    fn drain_interrupts(&self) {
        self.interrupt.drain(
            || self.queue.try_lock(),
            |queue| {
                queue.device.ack_interrupt();
                if let Some(sleeper) = self.take_head_sleeper(queue) {
                    self.wake(&sleeper);
                }
            },
        );
    }

    /// Unlocks the queue, then does any interrupt work that arrived meanwhile.
    fn unlock(&self, queue: spin::MutexGuard<'_, Queue<H, T, P>>) {
        drop(queue);
        self.drain_interrupts();
    }

    /// Takes the handle of the thread asleep on the request at the head of the used
    /// ring, if the ring has a head and its owner sleeps.
    fn take_head_sleeper(&self, queue: &mut Queue<H, T, P>) -> Option<P::Handle> {
        Counters::count(&self.counters.used_ring_checks);
        // The id comes from the device: an id that is no token finds no slot.
        let head = queue.device.peek_used()?;
        queue.sleepers.get_mut(usize::from(head))?.take()
    }

    fn wake(&self, sleeper: &P::Handle) {
        Counters::count(&self.counters.wakeups);
        P::unpark(sleeper);
    }

    /// Reads or writes `data` at `sector` in requests of at most
    /// [`max_request_bytes`](Self::max_request_bytes). The range is checked already.
    fn transfer(&self, sector: u64, data: Data<'_>) -> Result<(), BlockError> {
        let chunk_sectors = (self.max_request_bytes / SECTOR_SIZE) as u64;
        match data {
            Data::Read(buf) => {
                for (index, chunk) in buf.chunks_mut(self.max_request_bytes).enumerate() {
                    let chunk_sector = sector + index as u64 * chunk_sectors;
                    self.request(chunk_sector, Data::Read(chunk))?;
                }
            }
            Data::Write(buf) => {
                for (index, chunk) in buf.chunks(self.max_request_bytes).enumerate() {
                    let chunk_sector = sector + index as u64 * chunk_sectors;
                    self.request(chunk_sector, Data::Write(chunk))?;
                }
            }
            Data::Flush => self.request(sector, Data::Flush)?,
        }
        Ok(())
    }

    /// One request: waits for a slot, submits, sleeps until the request is at the head
    /// of the used ring, pops it and wakes the owner of the next head.
    fn request(&self, sector: u64, mut data: Data<'_>) -> Result<(), BlockError> {
        let mut header = Header::default();
        let mut status = Status::default();

        self.in_flight_limit.wait();
        // Every hold of the queue lock runs without preemption (the kernel masks
        // interrupts): a holder preempted by the timer would leave the threads that
        // want the lock spinning for a whole time slice, the lock-holder preemption
        // OSv's mutex exists to avoid, here inside the guest. 16 readers on 2 vCPUs
        // ran at 4100 requests/s with preemptible holds against 10 600 for one reader.
        let submitted = P::without_preemption(|| {
            let mut queue = self.queue.lock();
            // SAFETY: `header`, the data buffer and `status` are not touched (nor
            // moved: they are locals of this frame, and the borrowed buffer outlives
            // it) until `complete` below has popped this token, and this function does
            // not return before that. A data buffer is non-empty and a multiple of
            // SECTOR_SIZE (`check_request` and the chunking).
            let submitted = unsafe {
                queue
                    .device
                    .submit(sector, &mut header, &mut data, &mut status)
            };
            if let Ok(token) = submitted {
                // Tokens are descriptor indices, below QUEUE_SIZE.
                if let Some(sleeper) = queue.sleepers.get_mut(usize::from(token)) {
                    *sleeper = None;
                }
            }
            self.unlock(queue);
            submitted
        });
        let token = match submitted {
            Ok(token) => token,
            Err(_) => {
                // Nothing was queued (the semaphore makes QueueFull impossible; this
                // is a ring error), so the buffers are ours again.
                self.in_flight_limit.post(1);
                return Err(BlockError::Device);
            }
        };
        Counters::count(&self.counters.requests);
        // Tokens are descriptor indices, below QUEUE_SIZE; the mask only keeps the
        // index in range without a panic path.
        let slot = usize::from(token) & (usize::from(QUEUE_SIZE) - 1);

        loop {
            let completed = P::without_preemption(|| {
                let mut queue = self.queue.lock();
                Counters::count(&self.counters.used_ring_checks);
                if queue.device.peek_used() != Some(token) {
                    queue.sleepers[slot] = Some(P::current());
                    self.unlock(queue);
                    return None;
                }
                // SAFETY: the same `header`, data and `status` as were given to
                // `submit` for this token, which is at the used ring's head.
                let completed = unsafe {
                    queue
                        .device
                        .complete(token, &header, &mut data, &mut status)
                };
                queue.sleepers[slot] = None;
                // The pop published `used_event` (with VIRTIO_F_EVENT_IDX); order it
                // before the used-index read in `peek_used`, so that a completion we do
                // not see is one the device sees `used_event` for, and interrupts.
                fence(Ordering::SeqCst);
                let next = self.take_head_sleeper(&mut queue);
                self.unlock(queue);
                if let Some(sleeper) = next {
                    self.wake(&sleeper);
                }
                Some(completed)
            });
            match completed {
                Some(completed) => {
                    self.in_flight_limit.post(1);
                    return Self::outcome(completed, status.byte());
                }
                None => P::park(),
            }
        }
    }

    /// A completed request's result: its status byte, or a failed pop.
    fn outcome(completed: Result<(), virtio_drivers::Error>, status: u8) -> Result<(), BlockError> {
        match status {
            STATUS_OK if completed.is_ok() => Ok(()),
            STATUS_IO_ERROR => Err(BlockError::Io),
            STATUS_UNSUPPORTED => Err(BlockError::Unsupported),
            _ => Err(BlockError::Device),
        }
    }
}

impl<H: Hal, T: Transport, P: Parker> BlockDevice for VirtioBlock<H, T, P>
where
    T: Send,
{
    fn read(&self, sector: u64, buf: &mut [u8]) -> Result<(), BlockError> {
        check_request(sector, buf.len(), self.info.capacity)?;
        self.transfer(sector, Data::Read(buf))
    }

    fn write(&self, sector: u64, buf: &[u8]) -> Result<(), BlockError> {
        check_request(sector, buf.len(), self.info.capacity)?;
        if self.info.read_only {
            return Err(BlockError::ReadOnly);
        }
        self.transfer(sector, Data::Write(buf))
    }

    /// One VIRTIO_BLK_T_FLUSH request, waited for asleep like any other; nothing to
    /// do on a device without a write cache (no VIRTIO_BLK_F_FLUSH).
    fn flush(&self) -> Result<(), BlockError> {
        if self.info.negotiated_features & features::FLUSH == 0 {
            return Ok(());
        }
        self.request(0, Data::Flush)
    }

    fn capacity(&self) -> u64 {
        self.info.capacity
    }

    fn is_read_only(&self) -> bool {
        self.info.read_only
    }
}
