//! `leasehold dump`.

use crate::cli::DumpArgs;
use crate::open::open_lockspace;
use crate::out::outln;
use anyhow::Result;
use lease::device::{self, Dump, LeaseEntry};
use lease::format::{HostRecord, LeaderRecord, FORMAT_VERSION};
use lease::timeouts::Timeouts;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Widths of the host table's columns (the whole row fits 80 columns).
const HOST_NAME_COLUMNS: usize = 16;
/// Width of the resource table's name column.
const LEASE_NAME_COLUMNS: usize = 22;

pub fn run(args: &DumpArgs) -> Result<()> {
    let (disk, _) = open_lockspace(&args.device)?;
    let dump = device::dump(disk.as_ref())?;
    let moved = if args.settle {
        let wait_ms = settle_ms(&dump);
        std::thread::sleep(std::time::Duration::from_millis(wait_ms));
        let again = device::dump(disk.as_ref())?;
        Some(moved_hosts(&dump, &again))
    } else {
        None
    };
    let states = host_states(&dump, moved.as_ref());
    if args.json {
        outln!(
            "{}",
            serde_json::to_string_pretty(&to_json(&dump, &states, args.all))?
        );
    } else {
        print_tables(&dump, &states, args.all, moved.is_some());
    }
    Ok(())
}

/// How long `--settle` waits between its two reads: a renewal interval
/// plus an io_timeout of the slowest host (its renewal may take that long
/// to land), so every host that renews at all has moved its record.
fn settle_ms(dump: &Dump) -> u64 {
    let io_timeout_ms = dump
        .hosts
        .iter()
        .filter_map(|h| h.record.as_ref())
        .filter(|r| !r.is_unused())
        .map(|r| r.io_timeout_ms)
        .chain(std::iter::once(dump.header.io_timeout_ms))
        .max()
        .unwrap_or(dump.header.io_timeout_ms);
    let timeouts = Timeouts::from_io_timeout_ms(io_timeout_ms);
    timeouts.renew_interval_ms + timeouts.io_timeout_ms
}

/// The hosts whose record changed between two reads.
fn moved_hosts(first: &Dump, second: &Dump) -> BTreeMap<u32, bool> {
    first
        .hosts
        .iter()
        .zip(&second.hosts)
        .map(|(a, b)| {
            let moved = match (&a.record, &b.record) {
                (Some(a), Some(b)) => {
                    a.timestamp_ms != b.timestamp_ms || a.generation != b.generation
                }
                _ => false,
            };
            (a.host_id.get(), moved)
        })
        .collect()
}

/// Each host's state as this reader can judge it: from its flags, and
/// with two reads (`moved`) whether it renews. A host whose record says
/// nothing and that was read once is "?".
fn host_states(dump: &Dump, moved: Option<&BTreeMap<u32, bool>>) -> BTreeMap<u32, &'static str> {
    dump.hosts
        .iter()
        .map(|h| {
            let state = match (&h.record, &h.error) {
                (_, Some(_)) => "unusable",
                (None, None) => "?",
                (Some(r), None) if r.is_unused() => "unused",
                (Some(r), None) => {
                    let moved = moved.and_then(|m| m.get(&h.host_id.get()).copied());
                    match moved {
                        // A record that moves is a running host, whatever
                        // its flags say of earlier generations.
                        Some(true) => "live",
                        _ if r.flags.released => "released",
                        _ if r.generation_is_over(r.generation) => "fenced",
                        Some(false) => "silent",
                        None => "?",
                    }
                }
            };
            (h.host_id.get(), state)
        })
        .collect()
}

/// `name` cut to `columns` characters, its end marked with `~`.
fn fit(name: &str, columns: usize) -> String {
    if name.chars().count() <= columns {
        return name.to_string();
    }
    let mut cut: String = name.chars().take(columns.saturating_sub(1)).collect();
    cut.push('~');
    cut
}

fn host_used(record: &Option<HostRecord>, error: &Option<String>) -> bool {
    error.is_some() || record.as_ref().is_some_and(|r| !r.is_unused())
}

