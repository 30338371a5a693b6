//! What the bench reads about the server process (CPU time, resident memory) and about the
//! machine (time the hypervisor took away), from /proc.

use std::time::Duration;

/// CPU time (user + system) the process has used so far.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(ticks(utime + stime))
}

/// Steal time so far, summed over every CPU: while it grows, a virtual machine's CPUs were
/// running someone else, and a run's latency and CPU figures say more about the host than about
/// the server. None where /proc/stat has no steal column.
pub fn steal_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let all = stat.lines().next()?.strip_prefix("cpu ")?;
    // user nice system idle iowait irq softirq steal ...
    let steal: u64 = all.split_whitespace().nth(7)?.parse().ok()?;
    Some(ticks(steal))
}

/// Linux reports in clock ticks of 1/100 s on every platform natter runs on.
fn ticks(n: u64) -> Duration {
    Duration::from_millis(n * 10)
}

/// What a step's JSON line reports as `steal_ms`: the steal time between two readings.
pub fn steal_ms(before: Option<Duration>) -> Option<u64> {
    Some(steal_time()?.saturating_sub(before?).as_millis() as u64)
}

/// Resident set size in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
}
