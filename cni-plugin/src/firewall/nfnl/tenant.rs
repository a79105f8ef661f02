//! A tenant chain as nf_tables messages: the chain, one address set per
//! family and, per family, the rule `<ip|ip6> daddr @<set> accept`, laid out
//! as `nft --debug=netlink` shows nft itself encoding it:
//!
//! ```text
//! [ meta load nfproto => reg 1 ]
//! [ cmp eq reg 1 0x00000002 ]
//! [ payload load 4b @ network header + 16 => reg 1 ]
//! [ lookup reg 1 set tenant-a-4 ]
//! [ immediate reg 0 accept ]
//! ```

use super::{put_verdict, Attrs, Msg, NFTA_DATA_VALUE, NFTA_LIST_ELEM};
use super::{NLM_F_APPEND, NLM_F_CREATE, NLM_F_EXCL};
use crate::policy::nftjson::{Verdict, FAMS};

const NFT_MSG_NEWCHAIN: u16 = 3;
pub(super) const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_NEWSET: u16 = 9;
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_SET_TABLE: u16 = 1;
const NFTA_SET_NAME: u16 = 2;
const NFTA_SET_FLAGS: u16 = 3;
const NFTA_SET_KEY_TYPE: u16 = 4;
const NFTA_SET_KEY_LEN: u16 = 5;
const NFTA_SET_ID: u16 = 10;
pub(super) const NFTA_RULE_TABLE: u16 = 1;
pub(super) const NFTA_RULE_CHAIN: u16 = 2;
pub(super) const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
const NFT_REG_VERDICT: u32 = 0;
pub(super) const NFT_REG_1: u32 = 1;
const NFT_META_NFPROTO: u32 = 15;
pub(super) const NFT_CMP_EQ: u32 = 0;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
/// nft's datatype numbers, which `nft list` reads back as the set's type.
const TYPE_IPADDR: u32 = 7;
const TYPE_IP6ADDR: u32 = 8;

/// Per family: nfproto, daddr offset, address length, set key type.
fn family(v4: bool) -> (u8, u32, u32, u32) {
    if v4 {
        (2, 16, 4, TYPE_IPADDR)
    } else {
        (10, 24, 16, TYPE_IP6ADDR)
    }
}

pub(super) fn be(v: u32) -> [u8; 4] {
    v.to_be_bytes()
}

pub(super) fn expr(list: &mut Attrs, name: &str, data: impl FnOnce(&mut Attrs)) {
    list.nested(NFTA_LIST_ELEM, |e| {
        e.put_str(NFTA_EXPR_NAME, name);
        e.nested(NFTA_EXPR_DATA, data);
    });
}

fn accept_members(list: &mut Attrs, set: &str, set_id: u32, v4: bool, accept: &Verdict) {
    let (nfproto, offset, len, _) = family(v4);
    expr(list, "meta", |d| {
        d.put(1, &be(NFT_REG_1)); // NFTA_META_DREG
        d.put(2, &be(NFT_META_NFPROTO)); // NFTA_META_KEY
    });
    expr(list, "cmp", |d| {
        d.put(1, &be(NFT_REG_1)); // NFTA_CMP_SREG
        d.put(2, &be(NFT_CMP_EQ)); // NFTA_CMP_OP
        d.nested(3, |v| v.put(NFTA_DATA_VALUE, &[nfproto])); // NFTA_CMP_DATA
    });
    expr(list, "payload", |d| {
        d.put(1, &be(NFT_REG_1)); // NFTA_PAYLOAD_DREG
        d.put(2, &be(NFT_PAYLOAD_NETWORK_HEADER)); // NFTA_PAYLOAD_BASE
        d.put(3, &be(offset)); // NFTA_PAYLOAD_OFFSET
        d.put(4, &be(len)); // NFTA_PAYLOAD_LEN
    });
    expr(list, "lookup", |d| {
        d.put_str(1, set); // NFTA_LOOKUP_SET
        d.put(2, &be(NFT_REG_1)); // NFTA_LOOKUP_SREG
        d.put(4, &be(set_id)); // NFTA_LOOKUP_SET_ID
    });
    immediate(list, accept);
}

/// `immediate reg 0 <verdict>`: a rule's verdict.
pub(super) fn immediate(list: &mut Attrs, verdict: &Verdict) {
    expr(list, "immediate", |d| {
        d.put(1, &be(NFT_REG_VERDICT)); // NFTA_IMMEDIATE_DREG
        d.nested(2, |data| put_verdict(data, verdict)); // NFTA_IMMEDIATE_DATA
    });
}

/// NEWCHAIN (exclusive: a chain that exists after all fails the batch),
/// then per family NEWSET and NEWRULE.
pub(super) fn chain_messages(
    table: &str,
    chain: &str,
    first_set_id: u32,
    accept: &Verdict,
) -> Vec<Msg> {
    let mut c = Attrs(Vec::new());
    c.put_str(NFTA_CHAIN_TABLE, table);
    c.put_str(NFTA_CHAIN_NAME, chain);
    let mut out = vec![Msg {
        what: format!("new chain {chain}"),
        ty: NFT_MSG_NEWCHAIN,
        flags: NLM_F_CREATE | NLM_F_EXCL,
        attrs: c.0,
    }];
    for (i, f) in FAMS.iter().enumerate() {
        let (set, v4) = (f.tenant_set(chain), f.is_v4());
        let (_, _, len, key_type) = family(v4);
        let set_id = first_set_id + i as u32;
        let mut s = Attrs(Vec::new());
        s.put_str(NFTA_SET_TABLE, table);
        s.put_str(NFTA_SET_NAME, &set);
        s.put(NFTA_SET_FLAGS, &be(0));
        s.put(NFTA_SET_KEY_TYPE, &be(key_type));
        s.put(NFTA_SET_KEY_LEN, &be(len));
        s.put(NFTA_SET_ID, &be(set_id));
        out.push(Msg {
            what: format!("new set {set}"),
            ty: NFT_MSG_NEWSET,
            flags: NLM_F_CREATE | NLM_F_EXCL,
            attrs: s.0,
        });
        let mut r = Attrs(Vec::new());
        r.put_str(NFTA_RULE_TABLE, table);
        r.put_str(NFTA_RULE_CHAIN, chain);
        r.nested(NFTA_RULE_EXPRESSIONS, |list| {
            accept_members(list, &set, set_id, v4, accept)
        });
        out.push(Msg {
            what: format!("new rule in chain {chain}"),
            ty: NFT_MSG_NEWRULE,
            flags: NLM_F_CREATE | NLM_F_APPEND,
            attrs: r.0,
        });
    }
    out
}
