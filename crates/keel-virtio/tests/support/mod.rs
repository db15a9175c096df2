//! Host fakes for the virtio-blk driver's tests: [`HostMemory`] (a `DmaMemory` on the
//! global allocator, so the tests also exercise `KeelHal`), and [`FakeDisk`], a fake
//! virtio-blk device on its own thread behind a [`FakeTransport`].
//!
//! The fake device reads the split virtqueue straight from memory at the addresses the
//! driver gave in `queue_set` (descriptor table, available ring, used ring; indirect
//! tables when VIRTIO_F_INDIRECT_DESC was negotiated), checks every request's bytes
//! (type, reserved field, sector range, descriptor flags and lengths, read-only
//! refusal) and records what it saw and every violation, serves the request against an
//! in-memory disk, writes the status byte and the used-ring entry and "raises the
//! interrupt" by calling the handler the test registered (the driver's
//! `handle_interrupt`), honouring `used_event` under VIRTIO_F_EVENT_IDX. A [`Policy`]
//! holds requests until several are in flight, completes a batch in reverse, delays
//! completions, or answers chosen requests with an error status.
//!
//! Modelled on virtio-drivers' own test fakes (`transport/fake.rs`, `hal/fake.rs`),
//! written anew; unlike them the device here runs concurrently with many driver
//! threads.
// Every test file compiles this module; each uses only part of it.
#![allow(dead_code)]

use keel_hosted::StdParker;
use keel_virtio::blk::{QUEUE_SIZE, VirtioBlock, features};
use keel_virtio::hal::{DmaMemory, KeelHal};
use std::alloc::Layout;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU16, Ordering, fence};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};
use virtio_drivers::transport::{DeviceStatus, DeviceType, InterruptStatus, Transport};
use virtio_drivers::{Error, PhysAddr};
use zerocopy::{FromBytes, Immutable, IntoBytes};

/// The driver under test.
pub type TestBlock = VirtioBlock<KeelHal<HostMemory>, FakeTransport, StdParker>;

/// virtio-blk request types (virtio 1.2, 5.2.6).
pub const REQUEST_IN: u32 = 0;
/// A write.
pub const REQUEST_OUT: u32 = 1;
/// A flush.
pub const REQUEST_FLUSH: u32 = 4;

/// Status bytes.
pub const STATUS_OK: u8 = 0;
/// VIRTIO_BLK_S_IOERR.
pub const STATUS_IOERR: u8 = 1;
/// VIRTIO_BLK_S_UNSUPP.
pub const STATUS_UNSUPP: u8 = 2;

const PAGE_SIZE: usize = 4096;
const DESC_F_NEXT: u16 = 1;
const DESC_F_WRITE: u16 = 2;
const DESC_F_INDIRECT: u16 = 4;
const DESCRIPTOR_BYTES: u64 = 16;
const HEADER_BYTES: u32 = 16;
const SECTOR: u64 = 512;

/// DMA memory from the global allocator; physical address = virtual address.
#[derive(Debug)]
pub struct HostMemory;

// SAFETY: (test-only) pages come from the global allocator, page-aligned, zeroed and
// owned by the caller until `free`; host memory is contiguous and "physical" addresses
// are the virtual ones, which the fake device dereferences; MMIO is never mapped by
// the fake transport (it is not PCI or MMIO), so `map_mmio` only translates.
unsafe impl DmaMemory for HostMemory {
    fn alloc_zeroed(pages: usize) -> Option<(PhysAddr, NonNull<u8>)> {
        let layout = Layout::from_size_align(pages.max(1) * PAGE_SIZE, PAGE_SIZE).ok()?;
        // SAFETY: the layout has a non-zero size.
        let pointer = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) })?;
        Some((pointer.as_ptr() as PhysAddr, pointer))
    }

    unsafe fn free(_phys: PhysAddr, virt: NonNull<u8>, pages: usize) {
        let layout = Layout::from_size_align(pages.max(1) * PAGE_SIZE, PAGE_SIZE).unwrap();
        // SAFETY: the caller passes one allocation of `alloc_zeroed`, with its size.
        unsafe { std::alloc::dealloc(virt.as_ptr(), layout) };
    }

    fn phys_of(virt: *const u8) -> PhysAddr {
        virt as PhysAddr
    }

    fn map_mmio(phys: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(phys as *mut u8).unwrap_or(NonNull::dangling())
    }
}

