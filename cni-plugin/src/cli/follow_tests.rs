//! The drop follower with a fake feed: decoding, naming, counting.

use std::collections::VecDeque;
use std::time::UNIX_EPOCH;

use crate::spec::CniError;

use etherparse::PacketBuilder;

use super::*;
use crate::firewall::nflog::NflogError;

fn udp4(src: [u8; 4], dst: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv4(src, dst, 64)
        .udp(40000, 5301)
        .write(&mut out, b"hello")
        .unwrap();
    out
}

fn v6(last: u8) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[0] = 0xfd;
    a[15] = last;
    a
}

fn tcp6(src: u8, dst: u8) -> Vec<u8> {
    let mut out = Vec::new();
    PacketBuilder::ipv6(v6(src), v6(dst), 64)
        .tcp(41000, 80, 1, 1000)
        .write(&mut out, &[0u8; 300])
        .unwrap();
    out
}

fn owners() -> Owners {
    Owners {
        addrs: [
            ("10.1.0.2", "shop"),
            ("10.1.0.5", "bank"),
            ("fd00::2", "shop"),
        ]
        .into_iter()
        .map(|(ip, p)| (ip.parse().unwrap(), p.to_string()))
        .collect(),
        links: [("moat-shop1".to_string(), "shop".to_string())].into(),
    }
}

#[test]
fn decodes_addresses_ports_and_protocols() {
    let f = decode(&udp4([10, 1, 0, 2], [10, 1, 0, 5])).unwrap();
    assert_eq!(
        (f.src.to_string(), f.dst.to_string()),
        ("10.1.0.2".into(), "10.1.0.5".into())
    );
    assert_eq!((f.what.as_str(), f.ports), ("udp", Some((40000, 5301))));

    // Cut at the rules' snaplen: the headers are still read.
    let f = decode(&tcp6(2, 3)[..128]).unwrap();
    assert_eq!((f.what.as_str(), f.ports), ("tcp", Some((41000, 80))));
    assert_eq!(f.dst.to_string(), "fd00::3");

    let mut ping = Vec::new();
    PacketBuilder::ipv4([10, 1, 0, 2], [10, 1, 0, 5], 64)
        .icmpv4_echo_request(1, 1)
        .write(&mut ping, &[])
        .unwrap();
    assert_eq!(decode(&ping).unwrap().what, "icmp type 8");

    assert_eq!(decode(&[0x45, 0, 0]), None, "too short for a header");
    assert_eq!(decode(&[]), None);
}

#[test]
fn a_line_names_both_projects_and_the_reason() {
    let at = UNIX_EPOCH + Duration::from_secs(1_800_000_000);
    let f = decode(&udp4([10, 1, 0, 2], [10, 1, 0, 5])).unwrap();
    assert_eq!(
        line(at, Some(DropKind::CrossTenant), &f, None, &owners()),
        "2027-01-15T08:00:00Z cross-tenant  shop 10.1.0.2:40000 -> bank 10.1.0.5:5301 udp"
    );
    let f = decode(&tcp6(2, 9)).unwrap();
    assert_eq!(
        line(at, None, &f, None, &owners()),
        "2027-01-15T08:00:00Z dropped       shop [fd00::2]:41000 -> - [fd00::9]:80 tcp"
    );
    // Forged: bank's address, but it came in on shop's veth.
    let f = decode(&udp4([10, 1, 0, 5], [10, 1, 0, 2])).unwrap();
    assert_eq!(
        line(
            at,
            Some(DropKind::Spoofed),
            &f,
            Some("moat-shop1"),
            &owners()
        ),
        "2027-01-15T08:00:00Z spoofed       shop 10.1.0.5:40000 -> shop 10.1.0.2:5301 udp"
    );
}

struct Fake(VecDeque<Result<Delivery, NflogError>>);

impl DropFeed for Fake {
    fn next(&mut self) -> Result<Delivery, NflogError> {
        self.0
            .pop_front()
            .unwrap_or_else(|| panic!("the follower read past its count"))
    }
}

fn logged(kind: DropKind, payload: Vec<u8>) -> LoggedPacket {
    LoggedPacket {
        prefix: kind.prefix().into(),
        payload,
        indev: None,
    }
}

