//! Conntrack marks, for the fast path's epoch (`policy::epoch`). When the
//! epoch counter comes round to values it used before, every connection
//! still carrying one of them loses its epoch bits: a connection marked a
//! whole cycle ago and idle since the change that closed it would otherwise
//! pass the fast path again once its old epoch is current. Only the mask's
//! bits change; another program's bits in the mark stay.
//!
//! Over ctnetlink with the messages of netlink-packet-netfilter: a dump of
//! the namespace's connections, then one update per marked connection,
//! naming it by its original tuple as the dump gave it.

use netlink_packet_core::{
    DefaultNla, NetlinkHeader, NetlinkMessage, NetlinkPayload, Nla, NLM_F_ACK, NLM_F_DUMP,
    NLM_F_REQUEST,
};
use netlink_packet_netfilter::conntrack::{ConntrackAttribute, ConntrackMessage, Tuple};
use netlink_packet_netfilter::{
    NetfilterHeader, NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily,
};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};

use crate::netlink::socket::connected;

/// CTA_MARK_MASK: the update changes only these bits of the mark.
const CTA_MARK_MASK: u16 = 21;
/// CTA_ZONE: a connection is named by its tuple within its zone.
const CTA_ZONE: u16 = 18;

#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    #[error("cannot open a netfilter netlink socket")]
    Open(#[source] std::io::Error),
    #[error("conntrack {what} failed")]
    Io {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("undecodable conntrack message: {0}")]
    Decode(String),
}

/// One connection whose mark has some of the bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marked {
    pub family: NetfilterProtoFamily,
    pub tuple: Vec<Tuple>,
    /// Its zone, if it is not in the default one.
    pub zone: Option<DefaultNla>,
    pub mark: u32,
}

/// Clear `mask`'s bits in the mark of every connection that has any of
/// them, except where they equal `keep`, in the calling thread's network
/// namespace; returns how many connections it cleared. A connection that
/// ends between the dump and its update is skipped.
pub fn forget_bits(mask: u32, keep: Option<u32>) -> Result<usize, ConntrackError> {
    let socket = connected(NETLINK_NETFILTER).map_err(ConntrackError::Open)?;
    let get = ConntrackMessage::Get(vec![]);
    send(&socket, NetfilterProtoFamily::Unspec, get, NLM_F_DUMP, 1)?;
    let marked: Vec<Marked> = read_dump(&socket, mask)?
        .into_iter()
        .filter(|m| Some(m.mark & mask) != keep)
        .collect();
    for (i, m) in marked.iter().enumerate() {
        let mut attrs = vec![
            ConntrackAttribute::CtaTupleOrig(m.tuple.clone()),
            ConntrackAttribute::CtaMark(0),
            ConntrackAttribute::Other(DefaultNla::new(CTA_MARK_MASK, mask.to_be_bytes().to_vec())),
        ];
        attrs.extend(m.zone.clone().map(ConntrackAttribute::Other));
        let update = ConntrackMessage::New(attrs);
        let seq = i as u32 + 2;
        send(&socket, m.family, update, NLM_F_ACK, seq)?;
        match read_ack(&socket)? {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(source) => {
                return Err(ConntrackError::Io {
                    what: "mark update",
                    source,
                })
            }
        }
    }
    Ok(marked.len())
}

fn send(
    socket: &Socket,
    family: NetfilterProtoFamily,
    msg: ConntrackMessage,
    flags: u16,
    seq: u32,
) -> Result<(), ConntrackError> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST | flags;
    header.sequence_number = seq;
    let payload = NetfilterMessage::new(NetfilterHeader::new(family, 0, 0), msg);
    let mut nl = NetlinkMessage::new(header, NetlinkPayload::from(payload));
    nl.finalize();
    let mut bytes = vec![0; nl.buffer_len()];
    nl.serialize(&mut bytes);
    socket
        .send(&bytes, 0)
        .map(drop)
        .map_err(|source| ConntrackError::Io {
            what: "request",
            source,
        })
}

fn recv(socket: &Socket, buf: &mut [u8]) -> Result<usize, ConntrackError> {
    socket
        .recv(&mut &mut buf[..], 0)
        .map_err(|source| ConntrackError::Io {
            what: "dump",
            source,
        })
}