fn lease_used(entry: &LeaseEntry) -> bool {
    entry.error.is_some()
        || entry
            .leader
            .as_ref()
            .is_some_and(|l| l.owner.is_some() || !l.name.is_empty())
}

fn host_flags(record: &HostRecord) -> Vec<&'static str> {
    let mut flags = Vec::new();
    if record.flags.released {
        flags.push("released");
    }
    if record.flags.fenced {
        flags.push("fenced");
    }
    if record.flags.watchdog {
        flags.push("watchdog");
    }
    flags
}

/// The same flags, short, for the table: rel, fen, wd.
fn host_flags_short(record: &HostRecord) -> String {
    let flags: Vec<&str> = host_flags(record)
        .into_iter()
        .map(|flag| match flag {
            "released" => "rel",
            "fenced" => "fen",
            "watchdog" => "wd",
            other => other,
        })
        .collect();
    if flags.is_empty() {
        "-".to_string()
    } else {
        flags.join(",")
    }
}

fn leader_flags(entry: &LeaseEntry, leader: &LeaderRecord) -> Vec<&'static str> {
    if leader.owner.is_some() && entry.holder.is_none() {
        vec!["released"]
    } else {
        Vec::new()
    }
}

fn lease_json(entry: &LeaseEntry) -> Value {
    let base = json!({
        "index": entry.location.index,
        "offset_bytes": entry.location.leader_offset_bytes,
    });
    let mut value = base;
    if let Some(leader) = &entry.leader {
        value["name"] = json!(leader.name);
        value["owner_host_id"] = json!(leader.owner.map(|o| o.host_id.get()));
        value["owner_generation"] = json!(leader.owner.map(|o| o.generation));
        value["lver"] = json!(leader.lver);
        value["flags"] = json!(leader_flags(entry, leader));
        value["held"] = json!(entry.holder.is_some());
        value["timestamp_ms"] = json!(leader.timestamp_ms);
    }
    value["error"] = json!(entry.error);
    value
}

fn to_json(dump: &Dump, states: &BTreeMap<u32, &'static str>, all: bool) -> Value {
    let g = &dump.header.geometry;
    let hosts: Vec<Value> = dump
        .hosts
        .iter()
        .filter(|h| all || host_used(&h.record, &h.error))
        .map(|h| {
            let mut value = json!({
                "host_id": h.host_id.get(),
                "offset_bytes": h.offset_bytes,
                "state": states.get(&h.host_id.get()).copied().unwrap_or("?"),
            });
            if let Some(r) = &h.record {
                value["name"] = json!(r.host_name);
                value["generation"] = json!(r.generation);
                value["timestamp_ms"] = json!(r.timestamp_ms);
                value["io_timeout_ms"] = json!(r.io_timeout_ms);
                value["flags"] = json!(host_flags(r));
                value["generation_floor"] = json!(r.generation_floor);
                value["fenced_generation"] = json!(r.fenced_generation);
                value["fencer_host_id"] = json!(r.fencer_host_id);
                value["capacity"] = json!(r.capacity);
                value["shared_settings"] = json!(r.shared_settings);
            }
            value["error"] = json!(h.error);
            value
        })
        .collect();
    let resources: Vec<Value> = dump
        .resources
        .iter()
        .filter(|e| all || lease_used(e))
        .map(|e| {
            let mut v = lease_json(e);
            v["slot"] = v["index"].take();
            if let Some(map) = v.as_object_mut() {
                map.remove("index");
            }
            v
        })
        .collect();
    let fence_leases: Vec<Value> = dump
        .fence_leases
        .iter()
        .filter(|e| all || lease_used(e))
        .map(|e| {
            let mut v = lease_json(e);
            v["victim_host_id"] = v["index"].take();
            if let Some(map) = v.as_object_mut() {
                map.remove("index");
                map.remove("name");
            }
            v
        })
        .collect();
    json!({
        "device": dump.device,
        "lockspace": dump.header.lockspace,
        "format_version": FORMAT_VERSION,
        "sector_size_bytes": g.sector_size_bytes(),
        "max_hosts": g.max_hosts(),
        "max_resources": g.max_resources(),
        "payload_size_bytes": g.payload_size_bytes(),
        "io_timeout_ms": dump.header.io_timeout_ms,
        "device_size_bytes": g.device_size_bytes(),
        "hosts": hosts,
        "resources": resources,
        "fence_leases": fence_leases,
    })
}

