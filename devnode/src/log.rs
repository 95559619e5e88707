//! The dev node's log: lines on standard error, filtered by level (`-debug`, `-quiet`).

#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub enum LogLevel {
    Error,
    Info,
    Debug,
}

/// Writes `msg` when `level` is within `max`.
pub fn log(level: LogLevel, max: LogLevel, msg: &str) {
    if level <= max {
        eprintln!("twister-devnode: {msg}");
    }
}