/// The messages of one read.
fn messages(data: &[u8]) -> Result<Vec<NetlinkMessage<NetfilterMessage>>, ConntrackError> {
    super::nflog::netfilter_messages(data).map_err(ConntrackError::Decode)
}

fn read_dump(socket: &Socket, mask: u32) -> Result<Vec<Marked>, ConntrackError> {
    let mut buf = vec![0; 1 << 16];
    let mut out = Vec::new();
    loop {
        let n = recv(socket, &mut buf)?;
        for msg in messages(&buf[..n])? {
            match msg.payload {
                // A dump cut short ends with its error in the Done message.
                NetlinkPayload::Done(d) if d.code != 0 => {
                    let source = std::io::Error::from_raw_os_error(d.code.abs());
                    return Err(ConntrackError::Io {
                        what: "dump",
                        source,
                    });
                }
                NetlinkPayload::Done(_) => return Ok(out),
                NetlinkPayload::Error(e) if e.code.is_some() => {
                    return Err(ConntrackError::Io {
                        what: "dump",
                        source: e.to_io(),
                    })
                }
                NetlinkPayload::InnerMessage(m) => out.extend(marked(m, mask)),
                _ => {}
            }
        }
    }
}

/// The connection in a dumped message, if its mark has any of the bits.
pub fn marked(msg: NetfilterMessage, mask: u32) -> Option<Marked> {
    let NetfilterMessageInner::Conntrack(ConntrackMessage::New(attrs)) = msg.inner else {
        return None;
    };
    let (mut tuple, mut zone, mut mark) = (None, None, 0);
    for a in attrs {
        match a {
            ConntrackAttribute::CtaTupleOrig(t) => tuple = Some(t),
            ConntrackAttribute::CtaMark(m) => mark = m,
            ConntrackAttribute::Other(nla) if nla.kind() == CTA_ZONE => zone = Some(nla),
            _ => {}
        }
    }
    (mark & mask != 0).then_some(Marked {
        family: msg.header.family,
        tuple: tuple?,
        zone,
        mark,
    })
}

fn read_ack(socket: &Socket) -> Result<Result<(), std::io::Error>, ConntrackError> {
    let mut buf = vec![0; 8192];
    loop {
        let n = recv(socket, &mut buf)?;
        for msg in messages(&buf[..n])? {
            if let NetlinkPayload::Error(e) = msg.payload {
                return Ok(match e.code {
                    None => Ok(()),
                    Some(_) => Err(e.to_io()),
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use netlink_packet_netfilter::conntrack::{IPTuple, ProtoTuple, Protocol};

    use super::*;

    fn dumped(attrs: Vec<ConntrackAttribute>) -> NetfilterMessage {
        let header = NetfilterHeader::new(NetfilterProtoFamily::IPv4, 0, 0);
        NetfilterMessage::new(header, ConntrackMessage::New(attrs))
    }

    fn tuple() -> Vec<Tuple> {
        vec![
            Tuple::Ip(vec![
                IPTuple::SourceAddress("10.0.0.2".parse().unwrap()),
                IPTuple::DestinationAddress("10.0.0.3".parse().unwrap()),
            ]),
            Tuple::Proto(vec![
                ProtoTuple::Protocol(Protocol::Udp),
                ProtoTuple::SourcePort(40000),
                ProtoTuple::DestinationPort(7777),
            ]),
        ]
    }

    #[test]
    fn only_connections_marked_in_the_bits_are_taken() {
        let with = |mark| {
            dumped(vec![
                ConntrackAttribute::CtaTupleOrig(tuple()),
                ConntrackAttribute::CtaMark(mark),
            ])
        };
        let m = marked(with(0x0000_3abc), 0x3000).expect("marked in the bits");
        assert_eq!(
            (m.family, m.mark, m.tuple),
            (NetfilterProtoFamily::IPv4, 0x3abc, tuple())
        );
        assert_eq!(marked(with(0x0000_0abc), 0x3000), None, "other bits only");
        assert_eq!(marked(with(0), 0x3000), None);
        let no_tuple = dumped(vec![ConntrackAttribute::CtaMark(0x1000)]);
        assert_eq!(marked(no_tuple, 0x3000), None);
    }
}
