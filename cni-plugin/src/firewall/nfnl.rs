//! Pod batches straight to nf_tables over netlink, in-process.
//!
//! Every ADD and DEL changes set and map elements, and a project's first pod
//! on a node also makes its tenant chain; running the `nft` program for that
//! costs a process, a JSON parse and a cache fetch that grows with the sets
//! (3 ms of a 5 ms ADD). The maintained Rust crates that speak nf_tables
//! netlink are GPL (rustables) or bind the GPL libnftnl, which this
//! Apache-2.0 project cannot link; so the few message kinds needed here
//! (batch begin/end, NEWSETELEM, DELSETELEM, NEWCHAIN, NEWSET, NEWRULE for a
//! tenant chain, and two chains flushed and refilled for the epoch)
//! are encoded below on netlink-sys; so are peers syncs and policy changes,
//! which are made of the same. A rebuild of the whole table still goes
//! through `nft`.

use std::net::IpAddr;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::time::Duration;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};

use crate::netlink::socket::connected;
use crate::policy::nftjson::{Batch, Elem, ElementOp, Verdict};

mod epoch;
mod tenant;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NFPROTO_INET: u8 = 1;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLMSG_ERROR: u16 = 0x2;
const NLA_F_NESTED: u16 = 0x8000;
const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NFT_JUMP: i32 = -3;
const NFT_GOTO: i32 = -4;
const NF_ACCEPT: i32 = 1;
const IFNAMSIZ: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum NfnlError {
    #[error("netfilter netlink socket")]
    Socket(#[source] std::io::Error),
    #[error("nf_tables refused the {what}")]
    Refused {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("nf_tables sent no answer for the batch")]
    NoAnswer,
}

/// Netlink attributes into a buffer, 4-byte aligned.
struct Attrs(Vec<u8>);

impl Attrs {
    fn put(&mut self, ty: u16, payload: &[u8]) {
        let len = 4 + payload.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&ty.to_ne_bytes());
        self.0.extend_from_slice(payload);
        self.pad();
    }

    fn put_str(&mut self, ty: u16, s: &str) {
        let mut b = s.as_bytes().to_vec();
        b.push(0);
        self.put(ty, &b);
    }

    fn nested(&mut self, ty: u16, f: impl FnOnce(&mut Attrs)) {
        let start = self.0.len();
        self.0.extend_from_slice(&[0; 4]);
        f(self);
        let len = (self.0.len() - start) as u16;
        self.0[start..start + 2].copy_from_slice(&len.to_ne_bytes());
        self.0[start + 2..start + 4].copy_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    }

    fn pad(&mut self) {
        while self.0.len() % 4 != 0 {
            self.0.push(0);
        }
    }
}

fn addr_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

fn ifname_bytes(name: &str) -> Vec<u8> {
    let mut b = name.as_bytes().to_vec();
    b.resize(IFNAMSIZ, 0);
    b
}

/// The key as nf_tables stores it: concatenations are the parts back to back,
/// each padded to 4 bytes (an interface name already is).
fn key(e: &Elem) -> Vec<u8> {
    match e {
        Elem::Addr(a) | Elem::AddrMap(a, _) => addr_bytes(a),
        Elem::Ifname(n) => ifname_bytes(n),
        Elem::IfAddr(n, a) => [ifname_bytes(n), addr_bytes(a)].concat(),
        // `meta iif` loads the index in host order.
        Elem::IdxAddr(i, a) => [i.to_ne_bytes().to_vec(), addr_bytes(a)].concat(),
        // `meta iifgroup` loads the device's group in host order.
        Elem::GroupMap(k, _) => k.to_ne_bytes().to_vec(),
    }
}

/// NFTA_DATA_VERDICT: an element's data, an immediate's value.
fn put_verdict(data: &mut Attrs, verdict: &Verdict) {
    data.nested(NFTA_DATA_VERDICT, |v| match verdict {
        Verdict::Jump(chain) | Verdict::Goto(chain) => {
            let code = if matches!(verdict, Verdict::Jump(_)) {
                NFT_JUMP
            } else {
                NFT_GOTO
            };
            v.put(NFTA_VERDICT_CODE, &code.to_be_bytes());
            v.put_str(NFTA_VERDICT_CHAIN, chain);
        }
        Verdict::Accept => v.put(NFTA_VERDICT_CODE, &NF_ACCEPT.to_be_bytes()),
    })
}

