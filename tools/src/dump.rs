//! `leasehold dump`.

use crate::cli::DumpArgs;
use crate::open::open_lockspace;
use anyhow::Result;
use lease::device::{self, Dump, LeaseEntry};
use lease::format::{HostRecord, LeaderRecord, FORMAT_VERSION};
use serde_json::{json, Value};

pub fn run(args: &DumpArgs) -> Result<()> {
    let (disk, _) = open_lockspace(&args.device)?;
    let dump = device::dump(disk.as_ref())?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&to_json(&dump, args.all))?
        );
    } else {
        print_tables(&dump, args.all);
    }
    Ok(())
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

fn to_json(dump: &Dump, all: bool) -> Value {
    let g = &dump.header.geometry;
    let hosts: Vec<Value> = dump
        .hosts
        .iter()
        .filter(|h| all || host_used(&h.record, &h.error))
        .map(|h| {
            let mut value = json!({ "host_id": h.host_id.get(), "offset_bytes": h.offset_bytes });
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

fn print_tables(dump: &Dump, all: bool) {
    let g = &dump.header.geometry;
    println!("device     {}", dump.device);
    println!(
        "lockspace  {}  (format v{FORMAT_VERSION}, {}-byte sectors, io_timeout {} ms)",
        dump.header.lockspace,
        g.sector_size_bytes(),
        dump.header.io_timeout_ms
    );
    println!(
        "layout     {} hosts, {} resource slots, {}-byte payloads, {} bytes",
        g.max_hosts(),
        g.max_resources(),
        g.payload_size_bytes(),
        g.device_size_bytes()
    );
    println!();
    println!("hosts:");
    println!(
        "  {:>4}  {:<20} {:>10} {:>16} {:>8}  {:<18} {:>12}  {:<17}",
        "ID", "NAME", "GENERATION", "TIMESTAMP_MS", "IO_MS", "FLAGS", "OFFSET", "SETTINGS"
    );
    for h in dump
        .hosts
        .iter()
        .filter(|h| all || host_used(&h.record, &h.error))
    {
        match (&h.record, &h.error) {
            (Some(r), _) => println!(
                "  {:>4}  {:<20} {:>10} {:>16} {:>8}  {:<18} {:>12}  {:08x}/{:08x}",
                h.host_id.get(),
                r.host_name,
                r.generation,
                r.timestamp_ms,
                r.io_timeout_ms,
                host_flags(r).join(","),
                h.offset_bytes,
                r.shared_settings.failover_digest,
                r.shared_settings.cluster_digest
            ),
            (None, Some(e)) => println!(
                "  {:>4}  UNUSABLE at offset {}: {e}",
                h.host_id.get(),
                h.offset_bytes
            ),
            (None, None) => {}
        }
    }
    println!();
    println!("resources:");
    print_leases(&dump.resources, all, "SLOT");
    let fenced: Vec<&LeaseEntry> = dump
        .fence_leases
        .iter()
        .filter(|e| all || lease_used(e))
        .collect();
    if !fenced.is_empty() {
        println!();
        println!("fence leases:");
        print_leases(&dump.fence_leases, all, "HOST");
    }
}

fn print_leases(entries: &[LeaseEntry], all: bool, index_label: &str) {
    println!(
        "  {:>5}  {:<24} {:>6} {:>10} {:>6}  {:<9} {:>12}",
        index_label, "NAME", "OWNER", "GENERATION", "LVER", "FLAGS", "OFFSET"
    );
    for e in entries.iter().filter(|e| all || lease_used(e)) {
        match (&e.leader, &e.error) {
            (Some(l), _) => println!(
                "  {:>5}  {:<24} {:>6} {:>10} {:>6}  {:<9} {:>12}",
                e.location.index,
                if l.name.is_empty() { "-" } else { &l.name },
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
            (None, Some(err)) => println!(
                "  {:>5}  UNUSABLE at offset {}: {err}",
                e.location.index, e.location.leader_offset_bytes
            ),
            (None, None) => {}
        }
    }
}
