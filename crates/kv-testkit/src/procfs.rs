//! What /proc says of a process: its resident memory and its open file descriptors.

/// `VmRSS` and `VmHWM` (resident now and at its peak) of process `pid`, in bytes; 0 when gone.
pub fn rss_bytes(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map_or(0, |kib| kib * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// File descriptors process `pid` holds open; 0 when gone.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count)
}

/// One sample of each named process, taken by [`Samples::take`].
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub rss_bytes: u64,
    pub fds: usize,
}

/// Samples of named processes over time.
#[derive(Debug, Default)]
pub struct Samples {
    pub processes: Vec<(String, u32)>,
    pub taken: Vec<(std::time::Instant, Vec<Sample>)>,
}

impl Samples {
    pub fn new(processes: Vec<(String, u32)>) -> Samples {
        Samples {
            processes,
            taken: Vec::new(),
        }
    }

    pub fn take(&mut self) {
        let samples = self
            .processes
            .iter()
            .map(|(_, pid)| Sample {
                rss_bytes: rss_bytes(*pid).0,
                fds: open_fds(*pid),
            })
            .collect();
        self.taken.push((std::time::Instant::now(), samples));
    }
}
