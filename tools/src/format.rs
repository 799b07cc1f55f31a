//! `leasehold format`.

use crate::cli::FormatArgs;
use crate::open::open_disk;
use crate::out::outln;
use anyhow::{bail, Context, Result};
use lease::device::{self, FormatOptions};
use lease::disk::Disk;
use lease::format::{Geometry, HostRecord};
use lease::timeouts::Timeouts;
use lease::HostId;

pub fn run(args: &FormatArgs) -> Result<()> {
    let sector_size_bytes = args.device.sector_size;
    let geometry = Geometry::new(
        sector_size_bytes.unwrap_or(512),
        args.max_hosts,
        args.max_resources,
        args.payload_size,
    )
    .context("invalid layout")?;
    let path = &args.device.path;
    let metadata = std::fs::metadata(path);
    let is_block = {
        use std::os::unix::fs::FileTypeExt;
        metadata
            .as_ref()
            .map(|m| m.file_type().is_block_device())
            .unwrap_or(false)
    };
    // A block device decides its own sector size unless one was asked for.
    let disk_probe = if is_block {
        Some(open_disk(&args.device, sector_size_bytes)?)
    } else {
        None
    };
    let geometry = match &disk_probe {
        Some(disk) if sector_size_bytes.is_none() => Geometry::new(
            disk.sector_size_bytes(),
            args.max_hosts,
            args.max_resources,
            args.payload_size,
        )
        .context("invalid layout for this device's sector size")?,
        _ => geometry,
    };
    drop(disk_probe);
    let needed_bytes = geometry.device_size_bytes();
    if metadata.is_err() {
        create_file(args, path, needed_bytes)?;
    } else if !is_block {
        // Grow an existing regular file to the size the layout needs.
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .with_context(|| format!("cannot open {path}"))?;
        let length = file
            .metadata()
            .with_context(|| format!("cannot stat {path}"))?
            .len();
        if length < needed_bytes {
            file.set_len(needed_bytes)
                .with_context(|| format!("cannot extend {path} to {needed_bytes} bytes"))?;
        }
    }
    let disk = open_disk(&args.device, Some(geometry.sector_size_bytes()))?;
    check_what_is_there(args, path, disk.as_ref())?;
    let options = FormatOptions {
        lockspace: args.lockspace.clone(),
        geometry,
        io_timeout_ms: args.io_timeout,
    };
    let space = device::format(disk.as_ref(), &options).context("format failed")?;
    outln!(
        "formatted {path}: lockspace {} with {} hosts, {} resource slots, {}-byte sectors, io_timeout {} ms, {} bytes",
        space.name,
        geometry.max_hosts(),
        geometry.max_resources(),
        geometry.sector_size_bytes(),
        space.io_timeout_ms,
        needed_bytes
    );
    Ok(())
}

/// A missing path: created as a regular file of `--create SIZE`, never
/// under /dev (a mistyped device name must not become a private file that
/// one host believes is shared).
fn create_file(args: &FormatArgs, path: &str, needed_bytes: u64) -> Result<()> {
    let Some(size_bytes) = args.create else {
        bail!(
            "{path} does not exist; give the shared block device every host sees (check the name), or add --create SIZE to make a regular file for tests (at least {needed_bytes} bytes)"
        );
    };
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.into());
    if absolute.starts_with("/dev") {
        bail!(
            "{path} does not exist and is under /dev: refusing to create a regular file there (a mistyped device name would become a file only this host sees); check the device name"
        );
    }
    if size_bytes < needed_bytes {
        bail!("--create {size_bytes}: this layout needs at least {needed_bytes} bytes");
    }
    let file = std::fs::OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(path)
        .with_context(|| format!("cannot create {path}"))?;
    file.set_len(size_bytes)
        .with_context(|| format!("cannot size {path} to {size_bytes} bytes"))?;
    Ok(())
}

/// Refuse to overwrite what the device holds: without --force, any
/// lockspace or known signature; even with --force, unless --force-live,
/// a lockspace whose hosts are renewing.
fn check_what_is_there(args: &FormatArgs, path: &str, disk: &dyn Disk) -> Result<()> {
    let sector = disk.sector_size_bytes() as usize;
    let probe_bytes = crate::signatures::PROBE_BYTES
        .min(usize::try_from(disk.size_bytes()).unwrap_or(usize::MAX))
        / sector
        * sector;
    let mut start = vec![0; probe_bytes];
    if probe_bytes > 0 {
        disk.read(0, &mut start)
            .with_context(|| format!("cannot read the start of {path}"))?;
    }
    if let Some(existing) = device::existing_header(disk)? {
        if !args.force {
            bail!(
                "{path} already holds lockspace {:?} ({} hosts, {} resources); refusing to overwrite it. \
                 Make sure no host uses it (its VM registry is lost: `leasehold vm export` first), then add --force",
                existing.lockspace,
                existing.geometry.max_hosts(),
                existing.geometry.max_resources()
            );
        }
        let renewing = renewing_hosts(disk, &existing)?;
        if !renewing.is_empty() && !args.force_live {
            bail!(
                "{path} holds lockspace {:?} and these hosts are renewing on it now: {}. Formatting would make every one of them self-fence and erase the VM registry; stop their daemons first (or, if you really mean it, add --force-live)",
                existing.lockspace,
                renewing.join(", ")
            );
        }
        return Ok(());
    }
    let signatures = crate::signatures::found(&start);
    if !signatures.is_empty() && !args.force {
        bail!(
            "{path} holds {}; refusing to overwrite it. Check that this is the device meant for leases, then add --force",
            signatures.join(" and ")
        );
    }
    Ok(())
}

/// The hosts of lockspace `existing` whose records change between two
/// reads of the host area (one contiguous read each) a renewal interval
/// of the slowest host apart: "host 1 (hv01) generation 3".
fn renewing_hosts(disk: &dyn Disk, existing: &lease::format::HeaderRecord) -> Result<Vec<String>> {
    let geometry = existing.geometry;
    let read_area = || -> Result<Vec<Option<HostRecord>>> {
        let size = usize::try_from(geometry.host_area_size_bytes())?;
        let mut area = vec![0; size];
        disk.read(geometry.host_area_offset_bytes(), &mut area)?;
        let sector = geometry.sector_size_bytes() as usize;
        Ok((1..=geometry.max_hosts())
            .zip(area.chunks(sector))
            .map(|(raw, bytes)| {
                HostId::new(raw)
                    .and_then(|id| HostRecord::decode(bytes, &existing.lockspace, id).ok())
            })
            .collect())
    };
    let first = read_area()?;
    let joined = |r: &&HostRecord| !r.is_unused() && !r.flags.released;
    let io_timeout_ms = first
        .iter()
        .flatten()
        .filter(joined)
        .map(|r| r.io_timeout_ms)
        .max();
    let Some(io_timeout_ms) = io_timeout_ms else {
        return Ok(Vec::new());
    };
    let interval_ms = Timeouts::from_io_timeout_ms(io_timeout_ms).renew_interval_ms;
    std::thread::sleep(std::time::Duration::from_millis(interval_ms));
    let second = read_area()?;
    Ok(first
        .iter()
        .zip(&second)
        .filter_map(|(a, b)| match (a, b) {
            (Some(a), Some(b)) if a != b => Some(format!(
                "host {} ({}) generation {}",
                b.host_id, b.host_name, b.generation
            )),
            _ => None,
        })
        .collect())
}
