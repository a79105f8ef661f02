//! The epoch (see `policy::epoch`) as nf_tables messages: two chains each
//! emptied (DELRULE naming only the chain) and given their one rule, laid out
//! as `nft --debug=netlink` shows nft encoding them. The checking rule:
//!
//! ```text
//! [ ct load mark => reg 1 ]
//! [ bitwise reg 1 = ( reg 1 & MASK ) ^ 0x00000000 ]
//! [ cmp eq reg 1 EPOCH ]
//! [ immediate reg 0 accept ]
//! ```
//!
//! and the marking rule:
//!
//! ```text
//! [ ct load mark => reg 1 ]
//! [ bitwise reg 1 = ( reg 1 & ~MASK ) ^ EPOCH ]
//! [ ct set mark with reg 1 ]
//! [ immediate reg 0 accept ]
//! ```
//!
//! The mark is a host-order register: its constants go in host order.

use super::tenant::{be, expr, immediate};
use super::tenant::{
    NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS, NFTA_RULE_TABLE, NFT_CMP_EQ, NFT_MSG_NEWRULE, NFT_REG_1,
};
use super::{Attrs, Msg, NFTA_DATA_VALUE, NLM_F_APPEND, NLM_F_CREATE};
use crate::policy::epoch::{EpochMark, EPOCH_CHAIN, VERIFIED_CHAIN};
use crate::policy::nftjson::Verdict;

const NFT_MSG_DELRULE: u16 = 8;
const NFT_CT_MARK: u32 = 3;

/// `reg 1 = (ct mark & and) ^ xor`
fn masked_mark(list: &mut Attrs, and: u32, xor: u32) {
    expr(list, "ct", |d| {
        d.put(1, &be(NFT_REG_1)); // NFTA_CT_DREG
        d.put(2, &be(NFT_CT_MARK)); // NFTA_CT_KEY
    });
    expr(list, "bitwise", |d| {
        d.put(1, &be(NFT_REG_1)); // NFTA_BITWISE_SREG
        d.put(2, &be(NFT_REG_1)); // NFTA_BITWISE_DREG
        d.put(3, &be(4)); // NFTA_BITWISE_LEN
        d.nested(4, |v| v.put(NFTA_DATA_VALUE, &and.to_ne_bytes())); // NFTA_BITWISE_MASK
        d.nested(5, |v| v.put(NFTA_DATA_VALUE, &xor.to_ne_bytes())); // NFTA_BITWISE_XOR
    });
}

fn check_rule(list: &mut Attrs, m: EpochMark) {
    masked_mark(list, m.mask, 0);
    expr(list, "cmp", |d| {
        d.put(1, &be(NFT_REG_1)); // NFTA_CMP_SREG
        d.put(2, &be(NFT_CMP_EQ)); // NFTA_CMP_OP
        d.nested(3, |v| v.put(NFTA_DATA_VALUE, &m.value.to_ne_bytes())); // NFTA_CMP_DATA
    });
    immediate(list, &Verdict::Accept);
}

fn mark_rule(list: &mut Attrs, m: EpochMark) {
    masked_mark(list, !m.mask, m.value);
    expr(list, "ct", |d| {
        d.put(2, &be(NFT_CT_MARK)); // NFTA_CT_KEY
        d.put(4, &be(NFT_REG_1)); // NFTA_CT_SREG
    });
    immediate(list, &Verdict::Accept);
}

fn chain_attrs(table: &str, chain: &str) -> Attrs {
    let mut a = Attrs(Vec::new());
    a.put_str(NFTA_RULE_TABLE, table);
    a.put_str(NFTA_RULE_CHAIN, chain);
    a
}

/// The chain flushed, then given the one rule `rule` writes.
fn replace_rule(table: &str, chain: &str, rule: impl FnOnce(&mut Attrs)) -> [Msg; 2] {
    let mut new = chain_attrs(table, chain);
    new.nested(NFTA_RULE_EXPRESSIONS, rule);
    [
        Msg {
            what: format!("flush of chain {chain}"),
            ty: NFT_MSG_DELRULE,
            flags: 0,
            attrs: chain_attrs(table, chain).0,
        },
        Msg {
            what: format!("new rule in chain {chain}"),
            ty: NFT_MSG_NEWRULE,
            flags: NLM_F_CREATE | NLM_F_APPEND,
            attrs: new.0,
        },
    ]
}

pub(super) fn messages(table: &str, m: EpochMark) -> Vec<Msg> {
    let mut out = Vec::with_capacity(4);
    out.extend(replace_rule(table, EPOCH_CHAIN, |l| check_rule(l, m)));
    out.extend(replace_rule(table, VERIFIED_CHAIN, |l| mark_rule(l, m)));
    out
}
