//! Host tests: Debian's real libraries, objects gcc builds at test time, and bad input.

mod gcc;
mod gcc_linking;
mod malformed;
mod real_libraries;
