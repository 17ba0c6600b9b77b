//! The host collector: this machine's CPU, load, memory, swap, disks, network interfaces and
//! temperatures as rows of `(host, metric, device, value, ts)`, the schema of a `FROM HOST`
//! source. `tocsin agent` pushes the same rows from other machines.
//!
//! | metric | device | value |
//! |---|---|---|
//! | `cpu_percent` | `''` (all CPUs) or a CPU (`cpu0`, ...) | busy %, 0–100 |
//! | `load_1m`, `load_5m`, `load_15m` | `''` | load average |
//! | `mem_total_bytes`, `mem_used_bytes`, `mem_used_percent` | `''` | memory |
//! | `swap_total_bytes`, `swap_used_bytes`, `swap_used_percent` | `''` | swap (percent only when there is swap) |
//! | `disk_total_bytes`, `disk_free_bytes`, `disk_used_percent` | mount point | per mounted file system |
//! | `net_rx_bytes`, `net_tx_bytes`, `net_rx_errors`, `net_tx_errors` | interface | counters since boot |
//! | `temperature_celsius` | sensor label | where the machine has sensors |
//!
//! With processes (the default), each sample also gives rows of `<source>_processes`
//! ([`processes_schema`]): the 20 processes using the most CPU, the 20 using the most memory, and
//! every process whose name the `processes` option lists.

pub mod connector;

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use sysinfo::{
    Components, Disks, Networks, ProcessRefreshKind, ProcessesToUpdate, System, UpdateKind,
};

/// The suffix of a host source's process relation: `host` comes with `host_processes`.
pub const PROCESSES_SUFFIX: &str = "_processes";

/// How many of the busiest processes, by CPU and by memory, each sample keeps.
pub const TOP_PROCESSES: usize = 20;

/// A process's command line is cut to this many bytes.
const MAX_CMD: usize = 512;

/// The schema of `<source>_processes`.
pub fn processes_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("host", DataType::Utf8, true),
        Field::new("pid", DataType::Int64, true),
        Field::new("name", DataType::Utf8, true),
        Field::new("cmd", DataType::Utf8, true),
        Field::new("cpu_percent", DataType::Float64, true),
        Field::new("mem_bytes", DataType::Int64, true),
        Field::new("state", DataType::Utf8, true),
        Field::new("ts", crate::source::ts_type(), true),
    ]))
}

/// Which processes a sample keeps: the `processes` option. `None` for `processes = 'none'`
/// (no process rows, no `_processes` relation); otherwise the names always kept besides the
/// busiest ([`TOP_PROCESSES`] by CPU and by memory).
pub fn process_names(option: Option<&str>) -> Option<Vec<String>> {
    match option.map(str::trim) {
        Some(o) if o.eq_ignore_ascii_case("none") => None,
        Some(o) => Some(
            o.split(',')
                .map(|n| n.trim().to_string())
                .filter(|n| !n.is_empty())
                .collect(),
        ),
        None => Some(Vec::new()),
    }
}

/// The schema of a `FROM HOST` source.
pub fn host_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("host", DataType::Utf8, true),
        Field::new("metric", DataType::Utf8, true),
        Field::new("device", DataType::Utf8, true),
        Field::new("value", DataType::Float64, true),
        Field::new("ts", crate::source::ts_type(), true),
    ]))
}

/// Collects samples of this host. CPU usage is measured between two samples, so the first is
/// taken when the collector is made.
pub struct HostCollector {
    host: String,
    system: System,
    disks: Disks,
    networks: Networks,
    components: Components,
}

impl Default for HostCollector {
    fn default() -> Self {
        Self::new()
    }
}

impl HostCollector {
    pub fn new() -> Self {
        let mut system = System::new();
        system.refresh_cpu_usage();
        system.refresh_processes_specifics(ProcessesToUpdate::All, true, process_kind());
        HostCollector {
            host: System::host_name().unwrap_or_else(|| "localhost".into()),
            system,
            disks: Disks::new_with_refreshed_list(),
            networks: Networks::new_with_refreshed_list(),
            components: Components::new_with_refreshed_list(),
        }
    }