/// What the fake device is.
#[derive(Debug, Clone)]
pub struct DiskConfig {
    /// Sectors.
    pub capacity: u64,
    /// Feature bits offered.
    pub features: u64,
    /// The longest queue offered.
    pub max_queue_size: u32,
    /// A legacy transport (legacy queue layout; VERSION_1 not required).
    pub legacy: bool,
    /// `size_max` in the config space (offered with VIRTIO_BLK_F_SIZE_MAX if `Some`).
    pub size_max: Option<u32>,
}

impl DiskConfig {
    /// A modern device of `capacity` sectors with a write cache (FLUSH) and, if
    /// `indirect`, indirect descriptors.
    pub fn modern(capacity: u64, indirect: bool) -> Self {
        let mut features = features::VERSION_1 | features::FLUSH;
        if indirect {
            features |= features::RING_INDIRECT_DESC;
        }
        Self {
            capacity,
            features,
            max_queue_size: 256,
            legacy: false,
            size_max: None,
        }
    }
}

/// How the fake device completes requests.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// Hold requests until this many are in flight at once (at most 200 ms), then
    /// complete them all. 0 or 1: complete as they come.
    pub hold_until_in_flight: usize,
    /// Complete each batch in the reverse of the order it arrived in.
    pub reverse: bool,
    /// Wait this long before completing a batch.
    pub delay: Duration,
    /// Answer reads and writes starting at this sector with this status.
    pub fail_sector: Option<(u64, u8)>,
    /// Answer flushes with this status.
    pub flush_status: Option<u8>,
}

/// One request as the device saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeenRequest {
    /// The request type.
    pub kind: u32,
    /// The first sector.
    pub sector: u64,
    /// Bytes of data (0 for a flush).
    pub data_len: u32,
    /// Whether it came as an indirect table.
    pub indirect: bool,
}

#[derive(Debug, Clone, Copy)]
struct QueueAddresses {
    size: u32,
    descriptors: u64,
    driver_area: u64,
    device_area: u64,
}

/// A request read from the ring, waiting to be completed.
#[derive(Debug)]
struct HeldRequest {
    head: u16,
    kind: u32,
    sector: u64,
    /// (address, length, device-writable) of each data descriptor.
    data: Vec<(u64, u32, bool)>,
    status_address: Option<u64>,
    /// The status to answer if the request is malformed.
    forced_status: Option<u8>,
}

type InterruptHandler = Box<dyn Fn() + Send + Sync>;

#[derive(Default)]
struct DeviceState {
    status: u32,
    status_history: Vec<u32>,
    driver_features: u64,
    queue: Option<QueueAddresses>,
    interrupt_status: bool,
    notified: bool,
    shutdown: bool,
    disk: Vec<u8>,
    policy: Policy,
    held: Vec<HeldRequest>,
    held_since: Option<Instant>,
    last_avail: u16,
    used_idx: u16,
    seen: Vec<SeenRequest>,
    problems: Vec<String>,
    max_in_flight: usize,
    interrupts_raised: u64,
    flushes: u64,
}

struct Shared {
    state: Mutex<DeviceState>,
    kick: Condvar,
    handler: Mutex<Option<InterruptHandler>>,
    config: DiskConfig,
    config_space: Vec<u8>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, DeviceState> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }
}

/// The fake transport: what the driver owns. Its state is shared with the device.
pub struct FakeTransport {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for FakeTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeTransport").finish_non_exhaustive()
    }
}

impl Transport for FakeTransport {
    fn device_type(&self) -> DeviceType {
        DeviceType::Block
    }

    fn read_device_features(&mut self) -> u64 {
        self.shared.config.features
    }

