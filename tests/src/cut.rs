//! Cutting a connection from outside: find this process's TCP sockets on a port in
//! `/proc/self/net/tcp` (and `tcp6`), map their inodes to descriptors through `/proc/self/fd`,
//! and `shutdown(2)` them: to each engine, its socket simply dies under it.

use std::collections::{HashMap, HashSet};
use std::os::fd::RawFd;

use ringwire::Engine;

/// Whether `engine` has an established connection to `peer`.
pub fn is_connected(engine: &Engine, peer: &str) -> bool {
    engine
        .stats()
        .peers
        .iter()
        .any(|p| p.node_id == peer && p.connected)
}

/// The established TCP sockets of this process with `port` at either end (both ends of a
/// loopback connection to the listener): their descriptors and inodes.
pub fn connection_ends(port: u16) -> Vec<(RawFd, u64)> {
    let inodes = established_on_port(port);
    if inodes.is_empty() {
        return Vec::new();
    }
    socket_fds()
        .into_iter()
        .filter(|(inode, _)| inodes.contains(inode))
        .map(|(inode, fd)| (fd, inode))
        .collect()
}

/// Calls `shutdown(SHUT_RDWR)` on each socket that is still the one found; returns how many
/// calls succeeded (the engine may have shut its end first, in reaction to the other).
pub fn shut_down(ends: &[(RawFd, u64)]) -> usize {
    let ends: Vec<RawFd> = ends
        .iter()
        .filter(|&&(fd, inode)| is_socket_with_inode(fd, inode))
        .map(|&(fd, _)| fd)
        .collect();
    ends.into_iter()
        // SAFETY: shutdown(2) takes no pointers. The descriptor was just checked to be the
        // socket found in /proc; if the engine closed it since and reused the number for
        // another socket, that one is shut down instead, which the engine survives too.
        .filter(|&fd| unsafe { libc::shutdown(fd, libc::SHUT_RDWR) } == 0)
        .count()
}

/// Inodes of the established (state 01) TCP sockets with `port` at either end, from
/// `/proc/self/net/tcp` and `tcp6`, whose lines read
/// `sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode`
/// with addresses as hex `IP:PORT`.
pub fn established_on_port(port: u16) -> HashSet<u64> {
    let mut inodes = HashSet::new();
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 10 || fields[3] != "01" {
                continue;
            }
            let port_of = |addr: &str| {
                addr.rsplit_once(':')
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
            };
            if (port_of(fields[1]) == Some(port) || port_of(fields[2]) == Some(port))
                && let Ok(inode) = fields[9].parse()
            {
                inodes.insert(inode);
            }
        }
    }
    inodes
}

/// This process's socket descriptors by inode, from the `socket:[inode]` links in
/// `/proc/self/fd`.
pub fn socket_fds() -> HashMap<u64, RawFd> {
    let mut fds = HashMap::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy();
        let inode = target
            .strip_prefix("socket:[")
            .and_then(|rest| rest.strip_suffix(']'))
            .and_then(|inode| inode.parse().ok());
        let fd = entry.file_name().to_string_lossy().parse().ok();
        if let (Some(inode), Some(fd)) = (inode, fd) {
            fds.insert(inode, fd);
        }
    }
    fds
}

/// Whether `fd` still is the socket with `inode` (the engine may have closed it and reused
/// the number since `/proc/self/fd` was read).
pub fn is_socket_with_inode(fd: RawFd, inode: u64) -> bool {
    // SAFETY: `stat` is plain old data; all-zero is a valid value.
    let mut stat: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `stat` is a live local of the right type; fstat writes only into it.
    if unsafe { libc::fstat(fd, &raw mut stat) } != 0 {
        return false;
    }
    stat.st_mode & libc::S_IFMT == libc::S_IFSOCK && stat.st_ino == inode
}
