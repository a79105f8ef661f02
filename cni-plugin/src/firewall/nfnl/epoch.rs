//! The epoch (see `policy::epoch`) as nf_tables messages: the epoch map
//! flushed (DELSETELEM naming only the map) and given its one element, and the
//! marking chain emptied (DELRULE naming only the chain) and given its rule,
//! laid out as `nft --debug=netlink` shows nft encoding it:
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
    NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS, NFTA_RULE_TABLE, NFT_MSG_NEWRULE, NFT_REG_1,
};
use super::{set_elements, Attrs, Msg, NFTA_DATA_VALUE, NLM_F_APPEND, NLM_F_CREATE};
use super::{NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_TABLE, NFT_MSG_DELSETELEM};
use crate::policy::epoch::{EpochMark, EPOCH_MAP, VERIFIED_CHAIN};
use crate::policy::nftjson::{Elem, ElementOp, Verdict};

const NFT_MSG_DELRULE: u16 = 8;
const NFT_CT_MARK: u32 = 3;

fn mark_rule(list: &mut Attrs, m: EpochMark) {
    expr(list, "ct", |d| {
        d.put(1, &be(NFT_REG_1)); // NFTA_CT_DREG
        d.put(2, &be(NFT_CT_MARK)); // NFTA_CT_KEY
    });
    expr(list, "bitwise", |d| {
        d.put(1, &be(NFT_REG_1)); // NFTA_BITWISE_SREG
        d.put(2, &be(NFT_REG_1)); // NFTA_BITWISE_DREG
        d.put(3, &be(4)); // NFTA_BITWISE_LEN
        d.nested(4, |v| v.put(NFTA_DATA_VALUE, &(!m.mask).to_ne_bytes())); // NFTA_BITWISE_MASK
        d.nested(5, |v| v.put(NFTA_DATA_VALUE, &m.value.to_ne_bytes())); // NFTA_BITWISE_XOR
    });
    expr(list, "ct", |d| {
        d.put(2, &be(NFT_CT_MARK)); // NFTA_CT_KEY
        d.put(4, &be(NFT_REG_1)); // NFTA_CT_SREG
    });
    immediate(list, &Verdict::Accept);
}

fn named(table: &str, table_attr: u16, name_attr: u16, name: &str) -> Attrs {
    let mut a = Attrs(Vec::new());
    a.put_str(table_attr, table);
    a.put_str(name_attr, name);
    a
}

pub(super) fn messages(table: &str, m: EpochMark) -> Vec<Msg> {
    let flush_map = named(
        table,
        NFTA_SET_ELEM_LIST_TABLE,
        NFTA_SET_ELEM_LIST_SET,
        EPOCH_MAP,
    );
    let element = ElementOp {
        add: true,
        set: EPOCH_MAP.into(),
        elems: vec![Elem::MarkMap(m.value, Verdict::Accept)],
    };
    let mut rule = named(table, NFTA_RULE_TABLE, NFTA_RULE_CHAIN, VERIFIED_CHAIN);
    rule.nested(NFTA_RULE_EXPRESSIONS, |list| mark_rule(list, m));
    vec![
        Msg {
            what: format!("flush of map {EPOCH_MAP}"),
            ty: NFT_MSG_DELSETELEM,
            flags: 0,
            attrs: flush_map.0,
        },
        set_elements(&element, table),
        Msg {
            what: format!("flush of chain {VERIFIED_CHAIN}"),
            ty: NFT_MSG_DELRULE,
            flags: 0,
            attrs: named(table, NFTA_RULE_TABLE, NFTA_RULE_CHAIN, VERIFIED_CHAIN).0,
        },
        Msg {
            what: format!("new rule in chain {VERIFIED_CHAIN}"),
            ty: NFT_MSG_NEWRULE,
            flags: NLM_F_CREATE | NLM_F_APPEND,
            attrs: rule.0,
        },
    ]
}
