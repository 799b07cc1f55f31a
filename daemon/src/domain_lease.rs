//! A HA VM's libvirt definition with its resource lease in it. The VM
//! manager starts every HA VM from the XML in its record with one
//! `<lease>` added inside `<devices>`, naming the VM's lease (the lease is
//! named after the domain) in this lockspace:
//!
//! ```xml
//! <lease><lockspace>prod</lockspace><key>vm1</key><target path='/dev/mapper/leases' offset='0'/></lease>
//! ```
//!
//! so that the lock plugin (tools/lockdriver) asks this daemon for it
//! before libvirt starts the CPUs, and `virsh dumpxml` of the running VM
//! shows the lease. The rest of the document is kept byte for byte: the
//! edit splices the original text at the positions the parser reports.

use std::ops::Range;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainLeaseError {
    #[error("domain XML: {0}")]
    Xml(String),
    #[error("domain XML: the root element is <{0}>, not <domain>")]
    NotADomain(String),
    #[error("lease {field} {value:?} is empty or has characters XML cannot carry")]
    Value { field: &'static str, value: String },
}

/// A value XML 1.0 can carry (no control characters but tab and
/// newlines), not empty.
fn checked<'a>(field: &'static str, value: &'a str) -> Result<&'a str, DomainLeaseError> {
    let carries = |c: char| !c.is_control() || matches!(c, '\t' | '\n' | '\r');
    if value.is_empty() || !value.chars().all(carries) {
        return Err(DomainLeaseError::Value {
            field,
            value: value.to_string(),
        });
    }
    Ok(value)
}

/// The `<lease>` element for `key` in `lockspace`, on `path`.
pub fn lease_element(lockspace: &str, key: &str, path: &str) -> Result<String, DomainLeaseError> {
    Ok(format!(
        "<lease><lockspace>{}</lockspace><key>{}</key><target path='{}' offset='0'/></lease>",
        crate::markup::escape(checked("lockspace", lockspace)?),
        crate::markup::escape(checked("key", key)?),
        crate::markup::escape(checked("path", path)?),
    ))
}

/// Is `node` an element named `name` outside any namespace (libvirt's
/// own elements have none)?
fn is(node: &roxmltree::Node<'_, '_>, name: &str) -> bool {
    node.is_element() && node.tag_name().name() == name && node.tag_name().namespace().is_none()
}

/// The `<key>` of a `<lease>` element, trimmed as libvirt reads it.
fn key_of(lease: &roxmltree::Node<'_, '_>) -> Option<String> {
    lease
        .children()
        .find(|n| is(n, "key"))
        .map(|k| {
            k.descendants()
                .filter(|d| d.is_text())
                .filter_map(|d| d.text())
                .collect::<String>()
        })
        .map(|k| k.trim().to_string())
}

/// Where new content goes at the end of the element spanning `range` of
/// `xml`: the start of its end tag. None for an empty-element tag
/// (`<devices/>`), which has no end tag.
fn end_tag_start(xml: &str, range: &Range<usize>) -> Option<usize> {
    let text = xml.get(range.clone())?;
    if text.ends_with("/>") && !text.contains("</") {
        return None;
    }
    text.rfind("</").map(|at| range.start + at)
}

/// The element spanning `range` of `xml`, written out with `content` as
/// its only content: for an empty-element tag `<devices .../>`, the same
/// start tag, the content and an end tag.
fn opened_with(xml: &str, range: &Range<usize>, content: &str) -> Option<String> {
    let text = xml.get(range.clone())?;
    let start = text.strip_suffix("/>")?.trim_end();
    let qualified: String = start
        .trim_start_matches('<')
        .chars()
        .take_while(|c| !c.is_whitespace())
        .collect();
    Some(format!("{start}>{content}</{qualified}>"))
}

/// `xml` with exactly one `<lease>` for `key` inside `<devices>` (created
/// when missing): a lease already there for `key` (whatever its lockspace
/// and target) is replaced in place, further ones for `key` are removed,
/// leases for other keys are kept. Applying it twice gives the result of
/// applying it once.
pub fn with_lease(
    xml: &str,
    lockspace: &str,
    key: &str,
    path: &str,
) -> Result<String, DomainLeaseError> {
    let lease = lease_element(lockspace, key, path)?;
    let document =
        roxmltree::Document::parse(xml).map_err(|e| DomainLeaseError::Xml(e.to_string()))?;
    let root = document.root_element();
    if !is(&root, "domain") {
        return Err(DomainLeaseError::NotADomain(
            root.tag_name().name().to_string(),
        ));
    }
    // Non-overlapping replacements of byte ranges of `xml`.
    let mut edits: Vec<(Range<usize>, String)> = Vec::new();
    let unexpected = || DomainLeaseError::Xml("cannot locate an element in the text".to_string());
    match root.children().find(|n| is(n, "devices")) {
        Some(devices) => {
            let mut ours = devices
                .children()
                .filter(|n| is(n, "lease") && key_of(n).as_deref() == Some(key));
            match ours.next() {
                Some(first) => {
                    edits.push((first.range(), lease));
                    edits.extend(ours.map(|n| (n.range(), String::new())));
                }
                None => {
                    let range = devices.range();
                    match end_tag_start(xml, &range) {
                        Some(at) => edits.push((at..at, lease)),
                        None => {
                            let opened = opened_with(xml, &range, &lease).ok_or_else(unexpected)?;
                            edits.push((range, opened));
                        }
                    }
                }
            }
        }
        None => {
            let range = root.range();
            let devices = format!("<devices>{lease}</devices>");
            match end_tag_start(xml, &range) {
                Some(at) => edits.push((at..at, devices)),
                None => {
                    let opened = opened_with(xml, &range, &devices).ok_or_else(unexpected)?;
                    edits.push((range, opened));
                }
            }
        }
    }
    edits.sort_by_key(|(range, _)| range.start);
    let mut out = String::with_capacity(xml.len() + 256);
    let mut at = 0;
    for (range, text) in edits {
        out.push_str(xml.get(at..range.start).ok_or_else(unexpected)?);
        out.push_str(&text);
        at = range.end;
    }
    out.push_str(xml.get(at..).ok_or_else(unexpected)?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOMAIN: &str = "<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>\n  <name>vm1</name>\n  <uuid>6695eb01-f6a4-8304-79aa-97f2502e193f</uuid>\n  <memory unit='MiB'>64</memory>\n  <vcpu>1</vcpu>\n  <os><type arch='x86_64'>hvm</type></os>\n  <devices>\n    <controller type='usb' model='none'/>\n    <memballoon model='none'/>\n  </devices>\n  <qemu:commandline><qemu:arg value='-S'/></qemu:commandline>\n</domain>\n";

    /// (lockspace, key, target path, target offset) of every lease in
    /// `<devices>`.
    fn leases(xml: &str) -> Vec<(String, String, String, String)> {
        let document = roxmltree::Document::parse(xml).expect("result parses");
        let root = document.root_element();
        let devices: Vec<_> = root.children().filter(|n| is(n, "devices")).collect();
        assert_eq!(devices.len(), 1, "one <devices> in {xml}");
        let text = |lease: &roxmltree::Node<'_, '_>, name: &str| {
            lease
                .children()
                .find(|n| is(n, name))
                .and_then(|n| n.text())
                .unwrap_or("")
                .to_string()
        };
        devices[0]
            .children()
            .filter(|n| is(n, "lease"))
            .map(|lease| {
                let target = lease.children().find(|n| is(n, "target"));
                (
                    text(&lease, "lockspace"),
                    text(&lease, "key"),
                    target
                        .and_then(|t| t.attribute("path"))
                        .unwrap_or("")
                        .to_string(),
                    target
                        .and_then(|t| t.attribute("offset"))
                        .unwrap_or("")
                        .to_string(),
                )
            })
            .collect()
    }

    fn lease(lockspace: &str, key: &str, path: &str) -> (String, String, String, String) {
        (
            lockspace.to_string(),
            key.to_string(),
            path.to_string(),
            "0".to_string(),
        )
    }

    #[test]
    fn the_lease_goes_into_devices_and_nothing_else_changes() {
        let out = with_lease(DOMAIN, "prod", "vm1", "/dev/mapper/leases").expect("lease");
        assert_eq!(
            leases(&out),
            vec![lease("prod", "vm1", "/dev/mapper/leases")]
        );
        // Everything else byte for byte: only the lease was inserted.
        let added = "<lease><lockspace>prod</lockspace><key>vm1</key><target path='/dev/mapper/leases' offset='0'/></lease>";
        assert_eq!(out.replacen(added, "", 1), DOMAIN);
        // Still the same domain for the registry.
        let facts = crate::registry::domain_facts(&out).expect("facts");
        assert_eq!(facts.name, "vm1");
        assert_eq!(facts.uuid, "6695eb01-f6a4-8304-79aa-97f2502e193f");
    }

    #[test]
    fn a_lease_for_the_same_key_is_replaced_and_others_are_kept() {
        let xml = DOMAIN.replace(
            "<devices>",
            "<devices><lease><lockspace>old</lockspace><key> vm1 </key><target path='/dev/old'/></lease><lease><lockspace>prod</lockspace><key>disk-a</key><target path='/dev/x' offset='1024'/></lease><lease><key>vm1</key><target path='/dev/older'/></lease>",
        );
        let out = with_lease(&xml, "prod", "vm1", "/dev/sdb").expect("lease");
        assert_eq!(
            leases(&out),
            vec![
                lease("prod", "vm1", "/dev/sdb"),
                (
                    "prod".to_string(),
                    "disk-a".to_string(),
                    "/dev/x".to_string(),
                    "1024".to_string()
                ),
            ]
        );
        // Once more changes nothing.
        assert_eq!(
            with_lease(&out, "prod", "vm1", "/dev/sdb").expect("again"),
            out
        );
    }

    #[test]
    fn devices_is_created_or_opened_when_needed() {
        let bare = "<domain type='test'><name>vm1</name><uuid>6695eb01-f6a4-8304-79aa-97f2502e193f</uuid></domain>";
        let out = with_lease(bare, "ls", "vm1", "/dev/sdb").expect("no devices");
        assert_eq!(leases(&out), vec![lease("ls", "vm1", "/dev/sdb")]);
        let empty = bare.replace("</domain>", "<devices/></domain>");
        let out = with_lease(&empty, "ls", "vm1", "/dev/sdb").expect("empty devices");
        assert_eq!(leases(&out), vec![lease("ls", "vm1", "/dev/sdb")]);
        let spaced = bare.replace("</domain>", "<devices\n/></domain>");
        let out = with_lease(&spaced, "ls", "vm1", "/dev/sdb").expect("spaced");
        assert_eq!(leases(&out), vec![lease("ls", "vm1", "/dev/sdb")]);
        let open = bare.replace("</domain>", "<devices></devices ></domain >");
        let out = with_lease(&open, "ls", "vm1", "/dev/sdb").expect("open devices");
        assert_eq!(leases(&out), vec![lease("ls", "vm1", "/dev/sdb")]);
    }

    #[test]
    fn values_are_escaped_and_unusable_ones_refused() {
        let path = "/dev/disk/by-id/a'b\"c&d<e>f";
        let out = with_lease(DOMAIN, "l&s", "vm1", path).expect("escaped");
        assert_eq!(leases(&out), vec![lease("l&s", "vm1", path)]);
        assert!(matches!(
            with_lease(DOMAIN, "ls", "vm1", "/dev/a\u{1}b"),
            Err(DomainLeaseError::Value { field: "path", .. })
        ));
        assert!(matches!(
            with_lease(DOMAIN, "", "vm1", "/dev/sdb"),
            Err(DomainLeaseError::Value {
                field: "lockspace",
                ..
            })
        ));
    }

    #[test]
    fn only_domains_are_edited() {
        assert!(matches!(
            with_lease("<domain>", "ls", "vm1", "/dev/sdb"),
            Err(DomainLeaseError::Xml(_))
        ));
        assert_eq!(
            with_lease("<network/>", "ls", "vm1", "/dev/sdb"),
            Err(DomainLeaseError::NotADomain("network".to_string()))
        );
        // A <devices> of another namespace is not libvirt's.
        let other = DOMAIN.replace("<qemu:commandline>", "<qemu:devices/><qemu:commandline>");
        let out = with_lease(&other, "ls", "vm1", "/dev/sdb").expect("lease");
        assert!(out.contains("<qemu:devices/>"));
        assert_eq!(leases(&out), vec![lease("ls", "vm1", "/dev/sdb")]);
    }
}
