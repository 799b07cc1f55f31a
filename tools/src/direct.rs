//! `leasehold direct ...`: one lease operation straight on the device.

use crate::cli::{DirectCommand, HostArgs, ResourceArgs};
use crate::open::open_lockspace;
use crate::out::outln;
use anyhow::{Context, Result};
use lease::clock::SystemClock;
use lease::delta::{self, DeltaLease, JoinRequest, RenewRequest};
use lease::disk::Disk;
use lease::format::{Capacity, FenceMethod, HostRecord};
use lease::ids::random_u64;
use lease::op::run;
use lease::resource::{self, NamedAcquire};
use lease::{HostId, LeaseError, Lockspace};

pub fn run_command(command: DirectCommand) -> Result<()> {
    match command {
        DirectCommand::Join(args) => join(&args),
        DirectCommand::Renew(args) => renew(&args),
        DirectCommand::Leave(args) => leave(&args),
        DirectCommand::Acquire(args) => acquire(&args),
        DirectCommand::Release(args) => release(&args),
    }
}

fn join(args: &HostArgs) -> Result<()> {
    let (disk, space) = open_lockspace(&args.device)?;
    let host_id = space.check_host_id(args.host_id)?;
    let request = JoinRequest {
        host_id,
        host_name: args.host_name.clone(),
        io_timeout_ms: args.io_timeout.unwrap_or(space.io_timeout_ms),
        nonce: random_u64(),
        capacity: Capacity::default(),
        watchdog: false,
        fence_method: FenceMethod::None,
        shared_settings: Default::default(),
    };
    let lease =
        run(delta::join(&space, request), disk.as_ref(), &SystemClock).with_context(|| {
            format!(
                "joining lockspace {} on {} as host {host_id}",
                space.name, space.device
            )
        })?;
    outln!(
        "joined lockspace {} as host {} ({}), generation {}",
        space.name,
        host_id,
        lease.record.host_name,
        lease.record.generation
    );
    Ok(())
}

/// Open the device and take up the delta lease this host name holds there.
fn adopted(args: &HostArgs) -> Result<(Box<dyn Disk>, Lockspace, HostId, DeltaLease)> {
    let (disk, space) = open_lockspace(&args.device)?;
    let host_id = space.check_host_id(args.host_id)?;
    let lease = run(
        delta::adopt(&space, host_id, &args.host_name),
        disk.as_ref(),
        &SystemClock,
    )?;
    Ok((disk, space, host_id, lease))
}

fn renew(args: &HostArgs) -> Result<()> {
    let (disk, space, host_id, lease) = adopted(args)?;
    let renewal = run(
        delta::renew(&space, &lease, RenewRequest::default()),
        disk.as_ref(),
        &SystemClock,
    )
    .with_context(|| format!("renewing host {host_id} in lockspace {}", space.name))?;
    outln!(
        "renewed host {} ({}), generation {}, timestamp {} ms",
        host_id,
        args.host_name,
        renewal.lease.record.generation,
        renewal.lease.record.timestamp_ms
    );
    Ok(())
}

fn leave(args: &HostArgs) -> Result<()> {
    let (disk, space, host_id, lease) = adopted(args)?;
    let record = run(delta::leave(&space, &lease), disk.as_ref(), &SystemClock)
        .with_context(|| format!("leaving lockspace {}", space.name))?;
    outln!(
        "host {} ({}) left, generation {}",
        host_id,
        args.host_name,
        record.generation
    );
    Ok(())
}

/// Open the device and read the current incarnation of a joined host.
fn joined(args: &ResourceArgs) -> Result<(Box<dyn Disk>, Lockspace, HostId, HostRecord)> {
    let (disk, space) = open_lockspace(&args.device)?;
    let host_id = space.check_host_id(args.host_id)?;
    let record = run(
        delta::joined_owner(&space, host_id),
        disk.as_ref(),
        &SystemClock,
    )?;
    Ok((disk, space, host_id, record))
}

fn acquire(args: &ResourceArgs) -> Result<()> {
    let (disk, space, host_id, record) = joined(args)?;
    let request = NamedAcquire {
        name: args.resource.clone(),
        owner: record.owner(),
        dead_hosts: Vec::new(),
        io_timeout_ms: record.io_timeout_ms,
        seed: random_u64(),
    };
    let (slot, leader) = run(
        resource::acquire(&space, request),
        disk.as_ref(),
        &SystemClock,
    )
    .with_context(|| format!("acquiring {:?} for host {host_id}", args.resource))?;
    outln!(
        "acquired {} (slot {slot}) for host {} generation {}, lease version {}",
        args.resource,
        host_id,
        record.generation,
        leader.lver
    );
    Ok(())
}

fn release(args: &ResourceArgs) -> Result<()> {
    let (disk, space, host_id, record) = joined(args)?;
    let owner = record.owner();
    let released = run(
        resource::release(&space, &args.resource, owner),
        disk.as_ref(),
        &SystemClock,
    )
    .with_context(|| format!("releasing {:?} for host {host_id}", args.resource))?;
    let Some((slot, lver)) = released else {
        return Err(LeaseError::NotOwner {
            resource: format!("resource {:?}", args.resource),
            owner,
            found: "no lease of this host under that name".to_string(),
        }
        .into());
    };
    outln!(
        "released {} (slot {slot}), lease version {lver}",
        args.resource
    );
    Ok(())
}
