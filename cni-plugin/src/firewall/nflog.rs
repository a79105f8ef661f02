//! Drops logged to an NFLOG group, read back: the kernel side of
//! `moat drops --follow`. A group has one listener per network namespace.

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_netfilter::nflog::{
    config_request, ConfigCmd, ConfigMode, ConfigNla, PacketNla, Timeout, ULogMessage,
};
use netlink_packet_netfilter::{NetfilterMessage, NetfilterMessageInner, NetfilterProtoFamily};
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket};
use nix::net::if_::if_indextoname;

use crate::netlink::socket::connected;

#[derive(Debug, thiserror::Error)]
pub enum NflogError {
    #[error("cannot open a netfilter netlink socket")]
    Open(#[source] std::io::Error),
    #[error("NFLOG group {group} is taken: another listener in this network namespace has it (ulogd, another `moat drops --follow`), or this process lacks CAP_NET_ADMIN")]
    Taken { group: u16 },
    #[error("cannot bind NFLOG group {group}")]
    Bind {
        group: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("reading NFLOG group {group} failed")]
    Recv {
        group: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("undecodable NFLOG message: {0}")]
    Decode(String),
}

/// A packet a rule logged: the rule's prefix (why), the packet's first
/// bytes, and the link it came in on (who really sent it: its source
/// address may be forged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedPacket {
    pub prefix: String,
    pub payload: Vec<u8>,
    pub indev: Option<String>,
}

/// What the kernel delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Packets(Vec<LoggedPacket>),
    /// The socket's buffer overflowed: the kernel dropped log messages.
    Lost,
}

/// Logged packets as the kernel delivers them.
pub trait DropFeed {
    /// Blocks until the next delivery.
    fn next(&mut self) -> Result<Delivery, NflogError>;
}

/// The listener of one NFLOG group in the calling thread's network namespace.
pub struct NflogGroup {
    socket: Socket,
    group: u16,
    buf: Vec<u8>,
}

impl NflogGroup {
    pub fn bind(group: u16) -> Result<Self, NflogError> {
        let socket = connected(NETLINK_NETFILTER).map_err(NflogError::Open)?;
        // One message per packet, flushed within 10 ms: the kernel's
        // defaults batch for up to a second, too slow for a live view.
        let request = config_request(
            NetfilterProtoFamily::Unspec,
            group,
            vec![
                ConfigCmd::Bind.into(),
                ConfigMode::PACKET_MAX.into(),
                ConfigNla::QThresh(1),
                Timeout::new(1).into(),
            ],
        );
        let mut bytes = vec![0; request.buffer_len()];
        request.serialize(&mut bytes);
        let bind_err = |source| NflogError::Bind { group, source };
        socket.send(&bytes, 0).map_err(bind_err)?;
        let mut me = Self {
            socket,
            group,
            buf: vec![0; 1 << 16],
        };
        let n = me
            .recv()?
            .ok_or(NflogError::Decode("no answer to bind".into()))?;
        let answer = NetlinkMessage::<NetfilterMessage>::deserialize(&me.buf[..n])
            .map_err(|e| NflogError::Decode(e.to_string()))?;
        match answer.payload {
            NetlinkPayload::Error(e) => match e.code {
                None => Ok(me),
                // The kernel's answer when another socket holds the group
                // (and to a process without the capability).
                Some(_) if e.to_io().raw_os_error() == Some(libc::EPERM) => {
                    Err(NflogError::Taken { group })
                }
                Some(_) => Err(bind_err(e.to_io())),
            },
            other => Err(NflogError::Decode(format!("bind answered {other:?}"))),
        }
    }

    /// Bytes received, or `None` if the kernel reported an overflow.
    fn recv(&mut self) -> Result<Option<usize>, NflogError> {
        match self.socket.recv(&mut &mut self.buf[..], 0) {
            Ok(n) => Ok(Some(n)),
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => Ok(None),
            Err(source) => Err(NflogError::Recv {
                group: self.group,
                source,
            }),
        }
    }
}

impl DropFeed for NflogGroup {
    fn next(&mut self) -> Result<Delivery, NflogError> {
        match self.recv()? {
            None => Ok(Delivery::Lost),
            Some(n) => {
                let mut logged = packets(&self.buf[..n])?;
                for (p, index) in &mut logged {
                    // A link gone since is named by nobody: left out.
                    p.indev = index
                        .and_then(|i| if_indextoname(i).ok())
                        .map(|n| n.to_string_lossy().into_owned());
                }
                Ok(Delivery::Packets(
                    logged.into_iter().map(|(p, _)| p).collect(),
                ))
            }
        }
    }
}

/// The netfilter messages of one read from a netlink socket (several may
/// share it, each padded to 4 bytes).
pub(super) fn netfilter_messages(
    mut data: &[u8],
) -> Result<Vec<NetlinkMessage<NetfilterMessage>>, String> {
    let mut out = Vec::new();
    while !data.is_empty() {
        let msg =
            NetlinkMessage::<NetfilterMessage>::deserialize(data).map_err(|e| e.to_string())?;
        let len = (msg.header.length as usize + 3) & !3;
        if len == 0 {
            return Err("zero-length message".into());
        }
        data = data.get(len..).unwrap_or_default();
        out.push(msg);
    }
    Ok(out)
}

/// The logged packets among the messages of one read, with the index of
/// the link each came in on.
fn packets(data: &[u8]) -> Result<Vec<(LoggedPacket, Option<u32>)>, NflogError> {
    let mut out = Vec::new();
    for msg in netfilter_messages(data).map_err(NflogError::Decode)? {
        if let NetlinkPayload::InnerMessage(NetfilterMessage {
            inner: NetfilterMessageInner::ULog(ULogMessage::Packet(nlas)),
            ..
        }) = msg.payload
        {
            out.push(logged(nlas));
        }
    }
    Ok(out)
}

fn logged(nlas: Vec<PacketNla>) -> (LoggedPacket, Option<u32>) {
    let mut p = LoggedPacket {
        prefix: String::new(),
        payload: Vec::new(),
        indev: None,
    };
    let mut index = None;
    for nla in nlas {
        match nla {
            PacketNla::Prefix(s) => p.prefix = s.to_string_lossy().into_owned(),
            PacketNla::Payload(b) => p.payload = b,
            PacketNla::IfIndexInDev(i) => index = Some(i),
            _ => {}
        }
    }
    (p, index)
}