    /// The host name rows carry.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// One sample of every metric, stamped `now_ms`.
    pub fn collect(&mut self, now_ms: i64) -> RecordBatch {
        let mut rows: Vec<(&'static str, String, f64)> = Vec::new();
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        rows.push((
            "cpu_percent",
            String::new(),
            self.system.global_cpu_usage() as f64,
        ));
        for cpu in self.system.cpus() {
            rows.push((
                "cpu_percent",
                cpu.name().to_string(),
                cpu.cpu_usage() as f64,
            ));
        }
        let load = System::load_average();
        rows.push(("load_1m", String::new(), load.one));
        rows.push(("load_5m", String::new(), load.five));
        rows.push(("load_15m", String::new(), load.fifteen));
        let (total, used) = (self.system.total_memory(), self.system.used_memory());
        rows.push(("mem_total_bytes", String::new(), total as f64));
        rows.push(("mem_used_bytes", String::new(), used as f64));
        if total > 0 {
            rows.push(("mem_used_percent", String::new(), percent(used, total)));
        }
        let (total, used) = (self.system.total_swap(), self.system.used_swap());
        rows.push(("swap_total_bytes", String::new(), total as f64));
        rows.push(("swap_used_bytes", String::new(), used as f64));
        if total > 0 {
            rows.push(("swap_used_percent", String::new(), percent(used, total)));
        }
        self.disks.refresh(true);
        let mut mounts = BTreeSet::new();
        for d in self.disks.list() {
            let mount = d.mount_point().to_string_lossy().into_owned();
            let total = d.total_space();
            if total == 0 || !mounts.insert(mount.clone()) {
                continue;
            }
            let free = d.available_space();
            rows.push(("disk_total_bytes", mount.clone(), total as f64));
            rows.push(("disk_free_bytes", mount.clone(), free as f64));
            rows.push((
                "disk_used_percent",
                mount,
                percent(total.saturating_sub(free), total),
            ));
        }
        self.networks.refresh(true);
        let mut ifaces: Vec<_> = self.networks.list().iter().collect();
        ifaces.sort_by(|a, b| a.0.cmp(b.0));
        for (name, data) in ifaces {
            rows.push(("net_rx_bytes", name.clone(), data.total_received() as f64));
            rows.push((
                "net_tx_bytes",
                name.clone(),
                data.total_transmitted() as f64,
            ));
            rows.push((
                "net_rx_errors",
                name.clone(),
                data.total_errors_on_received() as f64,
            ));
            rows.push((
                "net_tx_errors",
                name.clone(),
                data.total_errors_on_transmitted() as f64,
            ));
        }
        self.components.refresh(true);
        for c in self.components.list() {
            if let Some(t) = c.temperature().filter(|t| t.is_finite()) {
                rows.push(("temperature_celsius", c.label().to_string(), t as f64));
            }
        }
        let n = rows.len();
        RecordBatch::try_new(
            host_schema(),
            vec![
                Arc::new(StringArray::from(vec![self.host.as_str(); n])),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter_values(
                    rows.iter().map(|r| r.1.as_str()),
                )),
                Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.2))),
                Arc::new(TimestampMillisecondArray::from(vec![now_ms; n]).with_timezone("UTC")),
            ],
        )
        .expect("host rows match the host schema")
    }

    /// One sample of the processes: the busiest [`TOP_PROCESSES`] by CPU and by memory, and those
    /// named in `names`, stamped `now_ms`. CPU is a percentage of one CPU, as `top` shows it,
    /// measured since the previous sample. Threads are not listed apart from their process.
    pub fn processes(&mut self, names: &[String], now_ms: i64) -> RecordBatch {
        self.system
            .refresh_processes_specifics(ProcessesToUpdate::All, true, process_kind());
        let all: Vec<&sysinfo::Process> = self
            .system
            .processes()
            .values()
            .filter(|p| p.thread_kind().is_none())
            .collect();
        let mut keep: BTreeSet<usize> = BTreeSet::new();
        let mut order: Vec<usize> = (0..all.len()).collect();
        order.sort_by(|a, b| all[*b].cpu_usage().total_cmp(&all[*a].cpu_usage()));
        keep.extend(order.iter().take(TOP_PROCESSES));
        order.sort_by_key(|i| std::cmp::Reverse(all[*i].memory()));
        keep.extend(order.iter().take(TOP_PROCESSES));
        keep.extend((0..all.len()).filter(|i| {
            let name = all[*i].name().to_string_lossy();
            names.iter().any(|n| *n == name)
        }));
        let rows: Vec<&sysinfo::Process> = keep.into_iter().map(|i| all[i]).collect();
        let n = rows.len();
        let cmd = |p: &sysinfo::Process| {
            let mut c = p
                .cmd()
                .iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ");
            if c.len() > MAX_CMD {
                let mut end = MAX_CMD;
                while !c.is_char_boundary(end) {
                    end -= 1;
                }
                c.truncate(end);
            }
            c
        };
        RecordBatch::try_new(
            processes_schema(),
            vec![
                Arc::new(StringArray::from(vec![self.host.as_str(); n])),
                Arc::new(Int64Array::from_iter_values(
                    rows.iter().map(|p| i64::from(p.pid().as_u32())),
                )),
                Arc::new(StringArray::from_iter_values(
                    rows.iter().map(|p| p.name().to_string_lossy()),
                )),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|p| cmd(p)))),
                Arc::new(Float64Array::from_iter_values(
                    rows.iter().map(|p| f64::from(p.cpu_usage())),
                )),
                Arc::new(Int64Array::from_iter_values(
                    rows.iter()
                        .map(|p| i64::try_from(p.memory()).unwrap_or(i64::MAX)),
                )),
                Arc::new(StringArray::from_iter_values(
                    rows.iter()
                        .map(|p| p.status().to_string().to_ascii_lowercase()),
                )),
                Arc::new(TimestampMillisecondArray::from(vec![now_ms; n]).with_timezone("UTC")),
            ],
        )
        .expect("process rows match the processes schema")
    }
}

