//! Deleting a link without carrying the kernel's clean-up wait.
//!
//! The kernel unregisters a net device in two steps. Under the RTNL lock it
//! unlists the device (name and index freed, routes and neighbours flushed,
//! both veth ends at once) and announces RTM_DELLINK. Then, with the lock
//! dropped, the task that asked waits in `rcu_barrier()` and for the device's
//! last references before freeing it: 15–20 ms on our nodes, most of a DEL,
//! and nothing anyone can observe depends on it. So in the background mode a
//! detached child ([`crate::linger`]) makes the request and carries that
//! wait, and the plugin returns as soon as the announcement shows the device
//! unlisted.

use std::io;
use std::time::{Duration, Instant};

use netlink_packet_core::{NetlinkMessage, NetlinkPayload};
use netlink_packet_route::link::LinkMessage;
use netlink_packet_route::RouteNetlinkMessage as Rt;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket};
use nix::sys::socket::{setsockopt, sockopt::ReceiveTimeout};
use nix::sys::time::TimeVal;

use super::socket::{encode, Flags, NetlinkSocket, SocketError};

/// How long the announcement may take before we delete the link ourselves.
/// Unlisting takes ~1 ms; this only matters if the child never got to run.
const ANNOUNCE_DEADLINE: Duration = Duration::from_secs(5);
const RTNLGRP_LINK: u32 = 1;

impl NetlinkSocket {
    /// Delete a link by name, returning once the kernel has unlisted it and
    /// leaving the wait for its freeing to a detached child process.
    /// `Ok(false)` if it was already gone.
    pub fn delete_link_background(&mut self, name: &str) -> Result<bool, SocketError> {
        let Some((index, _)) = self.link_index_mac(name)? else {
            return Ok(false);
        };
        // Subscribed before the request exists, so the announcement cannot be missed.
        let watch = LinkWatch::subscribe().map_err(SocketError::Open)?;
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        let request = encode(Rt::DelLink(msg), Flags::Ack, 1);
        if let Err(e) = crate::linger::send_detached(&request) {
            tracing::warn!(error = %e, ifname = name, "cannot start the link deleter; deleting in-line");
            return self.delete_link(name);
        }
        match watch.wait_unlisted(index) {
            Ok(true) => Ok(true),
            outcome => {
                // Overrun, timeout or a broken socket: ask the kernel ourselves.
                // If the child got there first this is a quick ENODEV.
                tracing::warn!(
                    ?outcome,
                    ifname = name,
                    "no unlist announcement; deleting in-line"
                );
                self.delete_link(name).map(|_| true)
            }
        }
    }
}

/// A socket on the link multicast group.
struct LinkWatch {
    socket: Socket,
}

impl LinkWatch {
    fn subscribe() -> io::Result<Self> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.add_membership(RTNLGRP_LINK)?;
        let timeout = TimeVal::new(ANNOUNCE_DEADLINE.as_secs() as i64, 0);
        setsockopt(&socket, ReceiveTimeout, &timeout).map_err(io::Error::from)?;
        Ok(Self { socket })
    }

    /// `Ok(true)` once RTM_DELLINK for `index` arrives; `Ok(false)` when the
    /// deadline passes first.
    fn wait_unlisted(&self, index: u32) -> io::Result<bool> {
        let start = Instant::now();
        while start.elapsed() < ANNOUNCE_DEADLINE {
            let (data, _) = match self.socket.recv_from_full() {
                Ok(d) => d,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            };
            if announces_delete(&data, index) {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// Whether a multicast datagram holds RTM_DELLINK for `index`.
fn announces_delete(mut data: &[u8], index: u32) -> bool {
    while !data.is_empty() {
        let Ok(msg) = NetlinkMessage::<Rt>::deserialize(data) else {
            return false;
        };
        if let NetlinkPayload::InnerMessage(Rt::DelLink(link)) = &msg.payload {
            if link.header.index == index {
                return true;
            }
        }
        let len = msg.header.length as usize;
        if len == 0 {
            return false;
        }
        data = &data[((len + 3) & !3).min(data.len())..];
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::NetlinkHeader;

    fn datagram(msgs: Vec<Rt>) -> Vec<u8> {
        let mut out = Vec::new();
        for m in msgs {
            let mut packet = NetlinkMessage::new(NetlinkHeader::default(), m.into());
            packet.finalize();
            let mut buf = vec![0u8; packet.buffer_len()];
            packet.serialize(&mut buf);
            out.extend(buf);
        }
        out
    }

    fn link(index: u32) -> LinkMessage {
        let mut m = LinkMessage::default();
        m.header.index = index;
        m
    }

    #[test]
    fn only_a_delete_of_that_index_counts() {
        let other = datagram(vec![Rt::NewLink(link(7)), Rt::DelLink(link(8))]);
        assert!(!announces_delete(&other, 7));
        let ours = datagram(vec![Rt::NewLink(link(8)), Rt::DelLink(link(7))]);
        assert!(announces_delete(&ours, 7));
        assert!(
            !announces_delete(&ours[..5], 7),
            "truncated input is no announcement"
        );
    }
}