    fn write_driver_features(&mut self, driver_features: u64) {
        self.shared.state().driver_features = driver_features;
    }

    fn max_queue_size(&mut self, queue: u16) -> u32 {
        if queue == 0 {
            self.shared.config.max_queue_size
        } else {
            0
        }
    }

    fn notify(&mut self, _queue: u16) {
        self.shared.state().notified = true;
        self.shared.kick.notify_all();
    }

    fn get_status(&self) -> DeviceStatus {
        DeviceStatus::from_bits_retain(self.shared.state().status)
    }

    fn set_status(&mut self, status: DeviceStatus) {
        let mut state = self.shared.state();
        state.status = status.bits();
        state.status_history.push(status.bits());
    }

    fn set_guest_page_size(&mut self, _guest_page_size: u32) {}

    fn requires_legacy_layout(&self) -> bool {
        self.shared.config.legacy
    }

    fn queue_set(
        &mut self,
        queue: u16,
        size: u32,
        descriptors: PhysAddr,
        driver_area: PhysAddr,
        device_area: PhysAddr,
    ) {
        let mut state = self.shared.state();
        if queue != 0 {
            state.problems.push(format!("queue_set of queue {queue}"));
            return;
        }
        state.queue = Some(QueueAddresses {
            size,
            descriptors,
            driver_area,
            device_area,
        });
        state.last_avail = 0;
        state.used_idx = 0;
    }

    fn queue_unset(&mut self, _queue: u16) {
        let mut state = self.shared.state();
        state.queue = None;
        state.held.clear();
    }

    fn queue_used(&mut self, queue: u16) -> bool {
        queue == 0 && self.shared.state().queue.is_some()
    }

    fn ack_interrupt(&mut self) -> InterruptStatus {
        let mut state = self.shared.state();
        if std::mem::take(&mut state.interrupt_status) {
            InterruptStatus::QUEUE_INTERRUPT
        } else {
            InterruptStatus::empty()
        }
    }

    fn read_config_generation(&self) -> u32 {
        0
    }

    fn read_config_space<T: FromBytes + IntoBytes>(&self, offset: usize) -> Result<T, Error> {
        let end = offset
            .checked_add(size_of::<T>())
            .ok_or(Error::ConfigSpaceTooSmall)?;
        let bytes = self
            .shared
            .config_space
            .get(offset..end)
            .ok_or(Error::ConfigSpaceTooSmall)?;
        T::read_from_bytes(bytes).map_err(|_| Error::ConfigSpaceTooSmall)
    }

    fn write_config_space<T: IntoBytes + Immutable>(
        &mut self,
        _offset: usize,
        _value: T,
    ) -> Result<(), Error> {
        Err(Error::Unsupported)
    }
}

/// The fake device: its thread and what it saw. Dropping it stops the thread.
pub struct FakeDisk {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl FakeDisk {
    /// Starts a device and returns it with the transport to give the driver.
    pub fn start(config: DiskConfig, policy: Policy) -> (Self, FakeTransport) {
        let mut config_space = vec![0u8; 64];
        config_space[0..8].copy_from_slice(&config.capacity.to_le_bytes());
        let mut config = config;
        if let Some(size_max) = config.size_max {
            config_space[8..12].copy_from_slice(&size_max.to_le_bytes());
            config.features |= features::SIZE_MAX;
        }
        let disk_bytes = usize::try_from(config.capacity * SECTOR).unwrap();
        let shared = Arc::new(Shared {
            state: Mutex::new(DeviceState {
                disk: vec![0; disk_bytes],
                policy,
                ..DeviceState::default()
            }),
            kick: Condvar::new(),
            handler: Mutex::new(None),
            config,
            config_space,
        });
        let device_shared = Arc::clone(&shared);
        let thread = thread::Builder::new()
            .name("fake-virtio-blk".into())
            .spawn(move || run_device(&device_shared))
            .unwrap();
        let transport = FakeTransport {
            shared: Arc::clone(&shared),
        };
        (
            Self {
                shared,
                thread: Some(thread),
            },
            transport,
        )
    }

