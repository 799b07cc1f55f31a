//! The read-only status page: one server-rendered HTML document with its
//! style inline and no script or external asset, refreshed by the browser
//! every few seconds. It shows what this host sees: the hosts, the HA
//! VMs, the newest events and the timeline of the last failover.
//!
//! Elements carry ids and data attributes (`#hosts tr[data-host-id]`,
//! `#vms tr[data-vm]`, `#failover-timeline`) for tests and scrapers.

use super::snapshot::Snapshot;
use crate::timeline::{Failover, Step};
use std::fmt::Write;

/// Seconds between the browser's reloads of the page.
const REFRESH_SECONDS: u32 = 5;

const STYLE: &str = "
body{font-family:system-ui,sans-serif;margin:1.5em;color:#1d2330;background:#f7f8fa}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.6em 0 .5em}
.meta{color:#5b6475;font-size:.9em}
table{border-collapse:collapse;background:#fff;font-size:.9em}
th,td{padding:.35em .8em;border-bottom:1px solid #e3e6eb;text-align:left}
th{background:#eef0f4}
.state{display:inline-block;padding:.1em .55em;border-radius:.8em;font-size:.85em;font-weight:600}
.live,.running,.joined{background:#d7f5dd;color:#135c25}
.silent,.waiting,.renewal-failing,.unknown{background:#fff1c2;color:#6b5200}
.dead,.fenced,.failed,.unreadable,.unusable,.self-fenced{background:#fbd5d5;color:#7a1414}
.left,.stopped,.unused,.joining{background:#e6e8ec;color:#3b4250}
ol#events{list-style:none;padding:0;font-size:.85em;background:#fff;max-width:70em}
ol#events li{padding:.3em .6em;border-bottom:1px solid #eef0f4}
ol#events .kind{font-weight:600;margin:0 .5em}
svg text{font-size:12px;fill:#1d2330}
";

/// `text` safe inside HTML text and attribute values.
fn esc(text: &str) -> String {
    crate::markup::escape(text)
}

fn badge(state: &str) -> String {
    format!("<span class=\"state {0}\">{0}</span>", esc(state))
}

/// A duration for people: ms below a second, else seconds.
fn seconds(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.1} s", ms as f64 / 1000.0)
    }
}

/// The whole page.
pub fn render(s: &Snapshot) -> String {
    let mut html = String::new();
    let _ = write!(
        html,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
         <title>leasehold: {name}</title><style>{STYLE}</style></head><body>",
        name = esc(&s.status.host_name)
    );
    let _ = write!(
        html,
        "<h1>leasehold on {} (host {})</h1><p class=\"meta\">leaseholdd {} &middot; watchdog {} &middot; as of {}</p>",
        esc(&s.status.host_name),
        s.status.host_id,
        esc(s.version),
        esc(s.status.watchdog.as_deref().unwrap_or("none")),
        esc(&s.taken_at)
    );
    lockspaces(&mut html, s);
    hosts(&mut html, s);
    vms(&mut html, s);
    failover(&mut html, s.failover.as_ref());
    events(&mut html, s);
    html.push_str("</body></html>\n");
    html
}

fn lockspaces(html: &mut String, s: &Snapshot) {
    html.push_str("<h2>Lockspaces</h2><table id=\"lockspaces\"><tr><th>lockspace</th><th>device</th><th>state</th><th>generation</th><th>last renewal</th><th>renewal failures</th><th>io_timeout</th></tr>");
    for ls in &s.status.lockspaces {
        let _ = write!(
            html,
            "<tr data-lockspace=\"{0}\"><td>{0}</td><td>{1}</td><td>{2}{3}</td><td>{4}</td><td>{5}</td><td>{6}</td><td>{7} ms</td></tr>",
            esc(&ls.name),
            esc(&ls.device),
            badge(&ls.state),
            if ls.storage_incident {
                " <span class=\"state silent\">storage incident</span>"
            } else {
                ""
            },
            ls.generation,
            ls.last_renewal_age_ms
                .map(|a| format!("{} ago", seconds(a)))
                .unwrap_or_else(|| "never".to_string()),
            ls.renewal_failures,
            ls.io_timeout_ms
        );
    }
    html.push_str("</table>");
}

fn hosts(html: &mut String, s: &Snapshot) {
    html.push_str("<h2>Hosts</h2><table id=\"hosts\"><tr><th>id</th><th>name</th><th>state</th><th>generation</th><th>record still for</th><th>fence method</th><th>free memory / vCPUs</th></tr>");
    for ls in &s.status.lockspaces {
        for h in ls.hosts.iter().filter(|h| h.state != "unused") {
            let fence = s
                .fence_methods
                .get(&h.host_id)
                .cloned()
                .unwrap_or_else(|| "not in [cluster]".to_string());
            let _ = write!(
                html,
                "<tr data-host-id=\"{}\" data-state=\"{}\"><td>{}</td><td>{}{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}{}</td><td>{} MiB / {}</td></tr>",
                h.host_id,
                esc(&h.state),
                h.host_id,
                esc(&h.name),
                if h.this_host { " (this host)" } else { "" },
                badge(&h.state),
                h.generation,
                seconds(h.unchanged_for_ms),
                esc(&fence),
                if h.watchdog { ", watchdog" } else { "" },
                h.memory_mib_free,
                h.vcpus_free
            );
        }
    }
    html.push_str("</table>");
}

fn vms(html: &mut String, s: &Snapshot) {
    html.push_str("<h2>HA VMs</h2>");
    let Some(view) = &s.vms else {
        html.push_str("<p id=\"vms-none\" class=\"meta\">The VM manager has not scanned the registry yet (or this build has no libvirt).</p>");
        return;
    };
    html.push_str("<table id=\"vms\"><tr><th>name</th><th>state</th><th>host</th><th>priority</th><th>lease version</th><th>memory / vCPUs</th><th>failed restarts</th></tr>");
    for vm in &view.vms {
        let host = match (&vm.owner_host_name, vm.owner_host_id) {
            (Some(name), Some(id)) => format!("{} ({id})", esc(name)),
            _ => "&ndash;".to_string(),
        };
        let priority = vm
            .priority
            .map(|p| format!("{p:?}").to_lowercase())
            .unwrap_or_else(|| "&ndash;".to_string());
        let _ = write!(
            html,
            "<tr data-vm=\"{0}\" data-state=\"{1}\" data-host=\"{2}\"><td>{0}</td><td>{3}</td><td>{4}</td><td>{5}</td><td>{6}</td><td>{7} MiB / {8}</td><td>{9}</td></tr>",
            esc(&vm.name),
            esc(&vm.state),
            vm.owner_host_id.map(|id| id.to_string()).unwrap_or_default(),
            badge(&vm.state),
            host,
            priority,
            vm.lver,
            vm.memory_mib,
            vm.vcpus,
            vm.failed_restarts
        );
    }
    html.push_str("</table>");
}

/// The last failover as a picture: one row for the fence, one per VM
/// taken here (a bar from lease taken to running), on one time axis.
fn failover(html: &mut String, failover: Option<&Failover>) {
    html.push_str("<h2>Last failover</h2>");
    let Some(f) = failover else {
        html.push_str(
            "<p id=\"failover-none\" class=\"meta\">No host failed since this daemon started.</p>",
        );
        return;
    };
    let phases = f.phases();
    let _ = write!(
        html,
        "<p class=\"meta\" id=\"failover-summary\">host {} ({}) detected at {}; fence {}, takeover {}, start {}, total {} (from this host's detection)</p>",
        f.host_id,
        esc(&f.host_name),
        esc(&f.detected_at),
        phase(phases.fence_ms),
        phase(phases.takeover_ms),
        phase(phases.start_ms),
        phase(phases.total_ms),
    );
    let end_ms = f.steps.iter().map(|(at, _)| *at).max().unwrap_or(0).max(1);
    let vms: Vec<&str> = f
        .steps
        .iter()
        .filter_map(|(_, s)| match s {
            Step::Taken { vm } => Some(vm.as_str()),
            _ => None,
        })
        .collect();
    let (left, width, row) = (150.0, 600.0, 26.0);
    let height = row * (vms.len() as f64 + 2.0) + 10.0;
    let x = |ms: u64| left + width * (ms as f64 / end_ms as f64);
    let _ = write!(
        html,
        "<svg id=\"failover-timeline\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{height}\" role=\"img\" aria-label=\"timeline of the last failover\" style=\"background:#fff\">",
        left + width + 80.0
    );
    // Axis: detection at 0, the last step at the right end.
    let axis_y = height - row;
    let _ = write!(
        html,
        "<line x1=\"{left}\" y1=\"{axis_y}\" x2=\"{}\" y2=\"{axis_y}\" stroke=\"#8a93a3\"/><text x=\"{left}\" y=\"{}\">0 (detected)</text><text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
        left + width,
        axis_y + 16.0,
        left + width,
        axis_y + 16.0,
        seconds(end_ms)
    );
    // The fence row.
    let fence_y = row;
    let _ = write!(
        html,
        "<g class=\"fence\"><text x=\"8\" y=\"{}\">fence</text>",
        fence_y + 4.0
    );
    for (at, step) in &f.steps {
        let (color, label) = match step {
            Step::Fenced => ("#7a1414", "fenced here"),
            Step::MarkSeen => ("#c2410c", "mark seen"),
            Step::FenceFailed => ("#b91c1c", "fence failed"),
            Step::FenceByOther { .. } => ("#6b7280", "fenced by another host"),
            _ => continue,
        };
        let _ = write!(
            html,
            "<circle cx=\"{0}\" cy=\"{fence_y}\" r=\"6\" fill=\"{color}\" data-step=\"{label}\" data-ms=\"{at}\"><title>{label} at {1}</title></circle>",
            x(*at),
            seconds(*at)
        );
    }
    html.push_str("</g>");
    // One row per VM taken here.
    for (i, vm) in vms.iter().enumerate() {
        let y = row * (i as f64 + 2.0);
        let taken = f.first(|s| matches!(s, Step::Taken { vm: v } if v == vm));
        let ended = f.steps.iter().find_map(|(at, s)| match s {
            Step::Started { vm: v } if v == vm => Some((*at, "#15803d", "running")),
            Step::StartFailed { vm: v } if v == vm => Some((*at, "#b91c1c", "start failed")),
            _ => None,
        });
        let _ = write!(
            html,
            "<g class=\"vm\" data-vm=\"{0}\"><text x=\"8\" y=\"{1}\">{0}</text>",
            esc(vm),
            y + 4.0
        );
        if let Some(taken) = taken {
            let end = ended.map(|(at, _, _)| at).unwrap_or(end_ms);
            let (color, label) = ended
                .map(|(_, c, l)| (c, l))
                .unwrap_or(("#9ca3af", "starting"));
            let _ = write!(
                html,
                "<rect x=\"{0}\" y=\"{1}\" width=\"{2}\" height=\"12\" fill=\"{color}\" data-state=\"{label}\"><title>{3}: lease taken at {4}, {label} at {5}</title></rect>",
                x(taken),
                y - 6.0,
                (x(end) - x(taken)).max(2.0),
                esc(vm),
                seconds(taken),
                seconds(end)
            );
        }
        html.push_str("</g>");
    }
    html.push_str("</svg>");
    html.push_str("<p class=\"meta\" id=\"failover-legend\"><span style=\"color:#7a1414\">&#9679;</span> fenced here &nbsp; <span style=\"color:#c2410c\">&#9679;</span> FENCED mark seen &nbsp; <span style=\"color:#6b7280\">&#9679;</span> fenced by another host &nbsp; <span style=\"color:#15803d\">&#9632;</span> VM: lease taken here &rarr; running &nbsp; <span style=\"color:#b91c1c\">&#9632;</span> start failed</p>");
}

fn phase(ms: Option<u64>) -> String {
    ms.map(seconds).unwrap_or_else(|| "&ndash;".to_string())
}

fn events(html: &mut String, s: &Snapshot) {
    html.push_str("<h2>Recent events</h2><ol id=\"events\">");
    for e in s.events.iter().rev() {
        let _ = write!(
            html,
            "<li data-kind=\"{0}\"><span class=\"meta\">{1}</span><span class=\"kind\">{0}</span>{2}</li>",
            esc(&e.kind),
            esc(&e.time),
            esc(&e.message)
        );
    }
    html.push_str("</ol>");
}

#[cfg(test)]
mod tests {
    use super::esc;

    #[test]
    fn text_from_the_cluster_cannot_make_markup() {
        assert_eq!(
            esc("<script>\"x\" & 'y'</script>"),
            "&lt;script&gt;&quot;x&quot; &amp; &apos;y&apos;&lt;/script&gt;"
        );
    }
}