fn element(list: &mut Attrs, e: &Elem) {
    list.nested(NFTA_LIST_ELEM, |el| {
        el.nested(NFTA_SET_ELEM_KEY, |k| k.put(NFTA_DATA_VALUE, &key(e)));
        if let Elem::AddrMap(_, verdict) | Elem::GroupMap(_, verdict) = e {
            el.nested(NFTA_SET_ELEM_DATA, |d| put_verdict(d, verdict))
        }
    });
}

/// One netlink message: header, nfgenmsg, attributes.
fn message(
    out: &mut Vec<u8>,
    ty: u16,
    flags: u16,
    seq: u32,
    family: u8,
    res_id: u16,
    attrs: &[u8],
) {
    let len = 16 + 4 + attrs.len();
    out.extend_from_slice(&(len as u32).to_ne_bytes());
    out.extend_from_slice(&ty.to_ne_bytes());
    out.extend_from_slice(&flags.to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&0u32.to_ne_bytes());
    out.extend_from_slice(&[family, 0]);
    out.extend_from_slice(&res_id.to_be_bytes());
    out.extend_from_slice(attrs);
}

/// One message of a batch, and what to call it if the kernel refuses it.
struct Msg {
    what: String,
    ty: u16,
    flags: u16,
    attrs: Vec<u8>,
}

fn set_elements(op: &ElementOp, table: &str) -> Msg {
    let mut a = Attrs(Vec::new());
    a.put_str(NFTA_SET_ELEM_LIST_TABLE, table);
    a.put_str(NFTA_SET_ELEM_LIST_SET, &op.set);
    a.nested(NFTA_SET_ELEM_LIST_ELEMENTS, |list| {
        for e in &op.elems {
            element(list, e);
        }
    });
    let (ty, flags, verb) = if op.add {
        (NFT_MSG_NEWSETELEM, NLM_F_CREATE, "add")
    } else {
        (NFT_MSG_DELSETELEM, 0, "delete")
    };
    Msg {
        what: format!("element {verb} in set {}", op.set),
        ty,
        flags,
        attrs: a.0,
    }
}

/// The messages of a batch: new tenant chains first, then the epoch rules,
/// then elements (which may be jumps to those chains).
fn messages(table: &str, batch: &Batch) -> Vec<Msg> {
    let mut out = Vec::new();
    let accept = batch.member_verdict();
    for (i, c) in batch.tenant_chains.iter().enumerate() {
        // Set ids name new sets within one transaction: unique per batch.
        out.extend(tenant::chain_messages(table, c, 1 + 2 * i as u32, &accept));
    }
    if let Some(m) = batch.epoch {
        out.extend(epoch::messages(table, m));
    }
    out.extend(batch.elements.iter().map(|op| set_elements(op, table)));
    out
}

/// The batch as bytes; its messages are numbered from `seq + 1`.
fn encode(msgs: &[Msg], seq: u32) -> Vec<u8> {
    let mut out = Vec::new();
    message(
        &mut out,
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        seq,
        0,
        NFNL_SUBSYS_NFTABLES,
        &[],
    );
    for (i, m) in msgs.iter().enumerate() {
        message(
            &mut out,
            (NFNL_SUBSYS_NFTABLES << 8) | m.ty,
            NLM_F_REQUEST | NLM_F_ACK | m.flags,
            seq + 1 + i as u32,
            NFPROTO_INET,
            0,
            &m.attrs,
        );
    }
    message(
        &mut out,
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        seq + 1 + msgs.len() as u32,
        0,
        NFNL_SUBSYS_NFTABLES,
        &[],
    );
    out
}

/// A netfilter netlink socket, kept until the process ends. Closing one runs
/// nf_tables' release hook, which waits for the namespace's deferred
/// transaction cleanup, i.e. an RCU grace period after any recent delete
/// (10 ms measured during a DEL). Never closed under the state lock, so
/// concurrent ADDs and DELs do not queue behind it; the CNI entry hands the
/// last copy to [`crate::linger`] so the runtime does not wait for it either.
pub struct Conn {
    socket: Socket,
    seq: u32,
}