/// What a process sample reads of each process.
fn process_kind() -> ProcessRefreshKind {
    ProcessRefreshKind::nothing()
        .with_cpu()
        .with_memory()
        .with_cmd(UpdateKind::OnlyIfNotSet)
}

fn percent(part: u64, total: u64) -> f64 {
    part as f64 * 100.0 / total as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::AsArray;
    use arrow::datatypes::Float64Type;

    #[test]
    fn collects_the_documented_metrics() {
        let mut c = HostCollector::new();
        std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
        let b = c.collect(1_000);
        assert_eq!(b.schema(), host_schema());
        let metrics: BTreeSet<&str> = b.column(1).as_string::<i32>().iter().flatten().collect();
        for m in [
            "cpu_percent",
            "load_1m",
            "mem_total_bytes",
            "mem_used_percent",
            "disk_free_bytes",
            "net_rx_bytes",
        ] {
            assert!(metrics.contains(m), "{m} missing from {metrics:?}");
        }
        let values = b.column(3).as_primitive::<Float64Type>();
        let metric = b.column(1).as_string::<i32>();
        for i in 0..b.num_rows() {
            let v = values.value(i);
            assert!(v.is_finite() && v >= 0.0, "{} = {v}", metric.value(i));
            if metric.value(i).ends_with("_percent") {
                assert!(v <= 100.0, "{} = {v}", metric.value(i));
            }
        }
        assert!(b
            .column(0)
            .as_string::<i32>()
            .iter()
            .all(|h| h == Some(c.host())));
    }

    /// The process sample keeps the busiest processes and the named ones, this test's own
    /// process among them, with its pid, name, memory and a state.
    #[test]
    fn processes_keep_the_busiest_and_the_named() {
        let mut c = HostCollector::new();
        std::thread::sleep(sysinfo::MINIMUM_CPU_UPDATE_INTERVAL);
        let me = std::process::id() as i64;
        let my_name = sysinfo::System::new_all()
            .process(sysinfo::Pid::from_u32(me as u32))
            .map(|p| p.name().to_string_lossy().into_owned())
            .unwrap();
        let b = c.processes(std::slice::from_ref(&my_name), 7);
        assert_eq!(b.schema(), processes_schema());
        assert!(b.num_rows() >= 1 && b.num_rows() <= 2 * TOP_PROCESSES + 50);
        let pids = b.column(1).as_primitive::<arrow::datatypes::Int64Type>();
        let i = (0..b.num_rows())
            .find(|i| pids.value(*i) == me)
            .expect("this process is listed");
        assert_eq!(b.column(2).as_string::<i32>().value(i), my_name);
        assert!(
            b.column(5)
                .as_primitive::<arrow::datatypes::Int64Type>()
                .value(i)
                > 0
        );
        assert!(!b.column(6).as_string::<i32>().value(i).is_empty());
        assert!(b.column(4).as_primitive::<Float64Type>().value(i) >= 0.0);
        assert_eq!(process_names(Some("none")), None);
        assert_eq!(
            process_names(Some(" nginx, postgres ,")),
            Some(vec!["nginx".to_string(), "postgres".to_string()])
        );
        assert_eq!(process_names(None), Some(Vec::new()));
    }
}