    /// Makes `handler` the device's interrupt.
    pub fn set_interrupt_handler(&self, handler: impl Fn() + Send + Sync + 'static) {
        *self.shared.handler.lock().unwrap() = Some(Box::new(handler));
    }

    /// Wires the interrupt to `driver.handle_interrupt()` (through a weak reference,
    /// so the device does not keep the driver alive).
    pub fn connect(&self, driver: &Arc<TestBlock>) {
        let driver: Weak<TestBlock> = Arc::downgrade(driver);
        self.set_interrupt_handler(move || {
            if let Some(driver) = driver.upgrade() {
                driver.handle_interrupt();
            }
        });
    }

    /// Changes how requests are completed from now on.
    pub fn set_policy(&self, policy: Policy) {
        self.shared.state().policy = policy;
        self.shared.kick.notify_all();
    }

    /// The disk's bytes at `sector..sector + len / 512`.
    pub fn contents(&self, sector: u64, len: usize) -> Vec<u8> {
        let start = usize::try_from(sector * SECTOR).unwrap();
        self.shared.state().disk[start..start + len].to_vec()
    }

    /// Writes the disk directly (not through the queue).
    pub fn fill(&self, sector: u64, bytes: &[u8]) {
        let start = usize::try_from(sector * SECTOR).unwrap();
        self.shared.state().disk[start..start + bytes.len()].copy_from_slice(bytes);
    }

    /// Every request the device saw, in arrival order.
    pub fn seen(&self) -> Vec<SeenRequest> {
        self.shared.state().seen.clone()
    }

    /// Every violation of the virtio-blk protocol the device noticed.
    pub fn problems(&self) -> Vec<String> {
        self.shared.state().problems.clone()
    }

    /// The most requests the device held at once (received, not yet completed).
    pub fn max_in_flight(&self) -> usize {
        self.shared.state().max_in_flight
    }

    /// Interrupts the device raised (handler calls).
    pub fn interrupts_raised(&self) -> u64 {
        self.shared.state().interrupts_raised
    }

    /// Flush requests served.
    pub fn flushes(&self) -> u64 {
        self.shared.state().flushes
    }

    /// The device status register's current value.
    pub fn status(&self) -> DeviceStatus {
        DeviceStatus::from_bits_retain(self.shared.state().status)
    }

    /// The features the driver wrote.
    pub fn driver_features(&self) -> u64 {
        self.shared.state().driver_features
    }
}

impl Drop for FakeDisk {
    fn drop(&mut self) {
        self.shared.state().shutdown = true;
        self.shared.kick.notify_all();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.shared.handler.lock().unwrap().take();
    }
}

/// Starts a device, brings the driver up on it and wires its interrupt.
pub fn start_driver(config: DiskConfig, policy: Policy) -> (Arc<TestBlock>, FakeDisk) {
    let (disk, transport) = FakeDisk::start(config, policy);
    let driver = Arc::new(TestBlock::new(transport).expect("the driver comes up"));
    disk.connect(&driver);
    (driver, disk)
}

/// A recognisable pattern for `sector`'s bytes, different per `generation`.
pub fn pattern(sector: u64, generation: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|index| {
            let sector_here = sector + (index as u64) / SECTOR;
            (sector_here as u8)
                .wrapping_mul(31)
                .wrapping_add((index % 512) as u8)
                .wrapping_add(generation.wrapping_mul(101))
        })
        .collect()
}

// ---- The device thread ----

