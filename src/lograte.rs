//! A per-worker limit on per-request decision log lines.
//!
//! A flood of bad requests must not become a flood of log lines: writing one
//! line per denial costs more CPU than refusing the request, and fills the
//! disks that operators rely on during an attack. The decision counters in
//! Envoy's stats stay complete; the log keeps the first `per_second` lines
//! of each second and says how many it left out (with the next line, or at
//! the next tick once the second is over).

/// What to do with one decision log line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Write it. `suppressed` lines were left out since the last written
    /// one: say so first when it is not zero.
    Write {
        /// Lines left out before this one.
        suppressed: u64,
    },
    /// Leave it out (counted, and reported with the next written line).
    Suppress,
}

/// Fixed one-second windows; pure (the caller passes the clock).
#[derive(Clone, Debug)]
pub struct LogLimiter {
    /// Lines written per second at most; 0 writes none.
    per_second: u32,
    /// The second being counted. Any other `now`, a clock stepped back
    /// included, starts a new one.
    window: u64,
    /// Lines written in `window`.
    used: u32,
    /// Lines left out since the last one reported, said with the next line
    /// written or taken by a tick.
    suppressed: u64,
}

impl LogLimiter {
    /// At most `per_second` lines per second; 0 writes none.
    pub fn new(per_second: u32) -> Self {
        LogLimiter {
            per_second,
            window: 0,
            used: 0,
            suppressed: 0,
        }
    }

    /// Decides about one line at `now` (seconds).
    pub fn admit(&mut self, now: u64) -> Admit {
        if self.per_second == 0 {
            // Off: nothing to say was left out either, once a second.
            return Admit::Suppress;
        }
        if now != self.window {
            self.window = now;
            self.used = 0;
        }
        if self.used < self.per_second {
            self.used += 1;
            let suppressed = std::mem::take(&mut self.suppressed);
            Admit::Write { suppressed }
        } else {
            self.suppressed = self.suppressed.saturating_add(1);
            Admit::Suppress
        }
    }

    /// The lines left out in a second that is over (`now` is later), taken
    /// so that they are reported once: a tick reports the tail of a flood
    /// that no later line would.
    pub fn take_left_out(&mut self, now: u64) -> u64 {
        if now == self.window {
            return 0;
        }
        std::mem::take(&mut self.suppressed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(target_arch = "wasm32")]
    use wasm_bindgen_test::wasm_bindgen_test as test;

    #[test]
    fn keeps_the_first_lines_of_each_second_and_counts_the_rest() {
        let mut l = LogLimiter::new(2);
        assert_eq!(l.admit(10), Admit::Write { suppressed: 0 });
        assert_eq!(l.admit(10), Admit::Write { suppressed: 0 });
        assert_eq!(l.admit(10), Admit::Suppress);
        assert_eq!(l.admit(10), Admit::Suppress);
        // Next second: the first line written reports what was left out.
        assert_eq!(l.admit(11), Admit::Write { suppressed: 2 });
        assert_eq!(l.admit(11), Admit::Write { suppressed: 0 });
        assert_eq!(l.admit(11), Admit::Suppress);
        assert_eq!(l.admit(15), Admit::Write { suppressed: 1 });
        // A tick in a later second takes what was left out, once.
        assert_eq!(l.admit(15), Admit::Write { suppressed: 0 });
        assert_eq!(l.admit(15), Admit::Suppress);
        assert_eq!(l.take_left_out(15), 0, "the second is not over");
        assert_eq!(l.take_left_out(16), 1);
        assert_eq!(l.take_left_out(17), 0);
        assert_eq!(l.admit(17), Admit::Write { suppressed: 0 });
    }

    #[test]
    fn zero_reports_no_left_out_lines_either() {
        // `decision_log_per_second: 0` turns the per-request lines off
        // (README); the tick must not then write "N decision log lines
        // left out" every second of traffic instead.
        let mut l = LogLimiter::new(0);
        for _ in 0..1_000 {
            assert_eq!(l.admit(10), Admit::Suppress);
        }
        assert_eq!(l.take_left_out(11), 0, "a line a second per worker");
    }

    #[test]
    fn zero_writes_nothing() {
        let mut l = LogLimiter::new(0);
        for t in 0..5 {
            assert_eq!(l.admit(t), Admit::Suppress);
        }
    }
}