impl Conn {
    pub fn open() -> Result<Self, NfnlError> {
        let socket = connected(NETLINK_NETFILTER).map_err(NfnlError::Socket)?;
        socket.set_rx_buf_sz(1 << 20).map_err(NfnlError::Socket)?;
        set_timeout(&socket, Duration::from_secs(5))?;
        Ok(Self {
            socket,
            seq: std::process::id().wrapping_mul(1 << 8),
        })
    }

    pub fn into_fd(self) -> OwnedFd {
        // SAFETY: the socket gives up its descriptor, which becomes the one owner.
        unsafe { OwnedFd::from_raw_fd(self.socket.into_raw_fd()) }
    }

    /// Apply a pod batch (elements and new tenant chains) to `inet <table>`
    /// in one transaction; the caller sends only batches with something in them.
    pub fn apply(&mut self, batch: &Batch) -> Result<(), NfnlError> {
        let msgs = messages(&batch.table, batch);
        let seq = self.seq;
        self.seq = seq.wrapping_add(msgs.len() as u32 + 2);
        self.socket
            .send(&encode(&msgs, seq), 0)
            .map_err(NfnlError::Socket)?;
        await_acks(&self.socket, &msgs, seq)
    }
}

/// Every message asked for an ack; the kernel sends an error for the
/// message that failed (and aborts the whole batch) or an ack for each.
fn await_acks(socket: &Socket, msgs: &[Msg], seq: u32) -> Result<(), NfnlError> {
    let mut acked = 0;
    let mut buf = vec![0u8; 1 << 16];
    while acked < msgs.len() {
        let n = socket
            .recv(&mut &mut buf[..], 0)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                    NfnlError::NoAnswer
                }
                _ => NfnlError::Socket(e),
            })?;
        let mut off = 0;
        while off + 16 <= n {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
            let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().unwrap());
            let msg_seq = u32::from_ne_bytes(buf[off + 8..off + 12].try_into().unwrap());
            // A batch that failed earlier on this socket may have left acks
            // behind: only this batch's sequence numbers count.
            let ours = msgs.get(msg_seq.wrapping_sub(seq + 1) as usize);
            if let (NLMSG_ERROR, true, Some(m)) = (ty, off + 20 <= n, ours) {
                let errno = i32::from_ne_bytes(buf[off + 16..off + 20].try_into().unwrap());
                if errno != 0 {
                    return Err(NfnlError::Refused {
                        what: m.what.clone(),
                        source: std::io::Error::from_raw_os_error(-errno),
                    });
                }
                acked += 1;
            }
            if len < 16 {
                break;
            }
            off += (len + 3) & !3;
        }
    }
    Ok(())
}

