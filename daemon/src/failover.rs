//! Which VMs wait for a host, and in what order hosts try them: computed
//! by every host from the same disk state (the registry scan and the host
//! records), so all agree without talking. A VM waits for a host when its
//! record wants it running with restart policy "always", it has not failed
//! too often, and its lease is free or held by an incarnation that is over
//! (fenced, below its host's floor, left, or dead by the watchdog rule).
//! Each waiting VM gets the hosts in placement order (see [`placement`]),
//! rotated by its failed restarts so the next attempt goes to the next
//! host, with the operator's preferred host (from `vm add --host` or `vm
//! migrate`) first while it is live and has room. The host at position p
//! tries after p grace periods; Disk Paxos settles any overlap.
//!
//! [`placement`]: crate::placement

use crate::placement::{self, HostRoom, VmNeed};
use crate::registry::{DesiredState, RestartPolicy, VmEntry};
use lease::Owner;

/// A host as restart placement sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostView {
    pub host_id: u32,
    /// Renewing now (as seen here): only live hosts get VMs.
    pub live: bool,
    pub memory_mib_total: u32,
    pub vcpus_total: u32,
}

/// A VM waiting for a host, and the hosts that try it, in turn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Turn {
    pub vm: String,
    pub slot: u32,
    pub order: Vec<u32>,
}

/// Is the VM of `entry` waiting for a host?
pub fn waiting(entry: &VmEntry, over: &dyn Fn(Owner) -> bool, restart_attempts: u32) -> bool {
    let Ok(record) = &entry.record else {
        return false;
    };
    // Handed to a host (`vm add --host`, `vm start --host`, `vm migrate`)
    // and not started yet: waiting whatever its restart policy.
    let handed_over = entry.holder.is_none() && record.preferred_host.is_some();
    record.desired == DesiredState::Running
        && (record.restart == RestartPolicy::Always || handed_over)
        && record.failed_restarts < restart_attempts
        && entry.holder.is_none_or(over)
}

/// What each live host has left: its advertised totals minus the VMs whose
/// leases a live incarnation of it holds.
pub fn rooms(
    entries: &[VmEntry],
    hosts: &[HostView],
    over: &dyn Fn(Owner) -> bool,
) -> Vec<HostRoom> {
    hosts
        .iter()
        .filter(|h| h.live)
        .map(|h| {
            let (memory, vcpus) = entries
                .iter()
                .filter(|e| {
                    e.holder
                        .is_some_and(|o| o.host_id.get() == h.host_id && !over(o))
                })
                .filter_map(|e| e.record.as_ref().ok())
                .fold((0u32, 0u32), |(m, v), r| {
                    (m.saturating_add(r.memory_mib), v.saturating_add(r.vcpus))
                });
            HostRoom {
                host_id: h.host_id,
                memory_mib_free: h.memory_mib_total.saturating_sub(memory),
                vcpus_free: h.vcpus_total.saturating_sub(vcpus),
            }
        })
        .collect()
}

/// Every waiting VM with its order of hosts.
pub fn turns(
    entries: &[VmEntry],
    hosts: &[HostView],
    over: &dyn Fn(Owner) -> bool,
    restart_attempts: u32,
) -> Vec<Turn> {
    let waiting_entries: Vec<&VmEntry> = entries
        .iter()
        .filter(|e| waiting(e, over, restart_attempts))
        .collect();
    let needs: Vec<VmNeed> = waiting_entries
        .iter()
        .filter_map(|e| e.record.as_ref().ok().map(|r| r.need()))
        .collect();
    let room = rooms(entries, hosts, over);
    let mut result: Vec<Turn> = waiting_entries
        .iter()
        .filter_map(|entry| {
            let record = entry.record.as_ref().ok()?;
            let mut order = placement::fallbacks(&record.name, &needs, &room);
            if !order.is_empty() {
                let shift = usize::try_from(record.failed_restarts).unwrap_or(0) % order.len();
                order.rotate_left(shift);
            }
            if let Some(preferred) = record.preferred_host {
                if let Some(position) = order.iter().position(|h| *h == preferred) {
                    let host = order.remove(position);
                    order.insert(0, host);
                }
            }
            Some(Turn {
                vm: record.name.clone(),
                slot: entry.slot,
                order,
            })
        })
        .collect();
    // Placement order: high priority first, so it is tried first.
    let ranked = placement::placement_order(&needs);
    result.sort_by_key(|t| ranked.iter().position(|n| n.name == t.vm));
    result
}

