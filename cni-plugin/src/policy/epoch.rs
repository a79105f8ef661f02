//! The verified-connection fast path. A connection that the tenant rules
//! accepted is marked with the table's epoch (in the configured bits of its
//! conntrack mark); while the epoch stands, a pod's packet on it passes in the
//! forward chain's first rule — its source proven, its mark compared — instead
//! of the anti-spoofing chain and the three set lookups of the tenant check.
//! Anything that can take a permission away (a DEL, whose address may go to
//! another project's pod next; a peer leaving; join, global, isolate) moves the
//! epoch in the same transaction, so every open connection meets the rules
//! again at its next packet: no established connection outlives the policy
//! that allowed it. A change that only adds permissions (an ADD) leaves it.

use serde_json::json;

use super::nftjson::{ct, matches, verdict, Batch};

/// Holds the one rule `ct mark & mask == epoch accept`, which the forward
/// chain's first rule jumps to. A chain of its own, so that moving the epoch
/// changes no rule of the forward chain; a jump and a compare rather than a
/// map lookup (`mark : verdict`, as before): in a forwarding flood the rule's
/// share of the CPU fell by a fifth.
pub const EPOCH_CHAIN: &str = "epoch";
/// Holds the one rule `ct mark set ct mark & ~mask | epoch accept`; the
/// tenant chains go here when they accept.
pub const VERIFIED_CHAIN: &str = "verified";

/// The epoch as it sits in the conntrack mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochMark {
    pub mask: u32,
    pub value: u32,
}

/// The mark of epoch number `epoch` (any counter; it wraps within the mask),
/// or `None` when the fast path is off. Never 0 in the mask: a connection
/// nobody marked must not pass.
pub fn mark(mask: u32, epoch: u64) -> Option<EpochMark> {
    if mask == 0 {
        return None;
    }
    let shift = mask.trailing_zeros();
    let span = u64::from(mask >> shift);
    let n = (epoch % span) + 1;
    Some(EpochMark {
        mask,
        value: (n as u32) << shift,
    })
}

impl Batch {
    /// Replace the epoch: the checking rule and the marking rule (in a
    /// rebuild, fill the new chains).
    pub fn set_epoch(&mut self, m: EpochMark) {
        let structural = self.structural;
        self.flush_chain(EPOCH_CHAIN);
        self.add_rule(
            EPOCH_CHAIN,
            vec![
                matches(masked_mark(m.mask), "==", json!(m.value)),
                verdict("accept"),
            ],
        );
        self.flush_chain(VERIFIED_CHAIN);
        let keep_others = json!({"&": [ct("mark"), !m.mask]});
        self.add_rule(
            VERIFIED_CHAIN,
            vec![
                json!({"mangle": {"key": ct("mark"), "value": {"|": [keep_others, m.value]}}}),
                verdict("accept"),
            ],
        );
        self.structural = structural;
        self.epoch = Some(m);
    }
}

/// Whether epoch number `epoch` starts a new round of the mask's values:
/// from here on each value was current once before, and a connection may
/// still carry it (see `firewall::conntrack`).
pub fn comes_round(mask: u32, epoch: u64) -> bool {
    mask != 0 && epoch % u64::from(mask >> mask.trailing_zeros()) == 0
}

/// `ct mark & mask`: what the epoch rule compares.
pub fn masked_mark(mask: u32) -> serde_json::Value {
    json!({"&": [ct("mark"), mask]})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_stay_inside_the_mask_and_are_never_zero() {
        assert_eq!(mark(0, 7), None);
        let m = mark(0xffff_f000, 0).unwrap();
        assert_eq!(m.value, 0x1000);
        assert_eq!(mark(0xffff_f000, 1).unwrap().value, 0x2000);
        // The last epoch before the counter comes round, then the first again.
        assert_eq!(mark(0xffff_f000, 0xf_fffe).unwrap().value, 0xffff_f000);
        assert_eq!(mark(0xffff_f000, 0xf_ffff).unwrap().value, 0x1000);
        assert_eq!(
            mark(u32::MAX, u64::from(u32::MAX) - 1).unwrap().value,
            u32::MAX
        );
        assert!(comes_round(0xffff_f000, 0xf_ffff * 2) && !comes_round(0xffff_f000, 0xf_fffe));
        assert!(!comes_round(0, 0));
        let first = |e| mark(0x3000, e).unwrap().value == 0x1000;
        assert!((1..20).all(|e| comes_round(0x3000, e) == first(e)));
        for e in 0..600 {
            let m = mark(0x0000_ff00, e).unwrap();
            assert_eq!(m.value & !m.mask, 0);
            assert_ne!(m.value, 0);
        }
    }

    #[test]
    fn the_epoch_rules_replace_what_the_chains_held() {
        let mut b = Batch::new("moat");
        b.set_epoch(mark(0xff00_0000, 4).unwrap());
        let cmds = serde_json::to_string(&b.cmds).unwrap();
        assert!(!b.structural, "element-sized: goes in-process");
        assert_eq!(b.epoch.unwrap().value, 0x0500_0000);
        for want in [
            r#"{"flush":{"chain":{"family":"inet","name":"epoch","table":"moat"}}}"#,
            r#""op":"==","right":83886080}},{"accept":null}"#,
            r#"{"flush":{"chain":{"family":"inet","name":"verified","table":"moat"}}}"#,
            r#"{"&":[{"ct":{"key":"mark"}},16777215]},83886080"#,
        ] {
            assert!(cmds.contains(want), "{want} not in {cmds}");
        }
        assert!(b.elements.is_empty(), "no element: the epoch is in a rule");
    }
}
