//! `CommitWindow`: whether SQLite's writer holds a group open for one more write before it
//! commits, and until when.
//!
//! Every commit pays a fixed price, whatever it holds: an `fdatasync` (three waits for the disk
//! on the benchmark machine) and the writer thread's wake-ups around it, 240–500 µs of CPU there.
//! Writes that arrive while a commit runs share the next one for free, but at a few hundred a
//! second they arrive between commits, and each pays alone. When writes come faster than one per
//! `max_delay`, the writer waits for the next one, up to two of the recent gaps between writes
//! and never longer than `max_delay` (PostgreSQL's `commit_delay` is the same idea): an
//! acknowledgement may come that much later, and a commit (and the fan-out of its events, whose
//! frames then share a `writev`) serves two writes or more.
//!
//! The wait is skipped where it cannot pay:
//! - when writes come slower than one per `max_delay` (a quiet server never waits);
//! - when the group already holds `FULL_ENOUGH` jobs (a busy server batches by itself);
//! - when waits keep gaining nothing: a client that sends one message at a time and waits for
//!   each acknowledgement sends its next only after the commit. After `FRUITLESS_LIMIT`
//!   fruitless waits in a row the writer does not wait for the next `PAUSE` groups.

use std::time::{Duration, Instant};

/// A group of this many writes commits at once: the commit's fixed price is already shared.
const FULL_ENOUGH: usize = 8;
/// Wait for about this many of the recent gaps between writes.
const GAPS_TO_WAIT: u32 = 2;
/// Fruitless waits in a row that stop the waiting. Writes from many clients arrive at random:
/// a wait of 1.2 gaps (600 writes/s under the 2 ms default) gains nothing three times in ten,
/// and sixteen such waits in a row come about once in 200 million.
const FRUITLESS_LIMIT: u32 = 16;
/// Groups committed without waiting once the waits proved fruitless. A client that waits for
/// each acknowledgement pays sixteen waits of 1.5 ms or so per 4,096 of its writes (0.7 ms
/// each on the benchmark machine): under 1% of its rate.
const PAUSE: u32 = 4096;

#[derive(Debug)]
pub struct CommitWindow {
    max_delay: Duration,
    /// The recent gap between two writes (a moving average), once there are two groups.
    gap: Option<Duration>,
    /// When the last group's first job arrived, and how many jobs it had.
    last_group: Option<(Instant, usize)>,
    fruitless: u32,
    paused: u32,
}

impl CommitWindow {
    /// `max_delay` zero: never wait.
    pub fn new(max_delay: Duration) -> CommitWindow {
        CommitWindow {
            max_delay,
            gap: None,
            last_group: None,
            fruitless: 0,
            paused: 0,
        }
    }

    /// A group began at `now` with `taken` jobs already at hand: until when to wait for the
    /// next, if at all. Call `waited` after a wait with what it gained, and `closed` once the
    /// group is complete.
    pub fn open(&mut self, now: Instant, taken: usize) -> Option<Instant> {
        if let Some((start, jobs)) = self.last_group {
            let sample = now.saturating_duration_since(start) / jobs.max(1) as u32;
            self.gap = Some(self.gap.map_or(sample, |gap| (gap * 3 + sample) / 4));
        }
        self.last_group = Some((now, taken));
        // A pause counts every group, so that it ends with the client that caused it.
        let paused = self.paused > 0;
        self.paused = self.paused.saturating_sub(1);
        let gap = self.gap.filter(|gap| *gap < self.max_delay)?;
        if taken >= FULL_ENOUGH || paused {
            return None;
        }
        Some(now + self.max_delay.min(gap * GAPS_TO_WAIT))
    }

    /// A wait ended, with the next job or without (at its deadline).
    pub fn waited(&mut self, gained: bool) {
        if gained {
            self.fruitless = 0;
            return;
        }
        self.fruitless += 1;
        if self.fruitless >= FRUITLESS_LIMIT {
            self.fruitless = 0;
            self.paused = PAUSE;
        }
    }

    /// The group holds `jobs` in all: the rate estimate counts every one of them.
    pub fn closed(&mut self, jobs: usize) {
        if let Some((_, taken)) = &mut self.last_group {
            *taken = jobs;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// Groups of `jobs` arriving every `every`, `count` of them; the last group's deadline.
    fn steady(
        window: &mut CommitWindow,
        start: Instant,
        every: Duration,
        count: u32,
    ) -> Option<Instant> {
        let mut deadline = None;
        for n in 0..count {
            deadline = window.open(start + every * n, 1);
            window.closed(1);
        }
        deadline
    }

    #[test]
    fn a_quiet_server_never_waits() {
        let mut window = CommitWindow::new(2 * MS);
        assert_eq!(steady(&mut window, Instant::now(), 10 * MS, 20), None);
    }

    #[test]
    fn sends_faster_than_the_delay_wait_two_gaps_and_never_longer_than_the_delay() {
        let start = Instant::now();
        let mut window = CommitWindow::new(2 * MS);
        let deadline = steady(&mut window, start, MS / 2, 20);
        assert_eq!(deadline, Some(start + MS / 2 * 19 + MS));
        let mut window = CommitWindow::new(2 * MS);
        let deadline = steady(&mut window, start, MS * 3 / 2, 20);
        assert_eq!(deadline, Some(start + MS * 3 / 2 * 19 + 2 * MS));
    }

    #[test]
    fn a_zero_delay_never_waits_and_a_full_group_does_not_either() {
        let start = Instant::now();
        let mut off = CommitWindow::new(Duration::ZERO);
        assert_eq!(steady(&mut off, start, MS / 10, 20), None);
        let mut window = CommitWindow::new(2 * MS);
        steady(&mut window, start, MS / 10, 20);
        assert!(window.open(start + 2 * MS, FULL_ENOUGH - 1).is_some());
        window.closed(FULL_ENOUGH - 1);
        assert_eq!(window.open(start + 3 * MS, FULL_ENOUGH), None);
    }

    #[test]
    fn fruitless_waits_pause_waiting_then_it_is_tried_again() {
        let start = Instant::now();
        let mut window = CommitWindow::new(2 * MS);
        let mut at = start;
        let mut next = |window: &mut CommitWindow| {
            at += MS / 2;
            let deadline = window.open(at, 1);
            window.closed(1);
            deadline
        };
        for _ in 0..10 {
            next(&mut window);
        }
        // Fruitless waits, but never enough in a row: the window keeps waiting.
        for _ in 0..3 {
            for _ in 0..FRUITLESS_LIMIT - 1 {
                assert!(next(&mut window).is_some());
                window.waited(false);
            }
            assert!(next(&mut window).is_some());
            window.waited(true);
        }
        for _ in 0..FRUITLESS_LIMIT {
            assert!(next(&mut window).is_some());
            window.waited(false);
        }
        for _ in 0..PAUSE {
            assert_eq!(next(&mut window), None);
        }
        assert!(next(&mut window).is_some(), "tried again after the pause");
    }
}
