//! CPU time by process group, read from /proc, so each phase can say where
//! the two cores went (API, workers, PostgreSQL, RabbitMQ, Redis, this
//! benchmark's own clients and SMTP sink).

use std::collections::BTreeMap;

/// Clock ticks per second of /proc/<pid>/stat (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

/// CPU seconds (user + system) by group.
#[derive(Clone, Default)]
pub struct CpuSnapshot(BTreeMap<&'static str, f64>);

fn group(comm: &str, pid: u32, own: u32) -> Option<&'static str> {
    if pid == own {
        return Some("bench (clients + sink)");
    }
    match comm {
        "notify-api" => Some("api"),
        "notify-worker" => Some("worker"),
        "postgres" => Some("postgresql"),
        "beam.smp" | "erl_child_setup" | "inet_gethost" | "epmd" => Some("rabbitmq"),
        "redis-server" => Some("redis"),
        _ => None,
    }
}

impl CpuSnapshot {
    pub fn take() -> CpuSnapshot {
        let own = std::process::id();
        let mut totals = BTreeMap::new();
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return CpuSnapshot(totals);
        };
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // "pid (comm) state ppid ..."; comm may hold spaces, so split at the last ')'.
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let Some(name) = group(&stat[open + 1..close], pid, own) else {
                continue;
            };
            let fields: Vec<&str> = stat[close + 2..].split(' ').collect();
            // utime and stime are fields 14 and 15 of the whole line.
            let ticks: f64 = [11, 12]
                .iter()
                .filter_map(|&i| fields.get(i).and_then(|v| v.parse::<f64>().ok()))
                .sum();
            *totals.entry(name).or_insert(0.0) += ticks / TICKS;
        }
        // Machine-wide idle and steal (time the hypervisor gave to other
        // guests): a run with much steal had less than two cores.
        if let Ok(stat) = std::fs::read_to_string("/proc/stat") {
            if let Some(line) = stat.lines().next() {
                let fields: Vec<f64> = line
                    .split_whitespace()
                    .skip(1)
                    .filter_map(|v| v.parse().ok())
                    .collect();
                if fields.len() > 7 {
                    totals.insert("(idle)", fields[3] / TICKS);
                    totals.insert("(steal)", fields[7] / TICKS);
                }
            }
        }
        CpuSnapshot(totals)
    }

    /// Prints CPU seconds used since `before`, and per 1,000 messages.
    /// Processes that exited between the two readings are not counted.
    pub fn report(&self, before: &CpuSnapshot, messages: usize, wall: f64) {
        let mut parts = Vec::new();
        let mut total = 0.0;
        for (name, after) in &self.0 {
            let used = (after - before.0.get(name).copied().unwrap_or(0.0)).max(0.0);
            if name.starts_with('(') {
                parts.push(format!("{name} {used:.1} s"));
                continue;
            }
            total += used;
            parts.push(format!(
                "{name} {used:.1} s ({:.0} ms/1k)",
                used * 1_000_000.0 / messages as f64
            ));
        }
        println!(
            "  cpu: {} — total {total:.1} s of {:.1} s available on {} cores",
            parts.join(", "),
            wall * cores() as f64,
            cores()
        );
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
