//! A small synchronous rtnetlink socket: send one request, read its replies.
//! The CNI binary is short-lived, so no async runtime is started for this.

use std::fs::File;
use std::path::Path;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL,
    NLM_F_REPLACE, NLM_F_REQUEST,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use nix::sched::{setns, CloneFlags};

#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("cannot open netlink socket")]
    Open(#[source] std::io::Error),
    #[error("cannot enter network namespace {path}")]
    Netns {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("netlink {what} failed")]
    Request {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("netlink {what}: undecodable reply: {detail}")]
    Decode { what: &'static str, detail: String },
}

impl SocketError {
    /// The errno the kernel answered with, if this is a kernel refusal.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Request { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// How a request wants to be treated by the kernel.
#[derive(Debug, Clone, Copy)]
pub enum Flags {
    /// Create; fail if it exists.
    CreateExcl,
    /// Create or replace what is there.
    Replace,
    /// Change or delete an existing object.
    Ack,
    Dump,
}

pub struct NetlinkSocket {
    socket: Socket,
    seq: u32,
}

/// A netlink socket of `protocol`, bound and connected to the kernel, in the
/// calling thread's network namespace.
pub fn connected(protocol: isize) -> std::io::Result<Socket> {
    let mut socket = Socket::new(protocol)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    Ok(socket)
}

/// One request as the bytes the kernel reads.
pub fn encode(msg: RouteNetlinkMessage, flags: Flags, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = NLM_F_REQUEST
        | match flags {
            Flags::CreateExcl => NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            Flags::Replace => NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE,
            Flags::Ack => NLM_F_ACK,
            Flags::Dump => NLM_F_DUMP,
        };
    header.sequence_number = seq;
    let mut packet = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    packet.finalize();
    let mut buf = vec![0u8; packet.buffer_len()];
    packet.serialize(&mut buf);
    buf
}

impl NetlinkSocket {
    /// A socket in the calling thread's network namespace.
    pub fn open() -> Result<Self, SocketError> {
        let socket = connected(NETLINK_ROUTE).map_err(SocketError::Open)?;
        let _ = socket.set_ext_ack(true);
        Ok(Self { socket, seq: 0 })
    }

    /// A socket bound inside another netns. A netlink socket stays in the
    /// namespace it was created in, so this thread enters the netns just long
    /// enough to open it and goes back (cheaper than a thread per ADD). If it
    /// cannot go back, every later kernel call would hit the pod's namespace,
    /// so the process aborts instead.
    pub fn open_in(netns: &Path) -> Result<Self, SocketError> {
        let ns_err = |source| SocketError::Netns {
            path: netns.display().to_string(),
            source,
        };
        let target = File::open(netns).map_err(ns_err)?;
        let home = File::open("/proc/thread-self/ns/net").map_err(ns_err)?;
        setns(&target, CloneFlags::CLONE_NEWNET).map_err(|e| ns_err(e.into()))?;
        let socket = Self::open();
        if let Err(e) = setns(&home, CloneFlags::CLONE_NEWNET) {
            tracing::error!(error = %e, "cannot return to the node's network namespace");
            std::process::abort();
        }
        socket
    }

    /// A device ioctl on this socket, answered in the socket's netns.
    pub(super) fn ioctl(&self, request: libc::Ioctl, req: &mut libc::ifreq) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: `req` is a valid ifreq for the SIOCGIF* requests we make;
        // for SIOCETHTOOL its data pointer points at a live ethtool struct.
        match unsafe { libc::ioctl(self.socket.as_raw_fd(), request, req as *mut libc::ifreq) } {
            0 => Ok(()),
            _ => Err(std::io::Error::last_os_error()),
        }
    }

    /// Send one request and collect every reply message until the ack or dump end.
    pub fn request(
        &mut self,
        what: &'static str,
        msg: RouteNetlinkMessage,
        flags: Flags,
    ) -> Result<Vec<RouteNetlinkMessage>, SocketError> {
        self.seq = self.seq.wrapping_add(1);
        let buf = encode(msg, flags, self.seq);
        self.socket
            .send(&buf, 0)
            .map_err(|source| SocketError::Request { what, source })?;
        self.read_replies(what)
    }

    fn read_replies(
        &mut self,
        what: &'static str,
    ) -> Result<Vec<RouteNetlinkMessage>, SocketError> {
        let mut out = Vec::new();
        loop {
            let (data, _) = self
                .socket
                .recv_from_full()
                .map_err(|source| SocketError::Request { what, source })?;
            let mut offset = 0;
            while offset < data.len() {
                let msg = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&data[offset..])
                    .map_err(|e| SocketError::Decode {
                        what,
                        detail: e.to_string(),
                    })?;
                let len = msg.header.length as usize;
                if len == 0 {
                    return Err(SocketError::Decode {
                        what,
                        detail: "zero-length message".into(),
                    });
                }
                offset += (len + 3) & !3;
                if msg.header.sequence_number != self.seq {
                    continue;
                }
                match msg.payload {
                    NetlinkPayload::Done(_) => return Ok(out),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(out),
                            Some(_) => Err(SocketError::Request {
                                what,
                                source: e.to_io(),
                            }),
                        }
                    }
                    NetlinkPayload::InnerMessage(m) => out.push(m),
                    _ => {}
                }
            }
        }
    }
}