fn run_device(shared: &Shared) {
    let mut state = shared.state();
    loop {
        if state.shutdown {
            return;
        }
        if let Some(queue) = state.queue {
            fetch_available(shared, &mut state, queue);
            if let Some(batch) = ready_batch(&mut state) {
                let delay = state.policy.delay;
                if !delay.is_zero() {
                    // Wait without the lock: the driver keeps submitting meanwhile.
                    drop(state);
                    thread::sleep(delay);
                    state = shared.state();
                    if state.queue.is_none() || state.shutdown {
                        continue;
                    }
                    // Requests that came during the delay join this batch.
                    fetch_available(shared, &mut state, queue);
                }
                let mut batch = batch;
                batch.append(&mut state.held);
                if state.policy.reverse {
                    batch.reverse();
                }
                let interrupt = complete(shared, &mut state, queue, batch);
                if interrupt {
                    state.interrupt_status = true;
                    state.interrupts_raised += 1;
                    drop(state);
                    if let Some(handler) = shared.handler.lock().unwrap().as_ref() {
                        handler();
                    }
                    state = shared.state();
                }
                continue;
            }
        }
        state.notified = false;
        state = shared
            .kick
            .wait_timeout_while(state, Duration::from_millis(2), |state| {
                !state.notified && !state.shutdown
            })
            .unwrap()
            .0;
    }
}

/// The batch to complete now, if the policy lets one go.
fn ready_batch(state: &mut DeviceState) -> Option<Vec<HeldRequest>> {
    if state.held.is_empty() {
        return None;
    }
    let hold = state.policy.hold_until_in_flight;
    let held_for = state
        .held_since
        .map_or(Duration::ZERO, |since| since.elapsed());
    // Give up holding after a while: the last requests of a test come alone.
    if hold > 1 && state.held.len() < hold && held_for < Duration::from_millis(200) {
        return None;
    }
    state.held_since = None;
    Some(std::mem::take(&mut state.held))
}

// Raw access to the driver's rings. Every address is one the driver gave in
// `queue_set` or in a descriptor, valid while the queue is set (the driver unsets it,
// under the device lock that the device thread holds here, before freeing anything).

fn load_u16(address: u64) -> u16 {
    // SAFETY: (test-only) a 2-byte-aligned ring field, see above; accessed atomically
    // because the driver writes it concurrently.
    unsafe { (*(address as *const AtomicU16)).load(Ordering::Acquire) }
}

fn store_u16(address: u64, value: u16) {
    // SAFETY: as for `load_u16`.
    unsafe { (*(address as *const AtomicU16)).store(value, Ordering::Release) }
}

fn read_bytes(address: u64, len: usize) -> Vec<u8> {
    let mut bytes = vec![0; len];
    // SAFETY: (test-only) a buffer the driver shared for the device to read.
    unsafe { std::ptr::copy_nonoverlapping(address as *const u8, bytes.as_mut_ptr(), len) };
    bytes
}

fn write_bytes(address: u64, bytes: &[u8]) {
    // SAFETY: (test-only) a buffer the driver shared for the device to write.
    unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), address as *mut u8, bytes.len()) };
}

#[derive(Debug, Clone, Copy)]
struct Descriptor {
    address: u64,
    len: u32,
    flags: u16,
    next: u16,
}

fn read_descriptor(table: u64, index: u16) -> Descriptor {
    let bytes = read_bytes(table + u64::from(index) * DESCRIPTOR_BYTES, 16);
    Descriptor {
        address: u64::from_le_bytes(bytes[0..8].try_into().unwrap()),
        len: u32::from_le_bytes(bytes[8..12].try_into().unwrap()),
        flags: u16::from_le_bytes(bytes[12..14].try_into().unwrap()),
        next: u16::from_le_bytes(bytes[14..16].try_into().unwrap()),
    }
}

/// Reads the new entries of the available ring into `state.held`, checking them.
fn fetch_available(_shared: &Shared, state: &mut DeviceState, queue: QueueAddresses) {
    let size = queue.size as u16;
    let avail_idx = load_u16(queue.driver_area + 2);
    fence(Ordering::SeqCst);
    while state.last_avail != avail_idx {
        let slot = state.last_avail % size;
        let head = load_u16(queue.driver_area + 4 + 2 * u64::from(slot));
        state.last_avail = state.last_avail.wrapping_add(1);
        let request = parse_request(state, queue, head);
        if state.held.is_empty() {
            state.held_since = Some(Instant::now());
        }
        state.held.push(request);
        state.max_in_flight = state.max_in_flight.max(state.held.len());
    }
    if state.driver_features & features::RING_EVENT_IDX != 0 {
        // avail_event: "notify me when you add the entry after the ones I have".
        let avail_event = queue.device_area + 4 + 8 * u64::from(size);
        store_u16(avail_event, state.last_avail);
    }
}