fn set_timeout(socket: &Socket, d: Duration) -> Result<(), NfnlError> {
    use std::os::fd::AsRawFd;
    let tv = nix::sys::time::TimeVal::new(d.as_secs() as i64, 0);
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(socket.as_raw_fd()) };
    nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::ReceiveTimeout, &tv)
        .map_err(|e| NfnlError::Socket(e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_ne_bytes([b[off], b[off + 1]])
    }

    #[test]
    fn concatenated_keys_and_jump_data_are_laid_out_as_nft_stores_them() {
        let ip: IpAddr = "10.1.2.3".parse().unwrap();
        let k = key(&Elem::IfAddr("moat0123".into(), ip));
        assert_eq!(k.len(), 20);
        assert_eq!(&k[..8], b"moat0123");
        assert_eq!(&k[16..], &[10, 1, 2, 3]);
        let v6: IpAddr = "fd00::1".parse().unwrap();
        assert_eq!(key(&Elem::IfAddr("x".into(), v6)).len(), 32);
        let k = key(&Elem::IdxAddr(0x0102_0304, ip));
        assert_eq!(k[..4], 0x0102_0304u32.to_ne_bytes());
        assert_eq!(k[4..], [10, 1, 2, 3]);
        assert_eq!(key(&Elem::IdxAddr(7, v6)).len(), 20);
        let mut batch = Batch::new("moat");
        batch.element(
            true,
            "tenant4",
            vec![Elem::AddrMap(ip, Verdict::Jump("tenant-a".into()))],
        );
        let bytes = encode(&messages("moat", &batch), 7);
        // begin (20 bytes), the element message, end (20 bytes), all aligned.
        assert_eq!(bytes.len() % 4, 0);
        assert_eq!(u16_at(&bytes, 4), NFNL_MSG_BATCH_BEGIN);
        assert_eq!(
            u16_at(&bytes, 24),
            (NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_NEWSETELEM
        );
        let jump = NFT_JUMP.to_be_bytes();
        assert!(
            bytes.windows(4).any(|w| w == jump),
            "verdict code in network order"
        );
        assert!(bytes.windows(9).any(|w| w == b"tenant-a\0"));
    }

    #[test]
    fn a_group_key_is_in_host_order_and_accept_carries_no_chain() {
        assert_eq!(key(&Elem::GroupMap(7, Verdict::Accept)), 7u32.to_ne_bytes());
        let mut list = Attrs(Vec::new());
        element(&mut list, &Elem::GroupMap(7, Verdict::Accept));
        let accept = NF_ACCEPT.to_be_bytes();
        assert!(list.0.windows(4).any(|w| w == accept));
        // The same element jumping to chain "x" differs only by the chain
        // attribute: 4 bytes of header, "x\0", padded to 8.
        let mut jump = Attrs(Vec::new());
        element(&mut jump, &Elem::GroupMap(7, Verdict::Jump("x".into())));
        assert_eq!(jump.0.len() - list.0.len(), 8);
    }

    #[test]
    fn a_new_tenant_chain_comes_before_the_elements_that_jump_to_it() {
        let mut batch = Batch::new("moat");
        batch.new_tenant_chain("tenant-a");
        batch.element(true, "pods4", vec![Elem::Addr("10.0.0.2".parse().unwrap())]);
        assert!(!batch.structural, "encodable in-process");
        let msgs = messages("moat", &batch);
        let kinds: Vec<u16> = msgs.iter().map(|m| m.ty).collect();
        // chain, then (set, rule) per family, then the element.
        assert_eq!(kinds, [3, 9, 6, 9, 6, NFT_MSG_NEWSETELEM]);
        assert_eq!(msgs[0].flags & NLM_F_EXCL, NLM_F_EXCL);
        let rule = &msgs[2].attrs;
        for name in [
            &b"meta\0"[..],
            b"cmp\0",
            b"payload\0",
            b"lookup\0",
            b"immediate\0",
        ] {
            assert!(rule.windows(name.len()).any(|w| w == name));
        }
        assert!(rule.windows(11).any(|w| w == b"tenant-a-4\0"));
    }

    #[test]
    fn the_epoch_rules_are_replaced_after_new_chains_and_before_elements() {
        let mut batch = Batch::new("moat");
        batch.fast_path = true;
        batch.new_tenant_chain("tenant-a");
        batch.set_epoch(crate::policy::epoch::mark(0xffff_f000, 2).unwrap());
        batch.element(
            false,
            "pods4",
            vec![Elem::Addr("10.0.0.2".parse().unwrap())],
        );
        assert!(!batch.structural, "encodable in-process");
        let msgs = messages("moat", &batch);
        let kinds: Vec<u16> = msgs.iter().map(|m| m.ty).collect();
        // chain, (set, rule) x 2; the epoch chain flushed and its rule
        // added, the marking chain flushed and its rule added; elements.
        assert_eq!(kinds, [3, 9, 6, 9, 6, 8, 6, 8, 6, NFT_MSG_DELSETELEM]);
        // The member rule goes to the verified chain.
        let goto = NFT_GOTO.to_be_bytes();
        assert!(msgs[2].attrs.windows(4).any(|w| w == goto));
        assert!(msgs[2].attrs.windows(9).any(|w| w == b"verified\0"));
        // A flush names its chain and nothing else.
        assert!(msgs[5].attrs.windows(6).any(|w| w == b"epoch\0"));
        assert_eq!(msgs[5].attrs.len(), 12 + 12);
        // The mask and the epoch in host order, as the mark register holds them.
        let holds = |attrs: &[u8], words: [u32; 2]| {
            for want in words {
                let found = attrs.windows(4).any(|w| w == want.to_ne_bytes());
                assert!(found, "{want:#x}");
            }
        };
        let (check, verified) = (&msgs[6].attrs, &msgs[8].attrs);
        holds(check, [0xffff_f000, 0x3000]);
        assert!(check.windows(4).any(|w| w == b"cmp\0"));
        holds(verified, [0x0000_0fff, 0x3000]);
        assert!(verified.windows(3).any(|w| w == b"ct\0"));
    }
}