/// When host `own` may try `turn`, counted from when the VM was first seen
/// waiting: at once for the first host, after p grace periods for the
/// host at position p; None when it is not in the order.
pub fn delay_ms(turn: &Turn, own: u32, restart_grace_ms: u64) -> Option<u64> {
    let position = turn.order.iter().position(|h| *h == own)?;
    Some(restart_grace_ms.saturating_mul(u64::try_from(position).unwrap_or(u64::MAX)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::Priority;
    use crate::registry::VmRecord;
    use lease::HostId;

    fn xml(name: &str, uuid_tail: u32, memory_mib: u32) -> String {
        format!(
            "<domain type='test'><name>{name}</name><uuid>00000000-0000-0000-0000-{uuid_tail:012}</uuid><memory unit='MiB'>{memory_mib}</memory><vcpu>1</vcpu><os><type>hvm</type></os></domain>"
        )
    }

    fn entry(
        name: &str,
        slot: u32,
        memory_mib: u32,
        priority: Priority,
        holder: Option<(u32, u64)>,
    ) -> VmEntry {
        let record = VmRecord::new(&xml(name, slot, memory_mib), priority).expect("record");
        VmEntry {
            slot,
            name: name.to_string(),
            lver: 1,
            holder: holder.map(|(h, g)| Owner {
                host_id: HostId::new(h).expect("host id"),
                generation: g,
                nonce: 7,
            }),
            record: Ok(record),
            sequence: 1,
        }
    }

    fn host(host_id: u32, live: bool, memory_mib_total: u32) -> HostView {
        HostView {
            host_id,
            live,
            memory_mib_total,
            vcpus_total: 8,
        }
    }

    /// Host 1 generation 1 is over (fenced); everything else lives.
    fn over(owner: Owner) -> bool {
        owner.host_id.get() == 1 && owner.generation == 1
    }

    #[test]
    fn a_dead_hosts_vms_wait_high_priority_first_and_nobody_is_overcommitted() {
        let entries = vec![
            entry("low", 0, 512, Priority::Low, Some((1, 1))),
            entry("high", 1, 512, Priority::High, Some((1, 1))),
            entry("medium", 2, 512, Priority::Medium, Some((1, 1))),
            entry("elsewhere", 3, 512, Priority::High, Some((2, 1))),
        ];
        let hosts = vec![
            host(1, false, 2048),
            host(2, true, 1024),
            host(3, true, 1024),
        ];
        let turns = turns(&entries, &hosts, &over, 3);
        let names: Vec<&str> = turns.iter().map(|t| t.vm.as_str()).collect();
        assert_eq!(names, ["high", "medium", "low"]);
        // Host 2 already runs 512 of its 1024: room for one more; host 3 for two.
        let firsts: Vec<u32> = turns.iter().map(|t| t.order[0]).collect();
        let on_2 = firsts.iter().filter(|h| **h == 2).count();
        let on_3 = firsts.iter().filter(|h| **h == 3).count();
        assert_eq!((on_2, on_3), (1, 2));
        assert!(
            turns.iter().all(|t| !t.order.contains(&1)),
            "a dead host gets nothing"
        );
    }

    #[test]
    fn failed_restarts_move_the_vm_to_the_next_host_and_stop_at_the_limit() {
        let mut e = entry("vm", 0, 256, Priority::Medium, None);
        let hosts = vec![host(2, true, 1024), host(3, true, 1024)];
        let first = turns(std::slice::from_ref(&e), &hosts, &over, 3);
        if let Ok(r) = e.record.as_mut() {
            r.failed_restarts = 1;
        }
        let second = turns(std::slice::from_ref(&e), &hosts, &over, 3);
        assert_eq!(first[0].order.len(), 2);
        assert_eq!(second[0].order[0], first[0].order[1]);
        if let Ok(r) = e.record.as_mut() {
            r.failed_restarts = 3;
        }
        assert!(turns(std::slice::from_ref(&e), &hosts, &over, 3).is_empty());
    }

    #[test]
    fn running_stopped_and_corrupt_vms_do_not_wait() {
        let running = entry("running", 0, 256, Priority::High, Some((2, 1)));
        let mut stopped = entry("stopped", 1, 256, Priority::High, None);
        if let Ok(r) = stopped.record.as_mut() {
            r.desired = DesiredState::Stopped;
        }
        let mut corrupt = entry("corrupt", 2, 256, Priority::High, None);
        corrupt.record = Err("checksum".to_string());
        let hosts = vec![host(2, true, 4096)];
        assert!(turns(&[running, stopped, corrupt], &hosts, &over, 3).is_empty());
    }

    #[test]
    fn a_vm_handed_to_a_host_waits_even_with_restart_never() {
        let mut handed = entry("handed", 0, 256, Priority::Low, None);
        let mut orphan = entry("orphan", 1, 256, Priority::Low, Some((1, 1)));
        for e in [&mut handed, &mut orphan] {
            if let Ok(r) = e.record.as_mut() {
                r.restart = RestartPolicy::Never;
            }
        }
        if let Ok(r) = handed.record.as_mut() {
            r.preferred_host = Some(2);
        }
        let hosts = vec![host(2, true, 4096)];
        let names: Vec<String> = turns(&[handed, orphan], &hosts, &over, 3)
            .into_iter()
            .map(|t| t.vm)
            .collect();
        assert_eq!(
            names,
            ["handed"],
            "a dead host's restart-never VM stays down"
        );
    }

    #[test]
    fn the_preferred_host_goes_first_and_delays_follow_the_order() {
        let mut e = entry("vm", 0, 256, Priority::Low, None);
        if let Ok(r) = e.record.as_mut() {
            r.preferred_host = Some(3);
        }
        let hosts = vec![host(2, true, 8192), host(3, true, 1024)];
        let turns = turns(&[e], &hosts, &over, 3);
        assert_eq!(turns[0].order, [3, 2]);
        assert_eq!(delay_ms(&turns[0], 3, 5000), Some(0));
        assert_eq!(delay_ms(&turns[0], 2, 5000), Some(5000));
        assert_eq!(delay_ms(&turns[0], 9, 5000), None);
    }
}
