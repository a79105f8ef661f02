//! Pure address allocation: which address a new attachment gets, given what is taken.

use std::collections::HashSet;
use std::net::IpAddr;

use crate::spec::range::{from_u128, to_u128, Range, RangeSet};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AllocError {
    #[error("no free address left in range set {set} ({first_subnet})")]
    Exhausted { set: usize, first_subnet: String },
}

/// Pick one free address from each range set. Allocation continues after the
/// last address handed out (`last[i]`), so a just-released address is not
/// reused at once: stale conntrack entries or ARP caches of a deleted pod then
/// never reach its successor.
pub fn allocate(
    sets: &[RangeSet],
    taken: &HashSet<IpAddr>,
    last: &[Option<IpAddr>],
) -> Result<Vec<IpAddr>, AllocError> {
    allocate_probing(sets, last, |ip| Some(taken.contains(&ip)))
        .expect("a set lookup always answers")
}

/// [`allocate`] asking `taken` about one candidate at a time, so a store can
/// answer with a lookup instead of listing every reservation (which grows
/// with the pods). `taken` returning `None` gives up: the result is then
/// `None` and the caller falls back to the full list.
pub fn allocate_probing(
    sets: &[RangeSet],
    last: &[Option<IpAddr>],
    mut taken: impl FnMut(IpAddr) -> Option<bool>,
) -> Option<Result<Vec<IpAddr>, AllocError>> {
    let mut out = Vec::with_capacity(sets.len());
    for (i, set) in sets.iter().enumerate() {
        match next_free(set, &mut taken, last.get(i).copied().flatten())? {
            Some(ip) => out.push(ip),
            None => {
                return Some(Err(AllocError::Exhausted {
                    set: i,
                    first_subnet: set.ranges[0].subnet.to_string(),
                }))
            }
        }
    }
    Some(Ok(out))
}

/// `None`: the prober gave up; `Some(None)`: the set is full.
fn next_free(
    set: &RangeSet,
    taken: &mut impl FnMut(IpAddr) -> Option<bool>,
    last: Option<IpAddr>,
) -> Option<Option<IpAddr>> {
    let n = set.ranges.len();
    // Start in the range holding `last`, just after it; otherwise at the first range.
    let (start_range, start_at) = last
        .and_then(|ip| {
            set.ranges
                .iter()
                .position(|r| in_bounds(r, ip))
                .map(|p| (p, Some(ip)))
        })
        .unwrap_or((0, None));
    for step in 0..=n {
        let r = &set.ranges[(start_range + step) % n];
        let v6 = r.subnet.is_ipv6();
        let (lo, hi) = (to_u128(r.start), to_u128(r.end));
        // The first visit starts after `last`; the wrap-around visit covers what was skipped.
        let segments: Vec<(u128, u128)> = match (step, start_at) {
            (0, Some(ip)) => vec![(to_u128(ip).saturating_add(1), hi)],
            (s, Some(ip)) if s == n => vec![(lo, to_u128(ip))],
            _ => vec![(lo, hi)],
        };
        for (a, b) in segments {
            let mut x = a;
            while x <= b {
                let ip = from_u128(x, v6);
                if ip != r.gateway && !taken(ip)? {
                    return Some(Some(ip));
                }
                x += 1;
            }
        }
    }
    Some(None)
}

fn in_bounds(r: &Range, ip: IpAddr) -> bool {
    ip.is_ipv6() == r.subnet.is_ipv6()
        && to_u128(r.start) <= to_u128(ip)
        && to_u128(ip) <= to_u128(r.end)
}

/// Free addresses left in a range set (for STATUS).
pub fn free_count(set: &RangeSet, taken: &HashSet<IpAddr>) -> u128 {
    let size: u128 = set.ranges.iter().map(Range::size).sum();
    let used = taken.iter().filter(|ip| set.contains(**ip)).count() as u128;
    size.saturating_sub(used)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::range::parse_range_sets;
    use serde_json::json;

    fn sets(v: serde_json::Value) -> Vec<RangeSet> {
        parse_range_sets(&v).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn probing_agrees_with_the_full_list_and_can_give_up() {
        let s = sets(json!([[{"subnet": "10.0.0.0/24"}]]));
        let taken: HashSet<IpAddr> = ["10.0.0.6", "10.0.0.7"].iter().map(|a| ip(a)).collect();
        let last = [Some(ip("10.0.0.5"))];
        let mut asked = Vec::new();
        let probed = allocate_probing(&s, &last, |a| {
            asked.push(a);
            Some(taken.contains(&a))
        });
        assert_eq!(probed, Some(allocate(&s, &taken, &last)));
        assert_eq!(asked, [ip("10.0.0.6"), ip("10.0.0.7"), ip("10.0.0.8")]);
        let mut budget = 2;
        let gave_up = allocate_probing(&s, &last, |a| {
            budget -= 1;
            (budget >= 0).then(|| taken.contains(&a))
        });
        assert_eq!(gave_up, None);
    }

    #[test]
    fn first_allocation_skips_gateway() {
        let s = sets(json!([[{"subnet": "10.0.0.0/24"}]]));
        assert_eq!(
            allocate(&s, &HashSet::new(), &[]).unwrap(),
            vec![ip("10.0.0.2")]
        );
    }

    #[test]
    fn continues_after_last_and_wraps() {
        let s = sets(json!([[{"subnet": "10.0.0.0/29"}]]));
        let taken: HashSet<_> = [ip("10.0.0.3")].into();
        assert_eq!(
            allocate(&s, &taken, &[Some(ip("10.0.0.5"))]).unwrap(),
            vec![ip("10.0.0.6")]
        );
        assert_eq!(
            allocate(&s, &taken, &[Some(ip("10.0.0.6"))]).unwrap(),
            vec![ip("10.0.0.2")]
        );
    }

    #[test]
    fn spans_ranges_and_reports_exhaustion() {
        let s = sets(json!([[{"subnet": "10.0.0.0/30"}, {"subnet": "10.0.1.0/30"}]]));
        // Each /30 has .1 (gateway) and .2 usable: only .2 of each is free.
        let taken: HashSet<_> = [ip("10.0.0.2")].into();
        assert_eq!(allocate(&s, &taken, &[]).unwrap(), vec![ip("10.0.1.2")]);
        let full: HashSet<_> = [ip("10.0.0.2"), ip("10.0.1.2")].into();
        assert!(matches!(
            allocate(&s, &full, &[]),
            Err(AllocError::Exhausted { set: 0, .. })
        ));
        assert_eq!(free_count(&s[0], &taken), 1);
    }

    #[test]
    fn dual_stack_gets_one_of_each() {
        let s = sets(json!([[{"subnet": "10.0.0.0/24"}], [{"subnet": "fd00::/64"}]]));
        let got = allocate(&s, &HashSet::new(), &[None, None]).unwrap();
        assert_eq!(got, vec![ip("10.0.0.2"), ip("fd00::2")]);
    }

    #[test]
    fn never_hands_out_a_taken_address() {
        let s = sets(json!([[{"subnet": "10.0.0.0/26"}]]));
        let mut taken = HashSet::new();
        let mut last = None;
        for _ in 0..61 {
            let got = allocate(&s, &taken, &[last]).unwrap()[0];
            assert!(taken.insert(got), "{got} handed out twice");
            last = Some(got);
        }
        assert!(allocate(&s, &taken, &[last]).is_err());
    }
}
