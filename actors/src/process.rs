//! A process's CPU time and resident memory, read from `/proc` (Linux).
//!
//! Health probes read their own process; load tools read the process they
//! drive. Both want the same two figures, read the same way.

/// Which process: this one, or another by pid.
#[derive(Debug, Clone, Copy)]
pub enum Process {
    /// The calling process.
    Current,
    /// Another process, by its pid.
    Pid(u32),
}

impl Process {
    fn file(self, name: &str) -> Option<String> {
        let path = match self {
            Process::Current => format!("/proc/self/{name}"),
            Process::Pid(pid) => format!("/proc/{pid}/{name}"),
        };
        std::fs::read_to_string(path).ok()
    }

    /// CPU time used so far (user + system), in seconds; 0 if unreadable.
    pub fn cpu_seconds(self) -> f64 {
        let Some(stat) = self.file("stat") else {
            return 0.0;
        };
        // Fields after the command name, which is in parentheses.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        // utime and stime are fields 14 and 15 of the line, 12 and 13 here,
        // in USER_HZ ticks of 1/100 s.
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (ticks(11) + ticks(12)) / 100.0
    }

    /// Resident memory, in bytes; 0 if unreadable.
    pub fn rss_bytes(self) -> u64 {
        self.file("status")
            .and_then(|status| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|v| v.split_whitespace().next())
                    .and_then(|v| v.parse::<u64>().ok())
            })
            .map_or(0, |kib| kib * 1024)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_and_nothing_for_a_missing_one() {
        // Some work, so that the CPU time is not still zero.
        let sum: u64 = (0..5_000_000u64).map(|n| n % 7).sum();
        assert!(sum > 0);
        assert!(Process::Current.cpu_seconds() > 0.0);
        assert!(Process::Current.rss_bytes() > 1024 * 1024);
        let own = Process::Pid(std::process::id());
        assert!(own.rss_bytes() > 0);
        let gone = Process::Pid(u32::MAX);
        assert_eq!(gone.cpu_seconds(), 0.0);
        assert_eq!(gone.rss_bytes(), 0);
    }
}