/// Walks one descriptor chain, checks it and records the request.
fn parse_request(state: &mut DeviceState, queue: QueueAddresses, head: u16) -> HeldRequest {
    let size = queue.size as u16;
    let mut problems = Vec::new();
    let mut chain = Vec::new();
    let first = read_descriptor(queue.descriptors, head % size);
    let indirect = first.flags & DESC_F_INDIRECT != 0;
    if indirect {
        if state.driver_features & features::RING_INDIRECT_DESC == 0 {
            problems.push("indirect descriptor without VIRTIO_F_INDIRECT_DESC".to_string());
        }
        if first.flags & DESC_F_NEXT != 0 || first.flags & DESC_F_WRITE != 0 {
            problems.push(format!("indirect head with flags {:#x}", first.flags));
        }
        if first.len == 0 || !u64::from(first.len).is_multiple_of(DESCRIPTOR_BYTES) {
            problems.push(format!("indirect table of {} bytes", first.len));
        }
        let entries = (u64::from(first.len) / DESCRIPTOR_BYTES) as u16;
        let mut index = 0;
        while index < entries && chain.len() <= usize::from(entries) {
            let descriptor = read_descriptor(first.address, index);
            if descriptor.flags & DESC_F_INDIRECT != 0 {
                problems.push("nested indirect descriptor".to_string());
            }
            chain.push(descriptor);
            if descriptor.flags & DESC_F_NEXT == 0 {
                break;
            }
            index = descriptor.next;
        }
    } else {
        let mut descriptor = first;
        loop {
            chain.push(descriptor);
            if descriptor.flags & DESC_F_NEXT == 0 || chain.len() > usize::from(size) {
                break;
            }
            descriptor = read_descriptor(queue.descriptors, descriptor.next % size);
        }
    }

    let mut request = HeldRequest {
        head,
        kind: u32::MAX,
        sector: 0,
        data: Vec::new(),
        status_address: None,
        forced_status: None,
    };
    let (Some(header), Some(status)) = (chain.first().copied(), chain.last().copied()) else {
        state.problems.push("empty chain".to_string());
        return request;
    };
    if chain.len() < 2 {
        problems.push(format!("a chain of {} descriptors", chain.len()));
    }
    if header.len != HEADER_BYTES || header.flags & DESC_F_WRITE != 0 {
        problems.push(format!(
            "header descriptor of {} bytes, flags {:#x}",
            header.len, header.flags
        ));
    }
    if status.len != 1 || status.flags & DESC_F_WRITE == 0 {
        problems.push(format!(
            "status descriptor of {} bytes, flags {:#x}",
            status.len, status.flags
        ));
    } else {
        request.status_address = Some(status.address);
    }
    let header_bytes = read_bytes(header.address, HEADER_BYTES as usize);
    request.kind = u32::from_le_bytes(header_bytes[0..4].try_into().unwrap());
    let reserved = u32::from_le_bytes(header_bytes[4..8].try_into().unwrap());
    request.sector = u64::from_le_bytes(header_bytes[8..16].try_into().unwrap());
    if reserved != 0 {
        problems.push(format!("reserved field {reserved:#x}"));
    }
    let data_descriptors = if chain.len() > 2 {
        &chain[1..chain.len() - 1]
    } else {
        &[][..]
    };
    let data_len: u64 = data_descriptors.iter().map(|d| u64::from(d.len)).sum();
    request.data = data_descriptors
        .iter()
        .map(|d| (d.address, d.len, d.flags & DESC_F_WRITE != 0))
        .collect();
    match request.kind {
        REQUEST_IN | REQUEST_OUT => {
            let device_writes = request.kind == REQUEST_IN;
            if data_descriptors.is_empty() || data_len == 0 || !data_len.is_multiple_of(SECTOR) {
                problems.push(format!("data of {data_len} bytes"));
            }
            if data_descriptors
                .iter()
                .any(|d| (d.flags & DESC_F_WRITE != 0) != device_writes)
            {
                problems.push("data descriptor in the wrong direction".to_string());
            }
            let end = request.sector.checked_add(data_len / SECTOR);
            if end.is_none_or(|end| end > state_capacity(state)) {
                problems.push(format!(
                    "sectors {}+{} beyond the disk",
                    request.sector,
                    data_len / SECTOR
                ));
            }
            if request.kind == REQUEST_OUT && state.driver_features & features::RO != 0 {
                problems.push("a write to a read-only device".to_string());
            }
        }
        REQUEST_FLUSH => {
            if !data_descriptors.is_empty() {
                problems.push("a flush with data".to_string());
            }
            if request.sector != 0 {
                problems.push(format!("a flush at sector {}", request.sector));
            }
        }
        other => problems.push(format!("request type {other}")),
    }
    state.seen.push(SeenRequest {
        kind: request.kind,
        sector: request.sector,
        data_len: data_len as u32,
        indirect,
    });
    if !problems.is_empty() {
        request.forced_status = Some(STATUS_IOERR);
        state.problems.extend(problems);
    }
    request
}

