//! Where a dead host's VMs restart, computed the same way by every
//! survivor from the same disk state, so they agree without talking: VMs
//! in priority order (high first; then larger memory first; then name),
//! each on the survivor with the most free memory left that can take it
//! (then most free vCPUs, then lowest host id), never overcommitting a
//! host. The same order gives each VM's list of fallback hosts, and the
//! same arithmetic decides admission control.

use serde::{Deserialize, Serialize};
use std::cmp::Reverse;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    Low,
    Medium,
    High,
}

/// A VM to place.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmNeed {
    pub name: String,
    pub priority: Priority,
    pub memory_mib: u32,
    pub vcpus: u32,
}

/// A host that can take VMs, with what it has free.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostRoom {
    pub host_id: u32,
    pub memory_mib_free: u32,
    pub vcpus_free: u32,
}

/// One VM's outcome: its host, or None when nobody had room.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub vm: String,
    pub host_id: Option<u32>,
}

/// The order VMs are placed in.
pub fn placement_order(vms: &[VmNeed]) -> Vec<VmNeed> {
    let mut ordered = vms.to_vec();
    ordered.sort_by(|a, b| {
        (Reverse(a.priority), Reverse(a.memory_mib), &a.name).cmp(&(
            Reverse(b.priority),
            Reverse(b.memory_mib),
            &b.name,
        ))
    });
    ordered
}

/// The hosts that could take `vm` now, best first.
fn ranked<'a>(vm: &VmNeed, hosts: &'a [HostRoom]) -> Vec<&'a HostRoom> {
    let mut fitting: Vec<&HostRoom> = hosts
        .iter()
        .filter(|h| h.memory_mib_free >= vm.memory_mib && h.vcpus_free >= vm.vcpus)
        .collect();
    fitting.sort_by_key(|h| (Reverse(h.memory_mib_free), Reverse(h.vcpus_free), h.host_id));
    fitting
}

/// Place every VM; the same input in any order gives the same plan.
pub fn plan(vms: &[VmNeed], hosts: &[HostRoom]) -> Vec<Assignment> {
    let mut room: Vec<HostRoom> = hosts.to_vec();
    room.sort_by_key(|h| h.host_id);
    placement_order(vms)
        .into_iter()
        .map(|vm| {
            let chosen = ranked(&vm, &room).first().map(|h| h.host_id);
            if let Some(host_id) = chosen {
                if let Some(h) = room.iter_mut().find(|h| h.host_id == host_id) {
                    h.memory_mib_free -= vm.memory_mib;
                    h.vcpus_free -= vm.vcpus;
                }
            }
            Assignment {
                vm: vm.name,
                host_id: chosen,
            }
        })
        .collect()
}

/// The hosts that try `vm` in turn when the one before did not get it
/// running: its planned host first, then every other host that could take
/// it after the plan, best first.
pub fn fallbacks(vm: &str, vms: &[VmNeed], hosts: &[HostRoom]) -> Vec<u32> {
    let assignments = plan(vms, hosts);
    let mut room: Vec<HostRoom> = hosts.to_vec();
    for a in &assignments {
        if let (Some(host_id), Some(need)) = (a.host_id, vms.iter().find(|v| v.name == a.vm)) {
            if a.vm != vm {
                if let Some(h) = room.iter_mut().find(|h| h.host_id == host_id) {
                    h.memory_mib_free = h.memory_mib_free.saturating_sub(need.memory_mib);
                    h.vcpus_free = h.vcpus_free.saturating_sub(need.vcpus);
                }
            }
        }
    }
    let Some(need) = vms.iter().find(|v| v.name == vm) else {
        return Vec::new();
    };
    let primary = assignments
        .iter()
        .find(|a| a.vm == vm)
        .and_then(|a| a.host_id);
    let mut order: Vec<u32> = primary.into_iter().collect();
    order.extend(
        ranked(need, &room)
            .into_iter()
            .map(|h| h.host_id)
            .filter(|id| Some(*id) != primary),
    );
    order
}

/// A host with its total capacity and the VMs it runs now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostLoad {
    pub host_id: u32,
    pub memory_mib_total: u32,
    pub vcpus_total: u32,
    pub vms: Vec<VmNeed>,
}

/// Admission control's verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Headroom {
    pub failures_to_tolerate: u32,
    /// Every loss of that many hosts leaves room for all their VMs.
    pub ok: bool,
    /// The worst loss found: those hosts, and the VMs that would not fit.
    pub worst_lost_hosts: Vec<u32>,
    pub unplaced: Vec<String>,
    /// Memory still free on the survivors after restarting everything, in
    /// the worst loss (0 when some VM does not fit).
    pub spare_memory_mib: u64,
}

