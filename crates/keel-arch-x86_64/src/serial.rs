//! The 16550 UART on COM1 (port 0x3f8): the kernel console.
//!
//! [`with_console`] lends the locked, interrupt-safe writer the logger uses. Fatal paths
//! (exception reports, panics) use [`emergency_writer`], which takes no lock: by the
//! time they run, whoever held the lock may never release it.

use core::fmt;
use spin::Mutex;
use x86_64::instructions::port::Port;

const COM1: u16 = 0x3f8;
/// Line status register bit: transmit holding register empty.
const LINE_STATUS_TRANSMIT_EMPTY: u8 = 1 << 5;

/// A COM1 writer. Carries no state: the UART is the state.
#[derive(Debug)]
pub struct SerialPort {
    _private: (),
}

impl SerialPort {
    fn write_byte(&mut self, byte: u8) {
        let mut line_status: Port<u8> = Port::new(COM1 + 5);
        let mut data: Port<u8> = Port::new(COM1);
        // Bounded wait: a missing or wedged UART must not hang the kernel.
        for _ in 0..100_000 {
            // SAFETY: reading COM1's line status register has no side effect.
            if unsafe { line_status.read() } & LINE_STATUS_TRANSMIT_EMPTY != 0 {
                break;
            }
            core::hint::spin_loop();
        }
        // SAFETY: writing the data register sends one byte; COM1 is ours alone.
        unsafe { data.write(byte) };
    }
}

impl SerialPort {
    /// Writes `bytes` as they are, `\n` as `\r\n` (a terminal's line end).
    pub fn write_bytes(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            if byte == b'\n' {
                self.write_byte(b'\r');
            }
            self.write_byte(byte);
        }
    }
}

impl fmt::Write for SerialPort {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        self.write_bytes(text.as_bytes());
        Ok(())
    }
}

static CONSOLE: Mutex<SerialPort> = Mutex::new(SerialPort { _private: () });

/// Programs COM1 for 115200 baud, 8N1, FIFOs on, interrupts off.
pub fn init() {
    let settings: [(u16, u8); 7] = [
        (1, 0x00), // interrupt enable: none
        (3, 0x80), // line control: DLAB on to set the divisor
        (0, 0x01), // divisor low: 115200 baud
        (1, 0x00), // divisor high
        (3, 0x03), // line control: 8 bits, no parity, one stop bit, DLAB off
        (2, 0xc7), // FIFO control: enable, clear, 14-byte threshold
        (4, 0x03), // modem control: DTR, RTS
    ];
    for (offset, value) in settings {
        // SAFETY: these are COM1's standard configuration registers; nothing else uses
        // the port during boot.
        unsafe { Port::<u8>::new(COM1 + offset).write(value) };
    }
}

/// Runs `f` with the console locked and interrupts disabled (so an interrupt handler
/// that logs cannot deadlock against the code it interrupted).
pub fn with_console<R>(f: impl FnOnce(&mut SerialPort) -> R) -> R {
    x86_64::instructions::interrupts::without_interrupts(|| f(&mut CONSOLE.lock()))
}

/// A lock-free writer for fatal paths. Output may interleave with a writer that held the
/// lock, which beats losing the crash report.
pub fn emergency_writer() -> SerialPort {
    SerialPort { _private: () }
}

/// Prints to the console, like `print!`.
#[macro_export]
macro_rules! kprint {
    ($($arg:tt)*) => {
        $crate::serial::with_console(|port| {
            let _ = core::fmt::Write::write_fmt(port, format_args!($($arg)*));
        })
    };
}

/// Prints a line to the console, like `println!`.
#[macro_export]
macro_rules! kprintln {
    () => { $crate::kprint!("\n") };
    ($($arg:tt)*) => { $crate::kprint!("{}\n", format_args!($($arg)*)) };
}
