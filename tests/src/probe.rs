//! Real packets between namespaces: TCP and UDP echo, ICMP echo via ping.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use crate::netns::Netns;

pub const PORT: u16 = 7777;
pub const TIMEOUT: Duration = Duration::from_millis(400);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    Tcp,
    Udp,
    Icmp,
}

pub const PROTOS: [Proto; 3] = [Proto::Tcp, Proto::Udp, Proto::Icmp];

/// Start TCP and UDP echo servers on `[::]:PORT` (dual-stack) inside `ns`.
/// The threads live until the process exits.
pub fn serve(ns: &Netns) {
    let (tcp, udp) = ns.run(|| {
        let tcp = TcpListener::bind(("::", PORT)).expect("bind tcp");
        let udp = UdpSocket::bind(("::", PORT)).expect("bind udp");
        (tcp, udp)
    });
    std::thread::spawn(move || {
        for mut conn in tcp.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 || conn.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    std::thread::spawn(move || {
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = udp.recv_from(&mut buf) {
            let _ = udp.send_to(&buf[..n], from);
        }
    });
}

/// One round trip of `proto` from `from` to `to`.
pub fn reach(from: &Netns, to: IpAddr, proto: Proto) -> bool {
    match proto {
        Proto::Tcp => from.run(|| tcp_echo(to)),
        Proto::Udp => from.run(|| udp_echo(to)),
        Proto::Icmp => from
            .exec("ping")
            .args(["-c1", "-q", "-W0.4", &to.to_string()])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false),
    }
}

fn tcp_echo(to: IpAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&SocketAddr::new(to, PORT), TIMEOUT) else {
        return false;
    };
    echo_on(&mut s)
}

/// One echo on an open connection (for "an open connection is cut").
pub fn echo_on(s: &mut TcpStream) -> bool {
    let _ = s.set_read_timeout(Some(TIMEOUT));
    let mut buf = [0u8; 1];
    s.write_all(b"x").is_ok() && s.read_exact(&mut buf).is_ok()
}

pub fn tcp_connect(from: &Netns, to: IpAddr) -> Option<TcpStream> {
    from.run(|| TcpStream::connect_timeout(&SocketAddr::new(to, PORT), TIMEOUT).ok())
}

fn udp_echo(to: IpAddr) -> bool {
    let bind: IpAddr = if to.is_ipv4() {
        "0.0.0.0".parse().unwrap()
    } else {
        "::".parse().unwrap()
    };
    let Ok(s) = UdpSocket::bind((bind, 0)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(TIMEOUT));
    let mut buf = [0u8; 4];
    s.send_to(b"ping", (to, PORT)).is_ok() && s.recv_from(&mut buf).is_ok()
}

/// Send one UDP datagram from a given source address (which may be forged).
pub fn udp_from(from: &Netns, src: IpAddr, to: IpAddr, port: u16) -> bool {
    from.run(|| {
        UdpSocket::bind((src, 0))
            .and_then(|s| s.send_to(b"spoof", (to, port)))
            .is_ok()
    })
}

/// A UDP receiver in `ns`; `received()` tells whether anything arrived.
pub struct Sink {
    sock: UdpSocket,
}

impl Sink {
    pub fn open(ns: &Netns, port: u16) -> Self {
        let sock = ns.run(|| UdpSocket::bind(("::", port)).expect("bind sink"));
        sock.set_read_timeout(Some(TIMEOUT)).unwrap();
        Self { sock }
    }

    pub fn received(&self) -> bool {
        let mut buf = [0u8; 16];
        self.sock.recv_from(&mut buf).is_ok()
    }
}
