//! `leasehold format`.

use crate::cli::FormatArgs;
use crate::open::open_disk;
use anyhow::{bail, Context, Result};
use lease::device::{self, FormatOptions};
use lease::format::Geometry;

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
    if !is_block {
        // Create or grow a regular file to the size the layout needs.
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .with_context(|| format!("cannot create {path}"))?;
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
    if let Some(existing) = device::existing_header(disk.as_ref())? {
        if !args.force {
            bail!(
                "{path} already holds lockspace {:?} ({} hosts, {} resources); refusing to overwrite it. \
                 Make sure no host uses it, then add --force",
                existing.lockspace,
                existing.geometry.max_hosts(),
                existing.geometry.max_resources()
            );
        }
    }
    let options = FormatOptions {
        lockspace: args.lockspace.clone(),
        geometry,
        io_timeout_ms: args.io_timeout,
    };
    let space = device::format(disk.as_ref(), &options)
        .with_context(|| format!("formatting {path} failed"))?;
    println!(
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