fn free_of(host: &HostLoad) -> HostRoom {
    let used_memory: u32 = host.vms.iter().map(|v| v.memory_mib).sum();
    let used_vcpus: u32 = host.vms.iter().map(|v| v.vcpus).sum();
    HostRoom {
        host_id: host.host_id,
        memory_mib_free: host.memory_mib_total.saturating_sub(used_memory),
        vcpus_free: host.vcpus_total.saturating_sub(used_vcpus),
    }
}

/// Every `k`-subset of `0..n`, in lexicographic order.
fn subsets(n: usize, k: usize) -> Vec<Vec<usize>> {
    if k == 0 || k > n {
        return vec![Vec::new()];
    }
    let mut all = Vec::new();
    let mut current: Vec<usize> = (0..k).collect();
    loop {
        all.push(current.clone());
        let Some(i) = (0..k).rev().find(|&i| current[i] < n - k + i) else {
            return all;
        };
        current[i] += 1;
        for j in i + 1..k {
            current[j] = current[j - 1] + 1;
        }
    }
}

/// Could the cluster restart every HA VM after losing any
/// `failures_to_tolerate` hosts? Checks every such loss for small
/// clusters (up to 16 hosts), else the hosts with the most VM memory.
pub fn headroom(hosts: &[HostLoad], failures_to_tolerate: u32) -> Headroom {
    let k = usize::try_from(failures_to_tolerate).unwrap_or(usize::MAX);
    let losses = if k >= hosts.len() {
        vec![(0..hosts.len()).collect()]
    } else if hosts.len() <= 16 {
        subsets(hosts.len(), k)
    } else {
        let mut by_load: Vec<usize> = (0..hosts.len()).collect();
        by_load.sort_by_key(|&i| {
            (
                Reverse(
                    hosts[i]
                        .vms
                        .iter()
                        .map(|v| u64::from(v.memory_mib))
                        .sum::<u64>(),
                ),
                hosts[i].host_id,
            )
        });
        vec![by_load.into_iter().take(k).collect()]
    };
    let mut worst: Option<Headroom> = None;
    for lost in losses {
        let displaced: Vec<VmNeed> = lost.iter().flat_map(|&i| hosts[i].vms.clone()).collect();
        let survivors: Vec<HostRoom> = (0..hosts.len())
            .filter(|i| !lost.contains(i))
            .map(|i| free_of(&hosts[i]))
            .collect();
        let assignments = plan(&displaced, &survivors);
        let unplaced: Vec<String> = assignments
            .iter()
            .filter(|a| a.host_id.is_none())
            .map(|a| a.vm.clone())
            .collect();
        let placed_memory: u64 = displaced
            .iter()
            .filter(|v| !unplaced.contains(&v.name))
            .map(|v| u64::from(v.memory_mib))
            .sum();
        let free_memory: u64 = survivors.iter().map(|h| u64::from(h.memory_mib_free)).sum();
        let spare = if unplaced.is_empty() {
            free_memory.saturating_sub(placed_memory)
        } else {
            0
        };
        let verdict = Headroom {
            failures_to_tolerate,
            ok: unplaced.is_empty(),
            worst_lost_hosts: lost.iter().map(|&i| hosts[i].host_id).collect(),
            unplaced,
            spare_memory_mib: spare,
        };
        let worse = match &worst {
            None => true,
            Some(w) => {
                (verdict.unplaced.len(), Reverse(verdict.spare_memory_mib))
                    > (w.unplaced.len(), Reverse(w.spare_memory_mib))
            }
        };
        if worse {
            worst = Some(verdict);
        }
    }
    worst.unwrap_or(Headroom {
        failures_to_tolerate,
        ok: true,
        worst_lost_hosts: Vec::new(),
        unplaced: Vec::new(),
        spare_memory_mib: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn vm(name: &str, priority: Priority, memory_mib: u32, vcpus: u32) -> VmNeed {
        VmNeed {
            name: name.to_string(),
            priority,
            memory_mib,
            vcpus,
        }
    }

    fn room(host_id: u32, memory_mib_free: u32, vcpus_free: u32) -> HostRoom {
        HostRoom {
            host_id,
            memory_mib_free,
            vcpus_free,
        }
    }

    #[test]
    fn high_priority_first_most_room_first_ties_by_host_id() {
        let vms = [
            vm("low", Priority::Low, 1024, 1),
            vm("high", Priority::High, 1024, 1),
            vm("mid", Priority::Medium, 1024, 1),
        ];
        let hosts = [room(3, 2048, 4), room(2, 2048, 4)];
        let plan = plan(&vms, &hosts);
        let names: Vec<&str> = plan.iter().map(|a| a.vm.as_str()).collect();
        assert_eq!(names, ["high", "mid", "low"]);
        // Tie on room: host 2 first; then host 3 has more left.
        let hosts_used: Vec<Option<u32>> = plan.iter().map(|a| a.host_id).collect();
        assert_eq!(hosts_used, [Some(2), Some(3), Some(2)]);
    }

    #[test]
    fn a_vm_that_fits_nowhere_is_left_unplaced_not_overcommitted() {
        let plan = plan(&[vm("big", Priority::High, 4096, 1)], &[room(1, 2048, 8)]);
        assert_eq!(plan[0].host_id, None);
    }

    #[test]
    fn fallbacks_start_with_the_planned_host() {
        let vms = [
            vm("a", Priority::High, 1024, 1),
            vm("b", Priority::Low, 512, 1),
        ];
        let hosts = [room(1, 4096, 4), room(2, 2048, 4), room(3, 512, 1)];
        assert_eq!(fallbacks("a", &vms, &hosts), [1, 2]);
        assert_eq!(fallbacks("b", &vms, &hosts)[0], 1);
        assert!(fallbacks("b", &vms, &hosts).contains(&3));
    }

    #[test]
    fn headroom_finds_the_loss_that_hurts() {
        let load = |id, total, vms: Vec<VmNeed>| HostLoad {
            host_id: id,
            memory_mib_total: total,
            vcpus_total: 8,
            vms,
        };
        let hosts = [
            load(1, 4096, vec![vm("a", Priority::High, 3072, 1)]),
            load(2, 4096, vec![vm("b", Priority::High, 1024, 1)]),
            load(3, 3584, vec![]),
        ];
        let verdict = headroom(&hosts, 1);
        assert!(verdict.ok, "{verdict:?}");
        let verdict = headroom(&hosts, 2);
        assert!(!verdict.ok, "{verdict:?}");
        assert_eq!(verdict.worst_lost_hosts, [1, 2]);
        assert_eq!(verdict.unplaced, ["b"]);
    }

    fn arb_vms() -> impl Strategy<Value = Vec<VmNeed>> {
        proptest::collection::vec(
            (0u8..3, 1u32..8, 1u32..4).prop_map(|(p, m, c)| (p, m * 512, c)),
            0..20,
        )
        .prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (p, m, c))| {
                    let priority =
                        [Priority::Low, Priority::Medium, Priority::High][usize::from(p)];
                    vm(&format!("vm{i}"), priority, m, c)
                })
                .collect()
        })
    }

    fn arb_hosts() -> impl Strategy<Value = Vec<HostRoom>> {
        proptest::collection::vec((0u32..16, 0u32..8), 1..6).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (m, c))| room(u32::try_from(i).unwrap_or(0) + 1, m * 512, c))
                .collect()
        })
    }

    proptest! {
        #[test]
        fn no_host_is_overcommitted_and_every_survivor_agrees(
            vms in arb_vms(),
            hosts in arb_hosts(),
            seed in any::<u64>(),
        ) {
            let plan_a = plan(&vms, &hosts);
            // Another survivor lists VMs and hosts in another order.
            let mut shuffled_vms = vms.clone();
            let mut shuffled_hosts = hosts.clone();
            let n = shuffled_vms.len().max(1);
            shuffled_vms.rotate_left(usize::try_from(seed % n as u64).unwrap_or(0));
            shuffled_hosts.reverse();
            prop_assert_eq!(&plan_a, &plan(&shuffled_vms, &shuffled_hosts));
            for h in &hosts {
                let placed: Vec<&VmNeed> = plan_a
                    .iter()
                    .filter(|a| a.host_id == Some(h.host_id))
                    .filter_map(|a| vms.iter().find(|v| v.name == a.vm))
                    .collect();
                prop_assert!(placed.iter().map(|v| v.memory_mib).sum::<u32>() <= h.memory_mib_free);
                prop_assert!(placed.iter().map(|v| v.vcpus).sum::<u32>() <= h.vcpus_free);
            }
            // A VM is unplaced only if, at its turn, no host had room.
            let mut left = hosts.clone();
            for a in &plan_a {
                let need = vms.iter().find(|v| v.name == a.vm).expect("planned vm exists");
                match a.host_id {
                    Some(id) => {
                        let h = left.iter_mut().find(|h| h.host_id == id).expect("host");
                        h.memory_mib_free -= need.memory_mib;
                        h.vcpus_free -= need.vcpus;
                    }
                    None => prop_assert!(left
                        .iter()
                        .all(|h| h.memory_mib_free < need.memory_mib || h.vcpus_free < need.vcpus)),
                }
            }
        }
    }
}