fn state_capacity(state: &DeviceState) -> u64 {
    state.disk.len() as u64 / SECTOR
}

/// Serves and completes `batch` in order; returns whether to interrupt.
fn complete(
    _shared: &Shared,
    state: &mut DeviceState,
    queue: QueueAddresses,
    batch: Vec<HeldRequest>,
) -> bool {
    let size = queue.size as u16;
    let old_used = state.used_idx;
    for request in batch {
        let (status, written) = serve(state, &request);
        if let Some(address) = request.status_address {
            write_bytes(address, &[status]);
        }
        let slot = state.used_idx % size;
        let element = queue.device_area + 4 + 8 * u64::from(slot);
        write_bytes(element, &u32::from(request.head).to_le_bytes());
        write_bytes(element + 4, &(written + 1).to_le_bytes());
        state.used_idx = state.used_idx.wrapping_add(1);
        fence(Ordering::SeqCst);
        store_u16(queue.device_area + 2, state.used_idx);
    }
    fence(Ordering::SeqCst);
    if state.driver_features & features::RING_EVENT_IDX != 0 {
        let used_event = load_u16(queue.driver_area + 4 + 2 * u64::from(size));
        let new = state.used_idx;
        // vring_need_event: the driver asked to be told when entry `used_event` is used.
        new.wrapping_sub(used_event).wrapping_sub(1) < new.wrapping_sub(old_used)
    } else {
        load_u16(queue.driver_area) & 1 == 0
    }
}

/// Serves one request against the disk: its status and the bytes written to the
/// driver's buffers.
fn serve(state: &mut DeviceState, request: &HeldRequest) -> (u8, u32) {
    if let Some(status) = request.forced_status {
        return (status, 0);
    }
    match request.kind {
        REQUEST_FLUSH => {
            state.flushes += 1;
            (state.policy.flush_status.unwrap_or(STATUS_OK), 0)
        }
        REQUEST_IN | REQUEST_OUT => {
            if let Some((sector, status)) = state.policy.fail_sector
                && sector == request.sector
            {
                return (status, 0);
            }
            let mut offset = usize::try_from(request.sector * SECTOR).unwrap();
            let mut written = 0;
            for &(address, len, _) in &request.data {
                let len_bytes = len as usize;
                if request.kind == REQUEST_IN {
                    write_bytes(address, &state.disk[offset..offset + len_bytes]);
                    written += len;
                } else {
                    let bytes = read_bytes(address, len_bytes);
                    state.disk[offset..offset + len_bytes].copy_from_slice(&bytes);
                }
                offset += len_bytes;
            }
            (STATUS_OK, written)
        }
        _ => (STATUS_UNSUPP, 0),
    }
}

/// Whether `QUEUE_SIZE` is what the fake expects (a compile-time sanity check).
const _: () = assert!(QUEUE_SIZE == 16);