#[test]
fn follows_until_the_count_and_reports_lost_messages() {
    let a_to_b = udp4([10, 1, 0, 2], [10, 1, 0, 5]);
    let mut feed = Fake(VecDeque::from([
        Ok(Delivery::Packets(vec![logged(
            DropKind::CrossTenant,
            a_to_b.clone(),
        )])),
        Ok(Delivery::Lost),
        Ok(Delivery::Packets(vec![
            logged(DropKind::Spoofed, vec![0x60]), // undecodable: skipped
            logged(DropKind::Spoofed, udp4([10, 1, 0, 5], [10, 1, 0, 2])),
            logged(DropKind::EgressDenied, a_to_b),
        ])),
    ]));
    let mut reads = 0;
    let mut out = Vec::new();
    let load = || {
        reads += 1;
        Ok(owners())
    };
    follow(
        &mut feed,
        &mut StateOwners::new(load, vec![]),
        Some(3),
        &mut out,
    )
    .unwrap();
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(
        lines[0].contains("cross-tenant  shop 10.1.0.2:40000 -> bank"),
        "{text}"
    );
    assert!(lines[1].starts_with("(log messages lost"), "{text}");
    assert!(
        lines[2].contains("spoofed       bank 10.1.0.5:40000 -> shop"),
        "{text}"
    );
    assert!(lines[3].contains("egress-denied shop"), "{text}");
    assert!(feed.0.is_empty());
    assert_eq!(reads, 1, "every address was known: the store is read once");
}

/// Answers from a fixed map, noting whether the follower said a name was missing.
struct Asked {
    owners: Owners,
    missing: Vec<bool>,
}

impl OwnerSource for Asked {
    fn owners(&mut self, missing: bool) -> Result<&Owners, CniError> {
        self.missing.push(missing);
        if missing {
            self.owners
                .addrs
                .insert("10.1.0.7".parse().unwrap(), "newcomer".into());
        }
        Ok(&self.owners)
    }
}

#[test]
fn an_unknown_address_asks_the_source_again() {
    let stranger = udp4([10, 1, 0, 7], [10, 1, 0, 5]);
    let mut feed = Fake(VecDeque::from([Ok(Delivery::Packets(vec![
        logged(DropKind::CrossTenant, udp4([10, 1, 0, 2], [10, 1, 0, 5])),
        logged(DropKind::CrossTenant, stranger.clone()),
        logged(DropKind::CrossTenant, stranger),
    ]))]));
    let mut source = Asked {
        owners: owners(),
        missing: vec![],
    };
    let mut out = Vec::new();
    follow(&mut feed, &mut source, Some(3), &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    assert_eq!(
        text.matches("newcomer 10.1.0.7:40000 -> bank").count(),
        2,
        "{text}"
    );
    assert_eq!(
        source.missing,
        [false, false, true, false],
        "asked again once, then known"
    );
}

#[test]
fn state_owners_reload_when_the_state_changes_or_a_name_stays_missing() {
    let tmp = tempfile::Builder::new()
        .prefix("moat-owners-")
        .tempdir()
        .unwrap();
    let dir = tmp.path();
    let file = dir.join("records");
    std::fs::write(&file, "").unwrap();
    let loads = std::cell::Cell::new(0);
    let load = || {
        loads.set(loads.get() + 1);
        Ok(owners())
    };
    let mut src = StateOwners::new(load, vec![file.clone(), dir.join("absent")]);
    src.owners(false).unwrap();
    src.owners(false).unwrap();
    src.owners(true).unwrap();
    assert_eq!(
        loads.get(),
        1,
        "unchanged, and missing only just after a load"
    );

    let later = SystemTime::now() + Duration::from_secs(5);
    std::fs::File::options()
        .write(true)
        .open(&file)
        .unwrap()
        .set_modified(later)
        .unwrap();
    src.owners(false).unwrap();
    assert_eq!(loads.get(), 2, "the records changed");

    src.loaded_at = Instant::now() - REFRESH_EVERY;
    src.owners(false).unwrap();
    assert_eq!(loads.get(), 2, "nothing missing: no reason to read");
    src.owners(true).unwrap();
    assert_eq!(loads.get(), 3, "a name still missing a second later");
    tmp.close().unwrap();
}

#[test]
fn a_feed_error_ends_the_follow() {
    let mut feed = Fake(VecDeque::from([Err(NflogError::Decode("bad".into()))]));
    let mut source = StateOwners::new(|| Ok(owners()), vec![]);
    let err = follow(&mut feed, &mut source, None, &mut Vec::new()).unwrap_err();
    assert!(
        err.to_string().contains("bad") || format!("{err:?}").contains("bad"),
        "{err:?}"
    );
}