fn print_tables(dump: &Dump, states: &BTreeMap<u32, &'static str>, all: bool, settled: bool) {
    let g = &dump.header.geometry;
    outln!("device     {}", dump.device);
    outln!(
        "lockspace  {}  (format v{FORMAT_VERSION}, {}-byte sectors, io_timeout {} ms)",
        dump.header.lockspace,
        g.sector_size_bytes(),
        dump.header.io_timeout_ms
    );
    outln!(
        "layout     {} hosts, {} slots, {}-byte payloads, {} bytes",
        g.max_hosts(),
        g.max_resources(),
        g.payload_size_bytes(),
        g.device_size_bytes()
    );
    outln!();
    outln!("hosts:");
    outln!(
        "  {:>4}  {:<HOST_NAME_COLUMNS$} {:<8} {:>10} {:>6}  {:<10} {:>12}",
        "ID",
        "NAME",
        "STATE",
        "GENERATION",
        "IO_MS",
        "FLAGS",
        "OFFSET"
    );
    for h in dump
        .hosts
        .iter()
        .filter(|h| all || host_used(&h.record, &h.error))
    {
        match (&h.record, &h.error) {
            (Some(r), _) => outln!(
                "  {:>4}  {:<HOST_NAME_COLUMNS$} {:<8} {:>10} {:>6}  {:<10} {:>12}",
                h.host_id.get(),
                fit(&r.host_name, HOST_NAME_COLUMNS),
                states.get(&h.host_id.get()).copied().unwrap_or("?"),
                r.generation,
                r.io_timeout_ms,
                host_flags_short(r),
                h.offset_bytes,
            ),
            (None, Some(e)) => outln!(
                "  {:>4}  UNUSABLE at offset {}: {e}",
                h.host_id.get(),
                h.offset_bytes
            ),
            (None, None) => {}
        }
    }
    if !settled && states.values().any(|s| *s == "?") {
        outln!("  (STATE ?: one read cannot tell live from silent; add --settle)");
    }
    outln!();
    outln!("resources:");
    print_leases(&dump.resources, all, "SLOT");
    let fenced: Vec<&LeaseEntry> = dump
        .fence_leases
        .iter()
        .filter(|e| all || lease_used(e))
        .collect();
    if !fenced.is_empty() {
        outln!();
        outln!("fence leases:");
        print_leases(&dump.fence_leases, all, "HOST");
    }
}

fn print_leases(entries: &[LeaseEntry], all: bool, index_label: &str) {
    outln!(
        "  {:>5}  {:<LEASE_NAME_COLUMNS$} {:>5} {:>10} {:>6}  {:<8} {:>12}",
        index_label,
        "NAME",
        "OWNER",
        "GENERATION",
        "LVER",
        "FLAGS",
        "OFFSET"
    );
    for e in entries.iter().filter(|e| all || lease_used(e)) {
        match (&e.leader, &e.error) {
            (Some(l), _) => outln!(
                "  {:>5}  {:<LEASE_NAME_COLUMNS$} {:>5} {:>10} {:>6}  {:<8} {:>12}",
                e.location.index,
                if l.name.is_empty() {
                    "-".to_string()
                } else {
                    fit(&l.name, LEASE_NAME_COLUMNS)
                },
                l.owner
                    .map(|o| o.host_id.to_string())
                    .unwrap_or_else(|| "-".to_string()),
                l.owner
                    .map(|o| o.generation.to_string())
                    .unwrap_or_else(|| "-".to_string()),
                l.lver,
                leader_flags(e, l).join(","),
                e.location.leader_offset_bytes
            ),
            (None, Some(err)) => outln!(
                "  {:>5}  UNUSABLE at offset {}: {err}",
                e.location.index,
                e.location.leader_offset_bytes
            ),
            (None, None) => {}
        }
    }
}
