//! The command line's parts: its grammar ([`args`]) and how it shows a run's progress ([`print`]).

pub mod args;
pub mod print;
