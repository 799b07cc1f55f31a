//! The capacity this host advertises in its record for restart placement:
//! memory and vCPUs, from the kernel or from the config's [capacity]
//! section (which a host that reserves room for itself, or a demo that runs
//! several hosts on one machine, sets).

use lease::format::Capacity;

/// Memory (MiB) from /proc/meminfo: (total, available).
fn meminfo_mib() -> Option<(u32, u32)> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let total_kib = field("MemTotal:")?;
    let available_kib = field("MemAvailable:").unwrap_or(total_kib);
    Some((
        u32::try_from(total_kib / 1024).unwrap_or(u32::MAX),
        u32::try_from(available_kib / 1024).unwrap_or(u32::MAX),
    ))
}

/// The CPUs this process may use, read once: the count reads the cgroup's
/// CPU quota (a dozen system calls), and it would otherwise be read at
/// every renewal. A host whose CPUs change (hotplug, a new quota) shows it
/// after a restart of the daemon.
fn host_vcpus() -> u32 {
    static VCPUS: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *VCPUS.get_or_init(|| {
        std::thread::available_parallelism()
            .ok()
            .and_then(|n| u32::try_from(n.get()).ok())
            .unwrap_or(1)
    })
}

/// What this host can offer now. `used` is what its leased VMs take
/// (memory MiB, vCPUs); configured totals replace the kernel's figures.
pub fn current(
    configured_memory_mib: Option<u32>,
    configured_vcpus: Option<u32>,
    used: (u32, u32),
) -> Capacity {
    let (memory_mib_total, memory_mib_free) = match configured_memory_mib {
        Some(total) => (total, total.saturating_sub(used.0)),
        None => meminfo_mib().unwrap_or((0, 0)),
    };
    let vcpus_total = configured_vcpus.unwrap_or_else(host_vcpus);
    Capacity {
        memory_mib_free,
        memory_mib_total,
        vcpus_free: vcpus_total.saturating_sub(used.1),
        vcpus_total,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn configured_totals_minus_use() {
        let c = current(Some(4096), Some(4), (1024, 1));
        assert_eq!((c.memory_mib_total, c.memory_mib_free), (4096, 3072));
        assert_eq!((c.vcpus_total, c.vcpus_free), (4, 3));
        let kernel = current(None, None, (0, 0));
        assert!(kernel.memory_mib_total > 0 && kernel.memory_mib_free <= kernel.memory_mib_total);
    }
}
